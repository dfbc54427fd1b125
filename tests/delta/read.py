"""Reads a Delta table's latest version with the external Delta readers users run, and prints
each reader's rows as JSON: {"duckdb": [...], "deltalake": [...], "polars": [...]}.

Each row is a list of its values as text (None for NULL), in the table's column order; the
rows are sorted, so that readers compare as sets. Run with the readers' own interpreter
(.ci/run installs it): python read.py TABLE_URI [READER ...]
"""

import json
import os
import sys


def text(value):
    if value is None:
        return None
    if isinstance(value, bool):
        # As Postgres prints a boolean.
        return "t" if value else "f"
    if isinstance(value, float) and value == int(value):
        value = int(value)
    return str(value)


def rows_of(records):
    return sorted([[text(v) for v in row] for row in records], key=lambda r: [(v is None, v or "") for v in r])


def duckdb_rows(uri):
    import duckdb
    import duckdb_ext

    # The wheel ships the extension, so LOAD works offline.
    extensions = os.path.join(list(duckdb_ext.__path__)[0], "extensions")
    connection = duckdb.connect()
    connection.execute(f"SET extension_directory = '{extensions}'")
    connection.execute("LOAD delta")
    return rows_of(connection.execute("SELECT * FROM delta_scan(?)", [uri]).fetchall())


def deltalake_rows(uri):
    from deltalake import DeltaTable, QueryBuilder

    # delta-rs' query engine: its pyarrow dataset path refuses deletion vectors.
    table = QueryBuilder().register("t", DeltaTable(uri)).execute("SELECT * FROM t").read_all()
    return rows_of(zip(*[column.to_pylist() for column in table.columns]) if table.num_rows else [])


def polars_rows(uri):
    import polars

    return rows_of(polars.read_delta(uri).rows())


READERS = {"duckdb": duckdb_rows, "deltalake": deltalake_rows, "polars": polars_rows}


def main():
    uri = sys.argv[1]
    names = sys.argv[2:] or list(READERS)
    out = {}
    for name in names:
        try:
            out[name] = READERS[name](uri)
        except Exception as error:  # reported, so that the test names the reader that failed
            out[name] = {"error": f"{type(error).__name__}: {error}"}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
