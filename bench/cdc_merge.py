#!/usr/bin/env python3
"""CDC merge benchmark: seed 000's update sequence on a large keyed table.

In one transaction, the seed's delete-then-insert applies a batch of changes (60% updates,
20% inserts of new keys, 20% deletes; 100k by default) to a cart table of --rows rows:
DELETE every changed key, then INSERT the rows of the updates and inserts. The same SQL runs
on DuckDB (a database file, the same memory limit) over the same data in the same run, and
both tables must agree. Reports the load, each merge, the bytes each merge wrote, the bytes
on disk and both engines' peak memory. Also times a bulk load: the table is unloaded to
Parquet and loaded back with COPY (DuckDB: COPY TO and CREATE TABLE AS read_parquet). Prints
figures; asserts nothing about speed.

    cargo build --release -p tributary
    python3 bench/cdc_merge.py [--rows 10000000] [--changes 100000] [--runs 3] [--memory-limit 8GiB]

--rows 100000000 is the routine scale run; --rows 1280000000 is the seed's own scale, which
needs about 16 GB of free disk in the temporary directory with --skip-parquet, 40 GB without
(checked before it starts).
"""

import argparse
import os
import shutil
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
    # A batch of changes from every (rows/changes)-th key: of each five, three updates, a
    # delete, and an insert of a new key past the table's last.
    "CREATE TABLE cart_changes AS SELECT "
    "CASE WHEN CAST(id / {stride} AS BIGINT) % 5 = 4 THEN {rows} + CAST(id / {stride} AS BIGINT) "
    "ELSE id END AS id, user_id, price + 1 AS price, items + 1 AS items, "
    "CAST('2024-06-01' AS VARCHAR(32)) AS updated, "
    "CASE CAST(id / {stride} AS BIGINT) % 5 WHEN 3 THEN 'D' WHEN 4 THEN 'I' ELSE 'U' END AS op "
    "FROM cart WHERE id % {stride} = 0",
]

# The seed's sequence: delete what was updated or deleted, insert what was updated or inserted.
MERGE = [
    "DELETE FROM cart WHERE id IN (SELECT id FROM cart_changes)",
    "INSERT INTO cart SELECT id, user_id, price, items, updated FROM cart_changes WHERE op <> 'D'",
]

# Bytes on disk per row, with room to spare: measured at 100M and 1.28B rows, Tributary's
# table takes about 4.5 and DuckDB's about 1.1; the Parquet export and its copy take more.
DISK_BYTES_PER_ROW = 8
PARQUET_BYTES_PER_ROW = 20


def tributary_run(binary, rows, changes, runs, memory_limit, parquet=True):
    stride = rows // changes
    with tempfile.TemporaryDirectory() as data:
        proc, port = start_server(binary, data, "--memory-limit", memory_limit)
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
            proc, port = start_server(binary, data, "--memory-limit", memory_limit)
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
            count = conn.execute("SELECT count(*), sum(id), sum(items) FROM cart").fetchone()
            table_bytes_after = sum(tree_bytes(data).values())
            if not parquet:
                return (load, timings, count, (setup_peak, started_rss, peak), None, None,
                        (table_bytes, table_bytes_after), written)
            export = os.path.join(data, "export", "cart_")
            started = time.perf_counter()
            conn.execute(f"UNLOAD ('SELECT * FROM cart') TO 'file://{export}' FORMAT PARQUET")
            unload = time.perf_counter() - started
            conn.execute("CREATE TABLE cart_copy (LIKE cart)")
            started = time.perf_counter()
            conn.execute(f"COPY cart_copy FROM 'file://{export}' FORMAT AS PARQUET")
            copy = time.perf_counter() - started
            return (load, timings, count, (setup_peak, started_rss, peak), unload, copy,
                    (table_bytes, table_bytes_after), written)
        finally:
            proc.terminate()
            proc.wait()


