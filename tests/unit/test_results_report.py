"""The HTML report: one escaped, self-contained page with the run, queries and faults."""

import base64
import re
from datetime import UTC, datetime
from html.parser import HTMLParser

from crucible_dagster.results import (
    FaultEvent,
    FaultStatus,
    QueryImpact,
    QueryResult,
    Result,
    RunStatus,
    SutRecord,
    Verdict,
    WindowStats,
)
from crucible_dagster.results.report import html_report

EVIL = "<script>alert(1)</script>"


def _window(p99_ms: float | None, qps: float, errors: int = 0) -> WindowStats:
    count = int(qps * 10)
    return WindowStats(
        seconds=10, count=count, errors=errors, error_rate=errors / count if count else 0.0,
        qps=qps, p50_ms=p99_ms, p95_ms=p99_ms, p99_ms=p99_ms, max_ms=p99_ms,
    )  # fmt: skip


def _query(name: str) -> QueryResult:
    return QueryResult(name=name, count=100, errors=1, error_rate=0.01, qps=10.0, p50_ms=1.5,
                       p95_ms=2.5, p99_ms=3.25, max_ms=9.0)  # fmt: skip


def _result() -> Result:
    impact = [
        QueryImpact(query=EVIL, before=_window(3.0, 10.0), during=_window(250.0, 2.0, errors=7),
                    after=_window(3.1, 10.0), time_to_recover_s=4.0, recovered=True),
        QueryImpact(query="total", before=_window(3.0, 10.0), during=_window(None, 0.0),
                    after=None, recovered=None),
    ]  # fmt: skip
    fault = FaultEvent(
        name="kill <primary>", backend="local", fault_type="process_kill", target="pg & co",
        planned_inject_s=10.0, planned_recover_s=20.0, inject_s=10.2, recover_s=20.5,
        injected_at=datetime(2026, 12, 3, 12, 0, 10, tzinfo=UTC), status=FaultStatus.RECOVERED,
        error="stderr said <b>no</b>", impact=impact,
    )  # fmt: skip
    skipped = FaultEvent(
        name="late", backend="local", fault_type="process_kill", target="pg",
        planned_inject_s=50.0, planned_recover_s=60.0, status=FaultStatus.NOT_INJECTED,
    )  # fmt: skip
    return Result(
        run_id="demo_20261203-1200_0a1b2c3d", plan="demo", plan_source="plans/demo.yaml",
        plan_sha256="ab" * 32, plan_text="x", status=RunStatus.COMPLETED, verdict=Verdict.PASSED,
        sut=SutRecord(type="postgresql", host="127.0.0.1", port=5432, database="d", key="k"),
        concurrency=4, shards=1, warm_up_s=5.0, duration_s=60.0,
        queries=[_query(EVIL), _query("q2")], total=_query("total"), faults=[fault, skipped],
    )  # fmt: skip


class _Tables(HTMLParser):
    """Collects every table's rows as lists of cell texts, and every tag seen."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _parse(page: str) -> _Tables:
    parser = _Tables()
    parser.feed(page)
    return parser


def test_report_escapes_every_name() -> None:
    page = html_report(_result(), None)
    assert EVIL not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "kill &lt;primary&gt;" in page and "pg &amp; co" in page
    assert "<b>no</b>" not in page
    assert not [tag for tag, _ in _parse(page).tags if tag in ("script", "b")]


def test_report_has_query_fault_and_impact_tables() -> None:
    tables = _parse(html_report(_result(), None)).tables
    queries, faults, impact = tables

    assert queries[1] == [EVIL, "100", "1", "10.00", "1.50", "2.50", "3.25", "9.00"]
    assert queries[-1][0] == "total"
    assert faults[1][:9] == ["kill <primary>", "local", "process_kill", "pg & co", "10.0",
                             "20.0", "10.2", "20.5", "recovered"]  # fmt: skip
    assert faults[2][6:9] == ["–", "–", "not_injected"]
    # Header rows, then one row per query: p99 before/during/after, QPS, errors, recovery.
    assert impact[2] == [EVIL, "3.00", "250.00", "3.10", "10.0", "2.0", "10.0", "0", "7", "0",
                         "4.0"]  # fmt: skip
    assert impact[3] == ["total", "3.00", "–", "–", "10.0", "0.0", "–", "0", "0", "–", "–"]


def test_report_shows_run_identity_and_verdict() -> None:
    page = html_report(_result(), None)
    for text in ("demo_20261203-1200_0a1b2c3d", "postgresql 127.0.0.1:5432/d", "completed",
                 "passed", "plans/demo.yaml"):  # fmt: skip
        assert text in page


def test_report_embeds_the_chart_and_needs_nothing_else() -> None:
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><text>chart</text></svg>'
    parser = _parse(html_report(_result(), svg))

    [image] = [attrs for tag, attrs in parser.tags if tag == "img"]
    source = image["src"] or ""
    assert source.startswith("data:image/svg+xml;base64,")
    assert base64.b64decode(source.split(",", 1)[1]) == svg
    linked = [a for _, attrs in parser.tags for k, a in attrs.items() if k in ("href", "src")]
    assert all(re.match(r"data:", link or "") for link in linked)


def test_report_without_faults_has_no_fault_section() -> None:
    result = _result().model_copy(update={"faults": []})
    page = html_report(result, None)
    assert "Faults" not in page
    assert len(_parse(page).tables) == 1
