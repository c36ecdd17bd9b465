"""The transport the k6 driver reaches a SUT with, chosen by SUT type.

`transport_for` writes the `transport` object of the driver's input, which
`k6_driver/transports/index.js` reads: an HTTP SQL interface that a stock k6 reaches
(`clickhouse_http`, `trino_http`, `doris_http`, `starrocks_http`), or `sql`, a wire protocol
through xk6-sql, which needs a k6 built by `k6_driver/Dockerfile`. `k6_problem` says when a
k6 binary lacks the modules a transport needs, so validation can say so before a run.

No password ever enters a transport: the driver receives it apart (in its environment), and
the `sql` DSN holds a `{password}` marker that the driver fills in, quoted as
`password_quoting` says.

TLS: the HTTP kinds use HTTPS. k6 has no per-request CA file, so a transport with `ca_file`
needs `SSL_CERT_FILE` in k6's environment (`transport_environment`; Go then trusts that file
instead of the system's authorities), and one with `insecure_skip_tls_verify` needs k6's
option of that name (`transport_options`). Client certificates over HTTP are refused: k6 takes
them only as option text, which would put the private key into the run's input file.
"""

import functools
import json
import math
import re
import subprocess
import urllib.parse
from pathlib import Path

from crucible_dagster.errors import Location, Problem, RunError, SutError, ValidationError
from crucible_dagster.suts.base import SutTarget
from crucible_dagster.suts.trino import CLIENT_TAGS, SOURCE, TIMEOUT_ERROR_NAMES, parse_database

SQL_MODULE = "k6/x/sql"
SQL_DRIVER_MODULE = "k6/x/sql/driver/{driver}"
PASSWORD_MARKER = "{password}"
# Doris' and StarRocks' FE HTTP port when none is given: the plan has no field for it yet.
DEFAULT_FE_HTTP_PORT = 8030
STARROCKS_CATALOG = "default_catalog"
DORIS_CLUSTER = "default_cluster"
# SUT types the k6 engine has no transport for: no SQL over HTTP, no xk6-sql driver here.
NATIVE_ONLY_SUT_TYPES = ("cassandra", "scylla", "duckdb", "sqlite")
_MYSQL_PROTOCOL = ("mysql", "mariadb")
_FE_TYPES = ("doris", "starrocks")
_VERSION_TIMEOUT_S = 30.0
# `k6 version` lists each extension as `  <go module> <version>, <import> [<type>]`.
_EXTENSION_LINE = re.compile(r",\s+(\S+)\s+\[\w+\]\s*$")


def transport_for(
    target: SutTarget,
    *,
    timeout_ms: int,
    fe_http_port: int | None = None,
    wire_protocol: bool = False,
) -> dict[str, object]:
    """The driver's transport for `target`; `timeout_ms` limits each execution.

    `fe_http_port` is the FE HTTP port of Doris and StarRocks (default 8030); with
    `wire_protocol`, Doris and StarRocks go over the MySQL protocol (`sql`) instead of their
    HTTP SQL API. Raises ValidationError for a SUT or TLS setting the k6 engine cannot reach.
    """
    if timeout_ms <= 0:
        raise ValueError(f"timeout_ms must be above 0, got {timeout_ms}")
    sut_type = target.identity.sut_type
    if sut_type in NATIVE_ONLY_SUT_TYPES:
        raise _refusal(
            target,
            f"the k6 engine cannot reach {sut_type}: it has no HTTP SQL interface and no "
            "xk6-sql driver; use `executor: native`",
        )
    if sut_type == "clickhouse":
        return _clickhouse(target, timeout_ms)
    if sut_type == "trino":
        return _trino(target, timeout_ms)
    if sut_type in _FE_TYPES and not wire_protocol:
        port = DEFAULT_FE_HTTP_PORT if fe_http_port is None else fe_http_port
        if sut_type == "doris":
            return _doris(target, timeout_ms, port)
        return _starrocks(target, timeout_ms, port)
    if sut_type == "postgresql":
        return _postgres(target, timeout_ms)
    if sut_type in (*_MYSQL_PROTOCOL, *_FE_TYPES):
        return _mysql(target, timeout_ms)
    raise _refusal(target, f"the k6 engine has no transport for SUT type {sut_type!r}")


def transport_environment(transport: dict[str, object]) -> dict[str, str]:
    """Environment variables k6 needs for this transport (a CA file for TLS)."""
    ca_file = transport.get("ca_file")
    return {"SSL_CERT_FILE": str(ca_file)} if ca_file else {}


