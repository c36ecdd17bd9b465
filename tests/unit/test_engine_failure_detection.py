from crucible_dagster.engine import FailureDetection
from crucible_dagster.engine.failure_detection import abort_reason

DETECTION = FailureDetection(enabled=True, error_rate_threshold=0.5, abort_delay_s=10.0)


def test_no_abort_before_the_delay_even_when_everything_fails() -> None:
    assert abort_reason(DETECTION, completed=1000, errors=1000, elapsed_s=9.9) is None


def test_abort_after_the_delay_when_the_rate_crosses_the_threshold() -> None:
    reason = abort_reason(DETECTION, completed=100, errors=62, elapsed_s=10.2)

    assert reason == ("error rate 62.0% exceeded the failure_detection threshold 50.0% after 10s")


def test_rate_below_the_threshold_keeps_running() -> None:
    assert abort_reason(DETECTION, completed=100, errors=49, elapsed_s=60.0) is None


def test_threshold_of_one_still_aborts_a_run_where_everything_fails() -> None:
    detection = FailureDetection(error_rate_threshold=1.0, abort_delay_s=0.0)

    assert abort_reason(detection, completed=10, errors=10, elapsed_s=1.0) is not None
    assert abort_reason(detection, completed=10, errors=9, elapsed_s=1.0) is None


def test_disabled_or_absent_detection_never_aborts() -> None:
    disabled = FailureDetection(enabled=False, abort_delay_s=0.0)

    assert abort_reason(disabled, completed=10, errors=10, elapsed_s=100.0) is None
    assert abort_reason(None, completed=10, errors=10, elapsed_s=100.0) is None


def test_nothing_finished_yet_is_not_a_failure() -> None:
    assert abort_reason(DETECTION, completed=0, errors=0, elapsed_s=30.0) is None
