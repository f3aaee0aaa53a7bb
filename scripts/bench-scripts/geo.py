#!/usr/bin/env python3
"""Geo-replication measurements (scripts/bench geo) on a running
`availdb up --regions 2` (regions A and B, A's `app` geo-replicated to B)
and, for the lag, PostgreSQL primary -> sync standby -> asynchronous
cascading standby (scripts/pg-sync-standby start --cascade).

1. Lag. A writer commits single-row inserts at a steady rate (--rate per
   second, for --seconds) on the source: region A's primary, or PostgreSQL's
   primary. A reader polls `SELECT max(id)` every --poll seconds on the
   copy: region B's primary, or the cascading standby. An id's lag is the
   time the copy first showed it (the midpoint of the first poll that saw
   it) minus the time its commit was acknowledged to the writer; both
   clocks are this process's monotonic clock. Meanwhile availdb's own
   `replication_lag_sec` (sys.dm_geo_replication_link_status on A) and
   PostgreSQL's `replay_lag` of the cascading standby (pg_stat_replication
   on the standby) are sampled every 0.5 s for reference.
2. Forced geo-failover, --trials times, alternating directions. A writer
   commits on the source's primary (every ~10 ms); FORCE_FAILOVER_ALLOW_-
   DATA_LOSS runs on the geo-secondary region's primary while a probe
   tries an insert there every 20 ms: the RTO is the statement's start ->
   the probe's first commit. Then: when the old source refuses writes (it
   is deposed once the new source reaches it), when the link is CATCH_UP
   with lag 0 again (the old source rewound and following), and the rows
   the writer had acknowledged on the old source that the new one lacks —
   before the statement (the data loss of an asynchronous link) and after
   it (written on the old source until it was deposed; discarded by
   design).
3. Planned geo-failover, --trials times, alternating. A writer that knows
   both regions commits on whichever takes its writes (it switches region
   after an error); `ALTER DATABASE app FAILOVER` on the geo-secondary
   region's primary. Reported: the statement's duration, the writer's
   longest gap between acknowledged commits around it, and every
   acknowledged id checked on the new source and on the old one (no loss).
4. Planned termination, per size in --sizes (MB): a new database in region
   A's group filled with randomblob rows, ADD SECONDARY ON SERVER 'B', wait
   until synchronized (sys.wait_for_database_copy_sync, then the link
   CATCH_UP with lag 0), then `REMOVE SECONDARY ON SERVER 'B'` (planned)
   timed; B's copy must then hold A's row count and take a write.

Every wait is bounded. Results: per-trial rows appended to the run's CSV
(--csv; its header names the columns), everything (per-commit lags too) in
the JSON --out. Checks that fail are listed in the JSON's "failures"; the
script exits 1 when there are any or a phase stopped early.
"""

import argparse
import csv
import json
import os
import socket
import sys
import threading
import time

import psycopg

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import percentile, visibility_lags  # noqa: E402

RETRY = 0.02
WRITE_TIMEOUT = 5.0  # a write with no answer after this long is abandoned (in doubt)


def log(msg):
    print(f"geo: {msg}", file=sys.stderr, flush=True)


def first_line(e):
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def execute_bounded(conn, sql, params=(), timeout=WRITE_TIMEOUT):
    """conn.execute, but shuts the socket down when there is no answer
    within timeout (raising psycopg.OperationalError in this thread)."""
    fired = threading.Event()

    def shut():
        fired.set()
        try:
            sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        except OSError:
            pass

    timer = threading.Timer(timeout, shut)
    timer.daemon = True
    timer.start()
    try:
        return conn.execute(sql, params)
    except psycopg.Error as e:
        if fired.is_set():
            raise psycopg.OperationalError(f"no answer within {timeout} s: {first_line(e)}") from e
        raise
    finally:
        timer.cancel()


def connect(conninfo):
    return psycopg.connect(conninfo, autocommit=True)


def query(conninfo, sql, params=(), timeout=30.0):
    """Rows (as dicts) of one statement on a new session."""
    with connect(conninfo) as c:
        cur = execute_bounded(c, sql, params, timeout)
        if cur.description is None:
            return []
        names = [d.name for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]


