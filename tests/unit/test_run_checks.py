"""What a run refuses before it touches the SUT, each with the plan file and a way out."""

import re
from pathlib import Path

import pytest

from crucible_dagster.errors import RunError, ValidationError
from crucible_dagster.plan import load_plan
from crucible_dagster.run import PlanRun, check_run, open_run
from crucible_dagster.settings import PROJECT_ROOT, get_settings

DEMO = (PROJECT_ROOT / "plans" / "demo_tpch.yaml").read_text()


def checked(tmp_path: Path, text: str) -> None:
    folder = tmp_path / "plans"
    (folder / "workloads").mkdir(parents=True)
    source = PROJECT_ROOT / "plans" / "workloads" / "tpch_postgresql.sql"
    (folder / "workloads" / "tpch_postgresql.sql").write_text(source.read_text())
    (folder / "p.yaml").write_text(text)
    check_run(open_run(load_plan(folder / "p.yaml"), get_settings()))


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("executor: native", "executor: k6", "needs a k6 built with xk6-sql"),
        ("scaling_mode: intra_node", "scaling_mode: inter_node", "use scaling_mode: intra_node"),
    ],
)
def test_run_refuses_what_this_version_cannot_do(
    crucible_home: Path, tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert old in DEMO
    with pytest.raises((RunError, ValidationError), match=expected) as raised:
        checked(tmp_path, DEMO.replace(old, new))
    assert "p.yaml" in str(raised.value)


def test_the_demo_plan_passes_the_run_checks(crucible_home: Path, tmp_path: Path) -> None:
    checked(tmp_path, DEMO)


def test_a_cql_workload_is_refused_on_a_sql_sut(crucible_home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "plans"
    (folder / "workloads").mkdir(parents=True)
    cql = "-- @type: cql\n-- @name: read_user\nSELECT * FROM users WHERE id = 1;\n"
    (folder / "workloads" / "tpch_postgresql.cql").write_text(cql)
    (folder / "p.yaml").write_text(DEMO)

    with pytest.raises(ValidationError) as raised:
        check_run(open_run(load_plan(folder / "p.yaml"), get_settings()))

    [problem] = raised.value.problems
    assert problem.location.file == str(folder / "p.yaml")
    assert "is cql, but postgresql takes sql workloads" in problem.message


def test_every_sut_type_of_a_plan_has_a_driver_taking_its_workload_type() -> None:
    from crucible_dagster.plan.models import SUT_TYPES
    from crucible_dagster.plan.validation import CQL_SUT_TYPES
    from crucible_dagster.suts.driver import driver_for, supported_sut_types

    assert sorted(supported_sut_types()) == sorted(SUT_TYPES)
    takes_cql = {t for t in SUT_TYPES if driver_for(t).workload_types == ("cql",)}
    assert takes_cql == set(CQL_SUT_TYPES)
    assert all(driver_for(t).workload_types == ("sql",) for t in set(SUT_TYPES) - takes_cql)


def test_an_unknown_sut_type_names_the_ones_the_engine_drives() -> None:
    from crucible_dagster.errors import SutError
    from crucible_dagster.suts.driver import driver_for

    with pytest.raises(SutError, match=r"no driver for oracle yet; it drives .*postgresql"):
        driver_for("oracle")


def test_tls_files_are_found_from_the_plans_folder(
    crucible_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRUCIBLE_DEMO_PG_PASSWORD", "x")
    tls = "      tls: {ca_file: certs/ca.crt, cert_file: /etc/client.crt, key_file: client.key}\n"
    text = DEMO.replace("      username: postgres\n", "      username: postgres\n" + tls)
    assert text != DEMO
    (tmp_path / "p.yaml").write_text(text)

    target = open_run(load_plan(tmp_path / "p.yaml"), get_settings()).target()

    assert target.tls is not None
    assert target.tls.ca_file == str(tmp_path / "certs" / "ca.crt")
    assert target.tls.cert_file == "/etc/client.crt"
    assert target.tls.key_file == str(tmp_path / "client.key")
    assert target.tls.verify is True


def test_a_relative_password_file_is_read_from_the_plans_folder(
    crucible_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "pg").write_text("from-the-plans-folder\n")
    text = DEMO.replace("{env: CRUCIBLE_DEMO_PG_PASSWORD}", "{file: secrets/pg}")
    assert text != DEMO
    (tmp_path / "p.yaml").write_text(text)
    monkeypatch.chdir(crucible_home.parent)

    target = open_run(load_plan(tmp_path / "p.yaml"), get_settings()).target()

    assert target.password.get_secret_value() == "from-the-plans-folder"


def test_the_connection_uses_the_host_the_plan_wrote(
    crucible_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRUCIBLE_DEMO_PG_PASSWORD", "x")
    text = DEMO.replace("host: 127.0.0.1", 'host: "[::1]:5999"')
    assert text != DEMO
    (tmp_path / "p.yaml").write_text(text)

    run = open_run(load_plan(tmp_path / "p.yaml"), get_settings())

    assert run.target().host == "::1"
    assert run.sut.key == "postgresql://127.0.0.1:15433/tpch"  # the explicit port wins


EMBEDDED = """\
test_metadata: {run_label: e}
test_environment:
  env_type: long-lived
  target_db: TARGET
  component_spec: {type: duckdb}
execution: {concurrency: 1, ramp_up: 0s, hold_for: 1s, workload: [{workload_id: w}]}
"""


def embedded_run(tmp_path: Path, target_db: str, name: str = "e") -> PlanRun:
    (tmp_path / f"{name}.yaml").write_text(EMBEDDED.replace("TARGET", target_db))
    return open_run(load_plan(tmp_path / f"{name}.yaml"), get_settings())


def test_two_spellings_of_one_database_file_are_one_sut(
    crucible_home: Path, tmp_path: Path
) -> None:
    relative = embedded_run(tmp_path, "bench/tpch.duckdb", "a")
    absolute = embedded_run(tmp_path, str(crucible_home / "databases/bench/x/../tpch.duckdb"), "b")

    assert relative.sut == absolute.sut
    assert relative.sut.key == f"duckdb://{crucible_home / 'databases' / 'bench' / 'tpch.duckdb'}"
    assert relative.target().database == str(crucible_home / "databases" / "bench" / "tpch.duckdb")


def test_an_embedded_database_among_crucibles_own_files_is_refused(
    crucible_home: Path, tmp_path: Path
) -> None:
    run = embedded_run(tmp_path, str(crucible_home / "crucible.db"))

    with pytest.raises(RunError, match="among Crucible's own files"):
        run.target()


def test_inter_node_refuses_a_literal_password_and_k6_without_its_image(
    crucible_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRUCIBLE_K8S_IMAGE", "crucible:test")
    monkeypatch.setenv("CRUCIBLE_K8S_NAMESPACE", "load")
    monkeypatch.setenv("CRUCIBLE_K8S_PASSWORD_SECRET", "sut-passwords")
    get_settings.cache_clear()
    try:
        pods = DEMO.replace("scaling_mode: intra_node", "scaling_mode: inter_node")
        literal = re.sub(r"password: .*", "password: hunter2", pods, count=1)
        with pytest.raises(ValidationError, match=r"as \{env: NAME\}"):
            checked(tmp_path / "a", literal)
        with pytest.raises(ValidationError, match="CRUCIBLE_K8S_K6_IMAGE"):
            checked(tmp_path / "b", pods.replace("executor: native", "executor: k6"))
        checked(tmp_path / "c", pods)  # with the settings and an {env: NAME} password: fine
    finally:
        get_settings.cache_clear()


def test_pod_resources_must_be_kubernetes_quantities(tmp_path: Path) -> None:
    plan = DEMO.replace("  concurrency:", "  resources: {requests: {cpu: lots}}\n  concurrency:", 1)
    with pytest.raises(ValidationError, match="not a Kubernetes quantity"):
        checked(tmp_path, plan)


def test_a_chaos_experiment_its_backend_cannot_inject_is_refused_at_its_line(
    crucible_home: Path, tmp_path: Path
) -> None:
    chaos = """chaos_spec:
  engine: chaos-mesh
  experiments:
    - name: slow-network
      fault_type: networkchaos
      target: {env_type: k8s, namespace: db, selector: {app: db}}
      schedule: {start_after: 1s, duration: 2s}
"""
    with pytest.raises(ValidationError) as raised:
        checked(tmp_path, DEMO.rstrip("\n") + "\n" + chaos)
    [problem] = raised.value.problems
    assert problem.field == "chaos_spec.experiments[0]"
    assert "p.yaml:" in str(problem.location)
    assert "experiment 'slow-network'" in problem.message
    assert "NetworkChaos needs an action" in problem.message


def test_a_bad_chaos_parameter_is_located_at_the_parameter(
    crucible_home: Path, tmp_path: Path
) -> None:
    chaos = """chaos_spec:
  engine: local
  experiments:
    - name: slow
      fault_type: latency
      target: {}
      parameters:
        latency: 50
      schedule: {start_after: 1s, duration: 2s}
"""
    text = DEMO.rstrip("\n") + "\n" + chaos
    with pytest.raises(ValidationError) as raised:
        checked(tmp_path, text)
    [problem] = raised.value.problems
    assert problem.field == "chaos_spec.experiments[0].parameters.latency"
    line = text.splitlines().index("        latency: 50") + 1
    assert problem.location.line == line
