#!/usr/bin/env python3
"""The embedded stream service: PutRecords throughput, and end-to-end freshness through it.

    cargo build --release -p tributary
    python3 bench/stream_service.py [--seconds 10] [--producers 2] [--rate 10000]

Throughput: boto3 producers (threads) call PutRecords with 500 records of 1 KB each for
--seconds; records/s and MB/s are what the service acknowledged. boto3 itself (Python, HTTP,
base64) shares the 2 cores with the server, so the figure is a lower bound of the service's.
Freshness: a streaming view with AUTO REFRESH reads the embedded service while a producer
puts records at --rate (bench/streaming.py's measurement: from PutRecords returning to the
record being counted by a SELECT). Prints figures; asserts nothing about speed.
"""

import argparse
import tempfile
import threading
import time

import boto3
import psycopg

from streaming import KinesisSource, create_stream, free_port, freshness
from tributary_server import DEFAULT_BINARY, cpu_seconds, memory_mib, start_server


def throughput(endpoint, seconds, producers):
    kinesis = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="bench", aws_secret_access_key="bench")
    create_stream(kinesis, "throughput", 4)
    payload = b"x" * 1000
    counts = [0] * producers
    deadline = time.perf_counter() + seconds

    def produce(n):
        client = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="bench", aws_secret_access_key="bench")
        i = 0
        while time.perf_counter() < deadline:
            records = [{"PartitionKey": f"k{n}-{i + j}", "Data": payload} for j in range(500)]
            out = client.put_records(StreamName="throughput", Records=records)
            counts[n] += 500 - out["FailedRecordCount"]
            i += 500

    started = time.perf_counter()
    threads = [threading.Thread(target=produce, args=(n,)) for n in range(producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    return sum(counts), elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default=DEFAULT_BINARY)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument("--rate", type=int, default=10_000)
    args = parser.parse_args()
    stream_port = free_port()
    endpoint = f"http://127.0.0.1:{stream_port}"
    with tempfile.TemporaryDirectory() as data:
        server, port = start_server(args.binary, data, "--stream-listen", f"127.0.0.1:{stream_port}",
                                    "--refresh-interval-ms", "100")
        try:
            cpu = cpu_seconds(server.pid)
            records, elapsed = throughput(endpoint, args.seconds, args.producers)
            used = cpu_seconds(server.pid) - cpu
            print(f"PutRecords, 1 KB records, {args.producers} boto3 producers: {records / elapsed:,.0f} "
                  f"records/s = {records * 1000 / elapsed / 1e6:.1f} MB/s "
                  f"(the server used {used:.1f} CPU-s: {records / max(used, 1e-9):,.0f} records per CPU-second)")
            conn = psycopg.connect(f"host=127.0.0.1 port={port} user=admin dbname=dev", autocommit=True)
            conn.execute("CREATE EXTERNAL SCHEMA kds FROM KINESIS IAM_ROLE default")
            achieved, p50, p99, measured, sent = freshness(conn, KinesisSource(endpoint), args.rate, args.seconds)
            print(f"freshness through the embedded service at {achieved:,.0f} records/s offered "
                  f"({args.rate:,} asked), {measured}/{sent} batches: p50 {p50 * 1000:.0f} ms, "
                  f"p99 {p99 * 1000:.0f} ms")
            print(f"server peak RSS {memory_mib(server.pid, 'VmHWM'):.0f} MiB")
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
