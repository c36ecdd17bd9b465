"""Typed, seeded query parameters: `-- @param:` declarations and the generators they describe.

A query block declares a parameter with a name and a YAML flow mapping:

    -- @param: cust {type: int, range: [1, 150000], distribution: zipfian, exponent: 0.99}

`parse_param` turns the text after `-- @param:` into a spec; `make_generator` turns a spec and a
seeded `random.Random` into a zero-argument function that yields one value per call. Generators
draw only from `rng.random()`, whose sequence Python keeps stable for a seed across versions, so
the same seed gives the same values. Column parameters draw from values sampled out of a
fixture's Parquet files by `sample_column`.
"""

import bisect
import math
import random
import re
import shutil
import string
import tempfile
from collections.abc import Callable, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, NoReturn

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic import ValidationError as PydanticValidationError

from crucible_dagster.errors import CrucibleError, FixtureError
from crucible_dagster.fixtures.refs import FixtureRef, parse_fixture_id
from crucible_dagster.storage import Storage

PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DEFAULT_EXPONENT = 0.99
DEFAULT_ALPHABET = string.ascii_letters + string.digits
MAX_STRING_LENGTH = 10_000
# A zipfian float picks one of this many equal sub-ranges by Zipf rank, then a point inside it.
FLOAT_ZIPF_BUCKETS = 1000

_MARKER_PREFIX = re.compile(r"^\s*--\s*@param\s*:")
_NAME_TOKEN = re.compile(r"[^\s{]+")
_EXAMPLE = "cust {type: int, range: [1, 150000]}"
_BATCH_ROWS = 65_536
_COPY_BUFFER_BYTES = 1024 * 1024


