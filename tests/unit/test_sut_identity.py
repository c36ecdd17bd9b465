"""A SUT's normalised identity: the same database reached two ways is one SUT."""

import re

import pytest
from pydantic import SecretStr

from crucible_dagster.suts.base import SutTarget, connect_address, host_problem, sut_identity

LABEL = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


@pytest.mark.parametrize(
    ("host", "port"),
    [("localhost:5432", None), ("127.0.0.1", 5432), ("LOCALHOST", None), ("127.0.0.1", None),
     ("localhost:9999", 5432), ("[::1]:5432", None)],
)  # fmt: skip
def test_loopback_spellings_and_default_port_name_one_sut(host: str, port: int | None) -> None:
    assert sut_identity("postgres", host, port, "tpch") == sut_identity(
        "postgresql", "127.0.0.1", 5432, "tpch"
    )


def test_database_and_port_tell_suts_apart() -> None:
    base = sut_identity("postgresql", "db.example", 5432, "a")
    assert base != sut_identity("postgresql", "db.example", 5433, "a")
    assert base != sut_identity("postgresql", "db.example", 5432, "b")
    assert base != sut_identity("mysql", "db.example", 5432, "a")


def test_host_names_are_lowercased_and_ports_default_per_type() -> None:
    identity = sut_identity("Doris", "FE.Example.SVC", None, "tpch")
    assert (identity.host, identity.port, identity.sut_type) == ("fe.example.svc", 9030, "doris")


def test_tag_value_is_a_valid_kubernetes_label_even_when_long() -> None:
    short = sut_identity("postgresql", "127.0.0.1", 5432, "tpch")
    assert short.tag_value == "postgresql.127.0.0.1.5432.tpch"
    long = sut_identity("postgresql", "a" * 70 + ".example", 5432, "db_" + "x" * 40)
    other = sut_identity("postgresql", "a" * 70 + ".example", 5432, "db_" + "y" * 40)
    for identity in (short, long, other):
        assert len(identity.tag_value) <= 63
        assert LABEL.match(identity.tag_value), identity.tag_value
    assert long.tag_value != other.tag_value


def test_target_never_shows_its_password() -> None:
    target = SutTarget(sut_identity("postgresql", "h", None, "d"), "u", SecretStr("hunter2"))
    assert "hunter2" not in repr(target) and "hunter2" not in str(target)


@pytest.mark.parametrize(
    ("host", "problem"),
    [
        ("[::1]:99999", "the part after ':' must be a port from 1 to 65535"),
        ("[::1]:0", "the part after ':' must be a port from 1 to 65535"),
        ("db:abc", "the part after ':' must be a port from 1 to 65535"),
        ("[::1", "an IPv6 address in brackets is written [address] or [address]:port"),
        ("[::1]x", "an IPv6 address in brackets is written [address] or [address]:port"),
    ],
)
def test_a_host_with_a_bad_port_is_named(host: str, problem: str) -> None:
    assert host_problem(host) == f"host {host!r}: {problem}"


@pytest.mark.parametrize("host", ["db", "db:5432", "10.0.0.1:1", "[::1]", "[::1]:5432", "::1"])
def test_hosts_with_and_without_a_port_are_accepted(host: str) -> None:
    assert host_problem(host) is None


def test_the_connection_goes_to_the_host_as_written_not_its_normalised_name() -> None:
    identity = sut_identity("postgresql", "[::1]:5432", None, "tpch")
    target = SutTarget(identity, "u", address=connect_address("[::1]:5432"))

    assert identity.host == "127.0.0.1"  # the same SUT as 127.0.0.1:5432, for the lease
    assert target.host == "::1"
    assert SutTarget(identity, "u").host == "127.0.0.1"


def test_an_embedded_sut_is_keyed_by_its_database_file() -> None:
    from crucible_dagster.suts.base import SutIdentity

    assert SutIdentity("duckdb", "", 0, "/data/tpch.duckdb").key == "duckdb:///data/tpch.duckdb"
