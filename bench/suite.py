#!/usr/bin/env python3
"""Tributary's benchmark suite: every performance target of DESIGN.md, measured the same way
each time, next to DuckDB where a comparison makes sense.

    bench/run all                               # build, install the peers, run everything
    bench/run freshness cdc --scale 0.1 --runs 5
    bench/run cdc cdc-sql --rows 100000000 --runs 1  # the scale mode (100M: the routine run)
    python3 bench/suite.py --list               # the benchmarks and what they measure

Each figure is the median of --runs runs (each run of a streaming benchmark starts a new
server and a new stream). A peer figure comes from the same run, so the ratio (Tributary /
DuckDB, in the figure's own unit) is comparable between runs on a noisy machine. --scale
multiplies the data sizes and durations (1 is the size DESIGN.md's targets name); --rows
sets the CDC benchmarks' table size instead, with the seed's 100k changes, and checks the
free disk first. The table
is printed and the same figures are written as JSON (--json). Timings on a shared machine
are noisy; nothing here asserts speed.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import psycopg

import analytics
import cdc_merge
import mirror
import statements
import streaming
import super as superbench
from tributary_server import DEFAULT_BINARY, cpu_seconds, memory_mib, start_server

HERE = os.path.dirname(os.path.abspath(__file__))


class Results:
    """The figures of one suite run, in the order they were measured."""

    def __init__(self):
        self.figures = []

    def add(self, benchmark, name, values, unit, target=None, peer=None, note=""):
        """`values` and `peer` are the runs' figures (medians are reported); `target` is
        (">=" | "<=", bound) on the figure, or ("ratio<=", bound) on figure / peer."""
        values = [v for v in values if v is not None]
        value = statistics.median(values) if values else None
        peer_value = statistics.median(peer) if peer else None
        ratio = value / peer_value if value is not None and peer_value else None
        met = None
        if target is not None and value is not None:
            op, bound = target
            met = {">=": value >= bound, "<=": value <= bound,
                   "ratio<=": ratio is not None and ratio <= bound}[op]
        self.figures.append({
            "benchmark": benchmark, "name": name, "value": value, "unit": unit,
            "runs": values, "target": None if target is None else f"{target[0]} {target[1]}",
            "met": met, "duckdb": peer_value, "ratio": ratio, "note": note,
        })

    def print_table(self, out=sys.stdout):
        def number(v):
            if v is None:
                return "-"
            return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
        rows = [("benchmark", "figure", "value", "unit", "target", "met", "duckdb", "ratio")]
        for f in self.figures:
            rows.append((f["benchmark"], f["name"], number(f["value"]), f["unit"],
                         f["target"] or "", {True: "yes", False: "NO", None: ""}[f["met"]],
                         number(f["duckdb"]), "" if f["ratio"] is None else f"{f['ratio']:.2f}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for n, row in enumerate(rows):
            print("  ".join(c.rjust(w) if i in (2, 6, 7) else c.ljust(w)
                            for i, (c, w) in enumerate(zip(row, widths))), file=out)
            if n == 0:
                print("  ".join("-" * w for w in widths), file=out)


def connect(port):
    return psycopg.connect(f"host=127.0.0.1 port={port} user=admin dbname=dev", autocommit=True)


def peer(task, **arguments):
    """Runs DuckDB's half of a benchmark in its own process (bench/peer.py)."""
    out = subprocess.run([sys.executable, os.path.join(HERE, "peer.py"), task,
                          json.dumps(arguments)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"the DuckDB peer failed ({task}):\n{out.stderr}")
    return json.loads(out.stdout)


class Server:
    """`tributary serve` on a free port with `data` as its data directory."""

    def __init__(self, args, data, *extra):
        # Errors only: the warnings of a fresh data directory would interleave the report.
        self.process, self.port = start_server(args.binary, data, *extra, log="error")

    def peak_rss(self):
        return memory_mib(self.process.pid, "VmHWM")

    def cpu(self):
        return cpu_seconds(self.process.pid)

    def stop(self):
        self.process.terminate()
        self.process.wait()


def embedded_source():
    """The embedded stream service of the server about to start: its endpoint and flags."""
    port = streaming.free_port()
    return f"http://127.0.0.1:{port}", ["--stream-listen", f"127.0.0.1:{port}"]


def bench_freshness(args, results):
    """Freshness (stream entry to visible to a SELECT) of an AUTO REFRESH streaming view at a
    steady --rate, through the embedded stream service and through kinesalite: p50 and p99 of
    500-record PutRecords calls (bench/streaming.py's measurement)."""
    seconds = max(2, round(20 * args.scale))
    for kind in ["embedded", "kinesalite"]:
        p50s, p99s, achieved, peaks = [], [], [], []
        for _ in range(args.runs):
            broker = None
            if kind == "embedded":
                endpoint, flags = embedded_source()
            else:
                broker, endpoint = streaming.start_kinesalite()
                flags = ["--kinesis-endpoint", endpoint, "--no-stream-service"]
            with tempfile.TemporaryDirectory() as data:
                server = Server(args, data, *flags, "--refresh-interval-ms", "100")
                try:
                    conn = connect(server.port)
                    conn.execute("CREATE EXTERNAL SCHEMA kds FROM KINESIS IAM_ROLE default")
                    rate, p50, p99, _, _ = streaming.freshness(
                        conn, streaming.KinesisSource(endpoint), args.rate, seconds)
                    p50s.append(p50 * 1000)
                    p99s.append(p99 * 1000)
                    achieved.append(rate)
                    peaks.append(server.peak_rss())
                finally:
                    server.stop()
                    if broker is not None:
                        broker.kill()
                        broker.wait()
        name = f"freshness-{kind}"
        results.add(name, "records/s offered", achieved, "records/s",
                    note=f"{args.rate:,} asked, {seconds} s per run")
        results.add(name, "freshness p50", p50s, "ms")
        results.add(name, "freshness p99", p99s, "ms", target=("<=", 1000))
        results.add(name, "peak RSS", peaks, "MiB")


def bench_stateless(args, results):
    """A stateless JSON-shredding streaming view (filter, project, JSON_PARSE) refreshed over a
    backlog in kinesalite: records per CPU-second of the server (the per-core figure; the
    source's own CPU is not counted) and records/s of wall-clock time."""
    backlog = max(10_000, int(200_000 * args.scale))
    per_cpu, wall, peaks = [], [], []
    for _ in range(args.runs):
        broker, endpoint = streaming.start_kinesalite()
        with tempfile.TemporaryDirectory() as data:
            server = Server(args, data, "--kinesis-endpoint", endpoint, "--no-stream-service")
            try:
                conn = connect(server.port)
                conn.execute("CREATE EXTERNAL SCHEMA kds FROM KINESIS IAM_ROLE default")
                rows, elapsed, cpu = streaming.throughput(
                    conn, streaming.KinesisSource(endpoint), backlog, server.process.pid)
                if rows != backlog:
                    sys.exit(f"stateless: the view has {rows} rows, not {backlog}")
                per_cpu.append(rows / max(cpu, 1e-9))
                wall.append(rows / elapsed)
                peaks.append(server.peak_rss())
            finally:
                server.stop()
                broker.kill()
                broker.wait()
    note = f"{backlog:,} records of ~200 bytes"
    results.add("stateless-view", "records per CPU-second", per_cpu, "records/s/core",
                target=(">=", 150_000), note=note)
    results.add("stateless-view", "records/s wall clock", wall, "records/s",
                note="kinesalite's reads included")
    results.add("stateless-view", "peak RSS", peaks, "MiB")


def bench_super(args, results):
    """JSON text to SUPER (CREATE TABLE AS SELECT JSON_PARSE), PartiQL navigation of six paths
    and the unnest of a nested list, in MB of JSON text per second (bench/super.py), next to
    DuckDB doing the same on the same documents."""
    rows = max(2_000, int(200_000 * args.scale))
    texts = list(superbench.documents(rows))
    megabytes = sum(len(t) for t in texts) / 1e6
    ours = [superbench.tributary_figures(args.binary, texts, 1, log="error") for _ in range(args.runs)]
    theirs = peer("super", rows=rows, runs=args.runs)
    if ours[0]["unnested rows"] != theirs["unnested rows"]:
        sys.exit(f"super: unnest counts differ: {ours[0]['unnested rows']} "
                 f"and DuckDB's {theirs['unnested rows']}")
    note = f"{rows:,} documents, {megabytes:.1f} MB"
    results.add("super", "JSON_PARSE into a table", [megabytes / o["parse"] for o in ours],
                "MB/s", target=(">=", 100), peer=[megabytes / theirs["parse"]], note=note)
    results.add("super", "navigate six paths", [megabytes / o["navigate"] for o in ours],
                "MB/s", peer=[megabytes / theirs["navigate"]])
    results.add("super", "unnest a list", [megabytes / o["unnest"] for o in ours], "MB/s",
                peer=[megabytes / theirs["unnest"]])
    results.add("super", "peak RSS", [o["peak rss"] for o in ours], "MiB",
                peer=[theirs["peak_rss_mib"]])


def bench_cdc(args, results):
    """CDC apply into a mirror table (bench/mirror.py's data): --scale x 10M rows loaded and
    VACUUMed once; then each run starts from a copy of that data directory and applies --scale
    x 100k changes (60% updates, 20% deletes, 20% inserts) with COPY, the stream refresh's
    decode-and-apply path; DuckDB applies the seeds' delete + insert SQL to the same rows and
    changes, and both results must agree. Then the mirror refreshes itself from the embedded
    stream service while a producer puts changes at --cdc-rate: changes/s sustained and the
    freshness of each change."""
    rows = args.rows or max(10_000, int(10_000_000 * args.scale))
    changes = 100_000 if args.rows else max(1_000, int(100_000 * args.scale))
    seconds = max(2, round(10 * min(args.scale, 1.0 if args.rows else args.scale)))
    with tempfile.TemporaryDirectory() as scratch:
        base_dir = os.path.join(scratch, "base")
        changes_path = os.path.join(scratch, "changes.json")
        mirror.write_base(base_dir, 1, rows)
        mirror.write_changes(changes_path, rows, changes)
        pristine = os.path.join(scratch, "pristine")
        _, flags = embedded_source()
        server = Server(args, pristine, *flags)
        try:
            conn = connect(server.port)
            conn.execute("CREATE EXTERNAL SCHEMA cdc FROM KINESIS IAM_ROLE default")
            conn.execute(
                'CREATE MIRROR TABLE cart (id BIGINT, user_id BIGINT, price DECIMAL(6,2), '
                'items INT, seq BIGINT, PRIMARY KEY (id)) FROM cdc."cart" '
                'FORMAT OPERATION COLUMN op ENCODE JSON ORDER BY seq')
            started = time.perf_counter()
            conn.execute(f"COPY cart FROM 'file://{base_dir}/' FORMAT JSON 'auto'")
            conn.execute("VACUUM cart")
            load = time.perf_counter() - started
            load_peak = server.peak_rss()
        finally:
            server.stop()
        applies, answer, peaks = [], None, []
        for run in range(args.runs):
            data = os.path.join(scratch, f"run-{run}")
            shutil.copytree(pristine, data)
            server = Server(args, data, "--no-stream-service")
            try:
                conn = connect(server.port)
                started = time.perf_counter()
                conn.execute(f"COPY cart FROM 'file://{changes_path}' FORMAT JSON 'auto'")
                applies.append(time.perf_counter() - started)
                answer = conn.execute(
                    "SELECT count(*), sum(items), sum(price) FROM cart").fetchone()
                peaks.append(server.peak_rss())
            finally:
                server.stop()
                shutil.rmtree(data)
        theirs = peer("cdc", rows=rows, changes_path=changes_path, runs=args.runs)
        if [float(v) for v in answer] != theirs["result"]:
            sys.exit(f"cdc: Tributary's table {tuple(answer)} differs from DuckDB's "
                     f"{tuple(theirs['result'])}")
        note = f"{changes:,} changes into {rows:,} rows"
        results.add("cdc-apply", "load and VACUUM the base", [rows / load], "rows/s",
                    note=f"{rows:,} insert records, once")
        results.add("cdc-apply", "apply changes", applies, "s", target=("<=", 1.0),
                    peer=theirs["merges"], note=note)
        results.add("cdc-apply", "peak RSS loading the base", [load_peak], "MiB")
        results.add("cdc-apply", "peak RSS applying", peaks, "MiB",
                    peer=[theirs["peak_rss_mib"]])

        sustained, p50s, p99s, peaks = [], [], [], []
        for run in range(args.runs):
            data = os.path.join(scratch, f"stream-{run}")
            shutil.copytree(pristine, data)
            endpoint, flags = embedded_source()
            server = Server(args, data, "--refresh-interval-ms", "100", *flags)
            try:
                conn = connect(server.port)
                kinesis = streaming.KinesisSource(endpoint).client
                achieved, p50, p99, measured, sent, _ = mirror.freshness(
                    conn, kinesis, endpoint, rows, rows * 3, args.cdc_rate, seconds, 20)
                # Changes that became visible per second of the run; below the offered rate
                # when the mirror fell behind (calls never seen count as not applied).
                sustained.append(achieved * measured / max(sent, 1))
                p50s.append(p50 * 1000)
                p99s.append(p99 * 1000)
                peaks.append(server.peak_rss())
            finally:
                server.stop()
                shutil.rmtree(data)
        note = f"{args.cdc_rate:,} changes/s offered for {seconds} s"
        results.add("cdc-stream", "changes/s sustained", sustained, "changes/s",
                    target=(">=", 50_000), note=note)
        results.add("cdc-stream", "freshness p50", p50s, "ms")
        results.add("cdc-stream", "freshness p99", p99s, "ms", target=("<=", 1000))
        results.add("cdc-stream", "peak RSS", peaks, "MiB")


def bench_cdc_sql(args, results):
    """Seed 000's update sequence in SQL (bench/cdc_merge.py): a cart table of --rows rows
    (or --scale x 10M) made by CREATE TABLE AS, then 100k changes (--scale x 100k without
    --rows; 60% updates, 20% inserts, 20% deletes) applied as DELETE + INSERT in one
    transaction, --runs times, under --memory-limit, beside DuckDB doing the same in a
    database file under the same limit; both tables must agree."""
    rows = args.rows or max(10_000, int(10_000_000 * args.scale))
    changes = 100_000 if args.rows else max(1_000, int(100_000 * args.scale))
    load, timings, count, peaks, _, _, disk, written = cdc_merge.tributary_run(
        args.binary, rows, changes, args.runs, args.memory_limit, parquet=False)
    d_load, d_timings, d_count, _, _, d_disk, d_peak = cdc_merge.duckdb_run(
        rows, changes, args.runs, args.memory_limit, parquet=False)
    if tuple(count) != tuple(d_count):
        sys.exit(f"cdc-sql: Tributary's table {tuple(count)} differs from DuckDB's {tuple(d_count)}")
    note = f"{changes:,} changes into {rows:,} rows"
    results.add("cdc-sql", "load (CREATE TABLE AS)", [rows / load], "rows/s",
                peer=[rows / d_load], note=f"{rows:,} rows")
    results.add("cdc-sql", "apply changes", timings, "s", target=("<=", 10.0),
                peer=d_timings, note=note)
    results.add("cdc-sql", "bytes written per apply", [w / 2**20 for w in written], "MiB")
    results.add("cdc-sql", "on disk", [disk[1] / 2**20], "MiB", peer=[d_disk / 2**20])
    results.add("cdc-sql", "peak RSS loading", [peaks[0]], "MiB",
                note=f"--memory-limit {args.memory_limit}")
    results.add("cdc-sql", "peak RSS applying", [peaks[2]], "MiB", peer=[d_peak],
                note="DuckDB's figure is its whole process, load included")


def bench_analytics(args, results):
    """Analytic queries over ingested tables (bench/analytics.py): a TPC-H-shaped data set of
    --scale x 6M lineitem rows, loaded with COPY from Parquet, and six queries next to DuckDB
    reading the same Parquet files; both engines' answers must agree."""
    with tempfile.TemporaryDirectory() as scratch:
        parquet = os.path.join(scratch, "parquet")
        sizes = analytics.generate(parquet, args.scale)
        with tempfile.TemporaryDirectory() as data:
            server = Server(args, data)
            try:
                ours = analytics.tributary_figures(connect(server.port), parquet, args.runs)
                peak = server.peak_rss()
            finally:
                server.stop()
        theirs = peer("analytics", directory=parquet, runs=args.runs)
    total = sum(sizes.values())
    results.add("analytics", "COPY from Parquet", [total / ours["load"]], "rows/s",
                note=f"{sizes['lineitem']:,} lineitem rows")
    ratios = []
    for name in analytics.QUERIES:
        if ours["answers"][name] != [tuple(r) for r in theirs["answers"][name]]:
            sys.exit(f"analytics: {name} answers differ:\n tributary {ours['answers'][name]}"
                     f"\n duckdb    {theirs['answers'][name]}")
        results.add("analytics", name, [ours[name] * 1000], "ms", target=("ratio<=", 1.2),
                    peer=[theirs[name] * 1000])
        ratios.append(ours[name] / theirs[name])
    geomean = statistics.geometric_mean(ratios)
    results.add("analytics", "geometric mean", [geomean], "x DuckDB", target=("<=", 1.2))
    results.add("analytics", "peak RSS", [peak], "MiB", peer=[theirs["peak_rss_mib"]])


def bench_statements(args, results):
    """Large statements and a busy server (bench/statements.py): an INSERT with bind
    parameters at a quarter of the protocol's limit and at the limit (32,767), and a
    multi-row VALUES of 25,000 and 100,000 rows (times --scale, at most 1), per parameter and per row (equal figures at
    both sizes: linear time), next to DuckDB running the same statements; then connecting
    and running SELECT 1 while another client's statement keeps every core busy."""
    with tempfile.TemporaryDirectory() as data:
        server = Server(args, data)
        try:
            ours = statements.tributary_figures(connect, server.port, args.scale, args.runs)
        finally:
            server.stop()
    theirs = peer("statements", scale=args.scale, runs=args.runs)
    parameter_rows, literal_rows = statements.sizes(args.scale)
    for rows in parameter_rows:
        count = rows * statements.COLUMNS
        key = f"params {count}"
        results.add("statements", f"INSERT, {count:,} parameters", [ours[key] / count * 1e6],
                    "us/parameter", peer=[theirs[key] / count * 1e6])
    for rows in literal_rows:
        key = f"values {rows}"
        results.add("statements", f"INSERT VALUES, {rows:,} rows", [ours[key] / rows * 1e6],
                    "us/row", peer=[theirs[key] / rows * 1e6])
    latencies = sorted(ours["latencies"])
    results.add("statements", "connect + SELECT 1 beside a heavy query, median",
                [statistics.median(latencies) * 1000], "ms")
    results.add("statements", "connect + SELECT 1 beside a heavy query, slowest",
                [latencies[-1] * 1000], "ms", note=f"{len(latencies)} tries")


BENCHMARKS = {
    "freshness": bench_freshness,
    "stateless": bench_stateless,
    "super": bench_super,
    "cdc": bench_cdc,
    "cdc-sql": bench_cdc_sql,
    "analytics": bench_analytics,
    "statements": bench_statements,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmarks", nargs="*", default=["all"],
                        help="'all' or any of: " + ", ".join(BENCHMARKS))
    parser.add_argument("--scale", type=float, default=1.0,
                        help="data sizes and durations relative to the targets' (default 1)")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure; medians reported")
    parser.add_argument("--rate", type=int, default=10_000,
                        help="records/s offered in the freshness benchmarks")
    parser.add_argument("--cdc-rate", type=int, default=50_000,
                        help="changes/s offered in the sustained CDC benchmark")
    parser.add_argument("--rows", type=int,
                        help="the scale mode: rows of the CDC benchmarks' table (100000000 is "
                             "the routine run, 1280000000 the seed's own scale), with 100k "
                             "changes; the free disk needed is checked first (cdc-sql: 12 "
                             "bytes a row; cdc: 90, for its JSON base)")
    parser.add_argument("--memory-limit", default="8GiB",
                        help="the server's --memory-limit in the scale benchmarks (cdc-sql)")
    parser.add_argument("--binary", default=DEFAULT_BINARY)
    parser.add_argument("--json", default="bench-results.json", help="where to write the figures")
    parser.add_argument("--list", action="store_true", help="describe the benchmarks and stop")
    args = parser.parse_args()
    if args.list:
        for name, bench in BENCHMARKS.items():
            print(f"{name}:\n  " + " ".join(bench.__doc__.split()) + "\n")
        return
    names = list(BENCHMARKS) if "all" in args.benchmarks else args.benchmarks
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        sys.exit(f"no benchmark {', '.join(unknown)}; there are: {', '.join(BENCHMARKS)}")
    if args.rows:
        # The mirror benchmark's base is JSON records on disk beside both engines' tables.
        per_row = {"cdc-sql": cdc_merge.DISK_BYTES_PER_ROW, "cdc": 90}
        needed = args.rows * max(per_row.get(name, 0) for name in names)
        free = shutil.disk_usage(tempfile.gettempdir()).free
        if free < needed:
            sys.exit(f"--rows {args.rows:,} needs about {needed / 1e9:.0f} GB free in "
                     f"{tempfile.gettempdir()}; {free / 1e9:.0f} GB are")
    if not os.path.exists(args.binary):
        sys.exit(f"no server binary at {args.binary}: run `cargo build --release -p tributary`")
    results = Results()
    started = time.time()
    for name in names:
        print(f"running {name} (scale {args.scale}, {args.runs} runs)...", file=sys.stderr)
        began = time.perf_counter()
        BENCHMARKS[name](args, results)
        print(f"  {name} took {time.perf_counter() - began:.0f} s", file=sys.stderr)
    results.print_table()
    import duckdb
    report = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "scale": args.scale, "runs": args.runs, "binary": os.path.basename(args.binary),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "duckdb": duckdb.__version__,
        "figures": results.figures,
    }
    with open(args.json, "w") as out:
        json.dump(report, out, indent=2)
    print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
