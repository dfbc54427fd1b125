#!/usr/bin/env python3
"""SUPER benchmark: JSON text -> SUPER (JSON_PARSE into a table) and PartiQL navigation over
the stored values, with DuckDB doing the same work on the same documents in the same run.

    cargo build --release -p tributary
    python3 bench/super.py [--rows 200000] [--runs 3]

Documents are deterministic (seeded) DynamoDB-stream-like records of ~600 bytes: nested
objects, a list of dependents, numbers as numbers and as strings. Figures are medians of
--runs runs, in MB of JSON text per second:
  - parse: CREATE TABLE AS SELECT JSON_PARSE(text) (Tributary, stored as a Delta table) vs
    CREATE TABLE AS SELECT text::JSON (DuckDB, in memory);
  - navigate: one query reading six paths (five scalar casts and an array length) per row;
  - unnest: the seed-001 LEFT JOIN over the dependents list, counted.
Asserts nothing about speed.
"""

import argparse
import json
import random
import statistics
import tempfile
import time

import psycopg

from tributary_server import DEFAULT_BINARY, memory_mib, start_server


def documents(rows, seed=7):
    rng = random.Random(seed)
    for i in range(rows):
        deps = [{"M": {"sk": {"S": f"CUSTOMER#2022-07-08#CUST_{rng.randrange(10**6)}"},
                       "pk": {"S": f"CUSTOMER#CUST_{i}"}}}
                for _ in range(rng.randrange(0, 4))]
        yield json.dumps({
            "awsRegion": "us-east-1",
            "eventID": f"{rng.getrandbits(64):016x}",
            "eventName": rng.choice(["INSERT", "MODIFY", "REMOVE"]),
            "dynamodb": {
                "ApproximateCreationDateTime": 1657294923614 + i,
                "Keys": {"pk": {"S": f"CUSTOMER#CUST_{i}"},
                         "sk": {"S": f"TRANSACTION#2022-07-08T23:59:59Z#{i}"}},
                "NewImage": {
                    "OutofPockMax": {"N": rng.randrange(100, 5000)},
                    "OutofPockPercent": {"N": round(rng.random() * 100, 2)},
                    "Provider": {"S": f"PV-{rng.randrange(1000)}"},
                    "completionDateTime": {"S": "2022-07-08T23:59:59Z"},
                    "calculationRequirements": {"M": {"dependentIds": {"L": deps}}},
                },
                "SizeBytes": 694,
            },
            "eventSource": "aws:dynamodb",
        })


NAVIGATE = """SELECT sum({max}::int), sum({pct}::decimal(5,2)), count(DISTINCT {prov}::varchar),
 max({ts}::timestamptz), sum(get_array_length({deps})), count({event}::varchar) FROM {table}"""

UNNEST = """SELECT count(*) FROM {table} a
 LEFT JOIN a.doc.dynamodb."NewImage"."calculationRequirements"."M"."dependentIds"."L" b ON true"""


def timed(fn, runs):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


PATHS = dict(
    max='a.doc.dynamodb."NewImage"."OutofPockMax"."N"',
    pct='a.doc.dynamodb."NewImage"."OutofPockPercent"."N"',
    prov='a.doc.dynamodb."NewImage"."Provider"."S"',
    ts='a.doc.dynamodb."NewImage"."completionDateTime"."S"',
    deps='a.doc.dynamodb."NewImage"."calculationRequirements"."M"."dependentIds"."L"',
    event='a.doc."eventName"',
)


def tributary_figures(binary, texts, runs, log="warn"):
    """Median seconds of parse, navigate and unnest; the navigation result, the unnested row
    count and the server's peak RSS in MiB."""
    results = {}
    with tempfile.TemporaryDirectory() as data:
        server, port = start_server(binary, data, log=log)
        try:
            conn = psycopg.connect(f"host=127.0.0.1 port={port} user=admin dbname=dev",
                                   autocommit=True)
            conn.execute("SET enable_case_sensitive_identifier TO true")
            conn.execute("CREATE TABLE raw (j VARCHAR(65535))")
            with conn.cursor().copy("COPY raw FROM STDIN") as copy:
                for text in texts:
                    copy.write_row((text,))

            def parse():
                conn.execute("DROP TABLE IF EXISTS docs")
                conn.execute("CREATE TABLE docs AS SELECT json_parse(j) AS doc FROM raw")
            results["parse"] = timed(parse, runs)
            nav = NAVIGATE.format(table="docs a", **PATHS)
            results["navigation result"] = conn.execute(nav).fetchone()
            results["navigate"] = timed(lambda: conn.execute(nav).fetchone(), runs)
            unnest = UNNEST.format(table="docs")
            results["unnested rows"] = conn.execute(unnest).fetchone()[0]
            results["unnest"] = timed(lambda: conn.execute(unnest).fetchone(), runs)
            results["peak rss"] = memory_mib(server.pid, "VmHWM")
        finally:
            server.terminate()
            server.wait()
    return results


def duckdb_figures(texts, runs):
    """DuckDB's median seconds of the same three steps on the same documents."""
    import duckdb
    results = {}
    db = duckdb.connect()
    db.execute("CREATE TABLE raw AS SELECT unnest(?::VARCHAR[]) AS j", [texts])

    def parse():
        db.execute("DROP TABLE IF EXISTS docs")
        db.execute("CREATE TABLE docs AS SELECT j::JSON AS doc FROM raw")
    results["parse"] = timed(parse, runs)
    paths = {k: f"(a.doc->>'{v}')" for k, v in dict(
        max="$.dynamodb.NewImage.OutofPockMax.N", pct="$.dynamodb.NewImage.OutofPockPercent.N",
        prov="$.dynamodb.NewImage.Provider.S", ts="$.dynamodb.NewImage.completionDateTime.S",
        event="$.eventName").items()}
    paths["deps"] = "a.doc->'$.dynamodb.NewImage.calculationRequirements.M.dependentIds.L'"
    nav = NAVIGATE.replace("get_array_length", "json_array_length").format(table="docs a", **paths)
    results["navigate"] = timed(lambda: db.execute(nav).fetchone(), runs)
    unnest = ("SELECT count(*) FROM docs a LEFT JOIN LATERAL (SELECT unnest(json_extract("
              "a.doc, '$.dynamodb.NewImage.calculationRequirements.M.dependentIds.L[*]')) AS b) ON true")
    results["unnested rows"] = db.execute(unnest).fetchone()[0]
    results["unnest"] = timed(lambda: db.execute(unnest).fetchone(), runs)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", default=DEFAULT_BINARY)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    texts = list(documents(args.rows))
    megabytes = sum(len(t) for t in texts) / 1e6
    print(f"{args.rows} documents, {megabytes:.1f} MB of JSON text")
    ours = tributary_figures(args.binary, texts, args.runs)
    theirs = duckdb_figures(texts, args.runs)
    print(f"navigation result: {ours['navigation result']}; unnested rows: {ours['unnested rows']}")
    print(f"{'benchmark':<10} {'tributary MB/s':>15} {'duckdb MB/s':>12} {'ratio':>6}")
    for name in ["parse", "navigate", "unnest"]:
        mine, peer = megabytes / ours[name], megabytes / theirs[name]
        print(f"{name:<10} {mine:>15.1f} {peer:>12.1f} {mine / peer:>6.2f}")
    print(f"tributary peak RSS: {ours['peak rss']:.0f} MiB")


if __name__ == "__main__":
    main()
