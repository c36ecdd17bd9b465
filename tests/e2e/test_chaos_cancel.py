"""Cancelling a run from the Dagster UI in the middle of a fault: the fault is recovered and the
SUT is healthy. A real webserver and daemon, driven over GraphQL as the UI drives them."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from crucible_dagster.defs.instance import DAGSTER_YAML
from crucible_dagster.local_postgres import LocalPostgres, free_port
from crucible_dagster.settings import PROJECT_ROOT
from tests.conftest import PG_PASSWORD, answers, paused

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
WORKLOAD = """\
-- @type: sql
-- @name: one
SELECT 1
"""


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    assert "errors" not in answer, answer
    return answer["data"]


def wait_for(what: str, check: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def start(argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def test_cancelling_a_run_mid_fault_from_the_ui_recovers_the_fault_and_leaves_the_sut_healthy(
    own_postgres: LocalPostgres, tmp_path: Path
) -> None:
    plans = tmp_path / "plans"
    (plans / "workloads").mkdir(parents=True)
    (plans / "workloads" / "tiny.sql").write_text(WORKLOAD)
    pid_file = own_postgres.data_dir / "postmaster.pid"
    (plans / "cancelled_mid_fault.yaml").write_text(f"""\
test_metadata: {{run_label: cancelled mid fault}}
test_environment:
  env_type: long-lived
  target_db: postgres
  component_spec:
    type: postgresql
    cluster_info:
      host: 127.0.0.1
      port: {own_postgres.port}
      username: postgres
      password: {{env: CRUCIBLE_TEST_PG_PASSWORD}}
execution:
  concurrency: 2
  ramp_up: 0s
  hold_for: 120s
  workload: [{{workload_id: tiny}}]
chaos_spec:
  engine: local
  experiments:
    - name: long-freeze
      fault_type: pause
      target: {{pid_file: {pid_file}}}
      schedule: {{start_after: 2s, duration: 100s}}
""")
    home = tmp_path / "home"
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True)
    (dagster_home / "dagster.yaml").write_text(DAGSTER_YAML)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRUCIBLE_", "DAGSTER_"))}
    env |= {"CRUCIBLE_HOME": str(home), "DAGSTER_HOME": str(dagster_home),
            "CRUCIBLE_PLANS_DIR": str(plans), "CRUCIBLE_TEST_PG_PASSWORD": PG_PASSWORD}  # fmt: skip
    workspace = str(PROJECT_ROOT / "workspace.yaml")
    port = free_port()
    webserver = start([str(BIN / "dagster-webserver"), "-w", workspace, "-h", "127.0.0.1", "-p",
                       str(port)], env, tmp_path, tmp_path / "webserver.log")  # fmt: skip
    daemon = start([str(BIN / "dagster-daemon"), "run", "-w", workspace], env, tmp_path,
                   tmp_path / "daemon.log")  # fmt: skip
    try:

        def serving() -> bool:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
                return True
            except OSError:
                return False

        wait_for("dagster-webserver", serving, 120)
        launched = graphql(port, """
            mutation($params: ExecutionParams!) {
              launchRun(executionParams: $params) {
                __typename
                ... on LaunchRunSuccess { run { runId } }
                ... on PythonError { message }
              }
            }""", {"params": {"selector": {"repositoryLocationName": "crucible",
                                            "repositoryName": "__repository__",
                                            "jobName": "cancelled_mid_fault"},
                               "runConfigData": {}}})  # fmt: skip
        assert launched["launchRun"]["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["launchRun"]["run"]["runId"]

        def status() -> str:
            found = graphql(port, "query($id: ID!) { runOrError(runId: $id) { ... on Run "
                                  "{ status } } }", {"id": run_id})  # fmt: skip
            return str(found["runOrError"]["status"])

        wait_for("the fault to be in place", lambda: paused(own_postgres), 180)
        terminated = graphql(port, """
            mutation($id: String!) {
              terminateRun(runId: $id) {
                __typename
                ... on TerminateRunFailure { message }
                ... on PythonError { message }
              }
            }""", {"id": run_id})  # fmt: skip
        assert terminated["terminateRun"]["__typename"] == "TerminateRunSuccess", terminated
        wait_for("the run to end", lambda: status() in ("CANCELED", "FAILURE", "SUCCESS"), 120)
        assert status() == "CANCELED"
    finally:
        stop(daemon)
        stop(webserver)

    assert not paused(own_postgres)

    assert answers(own_postgres)
    [result_file] = (home / "storage" / "results").glob("cancelled_mid_fault_*/result.json")
    result = json.loads(result_file.read_text())
    assert result["status"] == "cancelled"
    [fault] = result["faults"]
    assert fault["status"] == "recovered_early"
    assert fault["recover_s"] < 100
    assert result["total"]["count"] > 0
