"""Shard specs and results survive the JSON trip to a pod and back; the password never travels."""

from datetime import date
from decimal import Decimal

import pytest
from pydantic import SecretStr

from crucible_dagster.engine.model import (
    EngineParam,
    EngineQuery,
    LoadShape,
    ShardHealth,
    ShardResult,
)
from crucible_dagster.engine.runner import native_shard_spec
from crucible_dagster.engine.shard import ShardSpec
from crucible_dagster.errors import RunError
from crucible_dagster.launch.codec import (
    shard_result_from_json,
    shard_result_to_json,
    shard_spec_from_json,
    shard_spec_to_json,
    spec_needs_password,
)
from crucible_dagster.params import parse_param
from crucible_dagster.suts.base import SutTarget, TlsSettings, sut_identity

PASSWORD = "not-in-json-" + "x9"


def _target(password: str = PASSWORD) -> SutTarget:
    identity = sut_identity("postgresql", "127.0.0.1", 5432, "tpch")
    return SutTarget(identity, "bench", SecretStr(password), tls=TlsSettings(verify=False))


def _queries() -> list[EngineQuery]:
    _, cust = parse_param("cust {type: int, range: [1, 100], distribution: zipfian}")
    _, day = parse_param("day {type: date, range: [1992-01-01, 1998-12-31]}")
    _, flag = parse_param("flag {type: choice, values: [A, B]}")
    sampled = EngineParam("flag", flag, values=(date(1995, 1, 2), Decimal("1.50"), None))
    return [
        EngineQuery("one", "SELECT 1", "workloads/w.sql", 3),
        EngineQuery(
            "orders",
            "SELECT * FROM orders WHERE o_custkey = $1 AND o_orderdate > $2 AND $3 IS NULL",
            "workloads/w.sql",
            7,
            weight=2.5,
            params=(EngineParam("cust", cust), EngineParam("day", day), sampled),
            positions=(0, 1, 2),
        ),
    ]


def test_closed_model_spec_round_trips_with_the_password_supplied_by_the_pod() -> None:
    shape = LoadShape(concurrency=5, ramp_up_s=1.0, hold_for_s=3.0, shards=2, seed=7)
    spec = native_shard_spec(_target(), _queries(), shape, 1)

    text = shard_spec_to_json(spec)
    rebuilt = shard_spec_from_json(text, password=PASSWORD)

    assert PASSWORD not in text
    assert rebuilt == spec
    assert isinstance(rebuilt, ShardSpec)
    assert rebuilt.target.password.get_secret_value() == PASSWORD


def test_open_model_spec_round_trips() -> None:
    shape = LoadShape(model="ramping_arrival_rate", stages=((10.0, 1.0), (20.0, 2.0)),
                      pre_allocated_vus=3, max_vus=6, shards=3, warm_up_s=0.5)  # fmt: skip
    spec = native_shard_spec(_target(""), _queries(), shape, 2)

    rebuilt = shard_spec_from_json(shard_spec_to_json(spec), password=None)

    assert rebuilt == spec


def test_spec_with_a_password_needs_the_secret_and_fails_clearly_without_it() -> None:
    spec = native_shard_spec(_target(), _queries(), LoadShape(hold_for_s=1.0), 0)

    assert spec_needs_password(spec)
    assert not spec_needs_password(native_shard_spec(_target(""), _queries(), LoadShape(), 0))
    with pytest.raises(RunError, match="password did not reach the pod"):
        shard_spec_from_json(shard_spec_to_json(spec), password=None)


def test_only_crucible_classes_are_rebuilt_from_json() -> None:
    forged = '{"__dataclass__": "subprocess:Popen", "fields": {"args": ["true"]}}'

    with pytest.raises(RunError, match="not Crucible's"):
        shard_spec_from_json(forged, password=None)


def test_shard_result_round_trips() -> None:
    result = ShardResult(
        shard=1,
        counts=[10, 4],
        errors=[0, 1],
        errors_by_kind=[{}, {"timeout": 1}],
        interrupted=[0, 0],
        histograms=["HISTFAAAA1", "HISTFAAAA2"],
        first_errors=[None, "canceling statement due to statement timeout"],
        start_delay_s=0.0021,
        latency_histograms=None,
        dropped=[0, 0],
        late=[0, 2],
        health=ShardHealth(1, 12.5, 0.1, 3.2),
        intervals_lost=0,
    )

    assert shard_result_from_json(shard_result_to_json(result)) == result
