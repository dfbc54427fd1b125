#!/usr/bin/env python3
"""Mirror table benchmark: apply a batch of CDC changes to a large mirror table.

A mirror table (`CREATE MIRROR TABLE ... FORMAT OPERATION COLUMN op ORDER BY seq`) is loaded
with 10M rows (COPY of insert records, then VACUUM rewrites them as one file), then, on a
freshly started server, 100k changes (60% updates, 20% inserts, 20% deletes, one per key) are
applied with COPY, which runs the same decode-and-apply path as a stream refresh: time, CPU,
bytes written and the server's peak RSS. Then the table is read whole and VACUUMed (its
deleted rows purged). DuckDB runs the seeds' delete + insert SQL on the same rows and changes
in the same run, and both results are compared.
Then, continuously: the mirror refreshes itself (AUTO REFRESH) from a Kinesis-compatible
stream (Tributary's embedded stream service, or kinesalite with --source kinesalite) while a
producer puts changes (80% updates, 20% inserts) at a steady rate, with the server's own
background rewrites; freshness is the time from PutRecords returning to the change being
visible: the start of the first query whose snapshot shows it, per PutRecords call of 500. A
poller looks up the key of the newest call's last change (a point query) every 20 ms by
default. The PutRecords bodies are built before the run, so one producer reaches 50k/s.
Prints figures; asserts nothing about speed.

    cargo build --release -p tributary
    npm install --prefix tests/node
    python3 bench/mirror.py [--rows 10000000] [--changes 100000] [--rate 10000] [--seconds 10]

The base is generated and loaded in chunks of --chunk-rows (10M) rows, one COPY each, so a
large run needs disk for one chunk's JSON (about 1 GB), not the whole base's. --rows 100000000
is the routine scale run; --rows 1280000000 is the seed's own scale, which needs about 60 GB of
free disk in the temporary directory (checked before it starts) and about two hours to load.
"""

import argparse
import base64
import http.client
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

import boto3
import psycopg

from streaming import create_stream, free_port, start_kinesalite
from tributary_server import (DEFAULT_BINARY, bytes_written, cpu_seconds, memory_mib, start_server,
                              tree_bytes)

FILES = 10
# Bytes on disk per row, with room to spare: a base record is about 95 bytes of JSON, the
# mirror's data directory (its table, its key table and the files replaced within the vacuum
# retention) took 34 bytes a row at 30M rows and 65 at 100M with an hour's retention, and
# DuckDB's database file takes about one.
JSON_BYTES_PER_ROW = 110
TABLE_BYTES_PER_ROW = 45
DUCKDB_BYTES_PER_ROW = 2


def base_line(i):
    return (f'{{"op":"I","seq":{i},"id":{i},"user_id":{i % 50000},'
            f'"price":"{(i % 10000) // 100}.{i % 100:02d}","items":{i % 7}}}\n')


def write_base(directory, first, last):
    """Insert records of the keys first..last, in FILES files."""
    os.makedirs(directory)
    per_file = (last - first + FILES) // FILES
    for f in range(FILES):
        start = first + f * per_file
        end = min(last, start + per_file - 1)
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


def change_record(op, seq, key):
    return (f'{{"op":"{op}","seq":{seq},"id":{key},"user_id":{key % 977},'
            f'"price":"{key % 90}.{key % 100:02d}","items":{(key + 1) % 11}}}').encode()


def put_bodies(rows, first_seq, calls, batch):
    """The PutRecords request bodies of the continuous run, built before it starts so that the
    producer's own cost does not limit the rate (one Python process builds ~30k records/s)."""
    rng = random.Random(7)
    new_key = rows * 2
    bodies = []
    for k in range(calls):
        entries = []
        key = None
        for n in range(batch):
            seq = first_seq + k * batch + n
            if rng.random() < 0.2:
                new_key += 1
                op, key = "I", new_key
            else:
                op, key = "U", rng.randrange(1, rows + 1)
            data = base64.b64encode(change_record(op, seq, key)).decode()
            entries.append({"PartitionKey": str(key), "Data": data})
        # With the key of the call's last change, whose row shows the change once visible.
        bodies.append((json.dumps({"StreamName": "cart", "Records": entries}).encode(), key))
    return bodies


