"""The Chaos Mesh backend: each fault is one Chaos Mesh custom resource (chaos-mesh.org/v1alpha1).

Injecting creates the object (NetworkChaos, PodChaos, StressChaos, IOChaos, TimeChaos, DNSChaos)
in the target's namespace and waits until Chaos Mesh reports every selected pod or container
injected (condition AllInjected). Recovering deletes it: Chaos Mesh holds the object with its
finalizer `chaos-mesh/records` until every target is recovered, then it disappears; the backend
waits for that. The object's `duration` is the planned window, so Chaos Mesh recovers the fault by
itself even if every Crucible process died.

Objects carry the labels `crucible/run-id`, `crucible/sut` and `crucible/experiment`, so that
`leftover_objects` finds those of runs that are gone.
"""

import hashlib
import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Any

import kubernetes
import urllib3

from crucible_dagster.chaos.base import CHAOS_MESH, ChaosError, Injected, PlannedFault
from crucible_dagster.launch.pods import LABEL_RUN_ID, LABEL_SUT
from crucible_dagster.suts.base import SutIdentity

GROUP = "chaos-mesh.org"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
LABEL_EXPERIMENT = "crucible/experiment"
# Chaos Mesh keeps a deleted object until its targets are recovered, by this finalizer.
FINALIZER = "chaos-mesh/records"
# Set to "forced", Chaos Mesh drops its finalizer without recovering the targets.
FORCE_CLEAN_ANNOTATION = "chaos-mesh.chaos-mesh.org/cleanFinalizer"

MODES = ("one", "all", "fixed", "fixed-percent", "random-max-percent")
# Spec fields every kind takes, besides its own.
COMMON_FIELDS = ("selector", "mode", "value", "duration", "remoteCluster")
# A Go duration (time.ParseDuration), as Chaos Mesh reads `duration` and `timeOffset`.
GO_DURATION = re.compile(r"^[-+]?(0|((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+)$")
NAME_MAX = 63


@dataclass(frozen=True)
class KindRules:
    """What a kind needs in its spec: required fields, allowed actions, its own field names."""

    plural: str
    required: tuple[str, ...]
    actions: tuple[str, ...]
    fields: tuple[str, ...]


# Written from the Chaos Mesh v2.8 API (CRDs and admission webhooks): the fields a kind cannot
# do without, its actions, and its own spec fields (for spotting a misspelt parameter, which the
# API server would otherwise drop without a word).
KINDS: dict[str, KindRules] = {
    kind: KindRules(kind.lower(), tuple(required.split()), tuple(actions.split()),
                    tuple(fields.split()))
    for kind, required, actions, fields in (
        ("NetworkChaos", "action", "netem delay loss duplicate corrupt partition bandwidth",
         "action bandwidth corrupt delay device direction duplicate externalTargets loss rate "
         "target targetDevice"),
        ("PodChaos", "action", "pod-kill pod-failure container-kill",
         "action containerNames gracePeriod"),
        ("StressChaos", "stressors", "", "containerNames stressngStressors stressors"),
        ("IOChaos", "action volumePath", "latency fault attrOverride mistake",
         "action attr containerNames delay errno methods mistake path percent volumePath"),
        ("TimeChaos", "timeOffset", "", "clockIds containerNames timeOffset"),
        ("DNSChaos", "action", "error random", "action containerNames patterns"),
    )
}  # fmt: skip

# NetworkChaos actions that do nothing without their own block of settings.
NETWORK_ACTION_BLOCKS = ("delay", "loss", "duplicate", "corrupt", "bandwidth")

POLL_S = 0.5


