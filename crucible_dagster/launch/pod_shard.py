"""What a shard pod runs: `python -m crucible_dagster.launch.pod_shard`.

It opens Dagster Pipes, rebuilds its shard spec from the Pipes extras (the password comes from
its environment), and runs the engine's shard entry in a child process with a local queue and
events, exactly as `engine.runner` does for local shards. It translates the shard's messages:
"ready" writes the ready file (the pod turns Ready), the start instant published in the pod's
annotations sets `start_at` and `go`, progress goes out as Pipes log lines, and the shard's
result goes back as a Pipes custom message. SIGTERM (the pod deleted, the run cancelled) sets
`halt`, so the shard stops early and still reports what it measured; so does the annotation
`crucible/halt`, the orchestrator's way to stop the shards without deleting their pods.

Exit codes: 0 with a result, 2 when the SUT could not be used, 1 for any other failure; the
reason of a failure is also written to the container's termination message.
"""

import contextlib
import importlib
import multiprocessing
import os
import queue
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from pathlib import Path
from types import FrameType
from typing import Any

from crucible_dagster.engine.model import ShardResult
from crucible_dagster.engine.runner import stop_shard_processes
from crucible_dagster.launch.barrier import PodBarrier
from crucible_dagster.launch.codec import shard_result_to_json, shard_spec_from_json
from crucible_dagster.launch.pods import (
    ENV_ANNOTATIONS_FILE,
    ENV_READY_FILE,
    ENV_SUT_PASSWORD,
    ENV_TERMINATION_LOG,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_SUT_ERROR,
)

TICK_S = 0.05
# How long a shard process may stay silent after it ended before it counts as lost.
LOST_SHARD_S = 2.0
# How long a halted shard gets to send its result before it is terminated.
WIND_DOWN_S = 15.0
# Kubernetes keeps at most this much of a termination message.
TERMINATION_MESSAGE_BYTES = 4096


@dataclass
class Outcome:
    """How the shard ended: `kind` is "result", "sut_error" or "failed"."""

    kind: str
    result: ShardResult | None = None
    message: str = ""
    start_at: float | None = None


def load_entry(name: str) -> Callable[..., None]:
    """The shard entry named `module:function` (or `module.function`)."""
    module_name, sep, attribute = name.partition(":")
    if not sep:
        module_name, _, attribute = name.rpartition(".")
    entry = getattr(importlib.import_module(module_name), attribute)
    if not callable(entry):
        raise TypeError(f"shard entry {name!r} is not callable")
    return entry


