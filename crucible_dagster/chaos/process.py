"""The local backend's faults on the SUT's own process: pause, kill and restart.

The SUT is found by its pid file. A recipe names every process it touched by pid and start
time, so a recovery run later, maybe by another process, never signals a pid the system has
since given to someone else. After a kill or a restart the SUT is started again with the
target's `start_command` and counts as back once it accepts TCP connections on its port.
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from crucible_dagster.chaos.base import LOCAL, ChaosError, Injected, PlannedFault
from crucible_dagster.plan.duration import Duration
from crucible_dagster.plan.models import LOCAL_PROCESS_FAULTS
from crucible_dagster.settings import get_settings

# The parameters each fault takes, and their defaults.
PARAMETERS: dict[str, tuple[str, ...]] = {
    "pause": (),
    "kill": ("ready_timeout",),
    "restart": ("stop_timeout", "ready_timeout", "stop_signal"),
}
DEFAULTS = {"ready_timeout": "60s", "stop_timeout": "30s", "stop_signal": "SIGTERM"}
DURATION_PARAMETERS = ("ready_timeout", "stop_timeout")
# The signals a graceful stop may use. PostgreSQL's SIGTERM is a smart shutdown, which waits for
# every session to end; its SIGINT (fast shutdown) ends them.
STOP_SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT, "SIGQUIT": signal.SIGQUIT}

# Two readings of one process' start time differ by less than this; a reused pid differs by more.
_SAME_START_S = 0.05
# How long killed processes get to disappear before the fault counts as failed.
_KILL_WAIT_S = 10.0
# Bytes of the start log shown in an error.
_LOG_TAIL_BYTES = 2000


class ProcessFaults:
    """Pauses, kills or restarts the SUT's process tree on this machine."""

    name = LOCAL

    def problems(self, fault: PlannedFault) -> list[str]:
        if fault.fault_type not in LOCAL_PROCESS_FAULTS:
            return [
                f"{fault.fault_type!r} is not a process fault: expected one of "
                f"{', '.join(LOCAL_PROCESS_FAULTS)}"
            ]
        problems = _parameter_problems(fault.fault_type, fault.parameters)
        pid_file = fault.target.get("pid_file")
        if not pid_file:
            problems.append(f"a {fault.fault_type} fault needs target.pid_file")
        else:
            try:
                main = _main_process(str(pid_file))
            except ChaosError as error:
                problems.append(str(error))
            else:
                problems += _listening_problems(main, str(pid_file), fault.sut_port)
        if fault.fault_type != "pause":
            problems += _start_problems(fault)
        return problems

    def inject(self, fault: PlannedFault) -> Injected:
        problems = self.problems(fault)
        if problems:
            raise ChaosError(f"cannot inject {fault.name!r}: " + "; ".join(problems))
        pid_file = str(fault.target["pid_file"])
        main = _main_process(pid_file)
        if fault.fault_type == "pause":
            return _pause(pid_file, main)
        if fault.fault_type == "kill":
            return _kill(fault, pid_file, main)
        return _restart(fault, pid_file, main)

    def planned_recipe(self, fault: PlannedFault) -> dict[str, Any]:
        """A recipe written before the fault goes in, for a process that dies while injecting:
        the processes as they are now (resumed, or started again, as the fault needs)."""
        pid_file = str(fault.target["pid_file"])
        main = _main_process(pid_file)
        refs = [_ref(process) for process in [main, *main.children(recursive=True)]]
        recipe: dict[str, Any] = {"backend": LOCAL, "fault": fault.fault_type,
                                  "pid_file": pid_file, "processes": refs}  # fmt: skip
        if fault.fault_type != "pause":
            recipe.update(_StartSpec.from_fault(fault).recipe())
        return recipe

    def recover(self, recipe: Mapping[str, Any]) -> str:
        kind = recipe.get("fault")
        if recipe.get("backend") != LOCAL or kind not in LOCAL_PROCESS_FAULTS:
            raise ChaosError(
                f"not a recipe of the local backend's process faults (backend "
                f"{recipe.get('backend')!r}, fault {kind!r}): expected backend {LOCAL!r} and "
                f"a fault among {', '.join(LOCAL_PROCESS_FAULTS)}"
            )
        if kind == "pause":
            return _resume(_recipe_processes(recipe))
        start = _StartSpec.from_recipe(recipe)
        if _accepts_tcp(start.host, start.port):
            return f"{start.host}:{start.port} accepts connections; nothing to start"
        return start.run()


