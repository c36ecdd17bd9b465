"""Passwords in plans: a literal (the original format) or `{env: NAME}`; neither ever prints."""

import os
import re
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from crucible_dagster.errors import CrucibleError

MASK = "**********"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Secret:
    """Holds a literal password or the name of the environment variable that holds it.

    `reveal()` is the only way to the value; repr, str and serialisation show `MASK` for a
    literal and `{env: NAME}` for a variable.
    """

    __slots__ = ("_literal", "env")
    _literal: str | None
    env: str | None

    def __init__(self, *, literal: str | None = None, env: str | None = None) -> None:
        if (literal is None) == (env is None):
            raise ValueError("a Secret holds either a literal or an environment variable name")
        object.__setattr__(self, "_literal", literal)
        object.__setattr__(self, "env", env)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Secret is immutable")

    def reveal(self) -> str:
        """The password itself; a missing environment variable is a CrucibleError naming it."""
        if self.env is None:
            return self._literal or ""
        value = os.environ.get(self.env)
        if value is None:
            raise CrucibleError(f"environment variable {self.env} is not set (it holds a password)")
        return value

    def dump(self) -> str | dict[str, str]:
        """The safe serialised form: `MASK` or `{"env": NAME}`."""
        return MASK if self.env is None else {"env": self.env}

    def __repr__(self) -> str:
        return f"Secret({MASK!r})" if self.env is None else f"Secret(env={self.env!r})"

    def __str__(self) -> str:
        return MASK if self.env is None else f"{{env: {self.env}}}"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            return (self._literal, self.env) == (other._literal, other.env)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self._literal, self.env))

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickling (Dagster run workers, shard processes) keeps the secret usable.
        return (_rebuild, (self._literal, self.env))

    @classmethod
    def _validate(cls, value: Any) -> "Secret":
        if isinstance(value, Secret):
            return value
        if isinstance(value, str):
            return cls(literal=value)
        if isinstance(value, dict):
            name = value.get("env")
            if set(value) == {"env"} and isinstance(name, str) and _ENV_NAME.match(name):
                return cls(env=name)
            raise PydanticCustomError(
                "secret",
                "expected {env: NAME} with NAME an environment variable name "
                "(letters, digits, underscores)",
            )
        # The value is never echoed: it may be a password written without quotes.
        raise PydanticCustomError(
            "secret", "expected a string or {env: NAME} (a password is quoted text)"
        )

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._validate,
            serialization=core_schema.plain_serializer_function_ser_schema(lambda s: s.dump()),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        env = {"type": "object", "properties": {"env": {"type": "string"}}, "required": ["env"]}
        return {"anyOf": [{"type": "string"}, env]}


def _rebuild(literal: str | None, env: str | None) -> Secret:
    return Secret(literal=literal, env=env)
