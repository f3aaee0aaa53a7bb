#!/usr/bin/env python3
"""Bounded-memory measurements (scripts/bench memory, issue 16). It starts
everything itself, on loopback ports from --port:

    PORT                 availdb standalone (`availdb server`)
    PORT+10, +11         PostgreSQL with a synchronous standby (scripts/pg-sync-standby)
    PORT+20..24, +120..122, +170..172  availdb `up --replicas 3` (sync secondaries)

1. Result size (--result-sizes, MB): a table of n MB (rows of 1,000
   characters, loaded in 20,000-row transactions) on the standalone node and
   on PostgreSQL; per size, `psql -c 'SELECT * FROM t' >/dev/null` on the
   node with its peak resident memory reset just before (`VmHWM` via
   /proc/PID/clear_refs) — the growth of the peak is reported — and on
   PostgreSQL (both psql runs timed: psql holds the whole result), the time
   to the first row of the same SELECT through psycopg's `stream()`
   (single-row mode) on both servers, median of --trials.
2. Transaction size (--tx-sizes, MB): one `INSERT … SELECT` of n MB (the
   same rows) in one transaction on the 3-replica group and on PostgreSQL +
   sync standby; the growth of each availdb node's peak resident memory,
   and the load's throughput (MB/s of row data, rows/s) on both.

3. Seeding (--seed-sizes, MB): a database of n MB made on the group's
   primary outside the group, then `ALTER AVAILABILITY GROUP ag1 ADD
   DATABASE`: both secondaries are seeded with a full image of it (automatic
   seeding); the growth of each node's peak resident memory until both
   are SYNCHRONIZED, and the seeding's duration.

Results: JSON (--out) and a CSV of one row per measurement (--csv).
"""

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import psycopg

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
ROWS_PER_MB = 1000  # rows of 1,000 hex characters


def pad_expr(pg):
    # 1,000 characters of random hex: SQLite's hex(randomblob(500)), in
    # PostgreSQL md5 chains of the same length.
    if pg:
        return "substr(repeat(md5(random()::text), 32), 1, 1000)"
    return "hex(randomblob(500))"


def load_sql(table, first, last, pg):
    # PostgreSQL names the column of `generate_series(…) AS value` value;
    # SQLite's table-valued generate_series has a column named value.
    alias = " AS value" if pg else ""
    return (f"INSERT INTO {table} SELECT value, {pad_expr(pg)} "
            f"FROM generate_series({first}, {last}){alias}")


class Procs:
    def __init__(self):
        self.procs = []

    def start(self, name, argv, log):
        p = subprocess.Popen(argv, stdout=open(log, "w"), stderr=subprocess.STDOUT)
        self.procs.append((name, p))
        return p

    def stop(self):
        for _, p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for _, p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def connect(port, db, user="availdb"):
    return psycopg.connect(f"host=127.0.0.1 port={port} user={user} dbname={db} connect_timeout=5",
                           autocommit=True)


def wait_sql(port, db, user="availdb", within=120):
    deadline = time.time() + within
    while True:
        try:
            with connect(port, db, user) as c:
                c.execute("SELECT 1")
                return
        except Exception as e:  # noqa: BLE001 - any failure means not yet
            if time.time() > deadline:
                raise RuntimeError(f"port {port} did not answer within {within} s: {e}")
            time.sleep(0.2)


def status(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak(pid):
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def children_named(parent, name):
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if ppid == parent and name.encode() in cmd:
            out.append(int(entry))
    return out


def row_ranges(rows, per=20_000):
    """(first, last) id ranges of at most `per` rows covering 1..rows: one
    transaction each when a table is loaded."""
    first = 1
    while first <= rows:
        last = min(first + per - 1, rows)
        yield first, last
        first = last + 1


def write_results(out, csv_path, rows, failures, key):
    """The JSON document (rows and failures) and the CSV of one row per
    measurement: its measure, its `key` column, and the row as JSON."""
    with open(out, "w") as f:
        json.dump({"rows": rows, "failures": failures}, f, indent=1)
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["measure", key, "json"])
        for r in rows:
            w.writerow([r["measure"], r.get(key, ""), json.dumps(r)])


def make_table(port, db, table, mb, pg, user):
    with connect(port, db, user) as c:
        c.execute(f"DROP TABLE IF EXISTS {table}")
        c.execute(f"CREATE TABLE {table}(id {'bigint' if pg else 'INTEGER'} PRIMARY KEY, v TEXT NOT NULL)")
        for first, last in row_ranges(mb * ROWS_PER_MB):
            c.execute(load_sql(table, first, last, pg))


