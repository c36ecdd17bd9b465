"""Shard specs and shard results as JSON, for the trip to a pod and back through Dagster Pipes.

The encoding is tagged JSON: dataclasses and pydantic models carry their class (which must live
in `crucible_dagster`), tuples, dates, decimals and bytes carry a tag, so the pod rebuilds the
very objects the orchestrator built. A `SecretStr` is never written: it becomes a placeholder,
and the pod fills in the password it reads from its environment (a Kubernetes secret).
"""

import base64
import dataclasses
import importlib
import json
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, SecretStr

from crucible_dagster.engine.model import ShardResult
from crucible_dagster.errors import RunError

# Only classes of this package are rebuilt from JSON: the text comes from another process.
_TRUSTED_PREFIX = "crucible_dagster."

_DATACLASS = "__dataclass__"
_MODEL = "__model__"
_TUPLE = "__tuple__"
_DICT = "__dict__"
_SECRET = "__secret__"
_DATETIME = "__datetime__"
_DATE = "__date__"
_DECIMAL = "__decimal__"
_BYTES = "__bytes__"


def shard_spec_to_json(spec: object) -> str:
    """The spec of one shard (any engine's dataclass) as JSON, without its password."""
    return json.dumps(_Encoder().encode(spec), separators=(",", ":"))


def spec_needs_password(spec: object) -> bool:
    """Whether `spec` holds a non-empty password, which the pod must then receive."""
    encoder = _Encoder()
    encoder.encode(spec)
    return encoder.secrets_given > 0


def shard_spec_from_json(text: str, *, password: str | None) -> object:
    """Rebuilds a spec; `password` fills every secret the orchestrator left out."""
    return _Decoder(password).decode(json.loads(text))


def shard_result_to_json(result: ShardResult) -> str:
    return json.dumps(_Encoder().encode(result), separators=(",", ":"))


def shard_result_from_json(text: str) -> ShardResult:
    result = _Decoder(None).decode(json.loads(text))
    if not isinstance(result, ShardResult):
        raise RunError(f"a shard reported {type(result).__name__} where a ShardResult belongs")
    return result


def _class_name(value: object) -> str:
    cls = type(value)
    return f"{cls.__module__}:{cls.__qualname__}"


class _Encoder:
    def __init__(self) -> None:
        self.secrets_given = 0

    def encode(self, value: Any) -> Any:
        if value is None or isinstance(value, bool | int | float | str):
            return value
        if isinstance(value, SecretStr):
            if value.get_secret_value():
                self.secrets_given += 1
            return {_SECRET: bool(value.get_secret_value())}
        if isinstance(value, list):
            return [self.encode(v) for v in value]
        if isinstance(value, tuple):
            return {_TUPLE: [self.encode(v) for v in value]}
        if isinstance(value, dict):
            if not all(isinstance(k, str) for k in value):
                raise TypeError("only mappings with string keys can be sent to a pod")
            return {_DICT: {k: self.encode(v) for k, v in value.items()}}
        if isinstance(value, datetime):
            return {_DATETIME: value.isoformat()}
        if isinstance(value, date):
            return {_DATE: value.isoformat()}
        if isinstance(value, Decimal):
            return {_DECIMAL: str(value)}
        if isinstance(value, bytes):
            return {_BYTES: base64.b64encode(value).decode("ascii")}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = {
                f.name: self.encode(getattr(value, f.name))
                for f in dataclasses.fields(value)
                if f.init
            }
            return {_DATACLASS: _class_name(value), "fields": fields}
        if isinstance(value, BaseModel):
            fields = {name: self.encode(getattr(value, name)) for name in type(value).model_fields}
            return {_MODEL: _class_name(value), "fields": fields}
        raise TypeError(f"cannot send a {type(value).__name__} to a pod")


class _Decoder:
    def __init__(self, password: str | None) -> None:
        self.password = password

    def decode(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.decode(v) for v in value]
        if not isinstance(value, dict):
            return value
        if _TUPLE in value:
            return tuple(self.decode(v) for v in value[_TUPLE])
        if _DICT in value:
            return {k: self.decode(v) for k, v in value[_DICT].items()}
        if _SECRET in value:
            if not value[_SECRET]:
                return SecretStr("")
            if self.password is None:
                raise RunError(
                    "the shard's SUT password did not reach the pod: its environment has no "
                    "password variable (pod settings password_secret names the Kubernetes secret)"
                )
            return SecretStr(self.password)
        if _DATETIME in value:
            return datetime.fromisoformat(value[_DATETIME])
        if _DATE in value:
            return date.fromisoformat(value[_DATE])
        if _DECIMAL in value:
            return Decimal(value[_DECIMAL])
        if _BYTES in value:
            return base64.b64decode(value[_BYTES])
        if _DATACLASS in value:
            cls = _trusted_class(value[_DATACLASS])
            return cls(**{k: self.decode(v) for k, v in value["fields"].items()})
        if _MODEL in value:
            cls = _trusted_class(value[_MODEL])
            # The orchestrator validated the model; constructing skips re-running validators
            # that expect the plan's YAML forms rather than the parsed values.
            return cls.model_construct(**{k: self.decode(v) for k, v in value["fields"].items()})
        raise RunError(f"unexpected object in a shard message: keys {sorted(value)}")


def _trusted_class(name: str) -> Any:
    module_name, _, qualname = name.partition(":")
    if not module_name.startswith(_TRUSTED_PREFIX) or not qualname:
        raise RunError(f"a shard message names class {name!r}, which is not Crucible's")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target
