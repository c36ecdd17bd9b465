"""`crucible run` as a user runs it: a real process, a real server, Ctrl-C in the middle."""

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

    cli.send_signal(signal.SIGINT)
    out, err = cli.communicate(timeout=60)
    assert cli.returncode == 1, out + err
    assert "status cancelled" in out
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