class ChaosMeshBackend:
    """Injects faults as Chaos Mesh objects through the Kubernetes API.

    The API is reached as `KubeAccess` reaches it: `kubeconfig_file` and `kube_context` when
    given, in-cluster config inside a pod when neither is, else the default kubeconfig; tests
    pass an `api_client`. Nothing is contacted before the first inject or recover.
    """

    name = CHAOS_MESH

    def __init__(
        self,
        *,
        kubeconfig_file: str | None = None,
        kube_context: str | None = None,
        load_incluster_config: bool | None = None,
        api_client: kubernetes.client.ApiClient | None = None,
        inject_timeout_s: float = 60.0,
        recover_timeout_s: float = 120.0,
        poll_interval_s: float = POLL_S,
    ) -> None:
        self.kubeconfig_file = kubeconfig_file
        self.kube_context = kube_context
        self.load_incluster_config = load_incluster_config
        self.inject_timeout_s = inject_timeout_s
        self.recover_timeout_s = recover_timeout_s
        self.poll_interval_s = poll_interval_s
        self._api_client = api_client

    # ---- the protocol

    def problems(self, fault: PlannedFault) -> list[str]:
        rules = KINDS.get(fault.fault_type)
        if rules is None:
            return [f"{fault.fault_type!r} is not a Chaos Mesh kind: expected one of "
                    f"{', '.join(KINDS)}"]  # fmt: skip
        problems = _target_problems(fault)
        if problems:
            return problems
        return spec_problems(fault.fault_type, custom_resource(fault)["spec"])

    def reachable(self, fault: PlannedFault) -> str | None:
        """Why this run could not create `fault`'s object (no access to the API, Chaos Mesh not
        installed, no permission to list its kind in the namespace), or None; creates nothing."""
        recipe = self.planned_recipe(fault)
        try:
            api = self._api(recipe)
            api.list_namespaced_custom_object(GROUP, VERSION, recipe["namespace"],
                                              recipe["plural"], limit=1)  # fmt: skip
        except ChaosError as error:
            return str(error)
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return (f"Chaos Mesh is not installed where {recipe['namespace']!r} is: the "
                        f"Kubernetes API has no {recipe['plural']}.{GROUP}/{VERSION}")  # fmt: skip
            return _refused(_Ref.of(recipe), "list", error)
        except urllib3.exceptions.HTTPError as error:
            return _unreachable(api, error)
        return None

    def planned_recipe(self, fault: PlannedFault) -> dict[str, Any]:
        """The recipe, known before the object is created: its name is the fault's own."""
        return self._recipe(custom_resource(fault))

    def inject(self, fault: PlannedFault) -> Injected:
        problems = self.problems(fault)
        if problems:
            raise ChaosError(f"cannot inject {fault.name!r}: " + "; ".join(problems))
        body = custom_resource(fault)
        recipe = self._recipe(body)
        ref = _Ref.of(recipe)
        api = self._api(recipe)
        try:
            api.create_namespaced_custom_object(
                GROUP, VERSION, ref.namespace, ref.plural, body, field_validation="Strict"
            )
        except kubernetes.client.ApiException as error:
            raise ChaosError(_create_refused(ref, error)) from None
        except urllib3.exceptions.HTTPError as error:
            raise ChaosError(_unreachable(api, error)) from None

        try:
            status = self._wait_injected(api, ref)
        except ChaosError as error:
            # The timeline recovers only what it was told is injected: undo this one here.
            cleanup = self._cleanup_after_failure(api, ref)
            raise ChaosError(f"{error} {cleanup}") from None
        return Injected(status=status, recipe=recipe)

    def recover(self, recipe: Mapping[str, Any]) -> str:
        ref = _Ref.of(recipe)
        api = self._api(recipe)
        try:
            api.delete_namespaced_custom_object(GROUP, VERSION, ref.namespace, ref.plural, ref.name)
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return f"{ref}: already gone"
            raise ChaosError(_refused(ref, "delete", error)) from None
        except urllib3.exceptions.HTTPError as error:
            raise ChaosError(_unreachable(api, error)) from None
        return self._wait_gone(api, ref, self.recover_timeout_s)

    # ---- building blocks

    def _recipe(self, body: Mapping[str, Any]) -> dict[str, Any]:
        kind = str(body["kind"])
        meta = body["metadata"]
        return {
            "backend": CHAOS_MESH,
            "group": GROUP,
            "version": VERSION,
            "plural": KINDS[kind].plural,
            "kind": kind,
            "namespace": meta["namespace"],
            "name": meta["name"],
            "kubeconfig_file": self.kubeconfig_file,
            "kube_context": self.kube_context,
        }

    def _api(self, recipe: Mapping[str, Any]) -> kubernetes.client.CustomObjectsApi:
        """The backend's own access when it has one, else the access the recipe was made with."""
        if self._api_client is not None:
            return kubernetes.client.CustomObjectsApi(self._api_client)
        kubeconfig_file = self.kubeconfig_file
        kube_context = self.kube_context
        if kubeconfig_file is None and kube_context is None and not self.load_incluster_config:
            kubeconfig_file = recipe.get("kubeconfig_file") or None
            kube_context = recipe.get("kube_context") or None
        client = api_client(kubeconfig_file, kube_context, self.load_incluster_config)
        return kubernetes.client.CustomObjectsApi(client)

    def _get(self, api: kubernetes.client.CustomObjectsApi, ref: "_Ref") -> dict[str, Any] | None:
        try:
            found = api.get_namespaced_custom_object(
                GROUP, VERSION, ref.namespace, ref.plural, ref.name
            )
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return None
            raise ChaosError(_refused(ref, "get", error)) from None
        except urllib3.exceptions.HTTPError as error:
            raise ChaosError(_unreachable(api, error)) from None
        return dict(found)

    def _wait_injected(self, api: kubernetes.client.CustomObjectsApi, ref: "_Ref") -> str:
        deadline = time.monotonic() + self.inject_timeout_s
        while True:
            found = self._get(api, ref)
            if found is None:
                raise ChaosError(f"{ref} vanished before Chaos Mesh injected it")
            status = found.get("status") or {}
            if injected(status):
                return status_summary(status)
            failure = apply_failure(status)
            if failure is not None:
                raise ChaosError(f"Chaos Mesh could not inject {ref}: {failure} "
                                 f"({status_summary(status)})")  # fmt: skip
            if time.monotonic() > deadline:
                raise ChaosError(self._not_injected(ref, found))
            time.sleep(self.poll_interval_s)

    def _not_injected(self, ref: "_Ref", found: Mapping[str, Any]) -> str:
        status = found.get("status") or {}
        waited = f"within {self.inject_timeout_s:g}s"
        if not status:
            return (f"{ref} got no status {waited}: is the Chaos Mesh controller manager "
                    "running?")  # fmt: skip
        if condition(status, "Selected") != "True":
            selector = (found.get("spec") or {}).get("selector") or {}
            return (f"Chaos Mesh selected no target for {ref} {waited} (condition Selected is "
                    f"not True): no running pod in namespaces {selector.get('namespaces')} has "
                    f"the labels {selector.get('labelSelectors')}")  # fmt: skip
        return f"Chaos Mesh did not inject every target of {ref} {waited}: {status_summary(status)}"

    def _wait_gone(
        self, api: kubernetes.client.CustomObjectsApi, ref: "_Ref", timeout_s: float
    ) -> str:
        deadline = time.monotonic() + timeout_s
        last: Mapping[str, Any] = {}
        while True:
            found = self._get(api, ref)
            if found is None:
                summary = status_summary(last) if last else "no status seen"
                return f"{ref} recovered and deleted ({summary})"
            last = found.get("status") or last
            if time.monotonic() > deadline:
                raise ChaosError(
                    f"{ref} is still there {timeout_s:g}s after it was deleted: Chaos Mesh has "
                    f"not recovered every target ({status_summary(last)}). See why with "
                    f"`kubectl describe {ref.plural} {ref.name} -n {ref.namespace}`; once the "
                    f"targets are healthy, or to give up recovering them, remove it with "
                    f"`kubectl annotate {ref.plural} {ref.name} -n {ref.namespace} "
                    f"{FORCE_CLEAN_ANNOTATION}=forced`"
                )
            time.sleep(self.poll_interval_s)

    def _cleanup_after_failure(self, api: kubernetes.client.CustomObjectsApi, ref: "_Ref") -> str:
        try:
            api.delete_namespaced_custom_object(GROUP, VERSION, ref.namespace, ref.plural, ref.name)
            self._wait_gone(api, ref, self.recover_timeout_s)
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return "The object is gone."
            return f"Deleting the object failed too: {_refused(ref, 'delete', error)}"
        except (ChaosError, urllib3.exceptions.HTTPError) as error:
            return f"Deleting the object failed too: {error}"
        return "The object was deleted and its targets recovered."