class ParamError(CrucibleError, ValueError):
    """A parameter declaration is invalid; `offset` is where in the given text (0-based)."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


class _Spec(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def _show(value: object) -> str:
    """A value as a user wrote it in YAML: `[5, 1]`, `'5'`, `1992-01-01`."""
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return _is_int(value)


def _pair(
    value: object, field: str, check: Callable[[object], bool], what: str, ends: str = "low, high"
) -> list[Any]:
    """Checks that `value` is `[low, high]` of `what`, with low <= high."""
    low, high = ends.split(", ")
    shape = f"{field} must be [{ends}] with {low} <= {high}"
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(f"{shape}, got {_show(value)}")
    for index, item in enumerate(value):
        if not check(item):
            raise ValueError(f"{field}[{index}] must be {what}, got {_show(item)} ({_kind(item)})")
    if value[0] > value[1]:
        raise ValueError(f"{shape}, got {_show(value)}")
    return list(value)


class IntParam(_Spec):
    """Integers in `range` (inclusive); zipfian makes the low end the most frequent value."""

    type: Literal["int"]
    range: tuple[int, int]
    distribution: Literal["uniform", "zipfian"] = "uniform"
    exponent: float = Field(default=DEFAULT_EXPONENT, gt=0, allow_inf_nan=False)

    @field_validator("range", mode="before")
    @classmethod
    def _range(cls, value: object) -> tuple[int, int]:
        low, high = _pair(value, "range", _is_int, "an integer")
        return (low, high)

    @field_validator("exponent")
    @classmethod
    def _exponent(cls, value: float, info: ValidationInfo) -> float:
        return _check_exponent(value, info)


class FloatParam(_Spec):
    """Floats in `range`, optionally rounded to `digits` decimals.

    Zipfian floats pick a sub-range of `range` split into 1000 equal parts by Zipf rank (rank 1
    is the lowest part), then a uniform point inside it, so values near the low end are the
    most frequent.
    """

    type: Literal["float"]
    range: tuple[float, float]
    distribution: Literal["uniform", "zipfian"] = "uniform"
    exponent: float = Field(default=DEFAULT_EXPONENT, gt=0, allow_inf_nan=False)
    digits: int | None = Field(default=None, ge=0, le=15)

    @field_validator("range", mode="before")
    @classmethod
    def _range(cls, value: object) -> tuple[float, float]:
        low, high = _pair(value, "range", _is_number, "a number")
        return (float(low), float(high))

    @field_validator("exponent")
    @classmethod
    def _exponent(cls, value: float, info: ValidationInfo) -> float:
        return _check_exponent(value, info)

    @model_validator(mode="after")
    def _digits_fit_range(self) -> "FloatParam":
        if self.digits is not None:
            low, high = _rounded_bounds(self.range, self.digits)
            if low > high:
                raise ValueError(
                    f"range {_show(self.range)} holds no value with {self.digits} digits"
                )
        return self


def _check_exponent(value: float, info: ValidationInfo) -> float:
    # Runs only for an exponent the user gave (defaults are not validated).
    distribution = info.data.get("distribution")
    if distribution is not None and distribution != "zipfian":
        raise ValueError(
            f"exponent applies only to distribution: zipfian, but distribution is {distribution}"
        )
    return value


def _rounded_bounds(bounds: tuple[float, float], digits: int) -> tuple[float, float]:
    scale = 10**digits
    return math.ceil(bounds[0] * scale) / scale, math.floor(bounds[1] * scale) / scale


Scalar = str | int | float | bool | date


def _is_scalar(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str | int | date) and not isinstance(value, datetime)


class ChoiceParam(_Spec):
    """One of `values`, uniformly or in proportion to `weights`."""

    type: Literal["choice"]
    values: tuple[Scalar, ...]
    weights: tuple[float, ...] | None = None

    @field_validator("values", mode="before")
    @classmethod
    def _values(cls, value: object) -> tuple[object, ...]:
        if not isinstance(value, list | tuple) or not value:
            raise ValueError(
                f"values must be a non-empty list such as [a, b, c], got {_show(value)}"
            )
        for index, item in enumerate(value):
            if not _is_scalar(item):
                raise ValueError(
                    f"values[{index}] must be a string, number, boolean or date, "
                    f"got {_show(item)} ({_kind(item)})"
                )
        return tuple(value)

    @field_validator("weights", mode="before")
    @classmethod
    def _weights(cls, value: object) -> tuple[float, ...] | None:
        if value is None:
            return None
        if not isinstance(value, list | tuple):
            raise ValueError(f"weights must be a list of numbers, got {_show(value)}")
        for index, item in enumerate(value):
            if not _is_number(item) or float(item) < 0:
                raise ValueError(
                    f"weights[{index}] must be a number >= 0, got {_show(item)} ({_kind(item)})"
                )
        if not sum(value) > 0:
            raise ValueError(f"weights must not all be zero, got {_show(value)}")
        return tuple(float(item) for item in value)

    @model_validator(mode="after")
    def _one_weight_per_value(self) -> "ChoiceParam":
        if self.weights is not None and len(self.weights) != len(self.values):
            raise ValueError(
                f"weights must have one entry per value: {len(self.values)} values, "
                f"{len(self.weights)} weights"
            )
        return self


def _as_date(value: object) -> object:
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            return value
    return value


class DateParam(_Spec):
    """Days in `range` (inclusive), uniformly, as `datetime.date`."""

    type: Literal["date"]
    range: tuple[date, date]

    @field_validator("range", mode="before")
    @classmethod
    def _range(cls, value: object) -> tuple[date, date]:
        if isinstance(value, list | tuple):
            value = [_as_date(item) for item in value]

        def is_date(item: object) -> bool:
            return isinstance(item, date) and not isinstance(item, datetime)

        low, high = _pair(value, "range", is_date, "a date such as 1992-01-01")
        return (low, high)


class StringParam(_Spec):
    """Random strings of `alphabet` with a length in `length`, after `prefix`."""

    type: Literal["string"]
    length: tuple[int, int]
    alphabet: str = Field(default=DEFAULT_ALPHABET, min_length=1)
    prefix: str = ""

    @field_validator("length", mode="before")
    @classmethod
    def _length(cls, value: object) -> tuple[int, int]:
        given = value
        if _is_int(value):
            value = [value, value]
        elif not isinstance(value, list | tuple) or len(value) != 2:
            raise ValueError(f"length must be a number N or [min, max], got {_show(value)}")
        low, high = _pair(value, "length", _is_int, "an integer", ends="min, max")
        if low < 1 or high > MAX_STRING_LENGTH:
            raise ValueError(f"length must lie within 1..{MAX_STRING_LENGTH}, got {_show(given)}")
        return (low, high)


class ColumnParam(_Spec):
    """Values of one column of a fixture table, sampled from its Parquet files."""

    type: Literal["column"]
    fixture: str
    column: str = Field(min_length=1)

    @field_validator("fixture")
    @classmethod
    def _fixture(cls, value: str) -> str:
        try:
            return parse_fixture_id(value).fixture_id
        except FixtureError as error:
            raise ValueError(f"fixture: {error}") from None

    @property
    def ref(self) -> FixtureRef:
        return parse_fixture_id(self.fixture)


ParamSpec = Annotated[
    IntParam | FloatParam | ChoiceParam | DateParam | StringParam | ColumnParam,
    Field(discriminator="type"),
]

_MODELS: dict[str, type[_Spec]] = {
    "int": IntParam,
    "float": FloatParam,
    "choice": ChoiceParam,
    "date": DateParam,
    "string": StringParam,
    "column": ColumnParam,
}
_MISSING_HINTS = {
    "range": "range: [low, high]",
    "values": "values: [a, b, c]",
    "length": "length: N or length: [min, max]",
    "fixture": "fixture: <dataset>/sf<scale>/<table>, e.g. tpch/sf0.01/customer",
    "column": "column: <name>",
}


# Parsing


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice instead of keeping the last one."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[object] = set()
    for key_node, _value_node in node.value:
        key = loader.construct_object(key_node)
        if not isinstance(key, str | int | float | bool):
            continue
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is given twice", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def parse_param(text: str) -> tuple[str, ParamSpec]:
    """`cust {type: int, range: [1, 10]}` → ("cust", IntParam(...)); raises ParamError.

    `text` is what follows `-- @param:`; a leading `-- @param:` marker is tolerated too.
    """
    marker = _MARKER_PREFIX.match(text)
    start = marker.end() if marker else 0
    token = _NAME_TOKEN.search(text, start)
    if token is None:
        raise ParamError(f"a parameter needs a name and a mapping, e.g. {_EXAMPLE}", start)
    name = token.group()
    if not PARAM_NAME.match(name):
        raise ParamError(
            f"invalid parameter name {name!r}: expected a letter or '_', then letters, digits "
            f"or '_', e.g. {_EXAMPLE}",
            token.start(),
        )

    mapping_start = token.end()
    while mapping_start < len(text) and text[mapping_start].isspace():
        mapping_start += 1
    body = text[mapping_start:]
    if not body.strip():
        example = _EXAMPLE.replace("cust", name, 1)
        raise ParamError(
            f"parameter {name!r}: missing its mapping after the name, e.g. {example}",
            token.start(),
        )
    if not body.startswith("{"):
        raise ParamError(
            f"parameter {name!r}: expected a YAML flow mapping in braces after the name, "
            f"e.g. {_EXAMPLE.replace('cust', name, 1)}",
            mapping_start,
        )

    data = _load_yaml(name, body, mapping_start)
    spec = _validate(name, data, body, mapping_start)
    return name, spec


def _load_yaml(name: str, body: str, offset: int) -> dict[str, object]:
    try:
        data = yaml.load(body, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error)
        where = offset + mark.index if mark is not None else offset
        column = where - offset + 1
        raise ParamError(
            f"parameter {name!r}: the mapping is not valid YAML ({problem} at character "
            f"{column} of the mapping); expected e.g. {_EXAMPLE.replace('cust', name, 1)}",
            where,
        ) from None
    except ValueError as error:
        # PyYAML reads 1992-13-01 as a date and fails building it.
        raise ParamError(f"parameter {name!r}: {error} (a date is YYYY-MM-DD)", offset) from None
    if not isinstance(data, dict):
        raise ParamError(
            f"parameter {name!r}: expected a mapping such as "
            f"{_EXAMPLE.replace('cust', name, 1)}, got {_kind(data)}",
            offset,
        )
    for key in data:
        if not isinstance(key, str):
            raise ParamError(
                f"parameter {name!r}: keys must be names, got {_show(key)} ({_kind(key)})", offset
            )
    return data


def _validate(name: str, data: dict[str, object], body: str, offset: int) -> ParamSpec:
    known = ", ".join(_MODELS)
    if "type" not in data:
        raise ParamError(
            f"parameter {name!r}: missing key 'type': expected one of {known}, "
            f"e.g. {_EXAMPLE.replace('cust', name, 1)}",
            offset,
        )
    kind = data["type"]
    model = _MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ParamError(
            f"parameter {name!r}: unknown type {_show(kind)}; known types: {known}",
            _key_offset(body, "type", offset),
        )
    try:
        return model.model_validate(data)  # type: ignore[return-value]
    except PydanticValidationError as error:
        sentences, first_key = _explain(error, model)
        where = _key_offset(body, first_key, offset) if first_key else offset
        raise ParamError(f"parameter {name!r}: " + "; ".join(sentences), where) from None


def _key_offset(body: str, key: str, offset: int) -> int:
    match = re.search(rf"(?<![A-Za-z0-9_]){re.escape(key)}\s*:", body)
    return offset + match.start() if match else offset


_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "finite_number": "a finite number",
    "bool_type": "a boolean",
}


def _explain(error: PydanticValidationError, model: type[_Spec]) -> tuple[list[str], str | None]:
    """Pydantic's errors as sentences, and the first key they concern."""
    sentences: list[str] = []
    first_key: str | None = None
    allowed = ", ".join(model.model_fields)
    for item in error.errors(include_url=False):
        loc = item["loc"]
        key = str(loc[0]) if loc else None
        path = key or ""
        for part in loc[1:]:
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
        first_key = first_key or key
        kind = item["type"]
        value = item.get("input")
        ctx = item.get("ctx") or {}
        if kind == "extra_forbidden":
            sentences.append(f"unknown key {path!r}; allowed keys: {allowed}")
        elif kind == "missing":
            hint = _MISSING_HINTS.get(path)
            sentences.append(f"missing key {path!r}" + (f", e.g. {hint}" if hint else ""))
        elif kind == "value_error":
            message = str(ctx.get("error", item["msg"]))
            sentences.append(
                message if not path or message.startswith(path) else path + ": " + message
            )
        elif kind == "literal_error":
            sentences.append(f"{path} must be one of {ctx.get('expected')}, got {_show(value)}")
        elif kind in _EXPECTED:
            sentences.append(
                f"{path} must be {_EXPECTED[kind]}, got {_show(value)} ({_kind(value)})"
            )
        elif kind in ("greater_than", "greater_than_equal", "less_than_equal"):
            bound = {"greater_than": "> {gt}", "greater_than_equal": ">= {ge}"}.get(kind, "<= {le}")
            sentences.append(f"{path} must be {bound.format(**ctx)}, got {_show(value)}")
        elif kind == "string_too_short":
            sentences.append(f"{path} must not be empty")
        else:
            message = item["msg"]
            sentences.append(f"{path}: {message[:1].lower() + message[1:]}, got {_show(value)}")
    return sentences, first_key


