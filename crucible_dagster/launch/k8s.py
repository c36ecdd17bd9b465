"""Shards as Kubernetes pods: one `PipesK8sClient.run` per shard, released by a start barrier.

`run_pod_shards` launches every shard pod from its own thread with its own client (the pod-log
reader keeps per-session state), waits until every pod is Ready (its shard has connected and
prepared), then sets the annotation `crucible/start-at` on all of them to one instant a little
ahead; each shard sleeps to it, so they share one load clock, and each reports how late it
actually started. The shards send their results as Pipes custom messages; `merge_shard_results`
turns them into one measurement, as for local shards.

A pod that is not Ready in time, or that fails, fails the run with its name and reason, and
every pod of the call is deleted, so nothing keeps loading the SUT. A stop request halts the
shards through the annotation `crucible/halt` (and by deleting their pods, which sends SIGTERM,
if that has not ended them within the grace period); they report what they measured, which is
kept, and their pods are deleted.
"""

import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import kubernetes
from dagster._core.pipes.context import PipesMessageHandler
from dagster_k8s import PipesK8sClient
from dagster_k8s.pipes import PipesK8sPodLogsMessageReader

from crucible_dagster.engine.model import EngineQuery, LoadShape, Measurement, ShardResult
from crucible_dagster.engine.runner import merge_shard_results, native_shard_spec
from crucible_dagster.errors import RunError, SutError
from crucible_dagster.launch.codec import (
    shard_result_from_json,
    shard_spec_to_json,
    spec_needs_password,
)
from crucible_dagster.launch.pods import (
    ANNOTATION_HALT,
    ANNOTATION_START_AT,
    EXIT_SUT_ERROR,
    LABEL_LAUNCH,
    LABEL_SHARD,
    PodSettings,
    active_deadline_s,
    pod_meta,
    pod_spec,
    run_worker_owner,
)
from crucible_dagster.suts.base import SutIdentity, SutTarget

NATIVE_ENTRY = "crucible_dagster.engine.shard:shard_main"
# How long shards get to send their results after they should have stopped.
WIND_DOWN_S = 15.0
# Seconds between looks at the pods while waiting for them.
POLL_S = 0.2
# How long after its pod vanished a shard's report may still arrive through the log stream.
LOST_REPORT_S = 3.0


@dataclass(frozen=True)
class KubeAccess:
    """How to reach the Kubernetes API, as `PipesK8sClient` takes it, and the pods' namespace."""

    namespace: str
    kubeconfig_file: str | None = None
    kube_context: str | None = None
    load_incluster_config: bool | None = None
    # How often PipesK8sClient polls a pod's state.
    poll_interval_s: float = 1.0

    def core_api(self) -> kubernetes.client.CoreV1Api:
        """A client of the same API PipesK8sClient reaches (in-cluster when it would be)."""
        unset = self.kubeconfig_file is None and self.kube_context is None
        in_cluster = self.load_incluster_config is None and unset and _in_cluster()
        if self.load_incluster_config or in_cluster:
            configuration = kubernetes.client.Configuration()
            kubernetes.config.load_incluster_config(client_configuration=configuration)
            return kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(configuration))
        api_client = kubernetes.config.new_client_from_config(
            config_file=self.kubeconfig_file, context=self.kube_context
        )
        return kubernetes.client.CoreV1Api(api_client)


@dataclass
class PodLoad:
    """What the shard pods measured. `started` is the shared start instant (epoch seconds),
    `halted_at` when they were stopped early; `start_skew_s` is the largest start delay."""

    results: list[ShardResult]
    started: float
    halted_at: float | None
    stopped: bool
    pods: list[str] = field(default_factory=list)

    @property
    def start_skew_s(self) -> float:
        return max((r.start_delay_s for r in self.results), default=0.0)

    def measurement(self, queries: Sequence[EngineQuery], shape: LoadShape) -> Measurement:
        return merge_shard_results(
            queries,
            shape,
            sorted(self.results, key=lambda r: r.shard),
            started=self.started,
            halted_at=self.halted_at,
            stopped=self.stopped,
        )


