"""The local backend's process faults on a small process tree of this test: problems, recipes,
and recovery that never signals a process the recipe does not name."""

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from crucible_dagster.chaos.base import ChaosError, PlannedFault
from crucible_dagster.chaos.process import ProcessFaults

# A parent with one child, like a server that serves sessions from child processes.
_TREE = (
    "import socket, subprocess, time\n"
    "server = socket.create_server(('127.0.0.1', 0))\n"
    "child = subprocess.Popen(['sleep', '60'])\n"
    "print(child.pid, server.getsockname()[1], flush=True)\n"
    "time.sleep(60)\n"
)


class Tree:
    def __init__(self, tmp_path: Path) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", _TREE], stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        child, port = self.process.stdout.readline().split()
        self.child_pid, self.port = int(child), int(port)
        self.pid = self.process.pid
        self.pid_file = tmp_path / "server.pid"
        self.pid_file.write_text(f"{self.pid}\n/var/lib/data\n")

    def states(self) -> list[str]:
        return [psutil.Process(pid).status() for pid in (self.pid, self.child_pid)]

    def stop(self) -> None:
        for pid in (self.child_pid, self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Tree]:
    started = Tree(tmp_path)
    yield started
    started.stop()


def fault(
    fault_type: str, target: dict[str, Any], *, port: int = 5432, **parameters: Any
) -> PlannedFault:
    return PlannedFault(
        name=f"{fault_type}-sut",
        backend="local",
        fault_type=fault_type,
        target=target,
        parameters=parameters,
        start_s=5.0,
        end_s=15.0,
        run_id="plan_20250101-0000_0badcafe",
        sut_key="postgresql:127.0.0.1:5432:postgres",
        sut_host="127.0.0.1",
        sut_port=port,
    )


def test_pause_stops_the_process_and_its_children_and_recover_resumes_them(tree: Tree) -> None:
    backend = ProcessFaults()
    injected = backend.inject(fault("pause", {"pid_file": str(tree.pid_file)}, port=tree.port))

    assert tree.states() == [psutil.STATUS_STOPPED, psutil.STATUS_STOPPED]
    status = backend.recover(json.loads(json.dumps(injected.recipe)))

    assert status == "resumed 2 of 2 processes (SIGCONT)"
    assert psutil.STATUS_STOPPED not in tree.states()


def test_pause_recipe_names_each_process_by_pid_and_start_time(tree: Tree) -> None:
    injected = ProcessFaults().inject(
        fault("pause", {"pid_file": str(tree.pid_file)}, port=tree.port)
    )
    ProcessFaults().recover(injected.recipe)

    assert injected.recipe == {
        "backend": "local",
        "fault": "pause",
        "pid_file": str(tree.pid_file),
        "processes": [
            {"pid": tree.pid, "create_time": psutil.Process(tree.pid).create_time()},
            {"pid": tree.child_pid, "create_time": psutil.Process(tree.child_pid).create_time()},
        ],
    }


def test_recover_leaves_alone_a_pid_that_now_belongs_to_another_process(tree: Tree) -> None:
    backend = ProcessFaults()
    injected = backend.inject(fault("pause", {"pid_file": str(tree.pid_file)}, port=tree.port))
    # The same pids with other start times: what a recipe looks like once the pids were reused.
    reused = {
        **injected.recipe,
        "processes": [
            {"pid": p["pid"], "create_time": p["create_time"] - 3600}
            for p in injected.recipe["processes"]
        ],
    }

    status = backend.recover(reused)

    assert status == "resumed 0 of 2 processes (SIGCONT); 2 are gone"
    assert tree.states() == [psutil.STATUS_STOPPED, psutil.STATUS_STOPPED]
    backend.recover(injected.recipe)


def test_recovering_a_pause_twice_says_the_processes_were_not_stopped(tree: Tree) -> None:
    backend = ProcessFaults()
    injected = backend.inject(fault("pause", {"pid_file": str(tree.pid_file)}, port=tree.port))
    backend.recover(injected.recipe)

    status = backend.recover(injected.recipe)

    assert status == "resumed 0 of 2 processes (SIGCONT); 2 were not stopped"


