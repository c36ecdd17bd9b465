"""A result as asset metadata: floats per query so the UI plots them across runs."""

import dagster as dg

from crucible_dagster.results import QueryResult, Result

_PER_QUERY = (
    "p50_ms", "p95_ms", "p99_ms", "max_ms", "qps", "error_rate", "latency_p95_ms", "latency_p99_ms",
)  # fmt: skip


def result_metadata(result: Result, result_uri: str | None) -> dict[str, dg.MetadataValue]:
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
    return metadata


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
