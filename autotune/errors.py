"""The tuner's errors: one subclass of the project's root per area.

Every message names the bad value and what would be valid; the CLI prints it without a traceback.
"""

from backend.errors import AutotuneError

__all__ = ["AutotuneError", "ModelError", "SpaceError", "StudyError"]


class ModelError(AutotuneError):
    """A model spec that cannot be built: unknown name, bad module:callable, checkpoint, inputs."""


class SpaceError(AutotuneError):
    """A search space file that is malformed or names knobs or values the backend refuses."""


class StudyError(AutotuneError):
    """A study file with unknown keys, bad types or bad values."""
