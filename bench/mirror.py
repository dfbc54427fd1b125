#!/usr/bin/env python3
"""Mirror table benchmark: apply a batch of CDC changes to a large mirror table.

A mirror table (`CREATE MIRROR TABLE ... FORMAT OPERATION COLUMN op ORDER BY seq`) is loaded
with 10M rows (COPY of insert records, then VACUUM folds them into its base), then 100k
changes (60% updates, 20% inserts, 20% deletes, one per key) are applied with COPY, which runs
the same decode-and-apply path as a stream refresh. Then the table is read whole (the reader
merges the stored changes with the base) and folded again. DuckDB runs the seeds' delete +
insert SQL on the same rows and changes in the same run, and both results are compared.
Prints figures; asserts nothing about speed.

    cargo build --release -p tributary
    python3 bench/mirror.py [--rows 10000000] [--changes 100000]
"""

import argparse
import os
import random
import tempfile
import time

import psycopg

from tributary_server import DEFAULT_BINARY, cpu_seconds, memory_mib, start_server

FILES = 10


def base_line(i):
    return (f'{{"op":"I","seq":{i},"id":{i},"user_id":{i % 50000},'
            f'"price":"{(i % 10000) // 100}.{i % 100:02d}","items":{i % 7}}}\n')


def write_base(directory, rows):
    os.makedirs(directory)
    per_file = (rows + FILES - 1) // FILES
    for f in range(FILES):
        start = 1 + f * per_file
        end = min(rows, start + per_file - 1)
        with open(os.path.join(directory, f"part-{f:02d}.json"), "w") as out:
            for chunk in range(start, end + 1, 100_000):
                out.write("".join(base_line(i) for i in range(chunk, min(end, chunk + 99_999) + 1)))