def test_recovering_a_pause_after_the_processes_died_succeeds(tree: Tree) -> None:
    backend = ProcessFaults()
    injected = backend.inject(fault("pause", {"pid_file": str(tree.pid_file)}, port=tree.port))
    tree.stop()

    assert backend.recover(injected.recipe) == "resumed 0 of 2 processes (SIGCONT); 2 are gone"


def test_kill_ends_the_tree_and_its_recipe_says_how_to_start_again(
    tree: Tree, crucible_home: Path
) -> None:
    target = {"pid_file": str(tree.pid_file), "start_command": ["sleep", "1"]}
    planned = fault("kill", target, ready_timeout="45s", port=tree.port)

    injected = ProcessFaults().inject(planned)

    # psutil reaped the test's own child while waiting for it, so only its absence shows.
    assert not psutil.pid_exists(tree.pid)
    assert not psutil.pid_exists(tree.child_pid)
    assert injected.status == f"killed 2 processes of pid {tree.pid} (SIGKILL)"
    recipe = json.loads(json.dumps(injected.recipe))
    assert recipe == {
        "backend": "local",
        "fault": "kill",
        "pid_file": str(tree.pid_file),
        "processes": [
            {"pid": tree.pid, "create_time": recipe["processes"][0]["create_time"]},
            {"pid": tree.child_pid, "create_time": recipe["processes"][1]["create_time"]},
        ],
        "start_command": ["sleep", "1"],
        "log_path": str(crucible_home / "chaos" / planned.run_id / "kill-sut.start.log"),
        "host": "127.0.0.1",
        "port": tree.port,
        "ready_timeout_s": 45.0,
    }


def test_a_missing_pid_file_is_a_problem_naming_it(tmp_path: Path) -> None:
    pid_file = tmp_path / "postmaster.pid"

    problems = ProcessFaults().problems(fault("pause", {"pid_file": str(pid_file)}))

    assert problems == [f"pid file {pid_file} does not exist (is the SUT running?)"]


def test_a_pid_file_without_a_pid_is_a_problem(tmp_path: Path) -> None:
    pid_file = tmp_path / "postmaster.pid"
    pid_file.write_text("postgres\n")

    problems = ProcessFaults().problems(fault("pause", {"pid_file": str(pid_file)}))

    assert problems == [
        f"pid file {pid_file}: expected a process id on its first line, got 'postgres'"
    ]


def test_a_pid_file_naming_a_dead_process_is_a_problem(tmp_path: Path) -> None:
    finished = subprocess.Popen(["true"])
    finished.wait()
    pid_file = tmp_path / "postmaster.pid"
    pid_file.write_text(f"{finished.pid}\n")

    problems = ProcessFaults().problems(fault("pause", {"pid_file": str(pid_file)}))

    assert problems == [f"pid file {pid_file} names pid {finished.pid}, which is not running"]


def test_a_pid_file_that_cannot_be_read_is_a_problem(tmp_path: Path) -> None:
    problems = ProcessFaults().problems(fault("pause", {"pid_file": str(tmp_path)}))

    assert len(problems) == 1
    assert problems[0].startswith(f"pid file {tmp_path} cannot be read")


def test_unknown_parameters_are_named_with_those_accepted(tree: Tree) -> None:
    target = {"pid_file": str(tree.pid_file), "start_command": ["sleep", "1"]}

    pause = ProcessFaults().problems(fault("pause", target, signal="KILL", port=tree.port))
    restart = ProcessFaults().problems(
        fault("restart", target, grace="5s", wait="1s", port=tree.port)
    )

    assert pause == ["a pause fault has no parameter signal: it takes none"]
    assert restart == [
        "a restart fault has no parameter grace, wait: it takes stop_timeout, ready_timeout, "
        "stop_signal"
    ]