# Sampling


def _h_integral(x: float, one_minus_s: float) -> float:
    """H(x) = ∫₁ˣ t^-s dt = (x^(1-s) - 1) / (1-s), or log(x) at s = 1, without cancellation."""
    log_x = math.log(x)
    t = one_minus_s * log_x
    return log_x if t == 0.0 else log_x * (math.expm1(t) / t)


class Zipfian:
    """Zipf ranks 1..n with P(k) ∝ k^-exponent, in O(1) memory and O(1) expected time.

    Rejection-inversion (Hörmann and Derflinger, 1996): a point u is drawn uniformly under the
    continuous hat h(x) = x^-s, x = H⁻¹(u) rounds to a rank k, and u is kept only if it falls in
    the last h(k) of the area belonging to k, so every rank is kept with probability ∝ h(k).
    Because h is convex, the area from k-1/2 to k+1/2 is at least h(k), so this area always
    exists. The hat for rank 1 starts at H(3/2) - h(1), so rank 1 is never rejected.
    """

    __slots__ = ("_low", "_one_minus_s", "_width", "exponent", "n")

    def __init__(self, n: int, exponent: float) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"zipfian n must be an integer >= 1, got {n!r}")
        if not (isinstance(exponent, int | float) and math.isfinite(exponent) and exponent > 0):
            raise ValueError(f"zipfian exponent must be a finite number > 0, got {exponent!r}")
        self.n = n
        self.exponent = float(exponent)
        self._one_minus_s = 1.0 - self.exponent
        self._low = _h_integral(1.5, self._one_minus_s) - 1.0
        self._width = _h_integral(n + 0.5, self._one_minus_s) - self._low

    def sample(self, rng_random: Callable[[], float]) -> int:
        """One rank in 1..n, drawn with `rng_random` (a uniform float in [0, 1))."""
        # H and its inverse are written out here rather than called: this runs once per query.
        n = self.n
        s = self.exponent
        t = self._one_minus_s
        low = self._low
        width = self._width
        exp, log, log1p, expm1 = math.exp, math.log, math.log1p, math.expm1
        while True:
            u = low + rng_random() * width
            # x = H⁻¹(u) = (1 + (1-s)u)^(1/(1-s)); only rounding can reach tu <= -1, since H is
            # bounded above by 1/(s-1) when s > 1.
            tu = t * u
            if tu == 0.0:
                x = exp(u)
            elif tu > -1.0:
                x = exp(u * (log1p(tu) / tu))
            else:
                x = math.inf
            k = int(x + 0.5) if x < n else n
            if k <= 1:
                return 1
            log_end = log(k + 0.5)
            tl = t * log_end
            h_end = log_end if tl == 0.0 else log_end * (expm1(tl) / tl)
            if u >= h_end - k**-s:
                return k


