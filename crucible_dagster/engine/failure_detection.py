"""Failure detection: abort a run whose cumulative error rate exceeds a threshold.

As in the original Crucible (a k6 `rate<x` threshold with `abortOnFail` and `delayAbortEval`),
the rate is errors over finished executions across all queries and shards, and it is first
evaluated once `abort_delay_s` has passed since load start.
"""

from crucible_dagster.engine.model import FailureDetection


def abort_reason(
    detection: FailureDetection | None, completed: int, errors: int, elapsed_s: float
) -> str | None:
    """The reason to abort now, or None while the run may go on."""
    if detection is None or not detection.enabled:
        return None
    if elapsed_s < detection.abort_delay_s or completed == 0:
        return None
    rate = errors / completed
    # k6's `rate<x` fails at x itself, so a threshold of 1.0 still aborts an all-failing run.
    if rate < detection.error_rate_threshold:
        return None
    return (
        f"error rate {rate:.1%} exceeded the failure_detection threshold "
        f"{detection.error_rate_threshold:.1%} after {_seconds(elapsed_s)}"
    )


def _seconds(value_s: float) -> str:
    return f"{value_s:.0f}s" if value_s >= 10 else f"{value_s:.1f}s"
