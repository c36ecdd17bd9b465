"""Whole-plan validation: the plan, its fixtures, then every workload it names, all problems
together."""

import difflib
import re
from pathlib import Path
from typing import Protocol

import yaml

from crucible_dagster.errors import CrucibleError, Location, Problem, ValidationError
from crucible_dagster.fixtures import tpcds, tpch
from crucible_dagster.plan.loading import LoadedPlan, load_plan
from crucible_dagster.plan.models import FixtureItem
from crucible_dagster.plan.thresholds import TOTAL
from crucible_dagster.workload import Workload, load_workload_file, workload_from_bytes

WORKLOAD_SUFFIXES = (".sql", ".cql")
WORKLOAD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


class WorkloadStorage(Protocol):
    """The part of object storage that workload resolution needs."""

    def exists(self, key: str) -> bool: ...

    def get_bytes(self, key: str) -> bytes: ...


def resolve_workloads(loaded: LoadedPlan, storage: WorkloadStorage | None = None) -> list[Workload]:
    """Finds and parses every workload of a plan, in plan order.

    A `workload_id` is looked up as `workloads/<id>.sql` (or `.cql`) next to the plan file,
    then as `workloads/<id>` in object storage. Query names must be unique across them.
    """
    problems: list[Problem] = []
    workloads: list[Workload] = []
    for index, ref in enumerate(loaded.plan.execution.workload):
        here = loaded.location("execution", "workload", index, "workload_id")
        field = f"execution.workload[{index}].workload_id"
        try:
            workloads.append(_resolve_one(loaded, ref.workload_id, here, field, storage))
        except ValidationError as error:
            problems += error.problems

    first_seen: dict[str, Workload] = {}
    for workload in workloads:
        for query in workload.queries:
            earlier = first_seen.get(query.name)
            if earlier is not None and earlier is not workload:
                first = next(q for q in earlier.queries if q.name == query.name)
                problems.append(
                    Problem(
                        Location(query.source, query.line),
                        f"query name {query.name!r} is also used in workload "
                        f"{earlier.workload_id!r} ({first.source}:{first.line}); query names "
                        "must be unique across a plan's workloads",
                    )
                )
            first_seen.setdefault(query.name, workload)
    problems += _workload_type_problems(loaded, workloads)
    # Names can be checked once every workload is read, whatever else is wrong with them.
    if workloads and len(workloads) == len(loaded.plan.execution.workload):
        problems += _threshold_target_problems(loaded, list(first_seen))
        problems += _weight_problems(loaded, workloads)
    if problems:
        raise ValidationError(problems)
    return workloads


