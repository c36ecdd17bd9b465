"""The `crucible` command: validate plans, run them in-process, show results, run the demo."""

import json
import logging
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from crucible_dagster.errors import CrucibleError, ValidationError
from crucible_dagster.storage import Storage

if TYPE_CHECKING:
    import dagster as dg

    from crucible_dagster.fixtures.upload import UploadProgress, UploadReport
from crucible_dagster.results import Result, Verdict

app = typer.Typer(
    help="Crucible: load tests for databases from a YAML plan and annotated SQL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
fixtures_app = typer.Typer(
    help="Fixture tables in object storage: upload your own Parquet tables.",
    no_args_is_help=True,
)
app.add_typer(fixtures_app, name="fixtures")
faults_app = typer.Typer(
    help="Chaos faults still in place: the journal of faults runs injected and did not recover.",
    no_args_is_help=True,
)
app.add_typer(faults_app, name="faults")
# No emoji codes: `:name:` in a message (a query parameter, a table) must print as written.
console = Console(emoji=False)
errors = Console(stderr=True, emoji=False)

# Exit codes: k6's 99 for thresholds not met (and load aborted), 1 for a failed run,
# 2 for bad input.
EXIT_FAILED = 1
# Ctrl-C before the run could record a result (a shell's 128 + SIGINT).
EXIT_INTERRUPTED = 130
EXIT_INVALID = 2
EXIT_THRESHOLDS = 99


@contextmanager
def _user_errors() -> Iterator[None]:
    """A mistake of the user's prints as a message, never as a traceback."""
    try:
        yield
    except ValidationError as error:
        for problem in error.problems:
            errors.print(
                f"[red]error[/red] {escape(str(problem))}", highlight=False, soft_wrap=True
            )
        raise typer.Exit(EXIT_INVALID) from None
    except CrucibleError as error:
        errors.print(f"[red]error[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_FAILED) from None


@app.command()
def validate(
    plans: Annotated[list[Path], typer.Argument(help="Plan files or folders of plans.")],
) -> None:
    """Reports every problem of the plans and their workloads, with file, line and column."""
    from crucible_dagster.plan import load_plan, validate_plan_file
    from crucible_dagster.run import engine_problems, open_run
    from crucible_dagster.settings import get_settings

    paths: list[Path] = []
    for item in plans:
        paths.extend(sorted(item.glob("*.yaml")) if item.is_dir() else [item])
    if not paths:
        errors.print(escape(f"no plans (*.yaml) in {', '.join(map(str, plans))}"), highlight=False)
        raise typer.Exit(EXIT_INVALID)
    failed = 0
    with _user_errors():
        for path in paths:
            problems = validate_plan_file(path, storage=_storage_or_none())
            if not problems:
                problems = engine_problems(open_run(load_plan(path), get_settings()))
            for problem in problems:
                errors.print(
                    f"[red]error[/red] {escape(str(problem))}", highlight=False, soft_wrap=True
                )
            if problems:
                failed += 1
            else:
                console.print(f"[green]ok[/green] {escape(str(path))}", highlight=False)
    if failed:
        errors.print(f"{failed} of {len(paths)} plan(s) have problems", highlight=False)
        raise typer.Exit(EXIT_INVALID)


@app.command()
def run(
    plan: Annotated[Path, typer.Argument(help="The plan file to run.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Runs a plan in this process (no daemon) against the SUT the plan names."""
    from crucible_dagster.plan import load_plan, validate_plan_file
    from crucible_dagster.run import chaos_reach_problems, engine_problems, open_run
    from crucible_dagster.settings import get_settings

    with _user_errors():
        # A mistake in the plan, its workloads or what its engine needs is bad input (exit 2),
        # found before any run; so is a chaos backend that does not answer.
        problems = validate_plan_file(plan, _storage_or_none())
        if not problems:
            checked = open_run(load_plan(plan), get_settings())
            problems = engine_problems(checked) or chaos_reach_problems(checked)
        if problems:
            raise ValidationError(problems)
        try:
            result = _run_plan(plan, quiet=as_json)
        except KeyboardInterrupt:
            errors.print("interrupted before the run had a result; nothing was measured",
                         highlight=False)  # fmt: skip
            raise typer.Exit(EXIT_INTERRUPTED) from None
    _show(result, as_json)
    raise typer.Exit(_exit_code(result))


@app.command()
def results(
    plan: Annotated[str, typer.Argument(help="A plan name or plan file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    run_id: Annotated[
        str | None, typer.Option("--run", help="A run id instead of the latest.")
    ] = None,
) -> None:
    """Prints the latest result of a plan (or of one run)."""
    from crucible_dagster.results import latest_result, read_result
    from crucible_dagster.settings import get_settings
    from crucible_dagster.storage import storage_from_url

    name = Path(plan).stem if plan.endswith((".yaml", ".yml")) else plan
    with _user_errors():
        settings = get_settings()
        storage = storage_from_url(settings.storage_url, settings)
        result = read_result(storage, run_id) if run_id else latest_result(storage, name)
    if result is None:
        message = f"no results for plan {name!r} in {storage.describe()}"
        if run_id is None and _is_run_id(storage, name):
            message = f"{name!r} is a run id, not a plan: use `crucible results --run {name}`"
        errors.print(escape(message), highlight=False)
        raise typer.Exit(EXIT_FAILED)
    _show(result, as_json, with_plan_text=False)


def _is_run_id(storage: Storage, name: str) -> bool:
    from crucible_dagster.errors import StorageError
    from crucible_dagster.results.store import result_key

    try:
        return storage.exists(result_key(name))
    except StorageError:
        return False


@app.command()
def demo(
    keep_server: Annotated[
        bool, typer.Option("--keep-server", help="Leave the demo's PostgreSQL running.")
    ] = False,
) -> None:
    """Starts PostgreSQL, makes the TPC-H fixture, loads it and runs plans/demo_tpch.yaml."""
    from crucible_dagster.demo import run_demo

    with _user_errors():
        result, server = run_demo(console, run_plan=_run_plan, keep_server=keep_server)
    _show(result, as_json=False)
    console.print(
        "\nSee it in Dagster: [bold].venv/bin/dagster dev -w workspace.yaml[/bold] "
        f"(the Dagster instance is {os.environ.get('DAGSTER_HOME')})",
        highlight=False,
    )
    if server is not None:
        console.print(
            f"PostgreSQL keeps running on 127.0.0.1:{server.port} for crucible run; stop it "
            f"with: kill {server.pid}",
            highlight=False,
        )
    raise typer.Exit(_exit_code(result))


@faults_app.command("list")
def faults_list() -> None:
    """Lists the faults injected and not recovered (a run died, or its recovery failed)."""
    from crucible_dagster.lease import LeaseStore
    from crucible_dagster.settings import get_settings

    with _user_errors():
        left = LeaseStore(get_settings().database_url).open_faults()
    if not left:
        console.print("no fault is in place", highlight=False)
        return
    for fault in left:
        console.print(escape(f"{fault.run_id}: fault {fault.name!r} on {fault.sut_key}, injected "
                             f"{fault.injected_at:%Y-%m-%d %H:%M:%S} UTC"),
                      highlight=False, soft_wrap=True)  # fmt: skip


@faults_app.command("recover")
def faults_recover(
    run_id: Annotated[str | None, typer.Argument(help="Only this run's faults.")] = None,
) -> None:
    """Recovers the faults in place (of one run, or all), as the sweeper would."""
    from crucible_dagster.lease import LeaseStore
    from crucible_dagster.run import recover_run_faults
    from crucible_dagster.settings import get_settings

    with _user_errors():
        settings = get_settings()
        left = LeaseStore(settings.database_url).open_faults(run_id=run_id)
        said = [line for run in sorted({f.run_id for f in left})
                for line in recover_run_faults(run, settings)]  # fmt: skip
    for line in said:
        console.print(escape(line), highlight=False, soft_wrap=True)
    if not said:
        console.print("no fault is in place", highlight=False)
    if any("could NOT be recovered" in line for line in said):
        raise typer.Exit(EXIT_FAILED)


@faults_app.command("forget")
def faults_forget(
    run_id: Annotated[str, typer.Argument(help="The run that injected the fault.")],
    name: Annotated[str, typer.Argument(help="The experiment's name.")],
) -> None:
    """Drops a fault from the journal without recovering it: for a fault recovered by hand,
    or one that never went in, which Crucible cannot reach to check."""
    from crucible_dagster.lease import LeaseStore
    from crucible_dagster.settings import get_settings

    with _user_errors():
        store = LeaseStore(get_settings().database_url)
        known = [f for f in store.open_faults(run_id=run_id) if f.name == name]
        if not known:
            raise CrucibleError(f"no fault {name!r} of run {run_id} is in the journal; "
                                "`crucible faults list` shows those that are")  # fmt: skip
        store.fault_recovered(run_id, name)
    console.print(f"forgot fault {escape(name)!r} of run {run_id}", highlight=False)


@fixtures_app.command("upload")
def fixtures_upload(
    fixture_id: Annotated[
        str,
        typer.Argument(metavar="ID", help="<dataset>/sf<scale>/<table>, e.g. shop/sf1/orders."),
    ],
    files: Annotated[
        list[Path], typer.Argument(metavar="FILE", help="Parquet files of the table.")
    ],
    part_size_mib: Annotated[
        int, typer.Option("--part-size", help="Size of each uploaded part in MiB (at least 5).")
    ] = 16,
    parallel: Annotated[int, typer.Option("--parallel", help="Parts sent at once.")] = 4,
) -> None:
    """Uploads Parquet files as a fixture table; an interrupted upload resumes when rerun."""
    from crucible_dagster.fixtures.upload import (
        MIB,
        check_parallel,
        check_part_size,
        parse_upload_id,
        upload_fixture,
    )
    from crucible_dagster.settings import get_settings
    from crucible_dagster.storage import storage_from_url

    with _user_errors():
        ref = parse_upload_id(fixture_id)
        part_size = check_part_size(part_size_mib * MIB)
        check_parallel(parallel)
        settings = get_settings()
        storage = storage_from_url(settings.storage_url, settings)
        total = sum(path.stat().st_size for path in files if path.is_file())
        try:
            with _upload_bar(ref.fixture_id, total, show=total >= part_size) as progress:
                report = upload_fixture(
                    storage,
                    ref,
                    files,
                    state_dir=settings.home / "uploads",
                    part_size=part_size,
                    parallel=parallel,
                    progress=progress,
                )
        except KeyboardInterrupt:
            errors.print(
                "interrupted: run the same command again to resume the upload", highlight=False
            )
            raise typer.Exit(130) from None

    table = report.table
    if report.unchanged:
        console.print(
            escape(f"{ref} is already stored with these files in {storage.describe()}"),
            highlight=False,
        )
    else:
        reused = sum(len(f.parts_reused) for f in report.files)
        console.print(
            escape(
                f"uploaded {ref}: {len(table.files)} file(s), {table.bytes / MIB:.1f} MiB, "
                f"{table.rows} rows to {storage.uri(ref.prefix)}"
            ),
            highlight=False,
        )
        if reused:
            console.print(f"resumed: {reused} part(s) were already stored", highlight=False)
        if report.removed_keys:
            console.print(
                f"removed {len(report.removed_keys)} object(s) of the previous upload",
                highlight=False,
            )
    console.print(f"data version {report.table_data_version}", highlight=False)
    _record_upload_observation(storage, report)


def _record_upload_observation(storage: Storage, report: "UploadReport") -> None:
    """Records the upload in the Dagster instance, when one is configured under CRUCIBLE_HOME."""
    from crucible_dagster.defs.instance import ensure_dagster_home
    from crucible_dagster.settings import get_settings

    settings = get_settings()
    asset = f"fixtures/uploads partition {report.ref}"
    if not (os.environ.get("DAGSTER_HOME") or (settings.dagster_home / "dagster.yaml").is_file()):
        console.print(
            f"no Dagster instance is configured: {asset} will be recorded on its next "
            "observation (sensor fixture_uploads_sensor or job observe_fixture_uploads)",
            highlight=False,
        )
        return
    import dagster as dg

    from crucible_dagster.defs.uploads import record_upload

    home = ensure_dagster_home(settings)
    try:
        with dg.DagsterInstance.get() as instance:
            record_upload(instance, storage, report)
    except Exception as error:
        # The files and manifest are stored; the observation will follow from storage.
        errors.print(
            f"[yellow]warning[/yellow] could not record {escape(asset)} in the Dagster instance "
            f"{escape(str(home))} ({escape(type(error).__name__)}); it will be recorded on its "
            "next observation",
            highlight=False,
            soft_wrap=True,
        )
        return
    console.print(
        f"recorded {escape(asset)} in the Dagster instance {escape(str(home))}", highlight=False
    )


@contextmanager
def _upload_bar(
    label: str, total: int, *, show: bool
) -> Iterator[Callable[["UploadProgress"], None] | None]:
    """A byte-counting bar on stderr for large uploads; nothing for small ones."""
    if not show:
        yield None
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=errors, disable=not errors.is_terminal) as bar:
        task = bar.add_task(escape(label), total=total)

        def advance(update: "UploadProgress") -> None:
            bar.update(task, completed=update.done_bytes, total=update.total_bytes)

        yield advance


def _storage_or_none() -> Storage | None:
    from crucible_dagster.settings import get_settings
    from crucible_dagster.storage import storage_from_url

    settings = get_settings()
    try:
        return storage_from_url(settings.storage_url, settings)
    except CrucibleError:
        return None


def _run_plan(path: Path, *, quiet: bool = False) -> Result:
    """Executes the plan's Dagster job in-process, recorded in the local Dagster instance."""
    import dagster as dg

    from crucible_dagster import run as run_steps
    from crucible_dagster.defs.fixtures import tpch_fixture
    from crucible_dagster.defs.instance import ensure_dagster_home
    from crucible_dagster.defs.plan_job import build_plan_assets
    from crucible_dagster.defs.resources import CrucibleResource
    from crucible_dagster.defs.sweeper import cli_process_tags, fail_orphaned_cli_runs
    from crucible_dagster.demo import QUIET_LOGS
    from crucible_dagster.plan import load_plan
    from crucible_dagster.results import read_result
    from crucible_dagster.settings import get_settings
    from crucible_dagster.storage import storage_from_url

    loaded = load_plan(path)
    settings = get_settings()
    ensure_dagster_home(settings)
    asset, check, job = build_plan_assets(loaded)
    defs = dg.Definitions(
        assets=[tpch_fixture, asset],
        asset_checks=[check],
        jobs=[job],
        resources={"crucible": CrucibleResource()},
    )
    run_id = run_steps.mint_run_id(loaded.name)
    planned_s = loaded.plan.execution.ramp_up.seconds + loaded.plan.execution.hold_for.seconds

    with _progress_bar(quiet, loaded.name, planned_s), dg.DagsterInstance.get() as instance:
        # A `crucible run` killed on this machine left its run STARTED, its lease held and
        # maybe a fault in place: settle that now rather than wait for the lease to expire.
        for orphan in fail_orphaned_cli_runs(instance):
            console.print(escape(f"Dagster run {orphan} marked failed: its `crucible run` "
                                 "process died; what it left was recovered and its lease freed"),
                          highlight=False)  # fmt: skip
        job_def = defs.resolve_job_def(loaded.name)
        outcome = job_def.execute_in_process(
            instance=instance,
            tags={run_steps.RUN_ID_TAG: run_id, run_steps.LAUNCH_TAG: "cli", **cli_process_tags()},
            run_config=QUIET_LOGS,
            raise_on_error=False,
        )
    storage = storage_from_url(settings.storage_url, settings)
    try:
        return read_result(storage, run_id)
    except CrucibleError:
        failure = _first_failure(outcome)
        raise CrucibleError(f"run {run_id} ended without a result: {failure}") from None


def _first_failure(outcome: "dg.ExecuteInProcessResult") -> str:
    for event in outcome.all_events:
        failure = event.step_failure_data if event.is_failure else None
        if failure is not None and failure.error is not None:
            return failure.error.message.strip()
    return "no step reported why"


@contextmanager
def _progress_bar(quiet: bool, plan: str, planned_s: float) -> Iterator[None]:
    """A live bar while the plan runs, and lease notices above it.

    Dagster points file descriptors 1 and 2 at its compute-log files while a step runs, so the bar
    writes to a copy of the terminal's stderr taken before the run starts.
    """
    from crucible_dagster import run as run_steps
    from crucible_dagster.engine import Progress as EngineProgress
    from crucible_dagster.run import PlanRun

    if quiet:
        yield
        return
    terminal = Console(file=os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1), emoji=False)
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=terminal, disable=not terminal.is_terminal) as bar:
        task = bar.add_task(escape(plan), total=planned_s or 1.0, status="preparing")

        def listener(run: PlanRun, update: EngineProgress) -> None:
            bar.update(
                task,
                completed=min(update.elapsed_s, planned_s),
                status=f"{update.completed} queries, {update.errors} errors, "
                f"{update.qps_recent:.0f} QPS, {update.active_vus} VUs",
            )

        def notice(message: str) -> None:
            terminal.print(escape(message), highlight=False)

        run_steps.progress_listeners.append(listener)
        run_steps.notice_listeners.append(notice)
        try:
            yield
        finally:
            run_steps.progress_listeners.remove(listener)
            run_steps.notice_listeners.remove(notice)
    terminal.file.close()


def _show(result: Result, as_json: bool, *, with_plan_text: bool = False) -> None:
    if as_json:
        document = result.model_dump(mode="json")
        if not with_plan_text:
            document.pop("plan_text", None)
        sys.stdout.write(json.dumps(document) + "\n")
        return
    table = Table(title=f"{result.plan} · {result.run_id}", title_justify="left")
    is_open = result.load_model != "closed"
    columns = ["query", "count", "errors", "QPS", "p50 ms", "p95 ms", "p99 ms", "max ms"]
    if is_open:
        # Open models: latency from the intended start (what thresholds judge) and dropped starts.
        columns += ["latency p95 ms", "latency p99 ms", "dropped"]
    for column in columns:
        table.add_column(column, justify="left" if column == "query" else "right")
    rows = [*result.queries, *([result.total] if result.total else [])]
    for q in rows:
        style = "bold" if q.name == "total" else None
        cells = [q.name, str(q.count), str(q.errors), f"{q.qps:.2f}"]
        cells += [_ms(v) for v in (q.p50_ms, q.p95_ms, q.p99_ms, q.max_ms)]
        if is_open:
            cells += [_ms(q.latency_p95_ms), _ms(q.latency_p99_ms), str(q.dropped)]
        table.add_row(*cells, style=style)
    if rows:
        console.print(table)
    if result.faults:
        console.print(_faults_table(result))
    for fault in result.faults:
        if fault.error and fault.error != result.error:
            errors.print(f"[red]fault[/red] {escape(fault.error)}", highlight=False, soft_wrap=True)
    verdict = result.verdict.value if result.verdict else "none"
    console.print(f"status {result.status.value}, verdict {verdict}", highlight=False)
    if result.abort_reason:
        console.print(escape(f"aborted: {result.abort_reason}"), highlight=False)
    for failed in result.failed_thresholds:
        console.print(f"[red]threshold failed[/red] {escape(failed)}", highlight=False)
    for problem in result.delivery_errors:
        errors.print(f"[yellow]warning[/yellow] {escape(problem)}", highlight=False, soft_wrap=True)
    if result.error:
        for line in result.error.splitlines():
            errors.print(f"[red]error[/red] {escape(line)}", highlight=False, soft_wrap=True)


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _faults_table(result: Result) -> Table:
    """Each fault: when it was in place, how it ended, and the total's p99, QPS and errors
    before, during and after it, narrow enough for an 80-column terminal (the report has each
    query's)."""
    table = Table(title="faults: p99 and QPS before/during/after, errors during, seconds from "
                  "the start of the load", title_justify="left")  # fmt: skip
    for column in ("fault", "in place", "p99 ms", "QPS", "errors", "back"):
        table.add_column(column, justify="left" if column == "fault" else "right")
    for fault in result.faults:
        total = next((i for i in fault.impact if i.query == "total"), None)
        label = f"{fault.name}\n{fault.fault_type}"
        if fault.status.value != "recovered":
            label += f", {fault.status.value.replace('_', ' ')}"
        window = "–"
        if fault.inject_s is not None:
            end = "?" if fault.recover_s is None else f"{fault.recover_s:.1f}"
            window = f"{fault.inject_s:.1f}–{end}"
        slices = (total.before, total.during, total.after) if total is not None else ()
        p99s = "/".join(_short(getattr(w, "p99_ms", None)) for w in slices) or "–"
        qps = "/".join(_short(getattr(w, "qps", None)) for w in slices) or "–"
        during = total.during if total is not None else None
        errors_during = "–" if during is None else f"{during.errors} ({during.error_rate:.0%})"
        back = "–"
        if total is not None and total.recovered is not None:
            back = f"{total.time_to_recover_s:.0f} s" if total.recovered else "never"
        table.add_row(escape(label), window, p99s, qps, errors_during, back)
    return table


def _short(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _exit_code(result: Result) -> int:
    if result.status.value != "completed":
        return EXIT_FAILED
    if result.verdict in (Verdict.FAILED, Verdict.ABORTED):
        return EXIT_THRESHOLDS
    return 0


def _load_dotenv() -> None:
    """Reads the project's `.env` as `dagster dev` does (the demo writes it); set vars win."""
    from dotenv import dotenv_values

    from crucible_dagster.settings import PROJECT_ROOT

    for key, value in dotenv_values(PROJECT_ROOT / ".env").items():
        if value is not None:
            os.environ.setdefault(key, value)


def main() -> None:
    # A shell starts background commands with SIGINT ignored; `kill -INT` (or Ctrl-C after `fg`)
    # must still stop a run the way Ctrl-C does.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _load_dotenv()
    # Dagster's own preview and deprecation notices are not for Crucible's users.
    warnings.filterwarnings("ignore")
    logging.getLogger("dagster").setLevel(logging.WARNING)
    os.environ.setdefault("DAGSTER_TELEMETRY_DISABLED", "1")
    app()


if __name__ == "__main__":
    main()
