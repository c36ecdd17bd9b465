import math
import random
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from crucible_dagster.errors import CrucibleError
from crucible_dagster.params import (
    DEFAULT_ALPHABET,
    ChoiceParam,
    ColumnParam,
    DateParam,
    FloatParam,
    IntParam,
    ParamError,
    StringParam,
    Zipfian,
    make_generator,
    parse_param,
)

EXAMPLES = {
    "cust": "cust {type: int, range: [1, 150000], distribution: zipfian, exponent: 0.99}",
    "status": "status {type: choice, values: [O, F, P], weights: [5, 3, 1]}",
    "day": "day {type: date, range: [1992-01-01, 1998-08-02]}",
    "price": "price {type: float, range: [1.0, 100.0], digits: 2}",
    "tag": 'tag {type: string, length: [4, 12], prefix: "u-"}',
    "key": "key {type: column, fixture: tpch/sf0.01/customer, column: c_custkey}",
}
GENERATED = [name for name in EXAMPLES if name != "key"]


def values_of(text: str, seed: int, count: int, **kwargs: Any) -> list[object]:
    _name, spec = parse_param(text)
    generate = make_generator(spec, random.Random(seed), **kwargs)
    return [generate() for _ in range(count)]


def error_of(text: str) -> ParamError:
    with pytest.raises(ParamError) as caught:
        parse_param(text)
    return caught.value


# Parsing


def test_every_example_parses_into_its_typed_spec() -> None:
    specs = {name: parse_param(text) for name, text in EXAMPLES.items()}

    assert specs["cust"] == (
        "cust",
        IntParam(type="int", range=(1, 150000), distribution="zipfian", exponent=0.99),
    )
    assert specs["status"][1] == ChoiceParam(
        type="choice", values=("O", "F", "P"), weights=(5.0, 3.0, 1.0)
    )
    assert specs["day"][1] == DateParam(type="date", range=(date(1992, 1, 1), date(1998, 8, 2)))
    assert specs["price"][1] == FloatParam(type="float", range=(1.0, 100.0), digits=2)
    assert specs["tag"][1] == StringParam(
        type="string", length=(4, 12), alphabet=DEFAULT_ALPHABET, prefix="u-"
    )
    key = specs["key"][1]
    assert isinstance(key, ColumnParam)
    assert (key.fixture, key.column, key.ref.table) == (
        "tpch/sf0.01/customer",
        "c_custkey",
        "customer",
    )


def test_defaults_are_uniform_without_rounding() -> None:
    _name, spec = parse_param("n {type: int, range: [1, 10]}")
    _name, price = parse_param("p {type: float, range: [0, 1]}")

    assert isinstance(spec, IntParam) and spec.distribution == "uniform"
    assert isinstance(price, FloatParam) and price.digits is None and price.range == (0.0, 1.0)


def test_whole_marker_line_is_accepted_too() -> None:
    assert parse_param("-- @param: x {type: int, range: [1, 5]}")[0] == "x"


def test_dates_may_be_iso_strings_and_length_a_single_number() -> None:
    _name, day = parse_param("d {type: date, range: ['2020-02-28', '2020-03-01']}")
    _name, tag = parse_param("t {type: string, length: 8}")

    assert isinstance(day, DateParam) and day.range == (date(2020, 2, 28), date(2020, 3, 1))
    assert isinstance(tag, StringParam) and tag.length == (8, 8)