def _listening_problems(main: psutil.Process, pid_file: str, port: int) -> list[str]:
    """A pid file of another program than the SUT's would make the fault miss the SUT: its
    process, or one of its children, must listen on the SUT's port."""
    if port <= 0:
        return []
    try:
        tree = [main, *main.children(recursive=True)]
        listening = {
            c.laddr.port
            for process in tree
            for c in process.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN
        }
        name = main.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []  # not ours to look into: nothing to say either way
    if port in listening:
        return []
    return [f"pid file {pid_file} names pid {main.pid} ({name}), which does not listen on port "
            f"{port}, the SUT's: is it the SUT's pid file?"]  # fmt: skip


def _parameter_problems(fault_type: str, parameters: Mapping[str, Any]) -> list[str]:
    accepted = PARAMETERS[fault_type]
    problems = []
    unknown = sorted(set(parameters) - set(accepted))
    if unknown:
        takes = f"it takes {', '.join(accepted)}" if accepted else "it takes none"
        problems.append(f"a {fault_type} fault has no parameter {', '.join(unknown)}: {takes}")
    for name in DURATION_PARAMETERS:
        if name in accepted and name in parameters:
            try:
                _duration_s(parameters, name)
            except ChaosError as error:
                problems.append(str(error))
    if "stop_signal" in accepted and "stop_signal" in parameters:
        try:
            _stop_signal(parameters)
        except ChaosError as error:
            problems.append(str(error))
    return problems


def _duration_s(parameters: Mapping[str, Any], name: str) -> float:
    value = parameters.get(name, DEFAULTS[name])
    try:
        duration = Duration(value)
    except ValueError:
        raise ChaosError(
            f"parameter {name}: expected a duration like 30s or 1m30s, got {value!r}"
        ) from None
    if duration.seconds <= 0 and name == "ready_timeout":
        raise ChaosError(f"parameter {name}: expected a duration longer than 0s, got {value!r}")
    return duration.seconds


def _stop_signal(parameters: Mapping[str, Any]) -> signal.Signals:
    value = parameters.get("stop_signal", DEFAULTS["stop_signal"])
    text = value.upper() if isinstance(value, str) else ""
    found = STOP_SIGNALS.get(text) or STOP_SIGNALS.get(f"SIG{text}")
    if found is None:
        raise ChaosError(
            f"parameter stop_signal: expected one of {', '.join(STOP_SIGNALS)}, got {value!r}"
        )
    return found


def _start_problems(fault: PlannedFault) -> list[str]:
    problems = []
    command = fault.target.get("start_command")
    if not command:
        problems.append(f"a {fault.fault_type} fault needs target.start_command")
    elif not isinstance(command, Sequence) or isinstance(command, str):
        problems.append(f"target.start_command: expected a list of arguments, got {command!r}")
    elif not all(isinstance(arg, str) and arg for arg in command):
        problems.append("target.start_command: expected non-empty strings as arguments")
    else:
        program = _program_problem(command[0])
        if program is not None:
            problems.append(program)
    if not fault.sut_host or not 0 < fault.sut_port < 65536:
        problems.append(
            f"a {fault.fault_type} fault needs the SUT's host and port, to wait for it to "
            f"accept connections again (got {fault.sut_host!r}, port {fault.sut_port})"
        )
    return problems


def _program_problem(program: str) -> str | None:
    if os.sep in program:
        path = Path(program)
        if not path.is_file():
            return f"target.start_command: program {program} does not exist"
        if not os.access(path, os.X_OK):
            return f"target.start_command: program {program} is not executable"
        return None
    if shutil.which(program) is None:
        return (
            f"target.start_command: program {program!r} is not on the PATH; expected a program "
            "name found there or a path to an executable"
        )
    return None


def _main_process(pid_file: str) -> psutil.Process:
    """The live process the pid file's first line names."""
    try:
        first_line = Path(pid_file).read_text(errors="replace").partition("\n")[0].strip()
    except FileNotFoundError:
        raise ChaosError(f"pid file {pid_file} does not exist (is the SUT running?)") from None
    except OSError as error:
        raise ChaosError(f"pid file {pid_file} cannot be read: {error.strerror}") from None
    if not first_line.isdigit() or int(first_line) <= 0:
        raise ChaosError(
            f"pid file {pid_file}: expected a process id on its first line, got {first_line!r}"
        )
    pid = int(first_line)
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            raise psutil.NoSuchProcess(pid)
    except psutil.NoSuchProcess:
        raise ChaosError(f"pid file {pid_file} names pid {pid}, which is not running") from None
    return process