def test_bad_durations_and_stop_signals_are_problems(tree: Tree) -> None:
    target = {"pid_file": str(tree.pid_file), "start_command": ["sleep", "1"]}
    planned = fault(
        "restart", target, ready_timeout="0s", stop_timeout=30, stop_signal="HUP", port=tree.port
    )

    problems = ProcessFaults().problems(planned)

    assert problems == [
        "parameter ready_timeout: expected a duration longer than 0s, got '0s'",
        "parameter stop_timeout: expected a duration like 30s or 1m30s, got 30",
        "parameter stop_signal: expected one of SIGTERM, SIGINT, SIGQUIT, got 'HUP'",
    ]


def test_stop_signal_may_be_written_without_sig_in_any_case(tree: Tree) -> None:
    target = {"pid_file": str(tree.pid_file), "start_command": ["sleep", "1"]}

    assert (
        ProcessFaults().problems(fault("restart", target, stop_signal="int", port=tree.port)) == []
    )


def test_a_start_command_that_cannot_run_is_a_problem(tree: Tree, tmp_path: Path) -> None:
    not_executable = tmp_path / "start.sh"
    not_executable.write_text("#!/bin/sh\n")
    commands = {
        "no-such-server": "program 'no-such-server' is not on the PATH",
        str(tmp_path / "missing"): f"program {tmp_path / 'missing'} does not exist",
        str(not_executable): f"program {not_executable} is not executable",
    }

    for command, expected in commands.items():
        target = {"pid_file": str(tree.pid_file), "start_command": [command]}
        problems = ProcessFaults().problems(fault("kill", target, port=tree.port))
        assert len(problems) == 1
        assert problems[0].startswith(f"target.start_command: {expected}")


def test_kill_without_start_command_or_sut_port_lists_both(tree: Tree) -> None:
    planned = PlannedFault(
        name="kill-sut",
        backend="local",
        fault_type="kill",
        target={"pid_file": str(tree.pid_file)},
        parameters={},
        start_s=0.0,
        end_s=1.0,
        run_id="r",
        sut_key="k",
    )

    problems = ProcessFaults().problems(planned)

    assert problems[0] == "a kill fault needs target.start_command"
    assert problems[1].startswith("a kill fault needs the SUT's host and port")


def test_inject_refuses_a_fault_with_problems(tmp_path: Path) -> None:
    planned = fault("pause", {"pid_file": str(tmp_path / "gone.pid")})

    with pytest.raises(ChaosError, match=r"cannot inject 'pause-sut': pid file .* does not exist"):
        ProcessFaults().inject(planned)


def test_a_network_fault_is_not_a_process_fault() -> None:
    problems = ProcessFaults().problems(fault("loss", {"netns": "sut"}))

    assert problems == ["'loss' is not a process fault: expected one of pause, kill, restart"]


def test_recover_refuses_a_recipe_of_another_backend() -> None:
    with pytest.raises(ChaosError, match="not a recipe of the local backend's process faults"):
        ProcessFaults().recover({"backend": "chaos-mesh", "fault": "PodChaos"})


def test_recover_refuses_a_kill_recipe_without_its_start_command() -> None:
    with pytest.raises(ChaosError, match="lacks how to start the SUT again"):
        ProcessFaults().recover({"backend": "local", "fault": "kill", "processes": []})


def test_a_pid_file_of_a_process_not_listening_on_the_sut_port_is_a_problem(tree: Tree) -> None:
    other_port = tree.port + 1 if tree.port < 65535 else 1
    target = {"pid_file": str(tree.pid_file)}
    problems = ProcessFaults().problems(fault("pause", target, port=other_port))
    name = psutil.Process(tree.pid).name()
    assert problems == [
        f"pid file {tree.pid_file} names pid {tree.pid} ({name}), which does not listen on port "
        f"{other_port}, the SUT's: is it the SUT's pid file?"
    ]
