"""The one workload parser: an annotated SQL/CQL file becomes named queries.

A workload starts with a `-- @type: sql` (or `cql`) header; each query starts with a
`-- @name: <name>` line and runs until the next `-- @name:` line. Inside a query, `-- @weight: 3`
sets how often random choice picks it (default 1) and `-- @param: <name> {type: ...}` declares a
typed parameter (see `crucible_dagster.params`) that the SQL uses as `:name`; parameterised
queries run as prepared statements with the values as arguments, never spliced into the text.
A `:name` the block does not declare is an error, and so is a declaration the SQL never uses.
A colon is a placeholder only in code, not after `:` or an identifier character, and only
before a name, so `::int` casts, `:=`, `arr[lo:hi]` and ClickHouse's `{id:UInt32}` are SQL.
Markers count only at the start of a line that is outside string literals, quoted identifiers,
dollar-quoted strings and block comments, so SQL text that merely looks like a marker stays in
its query. Every engine reads the queries parsed here; nothing else parses workload files.
"""

import difflib
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from crucible_dagster.errors import Location, Problem, ValidationError, decode_utf8
from crucible_dagster.params import ParamError, ParamSpec, parse_param

WORKLOAD_TYPES = ("sql", "cql")
# Dialect names seen in the original plans; they all mean SQL sent verbatim to the SUT.
SQL_DIALECTS = (
    "mysql",
    "postgresql",
    "postgres",
    "doris",
    "trino",
    "clickhouse",
    "starrocks",
    "mariadb",
)
# In these dialects a backslash escapes the next character inside '...' and "..." strings.
_BACKSLASH_DIALECTS = frozenset({"mysql", "mariadb", "doris", "starrocks", "clickhouse"})
# MySQL-family identifiers may contain `$`, so `$x$` there is not a dollar quote.
_NO_DOLLAR_QUOTE_DIALECTS = _BACKSLASH_DIALECTS

QUERY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The name results and thresholds give all queries together.
RESERVED_QUERY_NAME = "total"
_MARKERS = ("type", "name", "weight", "param")
# Markers that belong to the query block they appear in.
_BLOCK_MARKERS = ("weight", "param")
_WEIGHT = re.compile(r"^\d+(\.\d+)?$")
_PLACEHOLDER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MARKER_LINE = re.compile(r"^--\s*@([A-Za-z_][A-Za-z0-9_-]*)(.*)$")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")


@dataclass(frozen=True)
class QueryParam:
    """A parameter declared by `-- @param:` in a query block, at 1-based `line`."""

    name: str
    spec: ParamSpec
    line: int


@dataclass(frozen=True)
class Placeholder:
    """A `:name` in a query's SQL; `offset` is the position of its colon in `Query.sql`."""

    name: str
    offset: int

    @property
    def end(self) -> int:
        return self.offset + 1 + len(self.name)


@dataclass(frozen=True)
class Query:
    """One named block of a workload; `line` is the 1-based line of its `-- @name:` marker.

    `weight` is the block's `-- @weight:` (None when it has none: random choice then counts it
    as 1). `placeholders` are empty when the query declares no parameters: its SQL is sent as
    written.
    """

    name: str
    sql: str
    workload_id: str
    source: str
    line: int
    weight: float | None = None
    params: tuple[QueryParam, ...] = ()
    placeholders: tuple[Placeholder, ...] = ()

    def render(self, mark: Callable[[int], str], *, numbered: bool) -> tuple[str, tuple[str, ...]]:
        """The SQL with every `:name` replaced by a driver's placeholder, and the parameter
        names in argument order.

        `numbered` drivers (PostgreSQL's `$1`) give each distinct name one number, by first
        appearance; positional ones (`?`, `%s`) take one argument per occurrence.
        """
        parts: list[str] = []
        order: list[str] = []
        position = 0
        for placeholder in self.placeholders:
            if numbered:
                if placeholder.name not in order:
                    order.append(placeholder.name)
                number = order.index(placeholder.name) + 1
            else:
                order.append(placeholder.name)
                number = len(order)
            parts += [self.sql[position : placeholder.offset], mark(number)]
            position = placeholder.end
        parts.append(self.sql[position:])
        return "".join(parts), tuple(order)