def test_choice_keeps_values_of_each_scalar_type() -> None:
    _name, spec = parse_param("c {type: choice, values: [a, 2, 2.5, true, 2020-01-01]}")

    assert isinstance(spec, ChoiceParam)
    assert spec.values == ("a", 2, 2.5, True, date(2020, 1, 1))
    assert [type(v) for v in spec.values] == [str, int, float, bool, date]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "cust {type: int, range: [5, 1]}",
            "parameter 'cust': range must be [low, high] with low <= high, got [5, 1]",
        ),
        ("cust {type: int, range: ['5', 10]}", "range[0] must be an integer, got '5' (a string)"),
        ("cust {type: int, range: [1.5, 10]}", "range[0] must be an integer, got 1.5"),
        ("cust {type: int, range: [1, 2, 3]}", "range must be [low, high]"),
        ("cust {type: int, range: 7}", "range must be [low, high] with low <= high, got 7"),
        ("cust {type: int}", "missing key 'range', e.g. range: [low, high]"),
        (
            "cust {type: int, range: [1, 10], exponent: 2}",
            "exponent applies only to distribution: zipfian, but distribution is uniform",
        ),
        (
            "cust {type: int, range: [1, 10], distribution: zipfian, exponent: 0}",
            "exponent must be > 0",
        ),
        (
            "cust {type: int, range: [1, 10], distribution: zipfian, exponent: true}",
            "exponent must be a number, got True (a boolean)",
        ),
        (
            "cust {type: int, range: [1, 10], distribution: zipf}",
            "distribution must be one of 'uniform' or 'zipfian', got 'zipf'",
        ),
        (
            "cust {type: int, range: [1, 10], limit: 3}",
            "unknown key 'limit'; allowed keys: type, range, distribution, exponent",
        ),
        (
            "cust {type: integer, range: [1, 10]}",
            "unknown type 'integer'; known types: int, float, choice, date, string, column",
        ),
        ("cust {range: [1, 10]}", "missing key 'type': expected one of int, float, choice"),
        ("cust", "missing its mapping after the name, e.g. cust {type: int, range: [1, 150000]}"),
        ("", "a parameter needs a name and a mapping, e.g. cust {type: int"),
        ("1cust {type: int}", "invalid parameter name '1cust': expected a letter or '_'"),
        ("cust {type: int, range: [1, 2}", "the mapping is not valid YAML (expected ',' or ']'"),
        ("cust {type: int, type: float}", "key 'type' is given twice"),
        ("cust type: int", "expected a YAML flow mapping in braces after the name, e.g. cust {"),
        ("cust {type: int} {x: 1}", "the mapping is not valid YAML"),
        ("cust {1: 2}", "keys must be names, got 1 (an integer)"),
        ("f {type: float, range: [2.0, 1.0]}", "range must be [low, high] with low <= high"),
        ("f {type: float, range: [1, '2']}", "range[1] must be a number, got '2' (a string)"),
        ("f {type: float, range: [0, .inf]}", "range[1] must be a number, got inf"),
        ("f {type: float, range: [1, 2], digits: -1}", "digits must be >= 0, got -1"),
        ("f {type: float, range: [1, 2], digits: 1.5}", "digits must be an integer, got 1.5"),
        (
            "f {type: float, range: [1.001, 1.004], digits: 2}",
            "range [1.001, 1.004] holds no value with 2 digits",
        ),
        (
            "f {type: float, range: [0, 1], distribution: uniform, exponent: 1}",
            "exponent applies only to distribution: zipfian",
        ),
        (
            "s {type: choice, values: []}",
            "values must be a non-empty list such as [a, b, c], got []",
        ),
        ("s {type: choice, values: a}", "values must be a non-empty list"),
        (
            "s {type: choice, values: [a, b], weights: [1]}",
            "weights must have one entry per value: 2 values, 1 weights",
        ),
        (
            "s {type: choice, values: [a, b], weights: [1, -1]}",
            "weights[1] must be a number >= 0, got -1",
        ),
        ("s {type: choice, values: [a, b], weights: [0, 0]}", "weights must not all be zero"),
        (
            "s {type: choice, values: [a, [b]]}",
            "values[1] must be a string, number, boolean or date, got ['b'] (a list)",
        ),
        ("s {type: choice, values: [a, null]}", "values[1] must be a string, number"),
        (
            "d {type: date, range: [1998-01-01, 1992-01-01]}",
            "range must be [low, high] with low <= high, got [1998-01-01, 1992-01-01]",
        ),
        ("d {type: date, range: [soon, 1992-01-01]}", "range[0] must be a date such as 1992-01-01"),
        ("t {type: string, length: 0}", "length must lie within 1..10000, got 0"),
        ("t {type: string, length: [3, 2]}", "length must be [min, max] with min <= max"),
        ("t {type: string, length: '5'}", "length must be a number N or [min, max], got '5'"),
        ("t {type: string, length: 5, alphabet: ''}", "alphabet must not be empty"),
        (
            "k {type: column, fixture: tpch/customer, column: c}",
            "fixture: invalid fixture id 'tpch/customer': expected <dataset>/sf<scale>/<table>",
        ),
        ("k {type: column, fixture: tpch/sf0.01/customer}", "missing key 'column'"),
        (
            "k {type: column, fixture: tpch/sf0.01/c, column: c, range: [1, 2]}",
            "unknown key 'range'; allowed keys: type, fixture, column",
        ),
    ],
)
def test_invalid_declaration_is_explained(text: str, expected: str) -> None:
    error = error_of(text)

    assert expected in error.message
    assert str(error) == error.message
    # Pydantic's and PyYAML's own report formats never reach the user.
    assert "validation error" not in error.message
    assert "errors.pydantic.dev" not in error.message
    assert "Traceback" not in error.message
    assert "\n" not in error.message


