"""A result as asset metadata: floats per query so the UI plots them across runs."""

import base64

import dagster as dg

from crucible_dagster.results import FaultEvent, QueryImpact, QueryResult, Result

_PER_QUERY = (
    "p50_ms", "p95_ms", "p99_ms", "max_ms", "qps", "error_rate", "latency_p95_ms", "latency_p99_ms",
)  # fmt: skip


def result_metadata(
    result: Result,
    result_uri: str | None,
    chart_uri: str | None = None,
    report_uri: str | None = None,
    *,
    chart_png: bytes | None = None,
) -> dict[str, dg.MetadataValue]:
    """The result's metadata; with a chart and report stored beside it, links to them, and with
    `chart_png` (from `latency_chart_png`) the chart itself, which the UI shows inline."""
    metadata: dict[str, dg.MetadataValue] = {
        "run_id": dg.MetadataValue.text(result.run_id),
        "status": dg.MetadataValue.text(result.status.value),
        "verdict": dg.MetadataValue.text(result.verdict.value if result.verdict else "none"),
        "sut": dg.MetadataValue.text(result.sut.key),
        "plan_sha256": dg.MetadataValue.text(result.plan_sha256),
        "load_model": dg.MetadataValue.text(result.load_model),
        "query_choice": dg.MetadataValue.text(result.query_choice),
    }
    if result.seed is not None:
        # Text, not a number: a seed is an identity to copy into a plan, not a value to plot.
        metadata["seed"] = dg.MetadataValue.text(str(result.seed))
    if result_uri:
        metadata["result"] = dg.MetadataValue.path(result_uri)
    if result.failed_thresholds:
        metadata["failed_thresholds"] = dg.MetadataValue.text("; ".join(result.failed_thresholds))
    metadata["engine"] = dg.MetadataValue.text(result.engine)
    metadata["shards"] = dg.MetadataValue.text(f"{result.shards} ({result.scaling_mode})")
    if result.start_skew_s is not None:
        metadata["start_skew_ms"] = dg.MetadataValue.float(round(result.start_skew_s * 1000, 3))
    metadata["generator_bottleneck"] = dg.MetadataValue.text(result.generator_bottleneck or "none")
    for health in result.shard_health:
        prefix = f"generator/shard{health.shard}"
        metadata[f"{prefix}/cpu_percent"] = dg.MetadataValue.float(health.cpu_percent)
        metadata[f"{prefix}/loop_lag_max_ms"] = dg.MetadataValue.float(health.loop_lag_max_ms)
    if result.abort_reason:
        metadata["abort_reason"] = dg.MetadataValue.text(result.abort_reason)
    if result.error:
        metadata["error"] = dg.MetadataValue.text(result.error)
    for query in [*result.queries, *([result.total] if result.total else [])]:
        for field in _PER_QUERY:
            value = getattr(query, field)
            if value is not None:
                metadata[f"{query.name}/{field}"] = dg.MetadataValue.float(float(value))
        metadata[f"{query.name}/count"] = dg.MetadataValue.float(float(query.count))
        metadata[f"{query.name}/errors"] = dg.MetadataValue.float(float(query.errors))
        if result.load_model != "closed":
            metadata[f"{query.name}/dropped"] = dg.MetadataValue.float(float(query.dropped))
    if result.queries:
        metadata["queries"] = dg.MetadataValue.md(markdown_table(result.queries, result.total))
    if result.faults:
        metadata["faults"] = dg.MetadataValue.md(faults_table(result.faults))
        metadata.update(_fault_floats(result.faults))
    if chart_uri:
        metadata["chart"] = _link(chart_uri)
    if report_uri:
        metadata["report"] = _link(report_uri)
    if chart_png:
        encoded = base64.b64encode(chart_png).decode("ascii")
        # The UI renders markdown images from data URIs (its sanitiser allows base64 images).
        metadata["latency_chart"] = dg.MetadataValue.md(
            f"![latency per second with the faults](data:image/png;base64,{encoded})"
        )
    return metadata


def faults_table(faults: list[FaultEvent]) -> str:
    """The faults as markdown: planned against actual seconds from the start of the load."""
    header = "| fault | type | status | planned s | actual s | total p99 recovered after s |"
    lines = [header, "|" + "---|" * 6]
    for fault in faults:
        planned = f"{fault.planned_inject_s:.1f} → {fault.planned_recover_s:.1f}"
        actual = f"{_s(fault.inject_s)} → {_s(fault.recover_s)}"
        cells = [fault.name, fault.fault_type, fault.status.value, planned, actual]
        cells.append(_recovery(_total_impact(fault)))
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def _fault_floats(faults: list[FaultEvent]) -> dict[str, dg.MetadataValue]:
    # A few numbers per fault: all of total's, and only the p99 during the fault per query, so a
    # plan with many queries and faults does not bury the rest of the metadata.
    floats: dict[str, float | None] = {}
    for fault in faults:
        for impact in fault.impact:
            prefix = f"chaos/{fault.name}/{impact.query}"
            floats[f"{prefix}/during_p99_ms"] = impact.during.p99_ms if impact.during else None
            if impact.query != "total":
                continue
            floats[f"{prefix}/before_p99_ms"] = impact.before.p99_ms if impact.before else None
            floats[f"{prefix}/after_p99_ms"] = impact.after.p99_ms if impact.after else None
            rate = impact.during.error_rate if impact.during else None
            floats[f"{prefix}/during_error_rate"] = rate
            floats[f"{prefix}/time_to_recover_s"] = impact.time_to_recover_s
    return {k: dg.MetadataValue.float(float(v)) for k, v in floats.items() if v is not None}


def _total_impact(fault: FaultEvent) -> QueryImpact | None:
    return next((i for i in fault.impact if i.query == "total"), None)


def _recovery(impact: QueryImpact | None) -> str:
    if impact is None or impact.recovered is None:
        return "–"
    if not impact.recovered or impact.time_to_recover_s is None:
        return "not recovered"
    return f"{impact.time_to_recover_s:.1f}"


def _link(uri: str) -> dg.MetadataValue:
    if uri.startswith(("http://", "https://")):
        return dg.MetadataValue.url(uri)
    return dg.MetadataValue.path(uri)


def _cell(text: str) -> str:
    # A pipe would end the cell and a newline the row.
    return text.replace("|", "\\|").replace("\n", " ")


def _s(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def markdown_table(queries: list[QueryResult], total: QueryResult | None) -> str:
    header = "| query | count | errors | QPS | p50 ms | p95 ms | p99 ms | max ms |"
    lines = [header, "|" + "---|" * 8]
    for q in [*queries, *([total] if total else [])]:
        cells = [q.name, str(q.count), str(q.errors), f"{q.qps:.2f}"]
        cells += [_ms(q.p50_ms), _ms(q.p95_ms), _ms(q.p99_ms), _ms(q.max_ms)]
        if q.name == "total":
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"
