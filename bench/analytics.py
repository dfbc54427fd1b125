"""Analytic queries over ingested tables: a TPC-H-shaped data set generated locally, loaded
into Tributary with COPY from Parquet, queried next to DuckDB reading the same Parquet files.

The generator is deterministic: every column is a fixed arithmetic function of the row
number (no random state, no DuckDB extension), written to Parquet by DuckDB. At scale 1,
lineitem has 6M rows, orders 1.5M, customer 150k, nation 25: the row counts of TPC-H's SF1,
with simpler value distributions. The queries are TPC-H Q1, Q3, Q5 (without supplier and
region), Q6, Q12 and a COUNT DISTINCT, in SQL both engines run as written."""

import os
import statistics
import time

# r(i, k, n): a deterministic pseudo-random integer in [0, n) for row i and column k.
MACRO = "CREATE MACRO r(i, k, n) AS ((i * 2654435761 + k * 40503 + 7) % 2147483647) % n"


def pick(expression, values):
    cases = " ".join(f"WHEN {n} THEN '{v}'" for n, v in enumerate(values))
    return f"CASE {expression} {cases} END"


NATIONS = ["ALGERIA", "ARGENTINA", "BRAZIL", "CANADA", "EGYPT", "ETHIOPIA", "FRANCE", "GERMANY",
           "INDIA", "INDONESIA", "IRAN", "IRAQ", "JAPAN", "JORDAN", "KENYA", "MOROCCO",
           "MOZAMBIQUE", "PERU", "CHINA", "ROMANIA", "SAUDI ARABIA", "VIETNAM", "RUSSIA",
           "UNITED KINGDOM", "UNITED STATES"]
SEGMENTS = ["AUTOMOBILE", "BUILDING", "FURNITURE", "MACHINERY", "HOUSEHOLD"]
PRIORITIES = ["1-URGENT", "2-HIGH", "3-MEDIUM", "4-NOT SPECIFIED", "5-LOW"]
SHIPMODES = ["AIR", "MAIL", "SHIP", "TRUCK", "RAIL", "FOB", "REG AIR"]