def transport_options(transport: dict[str, object]) -> dict[str, object]:
    """k6 options this transport needs (skipping certificate checks when TLS says so)."""
    return {"insecureSkipTLSVerify": True} if transport.get("insecure_skip_tls_verify") else {}


def required_module(transport: dict[str, object]) -> str | None:
    """The k6 extension module a transport needs, or None when a stock k6 runs it."""
    return SQL_MODULE if transport.get("kind") == "sql" else None


def k6_modules(k6_binary: Path) -> frozenset[str]:
    """The extension modules `k6_binary` was built with (`k6/x/...`); none for a stock k6.

    Raises RunError when the binary cannot be run.
    """
    path = Path(k6_binary)
    try:
        stamp = path.stat().st_mtime_ns
    except OSError as error:
        raise RunError(f"cannot run the k6 binary {path}: {error.strerror}") from None
    return _modules_of(str(path), stamp)


def k6_problem(transport: dict[str, object], k6_binary: Path) -> str | None:
    """Why `k6_binary` cannot run `transport`, or None when it can."""
    if required_module(transport) is None:
        return None
    driver = str(transport.get("driver"))
    needed = (SQL_MODULE, SQL_DRIVER_MODULE.format(driver=driver))
    try:
        available = k6_modules(k6_binary)
    except RunError as error:
        return str(error)
    missing = [module for module in needed if module not in available]
    if not missing:
        return None
    return (
        f"this SUT needs a k6 built with xk6-sql and its {driver} driver (see "
        f"k6_driver/Dockerfile), but {k6_binary} has no {' or '.join(missing)}: set "
        "CRUCIBLE_K6_BINARY to such a k6 or use `executor: native`"
    )


