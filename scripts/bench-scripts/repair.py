#!/usr/bin/env python3
"""Automatic page repair and scrubbing measurements (scripts/bench repair,
issue 13). It starts everything itself: three `availdb server` nodes on
loopback (r1..r3 serve clients on PORT+1..+3, replication endpoints on
PORT+101..+103), availability group ag1 of database app (r1 primary, r2 and
r3 synchronous secondaries), --size-mb MB of rows in app.t (memory.py's
table). The nodes are restarted on the same data with each scrub rate the
steps need (`--scrub-kib-per-s`); "the primary" below is whichever node is
primary at each step.

1. Commit cost of scrubbing: pgbench (insert.sql, -c --clients, --seconds)
   on the primary with the scrub at its default rate (4096 KiB/s) and off
   (0), --trials times alternating; TPS, p50 and p99 of each run, and the
   scrub's progress on the primary during the run (pages verified, passes).
   Read cost, right after each of those runs on the same nodes: pgbench
   point selects on app.t (random ids, -c --clients, --seconds) on the
   primary; with no writes going on, the scrub reads at its full rate.
   Each run also reports the CPU time the three nodes used per
   transaction (/proc), a cost the machine's load does not move as much
   as TPS.
   A run that a failover interrupts is run again on the new primary (twice
   at most; `reruns_after_failover`, and the `failovers` row counts them).
2. Scrubber throughput at full speed: the nodes restarted with an
   unbounded rate; a full pass of app on the primary and on a secondary
   that began after both secondaries were SYNCHRONIZED (a secondary's pass also compares each run of pages with the
   primary's, the primary's with its secondaries'), from the view's
   last_full_pass_seconds: MB/s = pages x page size / seconds.
3. Time from a bit flip in a cold page to its repair by the scrubber, at
   the default rate: --flips times, one bit of a random page of r2's file
   (no query reads it) is flipped and the time until r2's
   sys.dm_hadr_auto_page_repair shows the page repaired is taken; the
   bound it must meet is a pass (file size / rate) plus the 5 s between
   passes, and a run over twice that fails the scenario.
4. The cost of page checksums on the commit benchmark: availdb has no
   switch that turns them off (every new database gets them), so it is not
   measured; the row says so.

No wall-clock number is asserted anywhere; a wait that runs out is a
failure of the run. Results: JSON (--out: rows and failures) and a CSV of
one row per measurement (--csv); a summary is printed.
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time

import benchlib
from memory import ROWS_PER_MB, Procs, connect, make_table, wait_sql, write_results

HERE = os.path.dirname(os.path.abspath(__file__))
NODES = 3
DEFAULT_KIB = 4096
UNBOUNDED_KIB = 100_000_000  # 100 GB/s: no pause between chunks
PASS_EVERY_S = 5  # a database's passes start at most this often (src/repair/scrub.rs)


class Group:
    """Three `availdb server` processes and their group; restarted on the
    same data directories with another scrub rate when asked."""

    def __init__(self, binary, work, port):
        self.binary, self.work, self.port = binary, work, port
        self.procs = None
        self.restarts = 0

    def client(self, i):
        return self.port + 1 + i

    def endpoint(self, i):
        return self.port + 101 + i

    def data(self, i):
        return os.path.join(self.work, f"r{i + 1}")

    def start(self, scrub_kib):
        self.stop()
        self.procs = Procs()
        for i in range(NODES):
            os.makedirs(self.data(i), exist_ok=True)
            self.procs.start(f"r{i + 1}", [
                self.binary, "server", "--data-dir", self.data(i), "--port", str(self.client(i)),
                "--name", f"r{i + 1}", "--endpoint", f"127.0.0.1:{self.endpoint(i)}", "--http-port", "0",
                "--scrub-kib-per-s", str(scrub_kib)], os.path.join(self.work, f"r{i + 1}-{self.restarts}.log"))
        self.restarts += 1
        for i in range(NODES):
            wait_sql(self.client(i), "availdb", within=180)

    def cpu_seconds(self):
        """CPU time (user + system) the three nodes have used so far:
        a cost that, unlike TPS, does not move with the machine's load."""
        total = 0
        for _, proc in self.procs.procs:
            with open(f"/proc/{proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self):
        if self.procs:
            self.procs.stop()
            self.procs = None

    def define(self):
        for i in range(1, NODES):
            with connect(self.client(i), "availdb") as c:
                c.execute("ALTER AVAILABILITY GROUP ag1 JOIN")
        replicas = ", ".join(
            f"'r{i + 1}' WITH (ENDPOINT_URL = 'tcp://127.0.0.1:{self.endpoint(i)}', "
            "AVAILABILITY_MODE = SYNCHRONOUS_COMMIT, FAILOVER_MODE = AUTOMATIC)" for i in range(NODES))
        with connect(self.client(0), "availdb") as c:
            c.execute("CREATE DATABASE app")
            c.execute(f"CREATE AVAILABILITY GROUP ag1 FOR DATABASE app REPLICA ON {replicas}")

    def primary(self, within=180):
        """The index of the node that is primary and takes writes, once
        every secondary is SYNCHRONIZED and has redone everything."""
        deadline = time.time() + within
        last = None
        while True:
            for i in range(NODES):
                try:
                    with connect(self.client(i), "availdb") as c:
                        role = c.execute("SELECT role_desc FROM sys.dm_hadr_availability_replica_states "
                                         "WHERE is_local").fetchone()
                        if not role or role[0] != "PRIMARY":
                            continue
                        states = c.execute(
                            "SELECT synchronization_state_desc, redo_queue_size FROM "
                            "sys.dm_hadr_database_replica_states WHERE database_name = 'app' AND NOT is_local"
                        ).fetchall()
                    last = states
                    if len(states) == NODES - 1 and all(s == "SYNCHRONIZED" and not q for s, q in states):
                        with connect(self.client(i), "app") as c:
                            c.execute("CREATE TABLE IF NOT EXISTS kv_insert (client INTEGER NOT NULL, v TEXT NOT NULL)")
                        return i
                except Exception as e:  # noqa: BLE001 - a node starting: ask again
                    last = str(e)
            if time.time() > deadline:
                raise RuntimeError(f"no writable primary with both secondaries SYNCHRONIZED within {within} s: {last}")
            time.sleep(0.5)

    def scrub_row(self, i):
        with connect(self.client(i), "app") as c:
            row = c.execute(
                "SELECT page_count, pages_verified, passes_completed, last_full_pass_seconds, "
                "damaged_pages_found, rate_bytes_per_second FROM sys.dm_hadr_page_scrub_status "
                "WHERE database_name = 'app'").fetchone()
        keys = ("pages", "pages_verified", "passes", "last_pass_s", "damaged_found", "rate")
        return dict(zip(keys, row)) if row else None


def pgbench(port, seconds, clients, log_dir, script=os.path.join(HERE, "insert.sql")):
    os.makedirs(log_dir, exist_ok=True)
    cmd = ["pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", "availdb", "-n", "-M", "prepared",
           "-c", str(clients), "-j", str(clients), "-T", str(seconds), "-f",
           script, "--log", "--log-prefix", os.path.join(log_dir, "tx"), "app"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    if run.returncode != 0:
        raise RuntimeError(f"pgbench exited {run.returncode}: {run.stderr.strip()[-600:]}")
    summary = benchlib.parse_pgbench_summary(run.stdout)
    lat = benchlib.latencies_in(log_dir)
    return {
        "tps": summary.get("tps"),
        "p50_ms": round(benchlib.percentile(lat, 50) / 1000, 3),
        "p99_ms": round(benchlib.percentile(lat, 99) / 1000, 3),
        "transactions": len(lat),
    }


def page_size_of(path):
    with open(path, "rb") as f:
        header = f.read(100)
    size = int.from_bytes(header[16:18], "big")
    return 65536 if size == 1 else size


def flip(path, pgno):
    """Flips one bit in the middle of page `pgno` of the file at `path`."""
    size = page_size_of(path)
    at = (pgno - 1) * size + size // 2 + 3
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0x04]))
        f.flush()
        os.fsync(f.fileno())


