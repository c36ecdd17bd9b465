"""The Dagster instance Crucible writes must be one Dagster accepts, with the SUT queue."""

import dagster as dg
import yaml

from crucible_dagster.defs.instance import DAGSTER_YAML


def test_dagster_yaml_is_valid_and_limits_one_run_per_sut() -> None:
    with dg.instance_for_test(overrides=yaml.safe_load(DAGSTER_YAML)) as instance:
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
        assert limits == [
            {"key": "crucible/sut", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
        ]
        assert instance.run_monitoring_enabled


def test_dagster_yaml_switches_telemetry_off() -> None:
    assert yaml.safe_load(DAGSTER_YAML)["telemetry"] == {"enabled": False}
