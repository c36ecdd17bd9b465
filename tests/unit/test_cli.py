"""The `crucible` command as a user meets it: messages with locations, exit codes, no tracebacks."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crucible_dagster.cli import EXIT_FAILED, EXIT_INVALID, app
from crucible_dagster.settings import PROJECT_ROOT

runner = CliRunner()


def test_validate_accepts_the_shipped_plans() -> None:
    outcome = runner.invoke(app, ["validate", str(PROJECT_ROOT / "plans")])
    assert outcome.exit_code == 0, outcome.output
    assert "ok" in outcome.output


def test_validate_reports_every_problem_with_file_line_and_column(tmp_path: Path) -> None:
    plan = tmp_path / "broken.yaml"
    plan.write_text(
        (PROJECT_ROOT / "plans" / "demo_tpch.yaml")
        .read_text()
        .replace("concurrency: 8", 'concurrency: "8"')
        .replace("hold_for: 30s", "hold_for: 30 seconds")
        .replace("executor: native", "executer: native")
    )
    outcome = runner.invoke(app, ["validate", str(plan)])
    assert outcome.exit_code == EXIT_INVALID
    text = outcome.output
    lines = plan.read_text().splitlines()
    executer = next(i for i, line in enumerate(lines, 1) if "executer:" in line)
    assert (
        f"{plan}:{executer}:3: execution.executer: unknown key 'executer'; did you mean "
        "'executor'?" in text
    )
    assert "concurrency" in text
    assert "hold_for" in text
    assert "Traceback" not in text


def test_validate_of_a_missing_file_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    outcome = runner.invoke(app, ["validate", str(tmp_path / "nope.yaml")])
    assert outcome.exit_code == EXIT_INVALID
    assert "nope.yaml" in outcome.output
    assert outcome.exception is None or isinstance(outcome.exception, SystemExit)


def test_run_of_an_invalid_plan_exits_with_the_problems(tmp_path: Path) -> None:
    plan = tmp_path / "bad.yaml"
    plan.write_text("test_metadata: {run_label: x}\n")
    outcome = runner.invoke(app, ["run", str(plan)])
    assert outcome.exit_code == EXIT_INVALID
    assert "test_environment" in outcome.output
    assert "Traceback" not in outcome.output


def test_results_of_a_plan_without_runs_says_so(crucible_home: Path) -> None:
    outcome = runner.invoke(app, ["results", "never_ran", "--json"])
    assert outcome.exit_code == EXIT_FAILED
    assert "no results for plan 'never_ran'" in outcome.output


@pytest.mark.parametrize("name", ["demo_tpch", "plans/demo_tpch.yaml"])
def test_results_prints_the_latest_result_as_one_json_object(
    crucible_home: Path, name: str
) -> None:
    from crucible_dagster.results import Result, RunStatus, SutRecord, write_result
    from crucible_dagster.settings import get_settings
    from crucible_dagster.storage import storage_from_url

    settings = get_settings()
    result = Result(
        run_id="demo_tpch_20261203-1200_0a1b2c3d", plan="demo_tpch", plan_source="s",
        plan_sha256="h", plan_text="t", status=RunStatus.COMPLETED, concurrency=8, shards=1,
        sut=SutRecord(type="postgresql", host="h", port=1, database="d", key="k"),
    )  # fmt: skip
    write_result(storage_from_url(settings.storage_url, settings), result)
    outcome = runner.invoke(app, ["results", name, "--json"])
    assert outcome.exit_code == 0, outcome.output
    document = json.loads(outcome.stdout)
    assert document["run_id"] == result.run_id
    assert "plan_text" not in document


def test_results_given_a_run_id_for_a_plan_points_at_run(crucible_home: Path) -> None:
    from crucible_dagster.results import Result, RunStatus, SutRecord, write_result
    from crucible_dagster.settings import get_settings
    from crucible_dagster.storage import storage_from_url

    settings = get_settings()
    run_id = "demo_tpch_20261203-1200_0a1b2c3d"
    result = Result(
        run_id=run_id, plan="demo_tpch", plan_source="s", plan_sha256="h", plan_text="t",
        status=RunStatus.COMPLETED, concurrency=8, shards=1,
        sut=SutRecord(type="postgresql", host="h", port=1, database="d", key="k"),
    )  # fmt: skip
    write_result(storage_from_url(settings.storage_url, settings), result)

    outcome = runner.invoke(app, ["results", run_id])

    assert outcome.exit_code == EXIT_FAILED
    assert f"use `crucible results --run {run_id}`" in " ".join(outcome.output.split())


def test_validate_reports_workload_problems_even_when_the_plan_is_invalid(tmp_path: Path) -> None:
    (tmp_path / "workloads").mkdir()
    (tmp_path / "workloads" / "w.sql").write_text("-- @type: sql\n-- @name: a\n-- @name: a\nx\n")
    plan = tmp_path / "both.yaml"
    plan.write_text(
        (PROJECT_ROOT / "plans" / "demo_tpch.yaml")
        .read_text()
        .replace("concurrency: 8", "concurrency: 0")
        .replace("workload_id: tpch_postgresql", "workload_id: w")
    )
    outcome = runner.invoke(app, ["validate", str(plan)])
    assert outcome.exit_code == EXIT_INVALID
    assert "execution.concurrency" in outcome.output
    assert f"{tmp_path / 'workloads' / 'w.sql'}:2" in outcome.output


@pytest.mark.parametrize(
    ("status", "verdict", "code"),
    [("completed", "passed", 0), ("completed", "failed", 99), ("completed", "aborted", 99),
     ("failed", None, 1), ("cancelled", None, 1)],
)  # fmt: skip
def test_run_exits_like_k6(status: str, verdict: str | None, code: int) -> None:
    from crucible_dagster.cli import _exit_code
    from crucible_dagster.results import Result, SutRecord

    result = Result(
        run_id="r", plan="p", plan_source="s", plan_sha256="h", plan_text="t", status=status,
        verdict=verdict, concurrency=1, shards=1,
        sut=SutRecord(type="postgresql", host="h", port=1, database="d", key="k"),
    )  # fmt: skip
    assert _exit_code(result) == code
