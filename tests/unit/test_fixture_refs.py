import pytest

from crucible_dagster.errors import FixtureError
from crucible_dagster.fixtures.refs import FixtureRef, parse_fixture_id


def test_fixture_id_names_dataset_scale_and_table() -> None:
    ref = parse_fixture_id("tpch/sf0.01/lineitem")

    assert ref == FixtureRef("tpch", "0.01", "lineitem")
    assert ref.prefix == "fixtures/tpch/sf0.01/lineitem/"
    assert ref.scale_prefix == "fixtures/tpch/sf0.01/"
    assert ref.fixture_id == "tpch/sf0.01/lineitem"


@pytest.mark.parametrize(
    "fixture_id",
    [
        "tpch/lineitem",
        "tpch/0.01/lineitem",
        "tpch/sf0.01/lineitem/extra",
        "tpch/sf/lineitem",
        "tpch/sf-1/lineitem",
        "tpch/sf0/lineitem",
        "tpch/sf0.10/lineitem",
        "tpch/sf01/lineitem",
        "tpch/sf0.01/line item",
        "tpch/sf0.01/lineitem;drop table x",
        'tpch/sf0.01/li"neitem',
        "../sf1/lineitem",
        "TPCH/sf1/lineitem",
        "tpch/sf1/" + "a" * 64,
    ],
)
def test_malformed_or_unsafe_fixture_ids_are_rejected(fixture_id: str) -> None:
    with pytest.raises(FixtureError):
        parse_fixture_id(fixture_id)


@pytest.mark.parametrize("scale", ["0.01", "0.1", "1", "10", "100", "2.5"])
def test_usual_scales_are_valid(scale: str) -> None:
    assert FixtureRef("tpch", scale, "orders").scale == scale
