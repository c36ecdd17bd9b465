"""Fixture mistakes a plan shows without a SUT: a table a generated dataset lacks."""

from pathlib import Path

from typer.testing import CliRunner

from crucible_dagster.cli import EXIT_INVALID, app
from crucible_dagster.plan import validate_plan_file

PLAN = """\
test_metadata: {run_label: smoke}
test_environment:
  env_type: long-lived
  target_db: app
  component_spec:
    type: postgresql
    cluster_info: {host: 127.0.0.1, username: postgres, password: {env: PGPW}}
  fixtures:
{fixtures}
execution:
  concurrency: 1
  ramp_up: 0s
  hold_for: 1s
  workload:
    - workload_id: w
"""


def write_plan(folder: Path, fixtures: str) -> Path:
    (folder / "workloads").mkdir(exist_ok=True)
    (folder / "workloads" / "w.sql").write_text("-- @type: sql\n-- @name: q\nSELECT 1\n")
    path = folder / "p.yaml"
    path.write_text(PLAN.replace("{fixtures}", fixtures))
    return path


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_a_generated_dataset_takes_any_scale_factor(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, '    - dataset: tpch\n      scale: "0.5"\n      tables: [orders]')

    assert validate_plan_file(plan) == []


def test_misspelt_table_of_a_generated_dataset_suggests_the_right_one(tmp_path: Path) -> None:
    fixtures = "    - dataset: tpcds\n      scale: 1\n      tables:\n        - item\n        - stor"
    plan = write_plan(tmp_path, fixtures)

    [problem] = validate_plan_file(plan)

    assert problem.message == "tpcds has no table 'stor'; did you mean 'store'?"
    assert problem.field == "test_environment.fixtures[0].tables[1]"
    assert problem.location.line == line_of(plan, "- stor")


def test_table_with_no_close_match_lists_the_dataset_tables(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, "    - {dataset: tpch, scale: 1, tables: [zzz]}")

    [problem] = validate_plan_file(plan)

    assert problem.message == (
        "tpch has no table 'zzz'; its tables are region, nation, supplier, customer, part, "
        "partsupp, orders, lineitem"
    )


def test_fixture_id_form_reports_a_table_at_its_fixture_id(tmp_path: Path) -> None:
    fixtures = (
        "    - {fixture_id: tpch/sf1/orders, table: orders}\n"
        "    - {fixture_id: tpch/sf0.5/ordres, table: o2}"
    )
    plan = write_plan(tmp_path, fixtures)

    found = validate_plan_file(plan)

    assert [(p.field, p.message) for p in found] == [
        (
            "test_environment.fixtures[1].fixture_id",
            "tpch has no table 'ordres'; did you mean 'orders'?",
        ),
    ]
    assert {p.location.line for p in found} == {line_of(plan, "ordres")}


def test_uploaded_datasets_take_any_scale_and_table(tmp_path: Path) -> None:
    fixtures = (
        '    - {dataset: sales, scale: "0.5", tables: [anything]}\n'
        "    - {fixture_id: mine/sf3/events, table: events}"
    )

    assert validate_plan_file(write_plan(tmp_path, fixtures)) == []


def test_fixture_problems_come_with_the_workload_problems(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, "    - {dataset: tpch, scale: 2, tables: [ordres]}")
    (tmp_path / "workloads" / "w.sql").write_text("-- @type: sql\n-- @name: q\nSELECT :x\n")

    found = validate_plan_file(plan)

    assert [p.location.file for p in found] == [str(plan), str(tmp_path / "workloads" / "w.sql")]


def test_validate_and_run_exit_2_on_a_fixture_mistake(tmp_path: Path, crucible_home: Path) -> None:
    plan = write_plan(tmp_path, "    - {dataset: tpch, scale: 0.5, tables: [lineitems]}")
    runner = CliRunner()

    for command in ("validate", "run"):
        outcome = runner.invoke(app, [command, str(plan)])

        assert outcome.exit_code == EXIT_INVALID, outcome.output
        assert f"{plan}:{line_of(plan, 'tpch')}:" in outcome.output
        assert "tpch has no table 'lineitems'; did you mean 'lineitem'?" in outcome.output
