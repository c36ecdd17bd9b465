"""A stand-in for the Kubernetes API that runs pods as local processes. It is NOT Kubernetes.

There is no Kubernetes API server on this platform, so the pod launcher is tested against this:
an HTTP server on 127.0.0.1 (ephemeral port) that answers the real `kubernetes` client and
`dagster_k8s.PipesK8sClient` for the core/v1 pods of the namespaces they name.

What it covers:
- pods: create, get, list (labelSelector with `=`, `==`, `!=`, `key`, `!key`; fieldSelector
  `metadata.name` and `metadata.namespace`), delete (the process gets SIGTERM, then SIGKILL after
  the grace period; the pod shows a deletionTimestamp until its process is gone), a merge patch
  of `metadata.labels` and `metadata.annotations`, and the log (`follow`, `timestamps`,
  `sinceSeconds`, `tailLines`; stdout and stderr interleaved as the process wrote them);
- the first container's `command` + `args`, started as a local subprocess in its own session
  with its `env` (`value`, or `valueFrom.secretKeyRef` from the secrets given to the stand-in;
  a missing secret leaves the container waiting in CreateContainerConfigError);
- phases Pending -> Running -> Succeeded / Failed, container states waiting / running /
  terminated with exit code and termination message, `activeDeadlineSeconds` (the pod fails
  with reason DeadlineExceeded), the Ready condition from an exec readiness probe run locally
  about every 0.2 s;
- volumes: each emptyDir and downwardAPI volume becomes a local temporary folder. The stand-in
  replaces every occurrence of a volume's `mountPath` (and of the container's
  `terminationMessagePath`) in the command, args, env values and probe command by its local
  folder (or file), since a local process cannot see container paths. The downward-API file of
  `metadata.annotations` or `metadata.labels` is rewritten on every patch, as the kubelet does.

What it does not cover: scheduling, nodes, images (the image is ignored; the command runs with
the environment given to the stand-in), more than one container, init containers, restarts,
other volume types, watches, JSON patches, authentication, and every other resource type (events
list as empty so that dagster_k8s's diagnostics work). Every process it starts is stopped by its
own PID (and its session) on `stop()`.
"""

import contextlib
import json
import os
import secrets
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from crucible_dagster.launch.barrier import format_annotations

PROBE_PERIOD_S = 0.2
DEFAULT_GRACE_S = 30


