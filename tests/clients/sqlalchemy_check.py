"""SQLAlchemy with the sqlalchemy-redshift dialect: engine, inspection, a round trip."""
import sys

import sqlalchemy as sa

port = int(sys.argv[1])
# sqlalchemy-redshift asks for TLS by default; Tributary serves plain TCP for now.
engine = sa.create_engine(f"redshift+psycopg2://admin@127.0.0.1:{port}/dev?sslmode=disable")
with engine.begin() as conn:
    conn.execute(sa.text("create table widgets (id int not null, label varchar(30))"))
    conn.execute(sa.text("insert into widgets values (:id, :label)"), [{"id": 1, "label": "gear"}, {"id": 2, "label": "cog"}])
with engine.connect() as conn:
    labels = [r[0] for r in conn.execute(sa.text("select label from widgets order by id"))]
    assert labels == ["gear", "cog"], labels
inspector = sa.inspect(engine)
assert "widgets" in inspector.get_table_names(), inspector.get_table_names()
columns = {c["name"]: c for c in inspector.get_columns("widgets")}
assert list(columns) == ["id", "label"], list(columns)
print("sqlalchemy ok")
