"""The chaosd backend: faults on a physical or virtual machine through chaosd's REST API.

chaosd (Chaos Mesh's agent for machines) takes an attack as `POST /api/attack/<kind>` with the
attack's options as a JSON body, the action (delay, loss, cpu, ...) inside the body, and answers
`{"status": 200, "message": "attack successfully", "uid": ...}`. The attack stays in place until
`DELETE /api/attack/<uid>` recovers it; chaosd's server ends an attack by itself only when it was
scheduled with a cron `schedule`, which would repeat it, so Crucible never relies on that and
recovers every attack at the end of its window. Errors come back as
`{"error": true, "message": ..., "code": ...}` with status 400, 404 or 500.

The experiment's parameters are chaosd's options under chaosd's own JSON names (`latency`,
`ip-address`, `time-offset`, ...); `problems` checks them against a table of what each attack
kind takes and needs, written from chaosd's command structs and their validation.

Limitations: a chaosd that asks for client certificates (started with --CA) cannot be used, since
no client certificate is sent. chaosd cannot undo a process attack with a signal other than
SIGSTOP unless the parameters give a `recoverCmd`; recovering one succeeds and changes nothing.
The backend is tested against a stand-in for chaosd's API, not a real chaosd.
"""

import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from crucible_dagster.chaos.base import CHAOSD, ChaosError, Injected, PlannedFault

DEFAULT_PORT = 31767
# chaosd started with --cert serves its attack routes over HTTPS only, on --https-port.
DEFAULT_TLS_PORT = 31768

# A flooding attack runs iperf for `duration` seconds: Crucible sets it to the window plus this
# margin, so that an attack whose recovery never comes ends by itself shortly after its window.
FLOOD_MARGIN_S = 60

# Option types, as chaosd's Go structs declare them.
_TEXT = "a string"
_WHOLE = "an integer"
_FLAG = "true or false"
_TEXTS = "a list of strings"

_NETWORK = {
    **dict.fromkeys(
        ("latency", "jitter", "correlation", "percent", "device", "source-port", "egress-port",
         "ip-address", "ip-protocol", "hostname", "direction", "dns-server", "dns-ip",
         "dns-domain-name", "port", "rate", "accept-tcp-flags"),
        _TEXT,
    ),
    **dict.fromkeys(("port-pid", "limit", "buffer", "peakrate", "minburst", "parallel"), _WHOLE),
}  # fmt: skip
_JVM = {
    **dict.fromkeys(
        ("name", "class", "method", "value", "exception", "rule-file", "rule-data", "mem-type",
         "mysql-connector-version", "database", "table", "sql-type"),
        _TEXT,
    ),
    **dict.fromkeys(("port", "pid", "latency", "cpu-count"), _WHOLE),
}  # fmt: skip

# The options each attack kind takes, besides `action`. The keys are the route segments that
# chaosd's HTTP server has; `host`, `file` and `http` attacks exist only on chaosd's command line.
OPTIONS: dict[str, dict[str, str]] = {
    "process": {"process": _TEXT, "signal": _WHOLE, "recoverCmd": _TEXT},
    "network": _NETWORK,
    "stress": {"load": _WHOLE, "workers": _WHOLE, "size": _TEXT, "options": _TEXTS},
    "disk": {
        "size": _TEXT, "path": _TEXT, "percent": _TEXT, "payload-process-num": _WHOLE,
        "fallocate": _FLAG,
    },
    "clock": {"pid": _WHOLE, "time-offset": _TEXT, "clock-ids-slice": _TEXT},
    "jvm": _JVM,
    "kafka": {
        **dict.fromkeys(("topic", "host", "username", "password", "authMechanism",
                         "reloadCommand", "configFile"), _TEXT),
        **dict.fromkeys(("port", "messageSize", "maxBytes", "threads"), _WHOLE),
        **dict.fromkeys(("nonReadable", "nonWritable"), _FLAG),
    },
    "redis": {
        **dict.fromkeys(("addr", "password", "conf", "redisPath", "cacheSize", "percent", "key",
                         "expiration", "option"), _TEXT),
        "flushConfig": _FLAG,
        "requestNum": _WHOLE,
    },
    "vm": {"vm-name": _TEXT},
    "user_defined": {"attackCmd": _TEXT, "recoverCmd": _TEXT},
}  # fmt: skip
ROUTES = tuple(OPTIONS)

