"""Durations in k6 syntax: `30s`, `1m30s`, `500ms`, `1.5m`, `0s`."""

import re
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

DURATION_PATTERN = r"^(\d+(\.\d+)?(us|ms|s|m|h))+$"
_WHOLE = re.compile(DURATION_PATTERN)
_PART = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
_UNIT_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class Duration:
    """A validated k6 duration; `text` is what the plan said, `seconds` what it means."""

    __slots__ = ("seconds", "text")
    text: str
    seconds: float

    def __init__(self, text: str) -> None:
        if not isinstance(text, str) or not _WHOLE.match(text):
            raise ValueError(f"not a duration: {text!r} (expected e.g. 30s, 1m30s or 500ms)")
        seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _PART.findall(text))
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "seconds", seconds)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Duration is immutable")

    def __repr__(self) -> str:
        return f"Duration({self.text!r})"

    def __str__(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Duration):
            return self.seconds == other.seconds
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.seconds)

    def __lt__(self, other: "Duration") -> bool:
        return self.seconds < other.seconds

    def __le__(self, other: "Duration") -> bool:
        return self.seconds <= other.seconds

    @classmethod
    def _validate(cls, value: Any) -> "Duration":
        if isinstance(value, Duration):
            return value
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise PydanticCustomError(
                "duration",
                "expected a duration like 30s, 1m30s or 500ms, got {got}",
                {"got": _kind(value)},
            )
        if not isinstance(value, str):
            raise PydanticCustomError(
                "duration",
                "expected a duration with a unit, got the bare number {got}: "
                "use a duration like 30s",
                {"got": repr(value)},
            )
        try:
            return cls(value)
        except ValueError:
            hint = " (add a unit: us, ms, s, m or h)" if _is_number(value) else ""
            raise PydanticCustomError(
                "duration",
                "expected a duration like 30s, 1m30s or 500ms, got {got}{hint}",
                {"got": repr(value), "hint": hint},
            ) from None

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._validate,
            serialization=core_schema.plain_serializer_function_ser_schema(lambda d: d.text),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"type": "string", "pattern": DURATION_PATTERN, "examples": ["30s", "1m30s"]}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"
