"""`SELECT 1` on PostgreSQL directly and through the idle fault proxy, in one run.

Run: `.venv/bin/python tests/benchmarks/bench_chaos_proxy.py [--seconds 5] [--rounds 3]`

Starts a private PostgreSQL (trust auth on loopback) and a FaultProxy in front of it with no
impairment, then measures each round, alternating which goes first, from a child process (as a
load shard would be, so the proxy's thread does not share its interpreter with the clients;
`--same-process` measures from this one instead):
(a) throughput: 8 coroutines on uvloop, one asyncpg connection each, a prepared `SELECT 1` in a
    loop for `--seconds`, directly and through the proxy;
(b) latency: one connection, `SELECT 1` one after another, median and p99 per query.
The last lines are `qps_ratio=<through proxy / direct>` and `latency_ratio=<median through
proxy / median direct>` (medians over the rounds). Not a timed test: the figures depend on the
machine (the proxy's loop shares its cores with the server and the clients), so only the ratios
measured in the same run mean anything.
"""

import argparse
import asyncio
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg
import uvloop

from crucible_dagster.chaos.proxy import FaultProxy
from crucible_dagster.local_postgres import start_local_postgres

CLIENTS = 8
SQL = "SELECT 1"
LATENCY_QUERIES = 5000


async def _throughput(host: str, port: int, user: str, seconds: float) -> float:
    conns = [await asyncpg.connect(host=host, port=port, user=user) for _ in range(CLIENTS)]
    running = True
    finished = 0

    async def client(conn: asyncpg.Connection) -> None:
        nonlocal finished
        statement = await conn.prepare(SQL)
        while running:
            await statement.fetchval()
            finished += 1

    tasks = [asyncio.create_task(client(conn)) for conn in conns]
    await asyncio.sleep(0.5)  # let every connection prepare before counting
    counted_from, started = finished, time.perf_counter()
    await asyncio.sleep(seconds)
    qps = (finished - counted_from) / (time.perf_counter() - started)
    running = False
    await asyncio.gather(*tasks)
    for conn in conns:
        await conn.close()
    return qps


async def _latency(host: str, port: int, user: str) -> tuple[float, float]:
    """Median and p99 in ms of one connection's `SELECT 1`, one after another."""
    conn = await asyncpg.connect(host=host, port=port, user=user)
    statement = await conn.prepare(SQL)
    for _ in range(200):
        await statement.fetchval()
    times_ms = []
    for _ in range(LATENCY_QUERIES):
        started = time.perf_counter()
        await statement.fetchval()
        times_ms.append((time.perf_counter() - started) * 1000)
    await conn.close()
    times_ms.sort()
    return statistics.median(times_ms), times_ms[int(len(times_ms) * 0.99)]


def measure(host: str, port: int, user: str, seconds: float) -> dict[str, float]:
    qps = uvloop.run(_throughput(host, port, user, seconds))
    median_ms, p99_ms = uvloop.run(_latency(host, port, user))
    return {"qps": qps, "median_ms": median_ms, "p99_ms": p99_ms}


def measure_apart(host: str, port: int, user: str, seconds: float) -> dict[str, float]:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure, (host, port, user, seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--same-process", action="store_true")
    options = parser.parse_args()
    run = measure if options.same_process else measure_apart
    figures: dict[str, dict[str, list[float]]] = {
        "direct": {"qps": [], "median_ms": [], "p99_ms": []},
        "proxy": {"qps": [], "median_ms": [], "p99_ms": []},
    }
    with tempfile.TemporaryDirectory(prefix="crucible-bench-") as tmp:
        server = start_local_postgres(Path(tmp) / "data")
        try:
            with FaultProxy(server.host, server.port) as proxy:
                proxy_host, proxy_port = proxy.address
                ways = {
                    "direct": (server.host, server.port),
                    "proxy": (proxy_host, proxy_port),
                }
                for round_number in range(1, options.rounds + 1):
                    order = ["direct", "proxy"] if round_number % 2 else ["proxy", "direct"]
                    for way in order:
                        host, port = ways[way]
                        for key, value in run(host, port, server.user, options.seconds).items():
                            figures[way][key].append(value)
                    line = "  ".join(
                        f"{way}_{key}={values[-1]:.3f}"
                        for way, keys in figures.items()
                        for key, values in keys.items()
                    )
                    print(f"round {round_number}: {line}", flush=True)
                print(f"proxy_bytes_up={proxy.bytes_up} proxy_bytes_down={proxy.bytes_down}")
        finally:
            server.stop()
    medians = {
        way: {key: statistics.median(values) for key, values in keys.items()}
        for way, keys in figures.items()
    }
    for way, keys in medians.items():
        print(
            f"{way}: qps={keys['qps']:.0f} median_ms={keys['median_ms']:.3f} "
            f"p99_ms={keys['p99_ms']:.3f}"
        )
    direct, proxied = medians["direct"], medians["proxy"]
    print(f"added_median_ms={proxied['median_ms'] - direct['median_ms']:.3f}")
    print(f"qps_ratio={proxied['qps'] / direct['qps']:.3f}")
    print(f"latency_ratio={proxied['median_ms'] / direct['median_ms']:.3f}")


if __name__ == "__main__":
    main()