def test_several_problems_are_all_reported() -> None:
    message = error_of("c {type: int, range: [1, 2], foo: 1, bar: 2}").message

    assert "unknown key 'foo'" in message and "unknown key 'bar'" in message


def test_error_offset_points_at_the_name_or_the_offending_key() -> None:
    text = "cust {type: int, range: [5, 1]}"

    assert error_of("  1x {type: int}").offset == 2
    assert error_of(text).offset == text.index("range")
    assert error_of("cust {type: nope}").offset == len("cust {")
    assert error_of("cust {range: [1, 2]}").offset == len("cust ")
    assert error_of("cust {type: int, range: [1, 2}").offset == len("cust {type: int, range: [1, 2")


def test_param_error_is_a_value_error_and_a_crucible_error() -> None:
    error = error_of("cust")

    assert isinstance(error, ValueError) and isinstance(error, CrucibleError)


# Generated values


@pytest.mark.parametrize(
    ("text", "kind", "inside"),
    [
        ("a {type: int, range: [-3, 7]}", int, lambda v: -3 <= v <= 7),
        (
            "a {type: int, range: [10, 20], distribution: zipfian, exponent: 1.2}",
            int,
            lambda v: 10 <= v <= 20,
        ),
        ("a {type: float, range: [-1.5, 2.5]}", float, lambda v: -1.5 <= v <= 2.5),
        (
            "a {type: float, range: [1, 2], distribution: zipfian}",
            float,
            lambda v: 1 <= v <= 2,
        ),
        (
            "a {type: float, range: [0.001, 0.999], digits: 2}",
            Decimal,
            lambda v: Decimal("0.01") <= v <= Decimal("0.99") and v == v.quantize(Decimal("0.01")),
        ),
        ("a {type: float, range: [3, 3]}", float, lambda v: v == 3.0),
        (
            "a {type: date, range: [2020-02-27, 2020-03-02]}",
            date,
            lambda v: date(2020, 2, 27) <= v <= date(2020, 3, 2),
        ),
        ("a {type: choice, values: [x, y]}", str, lambda v: v in ("x", "y")),
        (
            "a {type: string, length: [2, 5], alphabet: ab, prefix: k-}",
            str,
            lambda v: v.startswith("k-") and 2 <= len(v) - 2 <= 5 and set(v[2:]) <= {"a", "b"},
        ),
    ],
)
def test_generated_values_have_the_declared_type_and_stay_in_bounds(
    text: str, kind: type, inside: Callable[[Any], bool]
) -> None:
    values = values_of(text, seed=3, count=20_000)

    assert all(type(v) is kind for v in values)
    assert all(inside(v) for v in values)


def test_uniform_int_covers_both_ends_evenly() -> None:
    counts = Counter(values_of("a {type: int, range: [1, 6]}", seed=11, count=60_000))

    assert set(counts) == {1, 2, 3, 4, 5, 6}
    # 10,000 expected each; the standard deviation is about 91.
    assert all(abs(c - 10_000) < 500 for c in counts.values())


def test_uniform_date_covers_every_day_including_both_ends() -> None:
    values = set(values_of("d {type: date, range: [2020-02-27, 2020-03-02]}", seed=2, count=2000))

    assert values == {date(2020, 2, 27), date(2020, 2, 28), date(2020, 2, 29)} | {
        date(2020, 3, 1),
        date(2020, 3, 2),
    }


def test_string_lengths_cover_the_whole_length_range() -> None:
    values = values_of("t {type: string, length: [1, 4]}", seed=5, count=4000)

    assert {len(v) for v in values if isinstance(v, str)} == {1, 2, 3, 4}
    assert set("".join(str(v) for v in values)) <= set(DEFAULT_ALPHABET)


def test_weighted_choice_frequencies_match_weights() -> None:
    count = 90_000
    counts = Counter(
        values_of("s {type: choice, values: [O, F, P, X], weights: [5, 3, 1, 0]}", 8, count)
    )

    assert "X" not in counts
    for value, weight in (("O", 5), ("F", 3), ("P", 1)):
        # The standard deviation of each frequency is below 0.0017.
        assert abs(counts[value] / count - weight / 9) < 0.01


