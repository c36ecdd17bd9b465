"""Plan loading: positions of problems, strict types, YAML pitfalls, names, secrets, durations."""

import hashlib
import pickle
from pathlib import Path

import pytest

from crucible_dagster.errors import CrucibleError, Problem, ValidationError
from crucible_dagster.plan import Duration, LoadedPlan, Secret, load_plan, parse_plan

PLAN = """\
test_metadata:
  run_label: smoke
test_environment:
  env_type: long-lived
  target_db: tpch
  component_spec:
    type: postgresql
    cluster_info:
      host: 127.0.0.1
      username: postgres
      password: hunter2-literal
execution:
  concurrency: 4
  ramp_up: 0s
  hold_for: 10s
  workload:
    - workload_id: smoke
"""


def load(text: str, name: str = "smoke") -> LoadedPlan:
    return parse_plan(text, source="p.yaml", name=name)


def problems(text: str, name: str = "smoke") -> list[Problem]:
    with pytest.raises(ValidationError) as caught:
        load(text, name)
    return caught.value.problems


def where(problem: Problem) -> tuple[int | None, int | None]:
    return (problem.location.line, problem.location.column)


# --- positions ----------------------------------------------------------------------------


def test_wrong_type_points_at_the_value_with_field_and_expectation() -> None:
    [problem] = problems(PLAN.replace("concurrency: 4", "concurrency: '5'"))

    assert problem.location.file == "p.yaml"
    assert where(problem) == (13, 16)
    assert problem.field == "execution.concurrency"
    assert problem.message == "expected an integer > 0, got '5' (a string)"
    assert str(problem) == (
        "p.yaml:13:16: execution.concurrency: expected an integer > 0, got '5' (a string)"
    )


def test_unknown_key_points_at_the_key_and_suggests_the_close_one() -> None:
    [problem] = problems(PLAN.replace("  hold_for: 10s", "  hold_for: 10s\n  concurency: 3"))

    assert where(problem) == (16, 3)
    assert problem.field == "execution.concurency"
    assert problem.message == "unknown key 'concurency'; did you mean 'concurrency'?"


def test_unknown_key_without_a_close_match_lists_the_allowed_keys() -> None:
    [problem] = problems(PLAN.replace("  run_label: smoke", "  run_label: smoke\n  owner: me"))

    assert problem.message == "unknown key 'owner': expected one of run_label"


def test_unknown_top_level_key_is_an_error() -> None:
    [problem] = problems(PLAN + "cluster_spec: {type: doris}\n")

    assert where(problem) == (18, 1)
    assert problem.field == "cluster_spec"


def test_missing_key_points_at_its_parent_key() -> None:
    [problem] = problems(PLAN.replace("  concurrency: 4\n", ""))

    assert where(problem) == (12, 1)
    assert problem.field == "execution.concurrency"
    assert problem.message == "required key 'concurrency' is missing (expected an integer > 0)"


def test_nested_list_item_error_points_into_the_list() -> None:
    [problem] = problems(PLAN.replace("workload_id: smoke", "workload_id: ../up"))

    assert where(problem) == (17, 20)
    assert problem.field == "execution.workload[0].workload_id"


def test_every_problem_is_listed_in_file_order() -> None:
    text = PLAN.replace("concurrency: 4", "concurrency: 0").replace("hold_for: 10s", "hold_for: 10")
    text = text.replace("type: postgresql", "type: oracle")

    found = problems(text)

    assert [p.field for p in found] == [
        "test_environment.component_spec.type",
        "execution.concurrency",
        "execution.hold_for",
    ]


def test_loaded_plan_knows_where_each_field_is() -> None:
    loaded = load(PLAN)

    assert where_of(loaded, "execution", "workload", 0, "workload_id") == (17, 20)
    assert where_of(loaded, "execution", "shards") == (12, 1)


def where_of(loaded: LoadedPlan, *path: str | int) -> tuple[int | None, int | None]:
    location = loaded.location(*path)
    return (location.line, location.column)


# --- strict types -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "got"),
    [("'5'", "'5' (a string)"), ("true", "true (a boolean)"), ("2.0", "2.0 (a number)")],
)
def test_no_lax_coercion_for_integers(value: str, got: str) -> None:
    [problem] = problems(PLAN.replace("concurrency: 4", f"concurrency: {value}"))

    assert problem.message == f"expected an integer > 0, got {got}"


def test_string_field_does_not_take_a_number() -> None:
    [problem] = problems(PLAN.replace("target_db: tpch", "target_db: 5"))

    assert problem.message == "expected text, got 5 (an integer)"