def api_client(
    kubeconfig_file: str | None = None,
    kube_context: str | None = None,
    load_incluster_config: bool | None = None,
) -> kubernetes.client.ApiClient:
    """A client of the Kubernetes API, chosen as `KubeAccess.core_api` chooses it."""
    unset = kubeconfig_file is None and kube_context is None
    in_cluster = load_incluster_config is None and unset and _in_cluster()
    try:
        if load_incluster_config or in_cluster:
            configuration = kubernetes.client.Configuration()
            kubernetes.config.load_incluster_config(client_configuration=configuration)
            return kubernetes.client.ApiClient(configuration)
        return kubernetes.config.new_client_from_config(
            config_file=kubeconfig_file, context=kube_context
        )
    except (kubernetes.config.ConfigException, OSError) as error:
        where = kubeconfig_file or "the default kubeconfig"
        raise ChaosError(f"cannot configure access to the Kubernetes API ({where}, context "
                         f"{kube_context or 'current'}): {error}") from None  # fmt: skip


def _in_cluster() -> bool:
    # Kubernetes sets this in every container; KubeAccess decides the same way.
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


# ---- the object


def custom_resource(fault: PlannedFault) -> dict[str, Any]:
    """The Chaos Mesh object of `fault`: its kind, name, labels and spec. The spec is the
    target's selector, mode `all` and the planned duration, with the experiment's parameters
    on top (a parameter wins; `selector` is merged key by key)."""
    namespace = str(fault.target.get("namespace") or "")
    spec: dict[str, Any] = {
        "selector": {
            "namespaces": [namespace],
            "labelSelectors": dict(fault.target.get("selector") or {}),
        },
        "mode": "all",
        "duration": go_duration(fault.duration_s),
    }
    for key, value in fault.parameters.items():
        if key == "selector" and isinstance(value, Mapping):
            spec["selector"] = _deep_merge(spec["selector"], value)
        else:
            spec[key] = value
    return {
        "apiVersion": API_VERSION,
        "kind": fault.fault_type,
        "metadata": {
            "name": object_name(fault.run_id, fault.name),
            "namespace": namespace,
            "labels": {
                LABEL_RUN_ID: label_value(fault.run_id),
                LABEL_SUT: sut_label(fault.sut_key),
                LABEL_EXPERIMENT: label_value(fault.name),
            },
        },
        "spec": spec,
    }


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def go_duration(seconds: float) -> str:
    """Seconds as a Go duration, to the millisecond: 30 -> "30s", 1.5 -> "1.5s"."""
    millis = round(seconds * 1000)
    whole, rest = divmod(millis, 1000)
    return f"{whole}s" if rest == 0 else f"{whole}.{rest:03d}".rstrip("0") + "s"