def freshness(conn, kinesis, endpoint, rows, first_seq, rate, seconds, poll_ms):
    """Puts changes at `rate` per second for `seconds` into the auto-refreshing mirror."""
    create_stream(kinesis, "cart", 4)
    conn.execute("ALTER MIRROR TABLE cart AUTO REFRESH YES")
    batch = 500
    calls = int(rate * seconds / batch)
    interval = batch / rate
    bodies = put_bodies(rows, first_seq, calls, batch)
    address = urllib.parse.urlsplit(endpoint)
    connection = http.client.HTTPConnection(address.hostname, address.port)
    headers = {
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": "Kinesis_20131202.PutRecords",
        "X-Amz-Date": "20260101T000000Z",
        # Neither kinesalite nor the embedded service checks signatures.
        "Authorization": "AWS4-HMAC-SHA256 Credential=bench/20260101/us-east-1/kinesis/"
                         "aws4_request, SignedHeaders=content-type;host, Signature=0",
    }
    returned = []  # (newest seq of the call, its key, time PutRecords returned)
    done = threading.Event()
    latencies = []  # per call: from PutRecords returning to the first query that sees it
    durations = []  # how long each poll took

    def poll():
        # Takes the newest call and looks up the key of its last change (a point query, cheap
        # next to a scan of the table) until its row shows that change; then the call and the
        # calls before it are visible, as of the query's start.
        seen = 0
        target = -1
        with psycopg.connect(conn.info.dsn, autocommit=True) as c:
            while not done.is_set() or seen < len(returned):
                if target < seen:
                    target = len(returned) - 1
                if target < seen:
                    time.sleep(poll_ms / 1000)
                    continue
                newest = target
                seq, key, _ = returned[newest]
                at = time.perf_counter()
                row = c.execute(f"SELECT seq FROM cart WHERE id = {key}").fetchone()
                durations.append(time.perf_counter() - at)
                if row is not None and row[0] >= seq:
                    latencies.extend(max(0.0, at - put) for _, _, put in returned[seen:newest + 1])
                    seen = newest + 1
                else:
                    time.sleep(poll_ms / 1000)
                if done.is_set() and time.perf_counter() > give_up:
                    return

    give_up = float("inf")
    poller = threading.Thread(target=poll)
    poller.start()
    started = time.perf_counter()
    for k, (body, key) in enumerate(bodies):
        due = started + k * interval
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        connection.request("POST", "/", body=body, headers=headers)
        response = connection.getresponse()
        out = json.loads(response.read())
        assert response.status == 200, out
        if out.get("FailedRecordCount"):
            # Throttled entries are put again through the SDK, as a producer would.
            entries = [e for e, r in zip(json.loads(body)["Records"], out["Records"])
                       if "ErrorCode" in r]
            entries = [{"PartitionKey": e["PartitionKey"], "Data": base64.b64decode(e["Data"])}
                       for e in entries]
            while entries:
                out = kinesis.put_records(StreamName="cart", Records=entries)
                entries = [e for e, r in zip(entries, out["Records"]) if "ErrorCode" in r]
        returned.append((first_seq + (k + 1) * batch - 1, key, time.perf_counter()))
    achieved = calls * batch / (time.perf_counter() - started)
    connection.close()
    give_up = time.perf_counter() + 30
    done.set()
    poller.join()
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    durations.sort()
    poll = (statistics.median(durations), durations[int(len(durations) * 0.99)], durations[-1])
    return achieved, p50, p99, len(latencies), len(returned), poll


