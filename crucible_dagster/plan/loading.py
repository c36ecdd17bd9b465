"""Reading a plan file: YAML with positions, pydantic validation, problems with line and column.

PyYAML's `compose` gives a node tree with marks. The tree is turned into plain Python data here
(so duplicate keys, odd tags and non-text keys are caught with their positions), and every
pydantic error is mapped back to the mark of the key or value it is about.
"""

import datetime
import difflib
import hashlib
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from inspect import isclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
import pydantic
import yaml
from pydantic.fields import FieldInfo

from crucible_dagster.errors import Location, Problem, ValidationError, decode_utf8
from crucible_dagster.plan import models
from crucible_dagster.plan.duration import Duration
from crucible_dagster.plan.models import Plan
from crucible_dagster.plan.secret import Secret

PLAN_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"
_PLAN_NAME = re.compile(PLAN_NAME_PATTERN)
# An alias-heavy document can expand exponentially; a real plan has a few hundred values.
_MAX_VALUES = 100_000

FieldPath = tuple[str | int, ...]
_UNION_TAGS = models.FIXTURE_FORM_TAGS
# The model behind each tag of a tagged union, for messages about its keys.
_TAGGED_MEMBERS: dict[str, Any] = {
    _UNION_TAGS["fixture_id"]: models.FixtureItem,
    _UNION_TAGS["dataset"]: models.FixtureGroup,
    "rule": models.ThresholdRule,
    "text": str,
    "options": models.TlsOptions,
    "flag": bool,
}


