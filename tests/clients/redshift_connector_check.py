"""redshift_connector (AWS's driver) against Tributary: parameters and metadata calls."""
import sys

import redshift_connector

port = int(sys.argv[1])
conn = redshift_connector.connect(host="127.0.0.1", port=port, database="dev", user="admin", password="", ssl=False)
cur = conn.cursor()
cur.execute("create table orders (id int, customer varchar(20), total decimal(8,2))")
cur.execute("insert into orders values (%s, %s, %s)", (1, "acme", 10.5))
cur.execute("insert into orders values (%s, %s, %s)", (2, "globex", 99.0))
conn.commit()
cur.execute("select customer from orders where total > %s order by id", (5,))
assert [r[0] for r in cur.fetchall()] == ["acme", "globex"]
tables = [t[2] for t in cur.get_tables(schema_pattern="public")]
assert "orders" in tables, tables
columns = [c[3] for c in cur.get_columns(tablename_pattern="orders")]
assert columns == ["id", "customer", "total"], columns

# Bound parameters: NULLs, table function arguments, CALL, UPDATE and DELETE (the statements
# Tributary runs itself bind their parameters as literals).
cur.execute("insert into orders values (%s, %s, %s)", (3, None, None))
cur.execute("select id from orders where customer is null and total is null")
assert [r[0] for r in cur.fetchall()] == [3]
cur.execute("select * from generate_series(1, %s)", (3,))
assert [r[0] for r in cur.fetchall()] == [1, 2, 3]
cur.execute(
    "create procedure add_order(order_id int, who varchar) as $$ "
    "begin insert into orders values (order_id, who, 0); end; $$ language plpgsql"
)
cur.execute("call add_order(%s, %s)", (4, "it's me"))
cur.execute("update orders set total = %s where id = %s", (7.25, 4))
cur.execute("delete from orders where id = %s", (1,))
conn.commit()
cur.execute("select id, customer, total from orders order by id")
rows = [(r[0], r[1], None if r[2] is None else str(r[2])) for r in cur.fetchall()]
assert rows == [(2, "globex", "99.00"), (3, None, None), (4, "it's me", "7.25")], rows
conn.close()
print("redshift_connector ok")
