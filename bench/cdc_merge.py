#!/usr/bin/env python3
"""CDC merge benchmark: the seeds' delete-then-insert pattern on a large keyed table.

In one transaction, DELETE 100k keyed rows of a 10M-row table and INSERT 100k rows, the
way CDC mirroring applies a batch of changes. The same SQL runs on DuckDB over the same data
in the same run, for comparison. Reports the bytes each merge wrote under the data directory
and the server's peak memory. Also times a bulk load: the table is unloaded to Parquet and
loaded back with COPY (DuckDB: COPY TO and CREATE TABLE AS read_parquet). Prints figures;
asserts nothing about speed.

    cargo build --release -p tributary
    python3 bench/cdc_merge.py [--rows 10000000] [--changes 100000] [--runs 3]
"""

import argparse
import os
import sys
import tempfile
import time

import psycopg

from tributary_server import DEFAULT_BINARY, bytes_written, memory_mib, start_server, tree_bytes


SETUP = [
    # The table: id is the key; about 10M rows in a few large files.
    "CREATE TABLE cart AS SELECT CAST(value AS BIGINT) AS id, CAST(value % 50000 AS BIGINT) AS user_id, "
    "CAST((value % 10000) / 100.0 AS DECIMAL(6,2)) AS price, CAST(value % 7 AS INT) AS items, "
    "CAST('2024-01-01' AS VARCHAR(32)) AS updated FROM generate_series(1, {rows}) AS t(value)",
    # A batch of changes: every (rows/changes)-th key, updated.
    "CREATE TABLE cart_changes AS SELECT id, user_id, price + 1 AS price, items + 1 AS items, "
    "CAST('2024-06-01' AS VARCHAR(32)) AS updated FROM cart WHERE id % {stride} = 0",
]

MERGE = [
    "DELETE FROM cart WHERE id IN (SELECT id FROM cart_changes)",
    "INSERT INTO cart SELECT * FROM cart_changes",
]


def tributary_run(binary, rows, changes, runs):
    stride = rows // changes
    with tempfile.TemporaryDirectory() as data:
        proc, port = start_server(binary, data)
        try:
            conn = psycopg.connect(f"host=127.0.0.1 port={port} user=admin dbname=dev", autocommit=True)
            started = time.perf_counter()
            for sql in SETUP:
                conn.execute(sql.format(rows=rows, stride=stride))
            load = time.perf_counter() - started
            timings = []
            written = []
            table_bytes = sum(tree_bytes(data).values())
            setup_peak = memory_mib(proc.pid, "VmHWM")
            # A fresh server for the merges, so that their peak memory is theirs alone (the
            # allocator keeps what the setup used).
            conn.close()
            proc.terminate()
            proc.wait()
            proc, port = start_server(binary, data)
            conn = psycopg.connect(f"host=127.0.0.1 port={port} user=admin dbname=dev",
                                   autocommit=True)
            started_rss = memory_mib(proc.pid, "VmRSS")
            for _ in range(runs):
                before = tree_bytes(data)
                started = time.perf_counter()
                with conn.transaction():
                    for sql in MERGE:
                        conn.execute(sql)
                timings.append(time.perf_counter() - started)
                written.append(bytes_written(data, before))
            peak = memory_mib(proc.pid, "VmHWM")
            count = conn.execute("SELECT count(*), sum(items) FROM cart").fetchone()
            export = os.path.join(data, "export", "cart_")
            started = time.perf_counter()
            conn.execute(f"UNLOAD ('SELECT * FROM cart') TO 'file://{export}' FORMAT PARQUET")
            unload = time.perf_counter() - started
            conn.execute("CREATE TABLE cart_copy (LIKE cart)")
            started = time.perf_counter()
            conn.execute(f"COPY cart_copy FROM 'file://{export}' FORMAT AS PARQUET")
            copy = time.perf_counter() - started
            return (load, timings, count, (setup_peak, started_rss, peak), unload, copy,
                    table_bytes, written)
        finally:
            proc.terminate()
            proc.wait()


def duckdb_run(rows, changes, runs):
    import duckdb

    stride = rows // changes
    conn = duckdb.connect()
    started = time.perf_counter()
    conn.execute(
        "CREATE TABLE cart AS SELECT CAST(range AS BIGINT) AS id, CAST(range % 50000 AS BIGINT) AS user_id, "
        "CAST((range % 10000) / 100.0 AS DECIMAL(6,2)) AS price, CAST(range % 7 AS INT) AS items, "
        f"CAST('2024-01-01' AS VARCHAR(32)) AS updated FROM range(1, {rows} + 1)"
    )
    conn.execute(SETUP[1].format(stride=stride))
    load = time.perf_counter() - started
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        conn.execute("BEGIN")
        for sql in MERGE:
            conn.execute(sql)
        conn.execute("COMMIT")
        timings.append(time.perf_counter() - started)
    count = conn.execute("SELECT count(*), sum(items) FROM cart").fetchone()
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "cart.parquet")
        started = time.perf_counter()
        conn.execute(f"COPY cart TO '{path}' (FORMAT parquet)")
        unload = time.perf_counter() - started
        started = time.perf_counter()
        conn.execute(f"CREATE TABLE cart_copy AS SELECT * FROM read_parquet('{path}')")
        copy = time.perf_counter() - started
    return load, timings, count, unload, copy


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--binary", default=DEFAULT_BINARY)
    args = parser.parse_args()

    print(f"CDC merge: DELETE {args.changes} keyed rows + INSERT {args.changes} rows into a "
          f"{args.rows}-row table, one transaction, {args.runs} runs")
    load, timings, count, peak, unload, copy, table_bytes, written = tributary_run(
        args.binary, args.rows, args.changes, args.runs)
    print(f"tributary  setup {load:6.2f} s  merge " + "  ".join(f"{t:6.3f} s" for t in timings)
          + f"  (best {min(timings):.3f} s)  rows {count[0]}")
    setup_peak, started_rss, merge_peak = peak
    print(f"tributary  server peak RSS: setup {setup_peak:.0f} MiB; merges (a fresh server, "
          f"{started_rss:.0f} MiB at start) {merge_peak:.0f} MiB")
    print(f"tributary  data {table_bytes / 2**20:.1f} MiB after setup; each merge wrote "
          + "  ".join(f"{w / 2**20:.2f} MiB" for w in written))
    d_load, d_timings, d_count, d_unload, d_copy = duckdb_run(args.rows, args.changes, args.runs)
    print(f"duckdb     setup {d_load:6.2f} s  merge " + "  ".join(f"{t:6.3f} s" for t in d_timings)
          + f"  (best {min(d_timings):.3f} s)  rows {d_count[0]}")
    if count != d_count:
        sys.exit(f"results differ: tributary {count}, duckdb {d_count}")
    print(f"ratio (best merge): {min(timings) / min(d_timings):.1f}x DuckDB")
    print(f"parquet    tributary UNLOAD {unload:6.2f} s  COPY {copy:6.2f} s   "
          f"duckdb COPY TO {d_unload:6.2f} s  load {d_copy:6.2f} s")


if __name__ == "__main__":
    main()
