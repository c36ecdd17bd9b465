"""Thresholds: k6 syntax, evaluation against results, live abort, verdict, failure_detection."""

import pytest
from hdrh.histogram import HdrHistogram

from crucible_dagster.engine.histogram import new_histogram
from crucible_dagster.errors import CrucibleError
from crucible_dagster.plan.thresholds import ThresholdSpec, ThresholdSyntaxError, parse_threshold
from crucible_dagster.results import QueryResult, Verdict, query_result
from crucible_dagster.results.thresholds import (
    AbortWatch,
    LiveCounts,
    ThresholdOutcome,
    check_targets,
    evaluate,
    from_failure_detection,
    verdict,
)

# 1..1000 ms in 1 ms steps: percentiles land close to their rank, which keeps the numbers readable.
LATENCIES_US = [ms * 1000 for ms in range(1, 1001)]


def _histogram(latencies_us: list[int]) -> HdrHistogram:
    histogram = new_histogram()
    for value in latencies_us:
        histogram.record_value(value)
    return histogram


def _result(
    name: str, latencies_us: list[int] = LATENCIES_US, errors: int = 0, window_s: float = 10.0
) -> QueryResult:
    return query_result(
        name,
        count=len(latencies_us) + errors,
        errors=errors,
        errors_by_kind={"timeout": errors} if errors else {},
        interrupted=0,
        histogram=_histogram(latencies_us),
        window_s=window_s,
    )


def _rules(target: str, *texts: str) -> dict[str, list[ThresholdSpec]]:
    return {target: [ThresholdSpec(parse_threshold(text)) for text in texts]}


def _evaluate_one(text: str, result: QueryResult) -> ThresholdOutcome:
    [outcome] = evaluate(_rules("q01", text), [result], result)
    return outcome


# Parsing


@pytest.mark.parametrize(
    ("text", "aggregation", "percentile", "operator", "value"),
    [
        ("p(95)<200", "p", 95.0, "<", 200.0),
        ("p(99.9)<1000", "p", 99.9, "<", 1000.0),
        ("p(50)<=10", "p", 50.0, "<=", 10.0),
        ("p(100)<5000", "p", 100.0, "<", 5000.0),
        ("avg<50", "avg", None, "<", 50.0),
        ("med<20", "med", None, "<", 20.0),
        ("min>0", "min", None, ">", 0.0),
        ("max<2000", "max", None, "<", 2000.0),
        ("rate<0.01", "rate", None, "<", 0.01),
        ("qps>500", "qps", None, ">", 500.0),
        ("count>100", "count", None, ">", 100.0),
        ("dropped<10", "dropped", None, "<", 10.0),
        ("count>=100", "count", None, ">=", 100.0),
        ("count==100", "count", None, "==", 100.0),
        ("count!=0", "count", None, "!=", 0.0),
        ("rate<1e-05", "rate", None, "<", 0.00001),
        ("avg<.5", "avg", None, "<", 0.5),
    ],
)
def test_every_aggregation_and_operator_parses(
    text: str, aggregation: str, percentile: float | None, operator: str, value: float
) -> None:
    threshold = parse_threshold(text)

    assert (threshold.aggregation, threshold.percentile) == (aggregation, percentile)
    assert (threshold.operator, threshold.value) == (operator, value)
    assert threshold.text == text


@pytest.mark.parametrize("text", ["p(95) < 200", "  p( 95 )<200 ", "p (95)\t<\t200", "p(95)< 200"])
def test_whitespace_between_the_parts_is_allowed(text: str) -> None:
    threshold = parse_threshold(text)

    assert (threshold.percentile, threshold.operator, threshold.value) == (95.0, "<", 200.0)
    assert threshold.text == text.strip()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("p(0)<1", "invalid percentile p(0): expected a number greater than 0 and at most 100"),
        ("p(101)<1", "invalid percentile p(101): expected a number greater than 0 and at most"),
        ("p(abc)<1", "invalid percentile p(abc): expected a number greater than 0"),
        ("p()<1", "invalid percentile p(): expected a number"),
        ("p<1", "a percentile is written p(N) with 0 < N <= 100"),
        (
            "p95<1",
            "unknown aggregation 'p95' in 'p95<1': expected one of p(N), avg, med, min, max, "
            "rate, qps, count, dropped",
        ),
        ("avg(5)<1", "'avg' takes no argument"),
        ("rate<", "expected a number after '<', found nothing"),
        ("<1", "does not start with an aggregation: expected one of p(N), avg, med"),
        ("qps>>1", "expected a number after '>', found '>1'"),
        ("qps=1", "expected an operator (<, <=, >, >=, ==, !=) after 'qps', found '=1'"),
        ("qps", "expected an operator (<, <=, >, >=, ==, !=) after 'qps', found nothing"),
        ("p(95)<200ms", "expected a number (milliseconds, no unit) after '<', found '200ms'"),
        ("rate<abc", "expected a number after '<', found 'abc'"),
        ("max<1e999", "expected a number (milliseconds, no unit) after '<', found '1e999'"),
        ("", "empty threshold: expected '<aggregation> <operator> <number>'"),
        ("   ", "empty threshold"),
    ],
)
def test_bad_syntax_says_what_was_expected(text: str, message: str) -> None:
    with pytest.raises(ThresholdSyntaxError) as raised:
        parse_threshold(text)

    assert message in str(raised.value)


