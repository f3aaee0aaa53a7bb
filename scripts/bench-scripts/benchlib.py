#!/usr/bin/env python3
"""Parsing, statistics, reports and plots for scripts/bench.

scripts/bench runs the servers and pgbench, and appends every measurement
as one row of a long-format CSV (`kind` says what the row is). This module
turns those rows into the run's JSON document, its markdown tables and its
PNG plots, so the numbers in BENCHMARKS.md are a pure function of the CSV
(plus the machine description and the failover trials' JSON). Statistics are
deliberately plain: nearest-rank percentiles, medians over trials, ratios of
medians measured in the same run.

Command line (each prints to stdout, errors to stderr):

  benchlib.py columns                 the run CSV's header
  benchlib.py pgbench-summary LOG     "tps latency_ms failed processed retried"
                                      of a pgbench run; tps/latency are
                                      "error" when the output has no result
  benchlib.py latency DIR             "p50 p95 p99 count" (ms) over pgbench's
                                      per-transaction logs (-l) in DIR
  benchlib.py progress LOG            "t_s,tps" lines of pgbench's -P output
  benchlib.py connections [--samples N --interval S] PORT...
                                      "PORT=N ..." where N is the number of
                                      established TCP connections (client
                                      side: remote port PORT) in this network
                                      namespace, from /proc/net/tcp and tcp6;
                                      the median of N samples S seconds apart
  benchlib.py sample --conninfo C --sql Q --interval S --seconds N --out F
                                      runs Q with psql every S seconds for N
                                      seconds, appending "t_s,<row>" lines
  benchlib.py report --csv F --meta F [--failover F] [--patroni F]
                     --json OUT --md OUT
                                      the run's JSON document and markdown
  benchlib.py plot JSON DIR           PNG plots of a run (needs matplotlib;
                                      exits 3 when it is missing)

The plot command is the only one that needs a third-party module; the
others run on any Python 3.
"""

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time

# Systems of the commit matrix, in table order, and how tables name them.
SYSTEMS = [
    ("standalone", "availdb standalone"),
    ("async3", "availdb async, 3 replicas"),
    ("sync2", "availdb sync, 1 sync secondary"),
    ("sync3", "availdb sync, 2 sync secondaries"),
    ("pg_alone", "PostgreSQL alone"),
    ("pg", "PostgreSQL + sync standby"),
]
LABELS = dict(SYSTEMS)
# The two PostgreSQL baselines every availdb number is divided by.
BASELINES = [("pg", "ratio_pg_sync"), ("pg_alone", "ratio_pg_alone")]
# Systems of the listener scenario, in table order: (name, group, label,
# the system whose TPS it is divided by, or None).
LISTENER_SYSTEMS = [
    ("r1_direct", "up --replicas 3", "r1 (primary), its own port", None),
    ("rw_listener", "up --replicas 3", "listener read-write port → r1", "r1_direct"),
    ("r2_direct", "up --replicas 3", "r2 (secondary), its own port", None),
    ("ro_listener", "up --replicas 3", "listener read-only port → r2, r3 (as `up` sets it)", "r2_direct"),
    ("ro4_r2_direct", "up --replicas 4", "r2 (secondary), its own port", None),
    ("ro4_t1", "up --replicas 4", "listener read-only port, 1 readable target (r2)", "ro4_r2_direct"),
    ("ro4_t2", "up --replicas 4", "listener read-only port, 2 readable targets (r2, r3)", "ro4_r2_direct"),
    ("ro4_t3", "up --replicas 4", "listener read-only port, 3 readable targets (r2, r3, r4)", "ro4_r2_direct"),
]
MATRIX_SCENARIOS = {
    "commit": "single-row insert per transaction (commit.sql)",
    "rw": "small read-write transaction: an update, 2 point selects, an insert (rw.sql)",
    "tpcb": "pgbench's built-in TPC-B (-b tpcb-like) after pgbench -i",
}

# Column order of the run CSV. scripts/bench writes rows by column name.
CSV_COLUMNS = [
    "kind", "scenario", "system", "clients", "trial", "seconds", "tps", "latency_avg_ms",
    "p50_ms", "p95_ms", "p99_ms", "failed", "transactions", "t_s", "replica",
    "redo_queue_bytes", "log_send_queue_bytes", "secondary_lag_s", "rows", "expected_rows",
    "phase", "bytes", "elapsed_s", "mb_per_s", "note", "max_ms", "size_mb",
]


# --- parsing -------------------------------------------------------------------

def parse_pgbench_summary(text):
    """The result lines of pgbench's output, as a dict: tps, latency_ms
    (None when pgbench printed none: it failed), failed, processed and
    retried (0 when missing)."""
    out = {"tps": None, "latency_ms": None, "failed": 0, "processed": 0, "retried": 0}
    for line in text.splitlines():
        words = line.split()
        if line.startswith("tps = "):
            out["tps"] = float(words[2])
        elif line.startswith("latency average = "):
            out["latency_ms"] = float(words[3])
        elif line.startswith("number of failed transactions: "):
            out["failed"] = int(words[4])
        elif line.startswith("number of transactions actually processed: "):
            out["processed"] = int(words[5].split("/")[0])
        elif line.startswith("number of transactions retried: "):
            out["retried"] = int(words[4])
    return out


def parse_pgbench_log(lines):
    """Latencies (µs) of pgbench's per-transaction log lines (-l): column 3.
    Failed and skipped transactions ("failed", "skipped" there) are left out."""
    lat = []
    for line in lines:
        cols = line.split()
        if len(cols) > 2 and cols[2].isdigit():
            lat.append(int(cols[2]))
    return lat


def latencies_in(directory):
    """Latencies (µs) of every pgbench per-transaction log in a folder."""
    lat = []
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name)) as f:
            lat.extend(parse_pgbench_log(f))
    return lat


def parse_progress(text):
    """(t_s, tps) pairs of pgbench's -P progress lines
    ("progress: 2.0 s, 1234.5 tps, lat 0.81 ms stddev 0.2, 0 failed")."""
    out = []
    for line in text.splitlines():
        if not line.startswith("progress: "):
            continue
        words = line.replace(",", " ").split()
        try:
            out.append((float(words[1]), float(words[words.index("tps") - 1])))
        except (ValueError, IndexError):
            continue
    return out


