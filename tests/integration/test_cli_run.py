"""`crucible run` as a user runs it: a real process, a real server, Ctrl-C in the middle."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from crucible_dagster.local_postgres import LocalPostgres
from tests.conftest import PG_PASSWORD
from tests.integration.test_plan_job import write_plan

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent

SLOW_WORKLOAD = """\
-- @type: sql
-- @name: slow
SELECT pg_sleep(0.05)
-- @name: fast
SELECT n_name FROM nation WHERE n_nationkey = 3
"""


def test_ctrl_c_cancels_the_run_keeps_what_was_measured_and_leaves_nothing_running(
    postgres: LocalPostgres, pg_database: str, tmp_path: Path
) -> None:
    plan = write_plan(
        tmp_path / "plans", "interrupted", port=postgres.port, database=pg_database,
        workload=SLOW_WORKLOAD, hold_for="60s",
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRUCIBLE_", "DAGSTER_"))}
    env |= {"CRUCIBLE_HOME": str(tmp_path / "home"), "CRUCIBLE_TEST_PG_PASSWORD": PG_PASSWORD}
    cli = subprocess.Popen(
        [str(BIN / "crucible"), "run", str(plan)], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    parent = psutil.Process(cli.pid)
    shards: list[psutil.Process] = []
    deadline = time.monotonic() + 60
    while not shards:
        assert time.monotonic() < deadline, "no shard process started"
        shards = [
            p for p in parent.children(recursive=True) if "spawn_main" in " ".join(p.cmdline())
        ]
        time.sleep(0.2)
    time.sleep(4)

    # Impatient: a second Ctrl-C while the run stops must not lose what it measured.
    cli.send_signal(signal.SIGINT)
    time.sleep(0.3)
    cli.send_signal(signal.SIGINT)
    out, err = cli.communicate(timeout=60)
    assert cli.returncode == 1, out + err
    assert "status cancelled" in out, out + err
    assert "Traceback" not in out + err
    assert PG_PASSWORD not in out + err
    for shard in shards:
        assert not shard.is_running() or shard.status() == psutil.STATUS_ZOMBIE

    shown = subprocess.run(
        [str(BIN / "crucible"), "results", "interrupted", "--json"], env=env,
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result = json.loads(shown.stdout)
    assert result["status"] == "cancelled"
    assert result["verdict"] is None
    assert sum(q["count"] for q in result["queries"]) > 0


def test_killed_cli_run_is_failed_by_the_sensor_and_its_shards_stop(
    postgres: LocalPostgres, pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dagster as dg

    from crucible_dagster.defs.sweeper import crucible_orphaned_cli_runs
    from crucible_dagster.lease import LeaseStore
    from crucible_dagster.plan import load_plan
    from crucible_dagster.run import plan_sut
    from crucible_dagster.settings import get_settings

    plan = write_plan(
        tmp_path / "plans", "killed", port=postgres.port, database=pg_database,
        workload=SLOW_WORKLOAD, hold_for="60s",
    )  # fmt: skip
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRUCIBLE_", "DAGSTER_"))}
    env |= {"CRUCIBLE_HOME": str(home), "CRUCIBLE_TEST_PG_PASSWORD": PG_PASSWORD}
    cli = subprocess.Popen(
        [str(BIN / "crucible"), "run", str(plan)], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    parent = psutil.Process(cli.pid)
    deadline = time.monotonic() + 60
    shards: list[psutil.Process] = []
    while not shards:
        assert time.monotonic() < deadline, "no shard process started"
        shards = [
            p for p in parent.children(recursive=True) if "spawn_main" in " ".join(p.cmdline())
        ]
        time.sleep(0.2)
    time.sleep(2)
    cli.kill()
    cli.wait(timeout=10)
    psutil.wait_procs(shards, timeout=10)
    assert not any(s.is_running() and s.status() != psutil.STATUS_ZOMBIE for s in shards)

    monkeypatch.setenv("CRUCIBLE_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    get_settings.cache_clear()
    sut = plan_sut(load_plan(plan))
    assert LeaseStore(get_settings().database_url).holder(sut) is not None
    with dg.DagsterInstance.get() as instance:
        [run] = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.STARTED
        crucible_orphaned_cli_runs(dg.build_sensor_context(instance=instance))
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE  # type: ignore[union-attr]
    assert LeaseStore(get_settings().database_url).holder(sut) is None
    get_settings.cache_clear()


def test_a_cli_run_killed_mid_fault_has_its_fault_recovered_by_the_sensor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dagster as dg

    from crucible_dagster.defs.sweeper import crucible_orphaned_cli_runs
    from crucible_dagster.lease import LeaseStore
    from crucible_dagster.local_postgres import start_local_postgres
    from crucible_dagster.plan import load_plan
    from crucible_dagster.run import plan_sut
    from crucible_dagster.settings import get_settings

    server = start_local_postgres(tmp_path / "pg", password=PG_PASSWORD)
    main = psutil.Process(server.pid)
    try:
        pid_file = server.data_dir / "postmaster.pid"
        chaos = (
            "chaos_spec:\n  engine: local\n  experiments:\n    - name: freeze\n"
            f"      fault_type: pause\n      target: {{pid_file: {pid_file}}}\n"
            "      schedule: {start_after: 1s, duration: 50s}\n"
        )  # fmt: skip
        plan = write_plan(
            tmp_path / "plans", "killed_mid_fault", port=server.port, database="postgres",
            workload="-- @type: sql\n-- @name: one\nSELECT 1\n", hold_for="60s", extra=chaos,
            tables=(),
        )  # fmt: skip
        home = tmp_path / "home"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CRUCIBLE_", "DAGSTER_"))}
        env |= {"CRUCIBLE_HOME": str(home), "CRUCIBLE_TEST_PG_PASSWORD": PG_PASSWORD}
        cli = subprocess.Popen(
            [str(BIN / "crucible"), "run", str(plan)], env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 90
        while main.status() != psutil.STATUS_STOPPED:
            assert time.monotonic() < deadline, "the fault was never injected"
            assert cli.poll() is None, "the run ended before its fault"
            time.sleep(0.2)
        cli.kill()
        cli.wait(timeout=10)
        time.sleep(1)
        assert main.status() == psutil.STATUS_STOPPED  # what a dead run leaves behind

        monkeypatch.setenv("CRUCIBLE_HOME", str(home))
        monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
        get_settings.cache_clear()
        store = LeaseStore(get_settings().database_url)
        assert [f.name for f in store.open_faults()] == ["freeze"]
        with dg.DagsterInstance.get() as instance:
            crucible_orphaned_cli_runs(dg.build_sensor_context(instance=instance))
        assert main.status() != psutil.STATUS_STOPPED
        assert store.open_faults() == []
        assert store.holder(plan_sut(load_plan(plan))) is None
    finally:
        for process in [main, *main.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.resume()
        server.stop()
        get_settings.cache_clear()