def _threshold_target_problems(loaded: LoadedPlan, query_names: list[str]) -> list[Problem]:
    problems = []
    for target in loaded.plan.execution.thresholds:
        if target != TOTAL and target not in query_names:
            close = difflib.get_close_matches(target, [*query_names, TOTAL], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            message = (f"thresholds name {target!r}, which is no query of the plan's workloads "
                       f"and not 'total'{hint}")  # fmt: skip
            here = loaded.location("execution", "thresholds", target)
            problems.append(Problem(here, message, f"execution.thresholds.{target}"))
    return problems


# The SUT types that speak CQL; every other SUT type takes SQL workloads.
CQL_SUT_TYPES = ("cassandra", "scylla")


def _workload_type_problems(loaded: LoadedPlan, workloads: list[Workload]) -> list[Problem]:
    sut_type = loaded.plan.test_environment.component_spec.type
    takes = "cql" if sut_type in CQL_SUT_TYPES else "sql"
    problems = []
    for index, workload in enumerate(workloads):
        if workload.type != takes:
            here = loaded.location("execution", "workload", index, "workload_id")
            message = (f"workload {workload.workload_id!r} is {workload.type}, but {sut_type} "
                       f"takes {takes} workloads ({workload.source})")  # fmt: skip
            problems.append(Problem(here, message, f"execution.workload[{index}].workload_id"))
    return problems


def _weight_problems(loaded: LoadedPlan, workloads: list[Workload]) -> list[Problem]:
    """Plan weights must name queries; some query must be choosable; sequences repeat whole."""
    execution = loaded.plan.execution
    queries = [q for w in workloads for q in w.queries]
    names = [q.name for q in queries]
    problems = []
    for target in execution.query_weights:
        if target not in names:
            close = difflib.get_close_matches(target, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            here = loaded.location("execution", "query_weights", target)
            message = f"query_weights name {target!r}, which is no query of the plan's workloads"
            problems.append(Problem(here, message + hint, f"execution.query_weights.{target}"))
    weights = {q.name: q.weight for q in queries} | dict(execution.query_weights)
    if execution.query_choice == "sequence":
        for query in queries:
            weight = weights[query.name]
            if query.name in execution.query_weights or weight is None or weight == int(weight):
                continue
            message = (f"query {query.name!r} has weight {weight:g}; with query_choice "
                       "sequence a weight is a repeat count: a whole number")  # fmt: skip
            problems.append(Problem(Location(query.source, query.line), message))
    if not problems and all(weights[name] == 0 for name in names):
        here = loaded.location("execution", "query_weights")
        message = "every query has weight 0, so none would ever run: give one a weight above 0"
        problems.append(Problem(here, message, "execution.query_weights"))
    return problems


# The datasets Crucible generates: the scales their fixture asset is partitioned by (the only
# ones a run generates) and their tables. Uploaded datasets are known only to storage.
GENERATED_DATASETS: dict[str, tuple[str, ...]] = {
    tpch.DATASET: tpch.TPCH_TABLES,
    tpcds.DATASET: tpcds.TPCDS_TABLES,
}


def fixture_problems(loaded: LoadedPlan) -> list[Problem]:
    """Fixtures naming a table a generated dataset does not have, each located at the fixture
    entry's field. (Any scale factor can be generated; the plan model checks its form.)"""
    problems: list[Problem] = []
    for index, item in enumerate(loaded.plan.test_environment.fixtures):
        tables = item.fixture_tables()
        dataset = tables[0].dataset
        names = GENERATED_DATASETS.get(dataset)
        if names is None:
            continue
        found: list[tuple[tuple[str | int, ...], str]] = [
            (("tables", position), _unknown_table(dataset, table.table, names))
            for position, table in enumerate(tables)
            if table.table not in names
        ]
        for path, message in found:
            # The fixture_id form names dataset, scale and table in its one field.
            path = ("fixture_id",) if isinstance(item, FixtureItem) else path
            where = ("test_environment", "fixtures", index, *path)
            problems.append(Problem(loaded.location(*where), message, _field_text(where)))
    return problems


def _field_text(path: tuple[str | int, ...]) -> str:
    return "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" if i else part
        for i, part in enumerate(path)
    )


def _unknown_table(dataset: str, table: str, names: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(table, names, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"its tables are {', '.join(names)}"
    return f"{dataset} has no table {table!r}; {hint}"


def validate_plan_file(path: Path, storage: WorkloadStorage | None = None) -> list[Problem]:
    """Every problem of a plan file, its fixtures and its workloads; an empty list means it is
    valid."""
    try:
        loaded = load_plan(path)
    except ValidationError as error:
        return error.problems + _problems_of_named_workloads(path)
    problems = fixture_problems(loaded)
    try:
        resolve_workloads(loaded, storage)
    except ValidationError as error:
        problems += error.problems
    return problems


def _problems_of_named_workloads(path: Path) -> list[Problem]:
    """The workload files an invalid plan names, checked anyway so every problem shows at once."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        entries = document["execution"]["workload"]
    except Exception:  # any shape the plan's own problems already describe
        return []
    problems: list[Problem] = []
    for entry in entries if isinstance(entries, list) else []:
        workload_id = entry.get("workload_id") if isinstance(entry, dict) else None
        if not isinstance(workload_id, str) or not WORKLOAD_ID.fullmatch(workload_id):
            continue
        for suffix in WORKLOAD_SUFFIXES:
            candidate = path.parent / "workloads" / (workload_id + suffix)
            if candidate.is_file():
                try:
                    load_workload_file(candidate, workload_id)
                except ValidationError as error:
                    problems += error.problems
    return problems


def validate_plan_folder(
    folder: Path, storage: WorkloadStorage | None = None
) -> dict[Path, list[Problem]]:
    """`validate_plan_file` for each `*.yaml` / `*.yml` plan directly in `folder`."""
    paths = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
    return {path: validate_plan_file(path, storage) for path in paths}


def _resolve_one(
    loaded: LoadedPlan,
    workload_id: str,
    here: Location,
    field: str,
    storage: WorkloadStorage | None,
) -> Workload:
    looked: list[str] = []
    if loaded.folder is not None:
        candidates = [loaded.folder / "workloads" / (workload_id + s) for s in WORKLOAD_SUFFIXES]
        looked += [str(c) for c in candidates]
        found = [c for c in candidates if c.is_file()]
        if len(found) > 1:
            message = f"workload {workload_id!r} is ambiguous: both {found[0]} and {found[1]} exist"
            raise ValidationError([Problem(here, message, field)])
        if found:
            return load_workload_file(found[0], workload_id)

    if storage is not None:
        key = f"workloads/{workload_id}"
        looked.append(f"storage key {key}")
        try:
            if storage.exists(key):
                data = storage.get_bytes(key)
                return workload_from_bytes(data, source=key, workload_id=workload_id)
        except ValidationError:
            raise
        except CrucibleError as error:
            message = f"workload {workload_id!r} could not be read from storage: {error}"
            raise ValidationError([Problem(here, message, field)]) from None

    where = ", ".join(looked) if looked else "nowhere (the plan has no folder and no storage)"
    message = f"workload {workload_id!r} not found: looked in {where}"
    raise ValidationError([Problem(here, message, field)])
