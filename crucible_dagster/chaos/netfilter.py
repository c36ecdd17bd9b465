"""The local backend's network faults, by iptables in the SUT's network namespace.

`loss` drops a random share of the TCP packets that arrive for the SUT's port, `partition`
drops all of them. Each fault is one rule on the namespace's INPUT chain, tagged with a comment
`crucible:<run_id>:<experiment>`: recovery deletes exactly that rule, and a sweeper finds the
rules a crashed run left behind by the prefix.
"""

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from typing import Any

from crucible_dagster.chaos.base import LOCAL, ChaosError, Injected, PlannedFault
from crucible_dagster.plan.models import LOCAL_NETWORK_FAULTS

PARAMETERS: dict[str, tuple[str, ...]] = {"loss": ("loss",), "partition": ()}
COMMENT_PREFIX = "crucible:"
CHAIN = "INPUT"
# The iptables comment match takes at most this many characters.
_COMMENT_MAX = 256
# iptables waits this long for the xtables lock another program holds.
_LOCK_WAIT_S = "5"
_TIMEOUT_S = 30.0
# Where Debian keeps ip and iptables; not always on a service's PATH.
_SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%?\s*$")


class NetfilterFaults:
    """Drops a share of the SUT's incoming TCP packets (`loss`) or all of them (`partition`)."""

    name = LOCAL

    def problems(self, fault: PlannedFault) -> list[str]:
        if fault.fault_type not in LOCAL_NETWORK_FAULTS:
            return [
                f"{fault.fault_type!r} is not a network fault: expected one of "
                f"{', '.join(LOCAL_NETWORK_FAULTS)}"
            ]
        problems = _parameter_problems(fault.fault_type, fault.parameters)
        if not 0 < fault.sut_port < 65536:
            problems.append(
                f"a {fault.fault_type} fault needs the SUT's port, got {fault.sut_port}"
            )
        comment = rule_comment(fault.run_id, fault.name)
        if len(comment) > _COMMENT_MAX:
            problems.append(
                f"the rule's comment {comment[:40]!r}... is longer than iptables' "
                f"{_COMMENT_MAX} characters: shorten the experiment name"
            )
        if os.geteuid() != 0:
            problems.append(f"a {fault.fault_type} fault needs root, to run iptables")
        missing = [tool for tool in ("ip", "iptables") if _tool(tool) is None]
        if missing:
            problems.append(
                f"{' and '.join(missing)} not found on the PATH or in /usr/sbin: install iproute2 "
                "and iptables"
            )
        netns = fault.target.get("netns")
        if not netns:
            problems.append(f"a {fault.fault_type} fault needs target.netns")
        elif "ip" not in missing and netns not in network_namespaces():
            problems.append(
                f"network namespace {netns!r} does not exist (`ip netns list` does not show it)"
            )
        return problems

    def inject(self, fault: PlannedFault) -> Injected:
        problems = self.problems(fault)
        if problems:
            raise ChaosError(f"cannot inject {fault.name!r}: " + "; ".join(problems))
        recipe = self.planned_recipe(fault)
        netns, rule = str(recipe["netns"]), list(recipe["rule"])
        _iptables(netns, "-I", CHAIN, "1", *rule)
        probability = parse_loss(fault.parameters["loss"]) if fault.fault_type == "loss" else None
        share = "all" if probability is None else f"{probability:.0%}"
        return Injected(
            f"dropping {share} of tcp packets to port {fault.sut_port} in netns {netns}", recipe
        )

    def planned_recipe(self, fault: PlannedFault) -> dict[str, Any]:
        """The recipe, known before the rule goes in: the rule is the fault's own."""
        probability = None
        if fault.fault_type == "loss":
            probability = parse_loss(fault.parameters["loss"])
        rule = rule_spec(fault.sut_port, probability, rule_comment(fault.run_id, fault.name))
        netns = str(fault.target["netns"])
        return {"backend": LOCAL, "fault": fault.fault_type, "netns": netns, "chain": CHAIN,
                "rule": rule}  # fmt: skip

    def recover(self, recipe: Mapping[str, Any]) -> str:
        netns, chain, rule = _recipe_rule(recipe)
        if netns not in network_namespaces():
            return f"netns {netns} is gone, and its rules with it"
        deleted = 0
        # An experiment injected twice by mistake left two copies; both are its own.
        while _iptables(netns, "-C", chain, *rule, check=False).returncode == 0:
            _iptables(netns, "-D", chain, *rule)
            deleted += 1
        comment = _comment_of(rule)
        if deleted == 0:
            return f"rule {comment} in netns {netns} was already gone"
        return f"deleted rule {comment} in netns {netns}"