def test_syntax_errors_are_value_errors_and_crucible_errors() -> None:
    with pytest.raises(ValueError):
        parse_threshold("p95<1")
    with pytest.raises(CrucibleError):
        parse_threshold("p95<1")


def test_empty_threshold_lists_the_allowed_aggregations() -> None:
    with pytest.raises(ThresholdSyntaxError, match=r"p\(N\), avg, med, min, max, rate, qps"):
        parse_threshold("")


# Evaluation against final results


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("p(50)<=10000", "p50_ms"),
        ("p(90)<10000", "p90_ms"),
        ("p(95)<10000", "p95_ms"),
        ("p(99)<10000", "p99_ms"),
        ("p(99.9)<10000", "p999_ms"),
        ("med<10000", "p50_ms"),
        ("avg<10000", "mean_ms"),
        ("min<10000", "min_ms"),
        ("max<10000", "max_ms"),
    ],
)
def test_standard_latency_aggregations_read_the_stored_fields(text: str, field: str) -> None:
    result = _result("q01")

    outcome = _evaluate_one(text, result)

    assert outcome.passed
    assert outcome.observed == getattr(result, field)


def test_a_percentile_between_the_stored_ones_is_read_from_the_histogram() -> None:
    result = _result("q01")
    expected_ms = round(_histogram(LATENCIES_US).get_value_at_percentile(75) / 1000, 3)

    passing = _evaluate_one(f"p(75)<={expected_ms}", result)
    failing = _evaluate_one(f"p(75)<{expected_ms}", result)

    assert 740 < expected_ms < 760
    assert passing.passed and passing.observed == expected_ms
    assert not failing.passed and failing.observed == expected_ms


def test_p100_is_the_largest_recorded_value() -> None:
    result = _result("q01")

    outcome = _evaluate_one("p(100)<0", result)

    assert outcome.observed == round(
        _histogram(LATENCIES_US).get_value_at_percentile(100) / 1000, 3
    )
    assert not outcome.passed


def test_a_latency_threshold_that_is_exceeded_fails_with_its_observed_value() -> None:
    outcome = _evaluate_one("p(95)<200", _result("q01"))

    assert not outcome.passed
    assert outcome.observed is not None and outcome.observed > 900
    assert outcome.description == f"q01: p(95)<200 (observed {outcome.observed:g})"


@pytest.mark.parametrize(
    ("text", "passed"),
    [
        ("rate<0.1", True),
        ("rate<0.09", False),
        ("count==1100", True),
        ("count>1100", False),
        ("count>=1100", True),
        ("count!=1100", False),
        ("qps>100", True),
        ("qps<=110", True),
        ("qps<110", False),
        ("dropped<1", True),
        ("dropped>0", False),
    ],
)
def test_counting_aggregations_compare_rate_count_qps_and_dropped(text: str, passed: bool) -> None:
    # 1000 successes and 100 errors over 10 s: rate 100/1100, qps 110; nothing dropped.
    result = _result("q01", errors=100)

    outcome = _evaluate_one(text, result)

    assert outcome.passed is passed


def test_error_rate_uses_the_exact_ratio_not_the_rounded_field() -> None:
    result = _result("q01", latencies_us=[1000, 2000], errors=1)

    outcome = _evaluate_one("rate<0.5", result)

    assert outcome.observed == pytest.approx(1 / 3)
    assert outcome.passed