def first_row_ms(port, db, table, user):
    with connect(port, db, user) as c:
        cur = c.cursor()
        start = time.perf_counter()
        elapsed = None
        for _ in cur.stream(f"SELECT * FROM {table}"):
            elapsed = (time.perf_counter() - start) * 1000
            break
    # Closing the connection ends the rest of the stream.
    return elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--result-sizes", default="10 100 1000")
    ap.add_argument("--tx-sizes", default="10 100 1000")
    ap.add_argument("--seed-sizes", default="1000")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--out", required=True)
    ap.add_argument("--csv", required=True)
    args = ap.parse_args()
    result_sizes = [int(x) for x in args.result_sizes.split()]
    tx_sizes = [int(x) for x in args.tx_sizes.split()]
    seed_sizes = [int(x) for x in args.seed_sizes.split()]
    p = args.port
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    if os.geteuid() == 0:
        shutil.chown(args.work, "postgres", "postgres")
    procs = Procs()
    rows = []
    failures = []
    pg_dir = os.path.join(args.work, "pg")
    pg_started = False
    try:
        # --- servers
        node = procs.start("standalone", [args.bin, "server", "--data-dir", os.path.join(args.work, "node"),
                                          "--port", str(p), "--http-port", "0"],
                           os.path.join(args.work, "node.log"))
        subprocess.run([os.path.join(TOP, "scripts", "pg-sync-standby"), "start", pg_dir, str(p + 10)],
                       check=True, stdout=subprocess.DEVNULL)
        pg_started = True
        wait_sql(p, "availdb")
        wait_sql(p + 10, "postgres", "postgres")

        # --- 1. result size
        for mb in result_sizes:
            table = f"r{mb}"
            make_table(p, "availdb", table, mb, False, "availdb")
            make_table(p + 10, "postgres", table, mb, True, "postgres")
            before = status(node.pid, "VmRSS")
            reset_peak(node.pid)
            start = time.perf_counter()
            subprocess.run(["psql", f"host=127.0.0.1 port={p} user=availdb dbname=availdb",
                            "-X", "-q", "-c", f"SELECT * FROM {table}"],
                           check=True, stdout=subprocess.DEVNULL)
            psql_s = time.perf_counter() - start
            growth = status(node.pid, "VmHWM") - before
            start = time.perf_counter()
            subprocess.run(["psql", f"host=127.0.0.1 port={p + 10} user=postgres dbname=postgres",
                            "-X", "-q", "-c", f"SELECT * FROM {table}"],
                           check=True, stdout=subprocess.DEVNULL)
            pg_psql_s = time.perf_counter() - start
            firsts = {"availdb": [], "postgresql": []}
            for _ in range(args.trials):
                firsts["availdb"].append(first_row_ms(p, "availdb", table, "availdb"))
                firsts["postgresql"].append(first_row_ms(p + 10, "postgres", table, "postgres"))
            row = {"measure": "result", "size_mb": mb, "rss_before": before, "peak_growth": growth,
                   "psql_seconds": round(psql_s, 2), "psql_seconds_postgresql": round(pg_psql_s, 2),
                   "first_row_ms_availdb": round(statistics.median(firsts["availdb"]), 2),
                   "first_row_ms_postgresql": round(statistics.median(firsts["postgresql"]), 2)}
            rows.append(row)
            print(f"result {mb} MB: node peak +{growth / 1e6:.1f} MB over {before / 1e6:.1f} MB "
                  f"(psql SELECT * {psql_s:.1f} s, PostgreSQL {pg_psql_s:.1f} s); "
                  f"first row availdb {row['first_row_ms_availdb']} ms, "
                  f"PostgreSQL {row['first_row_ms_postgresql']} ms", flush=True)
            with connect(p, "availdb") as c:
                c.execute(f"DROP TABLE {table}")
            with connect(p + 10, "postgres", "postgres") as c:
                c.execute(f"DROP TABLE {table}")

        # --- 2. transaction size
        up = procs.start("group", [args.bin, "up", "--replicas", "3", "--port", str(p + 20),
                                   "--data-dir", os.path.join(args.work, "group")],
                         os.path.join(args.work, "group.out"))
        wait_sql(p + 20, "app", within=180)
        nodes = []
        for i in (1, 2, 3):
            found = children_named(up.pid, f"r{i}")
            if not found:
                raise RuntimeError(f"no process of r{i} under availdb up (pid {up.pid})")
            nodes.append(found[0])
        for mb in tx_sizes:
            table = f"t{mb}"
            with connect(p + 20, "app") as c:
                c.execute(f"CREATE TABLE {table}(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
            with connect(p + 10, "postgres", "postgres") as c:
                c.execute(f"CREATE TABLE {table}(id bigint PRIMARY KEY, v TEXT NOT NULL)")
            before = [status(n, "VmRSS") for n in nodes]
            for n in nodes:
                reset_peak(n)
            n_rows = mb * ROWS_PER_MB
            with connect(p + 20, "app") as c:
                start = time.perf_counter()
                c.execute(load_sql(table, 1, n_rows, False))
                availdb_s = time.perf_counter() - start
            growth = [status(n, "VmHWM") - b for n, b in zip(nodes, before)]
            with connect(p + 10, "postgres", "postgres") as c:
                start = time.perf_counter()
                c.execute(load_sql(table, 1, n_rows, True))
                pg_s = time.perf_counter() - start
            row = {"measure": "transaction", "size_mb": mb, "rss_before": before, "peak_growth": growth,
                   "availdb_seconds": round(availdb_s, 2), "postgresql_seconds": round(pg_s, 2),
                   "availdb_mb_s": round(mb / availdb_s, 1), "postgresql_mb_s": round(mb / pg_s, 1),
                   "availdb_rows_s": round(n_rows / availdb_s), "postgresql_rows_s": round(n_rows / pg_s)}
            rows.append(row)
            print(f"transaction {mb} MB: node peaks +" + ", +".join(f"{g / 1e6:.1f}" for g in growth)
                  + f" MB; load availdb {row['availdb_mb_s']} MB/s ({availdb_s:.1f} s), "
                  f"PostgreSQL + sync standby {row['postgresql_mb_s']} MB/s ({pg_s:.1f} s)", flush=True)
            with connect(p + 20, "app") as c:
                c.execute(f"DROP TABLE {table}")
            with connect(p + 10, "postgres", "postgres") as c:
                c.execute(f"DROP TABLE {table}")
        # --- 3. seeding
        for mb in seed_sizes:
            db = f"seed{mb}"
            with connect(p + 20, "availdb") as c:
                c.execute(f"CREATE DATABASE {db}")
            make_table(p + 20, db, "t", mb, False, "availdb")
            before = [status(n, "VmRSS") for n in nodes]
            for n in nodes:
                reset_peak(n)
            start = time.perf_counter()
            with connect(p + 20, "availdb") as c:
                c.execute(f"ALTER AVAILABILITY GROUP ag1 ADD DATABASE {db}")
            deadline = time.time() + 1800
            while True:
                with connect(p + 20, "availdb") as c:
                    states = c.execute(
                        "SELECT synchronization_state_desc FROM sys.dm_hadr_database_replica_states "
                        f"WHERE database_name = '{db}' AND NOT is_local").fetchall()
                if len(states) == 2 and all(st == "SYNCHRONIZED" for (st,) in states):
                    break
                if time.time() > deadline:
                    raise RuntimeError(f"{db} not SYNCHRONIZED on both secondaries within 30 min: {states}")
                time.sleep(0.5)
            seeding_s = time.perf_counter() - start
            growth = [status(n, "VmHWM") - b for n, b in zip(nodes, before)]
            row = {"measure": "seeding", "size_mb": mb, "rss_before": before, "peak_growth": growth,
                   "seconds": round(seeding_s, 1), "mb_s": round(mb / seeding_s, 1)}
            rows.append(row)
            print(f"seeding {mb} MB: node peaks +" + ", +".join(f"{g / 1e6:.1f}" for g in growth)
                  + f" MB; both secondaries SYNCHRONIZED after {seeding_s:.1f} s ({row['mb_s']} MB/s)",
                  flush=True)
    except Exception as e:  # noqa: BLE001 - reported in the results
        failures.append(str(e))
        print(f"memory: FAILED {e}", file=sys.stderr, flush=True)
    finally:
        procs.stop()
        if pg_started:
            subprocess.run([os.path.join(TOP, "scripts", "pg-sync-standby"), "stop", pg_dir],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    write_results(args.out, args.csv, rows, failures, "size_mb")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