def wait_until(what, timeout, probe, poll=0.1):
    """Calls probe() until it returns a true value (returned) or timeout
    seconds pass (RuntimeError naming what and the last value or error)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            got = probe()
            if got:
                return got
            last = got
        except psycopg.Error as e:
            last = first_line(e)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:g} s (last: {last})")
        time.sleep(poll)


class Region:
    """One region of `availdb up --regions 2`: its nodes' client ports."""

    def __init__(self, name, ports, data_dir):
        self.name = name
        self.ports = ports
        self.data_dir = data_dir

    def conninfo(self, port, db):
        return f"host=127.0.0.1 port={port} user=availdb dbname={db} connect_timeout=2"

    def primary_port(self, timeout=60):
        """The client port of the node that is its region's primary now."""
        def probe():
            for p in self.ports:
                try:
                    rows = query(self.conninfo(p, "availdb"),
                                 "SELECT role_desc FROM sys.dm_hadr_availability_replica_states WHERE is_local")
                except psycopg.Error:
                    continue
                if rows and rows[0]["role_desc"] == "PRIMARY":
                    return p
            return None
        return wait_until(f"region {self.name} has a primary", timeout, probe)

    def admin(self):
        return self.conninfo(self.primary_port(), "availdb")

    def db(self, name="app"):
        return self.conninfo(self.primary_port(), name)

    def links(self):
        return query(self.admin(), "SELECT * FROM sys.dm_geo_replication_link_status")

    def logs(self):
        out = []
        for d in sorted(os.listdir(self.data_dir)):
            path = os.path.join(self.data_dir, d, "node.log")
            if os.path.exists(path):
                out.append(path)
        return out


def link_row(source, partner, db="app"):
    for r in source.links():
        if r["database_name"] == db and r["partner_server"] == partner.name and r["role_desc"] == "PRIMARY":
            return r
    return None


def wait_link_ready(source, partner, db="app", timeout=180):
    """Until the source's view of its link to partner is CATCH_UP with lag 0."""
    def probe():
        r = link_row(source, partner, db)
        if r and r["replication_state_desc"] == "CATCH_UP" and r["replication_lag_sec"] is not None \
                and float(r["replication_lag_sec"]) == 0.0:
            return r
        return None if r is None else False
    return wait_until(f"{db}: link {source.name} -> {partner.name} CATCH_UP with lag 0", timeout, probe, poll=0.05)


def ids_in(conninfo, table, lo, hi):
    rows = query(conninfo, f"SELECT id FROM {table} WHERE id >= %s AND id < %s", (lo, hi))
    return {r["id"] for r in rows}


# --- 1. lag -------------------------------------------------------------------------

def measure_lag(label, write_ci, read_ci, sample_ci, sample_sql, rate, seconds, poll, drain=60):
    """The per-id lag of a steady writer on write_ci as seen by a poller on
    read_ci (table geo_lag, which must exist on both and be empty)."""
    acked = []  # (id, sent, acked)
    errors = []
    polls = []  # (start, end, max id)
    samples = []  # (t, value)
    done = threading.Event()
    total = max(1, int(rate * seconds))
    t0 = time.monotonic() + 0.2

    def writer():
        pad = "x" * 100
        conn = None
        for k in range(total):
            due = t0 + k / rate
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            i = k + 1
            sent = time.monotonic()
            try:
                if conn is None:
                    conn = connect(write_ci)
                execute_bounded(conn, "INSERT INTO geo_lag(id, pad) VALUES (%s, %s)", (i, pad))
                acked.append((i, sent, time.monotonic()))
            except psycopg.Error as e:
                errors.append((i, first_line(e)))
                try:
                    if conn is not None:
                        conn.close()
                except psycopg.Error:
                    pass
                conn = None
        if conn is not None:
            conn.close()
        done.set()

    def reader():
        conn = None
        deadline = None
        while True:
            start = time.monotonic()
            if done.is_set():
                if deadline is None:
                    deadline = start + drain
                last = acked[-1][0] if acked else 0
                if (polls and polls[-1][2] >= last) or start > deadline:
                    break
            try:
                if conn is None:
                    conn = connect(read_ci)
                m = execute_bounded(conn, "SELECT coalesce(max(id), 0) FROM geo_lag").fetchone()[0]
                polls.append((start, time.monotonic(), int(m)))
            except psycopg.Error:
                conn = None
            wait = start + poll - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        if conn is not None:
            conn.close()

    def sampler():
        conn = None
        k = 0
        while not done.is_set():
            due = t0 + k * 0.5
            k += 1
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                if conn is None:
                    conn = connect(sample_ci)
                row = execute_bounded(conn, sample_sql).fetchone()
                samples.append((time.monotonic() - t0, None if row is None or row[0] is None else float(row[0])))
            except psycopg.Error:
                conn = None
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=f, daemon=True) for f in (writer, reader, sampler)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + drain + 60)
    lags, unseen = visibility_lags([(i, ack) for i, _, ack in acked], polls)
    commit_ms = [(a - s) * 1000 for _, s, a in acked]
    elapsed = (acked[-1][2] - t0) if acked else seconds
    poll_ms = [(e - s) * 1000 for s, e, _ in polls]
    result = {
        "system": label,
        "rate": rate,
        "seconds": seconds,
        "acked": len(acked),
        "errors": len(errors),
        "error_sample": errors[:10],
        "achieved_rate": len(acked) / elapsed if elapsed > 0 else None,
        "commit_ms_mean": sum(commit_ms) / len(commit_ms) if commit_ms else None,
        "commit_ms_p99": percentile(commit_ms, 99),
        "polls": len(polls),
        "poll_ms_p50": percentile(poll_ms, 50),
        "unseen": unseen,
        "lag_s": lags,
        "lag_p50_s": percentile(lags, 50),
        "lag_p95_s": percentile(lags, 95),
        "lag_p99_s": percentile(lags, 99),
        "lag_max_s": max(lags) if lags else None,
        "lag_min_s": min(lags) if lags else None,
        "samples": samples,
    }
    log(f"lag, {label}: {len(acked)} commits at {fmt(result['achieved_rate'], 1)}/s (commit {fmt(result['commit_ms_mean'], 2)} ms), "
        f"{len(polls)} polls (p50 {fmt(result['poll_ms_p50'], 2)} ms); lag p50 {fmt(result['lag_p50_s'], 4)} s, "
        f"p99 {fmt(result['lag_p99_s'], 4)} s, max {fmt(result['lag_max_s'], 4)} s; {unseen} never seen; {len(errors)} write errors")
    return result