def test_latency_aggregation_without_successful_executions_fails_with_no_observation() -> None:
    only_errors = _result("q01", latencies_us=[], errors=5)

    outcomes = [_evaluate_one(text, only_errors) for text in ["p(95)<200", "p(75)<200", "avg<1e9"]]

    assert all(not o.passed and o.observed is None for o in outcomes)
    assert outcomes[0].description == "q01: p(95)<200 (no successful executions)"


def test_error_rate_without_any_finished_execution_fails() -> None:
    outcome = _evaluate_one("rate<0.5", _result("q01", latencies_us=[]))

    assert not outcome.passed
    assert outcome.description == "q01: rate<0.5 (no finished executions)"


def test_total_rules_read_the_total_and_query_rules_read_their_query() -> None:
    fast, slow = _result("fast", [1000] * 10), _result("slow", [500_000] * 10)
    total = _result("total", [1000] * 10 + [500_000] * 10)
    rules = _rules("fast", "max<10") | _rules("slow", "max<10") | _rules("total", "p(50)<10")

    outcomes = evaluate(rules, [fast, slow], total)

    assert [(o.target, o.passed) for o in outcomes] == [
        ("fast", True),
        ("slow", False),
        ("total", True),
    ]


def test_an_unknown_target_fails_with_a_clear_reason() -> None:
    result = _result("q01")

    [outcome] = evaluate(_rules("q09", "p(95)<200"), [result], result)

    assert not outcome.passed and outcome.observed is None
    assert outcome.description == "q09: p(95)<200 (no query named 'q09' in the results)"


def test_check_targets_names_each_unknown_target_and_the_choices() -> None:
    rules = _rules("q01", "rate<0.1") | _rules("q09", "rate<0.1") | _rules("total", "qps>1")

    problems = check_targets(rules, ["q01", "q02"])

    assert problems == [
        "thresholds name 'q09', which is not a query of this plan: expected one of q01, q02, total"
    ]


def test_latency_source_reads_the_latency_histogram_when_a_result_has_one() -> None:
    # An open model's result carries the latency from the intended start next to service time.
    stalled = _histogram([900_000] * 10)
    result = _result("q01", [1000] * 10).model_copy(
        update={"latency_histogram": stalled.encode().decode("ascii")}
    )

    service = _evaluate_one("p(95)<100", result)
    [latency] = evaluate(_rules("q01", "p(95)<100"), [result], result, latency="latency")

    assert service.passed and service.observed == result.p95_ms
    assert not latency.passed
    assert latency.observed == round(stalled.get_value_at_percentile(95) / 1000, 3)


def test_latency_source_falls_back_to_service_time_without_a_latency_histogram() -> None:
    result = _result("q01")

    [outcome] = evaluate(_rules("q01", "p(99)<10000"), [result], result, latency="latency")

    assert outcome.observed == result.p99_ms


# Verdict


def _outcome(passed: bool, target: str = "q01", observed: float | None = 231.4) -> ThresholdOutcome:
    return ThresholdOutcome(target, "p(95)<200", passed, observed)


def test_verdict_passes_when_every_threshold_holds() -> None:
    assert verdict([_outcome(True), _outcome(True, "total")], None) == (Verdict.PASSED, [])


def test_verdict_passes_without_thresholds() -> None:
    assert verdict([], None) == (Verdict.PASSED, [])


def test_verdict_fails_and_lists_the_failed_thresholds() -> None:
    outcomes = [_outcome(True, "q02"), _outcome(False), _outcome(False, "total", 250.0)]

    assert verdict(outcomes, None) == (
        Verdict.FAILED,
        ["q01: p(95)<200 (observed 231.4)", "total: p(95)<200 (observed 250)"],
    )


def test_an_abort_outranks_failed_and_passed_thresholds() -> None:
    reason = "threshold 'rate<0.01' on total crossed after 12s: observed 0.034"

    assert verdict([_outcome(True)], reason) == (Verdict.ABORTED, [])
    assert verdict([_outcome(False)], reason) == (
        Verdict.ABORTED,
        ["q01: p(95)<200 (observed 231.4)"],
    )


# failure_detection


def test_failure_detection_becomes_an_aborting_error_rate_threshold_on_the_total() -> None:
    rules = from_failure_detection(True, 0.5, 10.0)

    [spec] = rules["total"]
    assert list(rules) == ["total"]
    assert spec.expression.text == "rate<0.5"
    assert (spec.abort_on_fail, spec.delay_abort_eval_s) == (True, 10.0)


