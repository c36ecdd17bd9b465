"""The workload parser: the original validator's rules, and what the original got wrong."""

import hashlib
from pathlib import Path

import pytest

from crucible_dagster.errors import ValidationError
from crucible_dagster.workload import Workload, load_workload_file, parse_workload

VALID_SQL = """\
-- @type: sql
-- @name: CountAll
SELECT COUNT(*) FROM test_data;

-- @name: SelectById
SELECT *
FROM test_data
WHERE id = 1;
"""

VALID_CQL = """\
-- @type: cql
-- @name: ReadUser
SELECT * FROM users WHERE id = 1;
"""


def parse(text: str) -> Workload:
    return parse_workload(text, source="w.sql", workload_id="w")


def problems(text: str) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        parse(text)
    return [p.message for p in caught.value.problems]


def positions(text: str) -> list[tuple[int | None, int | None]]:
    with pytest.raises(ValidationError) as caught:
        parse(text)
    return [(p.location.line, p.location.column) for p in caught.value.problems]


# --- the original validator's behaviours ---------------------------------------------------


def test_valid_sql_workload_parses() -> None:
    workload = parse(VALID_SQL)

    assert workload.type == "sql"
    assert [q.name for q in workload.queries] == ["CountAll", "SelectById"]


def test_valid_cql_workload_parses() -> None:
    workload = parse(VALID_CQL)

    assert workload.type == "cql"
    assert workload.queries[0].sql == "SELECT * FROM users WHERE id = 1;"


def test_missing_type_header_is_an_error() -> None:
    messages = problems("-- @name: A\nSELECT 1;\n")

    assert any("workload type" in m for m in messages)


def test_empty_type_value_is_an_error() -> None:
    messages = problems("-- @type:\n-- @name: A\nSELECT 1;\n")

    assert any("nothing after it" in m and "sql or cql" in m for m in messages)


def test_workload_without_query_blocks_is_an_error() -> None:
    messages = problems("-- @type: sql\n\n")

    assert any("no queries" in m for m in messages)


def test_duplicate_query_names_are_an_error() -> None:
    messages = problems("-- @type: sql\n-- @name: A\nSELECT 1;\n-- @name: A\nSELECT 2;\n")

    assert any("duplicate query name 'A'" in m and "line 2" in m for m in messages)


def test_query_names_are_case_sensitive() -> None:
    workload = parse("-- @type: sql\n-- @name: A\nSELECT 1;\n-- @name: a\nSELECT 2;\n")

    assert [q.name for q in workload.queries] == ["A", "a"]


@pytest.mark.parametrize("name", ["my query", "1abc", "naïve", "a-b"])
def test_invalid_query_names_are_rejected(name: str) -> None:
    messages = problems(f"-- @type: sql\n-- @name: {name}\nSELECT 1;\n")

    assert any(f"invalid query name {name!r}" in m for m in messages)


def test_underscore_names_are_valid() -> None:
    workload = parse("-- @type: sql\n-- @name: _q_1\nSELECT 1;\n")

    assert workload.queries[0].name == "_q_1"


def test_empty_body_is_an_error() -> None:
    messages = problems("-- @type: sql\n-- @name: A\n\n-- @name: B\nSELECT 1;\n")

    assert any("'A' has no SQL" in m for m in messages)


def test_non_comment_first_line_is_an_error() -> None:
    messages = problems("SELECT 1;\n-- @name: A\nSELECT 1;\n")

    assert any("first non-blank line must declare the workload type" in m for m in messages)


def test_ordinary_comment_first_line_is_an_error() -> None:
    messages = problems("-- TPC-H queries\n-- @type: sql\n-- @name: A\nSELECT 1;\n")

    assert any("first non-blank line must declare the workload type" in m for m in messages)


def test_every_problem_is_reported_together() -> None:
    messages = problems("-- @type: sql\n-- @name: bad name\nSELECT 1;\n-- @name: B\n")

    assert len(messages) >= 2


