"""A stand-in for chaosd's REST API that attacks nothing. It is NOT chaosd.

chaosd needs root on the machine it attacks, so the chaosd backend is tested against this: an
HTTP server on 127.0.0.1 (ephemeral port) that answers chaosd's routes as chaosd's server does.

What it covers:
- `POST /api/attack/<kind>` for chaosd's server routes (process, stress, network, disk, clock,
  jvm, kafka, vm, redis, user_defined): the body is bound to the kind's option types (a value of
  the wrong JSON type is a 400, as Go's decoder makes it), defaults are filled in, and chaosd's
  validation rules of that kind apply (400 with chaosd's error shape and message). An accepted
  attack is stored as an experiment (uid from the body or a new one, status created, then
  success, or error when the stand-in is told to refuse attacks) and answered with chaosd's
  `{"status": 200, "message": "attack successfully", "uid": ...}`.
- `DELETE /api/attack/<uid>`: 404 for an unknown uid, 500 "can not recover <status> experiment"
  unless the experiment is in status success, else status destroyed; a process attack with a
  signal other than SIGSTOP and no recoverCmd stays in place, as chaosd cannot undo it.
- `GET /api/experiments/` (the list), `GET /api/system/health`; any other route is gin's 404
  text, and `/api/experiments` without the slash is gin's redirect.
- `https_only=True` behaves like a chaosd started with --cert on its plain port: only the
  system routes answer.

What it does not cover: any effect of an attack, Go's case-insensitive matching of JSON keys,
cron schedules (a scheduled attack is stored with status scheduled and never runs), experiment
runs, TLS, the swagger page.
"""

import contextlib
import json
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SIGSTOP = 19

_COMMON = {"schedule": "string", "duration": "string", "action": "string", "kind": "string",
           "uid": "string"}  # fmt: skip

# Each route: the Go struct chaosd binds the body to, the kind it stores, its option types.
_STRUCTS: dict[str, tuple[str, str, dict[str, str]]] = {
    "process": ("ProcessCommand", "process", {
        "process": "string", "signal": "int", "recoverCmd": "string", "PIDs": "[]int"}),
    "network": ("NetworkCommand", "network", {
        **dict.fromkeys(("latency", "jitter", "correlation", "percent", "device", "source-port",
                         "egress-port", "ip-address", "ip-protocol", "hostname", "direction",
                         "dns-server", "dns-ip", "dns-domain-name", "port", "rate",
                         "accept-tcp-flags"), "string"),
        **dict.fromkeys(("port-pid", "parallel", "iperf-pid"), "int32"),
        **dict.fromkeys(("limit", "buffer", "minburst"), "uint32"),
        "peakrate": "uint64"}),
    "stress": ("StressCommand", "stress", {
        "load": "int", "workers": "int", "size": "string", "options": "[]string",
        "stress-ng-pid": "int32"}),
    "disk": ("DiskOption", "disk-server", {
        "size": "string", "path": "string", "percent": "string",
        "payload-process-num": "uint8", "fallocate": "bool"}),
    "clock": ("ClockOption", "clock", {
        "pid": "int", "time-offset": "string", "clock-ids-slice": "string"}),
    "jvm": ("JVMCommand", "jvm", {
        **dict.fromkeys(("name", "class", "method", "value", "exception", "rule-file",
                         "rule-data", "mem-type", "mysql-connector-version", "database",
                         "table", "sql-type"), "string"),
        **dict.fromkeys(("port", "pid", "latency", "cpu-count"), "int")}),
    "kafka": ("KafkaCommand", "kafka", {
        **dict.fromkeys(("Action", "topic", "host", "username", "password", "authMechanism",
                         "reloadCommand", "configFile"), "string"),
        "port": "uint16", "messageSize": "uint", "maxBytes": "uint64", "threads": "uint",
        "nonReadable": "bool", "nonWritable": "bool"}),
    "vm": ("VMOption", "vm", {"vm-name": "string"}),
    "redis": ("RedisCommand", "redis", {
        **dict.fromkeys(("addr", "password", "conf", "redisPath", "cacheSize", "percent", "key",
                         "expiration", "option"), "string"),
        "flushConfig": "bool", "requestNum": "int"}),
    "user_defined": ("UserDefinedOption", "userDefined", {
        "attackCmd": "string", "recoverCmd": "string"}),
}  # fmt: skip