def fmt(x, digits=3):
    return "n/a" if x is None else f"{x:.{digits}f}"


def lag_phase(a, b, pg, rate, seconds, poll, result):
    ca = a.db()
    query(ca, "CREATE TABLE IF NOT EXISTS geo_lag(id INTEGER PRIMARY KEY, pad TEXT NOT NULL)")
    query(ca, "DELETE FROM geo_lag")
    cb = b.db()
    wait_until("geo_lag reaches region B, empty", 60,
               lambda: query(cb, "SELECT count(*) AS n FROM geo_lag")[0]["n"] == 0)
    wait_link_ready(a, b)
    lag_sql = "SELECT replication_lag_sec FROM sys.dm_geo_replication_link_status WHERE partner_server = 'B' AND role_desc = 'PRIMARY'"
    result["lag"].append(measure_lag("availdb", ca, cb, a.admin(), lag_sql, rate, seconds, poll))
    if pg:
        primary = f"host=127.0.0.1 port={pg[0]} user=postgres dbname=postgres connect_timeout=2"
        standby = f"host=127.0.0.1 port={pg[1]} user=postgres dbname=postgres connect_timeout=2"
        cascade = f"host=127.0.0.1 port={pg[2]} user=postgres dbname=postgres connect_timeout=2"
        query(primary, "DROP TABLE IF EXISTS geo_lag")
        query(primary, "CREATE TABLE geo_lag(id integer PRIMARY KEY, pad text NOT NULL)")
        wait_until("geo_lag reaches the cascading standby", 60,
                   lambda: query(cascade, "SELECT count(*) AS n FROM geo_lag")[0]["n"] == 0)
        replay_sql = "SELECT extract(epoch FROM replay_lag) FROM pg_stat_replication WHERE application_name = 'cascade1'"
        result["lag"].append(measure_lag("pg", primary, cascade, standby, replay_sql, rate, seconds, poll))


# --- writers for the failover trials ---------------------------------------------------

class Writer(threading.Thread):
    """Inserts ids first, first + 1, … into table (pace seconds apart) on
    the primary of targets[0]; after an error it moves on to the next
    target (when there are several) and a new id: an id is never retried.
    Records (id, region, ack time) and (id, region, sent, error, error time)."""

    def __init__(self, targets, table, first, pace=0.01):
        super().__init__(daemon=True)
        self.targets = targets
        self.table = table
        self.next_id = first
        self.pace = pace
        self.acked = []
        self.errors = []
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def run(self):
        k = 0
        conn = None
        while not self.stop.is_set():
            region = self.targets[k % len(self.targets)]
            i = self.next_id
            self.next_id += 1
            sent = time.monotonic()
            try:
                if conn is None:
                    conn = connect(region.db())
                execute_bounded(conn, f"INSERT INTO {self.table}(id, region) VALUES (%s, %s)", (i, region.name))
                with self.lock:
                    self.acked.append((i, region.name, time.monotonic()))
                time.sleep(self.pace)
            except (psycopg.Error, RuntimeError) as e:
                with self.lock:
                    self.errors.append((i, region.name, sent, first_line(e), time.monotonic()))
                try:
                    if conn is not None:
                        conn.close()
                except psycopg.Error:
                    pass
                conn = None
                k += 1
                time.sleep(RETRY)
        if conn is not None:
            conn.close()

    def snapshot(self):
        with self.lock:
            return list(self.acked), list(self.errors)


