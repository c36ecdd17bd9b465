"""Stand-ins for Doris, written for the tests: no Doris or StarRocks server runs here.

`StandInCatalog` answers the statements of the Doris fixture loader from a small model of the
catalog (databases, tables with row counts, the state table) and records every statement.
`StreamLoadStandIn` is an FE and a BE on 127.0.0.1: the FE answers a Stream Load PUT with a
307 to the BE, which checks credentials and headers, reads the body in chunks and answers with
Doris' JSON. Neither is Doris: they only follow the documented protocol closely enough to test
the loader's side of it.
"""

import base64
import hashlib
import json
import re
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pyarrow.parquet as pq

from crucible_dagster.fixtures.doris import StatementFailed

_IDENT = r"`((?:[^`]|``)+)`"
_STRING = r"'((?:[^'\\]|\\.)*)'"
_STATE = "crucible_fixture_state"


def _ident(text: str) -> str:
    return text.replace("``", "`")


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


@dataclass
class StandInCatalog:
    """A StatementExecutor stand-in: a model of one Doris catalog that records statements.

    `s3_rows` says how many rows an `S3()`/`FILES()` read of each URI yields. `fail_on` makes a
    statement containing that text fail with a message that echoes the statement, as a server
    message might.
    """

    s3_rows: dict[str, int] = field(default_factory=dict)
    databases: set[str] = field(default_factory=set)
    tables: dict[tuple[str, str], int] = field(default_factory=dict)
    state: dict[str, dict[str, Any]] = field(default_factory=dict)
    statements: list[str] = field(default_factory=list)
    fail_on: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def execute(self, sql: str) -> list[tuple[object, ...]]:
        with self.lock:
            self.statements.append(sql)
            if self.fail_on is not None and self.fail_on in sql:
                raise StatementFailed(f"errCode = 2, detailMessage = failed to run: {sql}")
            return self._answer(sql)

    def add_rows(self, database: str, table: str, rows: int) -> None:
        with self.lock:
            if (database, table) not in self.tables:
                raise KeyError(f"unknown table {database}.{table}")
            self.tables[(database, table)] += rows

    def _answer(self, sql: str) -> list[tuple[object, ...]]:
        if m := re.fullmatch(rf"CREATE DATABASE IF NOT EXISTS {_IDENT}", sql):
            self.databases.add(_ident(m[1]))
            return []
        if m := re.match(rf"CREATE TABLE (IF NOT EXISTS )?{_IDENT}\.{_IDENT} \(", sql):
            key = (_ident(m[2]), _ident(m[3]))
            if key[0] not in self.databases:
                raise StatementFailed(f"Unknown database '{key[0]}'")
            if key in self.tables:
                if m[1]:
                    return []
                raise StatementFailed(f"Table '{key[1]}' already exists")
            self.tables[key] = 0
            return []
        if m := re.fullmatch(rf"DROP TABLE (IF EXISTS )?{_IDENT}\.{_IDENT}", sql):
            key = (_ident(m[2]), _ident(m[3]))
            if key not in self.tables and not m[1]:
                raise StatementFailed(f"Unknown table '{key[1]}'")
            self.tables.pop(key, None)
            return []
        if m := re.fullmatch(
            rf"SELECT COUNT\(\*\) FROM information_schema\.tables WHERE table_schema = {_STRING} "
            rf"AND table_name = {_STRING}",
            sql,
        ):
            return [(int((_unescape(m[1]), _unescape(m[2])) in self.tables),)]
        if m := re.fullmatch(
            rf"SELECT `data_version`, `rows` FROM {_IDENT}\.`{_STATE}` WHERE `table_name` = "
            rf"{_STRING}",
            sql,
        ):
            row = self.state.get(_unescape(m[2]))
            return [(row["data_version"], row["rows"])] if row else []
        if m := re.fullmatch(rf"SELECT COUNT\(\*\) FROM {_IDENT}\.{_IDENT}", sql):
            return [(self.tables[(_ident(m[1]), _ident(m[2]))],)]
        if m := re.match(rf"INSERT INTO {_IDENT}\.`{_STATE}` \((.*?)\) VALUES \((.*)\)$", sql):
            names = [_ident(n) for n in re.findall(_IDENT, m[2])]
            values = [
                _unescape(s) if s or q else (None if null else int(n))
                for q, s, n, null in re.findall(r"(')((?:[^'\\]|\\.)*)'|(\d+)|(NULL)", m[3])
            ]
            row = dict(zip(names, values, strict=True))
            self.state[str(row["table_name"])] = row
            return []
        if m := re.match(
            rf'INSERT INTO {_IDENT}\.{_IDENT} SELECT \* FROM (S3|FILES)\("(uri|path)" = '
            r'"((?:[^"\\]|\\.)*)"',
            sql,
        ):
            key = (_ident(m[1]), _ident(m[2]))
            self.tables[key] += self.s3_rows[_unescape(m[5])]
            return []
        if m := re.fullmatch(
            rf"ALTER TABLE {_IDENT}\.{_IDENT} REPLACE WITH TABLE {_IDENT} "
            r"PROPERTIES\('swap' = 'false'\)",
            sql,
        ):
            database, table, other = _ident(m[1]), _ident(m[2]), _ident(m[3])
            self.tables[(database, table)] = self.tables.pop((database, other))
            return []
        if m := re.fullmatch(rf"ALTER TABLE {_IDENT}\.{_IDENT} SWAP WITH {_IDENT}", sql):
            database, table, other = _ident(m[1]), _ident(m[2]), _ident(m[3])
            a, b = (database, table), (database, other)
            self.tables[a], self.tables[b] = self.tables[b], self.tables[a]
            return []
        if m := re.fullmatch(rf"ALTER TABLE {_IDENT}\.{_IDENT} RENAME {_IDENT}", sql):
            database, table, new = _ident(m[1]), _ident(m[2]), _ident(m[3])
            if (database, new) in self.tables:
                raise StatementFailed(f"Table '{new}' already exists")
            self.tables[(database, new)] = self.tables.pop((database, table))
            return []
        raise StatementFailed(f"the stand-in does not understand: {sql[:80]}")