def sizes(scale):
    lineitem = max(4000, int(6_000_000 * scale))
    orders = lineitem // 4
    return {"lineitem": lineitem, "orders": orders, "customer": max(100, orders // 10),
            "nation": 25}


def generate(directory, scale):
    """Writes <table>.parquet for the four tables into `directory`; returns the row counts."""
    import duckdb
    n = sizes(scale)
    os.makedirs(directory, exist_ok=True)
    db = duckdb.connect()
    db.execute(MACRO)
    tables = {
        "nation": f"""SELECT CAST(i AS INT) AS n_nationkey,
            {pick('i', NATIONS)} AS n_name, CAST(i % 5 AS INT) AS n_regionkey
            FROM range(25) t(i)""",
        "customer": f"""SELECT CAST(i + 1 AS BIGINT) AS c_custkey,
            'Customer#' || lpad(CAST(i + 1 AS VARCHAR), 9, '0') AS c_name,
            CAST(r(i, 21, 25) AS INT) AS c_nationkey,
            {pick('r(i, 22, 5)', SEGMENTS)} AS c_mktsegment,
            CAST((r(i, 23, 1100000) - 100000) / 100.0 AS DECIMAL(12,2)) AS c_acctbal
            FROM range({n['customer']}) t(i)""",
        "orders": f"""SELECT CAST(i + 1 AS BIGINT) AS o_orderkey,
            CAST(1 + r(i, 11, {n['customer']}) AS BIGINT) AS o_custkey,
            {pick('r(i, 13, 3)', ['O', 'F', 'P'])} AS o_orderstatus,
            CAST((100000 + r(i, 14, 50000000)) / 100.0 AS DECIMAL(12,2)) AS o_totalprice,
            DATE '1992-01-01' + CAST(r(i, 12, 2406) AS INT) AS o_orderdate,
            {pick('r(i, 15, 5)', PRIORITIES)} AS o_orderpriority,
            CAST(0 AS INT) AS o_shippriority
            FROM range({n['orders']}) t(i)""",
        "lineitem": f"""SELECT CAST(i // 4 + 1 AS BIGINT) AS l_orderkey,
            CAST(i % 4 + 1 AS INT) AS l_linenumber,
            CAST(1 + r(i, 1, 50) AS DECIMAL(12,2)) AS l_quantity,
            CAST((90000 + r(i, 2, 10000000)) / 100.0 AS DECIMAL(12,2)) AS l_extendedprice,
            CAST(r(i, 3, 11) / 100.0 AS DECIMAL(12,2)) AS l_discount,
            CAST(r(i, 4, 9) / 100.0 AS DECIMAL(12,2)) AS l_tax,
            {pick('r(i, 5, 3)', ['A', 'N', 'R'])} AS l_returnflag,
            {pick('r(i, 6, 2)', ['O', 'F'])} AS l_linestatus,
            DATE '1992-01-02' + CAST(r(i, 7, 2526) AS INT) AS l_shipdate,
            {pick('r(i, 8, 7)', SHIPMODES)} AS l_shipmode
            FROM range({n['lineitem']}) t(i)""",
    }
    for table, query in tables.items():
        path = os.path.join(directory, f"{table}.parquet")
        db.execute(f"COPY ({query}) TO '{path}' (FORMAT parquet, ROW_GROUP_SIZE 1000000)")
    return n


# Tributary's tables: the types DuckDB wrote.
DDL = [
    "CREATE TABLE nation (n_nationkey INT, n_name VARCHAR(25), n_regionkey INT)",
    "CREATE TABLE customer (c_custkey BIGINT, c_name VARCHAR(25), c_nationkey INT, "
    "c_mktsegment VARCHAR(10), c_acctbal DECIMAL(12,2))",
    "CREATE TABLE orders (o_orderkey BIGINT, o_custkey BIGINT, o_orderstatus VARCHAR(1), "
    "o_totalprice DECIMAL(12,2), o_orderdate DATE, o_orderpriority VARCHAR(15), "
    "o_shippriority INT)",
    "CREATE TABLE lineitem (l_orderkey BIGINT, l_linenumber INT, l_quantity DECIMAL(12,2), "
    "l_extendedprice DECIMAL(12,2), l_discount DECIMAL(12,2), l_tax DECIMAL(12,2), "
    "l_returnflag VARCHAR(1), l_linestatus VARCHAR(1), l_shipdate DATE, l_shipmode VARCHAR(10))",
]

QUERIES = {
    "q1": """SELECT l_returnflag, l_linestatus, sum(l_quantity) AS sum_qty,
        sum(l_extendedprice) AS sum_base_price,
        sum(l_extendedprice * (1 - l_discount)) AS sum_disc_price,
        sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)) AS sum_charge,
        avg(l_quantity) AS avg_qty, avg(l_extendedprice) AS avg_price,
        avg(l_discount) AS avg_disc, count(*) AS count_order
        FROM lineitem WHERE l_shipdate <= DATE '1998-09-02'
        GROUP BY l_returnflag, l_linestatus ORDER BY l_returnflag, l_linestatus""",
    "q3": """SELECT l_orderkey, sum(l_extendedprice * (1 - l_discount)) AS revenue,
        o_orderdate, o_shippriority
        FROM customer, orders, lineitem
        WHERE c_mktsegment = 'BUILDING' AND c_custkey = o_custkey AND l_orderkey = o_orderkey
          AND o_orderdate < DATE '1995-03-15' AND l_shipdate > DATE '1995-03-15'
        GROUP BY l_orderkey, o_orderdate, o_shippriority
        ORDER BY revenue DESC, o_orderdate, l_orderkey LIMIT 10""",
    "q5": """SELECT n_name, sum(l_extendedprice * (1 - l_discount)) AS revenue
        FROM customer, orders, lineitem, nation
        WHERE c_custkey = o_custkey AND l_orderkey = o_orderkey AND c_nationkey = n_nationkey
          AND o_orderdate >= DATE '1994-01-01' AND o_orderdate < DATE '1995-01-01'
        GROUP BY n_name ORDER BY revenue DESC, n_name""",
    "q6": """SELECT sum(l_extendedprice * l_discount) AS revenue FROM lineitem
        WHERE l_shipdate >= DATE '1994-01-01' AND l_shipdate < DATE '1995-01-01'
          AND l_discount BETWEEN 0.05 AND 0.07 AND l_quantity < 24""",
    "q12": """SELECT l_shipmode,
        sum(CASE WHEN o_orderpriority IN ('1-URGENT', '2-HIGH') THEN 1 ELSE 0 END) AS high_line_count,
        sum(CASE WHEN o_orderpriority NOT IN ('1-URGENT', '2-HIGH') THEN 1 ELSE 0 END) AS low_line_count
        FROM orders, lineitem
        WHERE o_orderkey = l_orderkey AND l_shipmode IN ('MAIL', 'SHIP')
          AND l_shipdate >= DATE '1994-01-01' AND l_shipdate < DATE '1995-01-01'
        GROUP BY l_shipmode ORDER BY l_shipmode""",
    "distinct": "SELECT count(DISTINCT o_custkey) FROM orders",
}


def normalize(rows):
    """Rows in a form both engines' answers compare equal in: numbers rounded to 4 places."""
    out = []
    for row in rows:
        values = []
        for value in row:
            if isinstance(value, (int, float)) or type(value).__name__ == "Decimal":
                values.append(round(float(value), 4))
            else:
                values.append(str(value))
        out.append(tuple(values))
    return out


def timed(run, runs):
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def tributary_figures(conn, directory, runs):
    """Loads the Parquet files with COPY and times each query (median of `runs`, after one
    warm-up run that also gives the answer)."""
    figures = {"answers": {}}
    started = time.perf_counter()
    for ddl in DDL:
        conn.execute(ddl)
    for table in ["nation", "customer", "orders", "lineitem"]:
        path = os.path.join(directory, f"{table}.parquet")
        conn.execute(f"COPY {table} FROM 'file://{path}' FORMAT AS PARQUET")
    figures["load"] = time.perf_counter() - started
    for name, sql in QUERIES.items():
        figures["answers"][name] = normalize(conn.execute(sql).fetchall())
        figures[name] = timed(lambda: conn.execute(sql).fetchall(), runs)
    return figures


def duckdb_figures(directory, runs):
    """DuckDB over views of the same Parquet files, timed the same way."""
    import duckdb
    db = duckdb.connect()
    for table in ["nation", "customer", "orders", "lineitem"]:
        path = os.path.join(directory, f"{table}.parquet")
        db.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{path}')")
    figures = {"answers": {}}
    for name, sql in QUERIES.items():
        figures["answers"][name] = normalize(db.execute(sql).fetchall())
        figures[name] = timed(lambda: db.execute(sql).fetchall(), runs)
    return figures
