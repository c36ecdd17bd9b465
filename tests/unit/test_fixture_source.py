"""Where a fixture table's files come from, and what to do when there are none."""

from pathlib import Path

import pytest

from crucible_dagster.errors import FixtureError
from crucible_dagster.fixtures.loading import fixture_source
from crucible_dagster.fixtures.refs import FixtureRef
from crucible_dagster.storage import LocalStorage


@pytest.mark.parametrize("dataset", ["tpch", "tpcds"])
def test_missing_generated_fixture_says_which_partition_to_materialize(
    tmp_path: Path, dataset: str
) -> None:
    ref = FixtureRef(dataset, "0.1", "customer")

    with pytest.raises(FixtureError) as caught:
        fixture_source(LocalStorage(tmp_path), ref, {})

    assert str(caught.value).endswith(f"materialize fixtures/{dataset} partition 0.1")


def test_missing_uploaded_fixture_says_how_to_upload_it(tmp_path: Path) -> None:
    ref = FixtureRef("sales", "1", "orders")

    with pytest.raises(FixtureError) as caught:
        fixture_source(LocalStorage(tmp_path), ref, {})

    message = str(caught.value)
    assert message.endswith("upload it with `crucible fixtures upload sales/sf1/orders FILE...`")
    assert "materialize" not in message


def test_uploaded_fixture_without_a_manifest_is_found_by_listing(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    ref = FixtureRef("sales", "1", "orders")
    storage.put_bytes(ref.prefix + "part-0.parquet", b"data")
    storage.put_bytes(ref.prefix + "notes.txt", b"not a table file")

    source = fixture_source(storage, ref, {})

    assert (source.keys, source.rows) == ([ref.prefix + "part-0.parquet"], None)
