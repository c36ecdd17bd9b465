"""A stand-in for a CQL server's side of a cassandra-driver Session, for tests.

No CQL server can run on this platform, so tests of the Cassandra driver and loader use this
object where a `cassandra.cluster.Session` connected to a server would be. It understands the
few statement shapes Crucible sends (keyspace and table DDL, prepared INSERTs and key lookups),
prepares real `cassandra.query.PreparedStatement`s typed from the tables it holds, and decodes
every bound value with cassandra-driver's own deserialisers, so what it stores is what a server
would have received. Results come back through `add_callbacks` from another thread, after an
optional delay, as the driver's I/O thread delivers them; `failures` injects the driver's real
exception types.
"""

import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cassandra import AlreadyExists, InvalidRequest, cqltypes
from cassandra.protocol import ColumnMetadata
from cassandra.query import UNSET_VALUE, BoundStatement, PreparedStatement

PROTOCOL_VERSION = 4
_QUOTED = re.compile(r'"((?:[^"]|"")*)"')
_TABLE_NAME = re.compile(r'^"((?:[^"]|"")*)"\."((?:[^"]|"")*)"|^(\w+)\.(\w+)')


def cql_class(type_text: str) -> type[cqltypes._CassandraType]:
    """The driver's type class for a CQL type such as `int` or `map<text, bigint>`."""
    text = type_text.strip()
    if "<" not in text:
        return cqltypes._cqltypes[text]
    base, inner = text.split("<", 1)
    parameters = [cql_class(part) for part in split_top_level(inner[:-1])]
    return cqltypes._cqltypes[base.strip()].apply_parameters(parameters)


def split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char in "(<":
            depth += 1
        elif char in ")>":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index].strip())
            start = index + 1
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def _unquote(name: str) -> str:
    return name.replace('""', '"')


def _table_of(text: str) -> tuple[str, str]:
    match = _TABLE_NAME.match(text.strip())
    assert match is not None, f"no table name in {text!r}"
    if match.group(1) is not None:
        return _unquote(match.group(1)), _unquote(match.group(2))
    return match.group(3), match.group(4)


@dataclass
class Table:
    columns: dict[str, str]  # name -> CQL type
    key: tuple[str, ...]
    rows: dict[tuple[object, ...], dict[str, object]] = field(default_factory=dict)


class StandInFuture:
    """What `execute_async` returns: like the driver's ResponseFuture, it delivers each page
    to the callbacks from another thread, or at once to callbacks added after the delivery."""

    def __init__(
        self,
        pages: Sequence[object] | None,
        error: BaseException | None,
        delay_s: float,
        on_done: Callable[[], None] = lambda: None,
    ) -> None:
        self._pages = list(pages) if pages is not None else [None]
        self._error = error
        self._delay_s = delay_s
        self._index = 0
        self._on_done = on_done
        self._callbacks: list[tuple[Callable[[object], None], Callable[[BaseException], None]]]
        self._callbacks = []
        self._delivered = False
        self._lock = threading.Lock()
        self.threads: list[str] = []
        self._deliver_later()

    @property
    def has_more_pages(self) -> bool:
        return self._error is None and self._index < len(self._pages) - 1

    def add_callbacks(
        self, callback: Callable[[object], None], errback: Callable[[BaseException], None]
    ) -> None:
        with self._lock:
            self._callbacks.append((callback, errback))
            delivered = self._delivered
        if delivered:
            self._call(callback, errback)

    def start_fetching_next_page(self) -> None:
        with self._lock:
            self._delivered = False
            self._index += 1
        self._deliver_later()

    def _deliver_later(self) -> None:
        timer = threading.Timer(self._delay_s, self._deliver)
        timer.daemon = True
        timer.start()

    def _deliver(self) -> None:
        self.threads.append(threading.current_thread().name)
        if not self.has_more_pages:
            self._on_done()
        with self._lock:
            self._delivered = True
            callbacks = list(self._callbacks)
        for callback, errback in callbacks:
            self._call(callback, errback)

    def _call(
        self, callback: Callable[[object], None], errback: Callable[[BaseException], None]
    ) -> None:
        if self._error is not None:
            errback(self._error)
        else:
            callback(self._pages[self._index])


# failures(cql, values, attempt) -> the exception to fail this execution with, or None.
Failures = Callable[[str, dict[str, object], int], BaseException | None]