def test_disabled_failure_detection_gives_no_thresholds() -> None:
    assert from_failure_detection(False, 0.5, 10.0) == {}


def test_an_error_rate_exactly_at_the_failure_detection_threshold_fails() -> None:
    rules = from_failure_detection(True, 0.5, 0.0)
    at_threshold = _result("total", latencies_us=[1000] * 50, errors=50)
    below = _result("total", latencies_us=[1000] * 51, errors=49)

    [at] = evaluate(rules, [], at_threshold)
    [under] = evaluate(rules, [], below)

    assert not at.passed and at.observed == 0.5 and at.abort_on_fail
    assert under.passed


def test_failure_detection_threshold_of_one_still_aborts_a_run_where_everything_fails() -> None:
    watch = AbortWatch(from_failure_detection(True, 1.0, 0.0))

    assert watch.check(1.0, {"total": LiveCounts(count=10, errors=10)}) is not None
    assert watch.check(1.0, {"total": LiveCounts(count=10, errors=9)}) is None


# Live abort


def test_abort_watch_reports_a_crossed_threshold_like_k6() -> None:
    watch = AbortWatch({"total": [ThresholdSpec(parse_threshold("rate<0.01"), True)]})

    reason = watch.check(12.2, {"total": LiveCounts(count=1000, errors=34)})

    assert reason == "threshold 'rate<0.01' on total crossed after 12s: observed 0.034"


def test_abort_watch_waits_for_the_delay_even_when_everything_fails() -> None:
    watch = AbortWatch(from_failure_detection(True, 0.5, 10.0))
    failing = {"total": LiveCounts(count=1000, errors=1000)}

    assert watch.check(9.9, failing) is None
    assert watch.check(10.0, failing) == (
        "threshold 'rate<0.5' on total crossed after 10s: observed 1"
    )


def test_abort_watch_ignores_thresholds_that_do_not_abort() -> None:
    watch = AbortWatch(_rules("total", "rate<0.01"))

    assert not watch.active
    assert watch.check(60.0, {"total": LiveCounts(count=10, errors=10)}) is None


def test_abort_watch_does_not_fail_a_rate_before_anything_finished() -> None:
    watch = AbortWatch(from_failure_detection(True, 0.5, 0.0))

    assert watch.check(30.0, {"total": LiveCounts(count=0, errors=0)}) is None


def test_abort_watch_checks_count_and_qps_live() -> None:
    rules = {
        "total": [
            ThresholdSpec(parse_threshold("count<=1000"), abort_on_fail=True),
            ThresholdSpec(parse_threshold("qps>50"), abort_on_fail=True, delay_abort_eval_s=5),
        ]
    }
    watch = AbortWatch(rules)

    assert watch.check(4.0, {"total": LiveCounts(count=100, errors=0)}) is None
    assert watch.check(10.0, {"total": LiveCounts(count=400, errors=0)}) == (
        "threshold 'qps>50' on total crossed after 10s: observed 40"
    )
    assert watch.check(10.0, {"total": LiveCounts(count=400, errors=0, qps=80.0)}) is None
    assert watch.check(10.0, {"total": LiveCounts(count=1001, errors=0)}) == (
        "threshold 'count<=1000' on total crossed after 10s: observed 1001"
    )


def test_abort_watch_checks_latency_only_when_a_histogram_is_supplied() -> None:
    watch = AbortWatch({"q01": [ThresholdSpec(parse_threshold("p(95)<100"), True)]})
    slow = _histogram([500_000] * 20)

    assert watch.check(5.0, {"q01": LiveCounts(count=20, errors=0)}) is None
    reason = watch.check(5.0, {"q01": LiveCounts(count=20, errors=0, histogram=slow)})

    observed = round(slow.get_value_at_percentile(95) / 1000, 3)
    assert reason == f"threshold 'p(95)<100' on q01 crossed after 5.0s: observed {observed:g}"


def test_abort_watch_skips_targets_missing_from_the_snapshot() -> None:
    watch = AbortWatch({"q01": [ThresholdSpec(parse_threshold("rate<0.01"), True)]})

    assert watch.check(60.0, {"total": LiveCounts(count=10, errors=10)}) is None


def test_a_negative_abort_delay_is_refused() -> None:
    with pytest.raises(ValueError, match="delay_abort_eval_s must be >= 0"):
        ThresholdSpec(parse_threshold("rate<0.1"), True, -1.0)
