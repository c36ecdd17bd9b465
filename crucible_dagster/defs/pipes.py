"""Dagster Pipes for a plan's op: k6 processes under `PipesSubprocessClient`, shard pods under
`PipesK8sClient` (`crucible_dagster.launch.k8s`).

Each shard's k6 runs through its own `PipesSubprocessClient` (one client per thread, since a
Pipes session keeps its state on the client). k6 cannot read Pipes' compressed bootstrap
variables, so the driver writes its messages as plain JSON lines to a file named in an
ordinary variable, read by `PipesFileMessageReader`: `opened`, one custom message with the
shard's totals from k6's own summary, then `closed`. Measurements do not travel this way; they
come from the execution stream (`crucible_dagster.k6.engine`).
"""

import re
import shutil
import threading
from collections.abc import Callable, Sequence

import dagster as dg
from dagster._core.errors import DagsterPipesExecutionError

from crucible_dagster.engine.model import EngineQuery, LoadShape, Measurement
from crucible_dagster.k6.engine import PIPES_MESSAGES_ENV, K6Command, K6Exit, Launch
from crucible_dagster.launch.k8s import KubeAccess, run_pod_load
from crucible_dagster.launch.pods import PodSettings
from crucible_dagster.run import PodLoad
from crucible_dagster.suts.base import SutTarget

_EXIT_CODE = re.compile(r"failed with code (-?\d+)")
# PipesSubprocessClient passes its own environment on; these keep k6's requests off any proxy.
_NO_PROXY = {"NO_PROXY": "*", "no_proxy": "*", "HTTP_PROXY": "", "HTTPS_PROXY": ""}


def pipes_k6_launch(context: dg.OpExecutionContext) -> Launch:
    """A k6 launch that runs each k6 process under `PipesSubprocessClient` in `context`."""

    def launch(command: K6Command) -> K6Exit:
        messages = command.log_path.with_suffix(".pipes.jsonl")
        client = dg.PipesSubprocessClient(
            message_reader=dg.PipesFileMessageReader(str(messages)),
            # SIGINT on interrupt only reaches the thread that waits, which is not the op's
            # main thread; the engine stops k6 through its REST API instead.
            forward_termination=False,
        )
        env = {**command.env, **_NO_PROXY, PIPES_MESSAGES_ENV: str(messages)}
        # In a session of its own, as the plain launch does: Ctrl-C reaches the run, which stops
        # k6 through its API and keeps what was measured, instead of killing k6 mid-run.
        setsid = shutil.which("setsid")
        argv = [setsid, *command.argv] if setsid else list(command.argv)
        try:
            invocation = client.run(
                context=context,
                command=argv,
                env=env,
                extras={"shard": command.shard},
            )
        except DagsterPipesExecutionError as error:
            found = _EXIT_CODE.search(str(error))
            return K6Exit(int(found.group(1)) if found else 1)
        for payload in invocation.get_custom_messages():
            context.log.info("k6 shard %s summary: %s", command.shard, payload)
        return K6Exit(0)

    return launch


def pod_load_in(context: dg.OpExecutionContext, run_id: str, ready_timeout_s: float) -> PodLoad:
    """Shard pods launched from `context`, labelled with Crucible's `run_id`."""

    def load(
        specs: Sequence[object] | None,
        entry: str,
        target: SutTarget,
        queries: Sequence[EngineQuery],
        shape: LoadShape,
        pods: PodSettings,
        access: KubeAccess,
        stop: threading.Event,
        on_start: Callable[[float], None] | None,
    ) -> Measurement:
        return run_pod_load(context, target, queries, shape, run_id=run_id, pods=pods,
                            access=access, ready_timeout_s=ready_timeout_s, stop=stop,
                            specs=specs, entry=entry, on_start=on_start)  # fmt: skip

    return load