def metric_value(text, name, labels=()):
    """The sum of the samples of Prometheus metric `name` (a counter or a
    gauge; all its label sets, or those holding every `key="value"` of
    `labels`) in the text exposition `text`; 0 when it has none."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line[len(name):len(name) + 1] not in ("{", " "):
            continue
        label_set = line[len(name):].split("}", 1)[0] if line[len(name)] == "{" else ""
        if any(label not in label_set for label in labels):
            continue
        try:
            total += float(line.rsplit(" ", 1)[1])
        except (ValueError, IndexError):
            continue
    return total


def count_established(lines, ports):
    """Established TCP connections whose remote port is one of ports, from
    the lines of /proc/net/tcp or /proc/net/tcp6 (header included or not):
    {port: count}. On loopback both ends of a connection are listed; only
    the client's end has the server's port as its remote port, so each
    connection counts once."""
    counts = {p: 0 for p in ports}
    for line in lines:
        cols = line.split()
        if len(cols) < 4 or cols[3] != "01" or ":" not in cols[2]:  # 01 = ESTABLISHED
            continue
        try:
            port = int(cols[2].rsplit(":", 1)[1], 16)
        except ValueError:
            continue
        if port in counts:
            counts[port] += 1
    return counts


def number(value):
    """A CSV cell as int or float; None for an empty cell or "error"."""
    if value is None or value == "" or value == "error":
        return None
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return None


# --- statistics ----------------------------------------------------------------

def percentile(values, p):
    """Nearest-rank percentile p (0 < p <= 100); None for no values."""
    xs = sorted(values)
    if not xs:
        return None
    return xs[max(0, math.ceil(p / 100 * len(xs)) - 1)]


def visibility_lags(acked, polls):
    """Per acknowledged id, how long after its acknowledgement a copy showed
    it: acked = [(id, ack time)], ids increasing; polls = [(start, end,
    max id seen)] in time order, the max never decreasing. An id shows in
    the first poll whose max reaches it, at that poll's midpoint. Returns
    (lags in acked's order, number of ids no poll reached)."""
    lags = []
    unseen = 0
    j = 0
    for i, ack in acked:
        while j < len(polls) and polls[j][2] < i:
            j += 1
        if j == len(polls):
            unseen += 1
            continue
        start, end, _ = polls[j]
        lags.append((start + end) / 2 - ack)
    return lags, unseen


def median(values):
    """Median (mean of the middle two for an even count); None for none.
    None entries (failed runs) are left out."""
    xs = sorted(v for v in values if v is not None)
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def ratio(a, b):
    """a / b, or None when either is missing or b is not positive."""
    if a is None or b is None or b <= 0:
        return None
    return a / b


def slope(points):
    """Least-squares slope of (x, y) points; None for fewer than 3."""
    if len(points) < 3:
        return None
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    den = sum((x - mx) ** 2 for x, _ in points)
    if den == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in points) / den


# --- summaries of the CSV rows ---------------------------------------------------

def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def summarize_matrix(rows):
    """One entry per (scenario, system, clients) of the commit matrix: the
    median over trials of TPS and latencies, the spread, and the ratios of
    the median TPS to each PostgreSQL baseline's median in the same run."""
    cells = {}
    for r in rows:
        if r["kind"] != "run" or r["scenario"] not in MATRIX_SCENARIOS:
            continue
        key = (r["scenario"], r["system"], int(r["clients"]))
        cells.setdefault(key, []).append(r)
    order = {s: i for i, (s, _) in enumerate(SYSTEMS)}
    out = []
    for (scenario, system, clients), runs in sorted(
            cells.items(), key=lambda kv: (list(MATRIX_SCENARIOS).index(kv[0][0]), kv[0][2],
                                           order.get(kv[0][1], len(order)), kv[0][1])):
        tps = [number(r["tps"]) for r in runs]
        ok = [t for t in tps if t is not None]
        out.append({
            "scenario": scenario,
            "system": system,
            "label": LABELS.get(system, system),
            "clients": clients,
            "trials": len(runs),
            "failed_runs": len(tps) - len(ok),
            "tps_trials": tps,
            "tps_median": median(tps),
            "tps_min": min(ok) if ok else None,
            "tps_max": max(ok) if ok else None,
            "latency_avg_ms_median": median(number(r["latency_avg_ms"]) for r in runs),
            "p50_ms_median": median(number(r["p50_ms"]) for r in runs),
            "p95_ms_median": median(number(r["p95_ms"]) for r in runs),
            "p99_ms_median": median(number(r["p99_ms"]) for r in runs),
            "failed_tx": sum(number(r["failed"]) or 0 for r in runs),
            "transactions": sum(number(r["transactions"]) or 0 for r in runs),
        })
    by_key = {(c["scenario"], c["system"], c["clients"]): c for c in out}
    for c in out:
        for base, field in BASELINES:
            b = by_key.get((c["scenario"], base, c["clients"]))
            c[field] = ratio(c["tps_median"], b["tps_median"] if b else None)
    return out


def summarize_redo(rows):
    """Per (scenario, system, clients, replica): the redo and send queue
    samples taken during the matrix runs, over every trial."""
    groups = {}
    for r in rows:
        if r["kind"] != "redo":
            continue
        key = (r["scenario"], r["system"], int(r["clients"]), r["replica"])
        groups.setdefault(key, []).append(r)
    out = []
    for (scenario, system, clients, replica), samples in sorted(groups.items()):
        timed = [s for s in samples if s["t_s"] != "end"]
        ends = [s for s in samples if s["t_s"] == "end"]
        redo = [number(s["redo_queue_bytes"]) or 0 for s in samples]
        send = [number(s["log_send_queue_bytes"]) or 0 for s in samples]
        trends = []
        for trial in sorted({s["trial"] for s in timed}):
            pts = [(float(s["t_s"]), number(s["redo_queue_bytes"]) or 0)
                   for s in timed if s["trial"] == trial]
            trends.append(slope(pts))
        out.append({
            "scenario": scenario, "system": system, "label": LABELS.get(system, system),
            "clients": clients, "replica": replica, "samples": len(timed),
            "redo_max": max(redo) if redo else None,
            "redo_end_max": max((number(s["redo_queue_bytes"]) or 0 for s in ends), default=None),
            "redo_trend_median": median(trends),
            "send_max": max(send) if send else None,
            "send_end_max": max((number(s["log_send_queue_bytes"]) or 0 for s in ends), default=None),
        })
    return out