@dataclass(frozen=True)
class LoadedPlan:
    """A validated plan with what it was read from: its name, exact text and that text's hash."""

    name: str
    source: str
    text: str
    sha256: str
    plan: Plan
    folder: Path | None = None
    positions: Mapping[FieldPath, tuple[int, int]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def location(self, *path: str | int) -> Location:
        """Where a field sits in the plan file (the nearest enclosing field if it is absent)."""
        for end in range(len(path), -1, -1):
            spot = self.positions.get(tuple(path[:end]))
            if spot is not None:
                return Location(self.source, *spot)
        return Location(self.source)


def load_plan(path: Path) -> LoadedPlan:
    """Reads and validates a plan file; its name is the file stem."""
    source = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValidationError([Problem(Location(source), "plan file not found")]) from None
    except OSError as error:
        message = f"cannot read the plan file: {error.strerror or error}"
        raise ValidationError([Problem(Location(source), message)]) from None
    text = decode_utf8(data, source=source, what="plan")
    loaded = parse_plan(text, source=source, name=path.stem)
    return LoadedPlan(
        loaded.name,
        loaded.source,
        loaded.text,
        loaded.sha256,
        loaded.plan,
        path.parent,
        loaded.positions,
    )


def parse_plan(text: str, *, source: str, name: str) -> LoadedPlan:
    """Validates plan text; raises ValidationError listing every problem with its position."""
    problems: list[Problem] = []
    if not _PLAN_NAME.match(name):
        problems.append(
            Problem(
                Location(source),
                f"plan name {name!r} must match {PLAN_NAME_PATTERN} (lowercase letters, digits "
                "and underscores, starting with a letter; it names the Dagster job): "
                "rename the file",
            )
        )

    tree = _Tree(source)
    data = tree.read(text)
    problems += tree.problems
    if tree.problems:
        raise ValidationError(problems)

    try:
        plan = Plan.model_validate(data)
    except pydantic.ValidationError as error:
        problems += _problems_from_pydantic(error, data, tree)
        raise ValidationError(_unique(problems)) from None
    if problems:
        raise ValidationError(problems)

    # A container (mapping or list) is located at its key, a scalar at its value.
    positions = {
        path: tree.keys[path] if path in tree.containers and path in tree.keys else spot
        for path, spot in tree.values.items()
    }
    sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return LoadedPlan(name, source, text, sha256, plan, None, positions)


class _PlanLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans (`yes`, `no`, `on` and `off` stay text) and no
    timestamps: no plan field is a date, and `2020-13-45` must be text, not a crash."""


_BOOL_TAG = "tag:yaml.org,2002:bool"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_PlanLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_BOOL_TAG, _TIMESTAMP_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_PlanLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)

_STR_TAG = "tag:yaml.org,2002:str"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"


class _Tree:
    """Plain data from YAML text, with the 1-based (line, column) of every key and value."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.values: dict[FieldPath, tuple[int, int]] = {}
        self.keys: dict[FieldPath, tuple[int, int]] = {}
        self.containers: set[FieldPath] = set()
        self.problems: list[Problem] = []
        self._count = 0

    def read(self, text: str) -> Any:
        loader: _PlanLoader | None = None
        try:
            loader = _PlanLoader(text)
            root = loader.get_single_node()
            if root is None:
                self._problem("the plan is empty: expected test_metadata, test_environment and "
                              "execution", (1, 1))  # fmt: skip
                return None
            if not isinstance(root, yaml.MappingNode):
                self._problem(
                    "a plan is a mapping with test_metadata, test_environment and execution, "
                    f"not {_node_kind(root)}",
                    _spot(root.start_mark),
                )
                return None
            return self._convert(root, (), loader, set())
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            message = " ".join(str(p) for p in (error.context, error.problem) if p)
            self._problem(f"invalid YAML: {message}", _spot(mark) if mark else None)
        except yaml.reader.ReaderError as error:
            before = text[: error.position]
            spot = (before.count("\n") + 1, error.position - (before.rfind("\n") + 1) + 1)
            character = error.character
            shown = f"#x{character:04x}" if isinstance(character, int) else repr(character)
            self._problem(f"invalid YAML: unacceptable character {shown}", spot)
        except RecursionError:
            self._problem("the plan is nested too deeply to read", None)
        except yaml.YAMLError as error:
            self._problem(f"invalid YAML: {error}", None)
        finally:
            if loader is not None:
                loader.dispose()
        return None

    def _convert(
        self, node: yaml.Node, path: FieldPath, loader: _PlanLoader, active: set[int]
    ) -> Any:
        self._count += 1
        if self._count > _MAX_VALUES:
            raise _TooLarge
        self.values[path] = _spot(node.start_mark)
        if id(node) in active:
            self._problem("a YAML alias refers to itself", _spot(node.start_mark))
            return None
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            self.containers.add(path)
        if isinstance(node, yaml.MappingNode):
            if node.tag != _MAP_TAG:
                self._problem(f"unsupported YAML tag {node.tag!r}", _spot(node.start_mark))
            return self._mapping(node, path, loader, active | {id(node)})
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ_TAG:
                self._problem(f"unsupported YAML tag {node.tag!r}", _spot(node.start_mark))
            inner = active | {id(node)}
            return [
                self._convert(item, (*path, index), loader, inner)
                for index, item in enumerate(node.value)
            ]
        try:
            return loader.construct_object(node)
        except yaml.YAMLError:
            self._problem(f"unsupported YAML tag {node.tag!r}", _spot(node.start_mark))
            return None

    def _mapping(
        self, node: yaml.MappingNode, path: FieldPath, loader: _PlanLoader, active: set[int]
    ) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            spot = _spot(key_node.start_mark)
            if key_node.tag == "tag:yaml.org,2002:merge":
                self._problem("YAML merge keys (<<) are not supported in plans", spot)
                continue
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR_TAG:
                shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                self._problem(f"a key must be a name, got {shown!r}", spot)
                continue
            key = key_node.value
            if key in result:
                first = self.keys[(*path, key)]
                self._problem(f"duplicate key {key!r} (first at line {first[0]})", spot)
                continue
            self.keys[(*path, key)] = spot
            result[key] = self._convert(value_node, (*path, key), loader, active)
        return result

    def _problem(self, message: str, spot: tuple[int, int] | None) -> None:
        line, column = spot if spot else (None, None)
        self.problems.append(Problem(Location(self.source, line, column), message))


class _TooLarge(yaml.YAMLError):
    def __str__(self) -> str:
        return f"the plan expands to more than {_MAX_VALUES} values (YAML aliases?)"


def _spot(mark: yaml.Mark) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1)


def _node_kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"the value {str(node.value)[:40]!r}"


# --- pydantic errors → problems -----------------------------------------------------------


def _problems_from_pydantic(
    error: pydantic.ValidationError, data: Any, tree: _Tree
) -> list[Problem]:
    problems: list[Problem] = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        path = _data_path(data, loc)
        if item["type"] == "crucible_rules":
            for relative, message in item["ctx"]["problems"]:
                extra = tuple(int(p) if p.isdigit() else p for p in relative.split(".") if p)
                full = (*path, *extra)
                problems.append(_problem(tree, full, message, prefer_key=False))
            continue
        message, prefer_key = _message(item, loc, path)
        problems.append(_problem(tree, path, message, prefer_key))
    return sorted(problems, key=lambda p: (p.location.line or 0, p.location.column or 0))