class StandInSession:
    """Stands in for a connected cassandra-driver Session (see the module docstring)."""

    is_shutdown = False

    def __init__(self, *, delay_s: float = 0.0, failures: Failures | None = None) -> None:
        self.delay_s = delay_s
        self.failures = failures
        self.keyspaces: dict[str, str] = {}
        self.tables: dict[tuple[str, str], Table] = {}
        self.executed: list[str] = []
        self.prepared: list[str] = []
        self.attempts: dict[tuple[str, tuple[object, ...]], int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self.cluster = type("StandInCluster", (), {"protocol_version": PROTOCOL_VERSION})()

    # -- the Session API the code under test uses ------------------------------------------

    def prepare(self, cql: str) -> PreparedStatement:
        self.prepared.append(cql)
        columns = self._bind_columns(cql)
        metadata = [ColumnMetadata(ks, table, name, cql_class(t)) for ks, table, name, t in columns]
        return PreparedStatement(metadata, b"id", None, cql, None, PROTOCOL_VERSION, [], None)

    def execute_async(self, statement: object, parameters: object = None) -> StandInFuture:
        assert parameters is None, "Crucible binds prepared statements; it sends no %s values"
        if isinstance(statement, BoundStatement):
            cql = statement.prepared_statement.query_string
            values = self._decode(statement)
        else:
            cql, values = str(statement), {}
        with self._lock:
            self.executed.append(cql)
            key = (cql, tuple(sorted((k, repr(v)) for k, v in values.items())))
            attempt = self.attempts[key] = self.attempts.get(key, 0) + 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        error = self.failures(cql, values, attempt) if self.failures else None
        pages: list[object] | None = None
        if error is None:
            try:
                pages = [self._run(cql, values)]  # one page
            except Exception as exc:  # what the server would answer
                error = exc
        return StandInFuture(pages, error, self.delay_s, self._done)

    # -- the stand-in server ---------------------------------------------------------------

    def _done(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _bind_columns(self, cql: str) -> list[tuple[str, str, str, str]]:
        text = cql.strip()
        if text.startswith("INSERT INTO "):
            keyspace, name = _table_of(text[len("INSERT INTO ") :])
            table = self._table(keyspace, name)
            names = _QUOTED.findall(text[text.index("(") : text.index(")")])
            return [(keyspace, name, _unquote(n), table.columns[_unquote(n)]) for n in names]
        if text.startswith("SELECT "):
            source = text.split(" FROM ", 1)[1]
            keyspace, name = _table_of(source)
            where = source.split(" WHERE ", 1)[1]
            names = [_unquote(n) for n in re.findall(r'"((?:[^"]|"")*)" = \?', where)]
            if keyspace == "system_schema":
                return [(keyspace, name, n, "text") for n in names]
            table = self._table(keyspace, name)
            return [(keyspace, name, n, table.columns[n]) for n in names]
        return []

    def _table(self, keyspace: str, name: str) -> Table:
        table = self.tables.get((keyspace, name))
        if table is None:
            raise InvalidRequest(
                f'Error from server: code=2200 [Invalid query] message="unconfigured table {name}"'
            )
        return table

    def _decode(self, bound: BoundStatement) -> dict[str, object]:
        values: dict[str, object] = {}
        for column, raw in zip(bound.prepared_statement.column_metadata, bound.values, strict=True):
            if raw is UNSET_VALUE:
                continue
            values[column.name] = column.type.from_binary(raw, PROTOCOL_VERSION)
        return values

    def _run(self, cql: str, values: dict[str, object]) -> list[object] | None:
        text = cql.strip()
        if text.startswith("CREATE KEYSPACE IF NOT EXISTS "):
            name = _unquote(_QUOTED.match(text[len("CREATE KEYSPACE IF NOT EXISTS ") :]).group(1))  # type: ignore[union-attr]
            self.keyspaces.setdefault(name, text)
            return None
        if text.startswith("CREATE TABLE "):
            rest = text[len("CREATE TABLE ") :]
            if_not_exists = rest.startswith("IF NOT EXISTS ")
            rest = rest.removeprefix("IF NOT EXISTS ")
            keyspace, name = _table_of(rest)
            if keyspace not in self.keyspaces:
                raise InvalidRequest(f"Keyspace {keyspace} doesn't exist")
            if (keyspace, name) in self.tables:
                if if_not_exists:
                    return None
                raise AlreadyExists(keyspace=keyspace, table=name)
            self.tables[(keyspace, name)] = _parse_table(rest[rest.index("(") + 1 : -1])
            return None
        if text.startswith("DROP TABLE IF EXISTS "):
            self.tables.pop(_table_of(text[len("DROP TABLE IF EXISTS ") :]), None)
            return None
        if text.startswith("INSERT INTO "):
            keyspace, name = _table_of(text[len("INSERT INTO ") :])
            table = self._table(keyspace, name)
            with self._lock:
                key = tuple(values[k] for k in table.key)
                table.rows.setdefault(key, {}).update(values)
            return None
        if text.startswith("SELECT "):
            selected = [_unquote(n) for n in _QUOTED.findall(text.split(" FROM ", 1)[0])]
            source = text.split(" FROM ", 1)[1]
            keyspace, name = _table_of(source)
            if keyspace == "system_schema":
                found = (values["keyspace_name"], values["table_name"]) in self.tables
                return [(values["table_name"],)] if found else []
            table = self._table(keyspace, name)
            rows = [r for r in table.rows.values() if all(r.get(k) == v for k, v in values.items())]
            return [tuple(r.get(c) for c in selected) for r in rows]
        raise AssertionError(f"the stand-in does not understand {cql!r}")

    # -- for assertions ----------------------------------------------------------------------

    def rows(self, keyspace: str, table: str) -> list[dict[str, object]]:
        return list(self.tables[(keyspace, table)].rows.values())


def _parse_table(body: str) -> Table:
    columns: dict[str, str] = {}
    key: tuple[str, ...] = ()
    for part in split_top_level(body):
        if part.startswith("PRIMARY KEY"):
            key = tuple(_unquote(n) for n in _QUOTED.findall(part))
            continue
        match = re.match(r'^"((?:[^"]|"")*)"\s+(.+?)(\s+PRIMARY KEY)?$', part)
        assert match is not None, f"cannot read column {part!r}"
        name = _unquote(match.group(1))
        columns[name] = match.group(2)
        if match.group(3):
            key = (name,)
    return Table(columns, key)
