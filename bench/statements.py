"""Large statements and a busy server: the figures of bench/suite.py's `statements` benchmark.

- an INSERT with bind parameters, at a quarter of the protocol's limit and at the limit
  (32,767 parameters: 4,681 rows of 7 columns), in microseconds per parameter: the same
  figure at both sizes means time linear in the statement's size;
- a multi-row INSERT ... VALUES of 25,000 and 100,000 rows written out as text, in
  microseconds per row;
- connecting and running SELECT 1 while another client's statement keeps every core busy:
  the median and the slowest of 20 tries.

DuckDB runs the same INSERT statements in process (its parameters through its Python API)."""

import threading
import time

COLUMNS = 7

CREATE = ("CREATE TABLE wide (a INT, b BIGINT, c VARCHAR(20), d DOUBLE PRECISION, e BOOLEAN, "
          "f VARCHAR(20), g BIGINT)")

# Keeps every core busy for a minute or more, in long polls (a nested-loop join).
HEAVY = ("SELECT count(*) FROM generate_series(1, 20000) a(x) "
         "CROSS JOIN generate_series(1, 20000) b(y) WHERE (x * y) % 7 = 3")


def row_values(i):
    return (i, i * 1_000_003, f"name {i}", i / 7, i % 2 == 0, f"x{i}", -i)


def parameter_insert(rows, placeholder):
    """The INSERT text with `rows` rows of placeholders ('%s' for psycopg, '?' for DuckDB)."""
    row = "(" + ", ".join([placeholder] * COLUMNS) + ")"
    return "INSERT INTO wide VALUES " + ", ".join([row] * rows)


def parameters(rows):
    return [v for i in range(rows) for v in row_values(i)]


def literal_insert(rows):
    return "INSERT INTO wide VALUES " + ", ".join(
        f"({a}, {b}, '{c}', {d!r}, {e}, '{f}', {g})"
        for a, b, c, d, e, f, g in map(row_values, range(rows)))


# At scale 1: a quarter of the protocol's limit and the limit (32,767 = 7 x 4,681); 25,000
# and 100,000 rows.
PARAMETER_ROWS = [1_170, 4_681]
LITERAL_ROWS = [25_000, 100_000]


def sizes(scale):
    """The parameter rows and literal rows at `scale` (at most 1: the protocol caps the
    parameters)."""
    scale = min(scale, 1.0)
    return ([max(2, int(rows * scale)) for rows in PARAMETER_ROWS],
            [max(10, int(rows * scale)) for rows in LITERAL_ROWS])


def timed(execute, runs):
    """The fastest of `runs` timings of `execute()` (a statement's cost, not the machine's
    noise)."""
    best = None
    for _ in range(runs):
        began = time.perf_counter()
        execute()
        elapsed = time.perf_counter() - began
        best = elapsed if best is None else min(best, elapsed)
    return best


def tributary_figures(connect, port, scale, runs):
    """Seconds per statement at each size, and connection latencies beside HEAVY."""
    conn = connect(port)
    conn.execute(CREATE)
    figures = insert_figures(conn, "%s", scale, runs)
    figures["latencies"] = latencies_beside_heavy(connect, port)
    conn.close()
    return figures


def latencies_beside_heavy(connect, port, tries=20):
    heavy = connect(port)
    running = threading.Thread(target=lambda: _run_ignoring_errors(heavy, HEAVY), daemon=True)
    running.start()
    time.sleep(2)
    latencies = []
    for _ in range(tries):
        began = time.perf_counter()
        with connect(port) as conn:
            conn.execute("SELECT 1").fetchall()
        latencies.append(time.perf_counter() - began)
    # Hanging up cancels the heavy statement.
    heavy.pgconn.finish()
    return latencies


def _run_ignoring_errors(conn, sql):
    try:
        conn.execute(sql)
    except Exception:  # noqa: BLE001 - the test hangs up on it
        pass


def duckdb_figures(scale, runs):
    import duckdb
    conn = duckdb.connect()
    conn.execute(CREATE.replace("DOUBLE PRECISION", "DOUBLE"))
    return insert_figures(conn, "?", scale, runs)


def insert_figures(conn, placeholder, scale, runs):
    """Seconds per INSERT at each size, through `conn` (psycopg's or DuckDB's), whose
    parameters are written as `placeholder`."""
    parameter_rows, literal_rows = sizes(scale)
    figures = {}
    for rows in parameter_rows:
        sql, values = parameter_insert(rows, placeholder), parameters(rows)
        figures[f"params {rows * COLUMNS}"] = timed(lambda: conn.execute(sql, values), runs)
    for rows in literal_rows:
        sql = literal_insert(rows)
        figures[f"values {rows}"] = timed(lambda: conn.execute(sql), runs)
    return figures