def test_queries_keep_file_order_with_stripped_multiline_bodies() -> None:
    workload = parse(VALID_SQL)

    assert workload.queries[1].sql == "SELECT *\nFROM test_data\nWHERE id = 1;"
    assert workload.queries[0].sql == "SELECT COUNT(*) FROM test_data;"


def test_leading_blank_lines_before_header_are_allowed() -> None:
    workload = parse("\n\n   \n-- @type: sql\n-- @name: A\nSELECT 1\n")

    assert workload.queries[0].line == 5


@pytest.mark.parametrize("text", ["", "   \n\n\t\n"])
def test_empty_or_blank_file_reports_empty(text: str) -> None:
    messages = problems(text)

    assert messages == ["the workload file is empty: it needs a '-- @type: sql' header and queries"]


def test_parse_error_is_a_validation_error_with_the_source() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_workload("nonsense", source="workloads/x.sql", workload_id="x")

    assert all(p.location.file == "workloads/x.sql" for p in caught.value.problems)


def test_query_records_its_workload_source_and_marker_line() -> None:
    workload = parse_workload(VALID_SQL, source="plans/workloads/w.sql", workload_id="w")

    second = workload.queries[1]
    assert (second.workload_id, second.source, second.line) == ("w", "plans/workloads/w.sql", 5)


def test_sha256_is_of_the_exact_text() -> None:
    text = VALID_SQL.replace("\n", "\r\n")

    assert parse(text).sha256 == hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- types and dialects --------------------------------------------------------------------


@pytest.mark.parametrize(
    "declared",
    ["mysql", "postgresql", "postgres", "doris", "trino", "clickhouse", "starrocks", "mariadb"],
)
def test_dialect_names_mean_sql(declared: str) -> None:
    assert parse(f"-- @type: {declared}\n-- @name: A\nSELECT 1\n").type == "sql"


def test_type_is_case_insensitive() -> None:
    assert parse("-- @type: CQL\n-- @name: A\nSELECT 1\n").type == "cql"


def test_unknown_type_lists_the_allowed_values() -> None:
    messages = problems("-- @type: banana\n-- @name: A\nSELECT 1\n")

    assert messages == [
        "unknown workload type 'banana': expected sql or cql (the SQL dialect names mysql, "
        "postgresql, postgres, doris, trino, clickhouse, starrocks, mariadb also mean sql)"
    ]


# --- the edge-case matrix: what the original dropped or merged is an error now -------------


def test_comment_lines_inside_a_block_stay_in_the_body() -> None:
    workload = parse("-- @type: sql\n-- @name: A\n-- the count\nSELECT 1 -- one\n")

    assert workload.queries[0].sql == "-- the count\nSELECT 1 -- one"


def test_sql_before_the_first_block_is_an_error() -> None:
    text = "-- @type: sql\n-- a harmless comment\nSELECT 0;\n-- @name: A\nSELECT 1;\n"

    assert positions(text) == [(3, 1)]
    assert "belongs to no query" in problems(text)[0]


def test_comments_between_header_and_first_block_are_allowed() -> None:
    workload = parse("-- @type: sql\n-- about this file\n/* more */\n\n-- @name: A\nSELECT 1\n")

    assert len(workload.queries) == 1


def test_blank_name_is_an_error_instead_of_merging_into_the_previous_query() -> None:
    text = "-- @type: sql\n-- @name: A\nSELECT 1;\n-- @name:\nSELECT 2;\n"

    assert problems(text) == ["the '@name:' marker has nothing after it: expected a query name"]
    assert positions(text) == [(4, 1)]


def test_marker_after_sql_on_the_same_line_is_body_text() -> None:
    workload = parse("-- @type: sql\n-- @name: A\nSELECT 1; -- @name: B\n")

    assert [q.name for q in workload.queries] == ["A"]
    assert workload.queries[0].sql == "SELECT 1; -- @name: B"


def test_name_marker_on_the_last_line_without_newline_is_an_empty_body() -> None:
    messages = problems("-- @type: sql\n-- @name: A\nSELECT 1\n-- @name: B")

    assert messages == ["query 'B' has no SQL after its '-- @name:' line"]


