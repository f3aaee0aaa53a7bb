#!/usr/bin/env python3
"""Backup and restore measurements (scripts/bench backup, issue 12). It
starts everything itself, on loopback ports from --port:

    PORT+10, +11        PostgreSQL with a synchronous standby (scripts/pg-sync-standby)
    PORT+20..23, +120.., +170..  availdb `up --replicas 2` (r1 on PORT+22, r2
                        on PORT+23; "r1" below is whichever is primary at
                        each step, "r2" the secondary, and the failovers of
                        the run are counted)
    PORT+30             PostgreSQL started on a restored base backup

The same data everywhere: --size-mb MB of rows of 1,000 random hex
characters (500 random bytes: they compress about 2-fold), in availdb's
`app` (memory.py's table, on r1, replicated to r2), in PostgreSQL's
`postgres` (pgcrypto's gen_random_bytes), and in a plain SQLite file.

1. Backup: availdb `BACKUP DATABASE app … WITH COPY_ONLY` on the secondary
   r2, with and without COMPRESSION; `pg_basebackup` of the PostgreSQL
   primary, plain (-Fp) and compressed (-Ft -Z zstd), both with
   --checkpoint=fast and -X fetch; SQLite's online backup API
   (`.backup`) and `VACUUM INTO` of the SQLite file. Throughput is the
   database's bytes over the wall time (MB/s, 1 MB = 10^6 bytes).
2. Restore: availdb `RESTORE DATABASE … WITH RECOVERY` of the compressed
   backup on r1 (a new database); PostgreSQL: extracting the compressed base
   backup and starting a server on it until it accepts connections (its
   recovery of the WAL included).
3. Commit latency during a backup on the secondary: pgbench (insert.sql,
   -c 4, --seconds) on r1 with no backup, then with COPY_ONLY backups of
   r2 running one after another for the whole run; TPS and p50/p99 of
   both, --trials times alternating; for each read rate of
   --commit-kib-per-s in turn (the group restarted with it, in the
   nodes' environment: AVAILDB_BACKUP_KIB_PER_S, "default" for none).
4. Point-in-time restore: a full backup on r1, --log-mb MB of writes with
   a time noted half-way, a log backup; then RESTORE DATABASE … WITH
   NORECOVERY + RESTORE LOG … WITH STOPAT = that time, RECOVERY, timed, and
   the restored rows checked (every row written before the time, none
   after).

The group starts with --backup-kib-per-s (default 0: backups unlimited,
so that 1. measures how fast a backup can go; "default" for the nodes'
own default).

Results: JSON (--out) and a CSV of one row per measurement (--csv).
"""

import argparse
import datetime
import glob
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time

import benchlib
from memory import ROWS_PER_MB, Procs, connect, make_table, row_ranges, wait_sql, write_results

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))


def pg_bin():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        raise RuntimeError("no PostgreSQL under /usr/lib/postgresql (Debian's postgresql package)")
    return os.path.dirname(found[-1])


def as_postgres(argv):
    # PostgreSQL's server refuses root; scripts/pg-sync-standby does the same.
    return ["runuser", "-u", "postgres", "--"] + argv if os.geteuid() == 0 else argv


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def wait_synchronized(port, db, within=1800):
    deadline = time.time() + within
    while True:
        with connect(port, "availdb") as c:
            rows = c.execute(
                "SELECT synchronization_state_desc, redo_queue_size FROM "
                f"sys.dm_hadr_database_replica_states WHERE database_name = '{db}' AND NOT is_local"
            ).fetchall()
        if rows and all(st == "SYNCHRONIZED" and (q or 0) == 0 for st, q in rows):
            return
        if time.time() > deadline:
            raise RuntimeError(f"{db}: secondaries not caught up within {within} s: {rows}")
        time.sleep(0.5)


