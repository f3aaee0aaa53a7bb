"""asyncpg against availdb: its default connect (client_encoding 'utf-8'),
parameters and results of the common types, copy_records_to_table and
copy_from_query, prepared statements with int, text, timestamp, date and
uuid parameters, a prepared statement's cursor fetched in batches, a
cursor moved forward (MOVE on the protocol's portal), a
transaction, a server-side cursor.
Usage: asyncpg_compat.py CONNINFO PORT"""
import asyncio
import datetime
import decimal
import io
import sys
import uuid

import asyncpg


async def main(port):
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="availdb", database="availdb")
    await conn.execute(
        "CREATE TABLE typed (id integer PRIMARY KEY, big bigint, small smallint, "
        "r real, d double precision, n numeric(10,2), t text, v varchar(20), "
        "b boolean, raw bytea, day date, tm time, at timestamp, atz timestamptz, "
        "u uuid, j jsonb)"
    )
    row = (
        1, 2**40, 7, 1.5, 2.25, decimal.Decimal("12.34"), "text", "varchar", True,
        b"\x00\x01", datetime.date(2024, 5, 6), datetime.time(7, 8, 9),
        datetime.datetime(2024, 5, 6, 7, 8, 9),
        datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc),
        uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), '{"a": 1}',
    )
    await conn.execute(
        "INSERT INTO typed VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        *row,
    )
    got = await conn.fetchrow("SELECT * FROM typed WHERE id = $1", 1)
    assert tuple(got) == row, (tuple(got), row)
    assert isinstance(got["id"], int) and isinstance(got["n"], decimal.Decimal), got

    # COPY in from records, and out from a query.
    await conn.execute("CREATE TABLE people (id integer, name text, born date)")
    records = [(i, f"p{i}", datetime.date(2000, 1, 1) + datetime.timedelta(days=i)) for i in range(500)]
    result = await conn.copy_records_to_table("people", records=records, columns=["id", "name", "born"])
    assert result == "COPY 500", result
    assert await conn.fetchval("SELECT count(*) FROM people") == 500
    out = io.BytesIO()
    result = await conn.copy_from_query("SELECT id, name FROM people WHERE id < $1 ORDER BY id", 3, output=out)
    assert out.getvalue().decode() == "0\tp0\n1\tp1\n2\tp2\n", out.getvalue()

    # Prepared statements with int, text, timestamp, date and uuid
    # parameters, announced with those types (asyncpg encodes each in
    # binary by the type the server describes), executed many times.
    await conn.execute(
        "CREATE TABLE events (id serial PRIMARY KEY, n integer, name text NOT NULL, "
        "at timestamp, day date, ref uuid)"
    )
    insert = await conn.prepare(
        "INSERT INTO events (n, name, at, day, ref) VALUES ($1, $2, $3, $4, $5) RETURNING id"
    )
    assert [p.name for p in insert.get_parameters()] == ["int4", "text", "timestamp", "date", "uuid"], \
        insert.get_parameters()
    start = datetime.datetime(2024, 1, 1, 12, 0, 0)
    ids = [await insert.fetchval(i, f"e{i}", start + datetime.timedelta(minutes=i),
                                 datetime.date(2024, 1, 1) + datetime.timedelta(days=i), uuid.UUID(int=i))
           for i in range(300)]
    assert ids == list(range(1, 301)), ids[:5]
    select = await conn.prepare(
        "SELECT id, n, name, at, day, ref FROM events "
        "WHERE n >= $1 AND name <> $2 AND at >= $3 AND day >= $4 AND ref <> $5 ORDER BY id"
    )
    assert [a.type.name for a in select.get_attributes()] == [
        "int4", "int4", "text", "timestamp", "date", "uuid"], select.get_attributes()
    rows = await select.fetch(10, "e11", start, datetime.date(2024, 1, 1), uuid.UUID(int=12))
    assert len(rows) == 288 and tuple(rows[0]) == (
        11, 10, "e10", start + datetime.timedelta(minutes=10), datetime.date(2024, 1, 11), uuid.UUID(int=10)
    ), (len(rows), rows[0])
    assert await conn.fetchval("SELECT $1::uuid", uuid.UUID(int=5)) == uuid.UUID(int=5)
    assert await conn.fetchval("SELECT $1::date", datetime.date(2024, 2, 29)) == datetime.date(2024, 2, 29)
    assert await conn.fetchval("SELECT $1::timestamp", start) == start

    # A prepared statement's cursor, fetched in batches.
    async with conn.transaction():
        cursor = await select.cursor(0, "none", start, datetime.date(2024, 1, 1), uuid.UUID(int=999))
        batches = []
        while batch := await cursor.fetch(64):
            batches.append([r["id"] for r in batch])
        assert [len(b) for b in batches] == [64, 64, 64, 64, 44], [len(b) for b in batches]
        assert sum(batches, []) == ids, "every row once, in order"
        # Cursor.forward sends MOVE on the protocol's portal.
        cursor = await conn.cursor("SELECT id FROM events ORDER BY id")
        assert await cursor.forward(10) == 10
        assert (await cursor.fetchrow())["id"] == 11
        assert [r["id"] for r in await cursor.fetch(3)] == [12, 13, 14]
        assert await cursor.forward(280) == 280
        assert [r["id"] for r in await cursor.fetch(20)] == [295, 296, 297, 298, 299, 300]
        assert await cursor.forward(5) == 0

    # A transaction and a cursor.
    async with conn.transaction():
        await conn.execute("INSERT INTO people VALUES (1000, 'late', NULL)")
        ids = [r["id"] async for r in conn.cursor("SELECT id FROM people ORDER BY id DESC", prefetch=50)]
        assert ids[0] == 1000 and len(ids) == 501, (ids[:3], len(ids))
    await conn.close()


asyncio.run(main(int(sys.argv[2])))
print("asyncpg_compat.py: ok")