def summarize_lag(rows):
    """Per (system, replica) of the lag scenario: maxima, 95th percentiles
    and the last sample of the three queues, and the load's median TPS."""
    samples = {}
    for r in rows:
        if r["kind"] == "lag":
            samples.setdefault((r["system"], r["replica"]), []).append(r)
    tps = {}
    for r in rows:
        if r["kind"] == "progress" and r["scenario"] == "lag":
            tps.setdefault(r["system"], []).append(number(r["tps"]))
    out = []
    for (system, replica), xs in sorted(samples.items()):
        xs.sort(key=lambda r: float(r["t_s"]))
        redo = [number(r["redo_queue_bytes"]) or 0 for r in xs]
        send = [number(r["log_send_queue_bytes"]) or 0 for r in xs]
        lag = [number(r["secondary_lag_s"]) for r in xs]
        lag_known = [x for x in lag if x is not None]
        out.append({
            "system": system, "label": LABELS.get(system, system), "replica": replica,
            "samples": len(xs), "load_tps_median": median(tps.get(system, [])),
            "redo_max": max(redo), "redo_p95": percentile(redo, 95), "redo_last": redo[-1],
            "send_max": max(send), "send_p95": percentile(send, 95), "send_last": send[-1],
            "lag_s_max": max(lag_known) if lag_known else None,
            "lag_s_p95": percentile(lag_known, 95),
            "lag_s_last": lag[-1],
        })
    return out


def summarize_seeding(rows):
    """The seeding scenario's result rows, typed, with MB/s per trial and
    the median over trials per phase."""
    trials = []
    for r in rows:
        if r["kind"] == "seeding":
            trials.append({
                "phase": r["phase"], "trial": number(r["trial"]), "replica": r["replica"],
                "bytes": number(r["bytes"]), "elapsed_s": number(r["elapsed_s"]),
                "mb_per_s": number(r["mb_per_s"]), "note": r.get("note", ""),
            })
    phases = []
    for phase in sorted({t["phase"] for t in trials}):
        xs = [t for t in trials if t["phase"] == phase]
        phases.append({
            "phase": phase, "trials": len(xs),
            "bytes_median": median(t["bytes"] for t in xs),
            "elapsed_s_median": median(t["elapsed_s"] for t in xs),
            "mb_per_s_median": median(t["mb_per_s"] for t in xs),
            "mb_per_s_min": min((t["mb_per_s"] for t in xs if t["mb_per_s"] is not None), default=None),
            "mb_per_s_max": max((t["mb_per_s"] for t in xs if t["mb_per_s"] is not None), default=None),
        })
    return {"trials": trials, "phases": phases}


def summarize_listener(rows):
    """One entry per (system, clients) of the listener scenario: medians
    over trials, the ratio of the median TPS to its direct counterpart's
    median at the same client count, and the sessions counted on each
    replica during the runs (summed over trials)."""
    order = {s: i for i, (s, _, _, _) in enumerate(LISTENER_SYSTEMS)}
    info = {s: (g, label, base) for s, g, label, base in LISTENER_SYSTEMS}
    cells, sessions = {}, {}
    for r in rows:
        if r.get("scenario") != "listener" or not r.get("clients"):
            continue
        key = (r["system"], int(r["clients"]))
        if r["kind"] == "run":
            cells.setdefault(key, []).append(r)
        elif r["kind"] == "sessions":
            per = sessions.setdefault(key, {})
            per[r["replica"]] = per.get(r["replica"], 0) + (number(r["rows"]) or 0)
    out = []
    for (system, clients), runs in sorted(cells.items(), key=lambda kv: (order.get(kv[0][0], len(order)), kv[0][1])):
        group, label, base = info.get(system, ("", system, None))
        tps = [number(r["tps"]) for r in runs]
        ok = [t for t in tps if t is not None]
        out.append({
            "system": system, "group": group, "label": label, "baseline": base, "clients": clients,
            "trials": len(runs), "failed_runs": len(tps) - len(ok), "tps_trials": tps,
            "tps_median": median(tps), "tps_min": min(ok) if ok else None, "tps_max": max(ok) if ok else None,
            "latency_avg_ms_median": median(number(r["latency_avg_ms"]) for r in runs),
            "failed_tx": sum(number(r["failed"]) or 0 for r in runs),
            "sessions": dict(sorted(sessions.get((system, clients), {}).items())),
        })
    by_key = {(c["system"], c["clients"]): c for c in out}
    for c in out:
        b = by_key.get((c["baseline"], c["clients"])) if c["baseline"] else None
        c["ratio_direct"] = ratio(c["tps_median"], b["tps_median"]) if b else None
    return out


GEO_LAG_SYSTEMS = [
    ("availdb", "availdb: region A → geo-secondary in region B (async), read on B's primary"),
    ("pg", "PostgreSQL: primary → sync standby → async cascading standby, read on the cascade"),
]
# Phases of the geo failover trials, in table order: (phase, what).
GEO_FORCED_PHASES = [
    ("rto", "FORCE_FAILOVER_ALLOW_DATA_LOSS starts → first commit in the new source's region (RTO)"),
    ("statement", "the FORCE_FAILOVER_ALLOW_DATA_LOSS statement"),
    ("old_source_last_ack", "statement starts → the old source's last acknowledged commit"),
    ("old_source_refuses", "statement starts → the old source refuses writes (deposed)"),
    ("rejoin", "statement starts → the old source rejoined: link CATCH_UP, lag 0"),
]
GEO_PLANNED_PHASES = [
    ("statement", "the ALTER DATABASE app FAILOVER statement"),
    ("window", "write-unavailable window (longest gap between acknowledged commits)"),
    ("old_source_follows", "statement starts → the old source follows: link CATCH_UP, lag 0"),
]


def spread(values):
    """n, p50, p99, max and min of a list (None entries left out)."""
    xs = [v for v in values if v is not None]
    return {"n": len(xs), "p50": percentile(xs, 50), "p99": percentile(xs, 99),
            "max": max(xs, default=None), "min": min(xs, default=None)}