def test_boolean_field_does_not_take_a_string() -> None:
    text = PLAN + "  failure_detection:\n    enabled: 'yes'\n"

    [problem] = problems(text)

    assert problem.message == "expected true or false, got 'yes' (a string)"


def test_yaml_1_1_yes_and_no_stay_text() -> None:
    # PyYAML's default would turn `no` into False; plans read YAML 1.2 booleans only.
    loaded = load(PLAN.replace("run_label: smoke", "run_label: no"))

    assert loaded.plan.test_metadata.run_label == "no"


def test_section_that_is_not_a_mapping_is_an_error() -> None:
    [problem] = problems(PLAN.replace("  run_label: smoke", "  - smoke"))

    assert problem.field == "test_metadata"
    assert problem.message == "expected a mapping, got a list"


# --- YAML itself --------------------------------------------------------------------------


def test_duplicate_key_is_an_error_at_the_second_one() -> None:
    [problem] = problems(PLAN.replace("  ramp_up: 0s", "  ramp_up: 0s\n  ramp_up: 5s"))

    assert where(problem) == (15, 3)
    assert problem.message == "duplicate key 'ramp_up' (first at line 14)"


def test_yaml_syntax_error_carries_its_mark() -> None:
    [problem] = problems("test_metadata:\n  run_label: [unclosed\n")

    assert problem.location.line == 3
    assert problem.message.startswith("invalid YAML:")


def test_tab_indentation_error_is_reported_with_position() -> None:
    [problem] = problems("test_metadata:\n\trun_label: x\n")

    assert problem.location.line == 2


@pytest.mark.parametrize(
    "text",
    [
        "",
        "# only a comment\n",
        "- a\n- b\n",
        "just text",
        "42",
        "\x00\x01\x02binary",
        "a: !!python/object:os.system {}\n",
        "a: !custom x\n",
        "a: &x [*x]\n",
        "? [a, b]\n: c\n",
        "1: one\n",
        "---\na: 1\n---\nb: 2\n",
        "base: &b {x: 1}\nother:\n  <<: *b\n",
        "a: " + "[" * 2000 + "]" * 2000 + "\n",
        'a: "\\x"\n',
    ],
)
def test_any_text_gives_a_validation_error_not_a_traceback(text: str) -> None:
    found = problems(text)

    assert found
    assert all(p.location.file == "p.yaml" for p in found)


def test_alias_bomb_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7)]

    found = problems("\n".join(lines) + "\n")

    assert "more than" in found[0].message


def test_undecodable_plan_file_is_a_validation_error(tmp_path: Path) -> None:
    path = tmp_path / "smoke.yaml"
    path.write_bytes(b"test_metadata:\n  run_label: \xff\xfe\n")

    with pytest.raises(ValidationError) as caught:
        load_plan(path)

    assert where(caught.value.problems[0]) == (2, 14)


def test_missing_plan_file_is_a_validation_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as caught:
        load_plan(tmp_path / "nope.yaml")

    assert caught.value.problems[0].message == "plan file not found"


# --- names and provenance -----------------------------------------------------------------


def test_load_plan_records_name_text_hash_and_folder(tmp_path: Path) -> None:
    path = tmp_path / "nightly_tpch.yaml"
    path.write_text(PLAN)

    loaded = load_plan(path)

    assert (loaded.name, loaded.source, loaded.folder) == ("nightly_tpch", str(path), tmp_path)
    assert loaded.text == PLAN
    assert loaded.sha256 == hashlib.sha256(PLAN.encode()).hexdigest()


@pytest.mark.parametrize("name", ["Demo", "demo-tpch", "1demo", "_demo", "a" * 41, "démo", ""])
def test_plan_name_must_match_the_rule_and_is_never_renamed(name: str) -> None:
    found = problems(PLAN, name=name)

    assert len(found) == 1
    assert found[0].message.startswith(f"plan name {name!r} must match ^[a-z][a-z0-9_]{{0,39}}$")


@pytest.mark.parametrize("name", ["a", "demo_tpch", "x" * 40, "nightly2"])
def test_valid_plan_names_are_kept(name: str) -> None:
    assert load(PLAN, name=name).name == name


def test_bad_name_is_reported_together_with_the_other_problems() -> None:
    found = problems(PLAN.replace("concurrency: 4", "concurrency: -1"), name="Bad")

    assert len(found) == 2


# --- secrets ------------------------------------------------------------------------------

LITERAL = "hunter2-literal"