def halt(writer):
    writer.stop.set()
    writer.join(WRITE_TIMEOUT + 10)


# --- 2. forced geo-failover --------------------------------------------------------------

def forced_trial(k, src, dst, timeout, result):
    wait_link_ready(src, dst)
    base = (k + 1) * 1_000_000
    query(src.db(), "SELECT 1")
    writer = Writer([src], "geo_fo", base)
    writer.start()
    time.sleep(1.0)
    probe = {"t": None, "attempts": 0, "error": None}
    probe_id = base + 900_000
    dst_admin = dst.admin()
    dst_db = dst.db()
    t0 = time.monotonic()

    def prober():
        conn = None
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            probe["attempts"] += 1
            try:
                if conn is None:
                    conn = connect(dst_db)
                execute_bounded(conn, "INSERT INTO geo_fo(id, region) VALUES (%s, %s)", (probe_id + probe["attempts"], dst.name))
                probe["t"] = time.monotonic()
                probe["id"] = probe_id + probe["attempts"]
                break
            except psycopg.Error as e:
                probe["error"] = first_line(e)
                if isinstance(e, psycopg.OperationalError):
                    conn = None
                time.sleep(RETRY)
        if conn is not None:
            conn.close()

    pt = threading.Thread(target=prober, daemon=True)
    pt.start()
    stmt_error = None
    try:
        query(dst_admin, "ALTER DATABASE app FORCE_FAILOVER_ALLOW_DATA_LOSS", timeout=timeout)
    except psycopg.Error as e:
        stmt_error = first_line(e)
    t_stmt = time.monotonic()
    pt.join(timeout + 10)
    if stmt_error or probe["t"] is None:
        halt(writer)
        raise RuntimeError(f"forced {k} ({src.name} -> {dst.name}): statement {stmt_error or 'ok'}; "
                           f"no commit in {dst.name} within {timeout} s (last error: {probe['error']})")
    # The old source is deposed once the new one reaches it: its writes are refused.
    refused = wait_until(f"forced {k}: {src.name} refuses writes", timeout,
                         lambda: next((e for e in writer.snapshot()[1] if e[2] >= t0), None), poll=0.02)
    halt(writer)
    ready = wait_link_ready(dst, src, timeout=max(timeout, 180))
    t_ready = time.monotonic()
    acked, errors = writer.snapshot()
    on_dst = ids_in(dst_db, "geo_fo", base, base + 900_000)
    before = [(i, t) for i, _, t in acked if t < t0]
    after = [(i, t) for i, _, t in acked if t >= t0]
    lost = [(i, t) for i, t in before if i not in on_dst]
    discarded = [(i, t) for i, t in after if i not in on_dst]
    # The rejoined old source holds exactly the new one's rows (rewound).
    expected = ids_in(dst_db, "geo_fo", base, base + 1_000_000)
    src_db = src.db()
    wait_until(f"forced {k}: {src.name}'s copy holds {dst.name}'s rows", 60,
               lambda: ids_in(src_db, "geo_fo", base, base + 1_000_000) == expected, poll=0.2)
    t = {
        "trial": k,
        "from": src.name,
        "to": dst.name,
        "rto_s": probe["t"] - t0,
        "statement_s": t_stmt - t0,
        "probe_attempts": probe["attempts"],
        "old_source_refuses_s": refused[4] - t0,
        "old_source_last_ack_s": max((t for _, t in after), default=t0) - t0,
        "old_source_refusal": refused[3],
        "rejoin_s": t_ready - t0,
        "acked_before": len(before),
        "acked_after": len(after),
        "lost_before": len(lost),
        "lost_ids": [i for i, _ in lost][:50],
        "rpo_s": (t0 - min(t for _, t in lost)) if lost else 0.0,
        "discarded_after": len(discarded),
        "discarded_lsn_range": ready.get("discarded_lsn_range") if isinstance(ready, dict) else None,
        "writer_errors": len(errors),
    }
    log(f"forced {k}: {src.name} -> {dst.name}: first commit in {dst.name} {t['rto_s']:.3f} s after the statement began "
        f"(statement {t['statement_s']:.3f} s, {probe['attempts']} probe attempts); {src.name} refused writes after "
        f"{t['old_source_refuses_s']:.3f} s; link CATCH_UP lag 0 after {t['rejoin_s']:.1f} s; lost {len(lost)} of {len(before)} "
        f"acknowledged before (RPO {t['rpo_s']:.3f} s), discarded {len(discarded)} of {len(after)} acknowledged after")
    result["forced"].append(t)