def roles(port_a, port_b, within=120):
    # (primary's port, secondary's port): a failover during the run (a
    # lease lost under the disk load of a restore, say) is followed, and
    # counted at the end.
    deadline = time.time() + within
    while True:
        found = {}
        for port in (port_a, port_b):
            try:
                with connect(port, "availdb") as c:
                    role = c.execute("SELECT role_desc FROM sys.dm_hadr_availability_replica_states "
                                     "WHERE is_local").fetchone()
                found[port] = role[0] if role else None
            except Exception:  # noqa: BLE001 - a node restarting: ask again
                found[port] = None
        primary = [p for p, r in found.items() if r == "PRIMARY"]
        secondary = [p for p, r in found.items() if r == "SECONDARY"]
        if primary and secondary:
            try:
                with connect(primary[0], "app") as c:
                    c.execute("CREATE TABLE IF NOT EXISTS kv_insert (client INTEGER NOT NULL, v TEXT NOT NULL)")
                return primary[0], secondary[0]
            except Exception:  # noqa: BLE001 - not writable yet
                pass
        if time.time() > deadline:
            raise RuntimeError(f"no writable primary and secondary within {within} s: {found}")
        time.sleep(0.5)


def pg_table(port, mb):
    # memory.py's PostgreSQL rows repeat one md5 (they compress 30-fold);
    # a backup comparison needs rows as random as availdb's hex(randomblob()).
    with connect(port, "postgres", "postgres") as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS pgcrypto")
        c.execute("DROP TABLE IF EXISTS t")
        c.execute("CREATE TABLE t(id bigint PRIMARY KEY, v TEXT NOT NULL)")
        for first, last in row_ranges(mb * ROWS_PER_MB):
            c.execute("INSERT INTO t SELECT value, encode(gen_random_bytes(500), 'hex') "
                      f"FROM generate_series({first}, {last}) AS value")


def drop_database(port, name, within=30):
    # The server ends a closed session's hold on its database a moment
    # after the client closes it.
    deadline = time.time() + within
    while True:
        try:
            with connect(port, "availdb") as c:
                c.execute(f"DROP DATABASE {name}")
            return
        except Exception:  # noqa: BLE001 - retried until the deadline
            if time.time() > deadline:
                raise
            time.sleep(0.2)


def sqlite_file(path, mb):
    # The same rows as memory.py's tables, in a plain SQLite file (WAL, as
    # availdb's are).
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    for first, last in row_ranges(mb * ROWS_PER_MB):
        db.execute(
            "WITH RECURSIVE s(x) AS (SELECT ? UNION ALL SELECT x + 1 FROM s WHERE x < ?) "
            "INSERT INTO t SELECT x, hex(randomblob(500)) FROM s",
            (first, last),
        )
        db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def pgbench(port, seconds, clients, log_dir):
    os.makedirs(log_dir, exist_ok=True)
    cmd = ["pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", "availdb", "-n", "-M", "prepared",
           "-c", str(clients), "-j", str(clients), "-T", str(seconds), "-f",
           os.path.join(HERE, "insert.sql"), "--log", "--log-prefix", os.path.join(log_dir, "tx"), "app"]
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