def test_literal_password_never_appears_in_dumps_or_reprs() -> None:
    plan = load(PLAN).plan
    info = plan.test_environment.component_spec.cluster_info
    assert info is not None

    shown = [
        repr(plan),
        str(plan),
        repr(info.password),
        str(info.password),
        plan.model_dump_json(),
        str(plan.model_dump()),
        str(plan.model_dump(mode="json")),
    ]

    assert all(LITERAL not in text for text in shown)
    assert (
        plan.model_dump(mode="json")["test_environment"]["component_spec"]["cluster_info"][
            "password"
        ]
        == "**********"
    )
    assert info.password.reveal() == LITERAL


def test_env_password_resolves_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRUCIBLE_TEST_PW", "from-env-secret")
    plan = load(PLAN.replace(f"password: {LITERAL}", "password: {env: CRUCIBLE_TEST_PW}")).plan
    info = plan.test_environment.component_spec.cluster_info
    assert info is not None

    assert info.password.reveal() == "from-env-secret"
    assert plan.model_dump(mode="json")["test_environment"]["component_spec"]["cluster_info"][
        "password"
    ] == {"env": "CRUCIBLE_TEST_PW"}
    assert str(info.password) == "{env: CRUCIBLE_TEST_PW}"
    assert "from-env-secret" not in repr(plan) + plan.model_dump_json()


def test_missing_password_variable_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRUCIBLE_NO_SUCH_PW", raising=False)
    secret = Secret(env="CRUCIBLE_NO_SUCH_PW")

    with pytest.raises(CrucibleError, match="CRUCIBLE_NO_SUCH_PW is not set"):
        secret.reveal()


def test_file_password_reads_a_mounted_secret_without_its_newline(tmp_path: Path) -> None:
    secret_file = tmp_path / "pg-password"
    secret_file.write_text("from-file-secret\n")
    plan = load(PLAN.replace(f"password: {LITERAL}", f"password: {{file: {secret_file}}}")).plan
    info = plan.test_environment.component_spec.cluster_info
    assert info is not None

    assert info.password.reveal() == "from-file-secret"
    assert str(info.password) == f"{{file: {secret_file}}}"
    assert "from-file-secret" not in repr(plan) + plan.model_dump_json()
    assert pickle.loads(pickle.dumps(info.password)).reveal() == "from-file-secret"


def test_unreadable_password_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-secret"

    with pytest.raises(CrucibleError) as raised:
        Secret(file=str(missing)).reveal()
    assert str(raised.value) == (
        f"cannot read {missing} (it holds a password): No such file or directory"
    )


@pytest.mark.parametrize(
    "value",
    ["12345678", "{env: 1BAD}", "{env: X, other: y}", "[a, b]", "{name: X}", "{file: ''}"],
)
def test_invalid_password_is_an_error_that_never_echoes_the_value(value: str) -> None:
    [problem] = problems(PLAN.replace(f"password: {LITERAL}", f"password: {value}"))

    assert problem.field == "test_environment.component_spec.cluster_info.password"
    assert "12345678" not in str(problem)
    assert "BAD" not in str(problem) and "other" not in str(problem)


def test_password_is_never_in_errors_about_other_fields() -> None:
    found = problems(PLAN.replace("username: postgres", "username: 7\n      extra: 1"))

    assert found
    assert all(LITERAL not in str(p) for p in found)


def test_secret_survives_pickling_for_shard_processes() -> None:
    secret = Secret(literal="s3")

    assert pickle.loads(pickle.dumps(secret)).reveal() == "s3"


# --- durations ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0s", 0.0),
        ("30s", 30.0),
        ("500ms", 0.5),
        ("1m30s", 90.0),
        ("1.5m", 90.0),
        ("2h", 7200.0),
        ("250us", 0.00025),
        ("1h1m1s1ms", 3661.001),
    ],
)
def test_duration_grammar_and_seconds(text: str, seconds: float) -> None:
    duration = Duration(text)

    assert duration.seconds == pytest.approx(seconds)
    assert str(duration) == text


@pytest.mark.parametrize("text", ["", "30", "1 m", "1M", "m", "1.m", "-1s", "1d", " 1s", "1s "])
def test_invalid_durations_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        Duration(text)


def test_bare_number_duration_says_to_use_a_unit() -> None:
    [problem] = problems(PLAN.replace("hold_for: 10s", "hold_for: 30"))

    assert problem.message == (
        "expected a duration with a unit, got the bare number 30: use a duration like 30s"
    )


def test_duration_in_a_string_without_unit_suggests_one() -> None:
    [problem] = problems(PLAN.replace("hold_for: 10s", "hold_for: '30'"))

    assert "add a unit" in problem.message


def test_duration_serialises_back_to_its_text() -> None:
    plan = load(PLAN.replace("hold_for: 10s", "hold_for: 1m30s")).plan

    assert plan.model_dump(mode="json")["execution"]["hold_for"] == "1m30s"
    assert plan.execution.hold_for == Duration("90s")
