"""The Cassandra driver's statements, error kinds, sessions and callback bridge.

No CQL server runs on this platform. Rendering and error handling use cassandra-driver's real
exception classes; connection failures use the real driver against a refused and a silent
loopback port; everything that needs a server uses the stand-in session of tests/cql_standin.py,
and says so.
"""

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cassandra
import pytest
from cassandra import protocol
from cassandra.cluster import NoHostAvailable
from cassandra.connection import ConnectionShutdown
from pydantic import SecretStr

from crucible_dagster.engine.model import EngineQuery
from crucible_dagster.errors import SutError, ValidationError
from crucible_dagster.suts import cassandra as cql
from crucible_dagster.suts.base import SutTarget, TlsSettings, sut_identity
from crucible_dagster.suts.driver import driver_for
from crucible_dagster.workload import Query, parse_workload
from tests.cql_standin import StandInFuture, StandInSession

SECRET = "s3cr3t-canary-pw"


def _query(sql: str, params: str = "") -> Query:
    text = f"-- @type: cql\n-- @name: q\n{params}{sql}\n"
    return parse_workload(text, source="w.cql", workload_id="w").queries[0]


def _target(port: int = 9042, keyspace: str = "ks", **kwargs: Any) -> SutTarget:
    identity = sut_identity("cassandra", "127.0.0.1", port, keyspace)
    return SutTarget(identity, "loader", SecretStr(SECRET), **kwargs)


def _server_error(
    cls: type[protocol.ErrorMessage], message: str, info: object = None
) -> BaseException:
    error = cls(code=cls.error_code, message=message, info=info)
    return error.to_exception()  # what the driver raises for this server answer


# -- registry and rendering ---------------------------------------------------------------------


def test_cassandra_and_scylla_get_the_cql_driver_that_takes_cql_workloads_only() -> None:
    for sut_type in ("cassandra", "scylla"):
        driver = driver_for(sut_type)
        assert isinstance(driver, cql.CassandraDriver)
        assert driver.workload_types == ("cql",)


def test_parameters_become_one_question_mark_per_occurrence_in_order() -> None:
    query = _query(
        "SELECT * FROM t WHERE a = :k AND b = :n AND c = :k",
        "-- @param: k {type: int, range: [1, 5]}\n-- @param: n {type: int, range: [1, 5]}\n",
    )
    assert cql.render(query) == ("SELECT * FROM t WHERE a = ? AND b = ? AND c = ?", ("k", "n", "k"))


def test_query_without_parameters_is_sent_as_written() -> None:
    query = _query("SELECT * FROM t WHERE note = 'a:b ?'")
    assert cql.render(query) == ("SELECT * FROM t WHERE note = 'a:b ?'", ())


def test_placeholders_inside_string_literals_are_left_alone() -> None:
    query = _query(
        "SELECT * FROM t WHERE a = :k AND note = ':k'", "-- @param: k {type: int, range: [1, 5]}\n"
    )
    assert cql.render(query) == ("SELECT * FROM t WHERE a = ? AND note = ':k'", ("k",))


def test_identifiers_are_double_quoted_with_embedded_quotes_doubled() -> None:
    assert cql.quote_identifier("Lineitem") == '"Lineitem"'
    assert cql.quote_identifier('a"b); DROP KEYSPACE x; --') == '"a""b); DROP KEYSPACE x; --"'
    with pytest.raises(ValueError):
        cql.quote_identifier("")


@pytest.mark.parametrize("name", ["tpch", "Tpch_01", "k" * 48])
def test_valid_keyspace_names_pass(name: str) -> None:
    assert cql.name_problem(name) is None


@pytest.mark.parametrize("name", ["", "1tpch", "_x", "a-b", "a b", 'a"b', "k" * 49, "tpch;"])
def test_invalid_keyspace_names_are_refused_before_connecting(name: str) -> None:
    assert cql.name_problem(name) is not None
    if name:
        with pytest.raises(SutError, match="invalid CQL name"):
            asyncio.run(cql.connect(_target(keyspace=name)))


# -- error kinds and descriptions ---------------------------------------------------------------


