"""A stand-in for a Kubernetes API server with Chaos Mesh installed. It is NOT Kubernetes.

There is no cluster on this platform, so the Chaos Mesh backend is tested against this: an HTTP
server on 127.0.0.1 (ephemeral port) that answers the real `kubernetes` client for the custom
objects of chaos-mesh.org/v1alpha1 (create, get, list with a labelSelector, delete) and plays
the Chaos Mesh controller.

What it covers:
- every created object is checked as the API server checks it: against the CRD's
  openAPIV3Schema of its kind (tests/data/chaos_mesh/<kind>.yaml, with jsonschema; 422 Invalid
  with the schema error), unknown fields refused under `fieldValidation=Strict` (400), and a
  few checks of Chaos Mesh's admission webhook (Go durations, `value` with the mode, stressors;
  403 "admission webhook ... denied the request", as controller-runtime answers);
- the controller: it adds the finalizer `chaos-mesh/records`, selects targets among the pods
  given to the stand-in (namespace and labelSelectors), and after `inject_delay_s` marks every
  record Injected; conditions Selected / AllInjected / AllRecovered / Paused follow the records
  as Chaos Mesh computes them. The records have the shape of the recorded statuses in
  tests/data/chaos_mesh/status/ (pods or containers, per kind). Once `duration` has passed the
  desired phase becomes Stop and every record is recovered;
- delete: the object stays with a deletionTimestamp and its finalizer while it is recovered
  (`recover_delay_s`), shows AllRecovered, then goes;
- failures for tests: no matching pods (Selected stays False), `fail_apply` (records keep a
  Failed Apply event), `stuck` (a deleted object is never recovered), `forbidden` verbs (403 as
  RBAC answers), `installed=False` (404 "page not found" for the group, as an API server
  without the CRDs).

What it does not cover: watches, patches, updates, status subresources, authentication, pause
annotations, Schedules and Workflows, and any real fault.
"""

import contextlib
import copy
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import jsonschema
import yaml

from tests.k8s_standin import labels_match, write_kubeconfig

DATA = Path(__file__).parent / "data" / "chaos_mesh"
GROUP = "chaos-mesh.org"
VERSION = "v1alpha1"
KINDS = ("NetworkChaos", "PodChaos", "StressChaos", "IOChaos", "TimeChaos", "DNSChaos")
FINALIZER = "chaos-mesh/records"
TICK_S = 0.05
FINALIZER_DELAY_S = 0.2
GO_DURATION = re.compile(r"^[-+]?(0|((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+)$")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def schema(kind: str) -> dict[str, Any]:
    """The CRD's openAPIV3Schema of `kind`."""
    return dict(yaml.safe_load((DATA / f"{kind.lower()}.yaml").read_text()))


def recorded_status(kind: str) -> dict[str, Any]:
    """The recorded status example of `kind`."""
    return dict(yaml.safe_load((DATA / "status" / f"{kind.lower()}.yaml").read_text()))


def go_seconds(text: str) -> float:
    return sum(
        float(n) * _UNITS[u]
        for n, u in re.findall(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)", text)
    )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Pod:
    """A pod the controller can select: its namespace, name, labels and container names."""

    namespace: str
    name: str
    labels: dict[str, str]
    containers: tuple[str, ...] = ("main",)


@dataclass
class _Object:
    body: dict[str, Any]
    created: float = field(default_factory=time.monotonic)
    deleted: float | None = None
    run_since: float | None = None
    stop_since: float | None = None
    recovered_at: float | None = None

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    @property
    def status(self) -> dict[str, Any]:
        return self.body.setdefault("status", {})