@dataclass(frozen=True)
class Workload:
    """A parsed workload file; `sha256` is the hash of its exact text, utf-8 encoded."""

    workload_id: str
    type: str
    source: str
    sha256: str
    queries: tuple[Query, ...]


_Add = Callable[..., None]


class _Problems:
    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[Problem] = []

    def add(self, message: str, line: int | None = None, column: int | None = None) -> None:
        self.items.append(Problem(Location(self.source, line, column), message))


@dataclass(frozen=True)
class _Marker:
    keyword: str
    value: str
    line: int  # 1-based
    column: int  # 1-based column of `--`
    value_column: int
    has_colon: bool


@dataclass
class _Lines:
    """What the lexer learnt about each line (0-based index)."""

    starts_in_code: list[bool]
    has_code: list[bool]
    unterminated: tuple[str, int, int] | None  # (what, line, column), 1-based


def parse_workload(text: str, *, source: str, workload_id: str) -> Workload:
    """Parses a workload; raises ValidationError listing every problem with its position."""
    sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    problems = _Problems(source)
    problem = problems.add

    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        problem("the workload file is empty: it needs a '-- @type: sql' header and queries")
        raise ValidationError(problems.items)

    header = _marker_at(lines, first)
    dialect = header.value.strip().lower() if header and header.keyword == "type" else ""
    scan = _scan(lines, dialect)
    found = (_marker_at(lines, i) for i in range(len(lines)) if scan.starts_in_code[i])
    markers = [marker for marker in found if marker is not None]

    workload_type = _check_header(header, first, lines, problem)
    _check_markers(markers, header, problem)

    blocks = [m for m in markers if m.keyword == "name"]
    header_line = header.line if header and header.keyword == "type" else first + 1
    _check_stray_sql(lines, scan, header_line, blocks, problem)
    reader = _BlockReader(lines, scan, markers, dialect, problem)
    queries = [
        query
        for index, block in enumerate(blocks)
        if (query := reader.read(block, blocks[index + 1 :], source, workload_id)) is not None
    ]

    if not blocks:
        problem("the workload has no queries: start each query with a '-- @name: <name>' line")
    if scan.unterminated is not None:
        what, line, column = scan.unterminated
        problem(
            f"unterminated {what}: it runs to the end of the file, hiding every marker after it",
            line,
            column,
        )
    if problems.items:
        raise ValidationError(sorted(problems.items, key=_position))
    assert workload_type is not None
    return Workload(workload_id, workload_type, source, sha256, tuple(queries))


def _check_stray_sql(
    lines: list[str], scan: _Lines, header_line: int, blocks: list[_Marker], problem: _Add
) -> None:
    """SQL between the header and the first block would be silently ignored: an error."""
    stray_end = blocks[0].line - 1 if blocks else len(lines)
    for index in range(header_line, stray_end):
        if scan.has_code[index]:
            problem(
                "SQL before the first '-- @name:' line belongs to no query; "
                "put a '-- @name: <name>' line above it",
                index + 1,
                _indent(lines[index]) + 1,
            )
            return