def test_semicolons_never_split_a_block_and_trailing_semicolon_is_kept() -> None:
    workload = parse("-- @type: sql\n-- @name: A\nSELECT ';'; SELECT 2;\n")

    assert workload.queries[0].sql == "SELECT ';'; SELECT 2;"


def test_crlf_line_endings_are_accepted() -> None:
    workload = parse(VALID_SQL.replace("\n", "\r\n"))

    assert workload.queries[1].sql == "SELECT *\nFROM test_data\nWHERE id = 1;"


def test_second_type_line_is_an_error() -> None:
    text = "-- @type: sql\n-- @name: A\nSELECT 1\n  -- @type: cql\n"

    assert problems(text) == ["a second '-- @type:' line: the type is declared once, at line 1"]
    assert positions(text) == [(4, 3)]


def test_trailing_comment_after_a_name_is_rejected_at_its_column() -> None:
    text = "-- @type: sql\n-- @name: A -- note\nSELECT 1\n"

    assert positions(text) == [(2, 11)]
    assert "invalid query name 'A -- note'" in problems(text)[0]


def test_block_comment_as_first_line_is_an_error() -> None:
    messages = problems("/* header */\n-- @type: sql\n-- @name: A\nSELECT 1\n")

    assert any("first non-blank line must declare the workload type" in m for m in messages)


def test_indented_markers_and_missing_spaces_count() -> None:
    workload = parse("   -- @type: sql\n\t--@name:A\nSELECT 1\n")

    assert workload.queries[0].name == "A"


def test_unknown_marker_suggests_the_close_one() -> None:
    text = "-- @type: sql\n-- @name: A\nSELECT 1\n-- @nmae: B\n"

    assert problems(text) == [
        "unknown marker '@nmae': expected @type, @name, @weight or @param; "
        "did you mean '-- @name:'?"
    ]
    assert positions(text) == [(4, 1)]


def test_uppercase_marker_keyword_is_unknown_with_a_suggestion() -> None:
    messages = problems("-- @TYPE: sql\n-- @name: A\nSELECT 1\n")

    assert any("did you mean '-- @type:'?" in m for m in messages)


def test_marker_without_colon_is_an_error() -> None:
    messages = problems("-- @type: sql\n-- @name A\nSELECT 1\n")

    assert any("needs a colon" in m for m in messages)


def test_weight_marker_sets_the_weight_of_its_block_and_leaves_the_sql() -> None:
    workload = parse("-- @type: sql\n-- @name: A\n-- @weight: 3\nSELECT 1\n-- @name: B\nSELECT 2\n")

    assert [(q.name, q.weight, q.sql) for q in workload.queries] == [
        ("A", 3.0, "SELECT 1"),
        ("B", None, "SELECT 2"),
    ]


def test_weight_below_the_sql_still_belongs_to_its_block() -> None:
    workload = parse("-- @type: sql\n-- @name: A\nSELECT 1\n  -- @weight: 0.5\nFROM t\n")

    assert workload.queries[0].weight == 0.5
    assert workload.queries[0].sql == "SELECT 1\n\nFROM t"


@pytest.mark.parametrize("value", ["3x", "-1", "1e3", "three"])
def test_weight_that_is_not_a_number_of_zero_or_more_is_an_error(value: str) -> None:
    text = f"-- @type: sql\n-- @name: A\n-- @weight: {value}\nSELECT 1\n"

    assert problems(text) == [
        f"invalid weight {value!r} for query 'A': expected a number of 0 or more, such as 3 or 0.5"
    ]
    assert positions(text) == [(3, 13)]


def test_second_weight_in_a_block_is_an_error() -> None:
    text = "-- @type: sql\n-- @name: A\n-- @weight: 1\n-- @weight: 2\nSELECT 1\n"

    assert problems(text) == ["a second '@weight' for query 'A': the first is at line 3"]