_GO_DURATION = re.compile(r"[-+]?(0|((\d+(\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))+)")


class _Invalid(Exception):
    """chaosd's attack config validation refused the body."""


@dataclass(frozen=True)
class Recorded:
    """One request the stand-in got."""

    method: str
    path: str
    body: Any


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _fits(value: Any, go_type: str) -> bool:
    if value is None:
        return True
    if go_type == "string":
        return isinstance(value, str)
    if go_type == "bool":
        return isinstance(value, bool)
    if go_type.startswith("[]"):
        return isinstance(value, list) and all(_fits(item, go_type[2:]) for item in value)
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return value >= 0 or not go_type.startswith("uint")


def _percent(value: str) -> bool:
    if not value:
        return True
    try:
        return 0 <= float(value) <= 100
    except ValueError:
        return False


def _validate(kind: str, options: dict[str, Any]) -> None:
    """chaosd's CompleteDefaults and Validate (or PreProcess) of each command; `options` gets the
    defaults."""
    if options.get("schedule") and not _GO_DURATION.fullmatch(options.get("duration") or ""):
        raise _Invalid("Provide a valid duration for the scheduled attack")
    action = options.get("action") or ""
    text = lambda name: options.get(name) or ""  # noqa: E731

    if kind == "process" and not text("process"):
        raise _Invalid("process not provided")
    if kind == "stress":
        options["workers"] = options.get("workers") or 1
        if not action:
            raise _Invalid("action not provided")
    if kind == "network":
        _validate_network(action, options)
    if kind == "disk":
        if action not in ("fill", "write-payload", "read-payload"):
            raise _Invalid(f"unsupported action {action}")
        if not text("size") and not (action == "fill" and text("percent")):
            raise _Invalid(("one of percent and size" if action == "fill" else "size")
                           + " must not be empty")  # fmt: skip
    if kind == "clock":
        options["clock-ids-slice"] = text("clock-ids-slice") or "CLOCK_REALTIME"
        if not _GO_DURATION.fullmatch(text("time-offset")):
            raise _Invalid(f'time: invalid duration "{text("time-offset")}"')
        try:
            os.kill(options.get("pid") or 0, 0)
        except OSError as error:
            raise _Invalid(error.strerror or "pid may not be accessible") from None
    if kind == "jvm":
        _validate_jvm(action, options)
    if kind == "kafka":
        if not text("topic"):
            raise _Invalid("topic is required")
        if text("Action") not in ("fill", "flood", "io"):
            raise _Invalid(f"invalid action: {text('Action')}")
        if text("Action") == "flood" and not options.get("threads"):
            raise _Invalid("threads is required")
    if kind == "redis":
        if not text("addr"):
            raise _Invalid("addr of redis server is required")
        if action == "penetration" and not options.get("requestNum"):
            raise _Invalid("request-num is required")
    if kind == "user_defined":
        if not text("attackCmd"):
            raise _Invalid("attack command not provided")
        if not text("recoverCmd"):
            raise _Invalid("recover command not provided")