class _BlockReader:
    """Reads one query per `-- @name:` block: its weight, parameters, SQL and placeholders."""

    def __init__(
        self, lines: list[str], scan: _Lines, markers: list[_Marker], dialect: str, problem: _Add
    ) -> None:
        self.lines = lines
        self.scan = scan
        self.markers = markers
        self.dialect = dialect
        self.problem = problem
        self.seen: dict[str, int] = {}
        self.invalid_params: set[str] = set()

    def read(
        self, marker: _Marker, following: list[_Marker], source: str, workload_id: str
    ) -> Query | None:
        problem = self.problem
        name = marker.value
        end = following[0].line - 1 if following else len(self.lines)
        self.invalid_params = set()
        if not name:
            return None  # reported by _check_markers
        if not QUERY_NAME.match(name):
            problem(
                f"invalid query name {name!r}: expected letters, digits and underscores, "
                "not starting with a digit (it names the query's metrics)",
                marker.line,
                marker.value_column,
            )
        elif name == RESERVED_QUERY_NAME:
            problem(
                f"query name {name!r} is taken: results and thresholds use it for all queries "
                "together; give the query another name",
                marker.line,
                marker.value_column,
            )
        elif name in self.seen:
            problem(
                f"duplicate query name {name!r} (first defined at line {self.seen[name]})",
                marker.line,
                marker.value_column,
            )
        else:
            self.seen[name] = marker.line
        own = [
            m
            for m in self.markers
            if marker.line < m.line <= end and m.keyword in _BLOCK_MARKERS and m.has_colon
        ]
        own_lines = {m.line for m in own}
        own = [m for m in own if m.value]  # an empty one is reported by _check_markers
        if not any(
            self.scan.has_code[i] for i in range(marker.line, end) if i + 1 not in own_lines
        ):
            problem(
                f"query {name!r} has no SQL after its '-- @name:' line", marker.line, marker.column
            )
        weight = self._weight(name, [m for m in own if m.keyword == "weight"])
        params = self._params(name, [m for m in own if m.keyword == "param"])
        # Block markers are comments to the SUT; they leave the text, keeping line numbers.
        body = ["" if i + 1 in own_lines else self.lines[i] for i in range(marker.line, end)]
        sql, placeholders = self._sql(name, body, marker.line + 1, params)
        return Query(name, sql, workload_id, source, marker.line, weight, params, placeholders)

    def _weight(self, name: str, markers: list[_Marker]) -> float | None:
        weight: float | None = None
        for index, marker in enumerate(markers):
            where = (marker.line, marker.value_column)
            if index:
                self.problem(
                    f"a second '@weight' for query {name!r}: the first is at line "
                    f"{markers[0].line}",
                    *where,
                )
            elif not _WEIGHT.match(marker.value):
                self.problem(
                    f"invalid weight {marker.value!r} for query {name!r}: expected a number of "
                    "0 or more, such as 3 or 0.5",
                    *where,
                )
            else:
                weight = float(marker.value)
        return weight

    def _params(self, name: str, markers: list[_Marker]) -> tuple[QueryParam, ...]:
        params: dict[str, QueryParam] = {}
        for marker in markers:
            try:
                param_name, spec = parse_param(marker.value)
            except ParamError as error:
                column = marker.value_column + (error.offset or 0)
                self.problem(f"query {name!r}: {error.message}", marker.line, column)
                # Declared, if badly: its uses are not reported as undeclared as well.
                self.invalid_params.add(marker.value.split("{", 1)[0].strip())
                continue
            if param_name in params:
                self.problem(
                    f"query {name!r} declares parameter {param_name!r} twice (first at line "
                    f"{params[param_name].line})",
                    marker.line,
                    marker.value_column,
                )
                continue
            params[param_name] = QueryParam(param_name, spec, marker.line)
        return tuple(params.values())

    def _sql(
        self, name: str, body: list[str], first_line: int, params: tuple[QueryParam, ...]
    ) -> tuple[str, tuple[Placeholder, ...]]:
        """The block's text, stripped, and its placeholders; each must be declared."""
        kept = [i for i, line in enumerate(body) if line.strip()]
        if not kept:
            return "", ()
        top, bottom = kept[0], kept[-1]
        text_lines = body[top : bottom + 1]
        lead = len(text_lines[0]) - len(text_lines[0].lstrip())
        text_lines[0] = text_lines[0].lstrip()
        text_lines[-1] = text_lines[-1].rstrip()
        sql = "\n".join(text_lines)
        found: list[tuple[int, int, str]] = []
        _scan(body, self.dialect, placeholders=found)
        starts = [0]
        for line in text_lines:
            starts.append(starts[-1] + len(line) + 1)
        declared = {p.name for p in params}
        placeholders: list[Placeholder] = []
        for line_index, column, used_name in found:
            if used_name in self.invalid_params:
                continue
            if used_name not in declared:
                self.problem(
                    _undeclared(name, used_name, declared), first_line + line_index, column + 1
                )
                continue
            offset = starts[line_index - top] + column - (lead if line_index == top else 0)
            placeholders.append(Placeholder(used_name, offset))
        used = {p.name for p in placeholders}
        for param in params:
            if param.name not in used:
                self.problem(
                    f"query {name!r} declares parameter {param.name!r} but its SQL never uses "
                    f"':{param.name}'",
                    param.line,
                )
        return sql, tuple(placeholders)


