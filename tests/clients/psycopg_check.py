"""psycopg 3 against Tributary: the extended protocol with parameters, as an application uses it."""
import sys

import psycopg

port = int(sys.argv[1])
with psycopg.connect(host="127.0.0.1", port=port, user="admin", dbname="dev", autocommit=True) as conn:
    assert conn.execute("show standard_conforming_strings").fetchone()[0] == "on"
    conn.execute("create table people (id int, name varchar(20), born date, score decimal(5,2))")
    conn.execute(
        "insert into people (id, name, born, score) values (%s, %s, %s, %s)",
        (1, "Ada", "1815-12-10", "99.50"),
    )
    with conn.cursor() as cur:
        cur.executemany("insert into people (id, name) values (%s, %s)", [(2, "Grace"), (3, "Edsger")])
    rows = conn.execute("select id, name from people where id >= %s order by id", (2,)).fetchall()
    assert rows == [(2, "Grace"), (3, "Edsger")], rows
    row = conn.execute("select name, born, score from people where name = %s", ("Ada",)).fetchone()
    assert row[0] == "Ada" and str(row[1]) == "1815-12-10" and str(row[2]) == "99.50", row
    count = conn.execute("select count(*) from people").fetchone()[0]
    assert count == 3, count
    try:
        conn.execute("select * from nowhere")
        raise AssertionError("expected an error")
    except psycopg.errors.UndefinedTable:
        pass
    assert conn.execute("select 1").fetchone()[0] == 1
print("psycopg ok")
