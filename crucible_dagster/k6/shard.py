"""One k6 shard as a shard process: the k6 engine's entry for shard pods.

`k6_shard_main` has the native shard's signature and speaks its messages (`engine.shard`), so
`crucible_dagster.launch` runs it in a pod as it runs a native shard: it starts this shard's k6
paused on its execution segment, sends "ready" once k6 is paused before the run, waits for `go`
and the shared start instant, and at the end sends its `ShardResult`. `halt` stops k6.
"""

import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from typing import Any

from pydantic import SecretStr

from crucible_dagster.engine.intervals import IntervalRow
from crucible_dagster.engine.model import LoadShape, Progress
from crucible_dagster.engine.shard import Channel
from crucible_dagster.errors import SutError
from crucible_dagster.k6.engine import K6Settings, _K6Run
from crucible_dagster.settings import get_settings

ENTRY = "crucible_dagster.k6.shard:k6_shard_main"
_POLL_S = 0.05


@dataclass(frozen=True)
class K6ShardSpec:
    """Everything one k6 shard needs: the driver input, the whole run's shape (the shard takes
    its execution segment of it), the password, and where live metrics go."""

    shard: int
    driver_input: Mapping[str, Any]
    shape: LoadShape
    password: SecretStr = field(default_factory=lambda: SecretStr(""))
    remote_write_url: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)


def k6_shard_specs(
    driver_input: Mapping[str, Any], shape: LoadShape, settings: K6Settings
) -> list[K6ShardSpec]:
    """One spec per shard of `shape`."""
    return [
        K6ShardSpec(
            shard=i,
            driver_input=driver_input,
            shape=shape,
            password=SecretStr(settings.password),
            remote_write_url=settings.remote_write_url,
            tags=dict(settings.tags),
            env=dict(settings.env),
        )
        for i in range(shape.shards)
    ]


def k6_shard_main(
    spec: K6ShardSpec, channel: Channel, go: Event, halt: Event, start_at: Synchronized
) -> None:
    """Entry point of a k6 shard process."""
    stop = threading.Event()

    # The events are polled, never waited on: a process that exits while one of its threads
    # waits on a multiprocessing event leaves the event's condition waiting for a wake-up that
    # never comes, and the parent's next `set()` hangs.
    def watch_halt() -> None:
        while not halt.is_set():
            if stop.is_set():
                return
            time.sleep(_POLL_S)
        stop.set()

    def released() -> float:
        channel.put(("ready", spec.shard))
        while not go.is_set():
            time.sleep(_POLL_S)
        return float(start_at.value)

    def progress(update: Progress) -> None:
        channel.put(("progress", spec.shard, update.completed, update.errors, 0))

    def interval(shard: int, second: int, rows: Sequence[IntervalRow]) -> None:
        channel.put(("interval", spec.shard, second, list(rows)))

    settings = K6Settings(
        k6_binary=get_settings().k6,
        password=spec.password.get_secret_value(),
        remote_write_url=spec.remote_write_url,
        tags=spec.tags,
        env=spec.env,
    )
    threading.Thread(target=watch_halt, name="halt-watch", daemon=True).start()
    run = _K6Run(
        dict(spec.driver_input), spec.shape, settings, progress, stop, None, interval,
        only_shard=spec.shard, released=released,
    )  # fmt: skip
    try:
        result = run.execute_shard()
    except SutError as error:
        channel.put(("sut_error", spec.shard, str(error)))
        return
    except BaseException:
        channel.put(("failed", spec.shard, traceback.format_exc()))
        return
    finally:
        stop.set()
    channel.put(("result", result))
