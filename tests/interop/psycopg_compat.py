"""psycopg 3 against availdb: cursor.copy both ways, binary parameters and
results of the date/time/UUID types, the catalog probe psycopg's TypeInfo
runs. Usage: psycopg_compat.py CONNINFO PORT"""
import datetime
import sys
import uuid

import psycopg
from psycopg.types import TypeInfo

conninfo = sys.argv[1]
with psycopg.connect(conninfo, autocommit=True) as conn:
    conn.execute(
        "CREATE TABLE ev (id SERIAL PRIMARY KEY, at timestamp, atz timestamptz, day date, "
        "t time, u uuid, note text)"
    )
    now = datetime.datetime(2024, 5, 6, 7, 8, 9, 123456)
    nowz = datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc)
    u = uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    with conn.cursor(binary=True) as cur:
        cur.execute(
            "INSERT INTO ev (at, atz, day, t, u, note) VALUES (%b, %b, %b, %b, %b, %b) RETURNING id",
            (now, nowz, now.date(), now.time(), u, "binary"),
        )
        (new_id,) = cur.fetchone()
        assert new_id == 1, new_id
        cur.execute("SELECT at, atz, day, t, u, note FROM ev WHERE id = %s", (new_id,))
        row = cur.fetchone()
        assert row == (now, nowz, now.date(), now.time(), u, "binary"), row
    # Text parameters and results of the same types.
    cur = conn.execute("SELECT at, day, u FROM ev WHERE u = %s", (u,))
    assert cur.fetchone() == (now, now.date(), u)

    # cursor.copy in and out.
    with conn.cursor() as cur:
        with cur.copy("COPY ev (note, day) FROM STDIN") as copy:
            for i in range(100):
                copy.write_row((f"row {i}", datetime.date(2024, 1, 1) + datetime.timedelta(days=i)))
        assert cur.rowcount == 100, cur.rowcount
        lines = []
        with cur.copy("COPY (SELECT note FROM ev WHERE note LIKE 'row %' ORDER BY id) TO STDOUT") as copy:
            for data in copy:
                lines.append(bytes(data).decode())
        assert "".join(lines).splitlines()[:2] == ["row 0", "row 1"], lines[:2]

    # psycopg's type lookup (used by SQLAlchemy for hstore).
    assert TypeInfo.fetch(conn, "hstore") is None
    info = TypeInfo.fetch(conn, "uuid")
    assert info is not None and info.oid == 2950, info

print("psycopg_compat.py: ok")