class _KeptMessagesReader(PipesK8sPodLogsMessageReader):
    """The pod-log reader, keeping its session's handler so the reports stay readable while the
    pod runs and after `run()` raised (a pod deleted on stop)."""

    handler: PipesMessageHandler | None = None

    @contextmanager
    def read_messages(self, handler: PipesMessageHandler) -> Any:
        self.handler = handler
        with super().read_messages(handler) as params:
            yield params


@dataclass
class _Shard:
    index: int
    reader: _KeptMessagesReader
    thread: threading.Thread | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    gone: bool = False  # its pod vanished while its client still waited on it
    missing_since: float | None = None

    def report(self) -> dict[str, Any] | None:
        handler = self.reader.handler
        if handler is None:
            return None
        for message in handler.get_custom_messages():
            if isinstance(message, dict) and message.get("shard") == self.index:
                return message
        return None


def run_pod_shards(
    context: dg.OpExecutionContext | dg.AssetExecutionContext,
    specs: Sequence[object],
    *,
    entry: str,
    run_id: str,
    sut: SutIdentity,
    planned_s: float,
    graceful_stop_s: float,
    pods: PodSettings,
    access: KubeAccess,
    ready_timeout_s: float = 300.0,
    stop: threading.Event | None = None,
    on_start: Callable[[float], None] | None = None,
) -> PodLoad:
    """Runs one pod per spec (shard i gets `specs[i]`), releases them together, and returns
    their results.

    `entry` is the shard entry the pods run, as `module:function` (the native engine's is
    `NATIVE_ENTRY`). `planned_s` and `graceful_stop_s` set the pods' deadline and how long the
    results may take. Raises RunError (or SutError, when a shard could not use the SUT) naming
    the pods and their state; no pod of this call survives it. `on_start` is told the agreed
    start instant (time.time()) as soon as the pods are released.
    """
    if not specs:
        raise RunError("there are no shards to run")
    if pods.password_secret is None and any(spec_needs_password(s) for s in specs):
        raise RunError(
            "the SUT has a password, but pod settings name no Kubernetes secret for it "
            "(password_secret); a password is never put into a pod spec"
        )
    run = _PodRun(context, list(specs), entry, run_id, sut, planned_s, graceful_stop_s, pods,
                  access, ready_timeout_s, stop or threading.Event())  # fmt: skip
    run.on_start = on_start
    return run.execute()


def run_pod_load(
    context: dg.OpExecutionContext | dg.AssetExecutionContext,
    target: SutTarget,
    queries: Sequence[EngineQuery],
    shape: LoadShape,
    *,
    run_id: str,
    pods: PodSettings,
    access: KubeAccess,
    ready_timeout_s: float = 300.0,
    stop: threading.Event | None = None,
    specs: Sequence[object] | None = None,
    entry: str = NATIVE_ENTRY,
    on_start: Callable[[float], None] | None = None,
) -> Measurement:
    """The load as `shape.shards` pods, merged into one measurement: the native engine's unless
    `specs` (one per shard) and their `entry` say otherwise."""
    if specs is None:
        specs = [native_shard_spec(target, queries, shape, i) for i in range(shape.shards)]
    load = run_pod_shards(
        context,
        specs,
        entry=entry,
        run_id=run_id,
        sut=target.identity,
        planned_s=shape.planned_s,
        graceful_stop_s=shape.graceful_stop_s,
        pods=pods,
        access=access,
        ready_timeout_s=ready_timeout_s,
        stop=stop,
        on_start=on_start,
    )
    return load.measurement(queries, shape)


