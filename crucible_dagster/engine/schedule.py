"""Load schedules: how virtual users and arrivals split across shards, and when each starts.

The open models' arrival times are small scheduler objects with one method, `next_start_s()`:
the load-clock offset of the next query start, or None once the schedule has ended.
"""

import math
from collections.abc import Sequence
from typing import Protocol

from crucible_dagster.engine.model import (
    CLOSED,
    CONSTANT_ARRIVAL_RATE,
    MODELS,
    RAMPING_ARRIVAL_RATE,
    LoadShape,
)
from crucible_dagster.errors import RunError

# Float sums of stage integrals may land a hair before the schedule's end; such a start belongs
# to the next (non-existent) period, not to this run.
_END_SLACK_S = 1e-9


def split_evenly(total: int, shards: int) -> list[int]:
    """Splits `total` over `shards` by largest remainder; ties go to the earlier shards."""
    if shards < 1:
        raise RunError(f"shards must be at least 1, got {shards}")
    quotas = [total / shards] * shards
    shares = [int(q) for q in quotas]
    leftover = total - sum(shares)
    by_remainder = sorted(range(shards), key=lambda i: (-(quotas[i] - shares[i]), i))
    for i in by_remainder[:leftover]:
        shares[i] += 1
    return shares


def split_vus(concurrency: int, shards: int) -> list[int]:
    """Splits `concurrency` virtual users over `shards` by largest remainder (8 over 3: 3, 3, 2)."""
    if shards < 1:
        raise RunError(f"shards must be at least 1, got {shards}")
    if concurrency < shards:
        raise RunError(
            f"concurrency {concurrency} is lower than shards {shards}: every shard needs at least "
            "one virtual user (shards split the virtual users, they do not multiply them)"
        )
    return split_evenly(concurrency, shards)


def vu_start_times(shape: LoadShape) -> list[list[float]]:
    """Start offsets (seconds from load start) of each shard's closed-model virtual users.

    As in k6 stages ramping from 0 to N over T, the k-th of N users starts at k * T / N, so the
    number of active users at time t is floor(N * t / T) and the last one starts at T. Users are
    dealt to shards in turn, which keeps every shard's ramp as linear as the whole one and gives
    each shard exactly its largest-remainder share.
    """
    shares = split_vus(shape.concurrency, shape.shards)
    starts: list[list[float]] = [[] for _ in shares]
    step_s = shape.ramp_up_s / shape.concurrency
    for k in range(shape.concurrency):
        starts[k % shape.shards].append((k + 1) * step_s)
    assert [len(s) for s in starts] == shares
    return starts


class ArrivalSchedule(Protocol):
    """When query starts are due in an open model."""

    def next_start_s(self) -> float | None:
        """The load-clock offset of the next start, or None when the schedule has ended."""
        ...


class ConstantArrivals:
    """`rate_per_s` starts per second for `duration_s`: the k-th start (from 0) is at k / rate.

    As in k6's constant-arrival-rate, the first start is at 0 and starts are evenly spaced.
    """

    def __init__(self, rate_per_s: float, duration_s: float) -> None:
        self.rate_per_s = rate_per_s
        self.duration_s = duration_s
        self._k = 0

    def next_start_s(self) -> float | None:
        due_s = self._k / self.rate_per_s
        if due_s >= self.duration_s - _END_SLACK_S:
            return None
        self._k += 1
        return due_s


class RampingArrivals:
    """A rate that moves linearly from `start_per_s` to each stage's target over its duration.

    With r(t) the rate, the k-th start (k = 0, 1, ...) is at the t where the number of starts
    due so far, N(t) = integral of r from 0 to t, equals k; a constant rate gives k / r as in
    `ConstantArrivals`. Inside a stage from rate a to rate b over d seconds, the starts due u
    seconds into it are a*u + (b - a)/(2d) * u^2; solving that for m more starts gives
    u = 2m / (a + sqrt(a^2 + 2 m (b - a) / d)), a form that stays exact when a == b and never
    divides by zero while any start is due. A stage of zero duration jumps to its target.
    """

    def __init__(self, start_per_s: float, stages_per_s: Sequence[tuple[float, float]]) -> None:
        self._stages = list(stages_per_s)
        self._stage = 0
        self._stage_start_s = 0.0
        self._stage_from = start_per_s
        self._due_before_stage = 0.0  # N(t) at the start of the current stage
        self._k = 0

    def next_start_s(self) -> float | None:
        while self._stage < len(self._stages):
            target, duration_s = self._stages[self._stage]
            a = self._stage_from
            in_stage = (a + target) / 2 * duration_s
            m = self._k - self._due_before_stage
            if duration_s > 0 and m < in_stage:
                slope = (target - a) / duration_s
                u = 2 * m / (a + math.sqrt(max(a * a + 2 * m * slope, 0.0))) if m > 0 else 0.0
                if u < duration_s - _END_SLACK_S and (m > 0 or a > 0 or slope > 0):
                    self._k += 1
                    return self._stage_start_s + u
            self._stage += 1
            self._stage_start_s += duration_s
            self._stage_from = target
            self._due_before_stage += in_stage
        return None