class StandinChaosMesh:
    """The stand-in API server; `start()` it, point a kubeconfig at `url`, `stop()` it."""

    def __init__(
        self,
        *,
        pods: list[Pod] | None = None,
        inject_delay_s: float = 0.3,
        recover_delay_s: float = 0.3,
        fail_apply: str | None = None,
        stuck: bool = False,
        forbidden: set[tuple[str, str]] | None = None,
        installed: bool = True,
    ) -> None:
        """`forbidden` holds (verb, plural) pairs the caller's RBAC does not grant."""
        self.pods = list(pods or [])
        self.inject_delay_s = inject_delay_s
        self.recover_delay_s = recover_delay_s
        self.fail_apply = fail_apply
        self.stuck = stuck
        self.forbidden = set(forbidden or ())
        self.installed = installed
        self.objects: dict[tuple[str, str, str], _Object] = {}
        self.lock = threading.RLock()
        self.requests: list[tuple[str, str]] = []
        # Every object as created (before the controller touched it).
        self.created: list[dict[str, Any]] = []
        self.plurals = {kind.lower(): kind for kind in KINDS}
        self.validators = {kind: jsonschema.Draft7Validator(schema(kind)) for kind in KINDS}
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._controller: threading.Thread | None = None

    # ---- lifecycle

    def start(self) -> "StandinChaosMesh":
        handler = type("Handler", (_Handler,), {"standin": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, name="chaos-mesh-standin", daemon=True
        ).start()
        self._controller = threading.Thread(target=self._reconcile_loop, daemon=True)
        self._controller.start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        return write_kubeconfig(path, self.url, namespace)

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._controller is not None:
            self._controller.join(timeout=5)

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            found = self.objects.get((plural, namespace, name))
            return copy.deepcopy(found.body) if found is not None else None

    # ---- the API server

    def create(
        self, namespace: str, plural: str, body: Any, strict: bool
    ) -> tuple[int, dict[str, Any]]:
        kind = self.plurals.get(plural)
        if kind is None:
            return 404, _status(404, "NotFound", "the server could not find the requested resource")
        if not isinstance(body, dict):
            return 400, _status(400, "BadRequest", "the body is not a JSON object")
        name = str((body.get("metadata") or {}).get("name") or "")
        if body.get("kind") != kind or body.get("apiVersion") != f"{GROUP}/{VERSION}":
            return 400, _status(400, "BadRequest", f"the body is a {body.get('apiVersion')} "
                                f"{body.get('kind')}, not a {GROUP}/{VERSION} {kind}")  # fmt: skip
        meta = body["metadata"]
        problem = _metadata_problem(meta, namespace)
        if problem is not None:
            return 422, _invalid(kind, name, problem)
        if strict:
            unknown = _unknown_fields(self.validators[kind].schema, body, "")
            if unknown:
                fields = ", ".join(f'unknown field "{u}"' for u in unknown)
                message = f'{kind} in version "{VERSION}" cannot be handled as a {kind}: '
                return 400, _status(400, "BadRequest", f"{message}strict decoding error: {fields}")
        errors = sorted(self.validators[kind].iter_errors(body), key=lambda e: list(e.path))
        if errors:
            causes = "; ".join(f"{_path(e)}: {e.message}" for e in errors)
            return 422, _invalid(kind, name, causes)
        denied = _webhook_denial(kind, body.get("spec") or {})
        if denied:
            return 403, _status(403, "Forbidden", f'admission webhook "v{plural}.kb.io" denied '
                                f"the request: [{'; '.join(denied)}]")  # fmt: skip
        with self.lock:
            if (plural, namespace, name) in self.objects:
                return 409, _status(409, "AlreadyExists",
                                    f'{plural}.{GROUP} "{name}" already exists')  # fmt: skip
            self.created.append(copy.deepcopy(body))
            stored = copy.deepcopy(body)
            stored["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()),
                                      resourceVersion="1", generation=1,
                                      creationTimestamp=_now())  # fmt: skip
            stored.pop("status", None)
            self.objects[(plural, namespace, name)] = _Object(stored)
            return 201, copy.deepcopy(stored)

    def delete(self, namespace: str, plural: str, name: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            found = self.objects.get((plural, namespace, name))
            if found is None:
                return 404, _status(404, "NotFound", f'{plural}.{GROUP} "{name}" not found')
            meta = found.body["metadata"]
            if not meta.get("finalizers"):
                del self.objects[(plural, namespace, name)]
                return 200, _status_success(name, plural)
            if found.deleted is None:
                found.deleted = time.monotonic()
                meta["deletionTimestamp"] = _now()
                meta["deletionGracePeriodSeconds"] = 0
            return 200, copy.deepcopy(found.body)

    def select(
        self, namespace: str | None, plural: str, labels: str | None
    ) -> list[dict[str, Any]]:
        with self.lock:
            return [
                copy.deepcopy(o.body)
                for (p, ns, _), o in self.objects.items()
                if p == plural and namespace in (None, ns) and labels_match(o.body, labels)
            ]

    # ---- the controller

    def _reconcile_loop(self) -> None:
        while not self._stopping.is_set():
            with self.lock:
                for key, obj in list(self.objects.items()):
                    if self._reconcile(obj):
                        del self.objects[key]
            time.sleep(TICK_S)

    def _reconcile(self, obj: _Object) -> bool:
        """One pass of the controller over `obj`; True when it is to be removed."""
        meta = obj.body["metadata"]
        if FINALIZER not in (meta.get("finalizers") or []) and obj.deleted is None:
            meta["finalizers"] = [*meta.get("finalizers", []), FINALIZER]
        status = obj.status
        experiment = status.setdefault("experiment", {})
        now = time.monotonic()
        spec = obj.body.get("spec") or {}
        duration = spec.get("duration")
        ends = obj.created + go_seconds(str(duration)) if duration else None
        if obj.deleted is not None:
            obj.stop_since = min(obj.deleted, ends or obj.deleted)
        elif ends is not None and now >= ends:
            obj.stop_since = ends
        experiment["desiredPhase"] = "Stop" if obj.stop_since is not None else "Run"
        if "containerRecords" not in experiment:
            targets = self._targets(obj)
            if targets:
                experiment["containerRecords"] = [
                    {"id": target, "selectorKey": ".", "phase": "Not Injected",
                     "injectedCount": 0, "recoveredCount": 0}
                    for target in targets
                ]  # fmt: skip
        records = experiment.get("containerRecords") or []
        for record in records:
            self._step(obj, record, now)
        status["conditions"] = _conditions(records)
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
        # Chaos Mesh drops its finalizer once every record is recovered, in a later reconcile
        # than the one that recovered them: the recovered status shows for a moment.
        if obj.deleted is None or self.stuck:
            return False
        if not all(r["phase"] == "Not Injected" for r in records):
            return False
        obj.recovered_at = obj.recovered_at or now
        return now - obj.recovered_at >= FINALIZER_DELAY_S

    def _step(self, obj: _Object, record: dict[str, Any], now: float) -> None:
        desired = obj.status["experiment"]["desiredPhase"]
        events = record.setdefault("events", [])
        if desired == "Run" and record["phase"] == "Not Injected":
            obj.run_since = obj.run_since or now
            if now - obj.run_since < self.inject_delay_s:
                return
            if self.fail_apply is not None:
                if not events or events[-1]["type"] != "Failed":
                    events.append({"type": "Failed", "operation": "Apply",
                                   "message": self.fail_apply, "timestamp": _now()})  # fmt: skip
                return
            record["phase"] = "Injected"
            record["injectedCount"] += 1
            events.append({"type": "Succeeded", "operation": "Apply", "timestamp": _now()})
        elif desired == "Stop" and record["phase"] == "Injected":
            if self.stuck and obj.deleted is not None:
                return
            if now - (obj.stop_since or now) < self.recover_delay_s:
                return
            record["phase"] = "Not Injected"
            record["recoveredCount"] += 1
            events.append({"type": "Succeeded", "operation": "Recover", "timestamp": _now()})

    def _targets(self, obj: _Object) -> list[str]:
        """Record ids of the pods (or containers, per the kind's recorded status) selected."""
        selector = (obj.body.get("spec") or {}).get("selector") or {}
        namespaces = selector.get("namespaces") or [obj.body["metadata"]["namespace"]]
        labels = selector.get("labelSelectors") or {}
        example = recorded_status(obj.kind)["experiment"]["containerRecords"][0]["id"]
        per_container = example.count("/") == 2
        targets = []
        for pod in self.pods:
            if pod.namespace in namespaces and all(
                pod.labels.get(k) == v for k, v in labels.items()
            ):
                if per_container:
                    targets += [f"{pod.namespace}/{pod.name}/{c}" for c in pod.containers[:1]]
                else:
                    targets.append(f"{pod.namespace}/{pod.name}")
        return targets


def _conditions(records: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The conditions Chaos Mesh's condition controller derives from the records."""

    def every(phase: str) -> str:
        return "True" if records and all(r["phase"] == phase for r in records) else "False"

    return [
        {"type": "Selected", "status": "True" if records else "False", "reason": ""},
        {"type": "AllInjected", "status": every("Injected"), "reason": ""},
        {"type": "AllRecovered", "status": every("Not Injected"), "reason": ""},
        {"type": "Paused", "status": "False", "reason": ""},
    ]


def _metadata_problem(meta: Any, namespace: str) -> str | None:
    if not isinstance(meta, dict):
        return "metadata: Required value"
    name = meta.get("name")
    if not name:
        return "metadata.name: Required value: name or generateName is required"
    if len(name) > 253 or not DNS_SUBDOMAIN.match(name):
        return (f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 subdomain must '
                "consist of lower case alphanumeric characters, '-' or '.'")  # fmt: skip
    if meta.get("namespace") not in (None, namespace):
        return "metadata.namespace: Invalid value: does not match the namespace of the request"
    for key, value in (meta.get("labels") or {}).items():
        if (
            not isinstance(value, str)
            or len(value) > 63
            or not re.fullmatch(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?", value)
        ):
            return f'metadata.labels: Invalid value: "{value}": not a valid label value ({key})'
    return None


def _unknown_fields(node: dict[str, Any], value: Any, path: str) -> list[str]:
    """Fields of `value` that the structural schema `node` does not declare."""
    if not isinstance(value, dict) or node.get("type") != "object":
        if isinstance(value, list) and isinstance(node.get("items"), dict):
            return [u for item in value for u in _unknown_fields(node["items"], item, path)]
        return []
    properties = node.get("properties")
    if properties is None:
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            return [u for k, v in value.items() for u in _unknown_fields(extra, v, f"{path}.{k}")]
        return []
    found = []
    for key, item in value.items():
        where = f"{path}.{key}" if path else key
        if key not in properties:
            if path != "metadata":
                found.append(where)
            continue
        found += _unknown_fields(properties[key], item, where)
    return found


def _webhook_denial(kind: str, spec: dict[str, Any]) -> list[str]:
    """What Chaos Mesh's validating webhook refuses, for the checks the stand-in makes."""
    denied = []
    for key in ("duration",) + (("timeOffset",) if kind == "TimeChaos" else ()):
        value = spec.get(key)
        if value and not GO_DURATION.match(str(value)):
            denied.append(f'spec.{key}: Invalid value: "{value}": parse duration field error: '
                          f'time: invalid duration "{value}"')  # fmt: skip
    mode, value = spec.get("mode"), str(spec.get("value") or "")
    count = int(value) if value.isascii() and value.isdigit() else None
    if mode == "fixed" and not (count is not None and count > 0):
        denied.append(f'spec.value: Invalid value: "{value}": value must be greater than 0 '
                      "with mode:fixed")  # fmt: skip
    if mode in ("fixed-percent", "random-max-percent") and not (
        count is not None and 0 < count <= 100
    ):
        denied.append(f'spec.value: Invalid value: "{value}": Must be (0,100] with mode:{mode}')
    if kind == "StressChaos" and not spec.get("stressors") and not spec.get("stressngStressors"):
        denied.append("spec: Invalid value: missing stressors")
    return denied


def _path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<root>"


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}  # fmt: skip


def _invalid(kind: str, name: str, causes: str) -> dict[str, Any]:
    return _status(422, "Invalid", f'{kind}.{GROUP} "{name}" is invalid: {causes}')


def _status_success(name: str, plural: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": name, "group": GROUP, "kind": plural}}  # fmt: skip


class _Handler(BaseHTTPRequestHandler):
    standin: StandinChaosMesh
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return  # the tests read outcomes, not access logs

    def _route(self) -> tuple[list[str], dict[str, str]] | None:
        """The path after /apis/chaos-mesh.org/v1alpha1, or None when answered already."""
        parsed = urlparse(self.path)
        self.standin.requests.append((self.command, parsed.path))
        parts = [p for p in parsed.path.split("/") if p]
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        if parts[:3] != ["apis", GROUP, VERSION] or not self.standin.installed:
            # What an API server without the group answers: plain text, no Status.
            data = b"404 page not found\n"
            self.send_response(404)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return None
        return parts[3:], query

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length)) if length else None

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _forbidden(self, verb: str, plural: str, namespace: str | None) -> bool:
        if (verb, plural) not in self.standin.forbidden:
            return False
        where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
        self._send(403, _status(403, "Forbidden", f'{plural}.{GROUP} is forbidden: User '
                                f'"system:serviceaccount:crucible:crucible" cannot {verb} '
                                f'resource "{plural}" in API group "{GROUP}"{where}'))  # fmt: skip
        return True

    def do_GET(self) -> None:
        routed = self._route()
        if routed is None:
            return
        rest, query = routed
        standin = self.standin
        if len(rest) == 1 and rest[0] in standin.plurals:
            if not self._forbidden("list", rest[0], None):
                self._list(None, rest[0], query)
            return
        if len(rest) == 3 and rest[0] == "namespaces" and rest[2] in standin.plurals:
            if not self._forbidden("list", rest[2], rest[1]):
                self._list(rest[1], rest[2], query)
            return
        if len(rest) == 4 and rest[0] == "namespaces" and rest[2] in standin.plurals:
            if self._forbidden("get", rest[2], rest[1]):
                return
            found = standin.get(rest[2], rest[1], rest[3])
            if found is None:
                message = f'{rest[2]}.{GROUP} "{rest[3]}" not found'
                return self._send(404, _status(404, "NotFound", message))
            return self._send(200, found)
        self._send(
            404, _status(404, "NotFound", "the server could not find the requested resource")
        )

    def _list(self, namespace: str | None, plural: str, query: dict[str, str]) -> None:
        items = self.standin.select(namespace, plural, query.get("labelSelector"))
        kind = self.standin.plurals[plural]
        self._send(200, {"apiVersion": f"{GROUP}/{VERSION}", "kind": f"{kind}List",
                         "metadata": {"resourceVersion": "1"}, "items": items})  # fmt: skip

    def do_POST(self) -> None:
        routed = self._route()
        if routed is None:
            return
        rest, query = routed
        if len(rest) == 3 and rest[0] == "namespaces":
            if self._forbidden("create", rest[2], rest[1]):
                return
            strict = query.get("fieldValidation") == "Strict"
            with contextlib.suppress(json.JSONDecodeError):
                code, body = self.standin.create(rest[1], rest[2], self._body(), strict)
                return self._send(code, body)
            return self._send(400, _status(400, "BadRequest", "the body is not JSON"))
        self._send(
            404, _status(404, "NotFound", "the server could not find the requested resource")
        )

    def do_DELETE(self) -> None:
        routed = self._route()
        if routed is None:
            return
        rest, _ = routed
        self._body()  # DeleteOptions, if any: the stand-in ignores them
        if len(rest) == 4 and rest[0] == "namespaces" and rest[2] in self.standin.plurals:
            if self._forbidden("delete", rest[2], rest[1]):
                return
            code, body = self.standin.delete(rest[1], rest[2], rest[3])
            return self._send(code, body)
        self._send(
            404, _status(404, "NotFound", "the server could not find the requested resource")
        )