def duckdb_run(rows, changes, runs, memory_limit, parquet=True):
    import duckdb

    stride = rows // changes
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "cart.duckdb")
        conn = duckdb.connect(path)
        conn.execute(f"SET memory_limit = '{memory_limit.replace('i', '')}'")
        started = time.perf_counter()
        conn.execute(
            "CREATE TABLE cart AS SELECT CAST(range AS BIGINT) AS id, CAST(range % 50000 AS BIGINT) AS user_id, "
            "CAST((range % 10000) / 100.0 AS DECIMAL(6,2)) AS price, CAST(range % 7 AS INT) AS items, "
            f"CAST('2024-01-01' AS VARCHAR(32)) AS updated FROM range(1, {rows} + 1)"
        )
        conn.execute(SETUP[1].format(rows=rows, stride=stride))
        conn.execute("CHECKPOINT")
        load = time.perf_counter() - started
        timings = []
        for _ in range(runs):
            started = time.perf_counter()
            conn.execute("BEGIN")
            for sql in MERGE:
                conn.execute(sql)
            conn.execute("COMMIT")
            timings.append(time.perf_counter() - started)
        count = conn.execute("SELECT count(*), sum(id), sum(items) FROM cart").fetchone()
        conn.execute("CHECKPOINT")
        disk = os.path.getsize(path)
        if not parquet:
            conn.close()
            return load, timings, count, None, None, disk, memory_mib(os.getpid(), "VmHWM")
        export = os.path.join(scratch, "cart.parquet")
        started = time.perf_counter()
        conn.execute(f"COPY cart TO '{export}' (FORMAT parquet)")
        unload = time.perf_counter() - started
        started = time.perf_counter()
        conn.execute(f"CREATE TABLE cart_copy AS SELECT * FROM read_parquet('{export}')")
        copy = time.perf_counter() - started
        conn.close()
    return load, timings, count, unload, copy, disk, memory_mib(os.getpid(), "VmHWM")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--binary", default=DEFAULT_BINARY)
    parser.add_argument("--memory-limit", default="8GiB",
                        help="Tributary's --memory-limit, and DuckDB's memory_limit")
    parser.add_argument("--skip-parquet", action="store_true",
                        help="leave out the UNLOAD / COPY round trip (time and disk)")
    args = parser.parse_args()
    parquet = not args.skip_parquet
    needed = args.rows * (DISK_BYTES_PER_ROW + (PARQUET_BYTES_PER_ROW if parquet else 0))
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if free < needed:
        sys.exit(f"{args.rows:,} rows need about {needed / 1e9:.0f} GB free in "
                 f"{tempfile.gettempdir()}; {free / 1e9:.0f} GB are")

    print(f"CDC merge: {args.changes:,} changes (60% updates, 20% inserts, 20% deletes) into a "
          f"{args.rows:,}-row table, DELETE + INSERT in one transaction, {args.runs} runs, "
          f"memory limit {args.memory_limit}")
    load, timings, count, peak, unload, copy, table_bytes, written = tributary_run(
        args.binary, args.rows, args.changes, args.runs, args.memory_limit, parquet)
    print(f"tributary  load {load:7.1f} s  merge " + "  ".join(f"{t:6.3f} s" for t in timings)
          + f"  (best {min(timings):.3f} s)  rows {count[0]:,}")
    setup_peak, started_rss, merge_peak = peak
    print(f"tributary  server peak RSS: load {setup_peak:.0f} MiB; merges (a fresh server, "
          f"{started_rss:.0f} MiB at start) {merge_peak:.0f} MiB")
    print(f"tributary  on disk {table_bytes[0] / 2**20:,.0f} MiB after the load, "
          f"{table_bytes[1] / 2**20:,.0f} MiB after the merges; each merge wrote "
          + "  ".join(f"{w / 2**20:.2f} MiB" for w in written))
    d_load, d_timings, d_count, d_unload, d_copy, d_disk, d_peak = duckdb_run(
        args.rows, args.changes, args.runs, args.memory_limit, parquet)
    print(f"duckdb     load {d_load:7.1f} s  merge " + "  ".join(f"{t:6.3f} s" for t in d_timings)
          + f"  (best {min(d_timings):.3f} s)  rows {d_count[0]:,}")
    print(f"duckdb     on disk {d_disk / 2**20:,.0f} MiB after the merges; peak RSS of this "
          f"process {d_peak:.0f} MiB")
    if tuple(count) != tuple(d_count):
        sys.exit(f"results differ: tributary {count}, duckdb {d_count}")
    print(f"ratio (best merge): {min(timings) / min(d_timings):.1f}x DuckDB; "
          f"load {load / d_load:.1f}x")
    if parquet:
        print(f"parquet    tributary UNLOAD {unload:6.2f} s  COPY {copy:6.2f} s   "
              f"duckdb COPY TO {d_unload:6.2f} s  load {d_copy:6.2f} s")


if __name__ == "__main__":
    main()
