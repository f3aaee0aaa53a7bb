"""psycopg 3 named (server-side) cursors against availdb: DECLARE, FETCH
in itersize batches, fetchone/fetchmany/fetchall, scroll (MOVE), WITH HOLD
across a commit, parameters in the cursor's query; and a TEMP table used
across the statements of psycopg's implicit transactions.
Usage: psycopg_cursors.py CONNINFO PORT"""
import sys

import psycopg

conninfo = sys.argv[1]
with psycopg.connect(conninfo) as conn:
    conn.execute("CREATE TABLE big (id integer PRIMARY KEY, name text)")
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO big VALUES (%s, %s)", [(i, f"n{i}") for i in range(1, 1001)]
        )
    conn.commit()

    # A named cursor in a transaction (psycopg opens it), read in batches.
    with conn.cursor("walk") as cur:
        cur.itersize = 64
        cur.execute("SELECT id, name FROM big WHERE id > %s ORDER BY id", (10,))
        assert [d.name for d in cur.description] == ["id", "name"], cur.description
        assert cur.fetchone() == (11, "n11")
        assert cur.fetchmany(3) == [(12, "n12"), (13, "n13"), (14, "n14")]
        cur.scroll(5)  # MOVE 5
        assert cur.fetchone() == (20, "n20")
        seen = [row[0] for row in cur]
        assert seen == list(range(21, 1001)), (seen[:3], len(seen))
    conn.commit()

    # WITH HOLD: still readable after the transaction that declared it.
    with conn.cursor("held", withhold=True) as cur:
        cur.execute("SELECT id FROM big ORDER BY id")
        conn.commit()
        assert cur.fetchmany(2) == [(1,), (2,)]
        rest = cur.fetchall()
        assert len(rest) == 998 and rest[-1] == (1000,), len(rest)
    conn.commit()

    # A TEMP table lives across the session's statements and transactions.
    conn.execute("CREATE TEMP TABLE scratch (id integer, note text)")
    conn.execute("INSERT INTO scratch SELECT id, name FROM big WHERE id <= 5")
    conn.commit()
    conn.execute("INSERT INTO scratch VALUES (%s, %s)", (6, "six"))
    (n,) = conn.execute("SELECT count(*) FROM scratch").fetchone()
    assert n == 6, n
    conn.commit()
    with psycopg.connect(conninfo) as other:
        try:
            other.execute("SELECT * FROM scratch")
            raise AssertionError("another session sees the TEMP table")
        except psycopg.errors.UndefinedTable:
            pass

print("psycopg_cursors.py: ok")