def object_name(run_id: str, experiment: str) -> str:
    """A DNS-1123 name of at most 63 characters, unique per run and experiment: readable when it
    can be, with a hash of the exact names when cut short or when spelling it changed them."""
    readable = _dns_label(f"crucible-{run_id}-{experiment}")
    # Run ids differ in their timestamp and random part whatever their spelling; experiment
    # names like `db_down` and `db-down` would not, so a changed one takes the hash.
    if _dns_label(experiment) == experiment and len(readable) <= NAME_MAX:
        return readable
    digest = hashlib.sha256(f"{run_id}\0{experiment}".encode()).hexdigest()[:8]
    return readable[: NAME_MAX - len(digest) - 1].rstrip("-") + "-" + digest


def _dns_label(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")


_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def label_value(text: str) -> str:
    """`text` as a valid Kubernetes label value (hashed when too long)."""
    readable = _LABEL_UNSAFE.sub("-", text).strip("-_.")
    if len(readable) <= NAME_MAX:
        return readable
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return readable[: NAME_MAX - len(digest) - 1].rstrip("-_.") + "-" + digest


def sut_label(sut_key: str) -> str:
    """The `crucible/sut` label of a SUT key, the same value the shard pods carry."""
    match = re.fullmatch(r"([^:/]+)://(.+):(\d+)/(.*)", sut_key)
    if match is None:
        return label_value(sut_key)
    sut_type, host, port, database = match.groups()
    return SutIdentity(sut_type, host, int(port), database).tag_value


# ---- checks without a cluster


def _target_problems(fault: PlannedFault) -> list[str]:
    problems = []
    if not fault.target.get("namespace"):
        problems.append("target.namespace is missing: expected the namespace of the pods")
    if not fault.target.get("selector"):
        problems.append("target.selector is missing: expected the labels of the pods")
    return problems


def spec_problems(kind: str, spec: Mapping[str, Any]) -> list[str]:
    """What is wrong with a spec of `kind`, as far as it can be told without a cluster."""
    rules = KINDS[kind]
    problems: list[str] = []
    known = (*COMMON_FIELDS, *rules.fields)
    for key in spec:
        if key not in known:
            close = get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"parameters.{key}: {kind} has no such field{hint}; expected one of "
                            f"{', '.join(sorted(known))}")  # fmt: skip

    for key in rules.required:
        if kind == "StressChaos" and (spec.get("stressors") or spec.get("stressngStressors")):
            continue
        if spec.get(key) in (None, "", {}, []):
            problems.append(f"parameters.{key}: {kind} needs {_what(kind, key)}")
    action = spec.get("action")
    if rules.actions and action not in (None, "") and action not in rules.actions:
        problems.append(f"parameters.action: {action!r} is not a {kind} action: expected one "
                        f"of {', '.join(rules.actions)}")  # fmt: skip
    if kind == "NetworkChaos" and action in NETWORK_ACTION_BLOCKS and not spec.get(action):
        problems.append(f"parameters.{action}: NetworkChaos action {action!r} needs its settings "
                        f"in parameters.{action}")  # fmt: skip
    if kind == "PodChaos" and action == "container-kill" and not spec.get("containerNames"):
        problems.append("parameters.containerNames: PodChaos action 'container-kill' needs the "
                        "names of the containers to kill")  # fmt: skip
    stressors = spec.get("stressors")
    if (
        kind == "StressChaos"
        and stressors
        and not (isinstance(stressors, Mapping) and ({"cpu", "memory"} & set(stressors)))
    ):
        problems.append("parameters.stressors: expected a mapping with cpu and/or memory "
                        "stressors, e.g. {cpu: {workers: 2, load: 80}}")  # fmt: skip
    if kind == "TimeChaos" and "timeOffset" in spec and not _is_go_duration(spec["timeOffset"]):
        problems.append(f"parameters.timeOffset: {spec['timeOffset']!r} is not a Go duration: "
                        "expected e.g. '-10m' or '1h30m'")  # fmt: skip
    return problems + _common_problems(spec)