def write_changes(path, rows, changes):
    """60% updates and 20% deletes of distinct existing keys, 20% inserts of new keys."""
    rng = random.Random(42)
    existing = rng.sample(range(1, rows + 1), changes * 8 // 10)
    updates, deletes = existing[: changes * 6 // 10], existing[changes * 6 // 10:]
    inserts = range(rows + 1, rows + 1 + changes - len(existing))
    records = ([("U", k) for k in updates] + [("D", k) for k in deletes]
               + [("I", k) for k in inserts])
    rng.shuffle(records)
    with open(path, "w") as out:
        for n, (op, key) in enumerate(records):
            seq = rows + 1 + n
            out.write(f'{{"op":"{op}","seq":{seq},"id":{key},"user_id":{key % 977},'
                      f'"price":"{key % 90}.{key % 100:02d}","items":{(key + 1) % 11}}}\n')


def tributary_run(binary, data, base_dir, changes_path):
    proc, port = start_server(binary, data, "--mirror-fold-changes", "1000000000")
    try:
        conn = psycopg.connect(f"host=127.0.0.1 port={port} user=admin dbname=dev",
                               autocommit=True)
        conn.execute("CREATE EXTERNAL SCHEMA cdc FROM KINESIS IAM_ROLE default")
        conn.execute(
            'CREATE MIRROR TABLE cart (id BIGINT, user_id BIGINT, price DECIMAL(6,2), '
            'items INT, PRIMARY KEY (id)) FROM cdc."cart" '
            'FORMAT OPERATION COLUMN op ENCODE JSON ORDER BY seq')
        figures = {}
        started = time.perf_counter()
        conn.execute(f"COPY cart FROM 'file://{base_dir}/' FORMAT JSON 'auto'")
        figures["load"] = time.perf_counter() - started
        started = time.perf_counter()
        conn.execute("VACUUM cart")
        figures["fold base"] = time.perf_counter() - started
        cpu = cpu_seconds(proc.pid)
        started = time.perf_counter()
        conn.execute(f"COPY cart FROM 'file://{changes_path}' FORMAT JSON 'auto'")
        figures["apply"] = time.perf_counter() - started
        figures["apply cpu"] = cpu_seconds(proc.pid) - cpu
        started = time.perf_counter()
        result = conn.execute("SELECT count(*), sum(items), sum(price) FROM cart").fetchone()
        figures["read merged"] = time.perf_counter() - started
        started = time.perf_counter()
        conn.execute("VACUUM cart")
        figures["fold"] = time.perf_counter() - started
        started = time.perf_counter()
        folded = conn.execute("SELECT count(*), sum(items), sum(price) FROM cart").fetchone()
        figures["read folded"] = time.perf_counter() - started
        assert folded == result, (folded, result)
        figures["peak rss"] = memory_mib(proc.pid, "VmHWM")
        return figures, result
    finally:
        proc.kill()
        proc.wait()


def duckdb_run(rows, changes_path):
    import duckdb
    db = duckdb.connect()
    db.execute(
        "CREATE TABLE cart AS SELECT CAST(i AS BIGINT) AS id, CAST(i % 50000 AS BIGINT) AS user_id, "
        "CAST(((i % 10000) // 100) + (i % 100) / 100.0 AS DECIMAL(6,2)) AS price, "
        f"CAST(i % 7 AS INT) AS items FROM range(1, {rows + 1}) t(i)")
    db.execute(
        "CREATE TABLE staging AS SELECT op, seq, CAST(id AS BIGINT) AS id, CAST(user_id AS BIGINT) AS user_id, "
        "CAST(price AS DECIMAL(6,2)) AS price, CAST(items AS INT) AS items "
        f"FROM read_json_auto('{changes_path}')")
    # The seeds' merge: delete every changed key, insert the newest version of each key whose
    # newest change is not a delete.
    started = time.perf_counter()
    db.execute("BEGIN")
    db.execute("DELETE FROM cart WHERE id IN (SELECT id FROM staging)")
    db.execute(
        "INSERT INTO cart SELECT id, user_id, price, items FROM ("
        "SELECT *, row_number() OVER (PARTITION BY id ORDER BY seq DESC) AS rn FROM staging) "
        "WHERE rn = 1 AND op <> 'D'")
    db.execute("COMMIT")
    merge = time.perf_counter() - started
    started = time.perf_counter()
    result = db.execute("SELECT count(*), sum(items), sum(price) FROM cart").fetchone()
    read = time.perf_counter() - started
    return merge, read, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default=DEFAULT_BINARY)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--changes", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        base_dir = os.path.join(scratch, "base")
        changes_path = os.path.join(scratch, "changes.json")
        started = time.perf_counter()
        write_base(base_dir, args.rows)
        write_changes(changes_path, args.rows, args.changes)
        print(f"generated {args.rows:,} insert records and {args.changes:,} changes "
              f"in {time.perf_counter() - started:.1f} s")
        figures, result = tributary_run(args.binary, os.path.join(scratch, "data"), base_dir,
                                        changes_path)
        merge, read, duck = duckdb_run(args.rows, changes_path)
    print(f"tributary  load {figures['load']:.1f} s ({args.rows / figures['load']:,.0f} changes/s), "
          f"fold of the loaded rows {figures['fold base']:.1f} s")
    print(f"tributary  apply {args.changes:,} changes: {figures['apply']:.3f} s "
          f"({args.changes / figures['apply']:,.0f} changes/s, {figures['apply cpu']:.2f} CPU-s)")
    print(f"duckdb     seeds' delete+insert of the same changes: {merge:.3f} s")
    print(f"tributary  full read with unfolded changes {figures['read merged']:.3f} s, "
          f"fold {figures['fold']:.1f} s, read after fold {figures['read folded']:.3f} s")
    print(f"duckdb     full read {read:.3f} s")
    print(f"tributary  peak RSS {figures['peak rss']:.0f} MiB")
    same = tuple(result) == tuple(duck)
    print(f"results    tributary {tuple(result)}  duckdb {tuple(duck)}  "
          f"{'identical' if same else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