# --- 3. planned geo-failover --------------------------------------------------------------

def planned_trial(k, src, dst, timeout, result):
    wait_link_ready(src, dst)
    base = (k + 1) * 1_000_000
    writer = Writer([src, dst], "geo_pl", base)
    writer.start()
    time.sleep(1.0)
    dst_admin = dst.admin()
    t0 = time.monotonic()
    try:
        query(dst_admin, "ALTER DATABASE app FAILOVER", timeout=timeout)
    except psycopg.Error as e:
        halt(writer)
        raise RuntimeError(f"planned {k} ({src.name} -> {dst.name}): FAILOVER failed after "
                           f"{time.monotonic() - t0:.3f} s: {first_line(e)}") from e
    t1 = time.monotonic()
    wait_until(f"planned {k}: a commit in {dst.name} after FAILOVER", timeout,
               lambda: any(r == dst.name and t > t1 for _, r, t in writer.snapshot()[0]), poll=0.02)
    time.sleep(0.5)
    halt(writer)
    acked, errors = writer.snapshot()
    times = [t for _, _, t in acked]
    first_after = next(t for _, r, t in acked if r == dst.name and t > t1)
    window = 0.0
    for x, y in zip(times, times[1:]):
        if y >= t0 and x <= first_after:
            window = max(window, y - x)
    ids = {i for i, _, _ in acked}
    on_dst = ids_in(dst.db(), "geo_pl", base, base + 1_000_000)
    missing = sorted(ids - on_dst)
    wait_link_ready(dst, src, timeout=max(timeout, 180))
    t_follow = time.monotonic()
    src_db = src.db()
    try:
        wait_until(f"planned {k}: {src.name} follows with every acknowledged row", 60,
                   lambda: ids <= ids_in(src_db, "geo_pl", base, base + 1_000_000), poll=0.2)
        missing_src = []
    except RuntimeError:
        missing_src = sorted(ids - ids_in(src_db, "geo_pl", base, base + 1_000_000))
    # Relative to the statement's start: (region, sent, answered, error).
    failed = [(e[1], round(e[2] - t0, 4), round(e[4] - t0, 4), e[3]) for e in errors if e[2] >= t0 - 0.1]
    t = {
        "trial": k,
        "from": src.name,
        "to": dst.name,
        "statement_s": t1 - t0,
        "window_s": window,
        "old_source_follows_s": t_follow - t0,
        "acked": len(acked),
        "missing_new_source": len(missing),
        "missing_ids": missing[:50],
        "missing_old_source": len(missing_src),
        "failed_writes": len(failed),
        "failed_sample": failed[:10],
        "errors_after_statement": sum(1 for f in failed if f[1] > t1 - t0),
    }
    log(f"planned {k}: {src.name} -> {dst.name}: FAILOVER took {t['statement_s']:.3f} s, longest gap between commits "
        f"{window:.3f} s; {len(acked)} acknowledged, {len(missing)} missing on {dst.name}, {len(missing_src)} on {src.name}; "
        f"writer errors meanwhile (region, sent and answered s after the statement began, error): {failed[:5]}")
    result["planned"].append(t)


# --- 4. planned termination ------------------------------------------------------------

