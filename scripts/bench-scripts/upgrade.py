#!/usr/bin/env python3
"""Rolling-upgrade measurements (scripts/bench upgrade): the read-only
window of `availdb upgrade` by database size, the traffic manager's switch
and failover detection, and its proxying overhead. It starts everything
itself, on loopback ports from --port:

    PORT .. PORT+3, +100, +101   production: `availdb up --replicas 2` (server 'A')
    PORT+150, +151                production nodes' HTTP (health, metrics)
    PORT+50, +170                 stage: one `availdb server` with an empty group (server 'S')
    PORT+52, +172                 --geo: production-DR, one `availdb server` (server 'B')
    PORT+54, +174                 --geo: stage-DR, one `availdb server` with an empty group (server 'SB')
    PORT+60..PORT+99              the upgrades' applications (V1, V2) and traffic managers
    PORT+200..                    the detection runs' endpoints and traffic managers
    PORT+300, +301                the traffic manager of the pgbench runs
    PORT+310                      HAProxy of the pgbench runs (when installed)

1. Read-only window by size (--sizes, MB). Per size a database
   `inv_<n>mb` joins production's group, gets the example's V1 schema, 1,000
   items and n MB of filler (1 MB transactions of randomblob rows); V1 runs
   against it behind a traffic manager; `availdb upgrade` runs the same
   plan and the same upgrade script (examples/rolling-upgrade/upgrade.sql)
   for every size. From its report.json: read-only window (step 3's start
   to the switch's end), script, smoke, termination, switch, seeding. A
   client opens a new connection through the traffic manager for every
   GET /health the whole time: every failed request is counted (goal 0),
   and the time from the switch step's end to the first V2 answer is noted.
   After the upgrade V2 must list every item.
   With --geo (BENCH_UPGRADE_GEO=1), option 2 instead: before each upgrade
   the database gets its DR slot (a geo-secondary on server 'B', seeded,
   and V1-DR against it, an online backup endpoint), and the plan has
   [production_dr] and [stage_dr] (a chained copy of the stage on server
   'SB' with V2-DR): the same measures plus the stage-DR seeding, and
   V2-DR must list every item with the V2 schema too.
2. Failover detection: two endpoints behind a traffic manager, the first
   killed (SIGKILL); per probe setting (interval, timeout, tolerated
   failures), twice: with no client (the probes alone decide: compare with
   the bound interval x (tolerated + 1) + timeout) and with a client
   opening a connection per request (a refused connect moves the
   connection to the backup and hurries the probe): the time until the
   traffic manager marks it unhealthy, the client's first answer from the
   backup, and its failed requests (those in flight on the killed endpoint).
3. Proxying overhead: pgbench -S (select-only, -c 4) for --seconds against
   a database of the stage node directly and through a traffic manager
   (PostgreSQL probe), alternated, --trials times; TPS medians and ratio.
   When `haproxy` is installed, through HAProxy (TCP mode, one thread) too,
   in the same alternation: what a standard relay costs on this machine.

Results: JSON (--out) and a CSV of one row per measurement (--csv).
"""

import argparse
import csv
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

import psycopg

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
EXAMPLE = os.path.join(TOP, "examples", "rolling-upgrade")


def sql(port, db, statement, autocommit=True):
    with psycopg.connect(f"host=127.0.0.1 port={port} user=availdb dbname={db}", autocommit=autocommit) as c:
        cur = c.execute(statement)
        try:
            return cur.fetchall()
        except psycopg.ProgrammingError:
            return None


def retry(fn, within=60.0):
    deadline = time.monotonic() + within
    while True:
        try:
            return fn()
        except Exception:  # noqa: BLE001 — bounded retry of a start-up race
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def http(url, method="GET", body=None, timeout=10):
    req = urllib.request.Request(url, data=body, method=method)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def wait_http(url, within=60.0):
    retry(lambda: http(url), within)


