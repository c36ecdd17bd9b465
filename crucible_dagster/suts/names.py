"""Which `target_db` each SUT family accepts, checked when a plan is validated.

Loaders quote every identifier they send; these rules only refuse names a SUT would refuse or
mangle, so that a plan fails at validation rather than halfway through a run.
"""

import re
from pathlib import PurePath

# SUTs that run inside the generator's process: `target_db` is the database file's path and
# there is no server to name in `cluster_info`.
EMBEDDED_SUT_TYPES = ("duckdb", "sqlite")
# SUT types whose database file one process at a time may open for writing.
SINGLE_PROCESS_SUT_TYPES = ("duckdb",)

_MYSQL_FAMILY = ("mysql", "mariadb", "doris", "starrocks")
_CLICKHOUSE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_CQL_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")
_TRINO_PART = r"[A-Za-z_][A-Za-z0-9_]{0,127}"
_TRINO_NAME = re.compile(rf"^{_TRINO_PART}(\.{_TRINO_PART})?$")
_PG_MAX_BYTES = 63
_MYSQL_MAX_CHARS = 64


def database_problem(sut_type: str, name: str) -> str | None:
    """Why `name` cannot be the target database of a SUT of `sut_type`, or None.

    An empty name on a server means the session's default database, as the original allowed.
    """
    if not name and sut_type not in (*EMBEDDED_SUT_TYPES, "trino"):
        return None
    if sut_type == "postgresql":
        if len(name.encode()) > _PG_MAX_BYTES or not name.isprintable():
            return "a PostgreSQL database name is 1 to 63 printable bytes"
    elif sut_type in _MYSQL_FAMILY:
        if (
            len(name) > _MYSQL_MAX_CHARS
            or not name.isprintable()
            or name != name.rstrip(" ")
            or any(c in name for c in "/\\.")
        ):
            return (
                f"a {sut_type} database name is 1 to 64 printable characters, without '/', "
                "'\\', '.' or trailing spaces"
            )
    elif sut_type == "clickhouse":
        if not _CLICKHOUSE_NAME.match(name):
            return (
                "a ClickHouse database name is a letter or '_', then up to 62 letters, "
                "digits or '_'"
            )
    elif sut_type in ("cassandra", "scylla"):
        if not _CQL_NAME.match(name):
            return "a keyspace name is a letter, then up to 47 letters, digits or '_'"
    elif sut_type == "trino":
        if not _TRINO_NAME.match(name):
            return (
                "a Trino target_db is `catalog` or `catalog.schema`, each a name of letters, "
                "digits or '_'"
            )
    elif sut_type in EMBEDDED_SUT_TYPES:
        return _database_file_problem(name)
    return None


def _database_file_problem(name: str) -> str | None:
    if not name.strip() or "\x00" in name:
        return "the database file's path must not be empty"
    if name.strip() == ":memory:":
        # Each shard and the fixture loader would see a database of its own, empty.
        return "an in-memory database cannot be loaded and measured: give the database file's path"
    path = PurePath(name)
    if path.name in ("", ".", ".."):
        return "the database file's path must end in a file name"
    if not path.is_absolute() and ".." in path.parts:
        return (
            "a relative path stays inside the databases folder of the Crucible home: no '..'; "
            "give an absolute path to put the file elsewhere"
        )
    return None