# The actions of the kinds that have one; the other kinds take no action.
ACTIONS: dict[str, tuple[str, ...]] = {
    "network": ("delay", "loss", "corrupt", "duplicate", "partition", "dns", "bandwidth",
                "occupied", "flood"),
    "stress": ("cpu", "mem"),
    "disk": ("fill", "write-payload", "read-payload"),
    "jvm": ("latency", "exception", "return", "stress", "gc", "rule-file", "rule-data", "mysql"),
    "kafka": ("fill", "flood", "io"),
    "redis": ("restart", "stop", "penetration", "cacheLimit", "expiration"),
}  # fmt: skip

# What an attack needs, by (kind, action): each entry is a group of options of which at least
# one must be given. Mostly chaosd's own validation; where chaosd accepts an attack that does
# nothing (a process attack with signal 0, a cpu stress without load, a jvm latency without a
# latency), Crucible asks for the option too.
NEEDS: dict[tuple[str, str | None], tuple[tuple[str, ...], ...]] = {
    ("process", None): (("process",), ("signal",)),
    ("network", "delay"): (("latency",), ("device",)),
    ("network", "loss"): (("percent",), ("device",)),
    ("network", "corrupt"): (("percent",), ("device",)),
    ("network", "duplicate"): (("percent",), ("device",)),
    ("network", "partition"): (("device",), ("direction",)),
    ("network", "bandwidth"): (("rate",), ("limit",), ("buffer",)),
    ("network", "dns"): (),
    ("network", "occupied"): (("port",),),
    ("network", "flood"): (("ip-address",), ("port",), ("rate",)),
    ("stress", "cpu"): (("load",),),
    ("stress", "mem"): (("size",),),
    ("disk", "fill"): (("size", "percent"),),
    ("disk", "write-payload"): (("size",),),
    ("disk", "read-payload"): (("size",),),
    ("clock", None): (("pid",), ("time-offset",)),
    ("jvm", "latency"): (("pid",), ("class",), ("method",), ("latency",)),
    ("jvm", "exception"): (("pid",), ("class",), ("method",), ("exception",)),
    ("jvm", "return"): (("pid",), ("class",), ("method",), ("value",)),
    ("jvm", "stress"): (("pid",), ("cpu-count", "mem-type")),
    ("jvm", "gc"): (("pid",),),
    ("jvm", "rule-file"): (("pid",), ("rule-file",)),
    ("jvm", "rule-data"): (("pid",), ("rule-data",)),
    ("jvm", "mysql"): (("pid",), ("mysql-connector-version",), ("exception", "latency")),
    ("kafka", "fill"): (("topic",), ("host",), ("port",), ("messageSize",), ("maxBytes",),
                        ("reloadCommand",), ("configFile",)),
    ("kafka", "flood"): (("topic",), ("host",), ("port",), ("messageSize",), ("threads",)),
    ("kafka", "io"): (("topic",), ("configFile",), ("nonReadable", "nonWritable")),
    ("redis", "restart"): (("addr",),),
    ("redis", "stop"): (("addr",),),
    ("redis", "penetration"): (("addr",), ("requestNum",)),
    ("redis", "cacheLimit"): (("addr",),),
    ("redis", "expiration"): (("addr",),),
    ("vm", None): (("vm-name",),),
    ("user_defined", None): (("attackCmd",), ("recoverCmd",)),
}  # fmt: skip

# Options Crucible fills in or must not let through: chaosd would take its uid, a `kind` would
# make chaosd store the attack under a kind it cannot recover, and `schedule`/`duration` would
# hand the fault's timing to chaosd's cron instead of the plan's schedule.
RESERVED = {
    "uid": "Crucible names each attack itself, to recover it later",
    "kind": "the kind is the experiment's fault_type",
    "schedule": "the experiment's schedule decides when the attack runs",
    "duration": "the experiment's schedule decides how long the attack runs",
}