def tributary_run(binary, data, scratch, chunk_rows, changes_path, source_args, kinesis, endpoint,
                  rate, seconds, rows, poll_ms, perf):
    figures = {}
    # Files the load replaces (each COPY rewrites the mirror's newest files) are deleted a
    # minute later rather than an hour, so that a long load's disk stays near its table's.
    proc, port = start_server(binary, data, "--vacuum-retention", "60", *source_args)
    try:
        conn = psycopg.connect(f"host=127.0.0.1 port={port} user=admin dbname=dev",
                               autocommit=True)
        conn.execute("CREATE EXTERNAL SCHEMA cdc FROM KINESIS IAM_ROLE default")
        conn.execute(
            'CREATE MIRROR TABLE cart (id BIGINT, user_id BIGINT, price DECIMAL(6,2), '
            'items INT, seq BIGINT, PRIMARY KEY (id)) FROM cdc."cart" '
            'FORMAT OPERATION COLUMN op ENCODE JSON ORDER BY seq')
        # The base in chunks, each generated, loaded by one COPY and deleted.
        chunks = []
        generating = 0.0
        for first in range(1, rows + 1, chunk_rows):
            last = min(rows, first + chunk_rows - 1)
            base_dir = os.path.join(scratch, f"base-{first}")
            started = time.perf_counter()
            write_base(base_dir, first, last)
            generating += time.perf_counter() - started
            started = time.perf_counter()
            conn.execute(f"COPY cart FROM 'file://{base_dir}/' FORMAT JSON 'auto'")
            chunks.append(time.perf_counter() - started)
            shutil.rmtree(base_dir)
            if len(chunks) > 1:
                print(f"  chunk {len(chunks)}: {last:,} rows loaded, this chunk's COPY "
                      f"{chunks[-1]:.1f} s", flush=True)
        figures["load"] = sum(chunks)
        figures["load chunks"] = chunks
        figures["generate"] = generating
        started = time.perf_counter()
        conn.execute("VACUUM cart")
        figures["vacuum base"] = time.perf_counter() - started
        figures["load peak rss"] = memory_mib(proc.pid, "VmHWM")
        conn.close()
    finally:
        proc.kill()
        proc.wait()
    # The apply on a fresh server, so that its peak memory is the apply's.
    proc, port = start_server(binary, data, *source_args)
    try:
        conn = psycopg.connect(f"host=127.0.0.1 port={port} user=admin dbname=dev",
                               autocommit=True)
        figures["table bytes"] = sum(tree_bytes(data).values())
        cpu = cpu_seconds(proc.pid)
        before = tree_bytes(data)
        started = time.perf_counter()
        conn.execute(f"COPY cart FROM 'file://{changes_path}' FORMAT JSON 'auto'")
        figures["apply"] = time.perf_counter() - started
        figures["apply cpu"] = cpu_seconds(proc.pid) - cpu
        figures["apply bytes"] = bytes_written(data, before)
        figures["apply peak rss"] = memory_mib(proc.pid, "VmHWM")
        started = time.perf_counter()
        result = conn.execute("SELECT count(*), sum(items), sum(price) FROM cart").fetchone()
        figures["read after apply"] = time.perf_counter() - started
        started = time.perf_counter()
        conn.execute("VACUUM cart")
        figures["vacuum"] = time.perf_counter() - started
        started = time.perf_counter()
        vacuumed = conn.execute("SELECT count(*), sum(items), sum(price) FROM cart").fetchone()
        figures["read after vacuum"] = time.perf_counter() - started
        assert vacuumed == result, (vacuumed, result)
        figures["peak rss"] = memory_mib(proc.pid, "VmHWM")
        conn.close()
    finally:
        proc.kill()
        proc.wait()
    # The continuous run, on the same data, with the server's own background rewrites.
    proc, port = start_server(binary, data, "--refresh-interval-ms", "100", *source_args)
    try:
        conn = psycopg.connect(f"host=127.0.0.1 port={port} user=admin dbname=dev",
                               autocommit=True)
        cpu = cpu_seconds(proc.pid)
        profiler = None
        if perf:
            profiler = subprocess.Popen(["perf", "record", "-F", "99", "--call-graph", "dwarf,16384",
                                         "-o", perf,
                                         "-p", str(proc.pid)], stderr=subprocess.DEVNULL)
        figures["freshness"] = freshness(conn, kinesis, endpoint, rows, rows * 3, rate, seconds,
                                         poll_ms)
        figures["stream cpu"] = cpu_seconds(proc.pid) - cpu
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait()
        figures["stream peak rss"] = memory_mib(proc.pid, "VmHWM")
        figures["rows kept"] = conn.execute(
            "SELECT tbl_rows, estimated_visible_rows FROM svv_table_info "
            "WHERE \"table\" = 'cart'").fetchone()
        return figures, result
    finally:
        proc.kill()
        proc.wait()