def test_weight_before_the_first_query_belongs_to_no_query() -> None:
    text = "-- @type: sql\n-- @weight: 2\n-- @name: A\nSELECT 1\n"

    assert problems(text) == [
        "the '@weight' marker belongs to no query: put it below the '-- @name:' line of the "
        "query it is for"
    ]
    assert positions(text) == [(2, 1)]


def test_empty_weight_says_what_it_expects() -> None:
    messages = problems("-- @type: sql\n-- @name: A\n-- @weight:\nSELECT 1\n")

    assert messages == ["the '@weight:' marker has nothing after it: expected a number, such as 3"]


# --- parameters ------------------------------------------------------------------------------

PARAMS = """-- @type: postgresql
-- @name: Orders
-- @param: cust {type: int, range: [1, 1500]}
-- @param: day {type: date, range: [1992-01-01, 1998-08-02]}
SELECT * FROM orders
WHERE o_custkey = :cust AND o_orderdate >= :day::date AND o_comment <> ':cust'
  AND o_orderkey <> :cust -- :day
"""


def test_parameters_are_declared_and_found_outside_literals_and_comments() -> None:
    query = parse(PARAMS).queries[0]

    assert [p.name for p in query.params] == ["cust", "day"]
    assert [p.line for p in query.params] == [3, 4]
    assert [(p.name, query.sql[p.offset : p.end]) for p in query.placeholders] == [
        ("cust", ":cust"),
        ("day", ":day"),
        ("cust", ":cust"),
    ]


def test_numbered_rendering_gives_each_name_one_number_and_keeps_casts() -> None:
    sql, order = parse(PARAMS).queries[0].render(lambda n: f"${n}", numbered=True)

    assert order == ("cust", "day")
    assert sql == (
        "SELECT * FROM orders\nWHERE o_custkey = $1 AND o_orderdate >= $2::date "
        "AND o_comment <> ':cust'\n  AND o_orderkey <> $1 -- :day"
    )


def test_positional_rendering_takes_one_argument_per_occurrence() -> None:
    sql, order = parse(PARAMS).queries[0].render(lambda n: "%s", numbered=False)

    assert order == ("cust", "day", "cust")
    assert sql.count("%s") == 3


def test_colons_in_a_query_without_parameters_are_left_alone() -> None:
    query = parse("-- @type: sql\n-- @name: A\nSELECT arr[a:b], 1::int\n").queries[0]

    assert query.placeholders == ()
    assert query.render(lambda n: "?", numbered=False) == ("SELECT arr[a:b], 1::int", ())


def test_undeclared_placeholder_is_an_error_with_a_suggestion() -> None:
    text = "-- @type: sql\n-- @name: A\n-- @param: cust {type: int, range: [1, 9]}\n"
    text += "SELECT :cust, :custt\n"

    messages = problems(text)

    assert len(messages) == 1
    assert "query 'A' uses ':custt', which no '-- @param:' line declares" in messages[0]
    assert "did you mean ':cust'?" in messages[0]
    assert positions(text) == [(4, 15)]


def test_placeholder_in_a_query_without_parameters_is_an_error_at_its_line() -> None:
    text = "-- @type: sql\n-- @name: A\nSELECT *\nFROM t WHERE id = :nope\n"

    messages = problems(text)

    assert len(messages) == 1
    assert messages[0].startswith("query 'A' uses ':nope', which no '-- @param:' line declares")
    assert "declare it with '-- @param: nope {type: ...}'" in messages[0]
    assert positions(text) == [(4, 19)]


def test_parameter_declared_in_another_block_is_undeclared_in_this_one() -> None:
    text = "-- @type: sql\n-- @name: A\n-- @param: x {type: int, range: [1, 9]}\nSELECT :x\n"
    text += "-- @name: B\nSELECT :x\n"

    assert positions(text) == [(6, 8)]


