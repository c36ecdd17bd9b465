"""One run as a self-contained HTML page: what ran, its numbers, its faults and their impact.

The page needs nothing but itself (styles inline, the chart as a data URI), so it can be stored
beside the result and opened from anywhere. Jinja2 escapes every value written into it.
"""

import base64

import jinja2

from crucible_dagster.results.model import QueryImpact, Result, WindowStats

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Crucible run {{ r.run_id }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child, td.text { text-align: left; }
thead th { background: #f2f2f2; }
tr.total td { font-weight: bold; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dt { font-weight: bold; }
.passed { color: #2ca02c; } .failed, .aborted { color: #d62728; }
img.chart { max-width: 100%; }
</style>
</head>
<body>
<h1>{{ r.plan }} <small>{{ r.run_id }}</small></h1>
<dl>
<dt>SUT</dt><dd>{{ r.sut.type }} {{ r.sut.host }}:{{ r.sut.port }}/{{ r.sut.database }}</dd>
<dt>Status</dt><dd>{{ r.status.value }}</dd>
<dt>Verdict</dt><dd class="{{ verdict }}">{{ verdict }}</dd>
{% if r.abort_reason %}<dt>Abort reason</dt><dd>{{ r.abort_reason }}</dd>{% endif %}
{% if r.error %}<dt>Error</dt><dd>{{ r.error }}</dd>{% endif %}
{% if r.failed_thresholds %}
<dt>Failed thresholds</dt><dd>{{ r.failed_thresholds | join("; ") }}</dd>
{% endif %}
<dt>Started</dt><dd>{{ r.started_at or "–" }}</dd>
<dt>Measured</dt><dd>{{ seconds(r.duration_s) }} s after a warm-up of {{ r.warm_up_s }} s</dd>
<dt>Load</dt><dd>{{ r.load_model }}, concurrency {{ r.concurrency }},
{{ r.shards }} shard(s) ({{ r.scaling_mode }}), engine {{ r.engine }}</dd>
<dt>Plan</dt><dd>{{ r.plan_source }} (sha256 {{ r.plan_sha256[:12] }})</dd>
</dl>

{% if chart_uri %}
<h2>Latency</h2>
<img class="chart" alt="latency per second with the faults" src="{{ chart_uri }}">
{% endif %}

{% if queries %}
<h2>Queries</h2>
<table>
<thead><tr><th>query</th><th>count</th><th>errors</th><th>QPS</th><th>p50 ms</th>
<th>p95 ms</th><th>p99 ms</th><th>max ms</th></tr></thead>
<tbody>
{% for q in queries %}
<tr{% if q.name == "total" %} class="total"{% endif %}><td>{{ q.name }}</td><td>{{ q.count }}</td>
<td>{{ q.errors }}</td><td>{{ "%.2f" | format(q.qps) }}</td><td>{{ ms(q.p50_ms) }}</td>
<td>{{ ms(q.p95_ms) }}</td><td>{{ ms(q.p99_ms) }}</td><td>{{ ms(q.max_ms) }}</td></tr>
{% endfor %}
</tbody>
</table>
{% endif %}

{% if r.thresholds %}
<h2>Thresholds</h2>
<table>
<thead><tr><th>target</th><th>threshold</th><th>observed</th><th>passed</th></tr></thead>
<tbody>
{% for t in r.thresholds %}
<tr><td>{{ t.target }}</td><td class="text">{{ t.threshold }}</td>
<td>{{ "–" if t.observed is none else t.observed }}</td>
<td class="{{ 'passed' if t.passed else 'failed' }}">{{ "yes" if t.passed else "no" }}</td></tr>
{% endfor %}
</tbody>
</table>
{% endif %}

{% if r.faults %}
<h2>Faults</h2>
<p>Times in seconds from the start of the load (the warm-up included).</p>
<table>
<thead><tr><th>name</th><th>backend</th><th>type</th><th>target</th><th>planned inject</th>
<th>planned recover</th><th>injected</th><th>recovered</th><th>status</th><th>error</th>
</tr></thead>
<tbody>
{% for f in r.faults %}
<tr><td>{{ f.name }}</td><td class="text">{{ f.backend }}</td>
<td class="text">{{ f.fault_type }}</td><td class="text">{{ f.target }}</td>
<td>{{ seconds(f.planned_inject_s) }}</td>
<td>{{ seconds(f.planned_recover_s) }}</td><td>{{ seconds(f.inject_s) }}</td>
<td>{{ seconds(f.recover_s) }}</td><td class="text">{{ f.status.value }}</td>
<td class="text">{{ f.error or "" }}</td></tr>
{% endfor %}
</tbody>
</table>
{% for f in r.faults if f.impact %}
<h3>Impact of {{ f.name }}</h3>
<table>
<thead>
<tr><th rowspan="2">query</th><th colspan="3">p99 ms</th><th colspan="3">QPS</th>
<th colspan="3">errors</th><th rowspan="2">time to recover s</th></tr>
<tr><th>before</th><th>during</th><th>after</th><th>before</th><th>during</th><th>after</th>
<th>before</th><th>during</th><th>after</th></tr>
</thead>
<tbody>
{% for i in f.impact %}
<tr{% if i.query == "total" %} class="total"{% endif %}><td>{{ i.query }}</td>
{% for w in (i.before, i.during, i.after) %}<td>{{ ms(w.p99_ms) if w else "–" }}</td>{% endfor %}
{% for w in (i.before, i.during, i.after) %}<td>{{ qps(w) }}</td>{% endfor %}
{% for w in (i.before, i.during, i.after) %}<td>{{ w.errors if w else "–" }}</td>{% endfor %}
<td>{{ recovery(i) }}</td></tr>
{% endfor %}
</tbody>
</table>
{% endfor %}
{% endif %}
</body>
</html>
"""

_ENVIRONMENT = jinja2.Environment(
    autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
)
_PAGE = _ENVIRONMENT.from_string(_TEMPLATE)


def html_report(result: Result, chart_svg: bytes | None) -> str:
    """The run as one HTML page; `chart_svg` (from `latency_chart`) is embedded when given."""
    chart_uri = None
    if chart_svg:
        # As an <img> source the SVG cannot run scripts or restyle the page around it.
        chart_uri = "data:image/svg+xml;base64," + base64.b64encode(chart_svg).decode("ascii")
    return _PAGE.render(
        r=result,
        verdict=result.verdict.value if result.verdict else "none",
        queries=[*result.queries, *([result.total] if result.total else [])],
        chart_uri=chart_uri,
        ms=_ms,
        seconds=_seconds,
        qps=_qps,
        recovery=_recovery,
    )


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _qps(window: WindowStats | None) -> str:
    return "–" if window is None else f"{window.qps:.1f}"


def _recovery(impact: QueryImpact) -> str:
    if impact.recovered is None:
        return "–"
    if not impact.recovered or impact.time_to_recover_s is None:
        return "not recovered"
    return f"{impact.time_to_recover_s:.1f}"
