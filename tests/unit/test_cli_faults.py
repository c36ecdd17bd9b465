"""`crucible faults`: the journal of faults in place, as an operator reads and settles it."""

import json
from pathlib import Path

from typer.testing import CliRunner

from crucible_dagster.cli import EXIT_FAILED, app
from crucible_dagster.lease import LeaseStore
from crucible_dagster.settings import get_settings

runner = CliRunner()
SUT = "postgresql://127.0.0.1:5432/db"
DEAD = "plan_20261204-0500_deadbeef"


def journal() -> LeaseStore:
    return LeaseStore(get_settings().database_url)


def proxy_recipe(name: str) -> str:
    # A proxy fault of a process long gone: recovering it has nothing to undo.
    return json.dumps({"backend": "local", "fault": "latency", "name": name,
                       "proxy_pid": 2**22 + 7, "proxy_port": 1})  # fmt: skip


def test_list_shows_the_faults_in_place_and_recover_settles_them(crucible_home: Path) -> None:
    journal().record_fault(SUT, DEAD, "slow-link", proxy_recipe("slow-link"))

    listed = runner.invoke(app, ["faults", "list"])
    assert listed.exit_code == 0, listed.output
    assert "slow-link" in listed.output and DEAD in listed.output

    recovered = runner.invoke(app, ["faults", "recover"])
    assert recovered.exit_code == 0, recovered.output
    assert "fault 'slow-link' on postgresql://127.0.0.1:5432/db recovered" in recovered.output
    assert journal().open_faults() == []
    assert "no fault is in place" in runner.invoke(app, ["faults", "list"]).output


def test_a_fault_that_cannot_be_recovered_stays_until_forgotten(crucible_home: Path) -> None:
    journal().record_fault(SUT, DEAD, "gone-host", json.dumps({"backend": "nowhere"}))

    recovered = runner.invoke(app, ["faults", "recover", DEAD])
    assert recovered.exit_code == EXIT_FAILED
    assert "could NOT be recovered: there is no chaos backend 'nowhere'" in recovered.output
    assert [f.name for f in journal().open_faults()] == ["gone-host"]

    unknown = runner.invoke(app, ["faults", "forget", DEAD, "other"])
    assert unknown.exit_code == EXIT_FAILED
    assert "no fault 'other' of run" in unknown.output
    forgot = runner.invoke(app, ["faults", "forget", DEAD, "gone-host"])
    assert forgot.exit_code == 0, forgot.output
    assert journal().open_faults() == []
