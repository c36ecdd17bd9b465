"""Parameter values as SQL literals of the SUT's dialect, for transports that send SQL text.

HTTP SQL interfaces take no bound parameters, so the k6 engine sends each value inside the SQL,
escaped by the same rules the native drivers use for that SUT.
"""

import datetime
import decimal
import math
from collections.abc import Callable

from asyncmy.converters import escape_item

from crucible_dagster.suts import clickhouse, trino

Literal = Callable[[object], str]


def literal_for(sut_type: str) -> Literal | None:
    """How values become literals for `sut_type`; None when the k6 engine cannot do it yet."""
    if sut_type == "clickhouse":
        return clickhouse.literal
    if sut_type == "trino":
        return trino_literal
    if sut_type in ("mysql", "mariadb", "doris", "starrocks"):
        return mysql_literal
    # Limitation: no PostgreSQL literal renderer: PostgreSQL is reached through xk6-sql, which
    # binds parameters itself, and that path does not take parameters yet.
    return None


def mysql_literal(value: object) -> str:
    """A MySQL-protocol literal, escaped by asyncmy (the native driver's own escaping)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"cannot send the float {value} as a MySQL literal")
    return str(escape_item(value, "utf8"))


def trino_literal(value: object) -> str:
    """A Trino literal: typed strings for dates, timestamps and decimals."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            name = "nan()" if math.isnan(value) else ("infinity()" if value > 0 else "-infinity()")
            return name
        return f"DOUBLE '{value!r}'"
    if isinstance(value, decimal.Decimal):
        return f"DECIMAL '{format(value, 'f')}'"
    if isinstance(value, datetime.datetime):
        return f"TIMESTAMP '{value.isoformat(sep=' ')}'"
    if isinstance(value, datetime.date):
        return f"DATE '{value.isoformat()}'"
    return trino.quote_string(str(value))
