"""The closed model's schedule: how virtual users split across shards and when each starts."""

from crucible_dagster.engine.model import LoadShape
from crucible_dagster.errors import RunError


def split_vus(concurrency: int, shards: int) -> list[int]:
    """Splits `concurrency` virtual users over `shards` by largest remainder (8 over 3: 3, 3, 2).

    Shards have equal weights, so every remainder ties and the earlier shards take the extras.
    """
    if shards < 1:
        raise RunError(f"shards must be at least 1, got {shards}")
    if concurrency < shards:
        raise RunError(
            f"concurrency {concurrency} is lower than shards {shards}: every shard needs at least "
            "one virtual user (shards split the virtual users, they do not multiply them)"
        )
    quotas = [concurrency / shards] * shards
    shares = [int(q) for q in quotas]
    leftover = concurrency - sum(shares)
    by_remainder = sorted(range(shards), key=lambda i: (-(quotas[i] - shares[i]), i))
    for i in by_remainder[:leftover]:
        shares[i] += 1
    return shares


def vu_start_times(shape: LoadShape) -> list[list[float]]:
    """Start offsets (seconds from load start) of each shard's virtual users.

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


def validate_shape(shape: LoadShape) -> None:
    """Raises RunError when the shape cannot be run; the plan model validates the same earlier."""
    if shape.concurrency < 1:
        raise RunError(f"concurrency must be at least 1, got {shape.concurrency}")
    if shape.ramp_up_s < 0:
        raise RunError(f"ramp_up must not be negative, got {shape.ramp_up_s}s")
    if shape.hold_for_s <= 0:
        raise RunError(f"hold_for must be longer than 0s, got {shape.hold_for_s}s")
    if shape.graceful_stop_s < 0:
        raise RunError(f"graceful_stop must not be negative, got {shape.graceful_stop_s}s")
    split_vus(shape.concurrency, shape.shards)


def shard_seed(seed: int | None, shard: int) -> int | None:
    """A distinct, reproducible seed per shard, derived from the run's seed."""
    if seed is None:
        return None
    return seed * 1_000_003 + shard