def _processes(count: int) -> str:
    return f"{count} process" if count == 1 else f"{count} processes"


def _ref(process: psutil.Process) -> dict[str, Any]:
    return {"pid": process.pid, "create_time": process.create_time()}


def _recipe_processes(recipe: Mapping[str, Any]) -> list[dict[str, Any]]:
    processes = recipe.get("processes")
    valid = isinstance(processes, list) and all(
        isinstance(p, Mapping)
        and isinstance(p.get("pid"), int)
        and isinstance(p.get("create_time"), (int, float))
        for p in processes
    )
    if not valid:
        raise ChaosError(
            "the recipe's processes are not a list of {pid, create_time}: " + repr(processes)
        )
    return list(processes)  # type: ignore[arg-type]


def _same_process(ref: Mapping[str, Any]) -> psutil.Process | None:
    """The process `ref` names, if it still runs; None when it ended or its pid was reused."""
    try:
        process = psutil.Process(ref["pid"])
        if abs(process.create_time() - ref["create_time"]) > _SAME_START_S:
            return None
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.NoSuchProcess:
        return None
    return process


def _send(process: psutil.Process, sig: signal.Signals) -> bool:
    """Signals `process` unless it has ended (psutil checks that its pid was not reused)."""
    try:
        process.send_signal(sig)
    except psutil.NoSuchProcess:
        return False
    return True


def _stop_tree(main: psutil.Process) -> list[psutil.Process]:
    """SIGSTOPs `main`, then its descendants until no new one appears; returns them all.

    The main process is stopped first, so it cannot fork a child that the listing misses.
    """
    main.send_signal(signal.SIGSTOP)
    stopped = {main.pid: main}
    while True:
        try:
            new = [child for child in main.children(recursive=True) if child.pid not in stopped]
        except psutil.NoSuchProcess:
            break
        if not new:
            break
        for child in new:
            if _send(child, signal.SIGSTOP):
                stopped[child.pid] = child
    return list(stopped.values())


def _kill_tree(main: psutil.Process) -> list[psutil.Process]:
    """SIGKILLs `main` and its descendants and waits for them to be gone."""
    processes = _stop_tree(main)
    for process in processes:
        _send(process, signal.SIGKILL)
    _, alive = psutil.wait_procs(processes, timeout=_KILL_WAIT_S)
    if alive:
        pids = ", ".join(str(p.pid) for p in alive)
        raise ChaosError(f"processes {pids} were sent SIGKILL but still run after {_KILL_WAIT_S}s")
    return processes


def _pause(pid_file: str, main: psutil.Process) -> Injected:
    refs = [_ref(process) for process in _stop_tree(main)]
    recipe = {"backend": LOCAL, "fault": "pause", "pid_file": pid_file, "processes": refs}
    return Injected(f"paused {_processes(len(refs))} of pid {main.pid} (SIGSTOP)", recipe)


def _resume(refs: list[dict[str, Any]]) -> str:
    resumed = running = gone = 0
    for ref in refs:
        process = _same_process(ref)
        if process is None:
            gone += 1
            continue
        try:
            was_stopped = process.status() == psutil.STATUS_STOPPED
            process.send_signal(signal.SIGCONT)
        except psutil.NoSuchProcess:
            gone += 1
            continue
        if was_stopped:
            resumed += 1
        else:
            running += 1
    words = [f"resumed {resumed} of {len(refs)} processes (SIGCONT)"]
    if running:
        words.append(f"{running} were not stopped")
    if gone:
        words.append(f"{gone} are gone")
    return "; ".join(words)


def _kill(fault: PlannedFault, pid_file: str, main: psutil.Process) -> Injected:
    start = _StartSpec.from_fault(fault)
    refs = [_ref(process) for process in _kill_tree(main)]
    recipe = {"backend": LOCAL, "fault": "kill", "pid_file": pid_file, "processes": refs}
    recipe.update(start.recipe())
    return Injected(f"killed {_processes(len(refs))} of pid {main.pid} (SIGKILL)", recipe)


