"""A stand-in for a Trino coordinator, for tests: NOT Trino.

It speaks the part of Trino's client REST protocol that the `trino` Python client uses, so the
driver's real client code runs against it over HTTP (or HTTPS) on 127.0.0.1:

- `POST /v1/statement` with the `X-Trino-*` headers (user, catalog, schema, source, client tags,
  session properties, prepared statements), answered with `id`, `infoUri`, `nextUri` and
  `stats`; results follow on `GET nextUri` in pages of `page_rows` rows with `columns`, `data`,
  `updateType` and `updateCount`; `DELETE nextUri` cancels (204).
- Parameters as the client sends them: `EXECUTE IMMEDIATE '<sql>' USING <literals>`, or, with
  `execute_immediate=False` (a server older than Trino 418, which answers it with a syntax
  error), `PREPARE` (answered with `X-Trino-Added-Prepare`), `EXECUTE <name> USING` (reading the
  statement from `X-Trino-Prepared-Statement`) and `DEALLOCATE PREPARE`.
- Errors in Trino's JSON shape (`errorName`, `errorType`, `errorCode`, `message`,
  `errorLocation`), HTTP 401 for missing or wrong basic-auth credentials when a password is set.

Statements run on an in-memory DuckDB in which each catalog is an attached database, after
trivial rewrites only: `EXPLAIN (TYPE VALIDATE)` becomes DuckDB's `EXPLAIN` and answers `Valid`;
`CREATE TABLE ... WITH (external_location = ..., format = 'PARQUET')` becomes a view over the
Parquet files that `locations` maps the location to; `"catalog".information_schema` becomes
DuckDB's one information_schema; `ALTER TABLE ... RENAME TO` takes the new name's last part.
Error names are guessed from DuckDB's exception classes.

It does not cover: Trino's SQL dialect or semantics beyond what DuckDB shares with it, its type
system (types are DuckDB's, mapped to Trino's names), the spooling protocol, transactions,
queueing and resource groups, real statement time limits (`query_max_run_time` is recorded,
not enforced), OAuth/Kerberos/JWT, or how a real Hive connector reads S3. Every statement is
executed in full when it is posted and its rows are kept in memory.
"""

import base64
import datetime
import decimal
import json
import re
import ssl
import threading
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import duckdb

Locations = Callable[[str], Path]


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: str = ""


class StandInError(Exception):
    """A failure in Trino's terms."""

    def __init__(
        self, name: str, code: int, message: str, kind: str = "USER_ERROR", line: int = 0,
        column: int = 0,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.name = name
        self.code = code
        self.kind = kind
        self.message = message
        self.line = line
        self.column = column

    def to_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "message": self.message,
            "errorCode": self.code,
            "errorName": self.name,
            "errorType": self.kind,
            "failureInfo": {"type": "io.trino.spi.TrinoException", "message": self.message},
        }
        if self.line:
            error["errorLocation"] = {"lineNumber": self.line, "columnNumber": self.column}
        return error


@dataclass
class _Result:
    columns: list[dict[str, Any]]
    rows: list[list[Any]]
    update_type: str | None = None
    update_count: int | None = None
    error: StandInError | None = None
    headers: dict[str, str] = field(default_factory=dict)
    fetches: int = 0


_IMMEDIATE = re.compile(
    r"^EXECUTE\s+IMMEDIATE\s+'((?:[^']|'')*)'(?:\s+USING\s+(.*))?$", re.I | re.S
)
_PREPARE = re.compile(r"^PREPARE\s+(\w+)\s+FROM\s+(.*)$", re.I | re.S)
_EXECUTE = re.compile(r"^EXECUTE\s+(\w+)(?:\s+USING\s+(.*))?$", re.I | re.S)
_DEALLOCATE = re.compile(r"^DEALLOCATE\s+PREPARE\s+(\w+)$", re.I | re.S)
_VALIDATE = re.compile(r"^EXPLAIN\s*\(\s*TYPE\s+VALIDATE\s*\)", re.I)
_EXTERNAL = re.compile(r"^CREATE\s+TABLE\s+(.+?)\s*\((.*)\)\s*WITH\s*\((.*)\)$", re.I | re.S)
_DROP = re.compile(r"^DROP\s+TABLE\s+(IF\s+EXISTS\s+)?(.+)$", re.I | re.S)
_RENAME = re.compile(r"^(ALTER\s+TABLE\s+.+?\s+RENAME\s+TO\s+)(.+)$", re.I | re.S)
_CTAS = re.compile(r"^CREATE\s+TABLE\s+.+?\s+AS\s+", re.I | re.S)
_INFO_SCHEMA = re.compile(r'("(?:[^"]|"")+"|\w+)\.information_schema\.', re.I)
_DUCK_LINE = re.compile(r"LINE (\d+): (.*)\n(\s*)\^")
_DECIMAL = re.compile(r"^DECIMAL\((\d+),\s*(\d+)\)$")