def termination(a, b, mb, timeout, result):
    name = f"geo_term_{mb}mb"
    entry = {"database": name, "size_mb": mb}
    result["termination"].append(entry)
    admin = a.admin()
    query(admin, f"CREATE DATABASE {name}")
    query(admin, f"ALTER AVAILABILITY GROUP ag1 ADD DATABASE {name}", timeout=120)
    db = a.db(name)
    wait_until(f"{name} writable on A", 60, lambda: query(db, "SELECT 1"))
    query(db, "CREATE TABLE fill(id INTEGER PRIMARY KEY, pad BLOB NOT NULL)")
    start = time.monotonic()
    with connect(db) as c:
        for _ in range(mb):
            # About 1 MB per transaction: 1000 rows of 1000 random bytes.
            execute_bounded(c, "INSERT INTO fill(pad) SELECT randomblob(1000) FROM generate_series(1, 1000)", timeout=120)
    entry["fill_s"] = time.monotonic() - start
    rows_a = query(db, "SELECT count(*) AS n FROM fill")[0]["n"]
    size = query(db, "PRAGMA page_count")[0]
    page_count = list(size.values())[0]
    page_size = list(query(db, "PRAGMA page_size")[0].values())[0]
    entry["bytes"] = int(page_count) * int(page_size)
    entry["rows"] = rows_a
    log(f"termination {mb} MB: {name} filled with {rows_a} rows, {entry['bytes']} bytes, in {entry['fill_s']:.1f} s")

    start = time.monotonic()
    query(admin, f"ALTER DATABASE {name} ADD SECONDARY ON SERVER 'B' WITH (DATABASE_NAME = '{name}')", timeout=max(120, timeout))
    deadline = start + timeout
    last_note = 0.0
    while True:
        try:
            query(db, f"SELECT sys.wait_for_database_copy_sync('{name}', 'B')", timeout=90)
            break
        except psycopg.Error as e:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: B not synchronized within {timeout} s of ADD SECONDARY: {first_line(e)}") from e
            if time.monotonic() - last_note > 30:
                last_note = time.monotonic()
                r = link_row(a, b, name)
                log(f"termination {mb} MB: still seeding after {time.monotonic() - start:.0f} s "
                    f"({None if r is None else (r['replication_state_desc'], r['percent_complete'])}; {first_line(e)})")
            time.sleep(0.2)
    entry["seeding_s"] = time.monotonic() - start
    wait_link_ready(a, b, name, timeout=max(60, deadline - time.monotonic()))
    entry["caught_up_s"] = time.monotonic() - start
    log(f"termination {mb} MB: B synchronized {entry['seeding_s']:.1f} s after ADD SECONDARY "
        f"({entry['bytes'] / 1e6 / entry['seeding_s']:.1f} MB/s), CATCH_UP lag 0 after {entry['caught_up_s']:.1f} s")

    start = time.monotonic()
    query(admin, f"ALTER DATABASE {name} REMOVE SECONDARY ON SERVER 'B'", timeout=120)
    entry["termination_s"] = time.monotonic() - start
    bdb = b.db(name)
    entry["rows_b"] = wait_until(f"{name} readable on B", 60,
                                 lambda: (query(bdb, "SELECT count(*) AS n FROM fill")[0]["n"],))[0]
    try:
        query(bdb, "INSERT INTO fill(pad) VALUES (randomblob(10))")
        entry["b_write"] = "ok"
    except psycopg.Error as e:
        entry["b_write"] = first_line(e)
    log(f"termination {mb} MB: REMOVE SECONDARY took {entry['termination_s']:.3f} s; B holds {entry['rows_b']} rows "
        f"(A {rows_a}); a write on B: {entry['b_write']}")
    # Best effort: free the disk before the next size.
    for region, ci in ((a, admin), (b, b.admin())):
        for sql in (f"ALTER AVAILABILITY GROUP ag1 REMOVE DATABASE {name}", f"DROP DATABASE {name}"):
            try:
                query(ci, sql, timeout=60)
            except psycopg.Error as e:
                entry.setdefault("cleanup", []).append(f"{region.name}: {sql}: {first_line(e)}")


# --- CSV rows ----------------------------------------------------------------------------