def duckdb_run(rows, changes_path, scratch):
    import duckdb
    path = os.path.join(scratch, "cart.duckdb")
    db = duckdb.connect(path)
    db.execute(
        "CREATE TABLE cart AS SELECT CAST(i AS BIGINT) AS id, CAST(i % 50000 AS BIGINT) AS user_id, "
        "CAST(((i % 10000) // 100) + (i % 100) / 100.0 AS DECIMAL(6,2)) AS price, "
        f"CAST(i % 7 AS INT) AS items, CAST(i AS BIGINT) AS seq FROM range(1, {rows + 1}) t(i)")
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
        "INSERT INTO cart SELECT id, user_id, price, items, seq FROM ("
        "SELECT *, row_number() OVER (PARTITION BY id ORDER BY seq DESC) AS rn FROM staging) "
        "WHERE rn = 1 AND op <> 'D'")
    db.execute("COMMIT")
    merge = time.perf_counter() - started
    started = time.perf_counter()
    result = db.execute("SELECT count(*), sum(items), sum(price) FROM cart").fetchone()
    read = time.perf_counter() - started
    db.execute("CHECKPOINT")
    disk = os.path.getsize(path)
    db.close()
    return merge, read, result, disk


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default=DEFAULT_BINARY)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--chunk-rows", type=int, default=10_000_000,
                        help="base records generated and loaded by one COPY")
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--poll-ms", type=int, default=20,
                        help="how often the freshness poller queries the mirror")
    parser.add_argument("--source", choices=["embedded", "kinesalite"], default="embedded",
                        help="the stream the mirror reads: Tributary's embedded service or kinesalite")
    parser.add_argument("--perf", metavar="FILE",
                        help="record the server with `perf record --call-graph dwarf` during the continuous run")
    args = parser.parse_args()
    if args.source == "kinesalite":
        kinesalite, endpoint = start_kinesalite()
        source_args = ["--kinesis-endpoint", endpoint, "--no-stream-service"]
    else:
        kinesalite = None
        stream_port = free_port()
        endpoint = f"http://127.0.0.1:{stream_port}"
        source_args = ["--stream-listen", f"127.0.0.1:{stream_port}"]
    kinesis = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="bench", aws_secret_access_key="bench")
    chunk_rows = min(args.chunk_rows, args.rows)
    needed = (chunk_rows * JSON_BYTES_PER_ROW
              + args.rows * (TABLE_BYTES_PER_ROW + DUCKDB_BYTES_PER_ROW))
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if free < needed:
        sys.exit(f"{args.rows:,} rows need about {needed / 1e9:.0f} GB free in "
                 f"{tempfile.gettempdir()}; {free / 1e9:.0f} GB are")
    with tempfile.TemporaryDirectory() as scratch:
        changes_path = os.path.join(scratch, "changes.json")
        write_changes(changes_path, args.rows, args.changes)
        try:
            figures, result = tributary_run(args.binary, os.path.join(scratch, "data"),
                                            scratch, chunk_rows, changes_path, source_args,
                                            kinesis, endpoint, args.rate, args.seconds, args.rows,
                                            args.poll_ms, args.perf)
        finally:
            if kinesalite is not None:
                kinesalite.kill()
                kinesalite.wait()
        merge, read, duck, duck_bytes = duckdb_run(args.rows, changes_path, scratch)
        duck_peak = memory_mib(os.getpid(), "VmHWM")
    chunks = figures["load chunks"]
    print(f"generated {args.rows:,} insert records in {figures['generate']:.1f} s "
          f"(not counted in the load)")
    print(f"tributary  load {figures['load']:.1f} s ({args.rows / figures['load']:,.0f} changes/s) "
          f"in {len(chunks)} COPY of up to {chunk_rows:,} records "
          f"(first {chunks[0]:.1f} s, last {chunks[-1]:.1f} s), "
          f"VACUUM of the loaded rows {figures['vacuum base']:.1f} s, "
          f"peak RSS {figures['load peak rss']:.0f} MiB")
    print(f"tributary  apply {args.changes:,} changes: {figures['apply']:.3f} s "
          f"({args.changes / figures['apply']:,.0f} changes/s, {figures['apply cpu']:.2f} CPU-s, "
          f"wrote {figures['apply bytes'] / 2**20:.2f} MiB of a "
          f"{figures['table bytes'] / 2**20:.0f} MiB data directory, "
          f"peak RSS {figures['apply peak rss']:.0f} MiB)")
    print(f"duckdb     seeds' delete+insert of the same changes: {merge:.3f} s")
    print(f"tributary  full read after the apply {figures['read after apply']:.3f} s, "
          f"VACUUM {figures['vacuum']:.1f} s, read after VACUUM {figures['read after vacuum']:.3f} s")
    print(f"duckdb     full read {read:.3f} s; {duck_bytes / 2**20:,.0f} MiB on disk, "
          f"peak RSS of this process (DuckDB runs in it) {duck_peak:.0f} MiB")
    achieved, p50, p99, measured, sent, poll = figures["freshness"]
    print(f"tributary  AUTO REFRESH at {achieved:,.0f} changes/s offered ({args.rate:,} asked), "
          f"{measured}/{sent} batches: freshness p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms; "
          f"{achieved * args.seconds / max(figures['stream cpu'], 1e-9):,.0f} changes per CPU-second "
          f"of the server")
    kept, visible = figures["rows kept"]
    print(f"tributary  freshness poll (a point query by key) p50 {poll[0] * 1000:.0f} ms, "
          f"p99 {poll[1] * 1000:.0f} ms, max {poll[2] * 1000:.0f} ms; at the end "
          f"{kept - visible:,} deleted rows of {kept:,} wait for a rewrite")
    print(f"tributary  peak RSS {figures['peak rss']:.0f} MiB applying and vacuuming, "
          f"{figures['stream peak rss']:.0f} MiB in the continuous run")
    same = tuple(result) == tuple(duck)
    print(f"results    tributary {tuple(result)}  duckdb {tuple(duck)}  "
          f"{'identical' if same else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