def write_kubeconfig(path: Path, url: str, namespace: str) -> Path:
    """A kubeconfig for a stand-in API server at `url` (any token will do)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "standin", "cluster": {"server": url}}],
        "users": [{"name": "standin", "user": {"token": secrets.token_hex(8)}}],
        "contexts": [
            {
                "name": "standin",
                "context": {"cluster": "standin", "user": "standin", "namespace": namespace},
            }
        ],
        "current-context": "standin",
    }
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def _now() -> datetime:
    return datetime.now(UTC)


def _rfc3339(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment is not None else None


@dataclass
class _Pod:
    namespace: str
    body: dict[str, Any]
    root: Path
    created: datetime = field(default_factory=_now)
    phase: str = "Pending"
    process: subprocess.Popen[bytes] | None = None
    ready: bool = False
    waiting_reason: str = "ContainerCreating"
    waiting_message: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    terminated_reason: str | None = None
    termination_message: str | None = None
    pod_reason: str | None = None
    pod_message: str | None = None
    deleted_at: datetime | None = None
    logs: list[tuple[datetime, str]] = field(default_factory=list)
    log_closed: bool = False
    last_stamp: datetime | None = None
    mounts: dict[str, Path] = field(default_factory=dict)
    downward: list[tuple[Path, str]] = field(default_factory=list)
    termination_file: Path | None = None
    changed: threading.Condition = field(default_factory=threading.Condition)

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def container(self) -> dict[str, Any]:
        return dict(self.body["spec"]["containers"][0])

    def substitute(self, text: str) -> str:
        """Container paths to local ones; longest mount path first, so nested mounts win."""
        for prefix in sorted(self.mounts, key=len, reverse=True):
            text = text.replace(prefix, str(self.mounts[prefix]))
        return text

    def add_log(self, line: str) -> None:
        with self.changed:
            stamp = _now()
            # Two lines with one timestamp would be joined by the Pipes log reader.
            if self.last_stamp is not None and stamp <= self.last_stamp:
                stamp = self.last_stamp + timedelta(microseconds=1)
            self.last_stamp = stamp
            self.logs.append((stamp, line))
            self.changed.notify_all()


class StandinKubernetes:
    """The stand-in API server; `start()` it, point a kubeconfig at `url`, `stop()` it."""

    def __init__(
        self,
        *,
        workdir: Path,
        secrets_by_name: dict[tuple[str, str], dict[str, str]] | None = None,
        base_env: dict[str, str] | None = None,
        probe_period_s: float = PROBE_PERIOD_S,
    ) -> None:
        """`secrets_by_name` maps (namespace, secret name) to the secret's keys and values;
        `base_env` is the environment every pod process starts from (PATH, for instance)."""
        self.workdir = workdir
        self.secrets = secrets_by_name or {}
        self.base_env = dict(base_env or {})
        self.probe_period_s = probe_period_s
        self.pods: dict[tuple[str, str], _Pod] = {}
        self.lock = threading.RLock()
        self.started_pids: list[int] = []
        # Every pod body as created, for tests that check what reached the API.
        self.created: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        self._root = Path(tempfile.mkdtemp(prefix="crucible-k8s-standin-"))
        self._stopping = False
        self._server: ThreadingHTTPServer | None = None

    # ---- lifecycle

    def start(self) -> "StandinKubernetes":
        handler = type("Handler", (_Handler,), {"standin": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="k8s-standin", daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}"

    def write_kubeconfig(self, path: Path, namespace: str) -> Path:
        return write_kubeconfig(path, self.url, namespace)

    def stop(self) -> None:
        """Kills every process it started (by PID and session), then stops serving."""
        self._stopping = True
        with self.lock:
            pods = list(self.pods.values())
        for pod in pods:
            self._kill(pod, signal.SIGKILL)
            with pod.changed:
                pod.log_closed = True
                pod.changed.notify_all()
        for pod in pods:
            if pod.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    pod.process.wait(timeout=5)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        import shutil

        shutil.rmtree(self._root, ignore_errors=True)

    def live_pids(self) -> list[int]:
        """PIDs of started processes that still run (zombies count as gone)."""
        alive = []
        for pid in self.started_pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, IndexError):
                continue
            if state != "Z":
                alive.append(pid)
        return alive

    # ---- pods

    def create(self, namespace: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        meta = body.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            return 422, _status(422, "Invalid", "metadata.name is required")
        spec = body.get("spec") or {}
        if len(spec.get("containers") or []) != 1 or spec.get("initContainers"):
            return 422, _status(422, "Invalid", "the stand-in runs pods of exactly one container")
        with self.lock:
            if (namespace, name) in self.pods:
                return 409, _status(409, "AlreadyExists", f'pods "{name}" already exists')
            meta.update(
                namespace=namespace,
                uid=str(uuid.uuid4()),
                resourceVersion="1",
                creationTimestamp=_rfc3339(_now()),
            )
            root = Path(tempfile.mkdtemp(prefix=f"{name[:40]}-", dir=self._root))
            pod = _Pod(namespace, body, root)
            problem = self._prepare_volumes(pod)
            if problem is not None:
                return 422, _status(422, "Invalid", problem)
            self.pods[(namespace, name)] = pod
            self.created.append(json.loads(json.dumps(body)))
        threading.Thread(target=self._run, args=(pod,), name=f"pod-{name}", daemon=True).start()
        return 201, self.render(pod)

    def _prepare_volumes(self, pod: _Pod) -> str | None:
        spec = pod.body["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        local: dict[str, Path] = {}
        for name, volume in volumes.items():
            folder = pod.root / "volumes" / name
            folder.mkdir(parents=True)
            local[name] = folder
            if "downwardAPI" in volume:
                for item in volume["downwardAPI"].get("items") or []:
                    field_path = (item.get("fieldRef") or {}).get("fieldPath")
                    if field_path not in ("metadata.annotations", "metadata.labels"):
                        return f"downwardAPI {field_path}: the stand-in serves annotations, labels"
                    pod.downward.append((folder / item["path"], field_path))
            elif "emptyDir" not in volume:
                return f"volume {name}: the stand-in supports emptyDir and downwardAPI volumes only"
        for mount in pod.container.get("volumeMounts") or []:
            if mount["name"] not in local:
                return f"volumeMount {mount['name']} names no volume"
            pod.mounts[mount["mountPath"]] = local[mount["name"]]
        message_path = pod.container.get("terminationMessagePath") or "/dev/termination-log"
        pod.termination_file = pod.root / "termination-log"
        pod.mounts[message_path] = pod.termination_file
        self._write_downward(pod)
        return None

    def _write_downward(self, pod: _Pod) -> None:
        meta = pod.body["metadata"]
        for path, field_path in pod.downward:
            values = meta.get("annotations" if field_path == "metadata.annotations" else "labels")
            partial = path.with_name(path.name + ".partial")
            partial.write_text(format_annotations(dict(values or {})))
            os.replace(partial, path)  # atomic, as the kubelet's writer

    def _environment(self, pod: _Pod) -> dict[str, str] | str:
        env = dict(self.base_env)
        for item in pod.container.get("env") or []:
            if "value" in item:
                env[item["name"]] = pod.substitute(str(item["value"]))
                continue
            ref = (item.get("valueFrom") or {}).get("secretKeyRef")
            if ref is None:
                return f"env {item['name']}: the stand-in resolves only value and secretKeyRef"
            secret = self.secrets.get((pod.namespace, ref["name"]))
            if secret is None:
                return f'secret "{ref["name"]}" not found'
            if ref["key"] not in secret:
                return f"couldn't find key {ref['key']} in Secret {pod.namespace}/{ref['name']}"
            env[item["name"]] = secret[ref["key"]]
        return env

    def _run(self, pod: _Pod) -> None:
        env = self._environment(pod)
        if isinstance(env, str):
            with pod.changed:
                pod.waiting_reason, pod.waiting_message = "CreateContainerConfigError", env
            return
        container = pod.container
        argv = [
            pod.substitute(str(a))
            for a in [*container.get("command", []), *container.get("args", [])]
        ]
        with self.lock:
            if self._stopping or pod.deleted_at is not None:
                self._forget(pod)
                return
            try:
                process = subprocess.Popen(
                    argv,
                    env=env,
                    cwd=self.workdir,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                )
            except OSError as error:
                self._finish(pod, 128, "StartError", str(error))
                return
            self.started_pids.append(process.pid)
            pod.process = process
            pod.started_at = _now()
            pod.phase = "Running"
        readers = [
            threading.Thread(target=self._read, args=(pod, stream), daemon=True)
            for stream in (process.stdout, process.stderr)
        ]
        for reader in readers:
            reader.start()
        threading.Thread(target=self._probe, args=(pod,), daemon=True).start()
        code = process.wait()
        for reader in readers:
            reader.join(timeout=5)
        reason = pod.terminated_reason or ("Completed" if code == 0 else "Error")
        message = None
        if pod.termination_file is not None and pod.termination_file.exists():
            message = pod.termination_file.read_text(errors="replace")[-4096:] or None
        self._finish(pod, code, reason, message)

    def _finish(self, pod: _Pod, code: int, reason: str, message: str | None) -> None:
        with pod.changed:
            pod.exit_code = code
            pod.terminated_reason = reason
            pod.termination_message = message
            pod.finished_at = _now()
            pod.ready = False
            pod.phase = "Succeeded" if code == 0 and pod.pod_reason is None else "Failed"
            pod.log_closed = True
            pod.changed.notify_all()
        if pod.deleted_at is not None:
            self._forget(pod)

    def _forget(self, pod: _Pod) -> None:
        with self.lock:
            if self.pods.get((pod.namespace, pod.name)) is pod:
                del self.pods[(pod.namespace, pod.name)]

    def _read(self, pod: _Pod, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            pod.add_log(raw.decode("utf-8", errors="replace").rstrip("\n"))
        stream.close()

    def _probe(self, pod: _Pod) -> None:
        container = pod.container
        probe = (container.get("readinessProbe") or {}).get("exec")
        deadline_s = pod.body["spec"].get("activeDeadlineSeconds")
        assert pod.process is not None and pod.started_at is not None
        while pod.process.poll() is None and not self._stopping:
            active_s = (_now() - pod.started_at).total_seconds()
            if deadline_s is not None and pod.pod_reason is None and active_s >= deadline_s:
                pod.pod_reason = "DeadlineExceeded"
                pod.pod_message = "Pod was active on the node longer than the specified deadline"
                pod.terminated_reason = "DeadlineExceeded"
                self._terminate(pod)
            if probe is None:
                ready = True
            else:
                argv = [pod.substitute(str(a)) for a in probe["command"]]
                try:
                    ready = (
                        subprocess.run(argv, cwd=self.workdir, timeout=1, check=False).returncode
                        == 0
                    )
                except (OSError, subprocess.TimeoutExpired):
                    ready = False
            with pod.changed:
                if pod.process.poll() is None:
                    pod.ready = ready
            time.sleep(self.probe_period_s)

    def _terminate(self, pod: _Pod, grace_s: float | None = None) -> None:
        if grace_s is None:
            grace_s = float(pod.body["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE_S))
        self._kill(pod, signal.SIGTERM)
        process = pod.process
        if process is None:
            return

        def kill_later() -> None:
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self._kill(pod, signal.SIGKILL)

        threading.Thread(target=kill_later, daemon=True).start()

    def _kill(self, pod: _Pod, signum: int) -> None:
        process = pod.process
        if process is None:
            return
        if process.poll() is None:
            os.kill(process.pid, signum)
        if signum == signal.SIGKILL:
            # The session the stand-in created for this pod: whatever the pod process started.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)

    def delete(
        self, namespace: str, name: str, grace_s: float | None
    ) -> tuple[int, dict[str, Any]]:
        with self.lock:
            pod = self.pods.get((namespace, name))
            if pod is None:
                return 404, _not_found(name)
            first = pod.deleted_at is None
            if first:
                pod.deleted_at = _now()
                pod.body["metadata"]["deletionTimestamp"] = _rfc3339(pod.deleted_at)
            running = pod.process is not None and pod.process.poll() is None
            body = self.render(pod)
            if not running:
                # Nothing to stop: a finished pod, or one whose process has not started (the
                # pod thread sees the deletion before it starts anything).
                self._forget(pod)
        if running and first:
            self._terminate(pod, grace_s)
        return 200, body

    def patch(
        self, namespace: str, name: str, patch: Any, content_type: str
    ) -> tuple[int, dict[str, Any]]:
        if content_type.startswith("application/json-patch+json"):
            if not isinstance(patch, list):
                return 400, _status(
                    400,
                    "BadRequest",
                    "json: cannot unmarshal object into Go value of type []handlers.jsonPatchOp",
                )
            return 415, _status(
                415, "UnsupportedMediaType", "the stand-in takes merge patches only"
            )
        if not isinstance(patch, dict) or set(patch) - {"metadata"}:
            return 422, _status(422, "Invalid", "the stand-in patches metadata only")
        with self.lock:
            pod = self.pods.get((namespace, name))
            if pod is None:
                return 404, _not_found(name)
            meta = pod.body["metadata"]
            for key in ("labels", "annotations"):
                changes = (patch.get("metadata") or {}).get(key)
                if changes is None:
                    continue
                merged = dict(meta.get(key) or {})
                for k, v in changes.items():
                    if v is None:
                        merged.pop(k, None)
                    else:
                        merged[k] = str(v)
                meta[key] = merged
            meta["resourceVersion"] = str(int(meta.get("resourceVersion", "1")) + 1)
            self._write_downward(pod)
            return 200, self.render(pod)

    def select(self, namespace: str | None, labels: str | None, fields: str | None) -> list[_Pod]:
        with self.lock:
            pods = [p for (ns, _), p in self.pods.items() if namespace is None or ns == namespace]
        return [p for p in pods if labels_match(p.body, labels) and _fields_match(p, fields)]

    def render(self, pod: _Pod) -> dict[str, Any]:
        with pod.changed:
            container = pod.container
            if pod.exit_code is not None:
                state: dict[str, Any] = {
                    "terminated": {
                        "exitCode": pod.exit_code,
                        "reason": pod.terminated_reason,
                        "message": pod.termination_message,
                        "startedAt": _rfc3339(pod.started_at),
                        "finishedAt": _rfc3339(pod.finished_at),
                    }
                }
            elif pod.started_at is not None:
                state = {"running": {"startedAt": _rfc3339(pod.started_at)}}
            else:
                state = {"waiting": {"reason": pod.waiting_reason, "message": pod.waiting_message}}
            status: dict[str, Any] = {
                "phase": pod.phase,
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Ready", "status": "True" if pod.ready else "False"},
                ],
                "startTime": _rfc3339(pod.created),
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "image": container.get("image", ""),
                        "imageID": "",
                        "ready": pod.ready,
                        "restartCount": 0,
                        "started": pod.started_at is not None,
                        "state": state,
                    }
                ],
            }
            if pod.pod_reason is not None:
                status["reason"], status["message"] = pod.pod_reason, pod.pod_message
            return {
                "apiVersion": "v1",
                "kind": "Pod",
                **json.loads(json.dumps(pod.body)),
                "status": status,
            }

    def log_lines(
        self, pod: _Pod, since_s: float | None, follow: bool
    ) -> Iterator[tuple[datetime, str]]:
        cutoff = _now() - timedelta(seconds=since_s) if since_s is not None else None
        index = 0
        while True:
            with pod.changed:
                while (
                    index >= len(pod.logs) and follow and not pod.log_closed and not self._stopping
                ):
                    pod.changed.wait(timeout=0.5)
                batch = pod.logs[index:]
                closed = pod.log_closed or self._stopping
            index += len(batch)
            for stamp, line in batch:
                if cutoff is None or stamp >= cutoff:
                    yield stamp, line
            if not follow or (closed and index >= len(pod.logs)):
                return


def labels_match(body: dict[str, Any], selector: str | None) -> bool:
    """Whether an object's labels meet a labelSelector (`=`, `==`, `!=`, `key`, `!key`)."""
    labels = body["metadata"].get("labels") or {}
    for term in filter(None, (t.strip() for t in (selector or "").split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def _fields_match(pod: _Pod, selector: str | None) -> bool:
    known = {"metadata.name": pod.name, "metadata.namespace": pod.namespace}
    for term in filter(None, (t.strip() for t in (selector or "").split(","))):
        key, _, value = term.replace("==", "=").partition("=")
        if known.get(key.strip()) != value.strip():
            return False
    return True


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}  # fmt: skip


def _not_found(name: str) -> dict[str, Any]:
    return _status(404, "NotFound", f'pods "{name}" not found')


class _Handler(BaseHTTPRequestHandler):
    standin: StandinKubernetes
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return  # the tests read outcomes, not access logs

    def _route(self) -> tuple[list[str], dict[str, list[str]]]:
        parsed = urlparse(self.path)
        self.standin.requests.append((self.command, parsed.path))
        return [p for p in parsed.path.split("/") if p], parse_qs(parsed.query)

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

    def do_GET(self) -> None:
        parts, query = self._route()
        one = {k: v[-1] for k, v in query.items()}
        if parts[:2] != ["api", "v1"]:
            return self._send(404, _status(404, "NotFound", "the stand-in serves core/v1 only"))
        rest = parts[2:]
        if rest == ["pods"]:
            return self._list(None, one)
        if len(rest) == 3 and rest[0] == "namespaces" and rest[2] == "events":
            return self._send(
                200, {"kind": "EventList", "apiVersion": "v1", "metadata": {}, "items": []}
            )
        if len(rest) == 3 and rest[0] == "namespaces" and rest[2] == "pods":
            return self._list(rest[1], one)
        if len(rest) >= 4 and rest[0] == "namespaces" and rest[2] == "pods":
            pod = self.standin.pods.get((rest[1], rest[3]))
            if pod is None:
                return self._send(404, _not_found(rest[3]))
            if len(rest) == 4:
                return self._send(200, self.standin.render(pod))
            if rest[4:] == ["log"]:
                return self._log(pod, one)
        self._send(404, _status(404, "NotFound", f"the stand-in does not serve {self.path}"))

    def _list(self, namespace: str | None, query: dict[str, str]) -> None:
        pods = self.standin.select(
            namespace, query.get("labelSelector"), query.get("fieldSelector")
        )
        items = [self.standin.render(p) for p in pods]
        self._send(
            200,
            {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": "1"},
                "items": items,
            },
        )

    def _log(self, pod: _Pod, query: dict[str, str]) -> None:
        if pod.started_at is None and pod.exit_code is None:
            name = pod.container["name"]
            message = f'container "{name}" in pod "{pod.name}" is waiting to start: '
            message += pod.waiting_reason
            return self._send(400, _status(400, "BadRequest", message))
        follow = query.get("follow", "false").lower() == "true"
        stamps = query.get("timestamps", "false").lower() == "true"
        since = float(query["sinceSeconds"]) if "sinceSeconds" in query else None
        tail = int(query["tailLines"]) if "tailLines" in query else None

        def render(stamp: datetime, line: str) -> bytes:
            prefix = stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ ") if stamps else ""
            return (prefix + line + "\n").encode()

        if not follow:
            lines = list(self.standin.log_lines(pod, since, follow=False))
            if tail is not None:
                lines = lines[-tail:] if tail > 0 else []
            data = b"".join(render(s, line) for s, line in lines)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for stamp, line in self.standin.log_lines(pod, since, follow=True):
                chunk = render(stamp, line)
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def do_POST(self) -> None:
        parts, _ = self._route()
        if len(parts) == 5 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods":
            code, body = self.standin.create(parts[3], self._body() or {})
            return self._send(code, body)
        self._send(404, _status(404, "NotFound", f"the stand-in does not serve {self.path}"))

    def do_DELETE(self) -> None:
        parts, query = self._route()
        options = self._body() or {}
        grace = options.get("gracePeriodSeconds")
        if "gracePeriodSeconds" in query:
            grace = query["gracePeriodSeconds"][-1]
        if len(parts) == 6 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods":
            code, body = self.standin.delete(
                parts[3], parts[5], float(grace) if grace is not None else None
            )
            return self._send(code, body)
        self._send(404, _status(404, "NotFound", f"the stand-in does not serve {self.path}"))

    def do_PATCH(self) -> None:
        parts, _ = self._route()
        if len(parts) == 6 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods":
            content_type = self.headers.get("Content-Type", "")
            code, body = self.standin.patch(parts[3], parts[5], self._body(), content_type)
            return self._send(code, body)
        self._send(404, _status(404, "NotFound", f"the stand-in does not serve {self.path}"))