def _split_top_level(text: str, separator: str = ",") -> list[str]:
    """Splits at separators outside quotes and parentheses."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == separator and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    tail = text[start:].strip()
    if tail:
        parts.append(tail)
    return parts


def _duck_literal(literal: str) -> str:
    """A literal the client formatted for Trino, as DuckDB reads it."""
    text = literal.strip()
    special = {
        "infinity()": "CAST('inf' AS DOUBLE)",
        "-infinity()": "CAST('-inf' AS DOUBLE)",
        "nan()": "CAST('nan' AS DOUBLE)",
    }
    if text.lower() in special:
        return special[text.lower()]
    if text[:2].upper() == "X'":
        return f"from_hex({text[1:]})"
    return text


def bind(sql: str, literals: list[str]) -> str:
    """`sql` with each `?` outside quotes replaced by the next literal, as Trino binds them."""
    out, quote, used = [], "", 0
    for ch in sql:
        if quote:
            if ch == quote:
                quote = ""
            out.append(ch)
        elif ch in "'\"":
            quote = ch
            out.append(ch)
        elif ch == "?":
            if used >= len(literals):
                raise StandInError(
                    "INVALID_PARAMETER_USAGE", 93, "Incorrect number of parameters: expected "
                    f"more than {len(literals)} but found {len(literals)}",
                )  # fmt: skip
            out.append(f"({_duck_literal(literals[used])})")
            used += 1
        else:
            out.append(ch)
    if used != len(literals):
        raise StandInError(
            "INVALID_PARAMETER_USAGE", 93,
            f"Incorrect number of parameters: expected {used} but found {len(literals)}",
        )  # fmt: skip
    return "".join(out)


def _name_parts(name: str) -> list[str]:
    return [p.strip().strip('"').replace('""', '"').lower() for p in _split_top_level(name, ".")]


def _trino_column(name: str, duck_type: str) -> dict[str, Any]:
    t = duck_type.upper()
    simple = {
        "BIGINT": "bigint", "INTEGER": "integer", "SMALLINT": "smallint", "TINYINT": "tinyint",
        "DOUBLE": "double", "FLOAT": "real", "BOOLEAN": "boolean", "DATE": "date",
        "BLOB": "varbinary",
    }  # fmt: skip
    if t in simple:
        raw, args, shown = simple[t], [], simple[t]
    elif (found := _DECIMAL.match(t)) is not None:
        p, s = int(found.group(1)), int(found.group(2))
        raw, shown = "decimal", f"decimal({p},{s})"
        args = [{"kind": "LONG", "value": p}, {"kind": "LONG", "value": s}]
    elif t.startswith("TIMESTAMP"):
        raw, shown, args = "timestamp", "timestamp(6)", [{"kind": "LONG", "value": 6}]
    else:
        raw, shown = "varchar", "varchar"
        args = [{"kind": "LONG", "value": 2147483647}]
    return {"name": name, "type": shown, "typeSignature": {"rawType": raw, "arguments": args}}


def _json_value(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, datetime.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, float) and value != value:
        return "NaN"
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    return str(value)


def _duck_error(exc: duckdb.Error, sql: str) -> StandInError:
    text = str(exc)
    first = text.split("\n", 1)[0]
    message = first.split(": ", 1)[1] if ": " in first else first
    line = column = 0
    found = _DUCK_LINE.search(text)
    if found is not None:
        line = int(found.group(1))
        column = len(found.group(3)) - len(f"LINE {line}: ") + 1
    where = f"line {line}:{max(column, 1)}: " if line else ""
    lowered = message.lower()
    if isinstance(exc, duckdb.ParserException):
        return StandInError("SYNTAX_ERROR", 1, where + message, line=line, column=column)
    if isinstance(exc, duckdb.CatalogException):
        if "catalog" in lowered and "does not exist" in lowered:
            return StandInError("CATALOG_NOT_FOUND", 44, where + message)
        if "schema" in lowered and "does not exist" in lowered and "table" not in lowered:
            return StandInError("SCHEMA_NOT_FOUND", 45, where + message)
        if "already exists" in lowered:
            return StandInError("TABLE_ALREADY_EXISTS", 50, where + message)
        return StandInError("TABLE_NOT_FOUND", 46, where + message, line=line, column=column)
    if isinstance(exc, duckdb.BinderException):
        if "column" in lowered:
            return StandInError("COLUMN_NOT_FOUND", 47, where + message, line=line, column=column)
        return StandInError("TYPE_MISMATCH", 58, where + message, line=line, column=column)
    if isinstance(exc, duckdb.ConversionException | duckdb.InvalidInputException):
        return StandInError("INVALID_CAST_ARGUMENT", 9, where + message)
    if isinstance(exc, duckdb.ConstraintException):
        return StandInError("CONSTRAINT_VIOLATION", 16, where + message)
    return StandInError("GENERIC_INTERNAL_ERROR", 65536, message, kind="INTERNAL_ERROR")


class TrinoStandIn:
    """A Trino stand-in on 127.0.0.1 (see the module docstring); `start()` binds a free port."""

    def __init__(
        self,
        catalogs: tuple[str, ...] = ("memory", "hive"),
        *,
        page_rows: int = 3,
        password: str | None = None,
        execute_immediate: bool = True,
        locations: Locations | None = None,
        tls_files: tuple[Path, Path] | None = None,
    ) -> None:
        self.catalogs = catalogs
        self.page_rows = page_rows
        self.password = password
        self.execute_immediate = execute_immediate
        self.locations = locations
        self.tls_files = tls_files
        self.requests: list[RecordedRequest] = []
        self.cancelled: list[str] = []
        self._results: dict[str, _Result] = {}
        self._external: set[tuple[str, ...]] = set()
        self._lock = threading.Lock()
        self._db = duckdb.connect(":memory:")
        for catalog in catalogs:
            if catalog != "memory":  # DuckDB's own in-memory database is called `memory`
                self._db.execute(f"ATTACH ':memory:' AS \"{catalog}\"")
            self._db.execute(f'CREATE SCHEMA "{catalog}"."default"')
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def start(self) -> "TrinoStandIn":
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        server.daemon_threads = True
        if self.tls_files is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(self.tls_files[0]), str(self.tls_files[1]))
            server.socket = context.wrap_socket(server.socket, server_side=True)
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

    # -- what tests read --

    @property
    def statements(self) -> list[str]:
        """Every SQL text posted, in order."""
        return [r.body for r in self.requests if r.method == "POST"]

    def posts(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST"]

    def fetches(self, sql: str) -> int:
        """How many result pages the client fetched for the last statement posted as `sql`."""
        with self._lock:
            for query_id in reversed(list(self._results)):
                result = self._results[query_id]
                if result.headers.get("__sql") == sql:
                    return result.fetches
        return 0

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Runs DuckDB SQL directly, for test setup and checks."""
        with self._lock:
            return self._db.execute(sql).fetchall()

    # -- execution --

    def submit(self, sql: str, headers: dict[str, str]) -> tuple[str, _Result]:
        query_id = (
            datetime.datetime.now(datetime.UTC).strftime("%Y%m%d_%H%M%S_") + uuid.uuid4().hex[:5]
        )
        with self._lock:
            try:
                result = self._execute(sql.strip().rstrip(";").strip(), headers)
            except StandInError as exc:
                result = _Result([], [], error=exc)
            except duckdb.Error as exc:
                result = _Result([], [], error=_duck_error(exc, sql))
            result.headers["__sql"] = sql
            self._results[query_id] = result
        return query_id, result

    def _execute(self, sql: str, headers: dict[str, str]) -> _Result:
        found = _IMMEDIATE.match(sql)
        if found is not None:
            if not self.execute_immediate:
                raise StandInError(
                    "SYNTAX_ERROR", 1, "line 1:9: mismatched input 'IMMEDIATE'", line=1, column=9
                )
            inner = found.group(1).replace("''", "'")
            literals = _split_top_level(found.group(2) or "")
            return self._statement(bind(inner, literals), headers)
        found = _PREPARE.match(sql)
        if found is not None:
            name, statement = found.group(1), found.group(2)
            added = f"{name}={urllib.parse.quote_plus(statement)}"
            return _Result([], [], update_type="PREPARE", headers={"X-Trino-Added-Prepare": added})
        found = _DEALLOCATE.match(sql)
        if found is not None:
            return _Result(
                [], [], update_type="DEALLOCATE",
                headers={"X-Trino-Deallocated-Prepare": found.group(1)},
            )  # fmt: skip
        found = _EXECUTE.match(sql)
        if found is not None:
            prepared = _prepared(headers.get("x-trino-prepared-statement", ""))
            statement = prepared.get(found.group(1))
            if statement is None:
                raise StandInError(
                    "NOT_FOUND", 5, f"Prepared statement not found: {found.group(1)}"
                )
            return self._statement(bind(statement, _split_top_level(found.group(2) or "")), headers)
        return self._statement(sql, headers)

    def _use(self, headers: dict[str, str]) -> None:
        catalog = headers.get("x-trino-catalog") or self.catalogs[0]
        schema = headers.get("x-trino-schema") or "default"
        try:
            self._db.execute(f'USE "{catalog}"."{schema}"')
        except duckdb.Error:
            self._db.execute(f'USE "{self.catalogs[0]}"."default"')

    def _statement(self, sql: str, headers: dict[str, str]) -> _Result:
        self._use(headers)
        for reference in _INFO_SCHEMA.finditer(sql):
            catalog = reference.group(1).strip('"').lower()
            if catalog not in self.catalogs:
                raise StandInError("CATALOG_NOT_FOUND", 44, f"Catalog '{catalog}' not found")
        sql = _INFO_SCHEMA.sub("information_schema.", sql)

        validate = _VALIDATE.match(sql)
        if validate is not None:
            self._db.execute("EXPLAIN" + sql[validate.end() :])
            return _Result([_trino_column("Valid", "BOOLEAN")], [[True]])
        found = _EXTERNAL.match(sql)
        if found is not None and "external_location" in found.group(3).lower():
            return self._external_table(found.group(1), found.group(2), found.group(3))
        found = _DROP.match(sql)
        if found is not None and tuple(_name_parts(found.group(2))) in self._external:
            self._external.discard(tuple(_name_parts(found.group(2))))
            self._db.execute(f"DROP VIEW {found.group(1) or ''}{found.group(2)}")
            return _Result([_trino_column("result", "BOOLEAN")], [[True]], "DROP TABLE")
        found = _RENAME.match(sql)
        if found is not None:
            new_name = _split_top_level(found.group(2), ".")[-1]
            self._db.execute(found.group(1) + new_name)
            return _Result([_trino_column("result", "BOOLEAN")], [[True]], "RENAME TABLE")

        cursor = self._db.execute(sql)
        description = cursor.description or []
        rows = [[_json_value(v) for v in row] for row in cursor.fetchall()] if description else []
        word = sql.split(None, 1)[0].upper() if sql.split() else ""
        if _CTAS.match(sql) or word in ("INSERT", "DELETE", "UPDATE"):
            count = int(rows[0][0]) if rows else 0
            kind = "CREATE TABLE" if word == "CREATE" else word
            return _Result([_trino_column("rows", "BIGINT")], [[count]], kind, count)
        if word in ("CREATE", "DROP", "ALTER", "USE", "SET"):
            return _Result([_trino_column("result", "BOOLEAN")], [[True]], word)
        columns = [_trino_column(d[0], str(d[1])) for d in description]
        return _Result(columns, rows)

    def _external_table(self, name: str, columns_text: str, properties: str) -> _Result:
        props = {}
        for item in _split_top_level(properties):
            key, _, value = item.partition("=")
            props[key.strip().lower()] = value.strip()
        location = props["external_location"].strip("'").replace("''", "'")
        if props.get("format", "").strip("'").upper() != "PARQUET":
            raise StandInError("INVALID_TABLE_PROPERTY", 18, "the stand-in reads PARQUET only")
        if self.locations is None:
            raise StandInError("HIVE_FILESYSTEM_ERROR", 16777232, "no object store", "EXTERNAL")
        folder = self.locations(location)
        casts = []
        for column in _split_top_level(columns_text):
            quoted, column_type = column.rsplit('"', 1)
            quoted += '"'
            casts.append(f"CAST({quoted} AS {column_type.strip()}) AS {quoted}")
        pattern = str(folder / "*.parquet").replace("'", "''")
        self._db.execute(
            f"CREATE VIEW {name} AS SELECT {', '.join(casts)} FROM read_parquet('{pattern}')"
        )
        self._external.add(tuple(_name_parts(name)))
        return _Result([_trino_column("result", "BOOLEAN")], [[True]], "CREATE TABLE")

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def result(self, query_id: str) -> _Result | None:
        with self._lock:
            return self._results.get(query_id)