@dataclass
class ReceivedLoad:
    """One Stream Load body the BE stand-in read."""

    database: str
    table: str
    label: str
    size_bytes: int
    sha256: str
    rows: int
    headers: dict[str, str]


class StreamLoadStandIn:
    """An FE and a BE stand-in for Doris' Stream Load, each on a free port of 127.0.0.1."""

    def __init__(self, user: str, password: str, catalog: StandInCatalog | None = None) -> None:
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.catalog = catalog
        self.loads: list[ReceivedLoad] = []
        self.fe_requests: list[dict[str, str]] = []
        self.fe_body_bytes = 0
        self.be_requests = 0
        self.labels: set[str] = set()
        # A JSON answer the BE gives to the next request instead of loading it.
        self.fail_next: dict[str, Any] | None = None
        # Load the next body, then close the connection without answering.
        self.drop_next_answer = False
        self._be = ThreadingHTTPServer(("127.0.0.1", 0), self._be_handler())
        self._fe = ThreadingHTTPServer(("127.0.0.1", 0), self._fe_handler())
        self._threads = [
            threading.Thread(target=server.serve_forever, daemon=True)
            for server in (self._fe, self._be)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def fe_port(self) -> int:
        return self._fe.server_address[1]

    @property
    def be_port(self) -> int:
        return self._be.server_address[1]

    def stop(self) -> None:
        for server in (self._fe, self._be):
            server.shutdown()
            server.server_close()

    def _fe_handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class FrontEnd(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle_expect_100(self) -> bool:
                # The FE redirects on the headers alone; it never invites the body.
                return True

            def do_PUT(self) -> None:
                standin.fe_requests.append(dict(self.headers.items()))
                if self.headers.get("Authorization") != standin.auth:
                    self._answer(401, {"status": "FAILED", "msg": "Access denied"})
                elif self.headers.get("Expect", "").lower() != "100-continue":
                    self._answer(200, {"Status": "FAILED",
                                       "Message": "There is no 100-continue header"})  # fmt: skip
                else:
                    self.send_response(307)
                    self.send_header("Location", f"http://127.0.0.1:{standin.be_port}{self.path}")
                    self.send_header("Content-Length", "0")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.flush()
                self.close_connection = True
                # Whatever body the client sends anyway is counted, until it closes.
                self.connection.settimeout(2.0)
                try:
                    while data := self.connection.recv(65536):
                        standin.fe_body_bytes += len(data)
                except OSError:
                    pass

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return FrontEnd

    def _be_handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class BackEnd(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_PUT(self) -> None:
                standin.be_requests += 1
                self.close_connection = True
                match = re.fullmatch(r"/api/([^/]+)/([^/]+)/_stream_load", self.path)
                label = self.headers.get("label", "")
                problem = None
                if self.headers.get("Authorization") != standin.auth:
                    problem = "Access denied: wrong user or password"
                elif match is None:
                    problem = f"bad path {self.path}"
                elif self.headers.get("format") != "parquet" or not label:
                    problem = "format: parquet and a label are required"
                size = int(self.headers.get("Content-Length", "0"))
                digest, rows, parquet_problem = self._read_body(size)
                problem = problem or parquet_problem
                if problem is not None:
                    self._answer({"Status": "Fail", "Message": problem, "Label": label})
                    return
                assert match is not None
                if standin.fail_next is not None:
                    answer, standin.fail_next = standin.fail_next, None
                    self._answer({"Label": label, **answer})
                    return
                if label in standin.labels:
                    used = f"Label [{label}] has already been used."
                    self._answer({"Status": "Label Already Exists", "Label": label,
                                  "ExistingJobStatus": "FINISHED", "Message": used})  # fmt: skip
                    return
                database, table = match[1], match[2]
                standin.labels.add(label)
                standin.loads.append(
                    ReceivedLoad(database, table, label, size, digest, rows,
                                 dict(self.headers.items()))
                )  # fmt: skip
                if standin.catalog is not None:
                    standin.catalog.add_rows(database, table, rows)
                if standin.drop_next_answer:
                    standin.drop_next_answer = False
                    return  # loaded, but the client never hears so
                self._answer({"TxnId": len(standin.loads), "Label": label, "Status": "Success",
                              "Message": "OK", "NumberTotalRows": rows,
                              "NumberLoadedRows": rows, "NumberFilteredRows": 0,
                              "LoadBytes": size})  # fmt: skip

            def _read_body(self, size: int) -> tuple[str, int, str | None]:
                """Reads the body in chunks into a spool file (never whole into memory)."""
                digest = hashlib.sha256()
                with tempfile.TemporaryFile() as spool:
                    remaining = size
                    while remaining:
                        chunk = self.rfile.read(min(65536, remaining))
                        if not chunk:
                            break
                        digest.update(chunk)
                        spool.write(chunk)
                        remaining -= len(chunk)
                    if remaining:
                        return digest.hexdigest(), 0, "the body ended early"
                    spool.seek(0)
                    try:
                        rows = pq.ParquetFile(spool).metadata.num_rows
                    except Exception as exc:
                        return digest.hexdigest(), 0, f"not a Parquet file: {exc}"
                return digest.hexdigest(), rows, None

            def _answer(self, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return BackEnd
