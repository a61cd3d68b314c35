"""The project's exception hierarchy: one root, one subclass per area."""


class AutotuneError(Exception):
    """Root of every error this project raises on purpose."""


class KnobError(AutotuneError, ValueError):
    """An unknown knob, a bad value, or a knob used on a path it does not apply to."""


class UnsupportedOnThisCPU(KnobError):
    """A knob value needs a CPU feature this machine lacks."""


class StoreError(AutotuneError):
    """The config store cannot be opened, read or written."""


class RecordError(StoreError, ValueError):
    """A tuned record that breaks the record schema or holds a config the knobs refuse."""


def first_line(error: BaseException) -> str:
    """``Type: first line of the message``: Inductor's and TorchScript's errors run to pages."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


class PathUnavailable(Exception):
    """A compile path cannot take this graph; the reason says why. The dispatcher falls back."""
