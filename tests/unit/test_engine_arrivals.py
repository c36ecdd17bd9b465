import pickle

import pytest

from crucible_dagster.engine import LoadShape
from crucible_dagster.engine.schedule import (
    ArrivalSchedule,
    ConstantArrivals,
    EveryNth,
    RampingArrivals,
    arrival_schedule,
    shard_vus,
    split_evenly,
    validate_shape,
)
from crucible_dagster.errors import RunError


def _all(schedule: ArrivalSchedule) -> list[float]:
    starts = []
    while (due_s := schedule.next_start_s()) is not None:
        starts.append(due_s)
    return starts


def test_constant_rate_starts_evenly_from_zero() -> None:
    starts = _all(ConstantArrivals(rate_per_s=4.0, duration_s=1.0))

    assert starts == [0.0, 0.25, 0.5, 0.75]


def test_constant_rate_runs_rate_times_duration_starts() -> None:
    assert len(_all(ConstantArrivals(rate_per_s=200.0, duration_s=30.0))) == 6000


def test_time_unit_scales_the_rate_like_k6() -> None:
    shape = LoadShape(model="constant_arrival_rate", rate=30, time_unit_s=60, duration_s=10)

    starts = _all(arrival_schedule(shape))

    assert starts == pytest.approx([0.0, 2.0, 4.0, 6.0, 8.0])


def test_ramping_rate_count_is_the_integral_of_the_rate() -> None:
    # 0 -> 10/s over 10 s (50 starts), hold 10/s for 5 s (50), 10 -> 0/s over 4 s (20).
    schedule = RampingArrivals(0.0, [(10.0, 10.0), (10.0, 5.0), (0.0, 4.0)])

    starts = _all(schedule)

    assert len(starts) == 120
    assert starts == sorted(starts)
    assert all(0.0 <= s < 19.0 for s in starts)
    assert sum(1 for s in starts if s < 10.0) == 50
    assert sum(1 for s in starts if 10.0 <= s < 15.0) == 50


def test_ramping_starts_follow_the_quadratic_of_a_linear_ramp() -> None:
    # Rate r(t) = 2t, so N(t) = t^2 and the k-th start is at sqrt(k).
    starts = _all(RampingArrivals(0.0, [(20.0, 10.0)]))

    assert starts == pytest.approx([k**0.5 for k in range(100)])


def test_ramping_at_a_steady_rate_equals_the_constant_schedule() -> None:
    ramping = _all(RampingArrivals(8.0, [(8.0, 3.0)]))

    assert ramping == pytest.approx(_all(ConstantArrivals(8.0, 3.0)))


def test_zero_duration_stage_jumps_to_its_target() -> None:
    starts = _all(RampingArrivals(0.0, [(0.0, 2.0), (4.0, 0.0), (4.0, 1.0)]))

    assert starts == pytest.approx([2.0, 2.25, 2.5, 2.75])


def test_a_stage_at_rate_zero_issues_nothing() -> None:
    assert _all(RampingArrivals(0.0, [(0.0, 5.0)])) == []


@pytest.mark.parametrize("shards", [2, 3, 7])
def test_shards_together_run_the_global_schedule_exactly(shards: int) -> None:
    shape = LoadShape(
        model="ramping_arrival_rate",
        start_rate=5,
        stages=((50, 3.0), (20, 2.0)),
        shards=shards,
        max_vus=shards,
    )
    global_starts = _all(arrival_schedule(LoadShape(**{**shape.__dict__, "shards": 1})))

    per_shard = [_all(arrival_schedule(shape, shard)) for shard in range(shards)]

    assert sorted(s for starts in per_shard for s in starts) == global_starts
    assert [len(s) for s in per_shard] == split_evenly(len(global_starts), shards)


def test_every_nth_deals_starts_in_turn() -> None:
    starts = _all(EveryNth(ConstantArrivals(10.0, 1.0), shard=1, shards=3))

    assert starts == pytest.approx([0.1, 0.4, 0.7])


def test_open_virtual_users_split_by_largest_remainder() -> None:
    shape = LoadShape(
        model="constant_arrival_rate", rate=10, duration_s=1, pre_allocated_vus=4, max_vus=8,
        shards=3,
    )  # fmt: skip

    assert shard_vus(shape) == [(2, 3), (1, 3), (1, 2)]


def test_max_vus_defaults_to_pre_allocated_like_k6() -> None:
    shape = LoadShape(model="constant_arrival_rate", rate=1, duration_s=1, pre_allocated_vus=3)

    assert shape.vus_limit == 3


def test_planned_length_follows_the_model() -> None:
    assert LoadShape(concurrency=2, ramp_up_s=1, hold_for_s=2).planned_s == 3
    assert LoadShape(model="constant_arrival_rate", rate=1, duration_s=7).planned_s == 7
    ramping = LoadShape(model="ramping_arrival_rate", stages=((5, 2.0), (0, 1.5)))
    assert ramping.planned_s == 3.5


def test_shapes_are_frozen_and_picklable() -> None:
    shape = LoadShape(
        model="ramping_arrival_rate", start_rate=1, stages=((5, 2.0),), max_vus=3, warm_up_s=1
    )

    assert pickle.loads(pickle.dumps(shape)) == shape
    with pytest.raises(AttributeError):
        shape.rate = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "shape,message",
    [
        (LoadShape(model="poisson"), "model must be one of closed"),  # type: ignore[arg-type]
        (LoadShape(model="constant_arrival_rate", duration_s=1, max_vus=1), "rate must be"),
        (LoadShape(model="constant_arrival_rate", rate=5, max_vus=1), "duration must be"),
        (
            LoadShape(model="constant_arrival_rate", rate=5, duration_s=1, time_unit_s=0),
            "time_unit must be longer than 0s",
        ),
        (LoadShape(model="constant_arrival_rate", rate=5, duration_s=1), "max_vus 0 is lower"),
        (
            LoadShape(
                model="constant_arrival_rate", rate=5, duration_s=1, pre_allocated_vus=4, max_vus=2
            ),
            r"max_vus \(2\) must be at least pre_allocated_vus \(4\)",
        ),
        (LoadShape(model="ramping_arrival_rate", max_vus=1), "needs at least one stage"),
        (
            LoadShape(model="ramping_arrival_rate", stages=((-1, 2.0),), max_vus=1),
            "stage 1: target and duration must not be negative",
        ),
        (
            LoadShape(model="constant_arrival_rate", rate=5, duration_s=2, max_vus=1, warm_up_s=2),
            r"warm_up \(2s\) must be shorter than the schedule \(2s\)",
        ),
        (
            LoadShape(concurrency=1, hold_for_s=1, warm_up_s=-1),
            "warm_up must not be negative",
        ),
    ],
)
def test_unrunnable_open_shapes_are_rejected(shape: LoadShape, message: str) -> None:
    with pytest.raises(RunError, match=message):
        validate_shape(shape)
