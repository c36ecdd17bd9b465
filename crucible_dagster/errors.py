"""The one exception hierarchy of Crucible.

Every error a user can cause carries where it happened (a file with line and column, a SUT, a
query) and what was expected, so the CLI and Dagster can show it without a traceback.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """Where a problem sits in a file: 1-based line and column; either may be unknown."""

    file: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        if self.line is None:
            return self.file
        if self.column is None:
            return f"{self.file}:{self.line}"
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Problem:
    """One problem found in a plan or workload: where, which field, and what was expected."""

    location: Location
    message: str
    field: str | None = None

    def __str__(self) -> str:
        where = f"{self.location}: {self.field}: " if self.field else f"{self.location}: "
        return where + self.message


class CrucibleError(Exception):
    """Base of every error Crucible raises on purpose; its message is fit for a user."""


class ValidationError(CrucibleError):
    """A plan or workload has problems; all of them are listed, not only the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class StorageError(CrucibleError):
    """Object storage could not be read or written (missing object, refused credentials...)."""


class FixtureError(CrucibleError):
    """A fixture could not be generated or loaded into the SUT."""


class SutError(CrucibleError):
    """The SUT is unreachable, refuses the credentials, or rejects the workload."""


class LeaseError(CrucibleError):
    """The SUT lease could not be taken, or it was lost while the run held it."""


class RunError(CrucibleError):
    """A run could not be carried out to its end."""


def decode_utf8(data: bytes, *, source: str, what: str) -> str:
    """The text of a file; an undecodable byte is a problem at its line and column."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        before = data[: error.start]
        line = before.count(b"\n") + 1
        column = error.start - (before.rfind(b"\n") + 1) + 1
        message = f"the {what} is not valid utf-8 text (byte 0x{data[error.start]:02x})"
        raise ValidationError([Problem(Location(source, line, column), message)]) from None