LEGITIMATE_COLONS = {
    "postgresql": [
        "SELECT '2024-01-01'::date, x::int[], (a)::text FROM t",
        "SELECT arr[1:2], arr[lo:hi], arr[lo:], arr[2:hi] FROM t",
        "SELECT arr[lo : hi], arr[: hi] FROM t",
        "SELECT '12:30:00'::time, E'\\':x', \":y\" FROM t",
        "SELECT f(a := 1) /* :c */ -- :d",
        "DO $$ BEGIN x := 1; PERFORM :y; END $$",
    ],
    "mysql": ["SET @x := 1", "SELECT @x:=@x+1 FROM t", "SELECT 'a\\':b' FROM t"],
    "clickhouse": [
        "SELECT * FROM t WHERE id = {id:UInt32} AND s = {name: String}",
        "SELECT if(a > 1, 'x':'y'), a ? 1 : 2, b?c:d FROM t",
    ],
    "cql": ["INSERT INTO u (id, addr) VALUES (1, {street:'x', city: 'y'})"],
}


@pytest.mark.parametrize(
    ("dialect", "sql"), [(d, sql) for d, sqls in LEGITIMATE_COLONS.items() for sql in sqls]
)
def test_colons_that_are_sql_are_not_placeholders(dialect: str, sql: str) -> None:
    query = parse(f"-- @type: {dialect}\n-- @name: A\n{sql}\n").queries[0]

    assert query.placeholders == ()
    assert query.render(lambda n: "?", numbered=False) == (sql, ())


def test_colon_glued_to_an_identifier_is_not_a_placeholder_even_with_parameters() -> None:
    text = "-- @type: sql\n-- @name: A\n-- @param: hi {type: int, range: [1, 9]}\n"
    text += "SELECT arr[lo:hi], {id:UInt32}, :hi::int\n"
    query = parse(text).queries[0]

    assert [(p.name, query.sql[p.offset : p.end]) for p in query.placeholders] == [("hi", ":hi")]


@pytest.mark.parametrize("slice_", ["arr[:hi]", "arr[lo :hi]"])
def test_slice_colon_before_a_name_needs_a_space_and_the_error_says_so(slice_: str) -> None:
    messages = problems(f"-- @type: postgresql\n-- @name: A\nSELECT {slice_} FROM t\n")

    assert len(messages) == 1
    assert "uses ':hi'" in messages[0]
    assert "put a space after it: ': hi'" in messages[0]


def test_declared_parameter_the_sql_never_uses_is_an_error() -> None:
    text = "-- @type: sql\n-- @name: A\n-- @param: x {type: int, range: [1, 9]}\nSELECT 1\n"

    assert problems(text) == ["query 'A' declares parameter 'x' but its SQL never uses ':x'"]
    assert positions(text) == [(3, None)]


def test_parameter_declared_twice_is_an_error() -> None:
    text = "-- @type: sql\n-- @name: A\n-- @param: x {type: int, range: [1, 9]}\n"
    text += "-- @param: x {type: int, range: [1, 5]}\nSELECT :x\n"

    assert problems(text) == ["query 'A' declares parameter 'x' twice (first at line 3)"]
    assert positions(text) == [(4, 12)]


def test_bad_parameter_declaration_is_located_in_its_marker() -> None:
    text = "-- @type: sql\n-- @name: A\n-- @param: x {type: int, range: [5, 1]}\nSELECT :x\n"

    messages = problems(text)

    assert len(messages) == 1
    assert messages[0].startswith("query 'A': parameter 'x': range must be [low, high]")
    line, column = positions(text)[0]
    assert line == 3 and column is not None and column > len("-- @param: ")


def test_parameter_before_the_first_query_belongs_to_no_query() -> None:
    text = "-- @type: sql\n-- @param: x {type: int, range: [1, 9]}\n-- @name: A\nSELECT 1\n"

    assert "the '@param' marker belongs to no query" in problems(text)[0]


def test_at_sign_comment_without_colon_is_an_ordinary_comment() -> None:
    workload = parse("-- @type: sql\n-- @name: A\n-- @todo tune this\nSELECT 1\n")

    assert workload.queries[0].sql == "-- @todo tune this\nSELECT 1"


# --- markers inside literals and comments are body text ------------------------------------