def csv_rows(r):
    """The run CSV's rows for these results (column -> value)."""
    out = []
    for x in r["lag"]:
        out.append({
            "kind": "geo_lag", "scenario": "geo", "system": x["system"], "seconds": x["seconds"],
            "tps": round(x["achieved_rate"], 1) if x["achieved_rate"] else "", "transactions": x["acked"],
            "failed": x["errors"], "rows": len(x["lag_s"]),
            "latency_avg_ms": round(x["commit_ms_mean"], 3) if x["commit_ms_mean"] is not None else "",
            **{f"{p}_ms": round(x[f"lag_{p}_s"] * 1000, 2) if x[f"lag_{p}_s"] is not None else ""
               for p in ("p50", "p95", "p99", "max")},
            "note": f"target {x['rate']}/s; polls every ~{r['config']['poll_s'] * 1000:g} ms, p50 poll {fmt(x['poll_ms_p50'], 2)} ms; "
                    f"{x['unseen']} ids never seen",
        })
        for t, v in x["samples"]:
            out.append({"kind": "geo_lag_sample", "scenario": "geo", "system": x["system"], "t_s": f"{t:.3f}",
                        "secondary_lag_s": "" if v is None else v})
    for t in r["forced"]:
        sysname = f"{t['from']}->{t['to']}"
        for phase, key in (("rto", "rto_s"), ("statement", "statement_s"),
                           ("old_source_last_ack", "old_source_last_ack_s"),
                           ("old_source_refuses", "old_source_refuses_s"), ("rejoin", "rejoin_s")):
            out.append({"kind": "geo_forced", "scenario": "geo", "system": sysname, "trial": t["trial"],
                        "phase": phase, "elapsed_s": f"{t[key]:.4f}"})
        out.append({"kind": "geo_forced", "scenario": "geo", "system": sysname, "trial": t["trial"], "phase": "lost",
                    "rows": t["lost_before"], "expected_rows": t["acked_before"], "elapsed_s": f"{t['rpo_s']:.4f}",
                    "note": "acknowledged on the old source before the statement, absent in the new one; elapsed_s = age of the oldest at the statement's start"})
        out.append({"kind": "geo_forced", "scenario": "geo", "system": sysname, "trial": t["trial"], "phase": "discarded",
                    "rows": t["discarded_after"], "expected_rows": t["acked_after"],
                    "note": f"acknowledged on the old source after the statement began (until it was deposed), absent in the new one; discarded_lsn_range {t['discarded_lsn_range']}"})
    for t in r["planned"]:
        sysname = f"{t['from']}->{t['to']}"
        for phase, key in (("statement", "statement_s"), ("window", "window_s"), ("old_source_follows", "old_source_follows_s")):
            out.append({"kind": "geo_planned", "scenario": "geo", "system": sysname, "trial": t["trial"],
                        "phase": phase, "elapsed_s": f"{t[key]:.4f}"})
        out.append({"kind": "geo_planned", "scenario": "geo", "system": sysname, "trial": t["trial"], "phase": "lost",
                    "rows": t["missing_new_source"] + t["missing_old_source"], "expected_rows": t["acked"],
                    "failed": t["failed_writes"],
                    "note": f"acknowledged ids missing: {t['missing_new_source']} on the new source, {t['missing_old_source']} on the old one; "
                            f"writer errors (region, sent, answered s after the statement began): "
                            + "; ".join(f"{f[0]} {f[1]:.3f} {f[2]:.3f} {f[3]}" for f in t["failed_sample"])})
    for e in r["termination"]:
        base = {"kind": "geo_termination", "scenario": "geo", "system": e["database"], "size_mb": e["size_mb"],
                "bytes": e.get("bytes", "")}
        if "fill_s" in e:
            out.append({**base, "phase": "fill", "elapsed_s": f"{e['fill_s']:.3f}",
                        "mb_per_s": f"{e['bytes'] / 1e6 / e['fill_s']:.1f}" if e["fill_s"] > 0 else "", "rows": e.get("rows", "")})
        if "seeding_s" in e:
            out.append({**base, "phase": "seeding", "elapsed_s": f"{e['seeding_s']:.3f}",
                        "mb_per_s": f"{e['bytes'] / 1e6 / e['seeding_s']:.1f}",
                        "note": "ADD SECONDARY -> sys.wait_for_database_copy_sync returned"})
        if "caught_up_s" in e:
            out.append({**base, "phase": "caught_up", "elapsed_s": f"{e['caught_up_s']:.3f}",
                        "note": "ADD SECONDARY -> link CATCH_UP with lag 0"})
        if "termination_s" in e:
            out.append({**base, "phase": "termination", "elapsed_s": f"{e['termination_s']:.4f}",
                        "rows": e.get("rows_b", ""), "expected_rows": e.get("rows", ""),
                        "note": f"REMOVE SECONDARY ON SERVER 'B' (planned); then a write on B: {e.get('b_write')}"})
        if e.get("error"):
            out.append({**base, "phase": "error", "note": e["error"][:500]})
    return out


def append_csv(path, rows):
    with open(path, newline="") as f:
        header = next(csv.reader(f))
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header, extrasaction="raise")
        for row in rows:
            w.writerow({k: row.get(k, "") for k in header})


