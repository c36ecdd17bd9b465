"""Passwords in plans: a literal (the original format), `{env: NAME}`, or `{file: PATH}` (a
Kubernetes or Docker secret mounted as a file); none of them ever prints."""

import os
import re
from pathlib import Path
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from crucible_dagster.errors import CrucibleError

MASK = "**********"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Secret:
    """Holds a literal password, or the name of the environment variable or the path of the file
    that holds it.

    `reveal()` is the only way to the value; repr, str and serialisation show `MASK` for a
    literal, `{env: NAME}` for a variable and `{file: PATH}` for a file.
    """

    __slots__ = ("_literal", "env", "file")
    _literal: str | None
    env: str | None
    file: str | None

    def __init__(
        self, *, literal: str | None = None, env: str | None = None, file: str | None = None
    ) -> None:
        if sum(x is not None for x in (literal, env, file)) != 1:
            raise ValueError("a Secret holds one of a literal, a variable name or a file path")
        object.__setattr__(self, "_literal", literal)
        object.__setattr__(self, "env", env)
        object.__setattr__(self, "file", file)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Secret is immutable")

    def reveal(self, relative_to: Path | None = None) -> str:
        """The password itself; a missing variable or unreadable file is a CrucibleError
        naming it. A relative file path is read from `relative_to` (the plan's folder)."""
        if self.file is not None:
            path = Path(self.file).expanduser()
            if relative_to is not None and not path.is_absolute():
                path = relative_to / path
            return _read_secret_file(path)
        if self.env is None:
            return self._literal or ""
        value = os.environ.get(self.env)
        if value is None:
            raise CrucibleError(f"environment variable {self.env} is not set (it holds a password)")
        return value

    def dump(self) -> str | dict[str, str]:
        """The safe serialised form: `MASK`, `{"env": NAME}` or `{"file": PATH}`."""
        if self.file is not None:
            return {"file": self.file}
        return MASK if self.env is None else {"env": self.env}

    def __repr__(self) -> str:
        if self.file is not None:
            return f"Secret(file={self.file!r})"
        return f"Secret({MASK!r})" if self.env is None else f"Secret(env={self.env!r})"

    def __str__(self) -> str:
        if self.file is not None:
            return f"{{file: {self.file}}}"
        return MASK if self.env is None else f"{{env: {self.env}}}"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            return (self._literal, self.env, self.file) == (other._literal, other.env, other.file)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self._literal, self.env, self.file))

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickling (Dagster run workers, shard processes) keeps the secret usable.
        return (_rebuild, (self._literal, self.env, self.file))

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
            path = value.get("file")
            if set(value) == {"file"} and isinstance(path, str) and path.strip():
                return cls(file=path)
            raise PydanticCustomError(
                "secret",
                "expected {env: NAME} with NAME an environment variable name "
                "(letters, digits, underscores), or {file: PATH}",
            )
        # The value is never echoed: it may be a password written without quotes.
        raise PydanticCustomError(
            "secret",
            "expected a string, {env: NAME} or {file: PATH} (a password is quoted text)",
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
        file = {"type": "object", "properties": {"file": {"type": "string"}}, "required": ["file"]}
        return {"anyOf": [{"type": "string"}, env, file]}


def _read_secret_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise CrucibleError(f"cannot read {path} (it holds a password): {reason}") from None
    # Mounted secrets and `echo pw > file` end in a newline that is not part of the password.
    return text.removesuffix("\n").removesuffix("\r")


def _rebuild(literal: str | None, env: str | None, file: str | None = None) -> Secret:
    return Secret(literal=literal, env=env, file=file)
