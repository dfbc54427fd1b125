#!/usr/bin/env python3
"""COPY load benchmark: a gzip'd CSV file loaded from a file and from the client (COPY FROM
STDIN), under a memory limit, beside DuckDB loading the same file in the same run.

    cargo build --release -p tributary
    python3 bench/copy_load.py [--rows 20000000] [--memory-limit 1GiB] [--input FILE]

The file is cart-like rows (id, user, sku, quantity, price, timestamp) of about 70 bytes,
written once, gzip'd, into a temporary directory (needs about 1.5 GB per 100M rows of free
disk, plus the tables). Reports rows/s, decompressed MB/s and the server's peak RSS, which a
streaming load keeps near its idle size whatever the input's size. Asserts nothing about
speed.
"""

import argparse
import gzip
import os
import shutil
import sys
import tempfile
import time

import psycopg

from tributary_server import DEFAULT_BINARY, memory_mib, start_server

COLUMNS = ("id BIGINT, user_id BIGINT, sku VARCHAR(16), quantity INT, price DECIMAL(10,2), "
           "updated TIMESTAMP")


def write_file(path, rows):
    """Writes `rows` CSV rows gzip'd; returns the decompressed size in bytes."""
    size = 0
    with gzip.open(path, "wb", compresslevel=1) as out:
        step = 100_000
        for start in range(1, rows + 1, step):
            lines = "".join(
                f"{i},{i % 500_000},SKU-{i % 9973:06d},{i % 7 + 1},{(i % 10_000) / 100:.2f},"
                f"2024-01-{i % 28 + 1:02d} 12:{i % 60:02d}:00\n"
                for i in range(start, min(start + step, rows + 1)))
            data = lines.encode()
            size += len(data)
            out.write(data)
    return size


def tributary_run(binary, path, rows, memory_limit):
    data = tempfile.mkdtemp(prefix="tributary-copy-")
    proc, port = start_server(binary, data, "--memory-limit", memory_limit, "--no-http")
    try:
        idle = memory_mib(proc.pid, "VmHWM")
        with psycopg.connect(f"host=127.0.0.1 port={port} user=admin dbname=dev",
                             autocommit=True) as conn:
            conn.execute(f"CREATE TABLE cart_file ({COLUMNS})")
            conn.execute(f"CREATE TABLE cart_stdin ({COLUMNS})")
            started = time.perf_counter()
            conn.execute(f"COPY cart_file FROM 'file://{path}' CSV GZIP")
            from_file = time.perf_counter() - started
            after_file = memory_mib(proc.pid, "VmHWM")
            started = time.perf_counter()
            with conn.cursor().copy("COPY cart_stdin FROM STDIN WITH (FORMAT csv)") as copy:
                with gzip.open(path, "rb") as source:
                    while block := source.read(1 << 20):
                        copy.write(block)
            from_stdin = time.perf_counter() - started
            peak = memory_mib(proc.pid, "VmHWM")
            counts = [conn.execute(f"SELECT count(*), sum(id) FROM {t}").fetchone()
                      for t in ("cart_file", "cart_stdin")]
        if any(count != (rows, rows * (rows + 1) // 2) for count in counts):
            sys.exit(f"wrong load: {counts}")
        return from_file, from_stdin, idle, after_file, peak
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(data, ignore_errors=True)


def duckdb_run(path, rows):
    import duckdb
    conn = duckdb.connect()
    conn.execute(f"CREATE TABLE cart ({COLUMNS})")
    started = time.perf_counter()
    conn.execute(f"COPY cart FROM '{path}' (FORMAT csv, HEADER false)")
    elapsed = time.perf_counter() - started
    count = conn.execute("SELECT count(*) FROM cart").fetchone()[0]
    if count != rows:
        sys.exit(f"duckdb loaded {count} rows")
    return elapsed, memory_mib(os.getpid(), "VmHWM")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--memory-limit", default="1GiB")
    parser.add_argument("--binary", default=DEFAULT_BINARY)
    parser.add_argument("--input", metavar="FILE",
                        help="a file of --rows rows this script wrote before (it is written "
                             "there and kept when missing), instead of a temporary one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="copy-load-") as scratch:
        needed = args.rows * 15
        if shutil.disk_usage(scratch).free < needed * 4:
            sys.exit(f"needs about {needed * 4 / 1e9:.1f} GB free in {scratch}")
        path = args.input or os.path.join(scratch, "cart.csv.gz")
        started = time.perf_counter()
        if os.path.exists(path):
            with gzip.open(path, "rb") as source:
                size = sum(len(block) for block in iter(lambda: source.read(1 << 24), b""))
        else:
            size = write_file(path, args.rows)
        print(f"data: {args.rows:,} rows, {size / 1e6:,.0f} MB of CSV, "
              f"{os.path.getsize(path) / 1e6:,.0f} MB gzip'd, ready in "
              f"{time.perf_counter() - started:.0f} s")
        from_file, from_stdin, idle, after_file, peak = tributary_run(
            args.binary, path, args.rows, args.memory_limit)
        for name, elapsed in (("COPY from file", from_file), ("COPY FROM STDIN", from_stdin)):
            print(f"tributary {name:<16} {elapsed:7.1f} s  {args.rows / elapsed:12,.0f} rows/s"
                  f"  {size / elapsed / 1e6:6.1f} MB/s")
        print(f"tributary peak RSS: {idle:.0f} MiB idle, {after_file:.0f} MiB after the file, "
              f"{peak:.0f} MiB after STDIN (--memory-limit {args.memory_limit})")
        d_elapsed, d_peak = duckdb_run(path, args.rows)
        print(f"duckdb    COPY from file   {d_elapsed:7.1f} s  {args.rows / d_elapsed:12,.0f} rows/s"
              f"  {size / d_elapsed / 1e6:6.1f} MB/s  (peak RSS of this process {d_peak:.0f} MiB,"
              f" table in memory)")


if __name__ == "__main__":
    main()
