"""Crucible's PostgreSQL fixture loader against `psql \\copy`, TPC-H lineitem, one server.

Run: `.venv/bin/python tests/benchmarks/bench_fixture_load_vs_psql.py [--scale 1]
[--small-scale 0.1]`

Generates TPC-H with tpchgen-cli into a local storage at both scales, starts a private
PostgreSQL (trust auth on loopback) and, outside the timed part, exports lineitem at `--scale`
to CSV with pyarrow. Then, in one run against that server:
(a) the loader (`load_fixture_tables`, from LocalStorage, no primary key) in a subprocess, once
    at `--small-scale` and `--rounds` times at `--scale`, each child reporting its own peak RSS
    and the time of the load call alone (download from storage, COPY, ANALYZE);
(b) the server's own `psql` running `CREATE TABLE` (the same column types), `\\copy` of the CSV
    in the same transaction, then `ANALYZE`, timed around the psql process, `--rounds` times.
The two alternate (a b, b a, ...) with a CHECKPOINT before each; medians are reported.
Both tables are checked for the same row count and the same sums. The last lines are
`crucible_rows_per_s=... psql_rows_per_s=...`, `peak_rss_mb_sf<small>=... peak_rss_mb_sf<scale>=...`
and `ratio=<crucible rows/s / psql rows/s> loader_peak_rss_mb=...`. This is not a timed test: the
figures depend on the machine, so only the ratio measured in one run means anything.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from crucible_dagster.fixtures.postgresql import create_table_sql
from crucible_dagster.fixtures.tpch import generate_tpch
from crucible_dagster.local_postgres import LocalPostgres, start_local_postgres
from crucible_dagster.storage import LocalStorage

CHECK_SQL = "SELECT count(*), sum(l_extendedprice), sum(l_orderkey), max(l_shipdate) FROM {}"

_LOADER = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from pathlib import Path
    from crucible_dagster.fixtures.postgresql import FixtureTableLoad, load_fixture_tables
    from crucible_dagster.fixtures.refs import FixtureRef
    from crucible_dagster.storage import LocalStorage
    from crucible_dagster.suts.base import SutTarget, sut_identity

    root, scale, port, table = sys.argv[1:5]
    target = SutTarget(sut_identity("postgresql", "127.0.0.1", int(port), "postgres"), "postgres")
    loads = [FixtureTableLoad(FixtureRef("tpch", scale, "lineitem"), table)]
    started = time.perf_counter()
    reports = asyncio.run(
        load_fixture_tables(target, LocalStorage(Path(root)), loads, add_primary_keys=False)
    )
    seconds = time.perf_counter() - started
    # VmHWM, not ru_maxrss: Linux carries the parent's high-water mark over the exec, so
    # ru_maxrss would report the benchmark's own peak when it is larger.
    status = Path("/proc/self/status").read_text()
    peak = int(status.split("VmHWM:")[1].split()[0]) * 1024
    print(json.dumps({"rows": reports[0].rows, "seconds": seconds, "peak_rss": peak}))
    """
)


def crucible_load(storage: LocalStorage, scale: str, server: LocalPostgres, table: str) -> dict:
    """Rows, seconds and peak RSS (bytes) of one load, measured inside a fresh process."""
    args = [sys.executable, "-c", _LOADER, str(storage.root), scale, str(server.port), table]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the loader failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def export_csv(parquet_path: Path, csv_path: Path) -> None:
    """The same rows as CSV without a header, written batch by batch."""
    parquet = pq.ParquetFile(parquet_path)
    # tpchgen-cli writes string views, which pyarrow's CSV writer does not take.
    schema = pa.schema(
        pa.field(f.name, pa.string() if pa.types.is_string_view(f.type) else f.type, f.nullable)
        for f in parquet.schema_arrow
    )
    options = pa_csv.WriteOptions(include_header=False)
    with pa_csv.CSVWriter(csv_path, schema, write_options=options) as writer:
        for batch in parquet.iter_batches(batch_size=100_000):
            writer.write_batch(batch.cast(schema))


