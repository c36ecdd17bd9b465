"""The demo: a private PostgreSQL, the TPC-H fixture at SF 0.01, and the demo plan run on it."""

import os
import secrets
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from crucible_dagster.errors import CrucibleError
from crucible_dagster.local_postgres import LocalPostgres, port_is_free, start_local_postgres
from crucible_dagster.results import Result
from crucible_dagster.settings import PROJECT_ROOT, get_settings

DEMO_PLAN = "demo_tpch.yaml"
PASSWORD_VARIABLE = "CRUCIBLE_DEMO_PG_PASSWORD"
# Dagster's step-by-step console log is for the UI; the CLI shows progress and the error.
QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def run_demo(
    console: Console, *, run_plan: Callable[[Path], Result], keep_server: bool = False
) -> tuple[Result, LocalPostgres | None]:
    """Runs the whole demo and stops the PostgreSQL server it started, unless `keep_server`:
    then the running server is returned with the result."""
    import dagster as dg

    from crucible_dagster.defs.fixtures import add_scale_partition, tpch_fixture
    from crucible_dagster.defs.instance import ensure_dagster_home
    from crucible_dagster.defs.resources import CrucibleResource
    from crucible_dagster.plan import load_plan

    settings = get_settings()
    plan_path = settings.plans_dir / DEMO_PLAN
    loaded = load_plan(plan_path)
    info = loaded.plan.test_environment.component_spec.cluster_info
    if info is None or info.port is None:
        raise CrucibleError(f"{plan_path}: the demo plan must name a port in cluster_info")
    dagster_home = ensure_dagster_home(settings)
    password = os.environ.get(PASSWORD_VARIABLE) or _remembered_password(settings.home)
    os.environ[PASSWORD_VARIABLE] = password
    if settings.home.is_relative_to(PROJECT_ROOT):
        _write_dotenv(dagster_home, password)

    console.print(f"starting PostgreSQL on 127.0.0.1:{info.port}", highlight=False)
    if not port_is_free(info.port):
        raise CrucibleError(
            f"port {info.port} on 127.0.0.1 is in use; stop what listens there, or change the "
            f"port in {plan_path}"
        )
    server = start_local_postgres(settings.home / "demo-postgres", info.port, password=password)
    try:
        scales = sorted({t.scale for t in loaded.plan.test_environment.fixture_tables()})
        with dg.DagsterInstance.get() as instance:
            for scale in scales:
                console.print(f"materializing fixtures/tpch partition {scale}", highlight=False)
                add_scale_partition(instance, "tpch", scale)
                outcome = dg.materialize(
                    [tpch_fixture],
                    partition_key=scale,
                    instance=instance,
                    resources={"crucible": CrucibleResource()},
                    run_config=QUIET_LOGS,
                    raise_on_error=False,
                )
                if not outcome.success:
                    raise CrucibleError(f"the TPC-H fixture at scale {scale} failed to build")
        console.print(f"running {plan_path.relative_to(PROJECT_ROOT)}", highlight=False)
        result = run_plan(plan_path)
    except BaseException:
        server.stop()
        raise
    if keep_server:
        return result, server
    server.stop()
    return result, None


def _remembered_password(home: Path) -> str:
    """A random password for the demo server, kept so later demos reuse its data folder."""
    path = home / "demo-postgres.password"
    if path.exists():
        return path.read_text().strip()
    home.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(12)
    path.write_text(password)
    path.chmod(0o600)
    return password


def _write_dotenv(dagster_home: Path, password: str) -> None:
    """`dagster dev` reads `.env` from the project folder: same instance, same demo password."""
    path = PROJECT_ROOT / ".env"
    lines = path.read_text().splitlines() if path.exists() else []
    wanted = {"DAGSTER_HOME": str(dagster_home), PASSWORD_VARIABLE: password}
    kept = [line for line in lines if line.split("=", 1)[0] not in wanted]
    kept += [f"{key}={value}" for key, value in wanted.items()]
    path.write_text("\n".join(kept) + "\n")
    path.chmod(0o600)