@pytest.mark.parametrize(
    ("opening", "closing"),
    [
        ("SELECT 'x", "'"),
        ('SELECT "odd', '"'),
        ("SELECT $$", "$$"),
        ("SELECT $body$", "$body$"),
        ("SELECT 1 /*", "*/"),
        ("SELECT 1 /* outer /* inner */", "*/"),
        ("SELECT E'it\\'s", "'"),
        ("SELECT 'it''s", "'"),
    ],
)
def test_marker_looking_line_inside_a_literal_is_body_text(opening: str, closing: str) -> None:
    text = f"-- @type: sql\n-- @name: A\n{opening}\n-- @name: B\n{closing}\n-- @name: C\nSELECT 3\n"

    workload = parse(text)

    assert [q.name for q in workload.queries] == ["A", "C"]
    assert "-- @name: B" in workload.queries[0].sql


def test_dollar_quote_tags_must_match() -> None:
    text = "-- @type: sql\n-- @name: A\nSELECT $a$ $b$\n-- @name: B\n$a$\n-- @name: C\nSELECT 1\n"

    assert [q.name for q in parse(text).queries] == ["A", "C"]


def test_positional_parameters_are_not_dollar_quotes() -> None:
    text = "-- @type: postgresql\n-- @name: A\nSELECT $1, $2\n-- @name: B\nSELECT 2\n"

    assert [q.name for q in parse(text).queries] == ["A", "B"]


def test_mysql_backslash_escapes_do_not_end_a_string() -> None:
    text = "-- @type: mysql\n-- @name: A\nSELECT 'it\\'s'\n-- @name: B\nSELECT a$b$ FROM t\n"

    assert [q.name for q in parse(text).queries] == ["A", "B"]


def test_comment_quote_does_not_open_a_string() -> None:
    text = "-- @type: sql\n-- @name: A\nSELECT 1 -- don't\n-- @name: B\nSELECT 2\n"

    assert [q.name for q in parse(text).queries] == ["A", "B"]


def test_unterminated_string_is_an_error_at_its_opening_quote() -> None:
    text = "-- @type: sql\n-- @name: A\nSELECT 'abc\n-- @name: B\nSELECT 2\n"

    assert positions(text) == [(3, 8)]
    assert "unterminated string literal" in problems(text)[0]


def test_unterminated_block_comment_is_an_error() -> None:
    messages = problems("-- @type: sql\n-- @name: A\nSELECT 1 /* oops\n-- @name: B\nSELECT 2\n")

    assert any("unterminated block comment" in m for m in messages)


def test_block_with_only_comments_has_no_sql() -> None:
    messages = problems("-- @type: sql\n-- @name: A\n-- nothing yet\n/* later */\n")

    assert messages == ["query 'A' has no SQL after its '-- @name:' line"]


# --- reading files -------------------------------------------------------------------------


def test_load_workload_file_reads_utf8_and_keeps_exact_hash(tmp_path: Path) -> None:
    path = tmp_path / "w.sql"
    path.write_bytes(VALID_SQL.replace("\n", "\r\n").encode())

    workload = load_workload_file(path, "w")

    assert workload.source == str(path)
    assert workload.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_missing_workload_file_is_a_validation_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as caught:
        load_workload_file(tmp_path / "nope.sql", "nope")

    assert caught.value.problems[0].message == "workload file not found"
    assert caught.value.problems[0].location.file == str(tmp_path / "nope.sql")


def test_undecodable_workload_file_points_at_the_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "w.sql"
    path.write_bytes(b"-- @type: sql\n-- @name: A\nSELECT '\xff'\n")

    with pytest.raises(ValidationError) as caught:
        load_workload_file(path, "w")

    problem = caught.value.problems[0]
    assert (problem.location.line, problem.location.column) == (3, 9)
    assert "not valid utf-8" in problem.message


def test_a_badly_declared_parameter_is_reported_once_not_also_as_undeclared() -> None:
    text = "-- @type: sql\n-- @name: A\n-- @param: b {type: int, range: [5, 1]}\nSELECT :b + :b\n"

    messages = problems(text)

    assert len(messages) == 1
    assert messages[0].startswith("query 'A': parameter 'b': range must be")