def make_generator(
    spec: ParamSpec, rng: random.Random, column_values: Sequence[object] | None = None
) -> Callable[[], object]:
    """A zero-argument function giving one value of `spec` per call, drawn from `rng`.

    Column parameters pick uniformly from `column_values` (see `sample_column`).
    """
    rnd = rng.random
    if isinstance(spec, IntParam):
        return _int_generator(spec, rnd)
    if isinstance(spec, FloatParam):
        return _float_generator(spec, rnd)
    if isinstance(spec, ChoiceParam):
        return _choice_generator(spec.values, spec.weights, rnd)
    if isinstance(spec, DateParam):
        return _date_generator(spec, rnd)
    if isinstance(spec, StringParam):
        return _string_generator(spec, rnd)
    if isinstance(spec, ColumnParam):
        if not column_values:
            raise ValueError(
                f"column parameter {spec.fixture}:{spec.column} needs the column's values "
                "(from sample_column), and they are missing or empty"
            )
        return _choice_generator(tuple(column_values), None, rnd)
    raise TypeError(f"not a parameter spec: {spec!r}")


def _int_generator(spec: IntParam, rnd: Callable[[], float]) -> Callable[[], object]:
    low, high = spec.range
    # Limitation: a range wider than 2**53 values is drawn from one float, so not every
    # integer in it can come up; the ends and the spread are still right.
    span = high - low + 1
    if spec.distribution == "zipfian":
        sample = Zipfian(span, spec.exponent).sample
        base = low - 1
        return lambda: base + sample(rnd)
    return lambda: low + int(rnd() * span)