class EveryNth:
    """One shard's part of a global schedule: the starts numbered `shard`, `shard + n`, ...

    Dealing the global starts in turn splits any rate exactly: together the shards run the
    global schedule start for start, and each one's count is the largest-remainder share.
    """

    def __init__(self, schedule: ArrivalSchedule, shard: int, shards: int) -> None:
        self._schedule = schedule
        self._shard = shard
        self._shards = shards
        self._index = 0  # number of global starts consumed

    def next_start_s(self) -> float | None:
        while True:
            due_s = self._schedule.next_start_s()
            if due_s is None:
                return None
            mine = self._index % self._shards == self._shard
            self._index += 1
            if mine:
                return due_s


def arrival_schedule(shape: LoadShape, shard: int = 0) -> ArrivalSchedule:
    """The starts one shard runs for an open-model shape."""
    per_s = 1.0 / shape.time_unit_s
    schedule: ArrivalSchedule
    if shape.model == CONSTANT_ARRIVAL_RATE:
        schedule = ConstantArrivals(shape.rate * per_s, shape.duration_s)
    elif shape.model == RAMPING_ARRIVAL_RATE:
        stages = [(target * per_s, duration_s) for target, duration_s in shape.stages]
        schedule = RampingArrivals(shape.start_rate * per_s, stages)
    else:
        raise RunError(f"the {shape.model} model has no arrival schedule")
    return EveryNth(schedule, shard, shape.shards) if shape.shards > 1 else schedule


def validate_shape(shape: LoadShape) -> None:
    """Raises RunError when the shape cannot be run; the plan model validates the same earlier."""
    if shape.model not in MODELS:
        raise RunError(f"model must be one of {', '.join(MODELS)}, got {shape.model!r}")
    if shape.graceful_stop_s < 0:
        raise RunError(f"graceful_stop must not be negative, got {shape.graceful_stop_s}s")
    if shape.model == CLOSED:
        _validate_closed(shape)
    else:
        _validate_open(shape)
    if shape.warm_up_s < 0:
        raise RunError(f"warm_up must not be negative, got {shape.warm_up_s}s")
    if shape.warm_up_s >= shape.planned_s:
        raise RunError(
            f"warm_up ({shape.warm_up_s:g}s) must be shorter than the schedule "
            f"({shape.planned_s:g}s), or nothing would be measured"
        )


def _validate_closed(shape: LoadShape) -> None:
    if shape.concurrency < 1:
        raise RunError(f"concurrency must be at least 1, got {shape.concurrency}")
    if shape.ramp_up_s < 0:
        raise RunError(f"ramp_up must not be negative, got {shape.ramp_up_s}s")
    if shape.hold_for_s <= 0:
        raise RunError(f"hold_for must be longer than 0s, got {shape.hold_for_s}s")
    split_vus(shape.concurrency, shape.shards)


def _validate_open(shape: LoadShape) -> None:
    if shape.time_unit_s <= 0:
        raise RunError(f"time_unit must be longer than 0s, got {shape.time_unit_s}s")
    if shape.model == CONSTANT_ARRIVAL_RATE:
        if shape.rate <= 0:
            raise RunError(f"rate must be greater than 0, got {shape.rate}")
        if shape.duration_s <= 0:
            raise RunError(f"duration must be longer than 0s, got {shape.duration_s}s")
    else:
        if not shape.stages:
            raise RunError("ramping_arrival_rate needs at least one stage (target, duration)")
        if shape.start_rate < 0:
            raise RunError(f"start_rate must not be negative, got {shape.start_rate}")
        for i, (target, duration_s) in enumerate(shape.stages):
            if target < 0 or duration_s < 0:
                raise RunError(
                    f"stage {i + 1}: target and duration must not be negative, "
                    f"got ({target}, {duration_s}s)"
                )
        if shape.planned_s <= 0:
            raise RunError("the stages of ramping_arrival_rate must last longer than 0s")
    if shape.pre_allocated_vus < 0:
        raise RunError(f"pre_allocated_vus must not be negative, got {shape.pre_allocated_vus}")
    if shape.vus_limit < shape.pre_allocated_vus:
        raise RunError(
            f"max_vus ({shape.vus_limit}) must be at least pre_allocated_vus "
            f"({shape.pre_allocated_vus})"
        )
    if shape.vus_limit < shape.shards:
        raise RunError(
            f"max_vus {shape.vus_limit} is lower than shards {shape.shards}: every shard needs "
            "at least one virtual user (set max_vus or pre_allocated_vus)"
        )


def shard_vus(shape: LoadShape) -> list[tuple[int, int]]:
    """(pre-allocated, maximum) virtual users of each shard of an open-model shape."""
    pre = split_evenly(shape.pre_allocated_vus, shape.shards)
    most = split_evenly(shape.vus_limit, shape.shards)
    return list(zip(pre, most, strict=True))


def shard_seed(seed: int | None, shard: int) -> int | None:
    """A distinct, reproducible seed per shard, derived from the run's seed."""
    if seed is None:
        return None
    return seed * 1_000_003 + shard