def repaired(port, pgno):
    with connect(port, "app") as c:
        return c.execute(
            "SELECT 1 FROM sys.dm_hadr_auto_page_repair WHERE database_name = 'app' AND page_id = %s "
            "AND page_status_desc = 'AUTOMATIC_PAGE_REPAIR_SUCCEEDED'", (pgno,)).fetchone() is not None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--size-mb", type=int, default=256)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--flips", type=int, default=5)
    ap.add_argument("--out", required=True)
    ap.add_argument("--csv", required=True)
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    group = Group(args.bin, args.work, args.port)
    rows, failures = [], []

    def record(row):
        rows.append(row)
        print("repair: " + json.dumps(row), flush=True)

    try:
        group.start(DEFAULT_KIB)
        group.define()
        p = group.primary()
        make_table(group.client(p), "app", "t", args.size_mb, False, "availdb")
        group.primary()
        select_sql = os.path.join(args.work, "select.sql")
        with open(select_sql, "w") as f:
            f.write(f"\\set id random(1, {args.size_mb * ROWS_PER_MB})\nSELECT v FROM t WHERE id = :id;\n")

        # --- 1. commits with the scrub at its default rate and off
        for trial in range(args.trials):
            for kib in (DEFAULT_KIB, 0):
                group.start(kib)
                reruns = 0
                while True:
                    p = group.primary()
                    before = group.scrub_row(p)
                    cpu_before = group.cpu_seconds()
                    try:
                        result = pgbench(group.client(p), args.seconds, args.clients,
                                         os.path.join(args.work, f"pgbench-{trial}-{kib}-{reruns}"))
                        break
                    except RuntimeError as e:
                        # A failover during the run (the nodes were all just
                        # restarted, on a shared machine): run it again on
                        # the new primary, twice at most; counted.
                        if reruns == 2 or "stopped taking writes" not in str(e):
                            raise
                        reruns += 1
                        print(f"repair: pgbench ran into a failover, running it again: {e}", flush=True)
                after = group.scrub_row(p)
                cpu_ms = (group.cpu_seconds() - cpu_before) * 1000
                record({"measure": "commit", "scrub_kib_per_s": kib, "trial": trial, "clients": args.clients,
                        "seconds": args.seconds, "reruns_after_failover": reruns, **result,
                        "nodes_cpu_ms_per_tx": round(cpu_ms / max(result["transactions"], 1), 3),
                        "scrub_pages_verified": after and after["pages_verified"],
                        "scrub_passes": after and after["passes"],
                        "scrub_passes_before": before and before["passes"]})
                p = group.primary()
                cpu_before = group.cpu_seconds()
                result = pgbench(group.client(p), args.seconds, args.clients,
                                 os.path.join(args.work, f"select-{trial}-{kib}"), select_sql)
                cpu_ms = (group.cpu_seconds() - cpu_before) * 1000
                record({"measure": "read", "scrub_kib_per_s": kib, "trial": trial, "clients": args.clients,
                        "seconds": args.seconds, **result,
                        "nodes_cpu_ms_per_tx": round(cpu_ms / max(result["transactions"], 1), 3)})

        # --- 2. the scrubber at full speed
        group.start(UNBOUNDED_KIB)
        p = group.primary()
        s = (p + 1) % NODES
        path = os.path.join(group.data(s), "databases", "app.db")
        page_size = page_size_of(path)
        deadline = time.time() + 600 + args.size_mb
        pending = {"primary": p, "secondary": s}
        # A pass that began before both secondaries were SYNCHRONIZED
        # compared less: the second pass ended from here on began after.
        since = {i: (group.scrub_row(i) or {}).get("passes") or 0 for i in pending.values()}
        while pending:
            for role, i in list(pending.items()):
                row = group.scrub_row(i)
                if row and row["passes"] >= since[i] + 2 and row["last_pass_s"]:
                    mb = row["pages"] * page_size / 1e6
                    record({"measure": "scrub_throughput", "role": role, "replica": f"r{i + 1}",
                            "pages": row["pages"], "page_size": page_size, "seconds": round(row["last_pass_s"], 3),
                            "mb_s": round(mb / row["last_pass_s"], 1)})
                    del pending[role]
            if pending and time.time() > deadline:
                raise RuntimeError(f"no full scrub pass at full speed on {sorted(pending)} within the wait")
            time.sleep(0.2)

        # --- 3. a bit flip in a cold page, found and repaired by the scrub
        group.start(DEFAULT_KIB)
        p = group.primary()
        s = (p + 1) % NODES
        path = os.path.join(group.data(s), "databases", "app.db")
        pages = os.path.getsize(path) // page_size_of(path)
        bound = pages * page_size_of(path) / (DEFAULT_KIB * 1024) + PASS_EVERY_S
        chosen = random.Random(13).sample(range(2, pages + 1), min(args.flips, pages - 1))
        for pgno in chosen:
            flip(path, pgno)
            start = time.perf_counter()
            while not repaired(group.client(s), pgno):
                if time.perf_counter() - start > 2 * bound + 60:
                    raise RuntimeError(f"page {pgno} of r{s + 1} was not repaired within {2 * bound + 60:.0f} s")
                time.sleep(0.05)
            took = time.perf_counter() - start
            record({"measure": "flip_to_repair", "replica": f"r{s + 1}", "pgno": pgno, "pages": pages,
                    "seconds": round(took, 2), "pass_bound_s": round(bound, 1)})
            if took > 2 * bound:
                failures.append(f"page {pgno}: repaired after {took:.1f} s, over twice a pass ({bound:.1f} s)")
        with connect(group.client(s), "app") as c:
            check = c.execute("PRAGMA integrity_check").fetchone()[0]
        if check != "ok":
            failures.append(f"r{s + 1}'s integrity_check after the repairs: {check}")

        # --- 4. page checksums' cost
        record({"measure": "checksum_cost", "measured": False,
                "why": "availdb has no switch that turns page checksums off: every new database gets them "
                       "(docs/page-checksums.md); a database created without them cannot be made by availdb"})
        with connect(group.client(p), "availdb") as c:
            failovers = c.execute("SELECT count(*) FROM sys.dm_hadr_failover_history").fetchone()[0]
        record({"measure": "failovers", "count": failovers})
    except Exception as e:  # noqa: BLE001 - reported in the results
        failures.append(f"{type(e).__name__}: {e}")
        print(f"repair: FAILED {e}", file=sys.stderr, flush=True)
    finally:
        group.stop()
    summarize(rows)
    write_results(args.out, args.csv, rows, failures, "measure")
    for failure in failures:
        print(f"repair: FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


def summarize(rows):
    for measure in ("commit", "read"):
        measured = [r for r in rows if r["measure"] == measure]
        for kib in (DEFAULT_KIB, 0):
            runs = [r for r in measured if r["scrub_kib_per_s"] == kib]
            if runs:
                print(f"repair: {measure}, scrub {kib} KiB/s: median TPS {benchlib.median([r['tps'] for r in runs])}, "
                      f"median p99 {benchlib.median([r['p99_ms'] for r in runs])} ms, "
                      f"median CPU of the three nodes per transaction "
                      f"{benchlib.median([r['nodes_cpu_ms_per_tx'] for r in runs])} ms over {len(runs)} run(s)")
    for r in rows:
        if r["measure"] == "scrub_throughput":
            print(f"repair: full-speed scrub on the {r['role']}: {r['mb_s']} MB/s ({r['pages']} pages in {r['seconds']} s)")
    flips = [r["seconds"] for r in rows if r["measure"] == "flip_to_repair"]
    if flips:
        print(f"repair: bit flip to repair: median {benchlib.median(flips)} s, max {max(flips)} s over {len(flips)} flip(s)")


if __name__ == "__main__":
    sys.exit(main())
