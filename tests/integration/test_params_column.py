from collections import Counter
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crucible_dagster.errors import FixtureError
from crucible_dagster.fixtures.manifest import FixtureManifest
from crucible_dagster.params import ColumnParam, parse_param, sample_column
from crucible_dagster.storage import LocalStorage, Storage
from tests.servers_s3 import S3Server

pytestmark = pytest.mark.integration

PREFIX = "fixtures/shop/sf1/orders/"


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """The same tests against a local directory and the real S3 server."""
    if request.param == "local":
        return LocalStorage(tmp_path / "storage")
    server: S3Server = request.getfixturevalue("s3_server")
    return server.storage()


def column_spec(column: str, fixture: str = "shop/sf1/orders") -> ColumnParam:
    _name, spec = parse_param(f"p {{type: column, fixture: {fixture}, column: {column}}}")
    assert isinstance(spec, ColumnParam)
    return spec


def put_parquet(storage: Storage, key: str, table: pa.Table, tmp_path: Path) -> None:
    path = tmp_path / key.replace("/", "_")
    # Small row groups, so that a file is read in several batches.
    pq.write_table(table, path, row_group_size=1000)
    storage.put_file(key, path)


def orders(ids: range) -> pa.Table:
    """Ids, a status with a null on every tenth row, and a date."""
    return pa.table(
        {
            "o_id": pa.array(list(ids), pa.int64()),
            "o_status": pa.array([None if i % 10 == 0 else f"s{i % 3}" for i in ids]),
            "o_day": pa.array([date(2020, 1, 1 + i % 28) for i in ids], pa.date32()),
        }
    )


def test_sample_holds_every_value_when_the_column_is_smaller_than_the_limit(
    storage: Storage, tmp_path: Path
) -> None:
    put_parquet(storage, PREFIX + "part-0.parquet", orders(range(0, 3000)), tmp_path)
    put_parquet(storage, PREFIX + "part-1.parquet", orders(range(3000, 5000)), tmp_path)

    ids = sample_column(storage, column_spec("o_id"), seed=1)
    days = sample_column(storage, column_spec("o_day"), seed=1)

    assert sorted(integers(ids)) == list(range(5000))
    assert {type(v) for v in days} == {date}


def test_sample_skips_nulls(storage: Storage, tmp_path: Path) -> None:
    put_parquet(storage, PREFIX + "part-0.parquet", orders(range(0, 2000)), tmp_path)

    statuses = sample_column(storage, column_spec("o_status"), seed=1)

    assert len(statuses) == 1800
    assert Counter(statuses) == Counter(f"s{i % 3}" for i in range(2000) if i % 10 != 0)


def test_sample_respects_the_limit_and_is_reproducible_by_seed(
    storage: Storage, tmp_path: Path
) -> None:
    put_parquet(storage, PREFIX + "part-0.parquet", orders(range(0, 6000)), tmp_path)
    put_parquet(storage, PREFIX + "part-1.parquet", orders(range(6000, 10000)), tmp_path)
    spec = column_spec("o_id")

    first = sample_column(storage, spec, seed=7, limit=500)
    again = sample_column(storage, spec, seed=7, limit=500)
    other = sample_column(storage, spec, seed=8, limit=500)

    assert len(first) == 500 and len(set(first)) == 500
    assert set(first) <= set(range(10000))
    assert first == again
    assert first != other
    # Values from the second file are sampled too, not only the first ones read.
    assert any(v >= 6000 for v in integers(first))


def integers(values: list[object]) -> list[int]:
    ints = [v for v in values if isinstance(v, int)]
    assert len(ints) == len(values)
    return ints


def test_sample_is_uniform_over_all_rows(tmp_path: Path) -> None:
    # Every row should be kept with probability limit / rows; counted by tenth of the rows over
    # many seeds, each tenth gets a tenth of the kept values.
    storage = LocalStorage(tmp_path / "storage")
    put_parquet(storage, PREFIX + "part-0.parquet", orders(range(0, 7000)), tmp_path)
    put_parquet(storage, PREFIX + "part-1.parquet", orders(range(7000, 20_000)), tmp_path)
    spec = column_spec("o_id")

    tenths: Counter[int] = Counter()
    for seed in range(40):
        sample = integers(sample_column(storage, spec, seed=seed, limit=250))
        tenths.update(v // 2000 for v in sample)

    # 1000 expected per tenth; the standard deviation is about 30.
    assert sorted(tenths) == list(range(10))
    assert all(abs(c - 1000) < 150 for c in tenths.values())


def test_missing_fixture_says_how_to_materialize_it(storage: Storage) -> None:
    spec = column_spec("c_custkey", fixture="tpch/sf0.01/customer")

    with pytest.raises(FixtureError) as caught:
        sample_column(storage, spec, seed=1)

    message = str(caught.value)
    assert "fixture tpch/sf0.01/customer has no Parquet files" in message
    assert "fixtures/tpch asset (partition 0.01)" in message
    assert "run a plan that lists this fixture" in message


def test_unknown_column_lists_the_available_columns(storage: Storage, tmp_path: Path) -> None:
    put_parquet(storage, PREFIX + "part-0.parquet", orders(range(10)), tmp_path)

    with pytest.raises(FixtureError) as caught:
        sample_column(storage, column_spec("o_total"), seed=1)

    message = str(caught.value)
    assert "no column 'o_total'" in message
    assert "available columns: o_id, o_status, o_day" in message


def test_unreadable_parquet_is_a_fixture_error(storage: Storage) -> None:
    storage.put_bytes(PREFIX + "part-0.parquet", b"not parquet at all")

    with pytest.raises(FixtureError, match="fixture shop/sf1/orders: cannot read"):
        sample_column(storage, column_spec("o_id"), seed=1)


def test_sample_of_generated_tpch_customer_keys(
    tpch_sf001: tuple[LocalStorage, FixtureManifest],
) -> None:
    storage, manifest = tpch_sf001
    spec = column_spec("c_custkey", fixture="tpch/sf0.01/customer")

    keys = sample_column(storage, spec, seed=3, limit=100)

    assert len(keys) == 100
    assert set(keys) <= set(range(1, manifest.table("customer").rows + 1))