# Values that chaosd parses further; checked here so that the plan is refused before the run.
_GO_DURATION = re.compile(r"[-+]?(0|((\d+(\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))+)")
_DURATIONS = {("network", "latency"), ("network", "jitter"), ("clock", "time-offset")}
_PERCENTS = {("network", "percent"), ("network", "correlation")}
_CHOICES = {
    ("network", "direction"): ("to", "from", "both"),
    ("network", "ip-protocol"): ("tcp", "udp", "icmp", "all"),
}
_EXAMPLES = {
    "latency": '"100ms"', "jitter": '"10ms"', "time-offset": '"-5m"', "percent": '"50"',
    "correlation": '"25"', "size": '"256MB"', "rate": '"10mbps"', "process": '"postgres"',
}  # fmt: skip


def attack_problems(kind: str, parameters: Mapping[str, Any]) -> list[str]:
    """Why chaosd would refuse (or run to no effect) a `kind` attack with these options."""
    if kind not in OPTIONS:
        routes = ", ".join(ROUTES)
        return [f"fault_type: chaosd has no {kind!r} attack route; it has {routes}"]

    problems: list[str] = []
    options = OPTIONS[kind]
    for name in parameters:
        if name in RESERVED:
            problems.append(f"parameters.{name}: not allowed here: {RESERVED[name]}")
        elif name != "action" and name not in options:
            problems.append(f"parameters.{name}: chaosd's {kind} attack takes no option {name!r}; "
                            f"it takes {', '.join(sorted(options))}")  # fmt: skip

    action = parameters.get("action")
    actions = ACTIONS.get(kind)
    if actions is None:
        needs = NEEDS[(kind, None)]
    elif kind == "network" and action == "down":
        problems.append("parameters.action: Crucible does not run network action 'down': chaosd "
                        "answers it only once the device is up again, and a machine whose device "
                        "is down may not be reachable to recover it")  # fmt: skip
        needs = ()
    elif not isinstance(action, str) or action not in actions:
        problems.append(f"parameters.action: a {kind} attack needs an action, one of "
                        f"{', '.join(actions)}")  # fmt: skip
        needs = ()
    else:
        needs = NEEDS[(kind, action)]
    what = f"{kind} {action}" if actions is not None else kind

    for group in needs:
        if not any(parameters.get(name) not in (None, "", 0, False) for name in group):
            wanted = " or ".join(_described(name, options) for name in group)
            problems.append(f"parameters.{group[0]}: a {what} attack needs {wanted}")

    for name, value in parameters.items():
        expected = options.get(name)
        if expected is not None and value is not None:
            problem = _value_problem(kind, name, value, expected)
            if problem:
                problems.append(f"parameters.{name}: {problem}")
    return problems


def _described(name: str, options: Mapping[str, str]) -> str:
    example = _EXAMPLES.get(name) if options[name] == _TEXT else None
    described = f"{name} ({options[name]}"
    return described + (f", e.g. {example})" if example else ")")


def _value_problem(kind: str, name: str, value: Any, expected: str) -> str | None:
    if expected == _TEXT and not isinstance(value, str):
        # A password's value never goes into a message.
        shown = '"..."' if "password" in name.lower() else f'"{value}"'
        example = _EXAMPLES.get(name, shown)
        return f"expected a string (chaosd reads it as text), e.g. {example}"
    if expected == _WHOLE and (isinstance(value, bool) or not isinstance(value, int)):
        return "expected an integer"
    if expected == _FLAG and not isinstance(value, bool):
        return "expected true or false"
    if expected == _TEXTS and not (
        isinstance(value, list) and all(isinstance(item, str) for item in value)
    ):
        return "expected a list of strings"
    if (kind, name) in _DURATIONS and not _GO_DURATION.fullmatch(value):
        return f'expected a duration such as "100ms", "1.5s" or "-5m", got {value!r}'
    if (kind, name) in _PERCENTS and not _is_percent(value):
        return f'expected a percentage from "0" to "100", got {value!r}'
    choices = _CHOICES.get((kind, name))
    if choices and value not in choices:
        return f"expected one of {', '.join(choices)}, got {value!r}"
    return None