class _PodRun:
    def __init__(
        self,
        context: dg.OpExecutionContext | dg.AssetExecutionContext,
        specs: list[object],
        entry: str,
        run_id: str,
        sut: SutIdentity,
        planned_s: float,
        graceful_stop_s: float,
        settings: PodSettings,
        access: KubeAccess,
        ready_timeout_s: float,
        stop: threading.Event,
    ) -> None:
        self.context = context
        self.specs = specs
        self.entry = entry
        self.run_id = run_id
        self.sut = sut
        self.planned_s = planned_s
        self.graceful_stop_s = graceful_stop_s
        self.settings = settings
        self.access = access
        self.ready_timeout_s = ready_timeout_s
        self.stop = stop
        self.launch = secrets.token_hex(4)
        self.selector = f"{LABEL_LAUNCH}={self.launch}"
        self.api = access.core_api()
        self.shards = [_Shard(i, _KeptMessagesReader()) for i in range(len(specs))]
        self.deleted = False
        self.halted_at: float | None = None
        # The pods were deleted from outside: the load ended early, as if stopped.
        self.interrupted = False
        self.names: dict[int, str] = {}
        self.on_start: Callable[[float], None] | None = None

    def execute(self) -> PodLoad:
        owner = run_worker_owner(self.api, self.access.namespace)
        working_s = (
            self.ready_timeout_s
            + self.settings.start_lead_s
            + self.planned_s
            + self.graceful_stop_s
            + WIND_DOWN_S
        )
        deadline_s = active_deadline_s(working_s, self.settings)
        spec_body = pod_spec(self.settings, deadline_s)
        try:
            for shard in self.shards:
                meta = pod_meta(self.run_id, self.sut, shard.index, self.launch, owner)
                shard.thread = threading.Thread(
                    target=self._run_pod,
                    args=(shard, meta, spec_body, deadline_s),
                    name=f"crucible-pod-shard-{shard.index}",
                    daemon=True,
                )
                shard.thread.start()
            self.context.log.info(
                "run %s: %d shard pods launched for %s", self.run_id, len(self.shards), self.sut
            )
            if not self._wait_until_ready():
                now = time.time()
                return PodLoad([], now, now, True, sorted(self.names.values()))
            started = self._release()
            if self.on_start is not None:
                self.on_start(started)
            self._supervise(started)
            return self._collect(started)
        finally:
            # The clients leave their pods (so a failed pod's state stays readable); every pod
            # of this call goes here, whatever happened.
            self._delete_pods()
            self._join(self.settings.termination_grace_s + 10.0)

    def _run_pod(
        self, shard: _Shard, meta: dict[str, Any], spec: dict[str, Any], deadline_s: int
    ) -> None:
        client = PipesK8sClient(
            message_reader=shard.reader,
            load_incluster_config=self.access.load_incluster_config,
            kubeconfig_file=self.access.kubeconfig_file,
            kube_context=self.access.kube_context,
            poll_interval=self.access.poll_interval_s,
        )
        try:
            client.run(
                context=self.context,
                extras={
                    "entry": self.entry,
                    "shard": shard.index,
                    "spec": shard_spec_to_json(self.specs[shard.index]),
                },
                namespace=self.access.namespace,
                base_pod_meta=meta,
                base_pod_spec=spec,
                pod_wait_timeout=deadline_s,
                delete_pod_on_completion=False,
            )
        except BaseException as error:
            shard.error = error
        finally:
            shard.done.set()

    def _pods(self) -> dict[int, Any]:
        listed = self.api.list_namespaced_pod(self.access.namespace, label_selector=self.selector)
        found: dict[int, Any] = {}
        for pod in listed.items:
            index = int((pod.metadata.labels or {}).get(LABEL_SHARD, -1))
            found[index] = pod
            self.names[index] = pod.metadata.name
        return found

    def _wait_until_ready(self) -> bool:
        """True once every pod is Ready; False when a stop came first."""
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            if self.stop.is_set():
                self.context.log.info("run %s: stopped before the shards started", self.run_id)
                self._delete_pods()
                return False
            pods = self._pods()
            for shard in self.shards:
                pod = pods.get(shard.index)
                if pod is not None and _terminated(pod) is not None:
                    self._fail_early(shard, pod)
                if shard.done.is_set() and shard.error is not None:
                    self._fail_early(shard, pod)
            if all(pods.get(s.index) is not None and _ready(pods[s.index]) for s in self.shards):
                return True
            if time.monotonic() > deadline:
                states = "; ".join(
                    _describe(s.index, pods.get(s.index), s.error) for s in self.shards
                )
                self._delete_pods()
                raise RunError(
                    f"run {self.run_id}: the shard pods were not Ready within "
                    f"{self.ready_timeout_s:g}s: {states}"
                )
            time.sleep(POLL_S)

    def _fail_early(self, shard: _Shard, pod: Any) -> None:
        description = _describe(shard.index, pod, shard.error)
        self._delete_pods()
        terminated = _terminated(pod) if pod is not None else None
        if terminated is not None and terminated.exit_code == EXIT_SUT_ERROR:
            raise SutError(f"run {self.run_id}: {description}")
        raise RunError(f"run {self.run_id}: a shard pod failed before the start: {description}")

    def _release(self) -> float:
        started = time.time() + self.settings.start_lead_s
        self._annotate(ANNOTATION_START_AT, f"{started:.6f}")
        self.context.log.info(
            "run %s: %d shard pods Ready, released to start in %.1fs",
            self.run_id,
            len(self.shards),
            started - time.time(),
        )
        return started

    def _annotate(self, key: str, value: str) -> None:
        body = {"metadata": {"annotations": {key: value}}}
        for _, name in sorted(self.names.items()):
            try:
                self.api.patch_namespaced_pod(
                    name, self.access.namespace, body, _content_type="application/merge-patch+json"
                )
            except kubernetes.client.ApiException as error:
                if error.status != 404:
                    raise

    def _supervise(self, started: float) -> None:
        hold_end = started + self.planned_s
        deadline = hold_end + self.graceful_stop_s + WIND_DOWN_S
        grace_s = self.settings.termination_grace_s
        while not all(s.done.is_set() for s in self.shards):
            now = time.time()
            if self.halted_at is None and (self.stop.is_set() or now > deadline):
                self.halted_at = now
                why = "stop requested" if self.stop.is_set() else "shards overran their schedule"
                self.context.log.info("run %s: %s, halting the shard pods", self.run_id, why)
                # Halting by annotation lets every pod end on its own, so each Pipes client
                # sees its pod terminate; a deleted pod can leave its client waiting for it.
                self._annotate(ANNOTATION_HALT, f"{now:.6f}")
            if self.halted_at is not None and not self.deleted and now > self.halted_at + grace_s:
                self._delete_pods()  # the halt did not reach them in time: SIGTERM
            if self.halted_at is not None and now > self.halted_at + grace_s + WIND_DOWN_S:
                break
            pods = self._pods()
            for shard in self.shards:
                report = shard.report()
                if report is not None and report.get("kind") in ("sut_error", "failed"):
                    self._raise_report(shard, report)
                if shard.done.is_set() and report is None and not self.deleted:
                    description = _describe(shard.index, pods.get(shard.index), shard.error)
                    raise RunError(f"run {self.run_id}: a shard pod failed: {description}")
                if shard.index not in pods and not shard.done.is_set():
                    self._gone(shard, report)
            if all(s.done.is_set() or s.gone for s in self.shards):
                return
            time.sleep(POLL_S)

    def _gone(self, shard: _Shard, report: dict[str, Any] | None) -> None:
        """A pod deleted by someone else (an operator, the garbage collector): its shard got
        SIGTERM and may have reported. The load counts as stopped: the others are halted."""
        # Limitation: PipesK8sClient waits for a pod that vanished as for one not yet launched
        # (up to a day); that thread is left to end with the process, and holds no pod.
        now = time.monotonic()
        if shard.missing_since is None:
            shard.missing_since = now
            return
        if report is None and now - shard.missing_since < LOST_REPORT_S:
            return  # its last log lines may still be on their way
        shard.gone = True
        if self.halted_at is None:
            self.halted_at = time.time()
            self.interrupted = True
            self.context.log.info(
                "run %s: shard pod %s was deleted, halting the others",
                self.run_id,
                self._pod_name(shard.index),
            )
            self._annotate(ANNOTATION_HALT, f"{self.halted_at:.6f}")
        if report is None and not self.stop.is_set():
            name = self._pod_name(shard.index)
            raise RunError(f"run {self.run_id}: shard pod {name} was deleted before it reported")

    def _collect(self, started: float) -> PodLoad:
        results: list[ShardResult] = []
        missing: list[str] = []
        for shard in self.shards:
            report = shard.report()
            if report is not None and report.get("kind") in ("sut_error", "failed"):
                self._raise_report(shard, report)
            if report is None or "result" not in report:
                missing.append(self._pod_name(shard.index))
                continue
            results.append(shard_result_from_json(str(report["result"])))
        stopped = self.stop.is_set() or self.interrupted
        if missing and not stopped:
            raise RunError(f"run {self.run_id}: shard pods {missing} did not report their results")
        load = PodLoad(results, started, self.halted_at, stopped, sorted(self.names.values()))
        self.context.log.info(
            "run %s: %d of %d shard pods reported, start skew %.3fs",
            self.run_id,
            len(results),
            len(self.shards),
            load.start_skew_s,
        )
        return load

    def _raise_report(self, shard: _Shard, report: dict[str, Any]) -> None:
        text = f"shard {shard.index} ({self._pod_name(shard.index)}): {report.get('message', '')}"
        if report.get("kind") == "sut_error":
            raise SutError(f"run {self.run_id}: {text}")
        raise RunError(f"run {self.run_id}: {text}")

    def _pod_name(self, index: int) -> str:
        return self.names.get(index, f"shard {index} (no pod)")

    def _delete_pods(self) -> None:
        """Deletes every pod of this call; each gets SIGTERM and its grace period."""
        self.deleted = True
        try:
            listed = self.api.list_namespaced_pod(
                self.access.namespace, label_selector=self.selector
            )
        except kubernetes.client.ApiException:
            listed = None
        for pod in listed.items if listed is not None else []:
            try:
                self.api.delete_namespaced_pod(pod.metadata.name, self.access.namespace)
            except kubernetes.client.ApiException as error:
                if error.status != 404:
                    raise

    def _join(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for shard in self.shards:
            if shard.thread is not None and not shard.gone:
                shard.thread.join(timeout=max(deadline - time.monotonic(), 0.0))
        # Limitation: PipesK8sClient notices a deleted pod only at its next poll; a thread still
        # waiting here ends by itself then, and holds no pod.


def _in_cluster() -> bool:
    # Kubernetes sets this in every container; PipesK8sClient decides the same way.
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def _ready(pod: Any) -> bool:
    for condition in pod.status.conditions or []:
        if condition.type == "Ready":
            return bool(condition.status == "True")
    return False


def _terminated(pod: Any) -> Any:
    for status in pod.status.container_statuses or []:
        if status.state is not None and status.state.terminated is not None:
            return status.state.terminated
    return None


def _describe(index: int, pod: Any, error: BaseException | None) -> str:
    """One shard pod's name, phase and reason, as an operator wants to read it."""
    if pod is None:
        reason = f": {_first_line(error)}" if error is not None else ""
        return f"shard {index}: no pod{reason}"
    status = pod.status
    parts = [f"shard {index} pod {pod.metadata.name}: {status.phase}"]
    if status.reason:
        parts.append(f"reason {status.reason}")
    if status.message:
        parts.append(status.message)
    for container in status.container_statuses or []:
        state = container.state
        if state is None:
            continue
        if state.waiting is not None:
            parts.append(f"waiting: {state.waiting.reason} {state.waiting.message or ''}".strip())
        elif state.terminated is not None:
            ended = state.terminated
            parts.append(
                f"exited with code {ended.exit_code} ({ended.reason})"
                + (f": {ended.message.strip()}" if ended.message else "")
            )
        elif state.running is not None and not container.ready:
            parts.append(
                "not Ready (readiness probe failing: the shard has not connected and prepared)"
            )
    if not status.container_statuses and status.phase == "Pending":
        parts.append("not started (not scheduled, or pulling its image)")
    return ", ".join(parts)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