@functools.lru_cache(maxsize=8)
def _modules_of(path: str, _stamp: int) -> frozenset[str]:
    # `--json` lists imports per extension; the text form is the fallback for a k6 without it.
    for arguments in (["version", "--json"], ["version"]):
        try:
            done = subprocess.run(
                [path, *arguments], capture_output=True, text=True, timeout=_VERSION_TIMEOUT_S
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise RunError(f"cannot run the k6 binary {path}: {error}") from None
        if done.returncode != 0:
            continue
        if arguments[-1] == "--json":
            modules = _json_modules(done.stdout)
            if modules is not None:
                return modules
            continue
        return frozenset(
            found.group(1)
            for line in done.stdout.splitlines()
            if (found := _EXTENSION_LINE.search(line)) is not None
        )
    raise RunError(f"the k6 binary {path} does not answer `k6 version`")


def _json_modules(text: str) -> frozenset[str] | None:
    try:
        details = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(details, dict):
        return None
    extensions = details.get("extensions") or []
    return frozenset(
        str(name)
        for extension in extensions
        if isinstance(extension, dict)
        for name in extension.get("imports") or []
    )


# -- HTTP kinds ----------------------------------------------------------------------------------


def _clickhouse(target: SutTarget, timeout_ms: int) -> dict[str, object]:
    return {
        "kind": "clickhouse_http",
        "url": f"{_base_url(target, target.port)}/",
        "database": target.database,
        "user": target.user,
        "timeout_ms": timeout_ms,
        **_http_tls(target),
    }


def _trino(target: SutTarget, timeout_ms: int) -> dict[str, object]:
    if target.password.get_secret_value() and target.tls is None:
        raise _refusal(
            target,
            "a password is set but cluster_info.tls is not: Trino accepts passwords only over "
            "HTTPS; enable TLS or remove the password",
        )
    try:
        database = parse_database(target.database)
    except SutError as error:
        raise _refusal(target, str(error)) from None
    return {
        "kind": "trino_http",
        "url": _base_url(target, target.port),
        "user": target.user,
        "catalog": database.catalog,
        "schema": database.schema,
        "source": SOURCE,
        "client_tags": list(CLIENT_TAGS),
        # Trino stops a statement that runs too long itself, as the native driver asks it to.
        "session": {"query_max_run_time": f"{timeout_ms}ms"},
        "timeout_errors": sorted(TIMEOUT_ERROR_NAMES),
        "timeout_ms": timeout_ms,
        **_http_tls(target),
    }


def _doris(target: SutTarget, timeout_ms: int, port: int) -> dict[str, object]:
    if not target.database:
        raise _refusal(
            target,
            "Doris' HTTP SQL API runs statements in a named database: give target_db, or use "
            "the MySQL protocol (a k6 with xk6-sql)",
        )
    path = f"/api/query/{DORIS_CLUSTER}/{urllib.parse.quote(target.database, safe='')}"
    return {
        "kind": "doris_http",
        "url": _base_url(target, port) + path,
        "user": target.user,
        "timeout_ms": timeout_ms,
        **_http_tls(target),
    }


def _starrocks(target: SutTarget, timeout_ms: int, port: int) -> dict[str, object]:
    path = f"/api/v1/catalogs/{STARROCKS_CATALOG}"
    if target.database:
        path += f"/databases/{urllib.parse.quote(target.database, safe='')}"
    return {
        "kind": "starrocks_http",
        "url": f"{_base_url(target, port)}{path}/sql",
        "user": target.user,
        # StarRocks' own limit, in whole seconds, so the FE stops the statement too.
        "session": {"query_timeout": max(1, math.ceil(timeout_ms / 1000))},
        "timeout_ms": timeout_ms,
        **_http_tls(target),
    }


def _base_url(target: SutTarget, port: int) -> str:
    scheme = "https" if target.tls is not None else "http"
    return f"{scheme}://{_host(target)}:{port}"


def _host(target: SutTarget) -> str:
    return f"[{target.host}]" if ":" in target.host else target.host


def _http_tls(target: SutTarget) -> dict[str, object]:
    tls = target.tls
    if tls is None:
        return {}
    if tls.cert_file is not None:
        raise _refusal(
            target,
            "the k6 engine cannot present a client certificate over HTTP (k6 would need the "
            "private key in its input file); use `executor: native`",
        )
    settings: dict[str, object] = {}
    if not tls.verify:
        settings["insecure_skip_tls_verify"] = True
    elif tls.ca_file is not None:
        settings["ca_file"] = tls.ca_file
    return settings


# -- wire protocols (xk6-sql) --------------------------------------------------------------------


def _postgres(target: SutTarget, timeout_ms: int) -> dict[str, object]:
    # The marker comes first, so nothing a user or database name holds can be taken for it.
    parts = [
        f"password={PASSWORD_MARKER}",
        f"host={_libpq_quoted(target.host)}",
        f"port={target.port}",
        f"user={_libpq_quoted(target.user)}",
        f"connect_timeout={max(1, math.ceil(target.connect_timeout_s))}",
        "application_name='crucible'",
    ]
    if target.database:
        parts.append(f"dbname={_libpq_quoted(target.database)}")
    tls = target.tls
    if tls is None:
        parts.append("sslmode=disable")
    elif not tls.verify:
        parts.append("sslmode=require")
    else:
        parts.append("sslmode=verify-full")
        if tls.ca_file is not None:
            parts.append(f"sslrootcert={_libpq_quoted(tls.ca_file)}")
    if tls is not None and tls.cert_file is not None:
        parts.append(f"sslcert={_libpq_quoted(tls.cert_file)}")
        if tls.key_file is not None:
            parts.append(f"sslkey={_libpq_quoted(tls.key_file)}")
    return {
        "kind": "sql",
        "driver": "postgres",
        "dsn": " ".join(parts),
        "password_quoting": "libpq",
        "timeout_ms": timeout_ms,
    }


def _mysql(target: SutTarget, timeout_ms: int) -> dict[str, object]:
    # go-sql-driver/mysql ends the user at the first ':' and the credentials at the last '@'
    # before the address, so a password may hold anything but a user name may not hold ':'.
    if ":" in target.user or PASSWORD_MARKER in target.user:
        raise _refusal(
            target,
            f"user name {target.user!r} cannot be written in a MySQL-driver DSN: no ':' allowed",
        )
    params: dict[str, str] = {"timeout": f"{max(1, round(target.connect_timeout_s * 1000))}ms"}
    settings: dict[str, object] = {}
    tls = target.tls
    if tls is None:
        params["tls"] = "false"
    elif tls.cert_file is not None:
        raise _refusal(
            target,
            "the k6 engine cannot present a client certificate over the MySQL protocol "
            "(xk6-sql's MySQL driver takes one only with a CA file in script code); use "
            "`executor: native`",
        )
    elif not tls.verify:
        params["tls"] = "skip-verify"
    else:
        params["tls"] = "true"
        if tls.ca_file is not None:
            settings["ca_file"] = tls.ca_file
    database = urllib.parse.quote(target.database, safe="")
    address = f"{_host(target)}:{target.port}"
    query = urllib.parse.urlencode(params)
    return {
        "kind": "sql",
        "driver": "mysql",
        "dsn": f"{target.user}:{PASSWORD_MARKER}@tcp({address})/{database}?{query}",
        "password_quoting": "none",
        "timeout_ms": timeout_ms,
        **settings,
    }


def _libpq_quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _refusal(target: SutTarget, message: str) -> ValidationError:
    return ValidationError(
        [Problem(Location(target.identity.key), message, field="execution.executor")]
    )