def test_timeouts_are_classified_as_timeout() -> None:
    read = cassandra.ReadTimeout("read", consistency=1, required_responses=1, received_responses=0)
    write = cassandra.WriteTimeout(
        "write", consistency=1, required_responses=1, write_type=cassandra.WriteType.SIMPLE
    )
    for error in (read, write, cassandra.OperationTimedOut({}, "127.0.0.1:9042"), TimeoutError()):
        assert cql.classify_error(error) == "timeout"


def test_unreachable_hosts_and_broken_connections_are_classified_as_connection() -> None:
    unreachable = NoHostAvailable("Unable to complete the operation", {"127.0.0.1:9042": OSError()})
    for error in (unreachable, ConnectionShutdown("closed"), ConnectionRefusedError()):
        assert cql.classify_error(error) == "connection"


def test_server_errors_are_classified_by_their_cql_error_name() -> None:
    unavailable = cassandra.Unavailable("x", consistency=1, required_replicas=3, alive_replicas=1)
    cases = {
        unavailable: "unavailable",
        _server_error(protocol.SyntaxException, "line 1:0 no viable alternative"): "syntax_error",
        _server_error(protocol.InvalidRequestException, "unconfigured table t"): "invalid_request",
        _server_error(protocol.UnauthorizedErrorMessage, "no SELECT permission"): "unauthorized",
        _server_error(protocol.OverloadedErrorMessage, "too busy"): "overloaded",
        _server_error(protocol.ServerError, "NullPointerException"): "server_error",
        _server_error(
            protocol.AlreadyExistsException, "exists", {"keyspace": "ks", "table": "t"}
        ): "already_exists",
        cassandra.AuthenticationFailed("bad credentials"): "authentication",
        cassandra.AlreadyExists(keyspace="ks", table="t"): "already_exists",
        ValueError("cannot encode"): "other",
    }
    for error, kind in cases.items():
        assert cql.classify_error(error) == kind, error


def test_a_server_error_without_a_name_is_classified_by_its_code() -> None:
    odd = protocol.ErrorMessage(code=0x3000, message="new kind", info=None)
    assert cql.classify_error(odd) == "cql_3000"


def test_descriptions_carry_code_summary_and_message_on_one_line() -> None:
    syntax = _server_error(protocol.SyntaxException, "line 1:7 no viable\nalternative")
    assert cql.describe_error(syntax) == (
        "2000 [Syntax error in CQL query] line 1:7 no viable alternative"
    )
    invalid = _server_error(protocol.InvalidRequestException, "unconfigured table t")
    assert cql.describe_error(invalid) == (
        'InvalidRequest: Error from server: code=2200 [Invalid query] message="unconfigured '
        'table t"'
    )
    unreachable = NoHostAvailable("Unable", {"127.0.0.1:9042": ConnectionRefusedError(111, "no")})
    assert cql.describe_error(unreachable) == (
        "no host available: 127.0.0.1:9042: ConnectionRefusedError: [Errno 111] no"
    )


def test_refusals_of_a_statement_are_rejections_and_do_not_lose_the_session() -> None:
    driver = cql.CassandraDriver()
    syntax = _server_error(protocol.SyntaxException, "bad")
    invalid = _server_error(protocol.InvalidRequestException, "unconfigured table t")
    unauthorized = _server_error(protocol.UnauthorizedErrorMessage, "no permission")
    for error in (syntax, invalid, unauthorized):
        assert isinstance(error, driver.rejections)
    assert not isinstance(cassandra.OperationTimedOut(), driver.rejections)


# -- connection errors --------------------------------------------------------------------------


def _connect_message(error: BaseException, target: SutTarget | None = None) -> str:
    target = target or _target()
    found = cql.connect_error(error, target)
    assert found is not None
    assert SECRET not in str(found)
    return str(found)


def test_bad_credentials_say_so_without_the_password() -> None:
    failed = cassandra.AuthenticationFailed(
        "Failed to authenticate to 127.0.0.1:9042: Error from server: code=0100 "
        '[Bad credentials] message="Provided username loader and/or password are incorrect"'
    )
    error = NoHostAvailable("Unable to connect to any servers", {"127.0.0.1:9042": failed})
    assert _connect_message(error) == (
        "cassandra://127.0.0.1:9042/ks: authentication failed for user 'loader' (wrong password?)"
    )