def _problem(tree: _Tree, path: FieldPath, message: str, prefer_key: bool) -> Problem:
    spot = _spot_for(tree, path, prefer_key or path in tree.containers)
    line, column = spot if spot else (None, None)
    return Problem(Location(tree.source, line, column), message, _field_text(path) or None)


def _spot_for(tree: _Tree, path: FieldPath, prefer_key: bool) -> tuple[int, int] | None:
    if prefer_key and path in tree.keys:
        return tree.keys[path]
    if path in tree.values:
        return tree.values[path]
    # A missing key is reported at its parent's key, where a reader looks for it.
    for end in range(len(path) - 1, -1, -1):
        prefix = path[:end]
        spot = tree.keys.get(prefix) or tree.values.get(prefix)
        if spot is not None:
            return spot
    return None


def _data_path(data: Any, loc: tuple[Any, ...]) -> FieldPath:
    """The error location as a path into the data: union tags dropped, a missing key kept."""
    current = data
    path: list[str | int] = []
    for index, part in enumerate(loc):
        if part in _UNION_TAGS.values() or part in _TAGGED_MEMBERS:
            continue
        in_dict = isinstance(current, dict) and part in current
        in_list = isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current)
        if in_dict or in_list:
            current = current[part]
        elif isinstance(current, dict) and index == len(loc) - 1:
            current = None
        else:
            continue
        path.append(part)
    return tuple(path)


def _field_text(path: FieldPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _message(item: Any, loc: tuple[Any, ...], path: FieldPath) -> tuple[str, bool]:
    kind = item["type"]
    secret = "password" in path
    got = "" if secret else _describe(item.get("input"))
    field_info = _field_at(loc)

    if kind == "extra_forbidden":
        key = str(loc[-1])
        allowed = list(_model_fields_at(loc[:-1]))
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        if close:
            return f"unknown key {key!r}; did you mean {close[0]!r}?", True
        return f"unknown key {key!r}: expected one of {', '.join(allowed)}", True
    if kind == "missing":
        expected = f" (expected {_expected(field_info)})" if field_info else ""
        return f"required key {str(loc[-1])!r} is missing{expected}", False
    if kind in ("crucible", "duration", "secret"):
        return str(item["msg"]), False
    if kind == "literal_error" and field_info is not None:
        values = _literal_values(field_info.annotation)
        message = f"expected one of {', '.join(repr(v) for v in values)}, got {got}"
        if isinstance(item.get("input"), str):
            close = difflib.get_close_matches(item["input"], [str(v) for v in values], n=1)
            if close:
                message += f"; did you mean {close[0]!r}?"
        return message, False
    if field_info is not None:
        message = f"expected {_expected(field_info)}"
        return (f"{message}, got {got}" if got else message), False
    detail = str(item["msg"])
    if kind == "string_pattern_mismatch":
        detail = f"expected {_pattern_text(item['ctx']['pattern'])}"
    return (f"{detail}, got {got}" if got else detail), False


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, int):
        return f"{value} (an integer)"
    if isinstance(value, float):
        return f"{value} (a number)"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"{shown!r} (a string)"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, datetime.date):
        return f"{value.isoformat()} (a date)"
    return f"a {type(value).__name__}"


_PATTERN_TEXT = {
    models.WORKLOAD_ID_PATTERN: "a workload id: letters, digits, '_' and '-', starting with a "
    "letter or digit (a name, not a path)",
    models.DATASET_PATTERN: "a dataset name such as tpch",
    models.TABLE_PATTERN: "a table name: letters, digits and underscores",
    models.TARGET_TABLE_PATTERN: (
        "a table name such as lineitem (a lowercase letter, then up to 62 lowercase letters, "
        "digits or '_')"
    ),
}


def _pattern_text(pattern: str) -> str:
    return _PATTERN_TEXT.get(pattern, f"text matching {pattern}")


