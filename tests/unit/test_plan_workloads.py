"""Workload resolution for a plan: local files first, then object storage; names unique."""

from pathlib import Path

import pytest

from crucible_dagster.errors import ValidationError
from crucible_dagster.plan import load_plan, resolve_workloads, validate_plan_file
from crucible_dagster.plan.validation import validate_plan_folder
from crucible_dagster.storage import LocalStorage

PLAN = """\
test_metadata: {run_label: smoke}
test_environment:
  env_type: long-lived
  target_db: app
  component_spec:
    type: postgresql
    cluster_info: {host: 127.0.0.1, username: postgres, password: {env: PGPW}}
execution:
  concurrency: 2
  ramp_up: 0s
  hold_for: 5s
  workload:
{refs}
"""


def write_plan(folder: Path, *workload_ids: str, name: str = "smoke") -> Path:
    refs = "\n".join(f"    - workload_id: {w}" for w in workload_ids)
    path = folder / f"{name}.yaml"
    path.write_text(PLAN.replace("{refs}", refs))
    return path


def write_workload(folder: Path, file_name: str, text: str) -> Path:
    path = folder / "workloads" / file_name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def test_workloads_resolve_from_the_plan_folder_in_plan_order(tmp_path: Path) -> None:
    write_workload(tmp_path, "reads.sql", "-- @type: sql\n-- @name: r1\nSELECT 1\n")
    write_workload(tmp_path, "events.sql", "-- @type: postgresql\n-- @name: c1\nSELECT 2\n")
    loaded = load_plan(write_plan(tmp_path, "reads", "events"))

    workloads = resolve_workloads(loaded)

    assert [(w.workload_id, w.type) for w in workloads] == [("reads", "sql"), ("events", "sql")]
    assert workloads[0].source == str(tmp_path / "workloads" / "reads.sql")