def _prepared(header: str) -> dict[str, str]:
    found = {}
    for item in header.split(","):
        if "=" in item:
            name, _, text = item.partition("=")
            found[name.strip()] = urllib.parse.unquote_plus(text)
    return found


def _handler(standin: TrinoStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass  # quiet: tests read `standin.requests` instead

        def _send(self, status: int, body: dict[str, Any] | None, extra: dict[str, str]) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            if body is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in extra.items():
                if not key.startswith("__"):
                    self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _base(self) -> str:
            scheme = "https" if standin.tls_files else "http"
            return f"{scheme}://127.0.0.1:{standin.port}"

        def _authorized(self) -> bool:
            if standin.password is None:
                return True
            user = self.headers.get("X-Trino-User", "")
            expected = base64.b64encode(f"{user}:{standin.password}".encode()).decode()
            return self.headers.get("Authorization", "") == f"Basic {expected}"

        def _record(self, body: str = "") -> dict[str, str]:
            headers = {k.lower(): v for k, v in self.headers.items()}
            standin.record(RecordedRequest(self.command, self.path, headers, body))
            return headers

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            sql = self.rfile.read(length).decode("utf-8")
            headers = self._record(sql)
            if not self._authorized():
                self._send(401, None, {"WWW-Authenticate": 'Basic realm="Trino"'})
                return
            if self.path != "/v1/statement" or not headers.get("x-trino-user"):
                self._send(400, None, {})
                return
            query_id, result = standin.submit(sql, headers)
            body = {
                "id": query_id,
                "infoUri": f"{self._base()}/ui/query.html?{query_id}",
                "nextUri": f"{self._base()}/v1/statement/queued/{query_id}/x/1",
                "stats": _stats("QUEUED"),
                "warnings": [],
            }
            self._send(200, body, {k: v for k, v in result.headers.items()})

        def do_GET(self) -> None:
            self._record()
            if not self._authorized():
                self._send(401, None, {"WWW-Authenticate": 'Basic realm="Trino"'})
                return
            parts = self.path.strip("/").split("/")
            result = standin.result(parts[3]) if len(parts) == 6 else None
            if result is None:
                self._send(404, None, {})
                return
            query_id, page = parts[3], int(parts[5])
            result.fetches += 1
            body: dict[str, Any] = {"id": query_id, "infoUri": f"{self._base()}/ui/{query_id}"}
            if result.error is not None:
                body |= {"stats": _stats("FAILED"), "error": result.error.to_json()}
                self._send(200, body, {})
                return
            size = max(standin.page_rows, 1)
            rows = result.rows[(page - 1) * size : page * size]
            body["columns"] = result.columns
            if rows:
                body["data"] = rows
            if page * size < len(result.rows):
                body["nextUri"] = f"{self._base()}/v1/statement/executing/{query_id}/x/{page + 1}"
                body["stats"] = _stats("RUNNING")
            else:
                body["stats"] = _stats("FINISHED")
            if result.update_type is not None:
                body["updateType"] = result.update_type
            if result.update_count is not None:
                body["updateCount"] = result.update_count
            self._send(200, body, {})

        def do_DELETE(self) -> None:
            self._record()
            parts = self.path.strip("/").split("/")
            if len(parts) == 6:
                standin.cancelled.append(parts[3])
            self._send(204, None, {})

    return Handler


def _stats(state: str) -> dict[str, Any]:
    return {
        "state": state, "queued": state == "QUEUED", "scheduled": state != "QUEUED", "nodes": 1,
        "totalSplits": 0, "queuedSplits": 0, "runningSplits": 0, "completedSplits": 0,
        "cpuTimeMillis": 0, "wallTimeMillis": 0, "processedRows": 0, "processedBytes": 0,
    }  # fmt: skip
