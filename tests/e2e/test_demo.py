"""The README's demo path, as a user runs it, then the Dagster UI's view of what it recorded."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from crucible_dagster.local_postgres import free_port
from crucible_dagster.settings import PROJECT_ROOT

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent


def crucible(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "crucible"), *args], env=env, cwd=PROJECT_ROOT, capture_output=True,
        text=True, timeout=timeout, check=False,
    )  # fmt: skip


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]


def test_demo_runs_tpch_and_dagster_shows_job_run_and_results(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRUCIBLE_", "DAGSTER_"))}
    env["CRUCIBLE_HOME"] = str(tmp_path / "home")

    demo = crucible("demo", env=env)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    for name in ("q01", "q22", "total"):
        assert name in demo.stdout
    assert "status completed, verdict passed" in demo.stdout

    shown = crucible("results", "demo_tpch", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    result = json.loads(shown.stdout)
    assert result["plan"] == "demo_tpch"
    assert result["status"] == "completed"
    assert [q["name"] for q in result["queries"]] == [f"q{i:02d}" for i in range(1, 23)]
    assert all(q["count"] > 0 and q["errors"] == 0 for q in result["queries"])
    assert 35 <= result["duration_s"] <= 50
    assert result["total"]["qps"] > 1

    port = free_port()
    env["DAGSTER_HOME"] = str(tmp_path / "home" / "dagster")
    server = subprocess.Popen(
        [str(BIN / "dagster-webserver"), "-w", str(PROJECT_ROOT / "workspace.yaml"),
         "-h", "127.0.0.1", "-p", str(port)],
        # Not the project folder: a .env there (from the user's own demo) would win.
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "dagster-webserver did not start"
                time.sleep(0.5)
        jobs = graphql(
            port,
            """{ repositoriesOrError { ... on RepositoryConnection {
            nodes { jobs { name } } } } }""",
        )
        names = {j["name"] for n in jobs["repositoriesOrError"]["nodes"] for j in n["jobs"]}
        assert "demo_tpch" in names

        runs = graphql(
            port,
            """{ runsOrError(filter: {pipelineName: "demo_tpch"}) {
            ... on Runs { results { status tags { key value } } } } }""",
        )
        statuses = [r["status"] for r in runs["runsOrError"]["results"]]
        assert statuses == ["SUCCESS"]

        asset = graphql(
            port,
            """{ assetOrError(assetKey: {path: ["results", "demo_tpch"]}) {
            ... on Asset { assetMaterializations(limit: 1) {
              metadataEntries { label ... on FloatMetadataEntry { floatValue } } } } } }""",
        )
        entries = asset["assetOrError"]["assetMaterializations"][0]["metadataEntries"]
        floats = {e["label"]: e.get("floatValue") for e in entries}
        assert floats["total/p95_ms"] > 0
        assert floats["q01/qps"] > 0
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
