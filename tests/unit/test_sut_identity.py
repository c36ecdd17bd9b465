"""A SUT's normalised identity: the same database reached two ways is one SUT."""

import re

import pytest
from pydantic import SecretStr

from crucible_dagster.suts.base import SutTarget, sut_identity

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