def _float_generator(spec: FloatParam, rnd: Callable[[], float]) -> Callable[[], object]:
    low, high = spec.range
    width = high - low
    draw: Callable[[], float]
    if spec.distribution == "zipfian":
        sample = Zipfian(FLOAT_ZIPF_BUCKETS, spec.exponent).sample
        bucket = width / FLOAT_ZIPF_BUCKETS
        base = low - bucket

        def draw() -> float:
            return base + (sample(rnd) + rnd()) * bucket

    else:

        def draw() -> float:
            return low + rnd() * width

    if spec.digits is None:
        return draw
    digits = spec.digits
    step = Decimal(1).scaleb(-digits)
    lowest, highest = (
        round(Decimal(bound) / step) * step for bound in _rounded_bounds(spec.range, digits)
    )
    # Exact decimals: a float such as 0.03 would reach a NUMERIC column as 0.0299999...
    if spec.distribution == "uniform":
        first = int(lowest / step)
        count = int(highest / step) - first + 1

        def on_grid() -> object:
            # Every value of the grid, both ends included, equally often.
            return (first + int(rnd() * count)) * step

        return on_grid

    def rounded() -> object:
        value = Decimal(repr(draw())).quantize(step)
        return lowest if value < lowest else highest if value > highest else value

    return rounded


def _choice_generator(
    values: Sequence[object], weights: Sequence[float] | None, rnd: Callable[[], float]
) -> Callable[[], object]:
    if weights is None:
        options = tuple(values)
        count = len(options)
        return lambda: options[int(rnd() * count)]

    # Values of weight zero are left out, and the last bound is infinite, so that a draw that
    # rounds up to the total still lands on a value.
    kept = [(v, w) for v, w in zip(values, weights, strict=True) if w > 0]
    options = tuple(v for v, _w in kept)
    total = math.fsum(w for _v, w in kept)
    bounds: list[float] = []
    running = 0.0
    for _v, w in kept:
        running += w
        bounds.append(running)
    bounds[-1] = math.inf
    find = bisect.bisect_right
    return lambda: options[find(bounds, rnd() * total)]


def _date_generator(spec: DateParam, rnd: Callable[[], float]) -> Callable[[], object]:
    first = spec.range[0].toordinal()
    days = spec.range[1].toordinal() - first + 1
    from_ordinal = date.fromordinal
    return lambda: from_ordinal(first + int(rnd() * days))