def test_choice_returns_the_values_as_given() -> None:
    values = values_of("c {type: choice, values: [1, 2.5, true, 2020-01-01]}", seed=1, count=500)

    # Compared by repr, because 1 == True would hide a bool turned into an int.
    assert {repr(v) for v in values} == {"1", "2.5", "True", "datetime.date(2020, 1, 1)"}


def test_zipfian_int_makes_the_low_end_most_frequent() -> None:
    text = "c {type: int, range: [100, 109], distribution: zipfian, exponent: 1.0}"
    count = 100_000
    counts = Counter(values_of(text, seed=4, count=count))
    harmonic = sum(1 / k for k in range(1, 11))

    assert counts.most_common(1)[0][0] == 100
    for rank in range(1, 11):
        assert abs(counts[99 + rank] / count - 1 / (rank * harmonic)) < 0.006


def test_zipfian_float_puts_most_values_near_the_low_end() -> None:
    text = "c {type: float, range: [0, 1000], distribution: zipfian, exponent: 1.5}"
    count = 100_000
    values = values_of(text, seed=4, count=count)
    s = 1.5
    total = sum(k**-s for k in range(1, 1001))

    # The first sub-range of width 1 holds rank 1, with its exact Zipf probability.
    assert abs(sum(1 for v in values if isinstance(v, float) and v < 1) / count - 1 / total) < 0.01
    below_10 = sum(k**-s for k in range(1, 11)) / total
    assert abs(sum(1 for v in values if isinstance(v, float) and v < 10) / count - below_10) < 0.01


def test_column_generator_picks_from_the_given_values() -> None:
    text = EXAMPLES["key"]

    values = values_of(text, seed=1, count=1000, column_values=[7, 8, 9])

    assert set(values) == {7, 8, 9}


@pytest.mark.parametrize("column_values", [None, []])
def test_column_generator_needs_values(column_values: list[object] | None) -> None:
    _name, spec = parse_param(EXAMPLES["key"])

    with pytest.raises(ValueError, match="needs the column's values"):
        make_generator(spec, random.Random(1), column_values)


# Reproducibility


@pytest.mark.parametrize("name", [*GENERATED, "key"])
def test_same_seed_gives_identical_values(name: str) -> None:
    column = list(range(1000))

    first = values_of(EXAMPLES[name], seed=42, count=500, column_values=column)
    second = values_of(EXAMPLES[name], seed=42, count=500, column_values=column)

    assert first == second


@pytest.mark.parametrize("name", [*GENERATED, "key"])
def test_different_seeds_give_different_values(name: str) -> None:
    column = list(range(1000))

    first = values_of(EXAMPLES[name], seed=1, count=500, column_values=column)
    second = values_of(EXAMPLES[name], seed=2, count=500, column_values=column)

    assert first != second


class OnlyRandom(random.Random):
    """A generator whose methods other than random() fail: their sequences are not stable."""

    def _refuse(self, *args: object, **kwargs: object) -> Any:
        raise AssertionError("only random() may be used")

    getrandbits = randint = randrange = choice = choices = uniform = _refuse
    shuffle = sample = paretovariate = expovariate = _refuse


@pytest.mark.parametrize("name", [*GENERATED, "key"])
def test_generators_draw_only_from_random(name: str) -> None:
    _name, spec = parse_param(EXAMPLES[name])
    rng = OnlyRandom(9)

    generate = make_generator(spec, rng, column_values=[1, 2, 3])

    assert len([generate() for _ in range(1000)]) == 1000


def test_uniform_int_is_the_documented_function_of_random() -> None:
    reference = random.Random(5)
    expected = [1 + int(reference.random() * 150000) for _ in range(100)]

    assert values_of("c {type: int, range: [1, 150000]}", seed=5, count=100) == expected


# The Zipf sampler


def zipf_pmf(n: int, s: float) -> list[float]:
    weights = [k**-s for k in range(1, n + 1)]
    total = math.fsum(weights)
    return [w / total for w in weights]