def _is_percent(value: str) -> bool:
    try:
        return 0 <= float(value) <= 100
    except ValueError:
        return False


def base_url(address: str) -> str:
    """chaosd's URL for a target's `address`: `host`, `host:port`, either with an `http://` or
    `https://` scheme; the port defaults to chaosd's (31767, or 31768 for https)."""
    text = address.strip()
    if not text:
        raise ChaosError("target.address: expected chaosd's host, host:port or URL, got ''")
    if "://" not in text:
        # A bare IPv6 address has colons of its own; the port then needs brackets.
        if text.count(":") > 1 and not text.startswith("["):
            text = f"[{text}]"
        text = f"http://{text}"
    parts = urlsplit(text)
    expected = "expected host, host:port, http://host[:port] or https://host[:port]"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ChaosError(f"target.address: {expected}, got {address!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ChaosError(f"target.address: {expected} (no path, query or user), got {address!r}")
    try:
        port = parts.port
    except ValueError:
        raise ChaosError(f"target.address: the port must be 1 to 65535, got {address!r}") from None
    if port is None:
        port = DEFAULT_TLS_PORT if parts.scheme == "https" else DEFAULT_PORT
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port}"


def chaosd_message(response: httpx.Response) -> str:
    """What chaosd said in an answer: its `message` without the error-type prefixes chaosd puts
    in front (`error.api.invalid_request: ...`), or the body's text."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, Mapping) and isinstance(body.get("message"), str):
        message = body["message"]
    else:
        message = response.text.strip() or response.reason_phrase
    return re.sub(r"^(error\.[a-z_.]+: )+", "", message)


@dataclass
class ChaosdBackend:
    """Injects a plan's ec2 faults through the chaosd at each target's `address`.

    `timeout_s` bounds every request; `verify` is httpx's TLS verification for https addresses
    (True, False or a CA bundle path). `probe`: `problems` also asks chaosd whether it answers.
    """

    timeout_s: float = 10.0
    verify: bool | str = True
    probe: bool = True
    name: str = CHAOSD

    def problems(self, fault: PlannedFault) -> list[str]:
        problems = attack_problems(fault.fault_type, fault.parameters)
        address = fault.target.get("address")
        if not isinstance(address, str):
            return [*problems, "target.address: an ec2 target needs chaosd's address"]
        try:
            base_url(address)
        except ChaosError as error:
            return [*problems, str(error)]
        if self.probe:
            unreachable = self.reachable(address)
            if unreachable:
                problems.append(unreachable)
        return problems

    def reachable(self, address: str) -> str | None:
        """Why chaosd at `address` cannot take attacks, or None when it lists its experiments."""
        try:
            url = base_url(address)
            with self._client() as client:
                response = client.get(f"{url}/api/experiments/")
        except ChaosError as error:
            return str(error)
        except httpx.HTTPError as error:
            return f"chaosd at {address} does not answer: {_reason(error)}"
        if response.status_code == 404:
            return (f"chaosd at {address} does not answer: it has no /api/experiments/ route "
                    f"(a chaosd started with --cert serves its API over https, by default on "
                    f"port {DEFAULT_TLS_PORT})")  # fmt: skip
        if response.status_code != 200:
            return (f"chaosd at {address} does not answer: HTTP {response.status_code}: "
                    f"{chaosd_message(response)}")  # fmt: skip
        return None

    def planned_recipe(self, fault: PlannedFault) -> dict[str, Any]:
        """The recipe, known before the attack is sent: Crucible names the attack's uid, one
        per run and experiment."""
        uid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"crucible:{fault.run_id}:{fault.name}"))
        address = str(fault.target.get("address", ""))
        return {"backend": CHAOSD, "address": address, "uid": uid, "kind": fault.fault_type}

    def inject(self, fault: PlannedFault) -> Injected:
        kind = fault.fault_type
        address = str(fault.target.get("address", ""))
        url = base_url(address)
        uid = str(self.planned_recipe(fault)["uid"])
        body = attack_body(fault, uid)
        what = f"the {kind} attack of experiment {fault.name!r} on chaosd at {address}"
        try:
            with self._client() as client:
                response = client.post(f"{url}/api/attack/{kind}", json=body)
        except httpx.TimeoutException as error:
            # chaosd may have put the attack in place and only its answer is late: undo it now,
            # since nobody will know its uid once this fails.
            cleanup = self._recover_quietly(address, uid)
            raise ChaosError(f"{what} got no answer within {self.timeout_s:g}s "
                             f"({_reason(error)}); {cleanup}") from None  # fmt: skip
        except httpx.HTTPError as error:
            raise ChaosError(f"{what} failed: chaosd does not answer: {_reason(error)}") from None

        answer = _json_object(response)
        message = chaosd_message(response)
        if response.status_code == 404 and answer is None:
            raise ChaosError(f"{what} failed: chaosd has no route /api/attack/{kind} (HTTP 404)")
        if response.status_code != 200:
            raise ChaosError(f"{what} was refused: HTTP {response.status_code}: {message}")
        answered_uid = answer.get("uid") if answer else None
        if not isinstance(answered_uid, str) or not answered_uid:
            cleanup = self._recover_quietly(address, uid)
            raise ChaosError(f"{what}: chaosd's answer has no uid ({message}); {cleanup}")
        recipe = {"backend": CHAOSD, "address": address, "uid": answered_uid, "kind": kind}
        return Injected(status=f"{message} (uid {answered_uid})", recipe=recipe)

    def recover(self, recipe: Mapping[str, Any]) -> str:
        address, uid = recipe.get("address"), recipe.get("uid")
        if recipe.get("backend") != CHAOSD or not isinstance(address, str) or not uid:
            raise ChaosError(f"not a chaosd recipe (expected backend, address and uid): "
                             f"{dict(recipe)!r}")  # fmt: skip
        by_hand = (f"the attack may still be in place: recover it on that machine with "
                   f"`chaosd recover {uid}`")  # fmt: skip
        try:
            url = base_url(address)
            with self._client() as client:
                response = client.delete(f"{url}/api/attack/{uid}")
        except httpx.HTTPError as error:
            raise ChaosError(f"could not recover chaosd attack {uid} at {address}: "
                             f"{_reason(error)}; {by_hand}") from None  # fmt: skip

        message = chaosd_message(response)
        if response.status_code == 200:
            return f"{message} (uid {uid})"
        gone = _gone(response.status_code, message)
        if gone:
            return f"{gone} (uid {uid})"
        raise ChaosError(f"chaosd at {address} did not recover attack {uid}: "
                         f"HTTP {response.status_code}: {message}; {by_hand}")  # fmt: skip

    def _recover_quietly(self, address: str, uid: str) -> str:
        try:
            status = self.recover({"backend": CHAOSD, "address": address, "uid": uid})
        except ChaosError as error:
            return str(error)
        return f"recovered it to be safe: {status}"

    def _client(self) -> httpx.Client:
        return httpx.Client(timeout=self.timeout_s, verify=self.verify, trust_env=False)


def attack_body(fault: PlannedFault, uid: str) -> dict[str, Any]:
    """The JSON body of `POST /api/attack/<kind>` for `fault`, naming the attack `uid`."""
    body = {**fault.parameters, "uid": uid}
    if fault.fault_type == "network" and body.get("action") == "flood":
        # iperf runs for `duration` seconds; the margin is the safety net described above.
        body["duration"] = str(math.ceil(fault.duration_s + FLOOD_MARGIN_S))
    if fault.fault_type == "kafka" and "action" in body:
        # chaosd's kafka command reads its action from an untagged Go field, named "Action".
        body["Action"] = body["action"]
    return body


def _gone(status_code: int, message: str) -> str | None:
    """The status words when chaosd's refusal to recover means there is nothing to recover."""
    if status_code == 404:
        return "chaosd has no such attack; nothing to recover"
    if "can not recover destroyed experiment" in message:
        return "already recovered"
    if "can not recover error experiment" in message:
        return "chaosd recorded the attack as failed when injected; nothing to recover"
    return None


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _reason(error: httpx.HTTPError) -> str:
    return str(error) or type(error).__name__