def checks(r):
    """(failures, notes) of the results: lost acknowledged rows in a planned
    failover, a termination whose copy lacks rows or refuses writes, a phase
    that stopped early."""
    bad, ok = [], []
    for x in r["lag"]:
        if x["unseen"] or x["errors"]:
            bad.append(f"geo lag, {x['system']}: {x['unseen']} committed ids never seen on the copy, {x['errors']} write errors")
        else:
            ok.append(f"geo lag, {x['system']}: every one of the {x['acked']} committed ids was seen on the copy")
    for t in r["planned"]:
        if t["missing_new_source"] or t["missing_old_source"]:
            bad.append(f"geo planned failover {t['trial']} ({t['from']} -> {t['to']}): acknowledged ids missing: "
                       f"{t['missing_new_source']} on the new source, {t['missing_old_source']} on the old one (first: {t['missing_ids'][:10]})")
    if r["planned"]:
        ok.append(f"geo planned failover: in each of {len(r['planned'])} trial(s), every acknowledged id was on the new source and, once it followed, on the old one (unless marked FAILED)")
    if r["forced"]:
        ok.append(f"geo forced failover: in each of {len(r['forced'])} trial(s), the old source rejoined (link CATCH_UP, lag 0) and held exactly the new source's rows")
    for e in r["termination"]:
        if e.get("error"):
            bad.append(f"geo termination {e['size_mb']} MB: {e['error'][:300]}")
        elif e.get("rows_b") != e.get("rows") or e.get("b_write") != "ok":
            bad.append(f"geo termination {e['size_mb']} MB: B holds {e.get('rows_b')} rows (A {e.get('rows')}); a write on B: {e.get('b_write')}")
        else:
            ok.append(f"geo termination {e['size_mb']} MB: B's copy held A's {e['rows']} rows and took a write")
    for phase, err in r["errors"].items():
        bad.append(f"geo {phase} stopped early: {err[:400]}")
    return bad, ok


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a-ports", required=True, help="region A's node client ports, comma-separated")
    p.add_argument("--b-ports", required=True)
    p.add_argument("--data-dir", required=True, help="`up`'s --data-dir (A/ and B/ below it)")
    p.add_argument("--pg", default="", help="PostgreSQL primary,standby,cascade ports (empty: no PostgreSQL)")
    p.add_argument("--rate", type=float, default=200)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--poll", type=float, default=0.01)
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--sizes", default="1 100 1000")
    p.add_argument("--size-timeout", type=float, default=900, help="seconds a size may take to synchronize")
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--phases", default="lag,forced,planned,termination")
    p.add_argument("--csv", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    sys.setswitchinterval(0.0005)  # the writer's and the poller's wake-ups are not held up by the other threads

    ra = Region("A", [int(x) for x in a.a_ports.split(",")], os.path.join(a.data_dir, "A"))
    rb = Region("B", [int(x) for x in a.b_ports.split(",")], os.path.join(a.data_dir, "B"))
    pg = [int(x) for x in a.pg.split(",")] if a.pg else None
    phases = a.phases.split(",")
    sizes = [int(x) for x in a.sizes.split()]
    result = {"config": {"rate": a.rate, "seconds": a.seconds, "poll_s": a.poll, "trials": a.trials, "sizes_mb": sizes,
                         "phases": phases, "timeout_s": a.timeout, "size_timeout_s": a.size_timeout},
              "lag": [], "forced": [], "planned": [], "termination": [], "errors": {}}

    def run(phase, fn):
        if phase not in phases:
            return
        try:
            fn()
        except Exception as e:  # recorded; the next phases still run
            result["errors"][phase] = f"{type(e).__name__}: {e}"
            log(f"{phase} stopped: {result['errors'][phase]}")

    run("lag", lambda: lag_phase(ra, rb, pg, a.rate, a.seconds, a.poll, result))

    source = {"region": ra}  # where `app` is written now

    def forced():
        query(source["region"].db(), "CREATE TABLE IF NOT EXISTS geo_fo(id INTEGER PRIMARY KEY, region TEXT NOT NULL)")
        for k in range(a.trials):
            src = source["region"]
            dst = rb if src is ra else ra
            forced_trial(k, src, dst, a.timeout, result)
            source["region"] = dst

    def planned():
        query(source["region"].db(), "CREATE TABLE IF NOT EXISTS geo_pl(id INTEGER PRIMARY KEY, region TEXT NOT NULL)")
        for k in range(a.trials):
            src = source["region"]
            dst = rb if src is ra else ra
            planned_trial(k, src, dst, a.timeout, result)
            source["region"] = dst

    def sizes_phase():
        for mb in sizes:
            try:
                termination(ra, rb, mb, a.size_timeout, result)
            except Exception as e:
                entry = result["termination"][-1] if result["termination"] else {"size_mb": mb}
                entry["error"] = f"{type(e).__name__}: {e}"
                log(f"termination {mb} MB: {entry['error']}")

    run("forced", forced)
    run("planned", planned)
    run("termination", sizes_phase)

    bad, ok = checks(result)
    result["failures"] = bad
    result["checks"] = ok
    result["logs"] = ra.logs() + rb.logs()
    append_csv(a.csv, csv_rows(result))
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