def _undeclared(query: str, used: str, declared: set[str]) -> str:
    close = difflib.get_close_matches(used, sorted(declared), n=1)
    if close:
        fix = f"did you mean ':{close[0]}'?"
    else:
        fix = f"declare it with '-- @param: {used} {{type: ...}}' in the query's block"
    return (
        f"query {query!r} uses ':{used}', which no '-- @param:' line declares; {fix} "
        f"(where the colon is not a parameter, put a space after it: ': {used}')"
    )


def workload_from_bytes(data: bytes, *, source: str, workload_id: str) -> Workload:
    """Decodes utf-8 bytes (an undecodable byte is a problem with its position) and parses."""
    text = decode_utf8(data, source=source, what="workload")
    return parse_workload(text, source=source, workload_id=workload_id)


def load_workload_file(path: Path, workload_id: str) -> Workload:
    """Reads and parses a workload file; a missing or unreadable file is a ValidationError."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValidationError([Problem(Location(str(path)), "workload file not found")]) from None
    except OSError as error:
        message = f"cannot read the workload file: {error.strerror or error}"
        raise ValidationError([Problem(Location(str(path)), message)]) from None
    return workload_from_bytes(data, source=str(path), workload_id=workload_id)


def _check_header(
    header: _Marker | None, first: int, lines: list[str], problem: _Add
) -> str | None:
    if header is None or header.keyword != "type":
        problem(
            "the first non-blank line must declare the workload type, e.g. '-- @type: sql'",
            first + 1,
            _indent(lines[first]) + 1,
        )
        return None
    value = header.value.strip()
    if not header.has_colon or not value:
        return None  # reported by _check_markers
    lowered = value.lower()
    if lowered in WORKLOAD_TYPES:
        return lowered
    if lowered in SQL_DIALECTS:
        return "sql"
    problem(
        f"unknown workload type {value!r}: expected sql or cql "
        f"(the SQL dialect names {', '.join(SQL_DIALECTS)} also mean sql)",
        header.line,
        header.value_column,
    )
    return None


def _check_markers(markers: list[_Marker], header: _Marker | None, problem: _Add) -> None:
    known = _MARKERS
    first_block = next((m.line for m in markers if m.keyword == "name"), None)
    for marker in markers:
        where = (marker.line, marker.column)
        if marker.keyword not in known:
            if not marker.has_colon:
                continue  # an ordinary comment that happens to start with @
            close = difflib.get_close_matches(marker.keyword.lower(), known, n=1, cutoff=0.5)
            hint = f"; did you mean '-- @{close[0]}:'?" if close else ""
            problem(
                f"unknown marker '@{marker.keyword}': expected @type, @name, @weight or "
                f"@param{hint}",
                *where,
            )
        elif not marker.has_colon:
            problem(
                f"the '@{marker.keyword}' marker needs a colon: '-- @{marker.keyword}: ...'", *where
            )
        elif not marker.value.strip():
            what = {
                "type": "a workload type (sql or cql)",
                "name": "a query name",
                "weight": "a number, such as 3",
                "param": "a parameter, such as 'id {type: int, range: [1, 1000]}'",
            }[marker.keyword]
            problem(
                f"the '@{marker.keyword}:' marker has nothing after it: expected {what}", *where
            )
        elif marker.keyword in _BLOCK_MARKERS and (
            first_block is None or marker.line < first_block
        ):
            problem(
                f"the '@{marker.keyword}' marker belongs to no query: put it below the "
                "'-- @name:' line of the query it is for",
                *where,
            )
        elif marker.keyword == "type" and marker != header:
            if header is not None and header.keyword == "type":
                message = (
                    f"a second '-- @type:' line: the type is declared once, at line {header.line}"
                )
            else:
                message = "'-- @type:' must be the first non-blank line of the workload"
            problem(message, *where)


def _marker_at(lines: list[str], index: int) -> _Marker | None:
    line = lines[index]
    indent = _indent(line)
    match = _MARKER_LINE.match(line.strip())
    if match is None:
        return None
    keyword, rest = match.group(1), match.group(2)
    stripped_rest = rest.lstrip()
    has_colon = stripped_rest.startswith(":")
    value = stripped_rest[1:] if has_colon else stripped_rest
    value_offset = len(line.rstrip()) - len(value.strip())
    return _Marker(
        keyword=keyword,
        value=value.strip(),
        line=index + 1,
        column=indent + 1,
        value_column=value_offset + 1,
        has_colon=has_colon,
    )


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _position(problem: Problem) -> tuple[int, int]:
    return (problem.location.line or 0, problem.location.column or 0)


def _scan(
    lines: list[str], dialect: str, placeholders: list[tuple[int, int, str]] | None = None
) -> _Lines:
    """A small SQL lexer: which lines start outside literals and comments, which hold code.

    It knows '...' strings (with '' and, for E'...' or MySQL-family dialects, backslash
    escapes), "..." and `...` quoted identifiers, $tag$...$tag$ strings, -- line comments and
    nested /* ... */ block comments. That is all a marker test needs. With `placeholders`, it
    also collects every `:name` in code as (0-based line, 0-based column of the colon, name);
    a colon right after another colon (`::type` casts) or an identifier character (`a[lo:hi]`,
    ClickHouse's `{id:UInt32}`) starts none. It does not know MySQL's `#` line comments, so a
    `:name` in one counts as a placeholder there; `--` comments have no such trap.
    """
    backslash = dialect in _BACKSLASH_DIALECTS
    dollar = dialect not in _NO_DOLLAR_QUOTE_DIALECTS
    starts_in_code: list[bool] = []
    has_code: list[bool] = []
    # Open construct: (kind, closing text, escapes, depth, line, column)
    kind: str | None = None
    closing = ""
    escapes = False
    depth = 0
    opened = (0, 0)

    for number, line in enumerate(lines, start=1):
        starts_in_code.append(kind is None)
        code = False
        i = 0
        n = len(line)
        while i < n:
            ch = line[i]
            if kind is None:
                if ch in " \t\f\v":
                    i += 1
                elif line.startswith("--", i):
                    break
                elif line.startswith("/*", i):
                    kind, depth, opened = "block comment", 1, (number, i + 1)
                    i += 2
                elif ch in "'\"`":
                    code = True
                    prefix = line[i - 1] if i else ""
                    before = line[i - 2] if i > 1 else ""
                    e_string = ch == "'" and prefix in "eE" and prefix != "" and not _ident(before)
                    kind = "string literal" if ch == "'" else "quoted identifier"
                    closing, escapes, opened = (
                        ch,
                        (backslash and ch != "`") or e_string,
                        (number, i + 1),
                    )
                    i += 1
                elif ch == "$" and dollar and not (i and _ident(line[i - 1])):
                    code = True
                    tag = _DOLLAR_TAG.match(line, i)
                    if tag is None:
                        i += 1
                    else:
                        kind, closing, opened = (
                            "dollar-quoted string",
                            tag.group(0),
                            (number, i + 1),
                        )
                        i = tag.end()
                else:
                    code = True
                    if ch == ":" and placeholders is not None and not (i and _glued(line[i - 1])):
                        name = _PLACEHOLDER_NAME.match(line, i + 1)
                        if name is not None:
                            placeholders.append((number - 1, i, name.group(0)))
                            i = name.end()
                            continue
                    i += 1
            elif kind == "block comment":
                if line.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif line.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                    if depth == 0:
                        kind = None
                else:
                    i += 1
            elif kind == "dollar-quoted string":
                code = True
                found = line.find(closing, i)
                if found < 0:
                    break
                kind, i = None, found + len(closing)
            else:
                code = True
                if escapes and ch == "\\":
                    i += 2
                elif ch == closing:
                    if line.startswith(closing * 2, i):
                        i += 2
                    else:
                        kind, i = None, i + 1
                else:
                    i += 1
        has_code.append(code)

    unterminated = (kind, *opened) if kind is not None else None
    return _Lines(starts_in_code, has_code, unterminated)


def _ident(ch: str) -> bool:
    return ch.isalnum() or ch in "_$"


def _glued(ch: str) -> bool:
    """A colon right after `ch` continues what is before it and starts no placeholder."""
    return ch == ":" or _ident(ch)