def psql(server: LocalPostgres, *args: str) -> str:
    command = [str(server.bin("psql")), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", server.host]
    command += ["-p", str(server.port), "-U", server.user, "-d", "postgres", *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"psql failed:\n{done.stderr[-3000:]}")
    return done.stdout


def psql_load(server: LocalPostgres, parquet_path: Path, csv_path: Path, table: str) -> float:
    """Seconds for psql to create the table, `\\copy` the CSV into it and analyse it."""
    create = create_table_sql(table, pq.ParquetFile(parquet_path).schema_arrow)
    script = csv_path.with_suffix(".sql")
    script.write_text(
        f"BEGIN;\n{create};\n\\copy {table} FROM '{csv_path}' WITH (FORMAT csv)\n"
        f"COMMIT;\nANALYZE {table};\n"
    )
    started = time.perf_counter()
    psql(server, "-f", str(script))
    return time.perf_counter() - started


def check(server: LocalPostgres, table: str) -> str:
    return psql(server, "-At", "-c", CHECK_SQL.format(table)).strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="1", help="TPC-H scale factor of the timed load")
    parser.add_argument(
        "--small-scale", default="0.1", help="a smaller scale whose loader peak RSS is compared"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="timed loads per side, in alternating order"
    )
    options = parser.parse_args()
    scale, small = options.scale, options.small_scale
    with tempfile.TemporaryDirectory(prefix="crucible-bench-") as tmp:
        workdir = Path(tmp)
        storage = LocalStorage(workdir / "store")
        manifest = generate_tpch(storage, scale)
        generate_tpch(storage, small)
        lineitem = manifest.tables["lineitem"]
        parquet_path = workdir / "lineitem.parquet"
        if len(lineitem.files) != 1:
            raise RuntimeError("expected lineitem in one Parquet file")
        storage.download_file(lineitem.files[0].key, parquet_path)
        csv_path = workdir / "lineitem.csv"
        export_csv(parquet_path, csv_path)
        print(f"lineitem sf{scale}: {lineitem.rows} rows, Parquet {lineitem.bytes / 1e6:.0f} MB, "
              f"CSV {csv_path.stat().st_size / 1e6:.0f} MB", flush=True)  # fmt: skip

        # Otherwise the first timed load shares the disk with writing back the files above.
        os.sync()

        server = start_local_postgres(workdir / "data")
        try:
            small_run = crucible_load(storage, small, server, "lineitem_small")
            crucible_seconds: list[float] = []
            psql_seconds: list[float] = []
            crucible_peaks: list[int] = []
            for number in range(options.rounds):
                # Alternating the order keeps WAL recycling and caches from favouring one side.
                steps = ["crucible", "psql"] if number % 2 == 0 else ["psql", "crucible"]
                for step in steps:
                    table = f"lineitem_{step}"
                    psql(server, "-c", f"DROP TABLE IF EXISTS {table}", "-c", "CHECKPOINT")
                    if step == "crucible":
                        run = crucible_load(storage, scale, server, table)
                        crucible_seconds.append(run["seconds"])
                        crucible_peaks.append(run["peak_rss"])
                        loaded_rows = run["rows"]
                    else:
                        psql_seconds.append(psql_load(server, parquet_path, csv_path, table))
                print(f"round {number + 1}: crucible {crucible_seconds[-1]:.2f} s, "
                      f"psql {psql_seconds[-1]:.2f} s", flush=True)  # fmt: skip
            crucible_check = check(server, "lineitem_crucible")
            psql_check = check(server, "lineitem_psql")
        finally:
            server.stop()

    if crucible_check != psql_check:
        raise RuntimeError(f"the tables differ: crucible {crucible_check}, psql {psql_check}")
    rows = int(crucible_check.split("|")[0])
    if rows != lineitem.rows or loaded_rows != rows:
        raise RuntimeError(f"loaded {rows} rows, the manifest says {lineitem.rows}")
    crucible_rate = rows / statistics.median(crucible_seconds)
    psql_rate = rows / statistics.median(psql_seconds)
    small_mb = small_run["peak_rss"] / 2**20
    large_mb = max(crucible_peaks) / 2**20
    print(f"check (count|sum(l_extendedprice)|sum(l_orderkey)|max(l_shipdate)): {psql_check}")
    print(f"median over {options.rounds} rounds: crucible_seconds="
          f"{statistics.median(crucible_seconds):.2f} psql_seconds="
          f"{statistics.median(psql_seconds):.2f}")  # fmt: skip
    print(f"crucible_rows_per_s={crucible_rate:.0f} psql_rows_per_s={psql_rate:.0f}")
    print(f"peak_rss_mb_sf{small}={small_mb:.0f} peak_rss_mb_sf{scale}={large_mb:.0f}")
    print(f"ratio={crucible_rate / psql_rate:.3f} loader_peak_rss_mb={large_mb:.0f}")


if __name__ == "__main__":
    main()