def _restart(fault: PlannedFault, pid_file: str, main: psutil.Process) -> Injected:
    start = _StartSpec.from_fault(fault)
    stop_timeout_s = _duration_s(fault.parameters, "stop_timeout")
    stop_signal = _stop_signal(fault.parameters)
    processes = [main, *main.children(recursive=True)]
    refs = [_ref(process) for process in processes]
    recipe = {"backend": LOCAL, "fault": "restart", "pid_file": pid_file, "processes": refs}
    recipe.update(start.recipe())

    main.send_signal(stop_signal)
    try:
        main.wait(stop_timeout_s)
        how = f"stopped by {stop_signal.name}"
    except psutil.TimeoutExpired:
        _kill_tree(main)
        how = f"killed after {stop_signal.name} left it running for {stop_timeout_s:g}s"
    # Its children usually end with it; the stragglers would keep the port or the data busy.
    _, alive = psutil.wait_procs(processes, timeout=min(stop_timeout_s, 5.0))
    for process in alive:
        _send(process, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=_KILL_WAIT_S)
    # Limitation: when starting again fails, inject raises and hands back no recipe, so the
    # fault journal cannot start the SUT later; the error says that the SUT is down.
    try:
        started = start.run()
    except ChaosError as error:
        raise ChaosError(
            f"pid {main.pid} was {how}, but starting it again failed, so the SUT is down: {error}"
        ) from None
    return Injected(f"pid {main.pid} {how}; {started}", recipe)


class _StartSpec:
    """How to start the SUT again and how to know it is back."""

    def __init__(
        self, command: list[str], log_path: Path, host: str, port: int, ready_timeout_s: float
    ) -> None:
        self.command = command
        self.log_path = log_path
        self.host = host
        self.port = port
        self.ready_timeout_s = ready_timeout_s

    @classmethod
    def from_fault(cls, fault: PlannedFault) -> "_StartSpec":
        log_path = get_settings().home / "chaos" / fault.run_id / f"{fault.name}.start.log"
        return cls(
            list(fault.target["start_command"]),
            log_path,
            fault.sut_host,
            fault.sut_port,
            _duration_s(fault.parameters, "ready_timeout"),
        )

    @classmethod
    def from_recipe(cls, recipe: Mapping[str, Any]) -> "_StartSpec":
        command = recipe.get("start_command")
        host, port = recipe.get("host"), recipe.get("port")
        log_path, ready = recipe.get("log_path"), recipe.get("ready_timeout_s")
        valid = (
            isinstance(command, list)
            and bool(command)
            and all(isinstance(arg, str) for arg in command)
            and isinstance(host, str)
            and isinstance(port, int)
            and isinstance(log_path, str)
            and isinstance(ready, (int, float))
        )
        if not valid:
            raise ChaosError(
                "the recipe lacks how to start the SUT again: expected start_command (a list of "
                "arguments), log_path, host, port and ready_timeout_s"
            )
        return cls(list(command), Path(log_path), host, port, float(ready))  # type: ignore[arg-type]

    def recipe(self) -> dict[str, Any]:
        return {
            "start_command": self.command,
            "log_path": str(self.log_path),
            "host": self.host,
            "port": self.port,
            "ready_timeout_s": self.ready_timeout_s,
        }

    def run(self) -> str:
        """Starts the command detached and waits until the SUT accepts connections."""
        began = time.monotonic()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} starting\n".encode())
            log.flush()
            try:
                process = subprocess.Popen(
                    self.command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as error:
                raise ChaosError(
                    f"start_command {self.command[0]} could not be run: {error.strerror} "
                    f"(log {self.log_path})"
                ) from None
        deadline = began + self.ready_timeout_s
        while True:
            if _accepts_tcp(self.host, self.port):
                return (
                    f"start_command run (pid {process.pid}); {self.host}:{self.port} accepts "
                    f"connections after {time.monotonic() - began:.1f}s (log {self.log_path})"
                )
            code = process.poll()
            # Exit status 0 is a command that daemonised the SUT (pg_ctl start): keep waiting.
            if code is not None and code != 0:
                raise ChaosError(
                    f"start_command exited with status {code} before {self.host}:{self.port} "
                    f"accepted connections; the end of {self.log_path}:\n{self._log_tail()}"
                )
            if time.monotonic() > deadline:
                # The SUT may still be recovering, so it is left to finish rather than killed.
                raise ChaosError(
                    f"{self.host}:{self.port} did not accept connections within "
                    f"{self.ready_timeout_s:g}s of start_command (pid {process.pid}, left "
                    f"running); the end of {self.log_path}:\n{self._log_tail()}"
                )
            time.sleep(0.1)

    def _log_tail(self) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - _LOG_TAIL_BYTES))
                return log.read().decode(errors="replace")
        except OSError as error:
            return f"(the log cannot be read: {error.strerror})"


def _accepts_tcp(host: str, port: int, timeout_s: float = 1.0) -> bool:
    # Limitation: accepting TCP is all this checks, so a database still replaying its log may
    # refuse its first sessions for a moment after it counts as ready.
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False