def _string_generator(spec: StringParam, rnd: Callable[[], float]) -> Callable[[], object]:
    alphabet = spec.alphabet
    size = len(alphabet)
    prefix = spec.prefix
    shortest, longest = spec.length
    lengths = longest - shortest + 1
    join = "".join

    def generate() -> str:
        length = shortest + int(rnd() * lengths)
        return prefix + join([alphabet[int(rnd() * size)] for _ in range(length)])

    return generate


# Column sampling


def sample_column(
    storage: Storage, spec: ColumnParam, *, seed: int, limit: int = 100_000
) -> list[object]:
    """Up to `limit` non-null values of the column, a seeded uniform sample of the fixture.

    The Parquet files are read batch by batch, so memory stays bounded by `limit` and one
    batch; a fixture with fewer values than `limit` gives all of them.
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    ref = spec.ref
    keys = [info.key for info in storage.list(ref.prefix) if info.key.endswith(".parquet")]
    if not keys:
        raise FixtureError(
            f"fixture {ref.fixture_id} has no Parquet files at {storage.uri(ref.prefix)}: "
            f"materialize the fixtures/{ref.dataset} asset (partition {ref.scale}), or run a "
            "plan that lists this fixture, which loads it"
        )
    reservoir = _Reservoir(limit, random.Random(seed))
    for key in keys:
        _sample_file(storage, key, ref, spec.column, reservoir)
    return reservoir.values


class _Reservoir:
    """A uniform sample of a stream (Li's algorithm L): random draws only for kept values.

    After the reservoir is full, the number of values to skip before the next replacement is
    geometric with parameter 1-w, where w is the largest of `limit` uniforms so far.
    """

    def __init__(self, limit: int, rng: random.Random) -> None:
        self.limit = limit
        self.rnd = rng.random
        self.values: list[object] = []
        self.seen = 0
        self.log_w = 0.0
        self.next_index = 0

    def _uniform(self) -> float:
        # In (0, 1), so that its logarithm exists and is negative.
        value = self.rnd()
        while value == 0.0:
            value = self.rnd()
        return value

    def _advance(self) -> None:
        self.log_w += math.log(self._uniform()) / self.limit
        # log(1 - w) computed from log w, so that w close to 1 does not round to log(0).
        log_keep = math.log(-math.expm1(self.log_w))
        self.next_index += int(math.log(self._uniform()) / log_keep) + 1

    def add(self, batch: Any) -> None:
        """Offers a pyarrow array of non-null values."""
        start = self.seen
        end = start + len(batch)
        if len(self.values) < self.limit:
            take = min(self.limit - len(self.values), len(batch))
            self.values.extend(batch.slice(0, take).to_pylist())
            if len(self.values) == self.limit:
                self.next_index = start + take - 1
                self._advance()
        while self.next_index < end and len(self.values) == self.limit:
            slot = int(self.rnd() * self.limit)
            self.values[slot] = batch[self.next_index - start].as_py()
            self._advance()
        self.seen = end


def _sample_file(
    storage: Storage, key: str, ref: FixtureRef, column: str, reservoir: _Reservoir
) -> None:
    import pyarrow as pa

    uri = storage.uri(key)

    def unreadable(error: Exception) -> NoReturn:
        raise FixtureError(f"fixture {ref.fixture_id}: cannot read {uri}: {error}") from None

    stream = storage.open_read(key)
    try:
        seekable = getattr(stream, "seekable", None)
        if callable(seekable) and seekable():
            _sample_stream(stream, ref, column, reservoir, uri)
            return
        # Parquet is read from its footer, so a stream that cannot seek is copied to a file.
        # Limitation: that costs a full download of each file (one at a time) even though only
        # one column is needed; ranged reads from S3 would avoid it.
        with tempfile.TemporaryFile(prefix="crucible-param-") as local:
            try:
                shutil.copyfileobj(stream, local, _COPY_BUFFER_BYTES)
            except Exception as error:  # the S3 client's read errors have no common base
                unreadable(error)
            local.seek(0)
            _sample_stream(local, ref, column, reservoir, uri)
    except (pa.ArrowException, OSError) as error:
        unreadable(error)
    finally:
        stream.close()


def _sample_stream(
    stream: Any, ref: FixtureRef, column: str, reservoir: _Reservoir, uri: str
) -> None:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(stream)
    names = parquet.schema_arrow.names
    if column not in names:
        raise FixtureError(
            f"fixture {ref.fixture_id} has no column {column!r} in {uri}; "
            f"available columns: {', '.join(names)}"
        )
    for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=[column]):
        values = batch.column(0)
        if values.null_count:
            values = values.drop_null()
        if len(values):
            reservoir.add(values)
