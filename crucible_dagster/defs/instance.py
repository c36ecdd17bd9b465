"""The local Dagster instance under CRUCIBLE_HOME, shared by the CLI, the demo and `dagster dev`."""

import os
from pathlib import Path

from crucible_dagster.settings import Settings

# The SUT queue: a second run tagged with the same SUT waits in the queue, without a worker.
DAGSTER_YAML = """\
# Written by Crucible. The run queue keeps one run per SUT; telemetry is off.
telemetry:
  enabled: false
concurrency:
  runs:
    tag_concurrency_limits:
      - key: crucible/sut
        value:
          applyLimitPerUniqueValue: true
        limit: 1
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
  poll_interval_seconds: 30
"""


def ensure_dagster_home(settings: Settings) -> Path:
    """Creates `$CRUCIBLE_HOME/dagster/dagster.yaml` and points DAGSTER_HOME at it if unset."""
    home = Path(os.environ.get("DAGSTER_HOME") or settings.dagster_home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return home