def test_workload_falls_back_to_object_storage(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    storage.put_bytes("workloads/remote", b"-- @type: sql\n-- @name: q\nSELECT 1\n")
    loaded = load_plan(write_plan(tmp_path, "remote"))

    [workload] = resolve_workloads(loaded, storage)

    assert (workload.source, workload.queries[0].name) == ("workloads/remote", "q")


def test_local_file_wins_over_object_storage(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    storage.put_bytes("workloads/w", b"-- @type: sql\n-- @name: remote\nSELECT 1\n")
    write_workload(tmp_path, "w.sql", "-- @type: sql\n-- @name: local\nSELECT 1\n")

    [workload] = resolve_workloads(load_plan(write_plan(tmp_path, "w")), storage)

    assert workload.queries[0].name == "local"


def test_missing_workload_is_reported_at_its_workload_id(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    plan_path = write_plan(tmp_path, "ghost")

    [problem] = validate_plan_file(plan_path, storage)

    assert problem.field == "execution.workload[0].workload_id"
    assert (problem.location.file, problem.location.line, problem.location.column) == (
        str(plan_path),
        13,
        20,
    )
    assert problem.message == (
        f"workload 'ghost' not found: looked in {tmp_path}/workloads/ghost.sql, "
        f"{tmp_path}/workloads/ghost.cql, storage key workloads/ghost"
    )


def test_both_sql_and_cql_files_are_ambiguous(tmp_path: Path) -> None:
    write_workload(tmp_path, "w.sql", "-- @type: sql\n-- @name: a\nSELECT 1\n")
    write_workload(tmp_path, "w.cql", "-- @type: cql\n-- @name: a\nSELECT 1\n")

    [problem] = validate_plan_file(write_plan(tmp_path, "w"))

    assert "ambiguous" in problem.message


def test_duplicate_query_names_across_workloads_point_at_the_second(tmp_path: Path) -> None:
    write_workload(tmp_path, "a.sql", "-- @type: sql\n-- @name: shared\nSELECT 1\n")
    second = write_workload(
        tmp_path, "b.sql", "-- @type: sql\n-- @name: own\nSELECT 2\n-- @name: shared\nSELECT 3\n"
    )

    [problem] = validate_plan_file(write_plan(tmp_path, "a", "b"))

    assert (problem.location.file, problem.location.line) == (str(second), 4)
    assert "query name 'shared' is also used in workload 'a'" in problem.message


def test_every_workload_problem_is_reported_together(tmp_path: Path) -> None:
    write_workload(tmp_path, "bad1.sql", "SELECT 1\n")
    write_workload(tmp_path, "bad2.sql", "-- @type: sql\n-- @name: 9x\nSELECT 1\n")

    found = validate_plan_file(write_plan(tmp_path, "bad1", "bad2", "absent"))

    assert {p.location.file for p in found} == {
        str(tmp_path / "workloads" / "bad1.sql"),
        str(tmp_path / "workloads" / "bad2.sql"),
        str(tmp_path / "smoke.yaml"),
    }


def test_invalid_plan_reports_its_problems_without_touching_workloads(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("test_metadata: {}\n")

    found = validate_plan_file(path)

    assert {p.field for p in found} == {
        "test_metadata.run_label",
        "test_environment",
        "execution",
    }


@pytest.mark.parametrize("escape", ["../outside", "..", "a/../../b", "/abs"])
def test_workload_ids_cannot_escape_the_workloads_folder(tmp_path: Path, escape: str) -> None:
    (tmp_path / "outside.sql").write_text("-- @type: sql\n-- @name: stolen\nSELECT 1\n")
    plan_folder = tmp_path / "plans"
    plan_folder.mkdir()
    path = plan_folder / "smoke.yaml"
    path.write_text(PLAN.replace("{refs}", f"    - workload_id: '{escape}'"))

    found = validate_plan_file(path)

    assert [p.field for p in found] == ["execution.workload[0].workload_id"]
    assert "a workload id" in found[0].message


def test_resolving_a_plan_parsed_from_text_needs_storage() -> None:
    from crucible_dagster.plan import parse_plan

    loaded = parse_plan(
        PLAN.replace("{refs}", "    - workload_id: w"), source="upload", name="smoke"
    )

    with pytest.raises(ValidationError) as caught:
        resolve_workloads(loaded)

    assert "not found" in caught.value.problems[0].message


def test_validate_plan_folder_checks_every_yaml_plan(tmp_path: Path) -> None:
    write_workload(tmp_path, "ok.sql", "-- @type: sql\n-- @name: a\nSELECT 1\n")
    good = write_plan(tmp_path, "ok", name="good")
    bad = write_plan(tmp_path, "missing", name="bad")
    (tmp_path / "notes.txt").write_text("not a plan")

    results = validate_plan_folder(tmp_path)

    assert list(results) == [bad, good]
    assert results[good] == []
    assert len(results[bad]) == 1


# --- query choice ----------------------------------------------------------------------------

TWO_QUERIES = "-- @type: sql\n-- @name: a\n-- @weight: 2.5\nSELECT 1\n-- @name: b\nSELECT 2\n"


def write_choice_plan(folder: Path, execution_extra: str) -> Path:
    path = write_plan(folder, "w")
    path.write_text(path.read_text() + execution_extra)
    write_workload(folder, "w.sql", TWO_QUERIES)
    return path


def test_query_weights_must_name_queries_of_the_plan(tmp_path: Path) -> None:
    path = write_choice_plan(tmp_path, "  query_weights: {a: 1, bb: 3}\n")

    problems = validate_plan_file(path)

    assert [p.message for p in problems] == [
        "query_weights name 'bb', which is no query of the plan's workloads; did you mean 'b'?"
    ]
    assert problems[0].location.line == 14


def test_all_weights_zero_is_an_error(tmp_path: Path) -> None:
    path = write_choice_plan(tmp_path, "  query_weights: {a: 0, b: 0}\n")

    problems = validate_plan_file(path)

    assert [p.message for p in problems] == [
        "every query has weight 0, so none would ever run: give one a weight above 0"
    ]


def test_sequence_needs_whole_weights_from_the_workload(tmp_path: Path) -> None:
    path = write_choice_plan(tmp_path, "  query_choice: sequence\n")

    problems = validate_plan_file(path)

    assert [p.message for p in problems] == [
        "query 'a' has weight 2.5; with query_choice sequence a weight is a repeat count: "
        "a whole number"
    ]
    assert problems[0].location.file.endswith("w.sql")
    assert problems[0].location.line == 2


def test_sequence_with_whole_plan_weights_is_valid(tmp_path: Path) -> None:
    path = write_choice_plan(tmp_path, "  query_choice: sequence\n  query_weights: {a: 2}\n")

    assert validate_plan_file(path) == []


def test_sequence_refuses_fractional_plan_weights(tmp_path: Path) -> None:
    path = write_choice_plan(tmp_path, "  query_choice: sequence\n  query_weights: {a: 1.5}\n")

    problems = validate_plan_file(path)

    assert len(problems) == 1
    assert "a weight is a repeat count: a whole number, not 1.5" in problems[0].message


def test_unknown_query_choice_is_an_error(tmp_path: Path) -> None:
    path = write_choice_plan(tmp_path, "  query_choice: roundrobin\n")

    problems = validate_plan_file(path)

    assert len(problems) == 1
    assert "random" in problems[0].message and "sequence" in problems[0].message


def test_seed_must_be_a_whole_number(tmp_path: Path) -> None:
    path = write_choice_plan(tmp_path, '  seed: "42"\n')

    problems = validate_plan_file(path)

    assert len(problems) == 1
    assert problems[0].location.line == 14


def test_a_miscased_total_threshold_suggests_total(tmp_path: Path) -> None:
    path = write_choice_plan(tmp_path, "  thresholds: {Total: ['qps>1']}\n")

    [problem] = validate_plan_file(path)

    assert problem.message.endswith("and not 'total'; did you mean 'total'?")


def test_a_cql_workload_on_a_sql_sut_is_a_validation_problem(tmp_path: Path) -> None:
    path = write_plan(tmp_path, "reads")
    write_workload(tmp_path, "reads.cql", "-- @type: cql\n-- @name: r\nSELECT * FROM users;\n")

    [problem] = validate_plan_file(path)

    assert problem.message.startswith("workload 'reads' is cql, but postgresql takes sql workloads")
    assert problem.field == "execution.workload[0].workload_id"


def test_threshold_names_are_checked_alongside_workload_problems(tmp_path: Path) -> None:
    path = write_plan(tmp_path, "reads")
    path.write_text(path.read_text() + "  thresholds: {raeds: ['p(95)<10']}\n")
    write_workload(tmp_path, "reads.cql", "-- @type: cql\n-- @name: reads\nSELECT 1;\n")

    problems = validate_plan_file(path)

    assert [p.field for p in problems] == [
        "execution.workload[0].workload_id",
        "execution.thresholds.raeds",
    ]
    assert problems[1].message.endswith("did you mean 'reads'?")
