"""The one rule every loader follows for a target table that already exists."""

import time

import pytest

from crucible_dagster.errors import FixtureError
from crucible_dagster.fixtures.loading import (
    LOADING_PREFIX,
    FixtureSource,
    FixtureTableLoad,
    ReloadPolicy,
    TableLoadReport,
    existing_table_verdict,
)
from crucible_dagster.fixtures.refs import FixtureRef

REF = FixtureRef("tpch", "0.01", "nation")
SOURCE = FixtureSource(["fixtures/tpch/sf0.01/nation/part-0.parquet"], 25, "v2" * 8)


def verdict(
    reload: ReloadPolicy, present: bool, recorded: tuple[str, int] | None
) -> tuple[TableLoadReport | None, str | None]:
    load = FixtureTableLoad(REF, "nation", reload)
    return existing_table_verdict(
        load, SOURCE, present=present, recorded=recorded, sut_key="pg://x", started=time.monotonic()
    )


def test_a_missing_table_is_loaded_and_replaces_nothing() -> None:
    assert verdict("auto", False, None) == (None, None)


def test_the_same_data_version_is_skipped_with_its_recorded_rows() -> None:
    skipped, replaced = verdict("auto", True, (SOURCE.data_version, 25))
    assert skipped is not None and skipped.action == "skipped" and skipped.rows == 25
    assert replaced is None


def test_reload_always_replaces_even_the_same_version() -> None:
    assert verdict("always", True, (SOURCE.data_version, 25)) == (None, SOURCE.data_version)


def test_another_version_needs_reload_always() -> None:
    with pytest.raises(FixtureError, match="set reload: always to replace it"):
        verdict("auto", True, ("v1" * 8, 25))
    assert verdict("always", True, ("v1" * 8, 25)) == (None, "v1" * 8)


def test_a_half_loaded_table_is_crucibles_to_replace_whatever_the_policy() -> None:
    assert verdict("auto", True, (LOADING_PREFIX + "v1" * 8, 0)) == (None, None)


@pytest.mark.parametrize("reload", ["auto", "always"])
def test_a_table_crucible_did_not_create_is_never_touched(reload: ReloadPolicy) -> None:
    with pytest.raises(FixtureError, match="was not created by Crucible"):
        verdict(reload, True, None)