def rule_comment(run_id: str, experiment: str) -> str:
    """The tag of one experiment's rule."""
    return f"{COMMENT_PREFIX}{run_id}:{experiment}"


def rule_spec(port: int, probability: float | None, comment: str) -> list[str]:
    """The iptables match and target of a rule dropping TCP packets to `port`: a random share
    `probability` of them, or all when it is None."""
    spec = ["-p", "tcp", "--dport", str(port)]
    if probability is not None and probability < 1:
        spec += ["-m", "statistic", "--mode", "random", "--probability", f"{probability:.6f}"]
    return [*spec, "-m", "comment", "--comment", comment, "-j", "DROP"]


def parse_loss(value: Any) -> float:
    """The share of packets a `loss` parameter drops, from `30`, `30.5` or `"30%"`."""
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        match = _PERCENT.match(value)
        number = float(match.group(1)) if match else None
    if number is None or not 0 < number <= 100:
        raise ChaosError(
            f"parameter loss: expected a percentage above 0 and at most 100, such as 30 or "
            f'"30%", got {value!r}'
        )
    return number / 100


def network_namespaces() -> list[str]:
    """The names `ip netns list` shows."""
    ip = _tool("ip")
    if ip is None:
        raise ChaosError("ip not found on the PATH or in /usr/sbin: install iproute2")
    done = _run([ip, "netns", "list"])
    # Lines read `name` or `name (id: 3)`.
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def crucible_rules(netns: str, run_id: str | None = None) -> list[str]:
    """The rules Crucible left in `netns` (all runs', or one run's), as `iptables -S` prints
    them; what a sweeper looks at."""
    prefix = rule_comment(run_id, "") if run_id else COMMENT_PREFIX
    listing = _iptables(netns, "-S", CHAIN).stdout.splitlines()
    # iptables quotes a comment only when it needs to.
    tags = (f'--comment "{prefix}', f"--comment {prefix}")
    return [line for line in listing if any(tag in line for tag in tags)]


def _parameter_problems(fault_type: str, parameters: Mapping[str, Any]) -> list[str]:
    accepted = PARAMETERS[fault_type]
    problems = []
    unknown = sorted(set(parameters) - set(accepted))
    if unknown:
        takes = f"it takes {', '.join(accepted)}" if accepted else "it takes none"
        problems.append(f"a {fault_type} fault has no parameter {', '.join(unknown)}: {takes}")
    if fault_type == "loss":
        if "loss" not in parameters:
            problems.append('a loss fault needs parameter loss, a percentage such as "30%"')
        else:
            try:
                parse_loss(parameters["loss"])
            except ChaosError as error:
                problems.append(str(error))
    return problems


def _recipe_rule(recipe: Mapping[str, Any]) -> tuple[str, str, list[str]]:
    netns, chain, rule = recipe.get("netns"), recipe.get("chain"), recipe.get("rule")
    if (
        recipe.get("backend") == LOCAL
        and recipe.get("fault") in LOCAL_NETWORK_FAULTS
        and isinstance(netns, str)
        and isinstance(chain, str)
        and isinstance(rule, list)
        and all(isinstance(arg, str) for arg in rule)
        # Only a rule carrying Crucible's tag is ever deleted.
        and _comment_of(rule).startswith(COMMENT_PREFIX)
    ):
        return netns, chain, rule
    raise ChaosError(
        "not a recipe of the local backend's network faults: expected backend 'local', "
        f"fault loss or partition, netns, chain and a rule tagged {COMMENT_PREFIX}..."
    )


def _comment_of(rule: list[str]) -> str:
    at = rule.index("--comment") + 1 if "--comment" in rule else len(rule)
    return rule[at] if at < len(rule) else ""


def _tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=_SBIN_PATH)


def _iptables(netns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    ip, iptables = _tool("ip"), _tool("iptables")
    if ip is None or iptables is None:
        raise ChaosError("ip or iptables not found on the PATH or in /usr/sbin")
    command = [ip, "netns", "exec", netns, iptables, "-w", _LOCK_WAIT_S, *args]
    done = _run(command)
    if check and done.returncode != 0:
        raise ChaosError(
            f"iptables {' '.join(args)} in netns {netns} failed (status {done.returncode}): "
            f"{done.stderr.strip()}"
        )
    return done


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            command, capture_output=True, text=True, check=False, timeout=_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        raise ChaosError(f"{' '.join(command)} did not finish within {_TIMEOUT_S:g}s") from None