def _expected(info: FieldInfo) -> str:
    annotation, constraints = _unwrap(info.annotation, list(info.metadata))
    base = _type_text(annotation)
    parts: list[str] = []
    for constraint in constraints:
        if isinstance(constraint, annotated_types.Gt):
            parts.append(f"> {constraint.gt}")
        elif isinstance(constraint, annotated_types.Ge):
            parts.append(f">= {constraint.ge}")
        elif isinstance(constraint, annotated_types.Lt):
            parts.append(f"< {constraint.lt}")
        elif isinstance(constraint, annotated_types.Le):
            parts.append(f"<= {constraint.le}")
        elif isinstance(constraint, annotated_types.MinLen) and constraint.min_length > 0:
            if base == "text":
                base = "non-empty text"
            else:
                plural = "s" if constraint.min_length > 1 else ""
                parts.append(f"with at least {constraint.min_length} item{plural}")
        elif getattr(constraint, "pattern", None):
            return _pattern_text(constraint.pattern)
    return " ".join([base, " and ".join(parts)]).strip()


def _unwrap(annotation: Any, constraints: list[Any]) -> tuple[Any, list[Any]]:
    """Strips Optional and Annotated layers, collecting their constraints."""
    while True:
        origin = get_origin(annotation)
        if origin is typing.Annotated:
            annotation, *extra = get_args(annotation)
            for item in extra:
                constraints.extend(item.metadata if isinstance(item, FieldInfo) else [item])
        elif origin in (Union, types.UnionType):
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation, constraints
            annotation = members[0]
        else:
            return annotation, constraints


def _type_text(annotation: Any) -> str:
    origin = get_origin(annotation)
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if annotation is str:
        return "text"
    if annotation is Duration:
        return "a duration like 30s, 1m30s or 500ms"
    if annotation is Secret:
        return "a string or {env: NAME}"
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in get_args(annotation))
    if origin is list:
        return "a list"
    if origin is dict or (isclass(annotation) and issubclass(annotation, pydantic.BaseModel)):
        return "a mapping"
    if origin in (Union, types.UnionType):
        return "a mapping"
    return "a valid value"


def _literal_values(annotation: Any) -> tuple[Any, ...]:
    annotation, _ = _unwrap(annotation, [])
    return get_args(annotation) if get_origin(annotation) is Literal else ()


def _walk(loc: tuple[Any, ...]) -> tuple[Any, FieldInfo | None] | None:
    """Follows an error location through the Plan model: (type there, its field or None)."""
    current: Any = Plan
    info: FieldInfo | None = None
    for part in loc:
        current, _ = _unwrap(current, [])
        origin = get_origin(current)
        if isinstance(part, int) and origin is list:
            current, info = get_args(current)[0], None
        elif origin is dict:
            current, info = get_args(current)[1], None
        elif origin in (Union, types.UnionType) and part in _TAGGED_MEMBERS:
            current, info = _TAGGED_MEMBERS[part], None
        elif (
            isclass(current)
            and issubclass(current, pydantic.BaseModel)
            and part in current.model_fields
        ):
            info = current.model_fields[part]
            current = info.annotation
        else:
            return None
    return current, info


def _field_at(loc: tuple[Any, ...]) -> FieldInfo | None:
    found = _walk(loc)
    return found[1] if found else None


def _model_fields_at(loc: tuple[Any, ...]) -> list[str]:
    found = _walk(loc)
    if found is None:
        return []
    model, _ = _unwrap(found[0], [])
    if isclass(model) and issubclass(model, pydantic.BaseModel):
        return list(model.model_fields)
    return []


def _unique(problems: list[Problem]) -> list[Problem]:
    seen: set[Problem] = set()
    return [p for p in problems if not (p in seen or seen.add(p))]  # type: ignore[func-returns-value]


_PASSWORD_PATH = ("test_environment", "component_spec", "cluster_info", "password")
REDACTED = "'**********'"


def text_without_secrets(text: str) -> str:
    """The plan text with a literal password replaced, fit to be stored beside a result.

    A `{env: NAME}` reference is kept: it names where the secret lives, not the secret.
    """
    try:
        node: yaml.Node | None = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return text
    for key in _PASSWORD_PATH:
        if not isinstance(node, yaml.MappingNode):
            return text
        node = next((v for k, v in node.value if getattr(k, "value", None) == key), None)
    if not isinstance(node, yaml.ScalarNode):
        return text
    start, end = node.start_mark.index, node.end_mark.index
    return text[:start] + REDACTED + text[end:]
