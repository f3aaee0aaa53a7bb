#!/usr/bin/env python3
"""A small inventory web application, in two versions, for the rolling
upgrade walk-through (README.md).

    python3 app.py --version 1 --port 8001 --dsn postgresql://availdb@127.0.0.1:5432/app

V1 keeps items with a name. V2 adds a category to every item, which needs
a schema change (upgrade.sql): V2 refuses to be *ready* (GET /ready
answers 503) until the schema it reads is version 2, while it is *alive*
(GET /health answers 200) as soon as it runs — the traffic manager probes
/health, the upgrade's smoke check asks /ready.

    GET  /            the version and how many items there are (text)
    GET  /items       every item as JSON
    POST /items       add one: JSON {"name": ...} (V2: and "category")
    GET  /health      200 while the process runs and its database answers
    GET  /ready       200 when the schema matches this version, else 503

While the database is read-only (the upgrade's window), reads keep working
and POST /items answers 503 with the database's message (SQLSTATE 25006),
so clients can tell "try again in a moment" from a real failure.
"""

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg

VERSION = None
DSN = None


def connect():
    return psycopg.connect(DSN, autocommit=True, connect_timeout=5)


def schema_version(conn):
    return conn.execute("SELECT version FROM schema_version").fetchone()[0]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet: one line per error only
        pass

    def answer(self, status, body, content_type="application/json"):
        data = body if isinstance(body, bytes) else body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-App-Version", str(VERSION))
        self.end_headers()
        self.wfile.write(data)

    def fail(self, e):
        code = getattr(e, "sqlstate", None)
        status = 503 if code in ("25006", "57P01", "57P03") or code is None else 500
        self.answer(status, json.dumps({"error": str(e).strip(), "sqlstate": code}))

    def do_GET(self):
        try:
            with connect() as conn:
                if self.path == "/health":
                    conn.execute("SELECT 1")
                    return self.answer(200, json.dumps({"version": VERSION, "alive": True}))
                if self.path == "/ready":
                    found = schema_version(conn)
                    ok = found == VERSION
                    return self.answer(
                        200 if ok else 503,
                        json.dumps({"version": VERSION, "schema": found, "ready": ok}),
                    )
                if self.path == "/items":
                    if VERSION == 1:
                        rows = conn.execute("SELECT id, name FROM items ORDER BY id").fetchall()
                        items = [{"id": r[0], "name": r[1]} for r in rows]
                    else:
                        rows = conn.execute(
                            "SELECT id, name, category FROM items ORDER BY id"
                        ).fetchall()
                        items = [{"id": r[0], "name": r[1], "category": r[2]} for r in rows]
                    return self.answer(200, json.dumps(items))
                if self.path == "/":
                    n = conn.execute("SELECT count(*) FROM items").fetchone()[0]
                    return self.answer(200, f"inventory V{VERSION}: {n} items\n", "text/plain")
                return self.answer(404, json.dumps({"error": "no such page"}))
        except psycopg.Error as e:
            return self.fail(e)

    def do_POST(self):
        if self.path != "/items":
            return self.answer(404, json.dumps({"error": "no such page"}))
        length = int(self.headers.get("Content-Length") or 0)
        try:
            item = json.loads(self.rfile.read(length) or b"{}")
            name = str(item["name"])
        except (ValueError, KeyError):
            return self.answer(400, json.dumps({"error": 'send JSON {"name": ...}'}))
        try:
            with connect() as conn:
                if VERSION == 1:
                    row = conn.execute(
                        "INSERT INTO items(name) VALUES (%s) RETURNING id", (name,)
                    ).fetchone()
                else:
                    category = str(item.get("category") or "general")
                    row = conn.execute(
                        "INSERT INTO items(name, category) VALUES (%s, %s) RETURNING id",
                        (name, category),
                    ).fetchone()
                return self.answer(201, json.dumps({"id": row[0], "version": VERSION}))
        except psycopg.Error as e:
            return self.fail(e)


def main():
    global VERSION, DSN
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", type=int, choices=(1, 2), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dsn", required=True, help="the database's PostgreSQL URL")
    parser.add_argument("--pid-file", help="write this process's id there")
    args = parser.parse_args()
    VERSION, DSN = args.version, args.dsn
    if args.pid_file:
        with open(args.pid_file, "w") as f:
            f.write(f"{__import__('os').getpid()}\n")
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"inventory V{VERSION} on http://127.0.0.1:{args.port} (database {DSN})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