class Procs:
    def __init__(self, work):
        self.work = work
        self.procs = []

    def start(self, name, args, **kw):
        log = open(os.path.join(self.work, f"{name}.log"), "ab")
        p = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL, **kw)
        self.procs.append(p)
        return p

    def stop_all(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def app(procs, name, version, port, dsn, extra=()):
    p = procs.start(name, [sys.executable, os.path.join(EXAMPLE, "app.py"), "--version", str(version),
                           "--port", str(port), "--dsn", dsn, *extra])
    wait_http(f"http://127.0.0.1:{port}/health")
    return p


def traffic_manager(procs, bin_, work, name, port, endpoints, probe):
    path = os.path.join(work, f"{name}.toml")
    with open(path, "w") as f:
        f.write(f'name = "{name}"\nhold_ms = 15000\n[probe]\n{probe}\n')
        for i, (ep, target, status) in enumerate(endpoints):
            f.write(f'[[endpoint]]\nname = "{ep}"\ntarget = "{target}"\npriority = {i + 1}\nstatus = "{status}"\n')
    procs.start(name, [bin_, "traffic-manager", "--config", path, "--port", str(port), "--admin-port", str(port + 1)])
    retry(lambda: http(f"http://127.0.0.1:{port + 1}/profile"))
    return port + 1


def profile(admin_port):
    return json.loads(http(f"http://127.0.0.1:{admin_port}/profile")[1])


class Hammer:
    """New connection per GET /health through the traffic manager."""

    def __init__(self, port):
        self.port, self.stop, self.errors, self.answers = port, False, [], []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop:
            try:
                _, body = http(f"http://127.0.0.1:{self.port}/health", timeout=15)
                self.answers.append((time.time(), json.loads(body)["version"]))
            except Exception as e:  # noqa: BLE001 — every failure is a result
                self.errors.append((time.time(), str(e)))

    def finish(self):
        self.stop = True
        self.thread.join()
        return self


def window_by_size(args, procs, rows, results):
    p = args.port
    hosts = f'"127.0.0.1:{p + 2}", "127.0.0.1:{p + 3}"'
    for k, mb in enumerate(args.sizes):
        db = f"inv_{mb}mb"
        sql(p + 2, "availdb", f"CREATE DATABASE {db}")
        sql(p + 2, "availdb", f"ALTER AVAILABILITY GROUP ag1 ADD DATABASE {db}")
        with open(os.path.join(EXAMPLE, "schema_v1.sql")) as f:
            schema = f.read()
        with psycopg.connect(f"host=127.0.0.1 port={p + 2} user=availdb dbname={db}", autocommit=True) as c:
            c.execute(schema)
            c.execute("INSERT INTO items(name) SELECT 'item ' || value FROM generate_series(1, 1000)")
            c.execute("CREATE TABLE filler(id INTEGER PRIMARY KEY, pad BLOB)")
            for _ in range(mb):
                c.execute("INSERT INTO filler(pad) SELECT randomblob(1000) FROM generate_series(1, 1000)")
        v1_port, v2_port, tm_port = p + 60 + 4 * k, p + 61 + 4 * k, p + 70 + 4 * k
        v1_dr_port, v2_dr_port = p + 80 + 2 * k, p + 81 + 2 * k
        app(procs, f"v1-{mb}mb", 1, v1_port, f"postgresql://availdb@127.0.0.1:{p}/{db}")
        endpoints = [("v1", f"127.0.0.1:{v1_port}", "online")]
        dr_seeding_s = None
        if args.geo:
            # Production's DR slot (the operator's, before the upgrade).
            t = time.monotonic()
            sql(p + 2, "availdb", f"ALTER DATABASE {db} ADD SECONDARY ON SERVER 'B'")
            sql(p + 2, "availdb", f"SELECT sys.wait_for_database_copy_sync('{db}', 'B')")
            dr_seeding_s = round(time.monotonic() - t, 2)
            app(procs, f"v1-dr-{mb}mb", 1, v1_dr_port, f"postgresql://availdb@127.0.0.1:{p + 52}/{db}")
            endpoints.append(("v1-dr", f"127.0.0.1:{v1_dr_port}", "online"))
        admin = traffic_manager(procs, args.bin, args.work, f"tm-{mb}mb", tm_port, endpoints,
                                "protocol = \"http\"\npath = \"/health\"\ninterval_seconds = 1\ntimeout_ms = 500\ntolerated_failures = 1")
        retry(lambda: profile(admin)["active"] == "v1" or (_ for _ in ()).throw(RuntimeError("v1 not active")))
        geo_plan = ""
        if args.geo:
            geo_plan = f'''[production_dr]
server = "B"
endpoint = "v1-dr"
hosts = ["127.0.0.1:{p + 52}"]
[stage_dr]
server = "SB"
endpoint_urls = ["tcp://127.0.0.1:{p + 174}"]
hosts = ["127.0.0.1:{p + 54}"]
endpoint = "v2-dr"
target = "127.0.0.1:{v2_dr_port}"
priority = 4
start = ["{sys.executable}", "{os.path.join(EXAMPLE, 'app.py')}", "--version", "2", "--port", "{v2_dr_port}", "--dsn", "{{database_url}}", "--pid-file", "v2-dr.pid"]
'''
        plan_dir = os.path.join(args.work, f"plan-{mb}mb")
        os.makedirs(plan_dir)
        with open(os.path.join(plan_dir, "plan.toml"), "w") as f:
            f.write(f'''name = "inventory-{mb}mb"
[production]
server = "A"
hosts = [{hosts}]
database = "{db}"
endpoint = "v1"
[stage]
server = "S"
endpoint_urls = ["tcp://127.0.0.1:{p + 170}"]
hosts = ["127.0.0.1:{p + 50}"]
endpoint = "v2"
target = "127.0.0.1:{v2_port}"
priority = {3 if args.geo else 2}
start = ["{sys.executable}", "{os.path.join(EXAMPLE, 'app.py')}", "--version", "2", "--port", "{v2_port}", "--dsn", "{{database_url}}", "--pid-file", "v2.pid"]
[upgrade]
script = "{os.path.join(EXAMPLE, 'upgrade.sql')}"
smoke_http = "/ready"
[traffic_manager]
admin = "127.0.0.1:{admin}"
{geo_plan}''')
        hammer = Hammer(tm_port)
        time.sleep(0.5)
        started = time.time()
        run = subprocess.run([args.bin, "upgrade", "plan.toml"], cwd=plan_dir, capture_output=True, text=True,
                             timeout=args.size_timeout)
        time.sleep(1.0)
        hammer.finish()
        pids = []
        for name in ("v2.pid", "v2-dr.pid"):
            if os.path.exists(os.path.join(plan_dir, name)):
                with open(os.path.join(plan_dir, name)) as f:
                    pids.append(int(f.read()))
        if run.returncode != 0:
            results["failures"].append(f"{mb} MB: availdb upgrade failed: {run.stdout}\n{run.stderr}")
            for pid in pids:
                os.killpg(pid, signal.SIGKILL)
            continue
        with open(os.path.join(plan_dir, "plan.toml.state", "report.json")) as f:
            report = json.load(f)["report"]
        state = json.load(open(os.path.join(plan_dir, "plan.toml.state", "state.json")))
        switch = next(s for s in state["machine"]["steps"] if s["step"] == "Switch")
        first_v2 = next((t for t, v in hammer.answers if v == 2), None)
        items = json.loads(http(f"http://127.0.0.1:{tm_port}/items")[1])
        if len(items) != 1000 or any("category" not in i for i in items):
            results["failures"].append(f"{mb} MB: V2 lists {len(items)} items")
        if args.geo:
            dr_items = json.loads(http(f"http://127.0.0.1:{v2_dr_port}/items")[1])
            if len(dr_items) != 1000 or any("category" not in i for i in dr_items):
                results["failures"].append(f"{mb} MB: V2-DR lists {len(dr_items)} items")
        row = {
            "measure": "read_only_window_geo" if args.geo else "read_only_window", "size_mb": mb,
            "seeding_dr_ms": report.get("seeding_dr_ms"), "production_dr_seeding_s": dr_seeding_s,
            "window_ms": report["read_only_window_ms"], "script_ms": report["script_ms"],
            "smoke_ms": report["smoke_ms"], "termination_ms": report["termination_ms"],
            "switch_ms": report["switch_ms"], "seeding_ms": report["seeding_ms"],
            "total_ms": report["total_ms"],
            "overhead_ms": report["read_only_window_ms"] - report["script_ms"],
            "client_requests": len(hammer.answers) + len(hammer.errors),
            "client_errors": len(hammer.errors),
            "switch_end_to_first_v2_ms": None if first_v2 is None else round(first_v2 * 1000 - switch["ended_ms"]),
            "steps_ms": {s: d for s, d in report["steps"]},
            "upgrade_wall_s": round(time.time() - started, 2),
        }
        rows.append(row)
        print(f"upgrade{' (option 2)' if args.geo else ''} {mb} MB: window {row['window_ms']} ms "
              f"(script {row['script_ms']} ms, termination {row['termination_ms']} ms, switch {row['switch_ms']} ms), "
              f"seeding {row['seeding_ms']} ms"
              + (f", stage-DR seeding {row['seeding_dr_ms']} ms" if args.geo else "")
              + f", client errors {row['client_errors']} of {row['client_requests']}", flush=True)
        for pid in pids:
            os.killpg(pid, signal.SIGTERM)


def detection(args, procs, rows, results):
    p = args.port
    db_url = f"postgresql://availdb@127.0.0.1:{p + 50}/availdb"
    n = 0
    for interval, timeout, tolerated in args.probes:
        for traffic in (False, True):
            a_port, b_port, tm_port = p + 200 + 4 * n, p + 201 + 4 * n, p + 202 + 4 * n
            n += 1
            a = app(procs, f"detect-a-{n}", 1, a_port, db_url)
            app(procs, f"detect-b-{n}", 2, b_port, db_url)
            admin = traffic_manager(procs, args.bin, args.work, f"tm-detect-{n}", tm_port,
                                    [("a", f"127.0.0.1:{a_port}", "online"), ("b", f"127.0.0.1:{b_port}", "online")],
                                    f"protocol = \"http\"\npath = \"/health\"\ninterval_seconds = {interval}\n"
                                    f"timeout_ms = {timeout}\ntolerated_failures = {tolerated}")
            retry(lambda: all(e["health"] == "healthy" for e in profile(admin)["endpoints"]) or 1 / 0, 60)
            # The kill lands at some phase of the probe schedule.
            time.sleep(interval * ((n * 0.37) % 1.0) + 0.1)
            hammer = Hammer(tm_port) if traffic else None
            time.sleep(0.3)
            killed = time.time()
            a.kill()
            marked = None
            deadline = time.time() + interval * (tolerated + 1) * 3 + 30
            while time.time() < deadline:
                ep = next(e for e in profile(admin)["endpoints"] if e["name"] == "a")
                if ep["health"] == "unhealthy":
                    marked = time.time()
                    break
                time.sleep(0.02)
            first_b = None
            if hammer:
                time.sleep(0.5)
                hammer.finish()
                first_b = next((t for t, v in hammer.answers if v == 2 and t > killed), None)
            bound = interval * (tolerated + 1) + timeout / 1000
            row = {
                "measure": "failover_detection", "client_traffic": traffic, "interval_s": interval,
                "timeout_ms": timeout, "tolerated_failures": tolerated, "bound_s": bound,
                "detected_s": None if marked is None else round(marked - killed, 3),
                "first_answer_from_backup_ms": None if first_b is None else round((first_b - killed) * 1000),
                "client_requests": len(hammer.answers) + len(hammer.errors) if hammer else 0,
                "client_errors": len(hammer.errors) if hammer else 0,
                "client_error_texts": [e for _, e in hammer.errors][:5] if hammer else [],
            }
            if marked is None:
                results["failures"].append(f"detection {interval}s/{tolerated}: never marked unhealthy")
            rows.append(row)
            print(f"detection ({'under client traffic' if traffic else 'probes alone'}) interval {interval} s, "
                  f"tolerated {tolerated}, timeout {timeout} ms: unhealthy after {row['detected_s']} s "
                  f"(bound {bound} s); first answer from the backup {row['first_answer_from_backup_ms']} ms "
                  f"after the kill; client errors {row['client_errors']} of {row['client_requests']}", flush=True)


def proxy_overhead(args, procs, rows, results):
    p = args.port
    node = p + 50
    sql(node, "availdb", "CREATE DATABASE pgb")
    env = dict(os.environ, PGUSER="availdb", PGHOST="127.0.0.1")
    subprocess.run(["pgbench", "-i", "-q", "-s", "1", "-p", str(node), "pgb"], env=env, check=True,
                   capture_output=True)
    tm_port = p + 300
    traffic_manager(procs, args.bin, args.work, "tm-pgbench", tm_port,
                    [("node", f"127.0.0.1:{node}", "online")],
                    "protocol = \"postgres\"\ndatabase = \"pgb\"\ninterval_seconds = 1\ntimeout_ms = 900\ntolerated_failures = 1")
    retry(lambda: profile(tm_port + 1)["active"] == "node" or 1 / 0)
    ways = [("direct", node), ("traffic_manager", tm_port)]
    # HAProxy (TCP mode, one thread), when installed: what a standard
    # user-space relay costs on the same machine, same run.
    if shutil.which("haproxy"):
        hap_port = p + 310
        cfg = os.path.join(args.work, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write("global\n    maxconn 1000\n    nbthread 1\n"
                    "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1h\n"
                    "    timeout server 1h\n"
                    f"frontend f\n    bind 127.0.0.1:{hap_port}\n    default_backend b\n"
                    f"backend b\n    server node 127.0.0.1:{node}\n")
        procs.start("haproxy", ["haproxy", "-db", "-f", cfg])
        retry(lambda: socket.create_connection(("127.0.0.1", hap_port), 1).close())
        ways.append(("haproxy", hap_port))
    else:
        print("haproxy is not installed: the proxy comparison has no HAProxy column", flush=True)
    tps = {how: [] for how, _ in ways}
    for trial in range(args.trials):
        for how, port in ways:
            out = subprocess.run(["pgbench", "-n", "-S", "-c", str(args.clients), "-j", "2", "-T", str(args.seconds),
                                  "-p", str(port), "pgb"], env=env, capture_output=True, text=True)
            line = next((l for l in out.stdout.splitlines() if l.startswith("tps")), None)
            if out.returncode != 0 or line is None:
                results["failures"].append(f"pgbench {how}: {out.stderr[-500:]}")
                continue
            value = float(line.split("=")[1].split()[0])
            tps[how].append(value)
            print(f"pgbench -S -c {args.clients} {how} trial {trial + 1}: {value:.0f} tps", flush=True)
    if tps["direct"] and tps["traffic_manager"]:
        d, t = statistics.median(tps["direct"]), statistics.median(tps["traffic_manager"])
        rows.append({"measure": "proxy_overhead", "clients": args.clients, "seconds": args.seconds,
                     "direct_tps": round(d), "traffic_manager_tps": round(t), "ratio": round(t / d, 3),
                     "trials": tps})
        print(f"pgbench -S: direct {d:.0f} tps, through the traffic manager {t:.0f} tps ({t / d:.2f}x)", flush=True)
    if tps["direct"] and tps.get("haproxy"):
        d, h = statistics.median(tps["direct"]), statistics.median(tps["haproxy"])
        rows.append({"measure": "proxy_overhead_haproxy", "clients": args.clients, "seconds": args.seconds,
                     "direct_tps": round(d), "haproxy_tps": round(h), "ratio": round(h / d, 3)})
        print(f"pgbench -S: direct {d:.0f} tps, through HAProxy {h:.0f} tps ({h / d:.2f}x)", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--port", type=int, default=25000)
    ap.add_argument("--sizes", default="1 100 1000")
    ap.add_argument("--probes", default="1,300,0 1,500,1 10,2000,2",
                    help="interval_s,timeout_ms,tolerated triples")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--size-timeout", type=int, default=1800)
    ap.add_argument("--only", default="window,detection,proxy")
    ap.add_argument("--geo", action="store_true",
                    help="the window by size with option 2 (production-DR and stage-DR slots)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--csv", required=True)
    args = ap.parse_args()
    args.sizes = [int(s) for s in args.sizes.split()]
    args.probes = [tuple(int(x) for x in t.split(",")) for t in args.probes.split()]
    os.makedirs(args.work, exist_ok=True)
    procs = Procs(args.work)
    rows, results = [], {"failures": []}
    p = args.port
    try:
        # The stage is a plain `availdb server`: production's partner links
        # (to the stage) are plaintext too (`up` makes them TLS by default).
        procs.start("production", [args.bin, "up", "--replicas", "2", "--no-partner-tls", "--port", str(p),
                                   "--data-dir", os.path.join(args.work, "production")])
        procs.start("stage", [args.bin, "server", "--data-dir", os.path.join(args.work, "stage"),
                              "--port", str(p + 50), "--name", "s1", "--endpoint", f"127.0.0.1:{p + 170}"])
        retry(lambda: sql(p, "app", "SELECT 1"), 120)
        retry(lambda: sql(p + 2, "availdb", "ALTER CLUSTER SET (SERVER_NAME = 'A')"))
        retry(lambda: sql(p + 50, "availdb",
                          "CREATE AVAILABILITY GROUP stage FOR REPLICA ON 's1' WITH (ENDPOINT_URL = "
                          f"'tcp://127.0.0.1:{p + 170}', AVAILABILITY_MODE = SYNCHRONOUS_COMMIT, FAILOVER_MODE = MANUAL)"))
        retry(lambda: sql(p + 50, "availdb", "ALTER CLUSTER SET (SERVER_NAME = 'S')"))
        if args.geo:
            # The DR region: production's DR server 'B' (its geo-secondaries
            # join its group) and the empty stage-DR server 'SB'.
            for name, node, port, endpoint, group in (("B", "d1", p + 52, p + 172, "dr"),
                                                      ("SB", "e1", p + 54, p + 174, "stagedr")):
                procs.start(f"server-{name}", [args.bin, "server", "--data-dir", os.path.join(args.work, name),
                                               "--port", str(port), "--name", node,
                                               "--endpoint", f"127.0.0.1:{endpoint}"])
                retry(lambda: sql(port, "availdb",
                                  f"CREATE AVAILABILITY GROUP {group} FOR REPLICA ON '{node}' WITH (ENDPOINT_URL = "
                                  f"'tcp://127.0.0.1:{endpoint}', AVAILABILITY_MODE = SYNCHRONOUS_COMMIT, "
                                  "FAILOVER_MODE = MANUAL)"))
                retry(lambda: sql(port, "availdb", f"ALTER CLUSTER SET (SERVER_NAME = '{name}')"))
            retry(lambda: sql(p + 2, "availdb",
                              f"ALTER CLUSTER ADD PARTNER SERVER 'B' WITH (ENDPOINT_URL = 'tcp://127.0.0.1:{p + 172}')"))
        only = args.only.split(",")
        for name, phase in (("window", window_by_size), ("detection", detection), ("proxy", proxy_overhead)):
            if name in only:
                try:
                    phase(args, procs, rows, results)
                except Exception as e:  # noqa: BLE001 — reported, the next phase runs
                    results["failures"].append(f"{name}: {type(e).__name__}: {e}")
    finally:
        procs.stop_all()
    results["rows"] = rows
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    with open(args.csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["measure", "json"])
        for r in rows:
            w.writerow([r["measure"], json.dumps(r)])
    for failure in results["failures"]:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