def test_a_server_that_wants_a_password_the_plan_does_not_set_says_so() -> None:
    failed = cassandra.AuthenticationFailed("Remote end requires authentication")
    error = NoHostAvailable("Unable to connect to any servers", {"127.0.0.1:9042": failed})
    target = SutTarget(sut_identity("cassandra", "127.0.0.1", 9042, "ks"), "cassandra")
    assert "requires a password; the plan sets none" in _connect_message(error, target)


def test_an_unknown_keyspace_says_so() -> None:
    # What Session() raises when no pool could `USE` the keyspace: errors is a list of hosts.
    error = NoHostAvailable("Unable to connect to any servers using keyspace 'ks'", ["127.0.0.1"])
    assert _connect_message(error) == (
        "cassandra://127.0.0.1:9042/ks: keyspace 'ks' does not exist, or user 'loader' may not "
        "use it"
    )
    invalid = cassandra.InvalidRequest("Keyspace 'ks' does not exist")
    assert "keyspace 'ks' does not exist" in _connect_message(invalid)


def test_timeouts_unknown_hosts_and_tls_failures_say_so() -> None:
    timed_out = NoHostAvailable("Unable", {"127.0.0.1:9042": cassandra.OperationTimedOut()})
    assert _connect_message(timed_out, _target(connect_timeout_s=2)) == (
        "cannot reach cassandra://127.0.0.1:9042/ks: no answer within 2s"
    )
    unknown = cassandra.UnresolvableContactPoints({})
    assert "is unknown" in _connect_message(unknown)
    tls = NoHostAvailable("Unable", {"127.0.0.1:9042": cassandra_ssl_error()})
    assert "the TLS handshake failed" in _connect_message(tls)


def cassandra_ssl_error() -> BaseException:
    import ssl

    error = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    error.reason = "WRONG_VERSION_NUMBER"
    return error


def test_cancellation_is_not_turned_into_an_error() -> None:
    assert cql.connect_error(asyncio.CancelledError(), _target()) is None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_connecting_to_a_refused_port_is_a_clear_sut_error() -> None:
    # The real cassandra-driver against a loopback port nobody listens on.
    target = _target(_free_port(), connect_timeout_s=1)
    with pytest.raises(SutError) as caught:
        asyncio.run(cql.connect(target))
    assert str(caught.value) == f"cannot reach {target.identity.key}: connection refused"
    assert SECRET not in str(caught.value)
    assert cql.shared_session_count() == 0


def test_a_port_that_never_answers_times_out_for_every_waiting_user() -> None:
    # The real driver against a listening socket that accepts and never speaks CQL.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        target = _target(silent.getsockname()[1], connect_timeout_s=0.5)

        async def three_users() -> list[BaseException | cql.CqlSession]:
            return await asyncio.gather(
                *(cql.connect(target) for _ in range(3)), return_exceptions=True
            )

        outcomes = asyncio.run(three_users())
    assert [str(o) for o in outcomes] == [
        f"cannot reach {target.identity.key}: no answer within 0.5s"
    ] * 3
    assert cql.shared_session_count() == 0


def test_an_unreadable_ca_file_is_a_sut_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    target = _target(tls=TlsSettings(ca_file=str(missing)))
    with pytest.raises(SutError, match=r"nope\.pem"):
        asyncio.run(cql.connect(target))


# -- the callback bridge (stand-in session where a server would be) -----------------------------


def test_a_statement_fetches_every_page_delivered_from_another_thread() -> None:
    pages = [[(1,), (2,)], [(3,)], [(4,), (5,), (6,)]]

    class PagedSession:
        future: StandInFuture

        def execute_async(self, statement: object, parameters: object = None) -> StandInFuture:
            self.future = StandInFuture(pages, None, delay_s=0.01)
            return self.future

    session = PagedSession()

    async def run() -> tuple[int, list[tuple[object, ...]]]:
        count = await cql.run_statement(session, "SELECT x FROM t")
        return count, await cql.fetch_rows(session, "SELECT x FROM t")

    count, rows = asyncio.run(run())
    assert count == 6
    assert rows == [(1,), (2,), (3,), (4,), (5,), (6,)]
    assert all(name != threading.main_thread().name for name in session.future.threads)


