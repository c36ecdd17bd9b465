"""Every plan shipped in plans/ validates together with its workloads."""

from pathlib import Path

import pytest

from crucible_dagster.plan import load_plan, resolve_workloads, validate_plan_file

PLANS_FOLDER = Path(__file__).parents[2] / "plans"
SHIPPED = sorted([*PLANS_FOLDER.glob("*.yaml"), *PLANS_FOLDER.glob("*.yml")])


def test_the_demo_plan_is_shipped() -> None:
    assert PLANS_FOLDER / "demo_tpch.yaml" in SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_plan_validates_with_its_workloads(path: Path) -> None:
    assert [str(p) for p in validate_plan_file(path)] == []


def test_demo_plan_reads_as_documented() -> None:
    loaded = load_plan(PLANS_FOLDER / "demo_tpch.yaml")
    plan = loaded.plan
    info = plan.test_environment.component_spec.cluster_info
    assert info is not None

    assert loaded.name == "demo_tpch"
    assert plan.test_metadata.run_label == "tpch-demo"
    assert (plan.test_environment.component_spec.type, plan.test_environment.target_db) == (
        "postgresql",
        "tpch",
    )
    assert (info.host, info.port, info.username) == ("127.0.0.1", 15433, "postgres")
    assert info.password.env == "CRUCIBLE_DEMO_PG_PASSWORD"
    assert {(t.dataset, t.scale, t.table) for t in plan.test_environment.fixture_tables()} == {
        ("tpch", "0.01", table)
        for table in ("region", "nation", "supplier", "part", "partsupp", "customer", "orders",
                      "lineitem")
    }  # fmt: skip
    execution = plan.execution
    assert (execution.executor, execution.scaling_mode, execution.concurrency) == (
        "native",
        "intra_node",
        8,
    )
    assert (execution.ramp_up.text, execution.hold_for.text) == ("10s", "30s")
    assert execution.failure_detection is not None
    assert execution.failure_detection.error_rate_threshold == 0.5
    assert execution.failure_detection.abort_delay.text == "10s"


def test_demo_workload_has_the_22_tpch_queries() -> None:
    [workload] = resolve_workloads(load_plan(PLANS_FOLDER / "demo_tpch.yaml"))

    assert workload.type == "sql"
    assert [q.name for q in workload.queries] == [f"q{n:02d}" for n in range(1, 23)]
    assert "create view" not in workload.queries[14].sql.lower()