def summarize_geo(rows):
    """The geo scenario's rows: lag percentiles per system with availdb /
    PostgreSQL ratios, the sampled lag views, the failover trials'
    percentiles and losses, and the termination per size."""
    mine = [dict({c: "" for c in CSV_COLUMNS}, **r) for r in rows if r["kind"].startswith("geo_")]
    if not mine:
        return None
    lag = []
    for system, label in GEO_LAG_SYSTEMS:
        for r in mine:
            if r["kind"] == "geo_lag" and r["system"] == system:
                samples = [number(x["secondary_lag_s"]) for x in mine
                           if x["kind"] == "geo_lag_sample" and x["system"] == system]
                lag.append({
                    "system": system, "label": label, "seconds": number(r["seconds"]),
                    "rate": number(r["tps"]), "commits": number(r["transactions"]), "seen": number(r["rows"]),
                    "write_errors": number(r["failed"]), "commit_ms_mean": number(r["latency_avg_ms"]),
                    **{f"{p}_s": None if number(r[f"{p}_ms"]) is None else number(r[f"{p}_ms"]) / 1000
                       for p in ("p50", "p95", "p99", "max")},
                    "view_samples": spread(samples), "note": r.get("note", ""),
                })
    by = {x["system"]: x for x in lag}
    ratios = {}
    if "availdb" in by and "pg" in by:
        for p in ("p50", "p95", "p99", "max"):
            ratios[p] = ratio(by["availdb"][f"{p}_s"], by["pg"][f"{p}_s"])

    def trials(kind, phases):
        out = []
        for phase, what in phases:
            xs = [number(r["elapsed_s"]) for r in mine if r["kind"] == kind and r["phase"] == phase]
            if xs:
                out.append({"phase": phase, "what": what, **spread(xs)})
        return out

    def per_trial(kind, phase):
        return [{"trial": number(r["trial"]), "direction": r["system"], "rows": number(r["rows"]),
                 "of": number(r["expected_rows"]), "elapsed_s": number(r["elapsed_s"])}
                for r in mine if r["kind"] == kind and r["phase"] == phase]

    sizes = {}
    for r in mine:
        if r["kind"] != "geo_termination":
            continue
        e = sizes.setdefault(r["system"], {"database": r["system"], "size_mb": number(r["size_mb"]),
                                           "bytes": number(r["bytes"])})
        if r["phase"] == "error":
            e["error"] = r["note"]
            continue
        e[f"{r['phase']}_s"] = number(r["elapsed_s"])
        if r["phase"] in ("fill", "seeding"):
            e[f"{r['phase']}_mb_per_s"] = number(r["mb_per_s"])
        if r["phase"] == "termination":
            e["rows_b"] = number(r["rows"])
            e["rows_a"] = number(r["expected_rows"])
            e["termination_note"] = r["note"]
    return {
        "lag": lag, "lag_ratios": ratios,
        "forced": trials("geo_forced", GEO_FORCED_PHASES),
        "forced_lost": per_trial("geo_forced", "lost"),
        "forced_discarded": per_trial("geo_forced", "discarded"),
        "planned": trials("geo_planned", GEO_PLANNED_PHASES),
        "planned_lost": per_trial("geo_planned", "lost"),
        "termination": sorted(sizes.values(), key=lambda e: (e["size_mb"] is None, e["size_mb"])),
    }


def mb_per_s(nbytes, seconds):
    """Throughput in MB/s (10^6 bytes); None when it cannot be computed."""
    if nbytes is None or seconds is None or seconds <= 0:
        return None
    return nbytes / 1e6 / seconds


# --- the run document ------------------------------------------------------------