def test_a_failed_statement_raises_the_drivers_exception_in_the_awaiting_task() -> None:
    timeout = cassandra.WriteTimeout(
        "timed out", consistency=1, required_responses=1, write_type=cassandra.WriteType.SIMPLE
    )

    class FailingSession:
        def execute_async(self, statement: object, parameters: object = None) -> StandInFuture:
            return StandInFuture(None, timeout, delay_s=0.01)

    with pytest.raises(cassandra.WriteTimeout):
        asyncio.run(cql.run_statement(FailingSession(), "INSERT"))


def test_a_cancelled_statement_ignores_its_late_answer_and_a_closed_loop() -> None:
    class SlowSession:
        future: StandInFuture

        def execute_async(self, statement: object, parameters: object = None) -> StandInFuture:
            self.future = StandInFuture([[(1,)]], None, delay_s=0.2)
            return self.future

    session = SlowSession()

    async def cancel_early() -> None:
        task = asyncio.create_task(cql.run_statement(session, "SELECT"))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_early())
    # The loop is closed when the answer arrives; the callback must not raise in the I/O thread.
    threading.Event().wait(0.3)
    assert session.future.threads


def test_an_answer_that_arrived_before_its_callbacks_is_still_delivered() -> None:
    class InstantSession:
        def execute_async(self, statement: object, parameters: object = None) -> StandInFuture:
            future = StandInFuture([[(1,), (2,)]], None, delay_s=0.0)
            threading.Event().wait(0.05)  # the answer is in before add_callbacks
            return future

    assert asyncio.run(cql.run_statement(InstantSession(), "SELECT")) == 2


# -- shared sessions (stand-in where the server would be) ---------------------------------------


class _StandInCluster:
    def __init__(self) -> None:
        self.shut_down = threading.Event()

    def shutdown(self) -> None:
        self.shut_down.set()


class _Opener:
    """Stands in for opening a real cluster, which needs a server: records what it opened and
    holds each opening until `gate` is set."""

    def __init__(self) -> None:
        self.opened: list[tuple[_StandInCluster, StandInSession]] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, target: SutTarget, keyspace: str | None) -> tuple[_StandInCluster, Any]:
        self.gate.wait(5)
        self.opened.append((_StandInCluster(), StandInSession()))
        return self.opened[-1]


@pytest.fixture
def opener(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Opener]:
    opener = _Opener()
    monkeypatch.setattr(cql, "open_cluster", opener)
    yield opener
    assert cql.shared_session_count() == 0


def test_virtual_users_of_a_process_share_one_cluster_until_the_last_closes(
    opener: _Opener,
) -> None:
    target, opened = _target(), opener.opened

    async def scenario() -> None:
        handles = await asyncio.gather(*(cql.connect(target) for _ in range(5)))
        assert len(opened) == 1
        assert {h.session for h in handles} == {opened[0][1]}
        cluster = opened[0][0]
        for handle in handles[:4]:
            await cql.close(handle)
        assert not cluster.shut_down.is_set()
        assert cql.is_closed(handles[0]) and not cql.is_closed(handles[4])
        cql.terminate(handles[4])
        cql.terminate(handles[4])  # a second terminate is harmless
        assert cluster.shut_down.wait(2)
        again = await cql.connect(target)
        assert len(opened) == 2
        await cql.close(again)

    asyncio.run(scenario())


def test_a_user_cancelled_while_the_cluster_opens_lets_it_shut_down_once_open(
    opener: _Opener,
) -> None:
    gate, opened = opener.gate, opener.opened
    gate.clear()

    async def scenario() -> None:
        task = asyncio.create_task(cql.connect(_target()))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.set()

    asyncio.run(scenario())
    for _ in range(200):
        if opened and opened[0][0].shut_down.is_set():
            break
        threading.Event().wait(0.01)
    assert opened[0][0].shut_down.is_set()


