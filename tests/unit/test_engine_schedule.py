import pytest

from crucible_dagster.engine import LoadShape
from crucible_dagster.engine.schedule import shard_seed, split_vus, validate_shape, vu_start_times
from crucible_dagster.errors import RunError


def test_eight_users_over_three_shards_split_three_three_two() -> None:
    assert split_vus(8, 3) == [3, 3, 2]


@pytest.mark.parametrize("concurrency,shards", [(1, 1), (7, 2), (10, 4), (100, 7), (5, 5)])
def test_split_never_multiplies_users(concurrency: int, shards: int) -> None:
    shares = split_vus(concurrency, shards)

    assert sum(shares) == concurrency
    assert len(shares) == shards
    assert max(shares) - min(shares) <= 1


def test_concurrency_below_shards_is_an_error() -> None:
    with pytest.raises(RunError, match="concurrency 2 is lower than shards 3"):
        split_vus(2, 3)


def test_ramp_starts_users_linearly_like_k6_stages() -> None:
    shape = LoadShape(concurrency=4, ramp_up_s=2.0, hold_for_s=1.0)

    assert vu_start_times(shape) == [[0.5, 1.0, 1.5, 2.0]]


def test_ramp_is_dealt_across_shards_in_turn() -> None:
    shape = LoadShape(concurrency=8, ramp_up_s=8.0, hold_for_s=1.0, shards=3)

    starts = vu_start_times(shape)

    assert starts == [[1.0, 4.0, 7.0], [2.0, 5.0, 8.0], [3.0, 6.0]]
    assert [len(s) for s in starts] == split_vus(8, 3)


def test_zero_ramp_starts_every_user_at_once() -> None:
    shape = LoadShape(concurrency=5, ramp_up_s=0.0, hold_for_s=1.0, shards=2)

    assert vu_start_times(shape) == [[0.0, 0.0, 0.0], [0.0, 0.0]]


@pytest.mark.parametrize(
    "shape,message",
    [
        (LoadShape(concurrency=0, ramp_up_s=0, hold_for_s=1), "concurrency must be at least 1"),
        (LoadShape(concurrency=1, ramp_up_s=-1, hold_for_s=1), "ramp_up must not be negative"),
        (LoadShape(concurrency=1, ramp_up_s=0, hold_for_s=0), "hold_for must be longer than 0s"),
        (LoadShape(concurrency=2, ramp_up_s=0, hold_for_s=1, shards=3), "lower than shards"),
    ],
)
def test_unrunnable_shapes_are_rejected(shape: LoadShape, message: str) -> None:
    with pytest.raises(RunError, match=message):
        validate_shape(shape)


def test_shard_seeds_are_reproducible_and_distinct() -> None:
    assert shard_seed(7, 0) == shard_seed(7, 0)
    assert shard_seed(7, 0) != shard_seed(7, 1)
    assert shard_seed(None, 3) is None