def _common_problems(spec: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    mode = spec.get("mode")
    if mode not in MODES:
        problems.append(f"parameters.mode: {mode!r} is not a mode: expected one of "
                        f"{', '.join(MODES)}")  # fmt: skip
    value = spec.get("value")
    count = int(value) if isinstance(value, str) and value.isascii() and value.isdigit() else None
    if mode == "fixed" and not (count is not None and count > 0):
        problems.append(f"parameters.value: mode 'fixed' needs value, the number of pods as a "
                        f"string greater than 0 (e.g. '2'), not {value!r}")  # fmt: skip
    if mode in ("fixed-percent", "random-max-percent") and not (
        count is not None and 0 < count <= 100
    ):
        problems.append(f"parameters.value: mode {mode!r} needs value, a percentage as a string "
                        f"in (0, 100] (e.g. '50'), not {value!r}")  # fmt: skip
    duration = spec.get("duration")
    if duration is not None and not (_is_go_duration(duration) and duration[:1] not in "-+"):
        problems.append(f"parameters.duration: {duration!r} is not a Go duration: expected e.g. "
                        "'30s' or '1m30s' (the plan's schedule sets it; leave it out)")  # fmt: skip
    selector = spec.get("selector")
    if not isinstance(selector, Mapping):
        problems.append("parameters.selector: expected a mapping (namespaces, labelSelectors...)")
    else:
        labels = selector.get("labelSelectors")
        if labels is not None and not (
            isinstance(labels, Mapping) and all(isinstance(v, str) for v in labels.values())
        ):
            problems.append("parameters.selector.labelSelectors: expected a mapping of label "
                            "names to string values")  # fmt: skip
        namespaces = selector.get("namespaces")
        if namespaces is not None and not (
            isinstance(namespaces, list) and all(isinstance(n, str) for n in namespaces)
        ):
            problems.append("parameters.selector.namespaces: expected a list of namespace names")
    return problems


def _what(kind: str, key: str) -> str:
    rules = KINDS[kind]
    if key == "action":
        return f"an action: one of {', '.join(rules.actions)}"
    return {
        "stressors": "stressors (or stressngStressors): e.g. {cpu: {workers: 2, load: 80}} or "
        "{memory: {workers: 1, size: 256MB}}",
        "volumePath": "volumePath, the mount point of the volume to inject into (e.g. /var/lib)",
        "timeOffset": "timeOffset, a Go duration to shift the clock by (e.g. '-10m')",
    }.get(key, key)


def _is_go_duration(value: Any) -> bool:
    return isinstance(value, str) and GO_DURATION.match(value) is not None


# ---- reading a status


def condition(status: Mapping[str, Any], kind: str) -> str | None:
    """The status ("True", "False") of one condition of a chaos object's status, if present."""
    for item in status.get("conditions") or []:
        if item.get("type") == kind:
            return str(item.get("status"))
    return None


def _records(status: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list((status.get("experiment") or {}).get("containerRecords") or [])


def injected(status: Mapping[str, Any]) -> bool:
    """Whether every target was injected: AllInjected, or (a window shorter than a poll) every
    record counted an injection already."""
    if condition(status, "AllInjected") == "True":
        return True
    records = _records(status)
    return bool(records) and all(int(r.get("injectedCount") or 0) > 0 for r in records)


def apply_failure(status: Mapping[str, Any]) -> str | None:
    """The message of a failed injection, when a target's latest event says so."""
    for record in _records(status):
        events = record.get("events") or []
        last = events[-1] if events else None
        if last and last.get("operation") == "Apply" and last.get("type") == "Failed":
            return f"{record.get('id')}: {last.get('message') or 'failed'}"
    return None


def status_summary(status: Mapping[str, Any]) -> str:
    """A chaos object's status in one line: its true conditions and its targets' phases."""
    conditions = [
        str(c.get("type")) for c in status.get("conditions") or [] if c.get("status") == "True"
    ]
    records = _records(status)
    desired = (status.get("experiment") or {}).get("desiredPhase") or "unset"
    targets = f"{len(records)} target" + ("" if len(records) == 1 else "s")
    if records:
        phases = Counter(str(r.get("phase")) for r in records)
        counts = ", ".join(f"{n} {phase}" for phase, n in sorted(phases.items()))
        shown = ", ".join(str(r.get("id")) for r in records[:3])
        more = f" and {len(records) - 3} more" if len(records) > 3 else ""
        targets += f" ({counts}: {shown}{more})"
    true = "+".join(sorted(conditions)) or "none true"
    return f"conditions {true}; desired phase {desired}; {targets}"


# ---- errors


@dataclass(frozen=True)
class _Ref:
    kind: str
    plural: str
    namespace: str
    name: str

    @classmethod
    def of(cls, recipe: Mapping[str, Any]) -> "_Ref":
        missing = [
            k for k in ("backend", "kind", "plural", "namespace", "name") if not recipe.get(k)
        ]
        if recipe.get("backend") != CHAOS_MESH or missing:
            raise ChaosError(
                f"not a recipe of the Chaos Mesh backend (backend {recipe.get('backend')!r}, "
                f"missing {', '.join(missing) or 'nothing'}): expected backend {CHAOS_MESH!r} "
                "with kind, plural, namespace and name"
            )
        return cls(str(recipe["kind"]), str(recipe["plural"]), str(recipe["namespace"]),
                   str(recipe["name"]))  # fmt: skip

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


def _api_message(error: kubernetes.client.ApiException) -> str:
    try:
        body = json.loads(error.body or "")
    except ValueError:
        return (str(error.body or error.reason or "")).strip()
    return str(body.get("message") or body) if isinstance(body, dict) else str(body)


def _create_refused(ref: _Ref, error: kubernetes.client.ApiException) -> str:
    message = _api_message(error)
    if error.status == 404:
        if f'namespaces "{ref.namespace}" not found' in message:
            return f"cannot create {ref}: the namespace {ref.namespace!r} does not exist"
        return (f"cannot create {ref}: the Kubernetes API does not know {ref.plural}.{GROUP} "
                f"(404): Chaos Mesh is not installed in this cluster, or not its {ref.kind} "
                "CRD; install Chaos Mesh (its Helm chart installs the CRDs)")  # fmt: skip
    if error.status == 409:
        return (f"cannot create {ref}: an object of that name exists already (from an earlier "
                f"attempt of this run); recover it first, or `kubectl delete {ref.plural} "
                f"{ref.name} -n {ref.namespace}`")  # fmt: skip
    if error.status in (400, 422):
        return f"the Kubernetes API refused {ref} as invalid ({error.status}): {message}"
    return _refused(ref, "create", error)


def _refused(ref: _Ref, verb: str, error: kubernetes.client.ApiException) -> str:
    message = _api_message(error)
    if error.status == 403 and "admission webhook" in message:
        return f"Chaos Mesh refused {ref} (its admission webhook): {message}"
    if error.status == 403:
        return (f"not allowed to {verb} {ref} (403 Forbidden): the service account needs the "
                f"RBAC verb {verb!r} on resource {ref.plural!r} in API group {GROUP!r} in "
                f"namespace {ref.namespace!r} (a Role or ClusterRole with verbs create, get, "
                f"list, delete on {ref.plural}); the API said: {message}")  # fmt: skip
    if error.status == 401:
        return f"the Kubernetes API did not accept Crucible's credentials (401) to {verb} {ref}"
    return f"could not {verb} {ref}: the Kubernetes API answered {error.status}: {message}"


def _unreachable(api: kubernetes.client.CustomObjectsApi, error: Exception) -> str:
    host = api.api_client.configuration.host
    return f"cannot reach the Kubernetes API at {host}: {type(error).__name__}: {error}"


# ---- leftovers


def leftover_objects(
    api: kubernetes.client.CustomObjectsApi,
    namespace: str | None,
    live_run_ids: Iterable[str],
    kinds: Iterable[str] = tuple(KINDS),
) -> list[dict[str, Any]]:
    """Recipes of the Crucible chaos objects (in `namespace`, or every namespace for None) whose
    run is not among `live_run_ids`, for a sweeper to `recover`. Kinds whose CRD is not
    installed are skipped. Each recipe also names its `run_id` (the label's value)."""
    live = {label_value(run_id) for run_id in live_run_ids}
    found: list[dict[str, Any]] = []
    for kind in kinds:
        plural = KINDS[kind].plural
        try:
            if namespace is None:
                listed = api.list_cluster_custom_object(
                    GROUP, VERSION, plural, label_selector=LABEL_RUN_ID
                )
            else:
                listed = api.list_namespaced_custom_object(
                    GROUP, VERSION, namespace, plural, label_selector=LABEL_RUN_ID
                )
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                continue
            where = _Ref(kind, plural, namespace or "*", "*")
            raise ChaosError(_refused(where, "list", error)) from None
        for item in listed.get("items") or []:
            meta = item.get("metadata") or {}
            run_id = (meta.get("labels") or {}).get(LABEL_RUN_ID, "")
            if run_id in live:
                continue
            found.append({"backend": CHAOS_MESH, "group": GROUP, "version": VERSION,
                          "plural": plural, "kind": kind, "namespace": meta.get("namespace"),
                          "name": meta.get("name"), "run_id": run_id})  # fmt: skip
    return found