def test_a_query_is_prepared_once_per_process_and_binds_arguments_in_order(
    opener: _Opener,
) -> None:
    async def scenario() -> list[object]:
        users = await asyncio.gather(*(cql.connect(_target()) for _ in range(3)))
        session = opener.opened[0][1]
        await cql.run_statement(session, 'CREATE KEYSPACE IF NOT EXISTS "ks" WITH x')
        table = 'CREATE TABLE "ks"."t" ("a" int, "b" text, PRIMARY KEY (("a")))'
        await cql.run_statement(session, table)
        insert = 'INSERT INTO "ks"."t" ("b", "a") VALUES (?, ?)'
        statements = [await cql.prepare(user, insert) for user in users]
        results = [await s("x", 1) for s in statements]
        results.append(await statements[0]("y", 2))
        assert session.prepared == [insert]
        assert sorted(row["a"] for row in session.rows("ks", "t")) == [1, 2]  # type: ignore[type-var]
        for user in users:
            await cql.close(user)
        return results

    assert asyncio.run(scenario()) == [0, 0, 0, 0]


def test_no_host_available_loses_the_handle_but_a_rejection_does_not(
    opener: _Opener,
) -> None:
    async def scenario() -> None:
        handle = await cql.connect(_target())
        unreachable = NoHostAvailable("Unable", {})
        assert cql.session_lost(handle, unreachable)
        invalid = _server_error(protocol.InvalidRequestException, "unconfigured table")
        assert not cql.session_lost(handle, invalid)
        await cql.close(handle)
        assert cql.session_lost(handle, invalid)

    asyncio.run(scenario())


# -- preflight (stand-in session where the server would be) -------------------------------------


def _engine_queries(text: str, source: str) -> list[EngineQuery]:
    parsed = parse_workload(text, source=source, workload_id="w").queries
    return [EngineQuery(q.name, cql.render(q)[0], q.source, q.line) for q in parsed]


class _CheckingSession(StandInSession):
    """Refuses statements the way a server's PREPARE would."""

    def prepare(self, cql_text: str) -> Any:
        if "FORM" in cql_text:
            raise _server_error(protocol.SyntaxException, "line 2:9 mismatched input 'FORM'")
        if "missing" in cql_text:
            raise _server_error(protocol.InvalidRequestException, "unconfigured table missing")
        if "down" in cql_text:
            raise NoHostAvailable("Unable to complete the operation", {})
        return None


def test_preflight_reports_every_rejected_query_with_its_file_and_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    session = _CheckingSession()
    cluster = _StandInCluster()
    monkeypatch.setattr(cql, "open_cluster", lambda target, keyspace: (cluster, session))
    text = (
        "-- @type: cql\n"
        "-- @name: good\nSELECT * FROM t\n"
        "-- @name: typo\nSELECT *\n  FORM t\n"
        "-- @name: unknown\nSELECT * FROM missing\n"
    )
    queries = _engine_queries(text, "plans/workloads/w.cql")
    with pytest.raises(ValidationError) as caught:
        asyncio.run(cql.preflight(_target(), queries))
    problems = [str(p) for p in caught.value.problems]
    assert problems == [
        "plans/workloads/w.cql:4: typo: query 'typo' was rejected by "
        "cassandra://127.0.0.1:9042/ks: 2000 [Syntax error in CQL query] line 2:9 mismatched "
        "input 'FORM'",
        "plans/workloads/w.cql:7: unknown: query 'unknown' was rejected by "
        "cassandra://127.0.0.1:9042/ks: InvalidRequest: Error from server: code=2200 "
        '[Invalid query] message="unconfigured table missing"',
    ]
    assert cluster.shut_down.wait(2)


def test_preflight_that_loses_the_sut_is_a_sut_error(monkeypatch: pytest.MonkeyPatch) -> None:
    session = _CheckingSession()
    monkeypatch.setattr(cql, "open_cluster", lambda t, k: (_StandInCluster(), session))
    queries = _engine_queries("-- @type: cql\n-- @name: q\nSELECT * FROM down\n", "w.cql")
    with pytest.raises(SutError, match=r"stopped answering during preflight.*'q'"):
        asyncio.run(cql.preflight(_target(), queries))


def test_prepare_async_is_used_where_the_driver_offers_it() -> None:
    import concurrent.futures

    class AsyncPreparing:
        def prepare_async(self, text: str) -> concurrent.futures.Future[str]:
            done: concurrent.futures.Future[str] = concurrent.futures.Future()
            threading.Timer(0.01, done.set_result, args=(f"prepared {text}",)).start()
            return done

    assert asyncio.run(cql.prepare_statement(AsyncPreparing(), "SELECT 1")) == "prepared SELECT 1"
