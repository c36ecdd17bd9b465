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
