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
conn.close()
print("redshift_connector ok")
