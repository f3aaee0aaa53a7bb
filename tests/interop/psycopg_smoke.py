#!/usr/bin/env python3
"""psycopg 3 against availdb: parameterised inserts and selects in text and
binary result format, transactions committed and rolled back, and errors
carrying their SQLSTATE.

Usage: psycopg_smoke.py CONNINFO

Prints "psycopg smoke: ok" and exits 0 when every check holds; otherwise an
exception says which check failed. It leaves table `people` with the rows
listed in FINAL_PEOPLE for the calling test to verify from the server.
"""

import sys

import psycopg

PEOPLE = [
    (1, "ada", 36, 99.5, b"\x00\x01\xff", True),
    (2, "brian", None, None, None, False),
    (3, "chloé", 7, -1.25, b"", None),
]
FINAL_PEOPLE = [(1, "ada", 36), (2, "brian", 40), (3, "chloé", 7), (4, "dan", None)]


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def expect_rows(cur, want, what):
    got = cur.fetchall()
    check(got == want, f"{what}: got {got!r}, want {want!r}")


def expect_sqlstate(sqlstate, run):
    try:
        run()
    except psycopg.Error as e:
        check(e.sqlstate == sqlstate, f"expected SQLSTATE {sqlstate}, got {e.sqlstate}: {e}")
    else:
        raise AssertionError(f"expected SQLSTATE {sqlstate}, but the statement succeeded")


def inserts_and_selects(conninfo):
    with psycopg.connect(conninfo, autocommit=True) as conn:
        check(
            conn.info.server_version >= 140000,
            f"server_version parameter reports {conn.info.server_version}, want >= 14",
        )
        conn.execute(
            "CREATE TABLE people(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
            " age INTEGER, score REAL, photo BLOB, active BOOLEAN)"
        )
        with conn.cursor() as cur:
            for person in PEOPLE:
                cur.execute(
                    "INSERT INTO people(id, name, age, score, photo, active)"
                    " VALUES (%s, %s, %s, %s, %s, %s)",
                    person,
                )
                check(cur.rowcount == 1, f"INSERT rowcount {cur.rowcount}")
        for binary in (False, True):
            with conn.cursor(binary=binary) as cur:
                cur.execute("SELECT id, name, age, score, photo, active FROM people ORDER BY id")
                got = [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in cur]
                check(got == PEOPLE, f"SELECT (binary={binary}): got {got!r}, want {PEOPLE!r}")
                cur.execute(
                    "SELECT name FROM people WHERE age > %s AND active = %s", (10, True)
                )
                expect_rows(cur, [("ada",)], f"int and bool parameters (binary={binary})")
                cur.execute("SELECT count(*) FROM people WHERE name = %s", ("chloé",))
                expect_rows(cur, [(1,)], f"count(*) with a text parameter (binary={binary})")
                cur.execute("SELECT id FROM people WHERE photo = %s", (b"\x00\x01\xff",))
                expect_rows(cur, [(1,)], f"bytea parameter (binary={binary})")


def transactions(conninfo):
    with psycopg.connect(conninfo) as conn:
        with conn.transaction():
            conn.execute("INSERT INTO people(id, name) VALUES (%s, %s)", (4, "dan"))

        def duplicate_in_block():
            with conn.transaction():
                conn.execute("INSERT INTO people(id, name) VALUES (%s, %s)", (5, "eve"))
                conn.execute("INSERT INTO people(id, name) VALUES (%s, %s)", (6, "ada"))

        expect_sqlstate("23505", duplicate_in_block)
        count = conn.execute("SELECT count(*) FROM people").fetchone()[0]
        check(count == 4, f"after a failed transaction block: {count} people, want 4")
        conn.commit()

        conn.execute("UPDATE people SET age = %s WHERE id = %s", (99, 1))
        conn.rollback()
        conn.execute("UPDATE people SET age = %s WHERE id = %s", (40, 2))
        conn.commit()

        expect_sqlstate("42601", lambda: conn.execute("SELEC 1"))
        expect_sqlstate("25P02", lambda: conn.execute("SELECT 1"))
        conn.rollback()
        got = conn.execute("SELECT 1").fetchone()
        check(got == (1,), f"SELECT 1 after rollback: got {got!r}")
        conn.commit()

    with psycopg.connect(conninfo, autocommit=True) as conn:
        expect_sqlstate("42P01", lambda: conn.execute("SELECT * FROM missing_table"))
        got = conn.execute("SELECT id, name, age FROM people ORDER BY id").fetchall()
        check(got == FINAL_PEOPLE, f"final rows: got {got!r}, want {FINAL_PEOPLE!r}")


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: psycopg_smoke.py CONNINFO")
    conninfo = sys.argv[1]
    inserts_and_selects(conninfo)
    transactions(conninfo)
    print("psycopg smoke: ok")


if __name__ == "__main__":
    main()