def _validate_network(action: str, options: dict[str, Any]) -> None:
    text = lambda name: options.get(name) or ""  # noqa: E731
    if action in ("delay", "loss", "corrupt", "duplicate"):
        options["correlation"] = text("correlation") or "0"
    if action == "delay":
        options["jitter"] = text("jitter") or "0ms"
        if not text("latency"):
            raise _Invalid("delay is required")
        if not _GO_DURATION.fullmatch(text("latency")):
            raise _Invalid(f"latency {text('latency')} not valid: time: invalid duration")
    elif action in ("loss", "corrupt", "duplicate"):
        if not text("percent"):
            raise _Invalid("percent is required")
        if not _percent(text("percent")):
            raise _Invalid(f"percent {text('percent')} not valid")
    elif action == "partition":
        if not text("device"):
            raise _Invalid("device is required")
        if text("direction") not in ("to", "from", "both"):
            raise _Invalid("direction should be one of to, from or both, but got "
                           f"{text('direction')}")  # fmt: skip
    elif action == "dns":
        if bool(text("dns-domain-name")) != bool(text("dns-ip")):
            raise _Invalid(f"DNS host {text('dns-domain-name')} must match a DNS ip "
                           f"{text('dns-ip')}")  # fmt: skip
    elif action == "bandwidth":
        if not (text("rate") and options.get("limit") and options.get("buffer")):
            raise _Invalid("rate, limit and buffer both are required when action is bandwidth")
    elif action == "occupied":
        if not text("port"):
            raise _Invalid("port is required")
    elif action in ("down", "flood"):
        required = ("duration", "device") if action == "down" else ("ip-address", "port", "rate")
        for name in (*required, "duration"):
            if not text(name):
                raise _Invalid(f"{'IP' if name == 'ip-address' else name} is required")
    else:
        raise _Invalid(f"network action {action} not supported")
    if action in ("delay", "loss", "corrupt", "duplicate") and not text("device"):
        raise _Invalid("device is required")


def _validate_jvm(action: str, options: dict[str, Any]) -> None:
    options["port"] = options.get("port") or 9288
    if not options.get("pid"):
        raise _Invalid("pid can't be 0")
    if action == "stress":
        if bool(options.get("cpu-count")) == bool(options.get("mem-type")):
            raise _Invalid("must set one of cpu-count and mem-type when action is 'stress'")
    elif action in ("exception", "return", "latency"):
        if not options.get("class"):
            raise _Invalid("class not provided")
        if not options.get("method"):
            raise _Invalid("method not provided")
    elif action == "rule-file" and not options.get("rule-file"):
        raise _Invalid("rule file not provided")
    elif action == "rule-data" and not options.get("rule-data"):
        raise _Invalid("rule data not provide")
    elif action == "mysql" and not options.get("mysql-connector-version"):
        raise _Invalid("MySQL connector version not provided")
    elif action == "":
        raise _Invalid("action not provided")
    elif action not in ("gc", "rule-file", "rule-data", "mysql"):
        raise _Invalid(f"action {action} not supported, action can be 'latency', 'exception', "
                       "'return', 'stress', 'gc', 'rule-file' of 'rule-data'")  # fmt: skip


def _api_error(code: str, message: str) -> dict[str, Any]:
    full = f"{code}: {message}"
    return {"error": True, "message": full, "code": code, "full_text": full}


