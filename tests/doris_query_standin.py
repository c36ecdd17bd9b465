"""A stand-in for the HTTP SQL APIs of a Doris FE and a StarRocks FE, for tests: NOT Doris.

It serves, on 127.0.0.1, what the k6 driver's `doris_http` and `starrocks_http` transports
send, answering in the shapes the two projects document:

- Doris: `POST /api/query/<cluster>/<db>` with basic auth and `{"stmt": ..., "limit": ...}`.
  Success is HTTP 200 with `{"msg": "success", "code": 0, "data": {...}, "count": 0}`, where
  `data` is a `result_set` (`meta`, `data` rows, `time`) or an `exec_status`; an error is HTTP
  200 with `code` 1, `msg` "Error" and the message in `data`, as the FE's REST layer builds it.
  At most `limit` rows (1000 by default) are returned, as the FE does.
- StarRocks: `POST /api/v1/catalogs/<catalog>[/databases/<db>]/sql` with basic auth and
  `{"query": ..., "sessionVariables": {...}}`, answered as newline-delimited JSON
  (`connectionId`, `meta`, one `data` per row, `statistics`); an error before any row is an
  HTTP error status with `{"status": "FAILED", "msg": ...}`; only SELECT, SHOW, EXPLAIN and
  KILL are accepted. With `break_after_rows`, a result stops after that many rows and the
  connection closes, as StarRocks does when it fails mid-result.

Statements run on an in-memory SQLite database (its SQL, not Doris' or StarRocks'), with a
`sleep(seconds)` function for slow statements; a statement slower than `query_timeout_s`
answers an error with "timeout" in its words. Not covered: Doris' or StarRocks' SQL, their
types, the streaming answer of recent Doris FEs (`X-Doris-Stream` is recorded, and the
documented envelope is always sent), the exact text of their error messages (guessed),
how an authentication failure is shaped (the stand-in answers HTTP 401), HTTPS, redirects.
"""

import base64
import json
import sqlite3
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_DORIS_PREFIX = "/api/query/"
_STARROCKS_PREFIX = "/api/v1/catalogs/"
_STARROCKS_WORDS = ("SELECT", "SHOW", "EXPLAIN", "KILL", "WITH")
DEFAULT_ROW_LIMIT = 1000


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class QueryApiStandIn:
    """The stand-in server; `requests` records every POST in order."""

    def __init__(
        self,
        user: str = "root",
        password: str = "",
        *,
        query_timeout_s: float = 30.0,
        break_after_rows: int | None = None,
    ) -> None:
        self.user = user
        self.password = password
        self.query_timeout_s = query_timeout_s
        self.break_after_rows = break_after_rows
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._db.create_function("sleep", 1, _sleep)
        self._connections = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def start(self) -> "QueryApiStandIn":
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._db.close()

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Runs SQLite SQL directly, for test setup and checks."""
        with self._lock:
            rows = self._db.execute(sql).fetchall()
            self._db.commit()
            return rows

    def authorized(self, header: str) -> bool:
        expected = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return header == f"Basic {expected}"

    def run(self, sql: str) -> tuple[list[str], list[list[Any]] | None]:
        """(column names, rows) of a statement, rows None for one without a result;
        sqlite3.Error or TimeoutError when it fails."""
        started = time.monotonic()
        with self._lock:
            cursor = self._db.execute(sql)
            rows = [list(row) for row in cursor.fetchall()]
            self._db.commit()
            names = [d[0] for d in cursor.description] if cursor.description else []
        if time.monotonic() - started > self.query_timeout_s:
            raise TimeoutError(f"query timeout: exceeded {self.query_timeout_s:g} seconds")
        return names, (rows if cursor.description else None)

    def connection_id(self) -> int:
        with self._lock:
            self._connections += 1
            return self._connections


def _sleep(seconds: float) -> int:
    time.sleep(seconds)
    return 0


def _doris_error(message: str) -> dict[str, Any]:
    detail = f"Failed to execute sql: java.sql.SQLException: errCode = 2, detailMessage = {message}"
    return {"msg": "Error", "code": 1, "data": detail, "count": 0}


def _handler(standin: QueryApiStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass  # quiet: tests read `standin.requests`

        def _json(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length).decode("utf-8")
            try:
                body = json.loads(raw)
            except json.JSONDecodeError:
                body = {}
            headers = {k.lower(): v for k, v in self.headers.items()}
            with standin._lock:
                standin.requests.append(RecordedRequest(self.path, headers, body))
            if not standin.authorized(self.headers.get("Authorization", "")):
                self._json(401, {"code": 401, "msg": "Unauthorized", "data": "access denied"})
                return
            path = urllib.parse.urlsplit(self.path).path
            if path.startswith(_DORIS_PREFIX) and path.count("/") == 4:
                self._doris(body)
            elif path.startswith(_STARROCKS_PREFIX) and path.endswith("/sql"):
                self._starrocks(body)
            else:
                self._json(404, {"code": 404, "msg": "Not Found", "data": path})

        def _doris(self, body: dict[str, Any]) -> None:
            stmt = body.get("stmt")
            if not stmt:
                missing = {"msg": "Bad Request", "code": 403, "data": "Missing statement"}
                self._json(200, missing)
                return
            started = time.monotonic()
            try:
                names, rows = standin.run(stmt)
            except (sqlite3.Error, TimeoutError) as error:
                self._json(200, _doris_error(str(error)))
                return
            elapsed_ms = round((time.monotonic() - started) * 1000)
            if rows is None:
                status = {"type": "exec_status", "status": {}}
                self._json(200, {"msg": "success", "code": 0, "data": status, "count": 0,
                                 "time": elapsed_ms})  # fmt: skip
                return
            limit = int(body.get("limit", DEFAULT_ROW_LIMIT))
            result = {
                "type": "result_set",
                "meta": [{"name": name, "type": "VARCHAR"} for name in names],
                "data": rows[:limit],
                "status": {},
                "time": elapsed_ms,
            }
            self._json(200, {"msg": "success", "code": 0, "data": result, "count": 0})

        def _starrocks(self, body: dict[str, Any]) -> None:
            query = str(body.get("query", "")).strip().rstrip(";")
            word = query.split(None, 1)[0].upper() if query else ""
            if word not in _STARROCKS_WORDS:
                failed = {"status": "FAILED", "msg": "only SELECT, SHOW, EXPLAIN, KILL"}
                self._json(400, failed)
                return
            try:
                names, rows = standin.run(query)
            except (sqlite3.Error, TimeoutError) as error:
                self._json(500, {"status": "FAILED", "msg": str(error)})
                return
            lines: list[dict[str, Any]] = [{"connectionId": standin.connection_id()}]
            lines.append({"meta": [{"name": name, "type": "varchar"} for name in names]})
            cut = standin.break_after_rows
            shown = rows if cut is None else (rows or [])[:cut]
            lines += [{"data": row} for row in shown or []]
            if cut is None:
                lines.append({"statistics": {"scanRows": 0, "scanBytes": 0,
                                             "returnRows": len(shown or [])}})  # fmt: skip
            data = "".join(json.dumps(line) + "\n" for line in lines).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson; charset=UTF-8")
            if cut is None:
                self.send_header("Content-Length", str(len(data)))
            else:
                # No length: the body ends where the connection closes, mid-result.
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)

    return Handler