def chi_square_critical(df: int, z: float = 3.090) -> float:
    """The chi-square value exceeded with probability 0.001 (Wilson-Hilferty approximation)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


@pytest.mark.parametrize("n", [10, 50])
@pytest.mark.parametrize("s", [0.5, 0.99, 1.0, 1.5])
def test_zipfian_frequencies_match_the_exact_pmf(n: int, s: float) -> None:
    samples = 200_000
    zipf = Zipfian(n, s)
    rnd = random.Random(n * 1000 + int(s * 100)).random
    counts = [0] * (n + 2)
    for _ in range(samples):
        counts[zipf.sample(rnd)] += 1
    pmf = zipf_pmf(n, s)

    assert counts[0] == 0 and counts[n + 1] == 0
    observed = counts[1 : n + 1]
    # A correct sampler exceeds the critical value with probability 0.001; a seeded run is
    # reproducible. A rank off by one or a wrong exponent gives values in the thousands.
    chi_square = sum(
        (o - samples * p) ** 2 / (samples * p) for o, p in zip(observed, pmf, strict=True)
    )
    assert chi_square < chi_square_critical(n - 1)
    # Each frequency has a standard deviation below sqrt(0.25 / 200,000) = 0.0011, so 0.005 is
    # more than four of them.
    assert max(abs(o / samples - p) for o, p in zip(observed, pmf, strict=True)) < 0.005


def test_chi_square_check_rejects_a_slightly_wrong_exponent() -> None:
    samples = 200_000
    zipf = Zipfian(50, 1.05)
    rnd = random.Random(1).random
    counts = Counter(zipf.sample(rnd) for _ in range(samples))
    pmf = zipf_pmf(50, 1.0)

    chi_square = sum(
        (counts[k] - samples * pmf[k - 1]) ** 2 / (samples * pmf[k - 1]) for k in range(1, 51)
    )

    assert chi_square > chi_square_critical(49)


@pytest.mark.parametrize("s", [0.01, 0.5, 1.0, 3.0, 50.0])
def test_zipfian_with_one_rank_always_gives_one(s: float) -> None:
    zipf = Zipfian(1, s)
    rnd = random.Random(3).random

    assert {zipf.sample(rnd) for _ in range(10_000)} == {1}


@pytest.mark.parametrize("s", [0.01, 2.0, 50.0])
def test_zipfian_samples_stay_in_range_for_extreme_exponents(s: float) -> None:
    zipf = Zipfian(7, s)
    rnd = random.Random(3).random

    assert {zipf.sample(rnd) for _ in range(20_000)} <= set(range(1, 8))


@pytest.mark.parametrize("s", [0.5, 0.99, 1.0, 1.5])
def test_zipfian_over_a_billion_ranks_is_fast_and_small(s: float) -> None:
    n = 10**9
    tracemalloc.start()
    zipf = Zipfian(n, s)
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rnd = random.Random(6).random

    started = time.perf_counter()
    samples = [zipf.sample(rnd) for _ in range(100_000)]
    elapsed_s = time.perf_counter() - started

    assert peak < 4096
    assert all(1 <= k <= n for k in samples)
    assert max(samples) > 10**4
    # About a microsecond per sample here; the bound only catches time that grows with n.
    assert elapsed_s < 5.0
    # Rank 1's frequency against 1/H(n, s), where H is the Euler-Maclaurin sum.
    harmonic = euler_maclaurin_harmonic(n, s)
    assert abs(samples.count(1) / len(samples) - 1 / harmonic) < 0.005


def euler_maclaurin_harmonic(n: int, s: float, exact_terms: int = 1000) -> float:
    head = math.fsum(k**-s for k in range(1, exact_terms))
    a = float(exact_terms)
    integral = math.log(n / a) if s == 1.0 else (n ** (1 - s) - a ** (1 - s)) / (1 - s)
    ends = (a**-s + n**-s) / 2
    slope = s * (a ** (-s - 1) - n ** (-s - 1)) / 12
    return head + integral + ends + slope


@pytest.mark.parametrize(
    ("n", "s"), [(0, 1.0), (-1, 1.0), (True, 1.0), (10, 0.0), (10, -1.0), (10, math.nan)]
)
def test_zipfian_rejects_invalid_arguments(n: int, s: float) -> None:
    with pytest.raises(ValueError, match="zipfian"):
        Zipfian(n, s)


def test_decimal_grid_values_are_exact_and_cover_both_ends_equally() -> None:
    _, spec = parse_param("d {type: float, range: [0.0, 0.1], digits: 2}")
    make = make_generator(spec, random.Random(4))

    counts = Counter(make() for _ in range(55_000))

    assert set(counts) == {Decimal(k).scaleb(-2) for k in range(11)}
    assert str(min(counts)) == "0.00" and str(max(counts)) == "0.10"
    assert max(counts.values()) / min(counts.values()) < 1.15


def test_an_impossible_date_is_a_parameter_error_not_a_crash() -> None:
    with pytest.raises(ParamError) as raised:
        parse_param("d {type: date, range: [1992-13-01, 1998-01-01]}")

    assert "month must be in 1..12 (a date is YYYY-MM-DD)" in raised.value.message