def _go_time() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class StandinChaosd:
    """The stand-in's state: its experiments by uid and the requests it got.

    `refuse_attacks`: when set, every attack fails as it runs, with that message (chaosd stores
    the experiment with status error and answers 500). `answer_delay_s` delays each attack's
    answer (the attack is stored at once). `https_only`: see the module's docstring.
    """

    def __init__(
        self,
        *,
        refuse_attacks: str | None = None,
        answer_delay_s: float = 0.0,
        https_only: bool = False,
    ) -> None:
        self.refuse_attacks = refuse_attacks
        self.answer_delay_s = answer_delay_s
        self.https_only = https_only
        self.experiments: dict[str, dict[str, Any]] = {}
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> "StandinChaosd":
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.standin = self  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server
        return self

    @property
    def address(self) -> str:
        """`host:port`, as a plan's target gives it."""
        assert self._server is not None
        return f"127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        """Stops answering: the port is closed afterwards, so connections are refused."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def attack(self, route: str, raw: bytes) -> tuple[int, Any]:
        try:
            body = json.loads(raw or b"null")
        except ValueError as error:
            return 400, _api_error("error.api.internal_server_error", str(error))
        self.requests.append(Recorded("POST", f"/api/attack/{route}", body))
        if not isinstance(body, dict):
            return 400, _api_error("error.api.internal_server_error",
                                   f"json: cannot unmarshal {_json_type(body)} into Go value of "
                                   f"type core.{_STRUCTS[route][0]}")  # fmt: skip
        struct, kind, types = _STRUCTS[route]
        fields = {**_COMMON, **types}
        for name, value in body.items():
            if name in fields and not _fits(value, fields[name]):
                where = f"Go struct field {struct}.{name} of type {fields[name]}"
                message = f"json: cannot unmarshal {_json_type(value)} into {where}"
                return 400, _api_error("error.api.internal_server_error", message)
        options = {name: value for name, value in body.items() if name in fields}
        options["kind"] = options.get("kind") or kind
        try:
            _validate(route, options)
        except _Invalid as error:
            return 400, _api_error("error.api.invalid_request",
                                   "error.core.attack_config_validation_error: attack config "
                                   f"validation failed, cause: {error}")  # fmt: skip

        uid = options.get("uid") or str(uuid.uuid4())
        with self._lock:
            now = _go_time()
            self.experiments[uid] = {
                "id": len(self.experiments) + 1, "uid": uid, "created_at": now,
                "updated_at": now, "status": "created", "error": "", "kind": options["kind"],
                "action": options.get("action") or "", "recover_command": json.dumps(options),
                "launch_mode": "svr",
            }  # fmt: skip
        if self.answer_delay_s:
            time.sleep(self.answer_delay_s)
        if self.refuse_attacks:
            self._update(uid, "error", self.refuse_attacks)
            return 500, _api_error("error.api.internal_server_error", self.refuse_attacks)
        self._update(uid, "scheduled" if options.get("schedule") else "success")
        return 200, {"status": 200, "message": "attack successfully", "uid": uid}

    def recover(self, uid: str) -> tuple[int, Any]:
        self.requests.append(Recorded("DELETE", f"/api/attack/{uid}", None))
        experiment = self.experiments.get(uid)
        if experiment is None:
            return 404, _api_error("error.api.resource_not_found", "record not found")
        if experiment["status"] != "success":
            message = f"can not recover {experiment['status']} experiment"
            return 500, _api_error("error.api.internal_server_error", message)
        options = json.loads(experiment["recover_command"])
        stays = experiment["kind"] == "process" and options.get("signal") != SIGSTOP
        if not (stays and not options.get("recoverCmd")):
            self._update(uid, "destroyed")
        return 200, {"status": 200, "message": "attack recover successfully", "uid": uid}

    def listing(self) -> list[dict[str, Any]]:
        self.requests.append(Recorded("GET", "/api/experiments/", None))
        with self._lock:
            return [dict(experiment) for experiment in self.experiments.values()]

    def _update(self, uid: str, status: str, message: str = "") -> None:
        with self._lock:
            experiment = self.experiments[uid]
            experiment.update(status=status, error=message, updated_at=_go_time())


class _Handler(BaseHTTPRequestHandler):
    server_version = "standin-chaosd"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def _standin(self) -> StandinChaosd:
        return self.server.standin  # type: ignore[attr-defined]

    def _answer(self, code: int, body: Any, location: str | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        kind = "text/plain" if isinstance(body, bytes) else "application/json; charset=utf-8"
        self.send_header("Content-Type", kind)
        if location:
            self.send_header("Location", location)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        # A client that gave up waiting (a timeout test) has closed its end by now.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(data)

    def _not_found(self) -> None:
        self._answer(404, b"404 page not found")

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/api/system/health":
            self._answer(200, {"status": 0, "message": ""})
        elif self._standin.https_only:
            self._not_found()
        elif path == "/api/experiments/":
            self._answer(200, self._standin.listing())
        elif path == "/api/experiments":
            self._answer(301, b"", location="/api/experiments/")
        else:
            self._not_found()

    def do_POST(self) -> None:
        route = self.path.split("?")[0].removeprefix("/api/attack/")
        raw = self._body()
        if self._standin.https_only or route not in _STRUCTS:
            self._not_found()
        else:
            self._answer(*self._standin.attack(route, raw))

    def do_DELETE(self) -> None:
        uid = self.path.split("?")[0].removeprefix("/api/attack/")
        if self._standin.https_only or not self.path.startswith("/api/attack/") or "/" in uid:
            self._not_found()
        else:
            self._answer(*self._standin.recover(uid))