def read_meta(path):
    """The "key<TAB>value" lines scripts/bench writes, nested on dots:
    "machine.cpu\tAMD EPYC" -> {"machine": {"cpu": "AMD EPYC"}}. A key
    ending in ":n" holds a number ("machine.cores:n\t2"); a repeated key
    ending in "[]" collects a list."""
    meta = {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if "\t" not in line:
                continue
            key, value = line.split("\t", 1)
            if key.endswith(":n"):
                key, value = key[:-2], number(value)
            node = meta
            parts = key.split(".")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            last = parts[-1]
            if last.endswith("[]"):
                node.setdefault(last[:-2], []).append(value)
            else:
                node[last] = value
    return meta


def typed_rows(rows):
    """CSV rows with empty cells dropped and numbers as numbers."""
    out = []
    for r in rows:
        t = {}
        for k, v in r.items():
            if v is None or v == "":
                continue
            n = number(v)
            t[k] = n if n is not None and k not in ("replica", "system", "scenario", "phase", "kind", "note") else v
        out.append(t)
    return out


def failover_summary(doc):
    """Percentiles of the failover trials' JSON (scripts/bench-scripts/failover.py)."""
    if not doc:
        return None
    trials = doc.get("trials", [])
    kills = [t["failover_s"] for t in trials if t.get("kind") == "kill" and t.get("failover_s") is not None]
    planned = [t["window_s"] for t in trials if t.get("kind") == "planned" and t.get("window_s") is not None]
    return {
        "kill_failover_s": {"n": len(kills), "p50": percentile(kills, 50), "p99": percentile(kills, 99),
                            "max": max(kills, default=None), "min": min(kills, default=None)},
        "planned_window_s": {"n": len(planned), "p50": percentile(planned, 50),
                             "p99": percentile(planned, 99), "max": max(planned, default=None)},
    }


def build_document(rows, meta, failover=None, patroni=None):
    """The JSON document of one run: machine, versions, configuration, every
    measurement (the CSV rows), the summaries, the checks."""
    doc = dict(meta)
    doc["schema"] = 1
    doc["measurements"] = typed_rows(rows)
    doc["summary"] = {
        "matrix": summarize_matrix(rows),
        "redo": summarize_redo(rows),
        "lag": summarize_lag(rows),
        "seeding": summarize_seeding(rows),
        "listener": summarize_listener(rows),
        "geo": summarize_geo(rows),
    }
    if failover is not None:
        doc["failover"] = {"availdb": failover, "availdb_summary": failover_summary(failover)}
        if patroni is not None:
            doc["failover"]["patroni"] = patroni
            doc["failover"]["patroni_summary"] = failover_summary(patroni)
    return doc


# --- markdown ----------------------------------------------------------------------

def fmt(x, digits=0):
    if x is None:
        return "n/a"
    if isinstance(x, float) or digits:
        return f"{x:.{digits}f}"
    return str(x)


def matrix_markdown(doc):
    cells = doc["summary"]["matrix"]
    out = []
    for scenario, what in MATRIX_SCENARIOS.items():
        xs = [c for c in cells if c["scenario"] == scenario]
        if not xs:
            continue
        trials = max(c["trials"] for c in xs)
        out += [
            f"### {scenario}: {what}",
            "",
            f"Median of {trials} trial(s) per cell (TPS range = lowest–highest trial); "
            "the ratios divide medians measured in this run.",
            "",
            "| clients | system | TPS | TPS range | / PG + sync standby | / PG alone | avg latency (ms) | p50 (ms) | p95 (ms) | p99 (ms) | failed tx |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for c in xs:
            out.append(
                f"| {c['clients']} | {c['label']} | {fmt(c['tps_median'])} | "
                f"{fmt(c['tps_min'])}–{fmt(c['tps_max'])} | {fmt(c['ratio_pg_sync'], 2)} | "
                f"{fmt(c['ratio_pg_alone'], 2)} | {fmt(c['latency_avg_ms_median'], 3)} | "
                f"{fmt(c['p50_ms_median'], 3)} | {fmt(c['p95_ms_median'], 3)} | "
                f"{fmt(c['p99_ms_median'], 3)} | {c['failed_tx']}"
                + (f" ({c['failed_runs']} run(s) failed)" if c["failed_runs"] else "") + " |")
        out.append("")
        inits = [r for r in doc["measurements"] if r.get("kind") == "init" and r.get("scenario") == scenario]
        if inits:
            out += [
                f"Set-up of {scenario} on each system ({inits[0].get('note') or 'init'}):",
                "",
                "| system | seconds |",
                "|---|---:|",
            ]
            out += [f"| {LABELS.get(r['system'], r['system'])} | {fmt(r.get('elapsed_s'), 1)} |" for r in inits]
            out.append("")
    redo = doc["summary"]["redo"]
    if redo:
        out += [
            "Redo and send queues of the 3-replica groups (bytes), sampled on r1 every second "
            "during each run of every trial; \"end\" = right after pgbench returned (worst trial).",
            "",
            "| scenario | system | clients | replica | samples | max redo queue | redo queue at end | redo trend (bytes/s, median) | max send queue | send queue at end |",
            "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in redo:
            out.append(f"| {r['scenario']} | {r['label']} | {r['clients']} | {r['replica']} | {r['samples']} | "
                       f"{fmt(r['redo_max'])} | {fmt(r['redo_end_max'])} | {fmt(r['redo_trend_median'])} | "
                       f"{fmt(r['send_max'])} | {fmt(r['send_end_max'])} |")
        out.append("")
    return out


def lag_markdown(doc):
    lag = doc["summary"]["lag"]
    if not lag:
        return []
    cfg = doc.get("config", {}).get("lag", {})
    out = [
        f"Sustained insert load (commit.sql, -c {cfg.get('clients', '?')}, {cfg.get('seconds', '?')} s) "
        f"on r1; `sys.dm_hadr_database_replica_states` sampled on r1 every {cfg.get('interval_s', '?')} s.",
        "",
        "| system | replica | samples | load TPS (median per second) | max redo queue (bytes) | p95 redo queue | max send queue (bytes) | p95 send queue | last send queue | max lag (s) | p95 lag (s) | last lag (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in lag:
        out.append(f"| {r['label']} | {r['replica']} | {r['samples']} | {fmt(r['load_tps_median'])} | "
                   f"{fmt(r['redo_max'])} | {fmt(r['redo_p95'])} | {fmt(r['send_max'])} | {fmt(r['send_p95'])} | "
                   f"{fmt(r['send_last'])} | {fmt(r['lag_s_max'], 3)} | {fmt(r['lag_s_p95'], 3)} | {fmt(r['lag_s_last'], 3)} |")
    out.append("")
    return out


def seeding_markdown(doc):
    s = doc["summary"]["seeding"]
    if not s["trials"]:
        return []
    out = [
        "| phase | trial | replica | MB | seconds | MB/s | how it was timed |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for t in s["trials"]:
        mb = None if t["bytes"] is None else t["bytes"] / 1e6
        out.append(f"| {t['phase']} | {t['trial']} | {t['replica']} | {fmt(mb, 1)} | {fmt(t['elapsed_s'], 2)} | "
                   f"{fmt(t['mb_per_s'], 1)} | {t['note']} |")
    out += ["", "| phase | trials | median MB | median seconds | median MB/s | range MB/s |", "|---|---:|---:|---:|---:|---:|"]
    for p in s["phases"]:
        mb = None if p["bytes_median"] is None else p["bytes_median"] / 1e6
        out.append(f"| {p['phase']} | {p['trials']} | {fmt(mb, 1)} | {fmt(p['elapsed_s_median'], 2)} | "
                   f"{fmt(p['mb_per_s_median'], 1)} | {fmt(p['mb_per_s_min'], 1)}–{fmt(p['mb_per_s_max'], 1)} |")
    out.append("")
    return out


def listener_markdown(doc):
    cells = doc["summary"].get("listener") or []
    if not cells:
        return []
    trials = max(c["trials"] for c in cells)
    out = [
        f"Median of {trials} trial(s) per cell (TPS range = lowest–highest trial); \"/ direct\" divides the "
        "median by the median of the same group's direct connection at the same client count (r1 for the "
        "read-write port, r2 for the read-only port). Sessions per replica: pgbench's connections during each "
        "run, counted as established TCP connections to each replica (its client port; r1 also its endpoint, "
        "where the listener relays sessions for the primary), summed over the trials.",
        "",
        "| group | clients | path | TPS | TPS range | / direct | avg latency (ms) | sessions per replica | failed tx |",
        "|---|---:|---|---:|---:|---:|---:|---|---:|",
    ]
    for c in cells:
        spread = ", ".join(f"{k} {v}" for k, v in c["sessions"].items() if v) or "n/a"
        out.append(f"| `{c['group']}` | {c['clients']} | {c['label']} | {fmt(c['tps_median'])} | "
                   f"{fmt(c['tps_min'])}–{fmt(c['tps_max'])} | {fmt(c['ratio_direct'], 2) if c['baseline'] else ''} | "
                   f"{fmt(c['latency_avg_ms_median'], 3)} | {spread} | {c['failed_tx']}"
                   + (f" ({c['failed_runs']} run(s) failed)" if c["failed_runs"] else "") + " |")
    out.append("")
    return out


def secs(x, digits=3):
    return fmt(x, digits)


def geo_markdown(doc):
    g = doc["summary"].get("geo")
    if not g:
        return []
    cfg = doc.get("config", {}).get("geo", {})
    out = []
    if g["lag"]:
        out += [
            f"### geo lag: single-row inserts at a steady {cfg.get('rate', '?')}/s for {cfg.get('seconds', '?')} s",
            "",
            "A writer commits one row per transaction at a fixed schedule on the source; a reader polls "
            f"`SELECT max(id)` on the copy every ~{fmt(cfg.get('poll_ms'))} ms. An id's lag = the midpoint of the first "
            "poll that showed it − the time its commit was acknowledged to the writer (one monotonic clock): each "
            "figure includes up to one poll interval plus half a poll's round trip, on both systems alike. "
            "Same client, same method, one after the other in this run.",
            "",
            "| system | commits | commits/s | writer's mean commit (ms) | lag p50 (s) | p95 (s) | p99 (s) | max (s) | lag view sampled every 0.5 s: p50 / p99 / max (s) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for x in g["lag"]:
            v = x["view_samples"]
            out.append(f"| {x['label']} | {fmt(x['commits'])} | {fmt(x['rate'], 1)} | {fmt(x['commit_ms_mean'], 2)} | "
                       f"{secs(x['p50_s'])} | {secs(x['p95_s'])} | {secs(x['p99_s'])} | {secs(x['max_s'])} | "
                       f"{secs(v['p50'])} / {secs(v['p99'])} / {secs(v['max'])} ({v['n']} samples) |")
        if g["lag_ratios"]:
            r = g["lag_ratios"]
            out += ["", f"availdb / PostgreSQL lag ratio: p50 {fmt(r.get('p50'), 2)}, p95 {fmt(r.get('p95'), 2)}, "
                        f"p99 {fmt(r.get('p99'), 2)}, max {fmt(r.get('max'), 2)}."]
        out += ["", "The lag views: availdb's `replication_lag_sec` of the link in `sys.dm_geo_replication_link_status` "
                    "on region A's primary; PostgreSQL's `replay_lag` of the cascading standby in the standby's "
                    "`pg_stat_replication` (NULL, left out, while idle).", ""]
    if g["forced"]:
        n = max(x["n"] for x in g["forced"])
        out += [
            f"### geo forced failover (`ALTER DATABASE app FORCE_FAILOVER_ALLOW_DATA_LOSS` on the geo-secondary region's primary), {n} trial(s), alternating A → B and B → A",
            "",
            "A writer commits every ~10 ms on the source's primary throughout; a probe tries an insert in the "
            "geo-secondary's region every 20 ms from the statement's start. Both regions are reachable, so the old "
            "source is deposed, rewound and follows the new one before the next trial.",
            "",
            "| measure | trials | p50 (s) | p99 (s) | max (s) | min (s) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for x in g["forced"]:
            out.append(f"| {x['what']} | {x['n']} | {secs(x['p50'])} | {secs(x['p99'])} | {secs(x['max'])} | {secs(x['min'])} |")
        disc = {t["trial"]: t for t in g["forced_discarded"]}
        out += ["", "| trial | direction | acknowledged before the statement, lost | oldest lost commit's age at the statement (s) | acknowledged on the old source after it began, discarded |",
                "|---:|---|---:|---:|---:|"]
        for t in g["forced_lost"]:
            d = disc.get(t["trial"], {})
            out.append(f"| {t['trial']} | {t['direction']} | {fmt(t['rows'])} of {fmt(t['of'])} | {secs(t['elapsed_s'])} | "
                       f"{fmt(d.get('rows'))} of {fmt(d.get('of'))} |")
        out.append("")
    if g["planned"]:
        n = max(x["n"] for x in g["planned"])
        lost = sum(t["rows"] or 0 for t in g["planned_lost"])
        acked = sum(t["of"] or 0 for t in g["planned_lost"])
        out += [
            f"### geo planned failover (`ALTER DATABASE app FAILOVER` on the geo-secondary region's primary), {n} trial(s), alternating",
            "",
            "A writer that knows both regions commits every ~10 ms on whichever takes its writes (after an error it "
            "tries the other region).",
            "",
            "| measure | trials | p50 (s) | p99 (s) | max (s) | min (s) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for x in g["planned"]:
            out.append(f"| {x['what']} | {x['n']} | {secs(x['p50'])} | {secs(x['p99'])} | {secs(x['max'])} | {secs(x['min'])} |")
        out += ["", f"Acknowledged ids missing on the new source or (once it followed) the old one: {lost} of {acked}. "
                    "The writer's errors per trial, with when they were sent and answered, are in the CSV's `note` "
                    "(`kind=geo_planned`, `phase=lost`).", ""]
    if g["termination"]:
        out += [
            "### geo planned termination (`ALTER DATABASE x REMOVE SECONDARY ON SERVER 'B'`) by database size",
            "",
            "Per size, a new database in region A's group filled with 1 MB transactions of randomblob rows, then "
            "`ADD SECONDARY ON SERVER 'B'` (seeded from a full image), `sys.wait_for_database_copy_sync` (repeated "
            "until it returns), the link CATCH_UP with lag 0, and the planned termination timed; no writes meanwhile.",
            "",
            "| database | MB (file) | fill (s) | seeding: ADD → copy in sync (s) | seeding MB/s | ADD → CATCH_UP, lag 0 (s) | **termination (s)** | rows in B / A after |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for e in g["termination"]:
            mb = None if e.get("bytes") is None else e["bytes"] / 1e6
            tail = f"{fmt(e.get('rows_b'))} / {fmt(e.get('rows_a'))}"
            if e.get("error"):
                tail = f"**{e['error'][:200]}**"
            out.append(f"| `{e['database']}` | {fmt(mb, 1)} | {secs(e.get('fill_s'), 1)} | {secs(e.get('seeding_s'), 1)} | "
                       f"{fmt(e.get('seeding_mb_per_s'), 1)} | {secs(e.get('caught_up_s'), 1)} | **{secs(e.get('termination_s'))}** | {tail} |")
        out.append("")
    return out


def report_markdown(doc):
    """The tables this module owns (matrix, lag, seeding, listener, geo), as markdown."""
    out = []
    m = matrix_markdown(doc)
    if m:
        out += ["## commit matrix: availdb standalone / async / sync groups vs PostgreSQL alone and with a sync standby", ""] + m
    lag = lag_markdown(doc)
    if lag:
        out += ["## lag: secondary queues and lag over time under sustained writes", ""] + lag
    seed = seeding_markdown(doc)
    if seed:
        out += ["## seeding: catch-up after SUSPEND/RESUME and automatic seeding of an emptied replica", ""] + seed
    lst = listener_markdown(doc)
    if lst:
        out += ["## listener: select-only TPS, direct and through the listener", ""] + lst
    geo = geo_markdown(doc)
    if geo:
        out += ["## geo: geo-replication between two regions (`availdb up --regions 2`) vs PostgreSQL cascading replication", ""] + geo
    return "\n".join(out)


# --- plots -----------------------------------------------------------------------------

PLOTS = {
    "commit_tps": "commit matrix: TPS vs clients per system",
    "commit_latency": "commit matrix: p50/p95/p99 latency per system and client count",
    "lag": "lag: send/redo queue and lag seconds over time",
    "failover": "failover: distribution of kill -9 → first commit",
    "listener": "listener: select-only TPS direct vs through the listener, and over 1/2/3 read-only targets",
}


def plot(doc, directory):
    """Writes the PNG plots the run's data allows; returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(directory, exist_ok=True)
    stamp = doc.get("stamp", "run")
    written = []

    def save(fig, name):
        path = os.path.join(directory, f"{name}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    cells = doc["summary"]["matrix"]
    for scenario in MATRIX_SCENARIOS:
        xs = [c for c in cells if c["scenario"] == scenario]
        if not xs:
            continue
        fig, ax = plt.subplots(figsize=(8, 5))
        for system, label in SYSTEMS:
            pts = sorted((c["clients"], c["tps_median"], c["tps_min"], c["tps_max"])
                         for c in xs if c["system"] == system and c["tps_median"] is not None)
            if not pts:
                continue
            cl = [p[0] for p in pts]
            ax.errorbar(cl, [p[1] for p in pts],
                        yerr=[[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]],
                        marker="o", capsize=3, label=label,
                        linestyle="--" if system.startswith("pg") else "-")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({c["clients"] for c in xs}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("pgbench clients")
        ax.set_ylabel("TPS (median of trials; bars: min–max)")
        ax.set_title(f"{scenario}: TPS vs clients ({stamp})")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
        save(fig, f"{scenario}_tps")

        clients = sorted({c["clients"] for c in xs})
        fig, axes = plt.subplots(1, len(clients), figsize=(4.5 * len(clients), 5), squeeze=False)
        for ax, cl in zip(axes[0], clients):
            row = [c for c in xs if c["clients"] == cl]
            row.sort(key=lambda c: [s for s, _ in SYSTEMS].index(c["system"]) if c["system"] in LABELS else 99)
            names = [c["label"].replace("availdb ", "").replace("PostgreSQL", "PG") for c in row]
            pos = range(len(row))
            for i, (key, name) in enumerate([("p50_ms_median", "p50"), ("p95_ms_median", "p95"), ("p99_ms_median", "p99")]):
                ax.bar([p + (i - 1) * 0.27 for p in pos], [c[key] or 0 for c in row], width=0.27, label=name)
            ax.set_xticks(list(pos))
            ax.set_xticklabels(names, rotation=45, ha="right", fontsize="small")
            ax.set_title(f"-c {cl}")
            ax.set_ylabel("latency (ms, median of trials)")
            ax.grid(True, axis="y", alpha=0.3)
        axes[0][0].legend()
        fig.suptitle(f"{scenario}: latency percentiles ({stamp})")
        save(fig, f"{scenario}_latency")

    lag_rows = [m for m in doc["measurements"] if m.get("kind") == "lag"]
    if lag_rows:
        systems = sorted({m["system"] for m in lag_rows}, key=lambda s: [x for x, _ in SYSTEMS].index(s) if s in LABELS else 99)
        fig, axes = plt.subplots(3, len(systems), figsize=(6 * len(systems), 9), squeeze=False, sharex=True)
        for j, system in enumerate(systems):
            mine = [m for m in lag_rows if m["system"] == system]
            for replica in sorted({m["replica"] for m in mine}):
                pts = sorted((m["t_s"], m) for m in mine if m["replica"] == replica)
                t = [p[0] for p in pts]
                axes[0][j].plot(t, [p[1].get("log_send_queue_bytes", 0) / 1e6 for p in pts], label=replica)
                axes[1][j].plot(t, [p[1].get("redo_queue_bytes", 0) / 1e6 for p in pts], label=replica)
                axes[2][j].plot(t, [p[1].get("secondary_lag_s") for p in pts], label=replica)
            progress = sorted((m["t_s"], m["tps"]) for m in doc["measurements"]
                              if m.get("kind") == "progress" and m.get("system") == system)
            if progress:
                twin = axes[0][j].twinx()
                twin.plot([p[0] for p in progress], [p[1] for p in progress], color="grey", alpha=0.5, label="primary TPS")
                twin.set_ylabel("primary TPS (grey)")
            load_s = doc.get("config", {}).get("lag", {}).get("seconds")
            if load_s is not None:
                for i in range(3):
                    axes[i][j].axvline(load_s, color="black", linestyle=":", linewidth=1)
            axes[0][j].set_title(f"{LABELS.get(system, system)} (load ends at the dotted line)")
            axes[0][j].set_ylabel("log send queue (MB)")
            axes[1][j].set_ylabel("redo queue (MB)")
            axes[2][j].set_ylabel("secondary_lag_seconds")
            axes[2][j].set_xlabel("seconds into the load")
            for i in range(3):
                axes[i][j].grid(True, alpha=0.3)
                axes[i][j].legend(fontsize="small", loc="upper left")
        fig.suptitle(f"lag under sustained writes ({stamp})")
        save(fig, "lag")

    fo = doc.get("failover")
    if fo:
        series = []
        for key, label in [("availdb", "availdb kill -9"), ("patroni", "PostgreSQL + Patroni kill -9")]:
            trials = (fo.get(key) or {}).get("trials", [])
            xs = [t["failover_s"] for t in trials if t.get("kind") == "kill" and t.get("failover_s") is not None]
            if xs:
                series.append((label, xs))
        planned = [t["window_s"] for t in (fo.get("availdb") or {}).get("trials", [])
                   if t.get("kind") == "planned" and t.get("window_s") is not None]
        if planned:
            series.append(("availdb planned (write gap)", planned))
        if series:
            fig, ax = plt.subplots(figsize=(8, 4.5))
            ax.boxplot([s[1] for s in series], vert=False, showfliers=True)
            for i, (_, xs) in enumerate(series, start=1):
                ax.scatter(xs, [i] * len(xs), alpha=0.6, s=15)
            ax.set_yticks(range(1, len(series) + 1))
            ax.set_yticklabels([f"{s[0]} (n={len(s[1])})" for s in series])
            ax.set_xscale("log")
            ax.set_xlabel("seconds until a client commits again (log scale)")
            ax.set_title(f"failover time distribution ({stamp})")
            ax.grid(True, axis="x", alpha=0.3)
            save(fig, "failover")

    cells = (doc["summary"].get("listener") or [])
    if cells:
        panels = [("up --replicas 3", "listener overhead (`up --replicas 3`)"),
                  ("up --replicas 4", "read-only routing (`up --replicas 4`)")]
        panels = [(g, t) for g, t in panels if any(c["group"] == g for c in cells)]
        fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5), squeeze=False)
        for ax, (group, title) in zip(axes[0], panels):
            mine = [c for c in cells if c["group"] == group]
            systems = [s for s, g, _, _ in LISTENER_SYSTEMS if g == group and any(c["system"] == s for c in mine)]
            clients = sorted({c["clients"] for c in mine})
            width = 0.8 / max(1, len(systems))
            for i, system in enumerate(systems):
                by = {c["clients"]: c for c in mine if c["system"] == system}
                xs = [k + (i - (len(systems) - 1) / 2) * width for k in range(len(clients))]
                med = [(by[cl]["tps_median"] or 0) if cl in by else 0 for cl in clients]
                lo = [m - (by[cl]["tps_min"] or m) if cl in by else 0 for m, cl in zip(med, clients)]
                hi = [(by[cl]["tps_max"] or m) - m if cl in by else 0 for m, cl in zip(med, clients)]
                label = next(lbl for s, _, lbl, _ in LISTENER_SYSTEMS if s == system)
                ax.bar(xs, med, width=width, yerr=[lo, hi], capsize=3, label=label)
            ax.set_xticks(range(len(clients)))
            ax.set_xticklabels([f"-c {c}" for c in clients])
            ax.set_ylabel("select-only TPS (median of trials; bars: min–max)")
            ax.set_title(title)
            ax.grid(True, axis="y", alpha=0.3)
            ax.set_ylim(top=ax.get_ylim()[1] * 1.3)  # room for the legend above the bars
            ax.legend(fontsize="small", loc="upper left")
        fig.suptitle(f"listener: point selects direct and through the listener ({stamp})")
        save(fig, "listener")
    return written


# --- the sampler ---------------------------------------------------------------------------

def psql_query(conninfo, sql):
    """Rows of sql as psql prints them unaligned with "," between columns;
    no rows when psql fails or takes over 3 s."""
    env = dict(os.environ, PGCONNECT_TIMEOUT="2")
    try:
        res = subprocess.run(["psql", "-d", conninfo, "-X", "-Atq", "-F", ",", "-c", sql],
                             capture_output=True, text=True, timeout=3, env=env)
    except subprocess.TimeoutExpired:
        return []
    return res.stdout.splitlines() if res.returncode == 0 else []


def sample(query, interval, seconds, out_path, clock=time.monotonic, sleep=time.sleep):
    """Calls query() at 0, interval, 2 * interval, ... up to seconds after the
    start, appending "t_s,<row>" to out_path for every row it returns (t_s:
    when the call began). A call that overruns skips the slots it overran
    rather than bunching the next calls up."""
    start = clock()
    i = 0
    while i * interval <= seconds + 1e-9:
        wait = start + i * interval - clock()
        if wait > 0:
            sleep(wait)
        t = clock() - start
        lines = query()
        with open(out_path, "a") as f:
            for line in lines:
                f.write(f"{t:.3f},{line}\n")
        i = max(i + 1, math.ceil((clock() - start) / interval))


# --- command line ----------------------------------------------------------------------------

def free_port(offsets, low=20000, high=None):
    """A random port P (from `low`, at most `high`) such that P + o is free
    on 127.0.0.1 for every o of `offsets`, all below the kernel's ephemeral
    range, so a client socket never takes a port a node is (re)started on.
    None after 200 tries."""
    import random
    import socket
    offsets = list(offsets) or [0]
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    top = max(ephemeral_low, low + 1000) - max(offsets) - 1
    high = top if high is None else min(high, top)
    for _ in range(200):
        port = random.randint(low, high)
        try:
            for o in offsets:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + o))
        except OSError:
            continue
        return port
    return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("columns")
    s = sub.add_parser("pgbench-summary")
    s.add_argument("log")
    s = sub.add_parser("latency")
    s.add_argument("dir")
    s = sub.add_parser("progress")
    s.add_argument("log")
    s = sub.add_parser("connections")
    s.add_argument("--samples", type=int, default=1)
    s.add_argument("--interval", type=float, default=0.0)
    s.add_argument("ports", nargs="+", type=int)
    s = sub.add_parser("metric")
    s.add_argument("--name", required=True)
    s.add_argument("--label", action="append", default=[],
                   help='only label sets with KEY="VALUE", given as KEY=VALUE (repeatable)')
    s.add_argument("ports", nargs="+", type=int)
    s = sub.add_parser("free-port")
    s.add_argument("offsets", nargs="*", type=int)
    s = sub.add_parser("sample")
    s.add_argument("--conninfo", required=True)
    s.add_argument("--sql", required=True)
    s.add_argument("--interval", type=float, required=True)
    s.add_argument("--seconds", type=float, required=True)
    s.add_argument("--out", required=True)
    s = sub.add_parser("report")
    s.add_argument("--csv", required=True)
    s.add_argument("--meta", required=True)
    s.add_argument("--failover")
    s.add_argument("--patroni")
    s.add_argument("--json", required=True)
    s.add_argument("--md", required=True)
    s = sub.add_parser("plot")
    s.add_argument("json")
    s.add_argument("dir")
    a = p.parse_args(argv)

    if a.cmd == "pgbench-summary":
        with open(a.log) as f:
            r = parse_pgbench_summary(f.read())
        ok = r["tps"] is not None and r["latency_ms"] is not None
        print(r["tps"] if ok else "error", r["latency_ms"] if ok else "error", r["failed"], r["processed"], r["retried"])
    elif a.cmd == "columns":
        print(",".join(CSV_COLUMNS))
    elif a.cmd == "latency":
        lat = latencies_in(a.dir)
        print(*[("%.3f" % (percentile(lat, q) / 1000)) if lat else "error" for q in (50, 95, 99)], len(lat))
    elif a.cmd == "progress":
        with open(a.log) as f:
            for t, tps in parse_progress(f.read()):
                print(f"{t:g},{tps}")
    elif a.cmd == "connections":
        samples = []
        for i in range(max(1, a.samples)):
            if i:
                time.sleep(a.interval)
            lines = []
            for path in ("/proc/net/tcp", "/proc/net/tcp6"):
                try:
                    with open(path) as f:
                        lines.extend(f.read().splitlines())
                except OSError:
                    pass
            samples.append(count_established(lines, a.ports))
        # The median drops a connection that lives for one sample only.
        print(" ".join(f"{p}={round(median([c[p] for c in samples]))}" for p in a.ports))
    elif a.cmd == "metric":
        a.label = [f'{k}="{v}"' for k, v in (kv.split("=", 1) for kv in a.label)]
        # Each port's /metrics: "PORT=value" (an integer), "PORT=error" if
        # it does not answer.
        import urllib.request
        values = []
        for port in a.ports:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                    values.append(f"{port}={round(metric_value(r.read().decode(), a.name, a.label))}")
            except OSError:
                values.append(f"{port}=error")
        print(" ".join(values))
    elif a.cmd == "free-port":
        port = free_port(a.offsets)
        if port is None:
            print("benchlib: no free ports found", file=sys.stderr)
            return 1
        print(port)
    elif a.cmd == "sample":
        sample(lambda: psql_query(a.conninfo, a.sql), a.interval, a.seconds, a.out)
    elif a.cmd == "report":
        def load(path):
            if not path or not os.path.exists(path):
                return None
            with open(path) as f:
                return json.load(f)
        doc = build_document(read_csv(a.csv), read_meta(a.meta), load(a.failover), load(a.patroni))
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=1)
        with open(a.md, "w") as f:
            f.write(report_markdown(doc) + "\n")
    elif a.cmd == "plot":
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("benchlib: matplotlib is not installed: no plots", file=sys.stderr)
            return 3
        with open(a.json) as f:
            doc = json.load(f)
        for path in plot(doc, a.dir):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
