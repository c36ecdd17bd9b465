import asyncpg
import pytest

from crucible_dagster.errors import SutError
from crucible_dagster.suts.base import sut_identity
from crucible_dagster.suts.postgresql import classify_error, connect_error, describe_error

IDENTITY = sut_identity("postgresql", "localhost", 5999, "tpch")


@pytest.mark.parametrize(
    "exc,kind",
    [
        (asyncpg.exceptions.DivisionByZeroError("division by zero"), "22"),
        (asyncpg.exceptions.UndefinedTableError('relation "x" does not exist'), "42"),
        (asyncpg.exceptions.SerializationError("could not serialize access"), "40"),
        (
            asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout"),
            "timeout",
        ),
        (asyncpg.exceptions.QueryCanceledError("canceling statement due to user request"), "57"),
        (asyncpg.exceptions.AdminShutdownError("terminating connection"), "connection"),
        (asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"), "connection"),
        (
            asyncpg.InterfaceError("cannot call Connection.fetch(): connection is closed"),
            "connection",
        ),
        (ConnectionResetError("reset by peer"), "connection"),
        (TimeoutError(), "timeout"),
        (ValueError("something else"), "other"),
    ],
)
def test_errors_are_classified_by_kind(exc: BaseException, kind: str) -> None:
    assert classify_error(exc) == kind


def test_refused_connection_names_the_sut() -> None:
    error = connect_error(ConnectionRefusedError(111, "refused"), IDENTITY, "x", 10.0)

    assert isinstance(error, SutError)
    assert str(error) == "cannot reach postgresql://127.0.0.1:5999/tpch: connection refused"


def test_bad_password_names_the_user() -> None:
    exc = asyncpg.InvalidPasswordError('password authentication failed for user "x"')

    error = connect_error(exc, IDENTITY, "x", 10.0)

    assert str(error) == "postgresql://127.0.0.1:5999/tpch: authentication failed for user 'x'"


def test_unknown_database_is_named() -> None:
    error = connect_error(asyncpg.InvalidCatalogNameError("nope"), IDENTITY, "x", 10.0)

    assert str(error) == "postgresql://127.0.0.1:5999/tpch: database 'tpch' does not exist"


def test_silent_server_reports_the_timeout() -> None:
    error = connect_error(TimeoutError(), IDENTITY, "x", 2.5)

    assert str(error) == "cannot reach postgresql://127.0.0.1:5999/tpch: no answer within 2.5s"


def test_error_sample_carries_the_sqlstate() -> None:
    exc = asyncpg.exceptions.DivisionByZeroError("division by zero")

    assert describe_error(exc) == "22012: division by zero"
