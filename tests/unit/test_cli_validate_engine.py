"""`crucible validate` says when the plan's engine cannot reach its SUT, before any run."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from crucible_dagster.cli import EXIT_INVALID, app
from crucible_dagster.settings import PROJECT_ROOT

runner = CliRunner()
DEMO = (PROJECT_ROOT / "plans" / "demo_tpch.yaml").read_text()


def _plan(tmp_path: Path, text: str) -> Path:
    (tmp_path / "workloads").mkdir()
    source = PROJECT_ROOT / "plans" / "workloads" / "tpch_postgresql.sql"
    (tmp_path / "workloads" / source.name).write_text(source.read_text())
    path = tmp_path / "k6_plan.yaml"
    path.write_text(text)
    return path


def test_k6_against_postgresql_on_stock_k6_is_invalid_at_the_executor_line(
    crucible_home: Path, tmp_path: Path
) -> None:
    path = _plan(tmp_path, DEMO.replace("executor: native", "executor: k6"))
    line = next(n for n, text in enumerate(DEMO.splitlines(), 1) if "executor: native" in text)

    outcome = runner.invoke(app, ["validate", str(path)])

    assert outcome.exit_code == EXIT_INVALID
    assert f"k6_plan.yaml:{line}:" in outcome.output
    assert "xk6-sql" in outcome.output and "executor: native" in outcome.output
    assert "Traceback" not in outcome.output


def test_a_missing_k6_binary_is_named_with_the_setting_to_fix_it(
    crucible_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crucible_dagster.settings import get_settings

    monkeypatch.setenv("CRUCIBLE_K6_BINARY", str(tmp_path / "no-k6"))
    get_settings.cache_clear()
    try:
        path = _plan(tmp_path, DEMO.replace("executor: native", "executor: k6"))
        outcome = runner.invoke(app, ["validate", str(path)])
    finally:
        get_settings.cache_clear()

    assert outcome.exit_code == EXIT_INVALID
    assert "no-k6" in outcome.output and "CRUCIBLE_K6_BINARY" in outcome.output


def test_the_native_demo_plan_stays_valid(crucible_home: Path) -> None:
    outcome = runner.invoke(app, ["validate", str(PROJECT_ROOT / "plans" / "demo_tpch.yaml")])
    assert outcome.exit_code == 0, outcome.output


CLICKHOUSE_PLAN = """\
test_metadata: {run_label: k6 on ClickHouse}
test_environment:
  env_type: long-lived
  target_db: bench
  component_spec:
    type: clickhouse
    cluster_info: {host: 127.0.0.1, port: 8123, username: default, password: {env: CH_PW}}
execution:
  executor: k6
  concurrency: 2
  ramp_up: 0s
  hold_for: HOLD
  workload:
    - workload_id: ch
ARRIVAL"""


def _clickhouse_plan(tmp_path: Path, hold_for: str = "10s", arrival: str = "") -> Path:
    (tmp_path / "workloads").mkdir(exist_ok=True)
    (tmp_path / "workloads" / "ch.sql").write_text(
        "-- @type: clickhouse\n-- @name: one\nSELECT 1\n"
    )
    path = tmp_path / "ch_k6.yaml"
    path.write_text(CLICKHOUSE_PLAN.replace("HOLD", hold_for).replace("ARRIVAL", arrival))
    return path


def test_k6_refusals_of_the_load_shape_point_at_the_plan(
    crucible_home: Path, tmp_path: Path
) -> None:
    assert runner.invoke(app, ["validate", str(_clickhouse_plan(tmp_path))]).exit_code == 0

    fractional = _clickhouse_plan(tmp_path, arrival="  arrival_rate: {rate: 2.5}\n")
    outcome = runner.invoke(app, ["validate", str(fractional)])
    assert outcome.exit_code == EXIT_INVALID
    assert "ch_k6.yaml:15:" in outcome.output and "whole arrival rates" in outcome.output

    short = _clickhouse_plan(tmp_path, hold_for="500ms")
    outcome = runner.invoke(app, ["validate", str(short)])
    assert outcome.exit_code == EXIT_INVALID
    assert "ch_k6.yaml:12:" in outcome.output and "1s or more" in outcome.output


def test_a_k6_binary_that_is_not_k6_is_named(
    crucible_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crucible_dagster.settings import get_settings

    monkeypatch.setenv("CRUCIBLE_K6_BINARY", "/bin/true")
    get_settings.cache_clear()
    try:
        outcome = runner.invoke(app, ["validate", str(_clickhouse_plan(tmp_path))])
    finally:
        get_settings.cache_clear()

    assert outcome.exit_code == EXIT_INVALID
    assert "/bin/true is not k6" in outcome.output


def test_a_query_named_total_is_refused_at_its_marker(crucible_home: Path, tmp_path: Path) -> None:
    path = _clickhouse_plan(tmp_path)
    (tmp_path / "workloads" / "ch.sql").write_text(
        "-- @type: clickhouse\n-- @name: total\nSELECT 1\n"
    )

    outcome = runner.invoke(app, ["validate", str(path)])

    assert outcome.exit_code == EXIT_INVALID
    assert "ch.sql:2:" in outcome.output and "'total' is taken" in outcome.output


def test_run_refuses_what_validate_refuses_with_exit_2_and_no_run(
    crucible_home: Path, tmp_path: Path
) -> None:
    short = _clickhouse_plan(tmp_path, hold_for="500ms")

    outcome = runner.invoke(app, ["run", str(short)])

    assert outcome.exit_code == EXIT_INVALID
    assert "ch_k6.yaml:12:" in outcome.output and "1s or more" in outcome.output
    assert not (crucible_home / "storage" / "results").exists()


def test_inter_node_without_kubernetes_settings_names_all_of_them_at_its_line(
    crucible_home: Path, tmp_path: Path
) -> None:
    path = _clickhouse_plan(tmp_path)
    inter_node = "  executor: k6\n  scaling_mode: inter_node\n"
    path.write_text(path.read_text().replace("  executor: k6\n", inter_node))

    outcome = runner.invoke(app, ["validate", str(path)])

    assert outcome.exit_code == EXIT_INVALID
    assert "ch_k6.yaml:10:" in outcome.output
    for setting in ("CRUCIBLE_K8S_IMAGE", "CRUCIBLE_K8S_K6_IMAGE", "CRUCIBLE_K8S_NAMESPACE",
                    "CRUCIBLE_K8S_PASSWORD_SECRET"):  # fmt: skip
        assert setting in outcome.output