def files_in(paths):
    """The files `paths` name, directories walked."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            files.extend(os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
        else:
            files.append(path)
    return [f for f in files if os.path.isfile(f)]


def refill_page_cache(paths):
    """Drops the page cache (root only) and reads the files of `paths` into
    it again; returns whether it could drop it.

    Why: on a virtual machine whose host backs the guest's memory lazily,
    writing memory the guest has not used lately is an order of magnitude
    slower. On the bench machine `dd` to a tmpfs wrote 2.8-3.4 GB/s for
    the first 8-9 GB and 140-200 MB/s after, whatever `free` said. The load
    phase here writes about 10 GB (four systems' data, logs and WAL), so
    without this every backup and restore after it ran at that speed, all
    systems alike. Dropping the cache frees memory the guest has used, and
    only the sources of what is timed come back."""
    dropped = False
    if os.geteuid() == 0:
        os.sync()
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("1\n")
            dropped = True
        except OSError as e:
            print(f"backup: NOTE: could not drop the page cache ({e}): the timings after the load may "
                  "measure the machine's memory, not the backups", flush=True)
    else:
        print("backup: NOTE: not root, the page cache is not dropped after the load: the timings may "
              "measure the machine's memory, not the backups", flush=True)
    for name in files_in(paths):
        with open(name, "rb") as f:
            while f.read(8 << 20):
                pass
    return dropped


def warm_memory(directory, nbytes):
    """Writes `nbytes` to a file in `directory` and removes it, just before
    a timed step writes about that much: the step then writes memory the
    guest has just used (see `refill_page_cache`), whichever system runs
    it. Outside the timed part."""
    path = os.path.join(directory, f"warm-{os.getpid()}.tmp")
    chunk = bytes(8 << 20)
    with open(path, "wb") as f:
        for _ in range(0, nbytes, len(chunk)):
            f.write(chunk)
    os.remove(path)


def in_page_cache(paths):
    """How much of `paths` (files, or directories walked) the page cache
    holds (util-linux `fincore`): the fraction of their bytes (None where
    fincore is missing), their bytes and how many files."""
    files = files_in(paths)
    if not files or shutil.which("fincore") is None:
        return {"fraction": None, "bytes": None, "files": len(files)}
    out = subprocess.run(["fincore", "-b", "-n", "-r", "-o", "RES,SIZE"] + files,
                         capture_output=True, text=True)
    resident = size = 0
    for line in out.stdout.splitlines():
        cols = line.split()
        if len(cols) == 2 and cols[0].isdigit() and cols[1].isdigit():
            resident, size = resident + int(cols[0]), size + int(cols[1])
    return {"fraction": round(resident / size, 3) if size else None, "bytes": size, "files": len(files)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--log-mb", type=int, default=100)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--backup-kib-per-s", default="0")
    ap.add_argument("--commit-kib-per-s", default="0,default")
    ap.add_argument("--backups-dir", default="",
                    help="write every backup here (e.g. a tmpfs such as /dev/shm, to measure with the page "
                         "cache as the destination) instead of under --work; emptied at the end")
    ap.add_argument("--out", required=True)
    ap.add_argument("--csv", required=True)
    args = ap.parse_args()
    p, mb = args.port, args.size_mb
    r1, r2 = p + 22, p + 23
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    if os.geteuid() == 0:
        shutil.chown(args.work, "postgres", "postgres")
    if args.backups_dir:
        backups = os.path.join(args.backups_dir, f"availdb-bench-backups-{os.getpid()}")
        shutil.rmtree(backups, ignore_errors=True)
    else:
        backups = os.path.join(args.work, "backups")
    os.makedirs(backups)
    if os.geteuid() == 0:
        shutil.chown(backups, "postgres", "postgres")
    destination = args.backups_dir or "the work directory"
    procs = Procs()
    rows = []
    failures = []
    pg_dir = os.path.join(args.work, "pg")
    restored_pg = os.path.join(args.work, "pg-restored")
    pg_started = False
    restored_started = False
    bindir = pg_bin()

    def record(row):
        rows.append(row)
        print("backup: " + json.dumps(row), flush=True)

    try:
        # --- servers and data
        group = None
        starts = 0

        def start_group(kib_per_s):
            # (Re)starts `up` on the same data (it resumes the group) with
            # BACKUP's read rate in the nodes' environment.
            nonlocal group, starts
            if group is not None:
                group.terminate()
                group.wait(timeout=60)
            if kib_per_s == "default":
                os.environ.pop("AVAILDB_BACKUP_KIB_PER_S", None)
            else:
                os.environ["AVAILDB_BACKUP_KIB_PER_S"] = str(int(kib_per_s))
            starts += 1
            group = procs.start("group", [args.bin, "up", "--replicas", "2", "--port", str(p + 20),
                                          "--data-dir", os.path.join(args.work, "group")],
                                os.path.join(args.work, f"group-{starts}.out"))

        start_group(args.backup_kib_per_s)
        subprocess.run([os.path.join(TOP, "scripts", "pg-sync-standby"), "start", pg_dir, str(p + 10)],
                       check=True, stdout=subprocess.DEVNULL)
        pg_started = True
        wait_sql(r1, "app", within=180)
        wait_sql(p + 10, "postgres", "postgres")
        load_s, _ = timed(lambda: make_table(r1, "app", "t", mb, False, "availdb"))
        pg_table(p + 10, mb)
        with connect(p + 10, "postgres", "postgres") as c:
            c.execute("CHECKPOINT")
        wait_synchronized(r1, "app")
        lite = os.path.join(args.work, "plain.db")
        sqlite_file(lite, mb)
        # Every system's data written out, and r2 done redoing it, before
        # anything is timed: a backup then competes with no writeback of
        # the load (several GB here) and no redo.
        os.sync()
        _, secondary = roles(p + 22, p + 23)
        settle_deadline = time.time() + 300
        while True:
            with connect(secondary, "availdb") as c:
                queue = c.execute("SELECT coalesce(sum(redo_queue_size), 0) FROM sys.dm_hadr_database_replica_states "
                                  "WHERE database_name = 'app' AND is_local").fetchone()[0]
            if int(queue) == 0 or time.time() > settle_deadline:
                break
            time.sleep(0.2)
        os.sync()
        app_files = glob.glob(os.path.join(args.work, "group", "r2", "**", "app.db"), recursive=True)
        db_bytes = os.path.getsize(app_files[0]) if app_files else mb * 10**6
        with connect(p + 10, "postgres", "postgres") as c:
            pg_bytes = int(c.execute("SELECT sum(pg_database_size(datname)) FROM pg_database").fetchone()[0])
        lite_bytes = os.path.getsize(lite)
        print(f"backup: data loaded ({mb} MB of rows in {load_s:.1f} s); availdb file {db_bytes / 1e6:.0f} MB, "
              f"PostgreSQL cluster {pg_bytes / 1e6:.0f} MB, SQLite file {lite_bytes / 1e6:.0f} MB", flush=True)

        # --- 1. backup
        r1, r2 = roles(p + 22, p + 23)
        sources = {"availdb (secondary)": app_files, "PostgreSQL": [os.path.join(pg_dir, "primary")],
                   "sqlite3": [lite]}
        dropped = refill_page_cache([path for paths in sources.values() for path in paths])
        record({"measure": "page_cache", "dropped_after_load": dropped,
                "refilled_with": "each backup's source"})
        # How much of each source the page cache holds: a backup read from
        # the disk measures the disk, whatever the destination.
        for system, paths in sources.items():
            record({"measure": "source_in_page_cache", "system": system, "paths": paths, **in_page_cache(paths)})
        for compression in (True, False):
            target = os.path.join(backups, f"r2-{'zstd' if compression else 'plain'}.bak")
            with_ = "COPY_ONLY, COMPRESSION" if compression else "COPY_ONLY"
            warm_memory(backups, db_bytes)
            with connect(r2, "availdb") as c:
                s, _ = timed(lambda: c.execute(f"BACKUP DATABASE app TO DISK = '{target}' WITH {with_}"))
            record({"measure": "backup", "system": "availdb (secondary)", "variant": with_.lower(),
                    "destination": destination,
                    "backup_kib_per_s": args.backup_kib_per_s,
                    "seconds": round(s, 2), "database_bytes": db_bytes, "backup_bytes": os.path.getsize(target),
                    "mb_s": round(db_bytes / 1e6 / s, 1)})
        for variant, extra in (("plain -Fp", ["-Fp"]), ("tar -Ft -Z zstd", ["-Ft", "-Z", "zstd"])):
            target = os.path.join(backups, "pg-" + extra[0].strip("-"))
            warm_memory(backups, pg_bytes)
            s, _ = timed(lambda: subprocess.run(
                [os.path.join(bindir, "pg_basebackup"), "-h", "127.0.0.1", "-p", str(p + 10), "-U", "postgres",
                 "-D", target, "-X", "fetch", "--checkpoint=fast", "--no-sync"] + extra,
                check=True, capture_output=True))
            record({"measure": "backup", "system": "pg_basebackup", "variant": variant, "seconds": round(s, 2),
                    "destination": destination,
                    "database_bytes": pg_bytes, "backup_bytes": du(target), "mb_s": round(pg_bytes / 1e6 / s, 1)})
            if variant == "plain -Fp":
                # Not restored below: its memory (a tmpfs) goes back.
                shutil.rmtree(target)
        out = os.path.join(backups, "lite-backup.db")
        src = sqlite3.connect(lite)
        dst = sqlite3.connect(out)
        warm_memory(backups, lite_bytes)
        s, _ = timed(lambda: src.backup(dst))
        dst.close()
        record({"measure": "backup", "system": "sqlite3", "variant": ".backup (online backup API)",
                "destination": destination,
                "seconds": round(s, 2), "database_bytes": lite_bytes, "backup_bytes": os.path.getsize(out),
                "mb_s": round(lite_bytes / 1e6 / s, 1)})
        os.remove(out)
        out = os.path.join(backups, "lite-vacuum.db")
        warm_memory(backups, lite_bytes)
        s, _ = timed(lambda: src.execute(f"VACUUM INTO '{out}'"))
        src.close()
        record({"measure": "backup", "system": "sqlite3", "variant": "VACUUM INTO", "seconds": round(s, 2),
                "destination": destination,
                "database_bytes": lite_bytes, "backup_bytes": os.path.getsize(out),
                "mb_s": round(lite_bytes / 1e6 / s, 1)})
        os.remove(out)
        os.remove(lite)

        # --- 2. restore
        r1, r2 = roles(p + 22, p + 23)
        source = os.path.join(backups, "r2-zstd.bak")
        warm_memory(backups, db_bytes)
        with connect(r1, "availdb") as c:
            s, _ = timed(lambda: c.execute(f"RESTORE DATABASE restored FROM DISK = '{source}' WITH RECOVERY"))
            n = None
        with connect(r1, "restored") as c:
            n = c.execute("SELECT count(*) FROM t").fetchone()[0]
        drop_database(r1, "restored")
        record({"measure": "restore", "system": "availdb", "variant": "RESTORE … WITH RECOVERY (zstd backup)",
                "seconds": round(s, 2), "database_bytes": db_bytes, "mb_s": round(db_bytes / 1e6 / s, 1),
                "rows": n})
        tarball = os.path.join(backups, "pg-Ft", "base.tar.zst")

        def pg_restore():
            os.makedirs(restored_pg, mode=0o700)
            subprocess.run(["tar", "-I", "zstd", "-xf", tarball, "-C", restored_pg], check=True)
            if os.geteuid() == 0:
                subprocess.run(["chown", "-R", "postgres:postgres", restored_pg], check=True)
            subprocess.run(as_postgres([os.path.join(bindir, "pg_ctl"), "-D", restored_pg, "-l",
                                        os.path.join(args.work, "pg-restored.log"), "-w", "-o",
                                        f"-p {p + 30} -c cluster_name=restored -c synchronous_standby_names=''",
                                        "start"]), check=True, stdout=subprocess.DEVNULL)

        warm_memory(backups, pg_bytes)
        s, _ = timed(pg_restore)
        restored_started = True
        with connect(p + 30, "postgres", "postgres") as c:
            n = c.execute("SELECT count(*) FROM t").fetchone()[0]
        record({"measure": "restore", "system": "PostgreSQL", "variant": "extract base.tar.zst + start (WAL recovery)",
                "seconds": round(s, 2), "database_bytes": pg_bytes, "mb_s": round(pg_bytes / 1e6 / s, 1),
                "rows": n})

        # --- 3. commit latency during a backup on the secondary
        limits = [x.strip() for x in args.commit_kib_per_s.split(",") if x.strip()]
        current = args.backup_kib_per_s
        for limit, trial in [(limit, trial) for limit in limits for trial in range(args.trials)]:
            if limit != current:
                start_group(limit)
                current = limit
                wait_synchronized(roles(p + 22, p + 23, within=180)[0], "app")
            for during in (False, True):
                r1, r2 = roles(p + 22, p + 23)
                stop = threading.Event()
                taken = []

                def backups_on_r2():
                    target = os.path.join(backups, "during.bak")
                    with connect(r2, "availdb") as c:
                        while not stop.is_set():
                            start = time.perf_counter()
                            c.execute(f"BACKUP DATABASE app TO DISK = '{target}' WITH COPY_ONLY, COMPRESSION")
                            taken.append(time.perf_counter() - start)
                            os.remove(target)

                runner = threading.Thread(target=backups_on_r2) if during else None
                if runner:
                    runner.start()
                result = pgbench(r1, args.seconds, 4,
                                 os.path.join(args.work, f"pgbench-{limit}-{trial}-{during}"))
                stop.set()
                if runner:
                    runner.join(timeout=600)
                record({"measure": "commit_during_backup", "trial": trial, "backup_kib_per_s": limit,
                        "backup_on_secondary": during, "backups_taken": len(taken),
                        "backup_seconds": [round(s, 2) for s in taken], **result})

        # --- 4. point-in-time restore
        r1, r2 = roles(p + 22, p + 23)
        full = os.path.join(backups, "pitr-full.bak")
        log = os.path.join(backups, "pitr-log.bak")
        with connect(r1, "availdb") as c:
            c.execute(f"BACKUP DATABASE app TO DISK = '{full}' WITH COMPRESSION")
        half = args.log_mb * ROWS_PER_MB // 2
        with connect(r1, "app") as c:
            c.execute("CREATE TABLE p(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
            first = 1
            stop_at = None
            while first <= 2 * half:
                last = min(first + 9_999, 2 * half)
                c.execute("INSERT INTO p SELECT value, hex(randomblob(500)) "
                          f"FROM generate_series({first}, {last})")
                if stop_at is None and last >= half:
                    time.sleep(0.05)
                    stop_at = datetime.datetime.now(datetime.timezone.utc).isoformat()
                    before = last
                    time.sleep(0.05)
                first = last + 1
        with connect(r1, "availdb") as c:
            c.execute(f"BACKUP LOG app TO DISK = '{log}' WITH COMPRESSION")

        def pitr():
            with connect(r1, "availdb") as c:
                c.execute(f"RESTORE DATABASE pitr FROM DISK = '{full}' WITH NORECOVERY")
                c.execute(f"RESTORE LOG pitr FROM DISK = '{log}' WITH STOPAT = '{stop_at}', RECOVERY")

        warm_memory(backups, db_bytes)
        s, _ = timed(pitr)
        with connect(r1, "pitr") as c:
            n = c.execute("SELECT count(*) FROM p").fetchone()[0]
        drop_database(r1, "pitr")
        if n != before:
            failures.append(f"point-in-time restore to {stop_at} holds {n} rows of p, not the {before} written before it")
        record({"measure": "pitr", "system": "availdb", "variant": f"full + {args.log_mb} MB of log, STOPAT half-way",
                "seconds": round(s, 2), "database_bytes": db_bytes, "log_backup_bytes": os.path.getsize(log),
                "rows_restored": n, "rows_expected": before})
        with connect(r1, "availdb") as c:
            failovers = c.execute("SELECT count(*) FROM sys.dm_hadr_failover_history").fetchone()[0]
        record({"measure": "failovers", "system": "availdb", "count": failovers})
    except Exception as e:  # noqa: BLE001 - reported in the results
        failures.append(str(e))
        print(f"backup: FAILED {e}", file=sys.stderr, flush=True)
    finally:
        procs.stop()
        if args.backups_dir:
            shutil.rmtree(backups, ignore_errors=True)
        if restored_started:
            subprocess.run(as_postgres([os.path.join(bindir, "pg_ctl"), "-D", restored_pg, "-m", "fast", "-w",
                                        "stop"]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if pg_started:
            subprocess.run([os.path.join(TOP, "scripts", "pg-sync-standby"), "stop", pg_dir],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    write_results(args.out, args.csv, rows, failures, "system")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