class ShardSupervisor:
    """Runs one shard entry in a child process and plays the parent's part of the protocol."""

    def __init__(
        self,
        entry: Callable[..., None],
        spec: object,
        barrier: PodBarrier,
        *,
        log: Callable[[str], None],
        progress_every_s: float = 10.0,
    ) -> None:
        self.entry = entry
        self.spec = spec
        self.barrier = barrier
        self.log = log
        self.progress_every_s = progress_every_s
        self.terminating = False

    def request_halt(self, signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        # Called from a signal handler: only a flag, since taking a lock here could deadlock.
        self.terminating = True

    def run(self) -> Outcome:
        context = multiprocessing.get_context("spawn")
        self.channel = context.Queue(maxsize=64)
        self.go = context.Event()
        self.halt = context.Event()
        self.start_at = context.Value("d", 0.0)
        self.process: SpawnProcess = context.Process(
            target=self.entry,
            args=(self.spec, self.channel, self.go, self.halt, self.start_at),
            name="crucible-shard",
            daemon=True,
        )
        try:
            self.process.start()
            return self._supervise()
        finally:
            self._shut_down()

    def _supervise(self) -> Outcome:
        ready = False
        released_at: float | None = None
        silent_since: float | None = None
        halted_since: float | None = None
        next_progress = 0.0
        while True:
            if self.terminating and not self.halt.is_set():
                self.halt.set()
                halted_since = time.monotonic()
                self.log("stop requested, halting the shard")
            message = self._next_message()
            if message is not None:
                kind = message[0]
                if kind == "ready" and not ready:
                    ready = True
                    self.barrier.mark_ready()
                    self.log("shard ready, waiting for the start instant")
                elif kind == "progress" and time.monotonic() >= next_progress:
                    _, _, completed, errors, active = message
                    self.log(f"{completed} executions, {errors} errors, {active} active")
                    next_progress = time.monotonic() + self.progress_every_s
                elif kind == "result":
                    result = message[1]
                    assert isinstance(result, ShardResult)
                    return Outcome("result", result=result, start_at=released_at)
                elif kind == "sut_error":
                    return Outcome("sut_error", message=str(message[2]))
                elif kind == "failed":
                    return Outcome("failed", message=str(message[2]))
                continue
            if not self.terminating and self.barrier.halt_requested():
                self.terminating = True
                continue
            if ready and released_at is None:
                instant = self.barrier.start_at()
                if instant is not None:
                    released_at = instant
                    self.start_at.value = instant
                    self.go.set()
                    self.log(
                        f"released, starting at {instant:.3f} (in {instant - time.time():.3f}s)"
                    )
            now = time.monotonic()
            if self.process.exitcode is not None:
                silent_since = silent_since if silent_since is not None else now
                if now - silent_since > LOST_SHARD_S:
                    return Outcome(
                        "failed",
                        message=f"the shard process exited with code {self.process.exitcode} "
                        "before reporting results",
                    )
            if halted_since is not None and now - halted_since > WIND_DOWN_S:
                return Outcome("failed", message="the halted shard did not report its results")

    def _next_message(self) -> tuple[Any, ...] | None:
        try:
            return self.channel.get(timeout=TICK_S)
        except queue.Empty:
            return None

    def _shut_down(self) -> None:
        stop_shard_processes([self.process], self.halt, self.go, self.channel)


def _write_termination_message(message: str) -> None:
    path = os.environ.get(ENV_TERMINATION_LOG)
    if not path:
        return
    data = message.encode("utf-8", errors="replace")[-TERMINATION_MESSAGE_BYTES:]
    # The message is also in the Pipes report and the pod log, so a failed write loses nothing.
    with contextlib.suppress(OSError):
        Path(path).write_bytes(data)


def main() -> int:
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        shard = int(pipes.extras["shard"])
        try:
            outcome = _run_shard(
                pipes.extras, log=lambda text: pipes.log.info(f"shard {shard}: {text}")
            )
        except Exception as error:
            # A spec or entry the pod cannot load: say why where Kubernetes shows it.
            outcome = Outcome("failed", message=f"the shard could not start: {error!r}")

        payload: dict[str, Any] = {"kind": outcome.kind, "shard": shard}
        if outcome.result is not None:
            payload["result"] = shard_result_to_json(outcome.result)
        else:
            payload["message"] = outcome.message
        pipes.report_custom_message(payload)
        if outcome.kind == "result":
            return EXIT_OK
        _write_termination_message(outcome.message)
        pipes.log.error(f"shard {shard}: {outcome.message}")
        return EXIT_SUT_ERROR if outcome.kind == "sut_error" else EXIT_FAILED


def _run_shard(extras: Mapping[str, Any], *, log: Callable[[str], None]) -> Outcome:
    spec = shard_spec_from_json(str(extras["spec"]), password=os.environ.get(ENV_SUT_PASSWORD))
    barrier = PodBarrier(Path(os.environ[ENV_READY_FILE]), Path(os.environ[ENV_ANNOTATIONS_FILE]))
    supervisor = ShardSupervisor(
        load_entry(str(extras["entry"])),
        spec,
        barrier,
        log=log,
        progress_every_s=float(extras.get("progress_every_s", 10.0)),
    )
    signal.signal(signal.SIGTERM, supervisor.request_halt)
    signal.signal(signal.SIGINT, supervisor.request_halt)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
