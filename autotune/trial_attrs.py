"""What a study's trials carry: one schema for the tuner that writes them and every reader."""

from __future__ import annotations

from enum import Enum


class FailureKind(str, Enum):
    """Why a trial failed; stored as its plain string value."""

    CRASH = "crash"              # the worker died (a signal, or an exit without an answer)
    TIMEOUT = "timeout"          # no answer within the trial time limit
    MEMORY = "memory"            # over the memory limit
    EXCEPTION = "exception"      # the model or a compiler raised
    ACCURACY = "accuracy"        # the output disagrees with eager beyond the tolerance
    CONFIG = "config"            # a sampled combination the knobs refuse
    INTERRUPTED = "interrupted"  # Ctrl-C during the trial
    ORPHANED = "orphaned"        # its tuner died during the trial
    NOISY = "noisy"              # measured twice, on a busy machine both times: no number

    def __str__(self) -> str:
        return self.value


# failures of the tuner or the machine, not of the trial's config: a rerun replaces them
LOST = (FailureKind.INTERRUPTED, FailureKind.ORPHANED, FailureKind.NOISY)
# the same config ends the same way: a resampled one fails without a run
DETERMINISTIC = (FailureKind.EXCEPTION, FailureKind.ACCURACY, FailureKind.CRASH, FailureKind.CONFIG)

# trial user attributes
CONFIG = "config"                  # every knob's value
CONFIG_ID = "config_id"
TUNER = "tuner"                    # "host:pid" of the tuner that ran it
FAILURE_KIND = "failure_kind"      # a FailureKind value
FAILURE_REASON = "failure_reason"
DUPLICATE_OF = "duplicate_of"      # a resampled config: the trial number that answered it
PEAK_RSS_MB = "peak_rss_mb"
INTERFERENCE = "interference"      # what else ran on its cores while it was timed (quiet.py)
READY_KEYS = ("compile_s", "error", "graphs", "threads", "cpus")  # from the worker's start
ACCURACY_FIGURES = "accuracy"      # a reduced-precision trial's gate on held-out data
TOO_SPREAD = "too_spread"          # its relative IQR, measured twice above MAX_TRIAL_SPREAD
STATS_KEYS = ("median_ms", "p10_ms", "p90_ms", "iqr_ms", "runs")   # from its measurement
