#!/usr/bin/env python3
"""Small commits: many single-row INSERTs, then how fast a table reads before and after the
background compaction.

    cargo build --release -p tributary
    python3 bench/small_commits.py [--inserts 10000]

Prints the insert rate and the time of a full-table aggregate right after the inserts (one
file per INSERT, or fewer if a maintenance pass already ran) and after an explicit wait for
compaction; and, five times along the way, the server's memory: resident, and allocated as
jemalloc counts it (from /metrics), which should stay flat however many commits are made.
Asserts nothing about speed.
"""

import argparse
import os
import sys
import tempfile
import time
import urllib.request

import psycopg

from streaming import free_port
from tributary_server import DEFAULT_BINARY, memory_mib, start_server



def timed_read(conn, runs=5):
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        conn.execute("SELECT count(*), sum(n) FROM events").fetchone()
        best = min(best, time.perf_counter() - started)
    return best


def allocated_mib(http):
    with urllib.request.urlopen(f"http://{http}/metrics") as response:
        for line in response.read().decode().splitlines():
            if line.startswith("tributary_memory_allocated_bytes "):
                return float(line.split()[1]) / (1 << 20)
    return float("nan")


def data_files(data):
    count = 0
    for root, _, files in os.walk(data):
        if "_delta_log" in root:
            continue
        count += sum(1 for f in files if f.endswith(".parquet"))
    return count


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inserts", type=int, default=10_000)
    parser.add_argument("--interval", type=int, default=5, help="maintenance interval, seconds")
    parser.add_argument("--binary", default=DEFAULT_BINARY)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data:
        http = f"127.0.0.1:{free_port()}"
        proc, port = start_server(args.binary, data, "--maintenance-interval", str(args.interval),
                                  "--http-listen", http)
        try:
            conn = psycopg.connect(f"host=127.0.0.1 port={port} user=admin dbname=dev", autocommit=True)
            conn.execute("CREATE TABLE events (n INT, label VARCHAR(16))")
            started = time.perf_counter()
            for i in range(args.inserts):
                conn.execute(f"INSERT INTO events VALUES ({i}, 'e{i % 10}')")
                if (i + 1) % max(1, args.inserts // 5) == 0:
                    print(f"after {i + 1:>7} INSERTs: allocated {allocated_mib(http):7.1f} MiB, "
                          f"resident {memory_mib(proc.pid, 'VmRSS'):7.1f} MiB", flush=True)
            elapsed = time.perf_counter() - started
            print(f"{args.inserts} single-row INSERTs: {elapsed:.1f} s, "
                  f"{args.inserts / elapsed:.0f}/s, {1000 * elapsed / args.inserts:.2f} ms each")
            print(f"read right after:        {1000 * timed_read(conn):8.1f} ms   "
                  f"({data_files(data)} data files on disk)")
            # Wait for a maintenance pass to compact (and one more for vacuum to run).
            time.sleep(args.interval * 2 + 1)
            print(f"read after compaction:   {1000 * timed_read(conn):8.1f} ms   "
                  f"({data_files(data)} data files on disk; old ones go after the vacuum retention)")
            rows = conn.execute("SELECT count(*) FROM events").fetchone()[0]
            if rows != args.inserts:
                sys.exit(f"expected {args.inserts} rows, found {rows}")
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
