"""Unit tests of benchlib: pgbench output parsing, statistics, summaries,
the run document and the plots.

    python3 -m unittest discover -s scripts/bench-scripts -p 'test_*.py'

(tests/bench_smoke.rs runs them as part of `cargo test`.)
"""

import csv
import io
import json
import os
import sys
import tempfile
import unittest
from contextlib import redirect_stdout

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True

import benchlib  # noqa: E402

# pgbench 15's output for a custom script with retries allowed.
PGBENCH_OK = """\
pgbench (15.18 (Debian 15.18-0+deb12u1), server 16.0)
transaction type: rw.sql
scaling factor: 1
query mode: prepared
number of clients: 4
number of threads: 4
maximum number of tries: 10
duration: 5 s
number of transactions actually processed: 1517
number of failed transactions: 2 (0.132%)
number of transactions retried: 31 (2.044%)
total number of retries: 40
latency average = 13.171 ms
initial connection time = 3.137 ms
tps = 303.705961 (without initial connection time)
"""

# A run that could not connect: no result lines at all.
PGBENCH_FAILED = """\
pgbench: error: connection to server at "127.0.0.1", port 1 failed: Connection refused
pgbench: error: could not create connection for initialization
"""


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=benchlib.CSV_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow(r)


def run_row(scenario, system, clients, trial, tps, p50=1.0, failed=0):
    return {"kind": "run", "scenario": scenario, "system": system, "clients": clients, "trial": trial,
            "seconds": 5, "tps": tps, "latency_avg_ms": 1.5, "p50_ms": p50, "p95_ms": p50 * 2,
            "p99_ms": p50 * 3, "failed": failed, "transactions": 100}


class FreePort(unittest.TestCase):
    def test_every_offset_of_a_free_port_is_free_and_below_the_ephemeral_range(self):
        import socket
        offsets = [0, 1, 100, 150]
        port = benchlib.free_port(offsets)
        self.assertIsNotNone(port)
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low = int(f.read().split()[0])
        self.assertLess(port + max(offsets), ephemeral_low)
        for o in offsets:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + o))

    def test_a_port_held_by_another_socket_is_not_chosen(self):
        import socket
        held = []
        try:
            # Hold every port of a narrow range but one: that one is chosen
            # (of 10 candidates, 200 tries miss it with odds of 1e-9).
            for p in range(20000, 20010):
                s = socket.socket()
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    s.close()
                    continue
                held.append((p, s))
            free, sock = held.pop(len(held) // 2)
            sock.close()
            self.assertEqual(benchlib.free_port([0], low=20000, high=20009), free)
        finally:
            for _, s in held:
                s.close()


class ParsePgbench(unittest.TestCase):
    def test_summary_of_a_successful_run(self):
        r = benchlib.parse_pgbench_summary(PGBENCH_OK)
        self.assertEqual(r, {"tps": 303.705961, "latency_ms": 13.171, "failed": 2, "processed": 1517, "retried": 31})

    def test_summary_of_a_failed_run_has_no_tps(self):
        r = benchlib.parse_pgbench_summary(PGBENCH_FAILED)
        self.assertIsNone(r["tps"])
        self.assertIsNone(r["latency_ms"])
        self.assertEqual((r["failed"], r["processed"], r["retried"]), (0, 0, 0))

    def test_summary_with_a_transaction_limit(self):
        r = benchlib.parse_pgbench_summary("number of transactions actually processed: 10/10\ntps = 5.0 (x)\nlatency average = 2.0 ms\n")
        self.assertEqual((r["processed"], r["tps"], r["latency_ms"]), (10, 5.0, 2.0))

    def test_per_transaction_log_leaves_out_failed_and_skipped(self):
        lines = [
            "0 1 812 0 1700000000 123456",
            "0 2 failed 0 1700000000 123999",
            "1 1 skipped 0 1700000001 5",
            "1 2 1500 0 1700000001 9",
            "",
            "garbage",
        ]
        self.assertEqual(benchlib.parse_pgbench_log(lines), [812, 1500])

    def test_latencies_of_every_log_in_a_folder(self):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "tx.1"), "w") as f:
                f.write("0 1 100 0 1 1\n0 2 300 0 1 2\n")
            with open(os.path.join(d, "tx.1.1"), "w") as f:
                f.write("1 1 200 0 1 3\n")
            self.assertEqual(sorted(benchlib.latencies_in(d)), [100, 200, 300])

    def test_progress_lines(self):
        text = ("starting vacuum...end.\n"
                "progress: 1.0 s, 1234.5 tps, lat 0.807 ms stddev 0.204, 0 failed\n"
                "progress: 2.0 s, 99.0 tps, lat 10.1 ms stddev 2.0, 0 failed, 3 retried, 4 retries\n"
                "progress: bogus\n")
        self.assertEqual(benchlib.parse_progress(text), [(1.0, 1234.5), (2.0, 99.0)])

    def test_established_connections_count_the_client_end_once(self):
        lines = [
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode",
            # client end of a connection to port 0x7918 = 31000, and its server end
            "   0: 0100007F:9C40 0100007F:7918 01 00000000:00000000 00:00000000 00000000     0        0 1",
            "   1: 0100007F:7918 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2",
            # the listening socket (0A) and a closing one (06) do not count
            "   2: 0100007F:7918 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3",
            "   3: 0100007F:9C41 0100007F:7918 06 00000000:00000000 00:00000000 00000000     0        0 4",
            # tcp6, remote port 0x7919 = 31001
            "   0: 0000000000000000FFFF00000100007F:9C42 0000000000000000FFFF00000100007F:7919 01 0:0 0:0 0 0 0 5",
            "garbage",
        ]
        self.assertEqual(benchlib.count_established(lines, [31000, 31001, 31002]),
                         {31000: 1, 31001: 1, 31002: 0})

    def test_metric_value_sums_every_label_set_of_that_metric_only(self):
        text = "\n".join([
            "# TYPE availdb_listener_handovers counter",
            'availdb_listener_handovers_total{group="ag1"} 3',
            'availdb_listener_handovers_total{group="ag2"} 2',
            "availdb_listener_handovers_total_other 7",
            'availdb_listener_sessions_total{group="ag1"} 9',
            "availdb_listener_handovers_total garbage",
        ])
        self.assertEqual(benchlib.metric_value(text, "availdb_listener_handovers_total"), 5.0)
        self.assertEqual(benchlib.metric_value(text, "availdb_nothing_total"), 0.0)

    def test_metric_value_keeps_only_the_label_sets_asked_for(self):
        text = "\n".join([
            'availdb_listener_relayed_sessions{group="ag1",replica="r1"} 2',
            'availdb_listener_relayed_sessions{group="ag1",replica="r10"} 5',
            'availdb_listener_relayed_sessions{group="ag2",replica="r1"} 1',
            'availdb_listener_relayed_sessions{group="ag1",replica="r2"} 4',
        ])
        name = "availdb_listener_relayed_sessions"
        self.assertEqual(benchlib.metric_value(text, name, ['replica="r1"']), 3.0)
        self.assertEqual(benchlib.metric_value(text, name, ['replica="r1"', 'group="ag2"']), 1.0)
        self.assertEqual(benchlib.metric_value(text, name), 12.0)

    def test_cli_prints_error_for_a_failed_run(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "log")
            with open(path, "w") as f:
                f.write(PGBENCH_FAILED)
            out = io.StringIO()
            with redirect_stdout(out):
                self.assertEqual(benchlib.main(["pgbench-summary", path]), 0)
            self.assertEqual(out.getvalue().split(), ["error", "error", "0", "0", "0"])


class Statistics(unittest.TestCase):
    def test_nearest_rank_percentiles(self):
        xs = list(range(1, 101))  # 1..100
        for p, want in [(50, 50), (95, 95), (99, 99), (100, 100), (0.5, 1)]:
            self.assertEqual(benchlib.percentile(xs, p), want, p)
        self.assertEqual(benchlib.percentile([7], 99), 7)
        self.assertEqual(benchlib.percentile([3, 1, 2], 50), 2)  # unsorted input
        self.assertEqual(benchlib.percentile([1, 2, 3, 4], 50), 2)
        self.assertIsNone(benchlib.percentile([], 50))

    def test_median(self):
        for xs, want in [([3, 1, 2], 2), ([4, 1, 3, 2], 2.5), ([5], 5), ([], None),
                         ([None, 4, None, 2], 3), ([None], None)]:
            self.assertEqual(benchlib.median(xs), want, xs)

    def test_ratio(self):
        self.assertAlmostEqual(benchlib.ratio(50, 200), 0.25)
        for a, b in [(None, 1), (1, None), (1, 0), (1, -1)]:
            self.assertIsNone(benchlib.ratio(a, b))

    def test_slope(self):
        self.assertAlmostEqual(benchlib.slope([(0, 1), (1, 3), (2, 5)]), 2.0)
        self.assertAlmostEqual(benchlib.slope([(0, 5), (1, 5), (2, 5), (3, 5)]), 0.0)
        self.assertIsNone(benchlib.slope([(0, 1), (1, 2)]))
        self.assertIsNone(benchlib.slope([(1, 1), (1, 2), (1, 3)]))

    def test_mb_per_s(self):
        self.assertAlmostEqual(benchlib.mb_per_s(40_000_000, 2.0), 20.0)
        self.assertIsNone(benchlib.mb_per_s(1, 0))
        self.assertIsNone(benchlib.mb_per_s(None, 1))

    def test_visibility_lags_take_the_first_poll_that_reached_each_id(self):
        acked = [(1, 10.0), (2, 10.5), (3, 11.0), (4, 12.0)]
        polls = [(10.0, 10.2, 0), (10.4, 10.6, 2), (11.0, 11.2, 2), (11.2, 11.4, 3)]
        lags, unseen = benchlib.visibility_lags(acked, polls)
        # id 1 and 2 first show at 10.5 (midpoint of 10.4..10.6), id 3 at 11.3; id 4 never.
        for got, want in zip(lags, [0.5, 0.0, 0.3]):
            self.assertAlmostEqual(got, want)
        self.assertEqual((len(lags), unseen), (3, 1))
        self.assertEqual(benchlib.visibility_lags([], polls), ([], 0))
        self.assertEqual(benchlib.visibility_lags(acked, []), ([], 4))

    def test_number(self):
        for cell, want in [("3", 3), ("2.5", 2.5), ("", None), ("error", None), (None, None), ("end", None)]:
            self.assertEqual(benchlib.number(cell), want, cell)


class Summaries(unittest.TestCase):
    def matrix_rows(self):
        rows = []
        for trial, (a, pg, alone) in enumerate([(100, 200, 400), (300, 250, 500), (200, 300, 450)], start=1):
            rows.append(run_row("commit", "sync2", 4, trial, a, p50=trial))
            rows.append(run_row("commit", "pg", 4, trial, pg))
            rows.append(run_row("commit", "pg_alone", 4, trial, alone))
        rows.append(run_row("commit", "sync2", 1, 1, "error", failed=3))
        rows.append(run_row("point_select", "availdb", 1, 1, 9999))  # not in the matrix
        return [{k: str(v) for k, v in r.items()} for r in rows]

    def test_matrix_medians_and_ratios_within_the_run(self):
        cells = benchlib.summarize_matrix(self.matrix_rows())
        by = {(c["system"], c["clients"]): c for c in cells}
        self.assertEqual(len(cells), 4)
        sync2 = by[("sync2", 4)]
        self.assertEqual(sync2["trials"], 3)
        self.assertEqual(sync2["tps_median"], 200)
        self.assertEqual((sync2["tps_min"], sync2["tps_max"]), (100, 300))
        self.assertEqual(sync2["p50_ms_median"], 2)
        self.assertAlmostEqual(sync2["ratio_pg_sync"], 200 / 250)
        self.assertAlmostEqual(sync2["ratio_pg_alone"], 200 / 450)
        self.assertAlmostEqual(by[("pg", 4)]["ratio_pg_sync"], 1.0)
        # A failed run has no TPS: counted, no ratio without a baseline.
        failed = by[("sync2", 1)]
        self.assertEqual((failed["failed_runs"], failed["failed_tx"]), (1, 3))
        self.assertIsNone(failed["tps_median"])
        self.assertIsNone(failed["ratio_pg_sync"])
        # Table order: clients, then the systems' order.
        self.assertEqual([(c["system"], c["clients"]) for c in cells],
                         [("sync2", 1), ("sync2", 4), ("pg_alone", 4), ("pg", 4)])

    def test_redo_summary_over_trials(self):
        rows = []
        for trial, samples in [(1, [("1", 0, 10), ("2", 4148, 20), ("3", 8296, 0), ("end", 0, 0)]),
                               (2, [("1", 0, 0), ("2", 0, 0), ("3", 0, 5), ("end", 4148, 5)])]:
            for t, redo, send in samples:
                rows.append({"kind": "redo", "scenario": "commit", "system": "sync3", "clients": "16",
                             "trial": str(trial), "t_s": t, "replica": "r2",
                             "redo_queue_bytes": str(redo), "log_send_queue_bytes": str(send)})
        [r] = benchlib.summarize_redo(rows)
        self.assertEqual((r["samples"], r["redo_max"], r["redo_end_max"], r["send_max"], r["send_end_max"]),
                         (6, 8296, 4148, 20, 5))
        self.assertAlmostEqual(r["redo_trend_median"], (4148 + 0) / 2)

    def test_lag_summary(self):
        rows = []
        for i in range(20):
            rows.append({"kind": "lag", "scenario": "lag", "system": "async3", "t_s": str(i / 2), "replica": "r2",
                         "redo_queue_bytes": str(i), "log_send_queue_bytes": str(100 * i),
                         "secondary_lag_s": "" if i == 0 else str(i / 100)})
        rows.append({"kind": "progress", "scenario": "lag", "system": "async3", "t_s": "1", "tps": "500"})
        rows.append({"kind": "progress", "scenario": "lag", "system": "async3", "t_s": "2", "tps": "700"})
        [r] = benchlib.summarize_lag(list(reversed(rows)))
        self.assertEqual(r["samples"], 20)
        self.assertEqual((r["redo_max"], r["redo_last"], r["send_max"], r["send_p95"]), (19, 19, 1900, 1800))
        self.assertAlmostEqual(r["lag_s_max"], 0.19)
        self.assertEqual(r["load_tps_median"], 600)

    def test_seeding_summary(self):
        rows = [{"kind": "seeding", "phase": "catch-up", "trial": str(t), "replica": "r2+r3",
                 "bytes": "40000000", "elapsed_s": str(s), "mb_per_s": str(40 / s), "note": "x"}
                for t, s in [(1, 2.0), (2, 4.0), (3, 1.0)]]
        s = benchlib.summarize_seeding(rows)
        self.assertEqual(len(s["trials"]), 3)
        [p] = s["phases"]
        self.assertEqual((p["trials"], p["mb_per_s_median"], p["mb_per_s_min"], p["mb_per_s_max"]), (3, 20.0, 10.0, 40.0))
        self.assertEqual(p["elapsed_s_median"], 2.0)

    def test_listener_summary_ratios_to_the_direct_path_and_sessions(self):
        rows = []
        for trial, (direct, lst) in enumerate([(1000, 900), (1200, 1000), (800, 700)], start=1):
            rows.append(run_row("listener", "r1_direct", 4, trial, direct))
            rows.append(run_row("listener", "rw_listener", 4, trial, lst))
            rows.append({"kind": "sessions", "scenario": "listener", "system": "rw_listener", "clients": "4",
                         "trial": str(trial), "replica": "r1", "rows": "4"})
            rows.append({"kind": "sessions", "scenario": "listener", "system": "rw_listener", "clients": "4",
                         "trial": str(trial), "replica": "r2", "rows": "0"})
        rows.append(run_row("listener", "ro4_t2", 1, 1, "error", failed=2))
        rows.append(run_row("commit", "sync2", 4, 1, 5))  # not the listener's
        rows = [{k: str(v) for k, v in r.items()} for r in rows]
        cells = benchlib.summarize_listener(rows)
        self.assertEqual([(c["system"], c["clients"]) for c in cells],
                         [("r1_direct", 4), ("rw_listener", 4), ("ro4_t2", 1)])
        direct, lst, failed = cells
        self.assertEqual((lst["tps_median"], lst["tps_min"], lst["tps_max"]), (900, 700, 1000))
        self.assertAlmostEqual(lst["ratio_direct"], 900 / 1000)
        self.assertIsNone(direct["ratio_direct"])
        self.assertEqual(lst["sessions"], {"r1": 12, "r2": 0})
        self.assertEqual((failed["failed_runs"], failed["failed_tx"], failed["ratio_direct"]), (1, 2, None))
        md = "\n".join(benchlib.listener_markdown({"summary": {"listener": cells}}))
        self.assertIn("| `up --replicas 3` | 4 | listener read-write port → r1 | 900 | 700–1000 | 0.90 | 1.500 | r1 12 | 0 |", md)

    def test_failover_summary(self):
        doc = {"trials": [{"kind": "kill", "failover_s": x} for x in (1.0, 2.0, 1.5)]
               + [{"kind": "planned", "window_s": 0.04}, {"kind": "kill", "failover_s": None}]}
        s = benchlib.failover_summary(doc)
        self.assertEqual(s["kill_failover_s"], {"n": 3, "p50": 1.5, "p99": 2.0, "max": 2.0, "min": 1.0})
        self.assertEqual(s["planned_window_s"]["n"], 1)
        self.assertIsNone(benchlib.failover_summary(None))


def geo_rows():
    rows = [
        {"kind": "geo_lag", "scenario": "geo", "system": "availdb", "seconds": "30", "tps": "199.5",
         "transactions": "6000", "rows": "6000", "failed": "0", "latency_avg_ms": "2.5",
         "p50_ms": "40", "p95_ms": "80", "p99_ms": "120", "max_ms": "300"},
        {"kind": "geo_lag", "scenario": "geo", "system": "pg", "seconds": "30", "tps": "200",
         "transactions": "6000", "rows": "6000", "failed": "0", "latency_avg_ms": "1.5",
         "p50_ms": "10", "p95_ms": "20", "p99_ms": "40", "max_ms": "50"},
        {"kind": "geo_lag_sample", "scenario": "geo", "system": "availdb", "t_s": "0.5", "secondary_lag_s": "0"},
        {"kind": "geo_lag_sample", "scenario": "geo", "system": "availdb", "t_s": "1.0", "secondary_lag_s": "0.2"},
        {"kind": "geo_lag_sample", "scenario": "geo", "system": "pg", "t_s": "0.5", "secondary_lag_s": ""},
    ]
    for trial, (rto, lost) in enumerate([(1.5, 0), (2.5, 3), (0.5, 1)]):
        d = "A->B" if trial % 2 == 0 else "B->A"
        rows.append({"kind": "geo_forced", "scenario": "geo", "system": d, "trial": str(trial), "phase": "rto", "elapsed_s": str(rto)})
        rows.append({"kind": "geo_forced", "scenario": "geo", "system": d, "trial": str(trial), "phase": "lost",
                     "rows": str(lost), "expected_rows": "100", "elapsed_s": "0.05" if lost else "0"})
        rows.append({"kind": "geo_forced", "scenario": "geo", "system": d, "trial": str(trial), "phase": "discarded",
                     "rows": "7", "expected_rows": "7"})
        rows.append({"kind": "geo_planned", "scenario": "geo", "system": d, "trial": str(trial), "phase": "window", "elapsed_s": str(rto / 10)})
        rows.append({"kind": "geo_planned", "scenario": "geo", "system": d, "trial": str(trial), "phase": "lost",
                     "rows": "0", "expected_rows": "150"})
    for mb, term in [(1000, 0.02), (1, 0.01)]:
        base = {"kind": "geo_termination", "scenario": "geo", "system": f"geo_term_{mb}mb", "size_mb": str(mb),
                "bytes": str(mb * 1_050_000)}
        rows.append({**base, "phase": "seeding", "elapsed_s": str(mb / 50), "mb_per_s": "52.5"})
        rows.append({**base, "phase": "termination", "elapsed_s": str(term), "rows": str(mb * 1000),
                     "expected_rows": str(mb * 1000)})
    rows.append({"kind": "run", "scenario": "commit", "system": "pg", "clients": "1", "trial": "1", "tps": "5"})
    return [{k: str(v) for k, v in r.items()} for r in rows]


class Geo(unittest.TestCase):
    def test_geo_summary_percentiles_ratios_and_sizes(self):
        g = benchlib.summarize_geo(geo_rows())
        self.assertEqual([x["system"] for x in g["lag"]], ["availdb", "pg"])
        self.assertAlmostEqual(g["lag"][0]["p99_s"], 0.12)
        self.assertAlmostEqual(g["lag_ratios"]["p50"], 4.0)
        self.assertAlmostEqual(g["lag_ratios"]["p99"], 3.0)
        self.assertEqual(g["lag"][0]["view_samples"]["n"], 2)
        self.assertEqual(g["lag"][1]["view_samples"]["n"], 0)  # NULL replay_lag samples are left out
        rto = next(x for x in g["forced"] if x["phase"] == "rto")
        self.assertEqual((rto["n"], rto["p50"], rto["p99"], rto["min"]), (3, 1.5, 2.5, 0.5))
        self.assertEqual([t["rows"] for t in g["forced_lost"]], [0, 3, 1])
        self.assertEqual([t["direction"] for t in g["forced_lost"]], ["A->B", "B->A", "A->B"])
        self.assertEqual(g["planned"][0]["phase"], "window")
        self.assertEqual([e["size_mb"] for e in g["termination"]], [1, 1000])  # by size
        self.assertAlmostEqual(g["termination"][1]["termination_s"], 0.02)
        self.assertEqual(g["termination"][1]["rows_b"], 1_000_000)
        self.assertIsNone(benchlib.summarize_geo([r for r in geo_rows() if not r["kind"].startswith("geo")]))

    def test_geo_markdown(self):
        doc = {"config": {"geo": {"rate": 200, "seconds": 30, "poll_ms": 10}},
               "summary": {"geo": benchlib.summarize_geo(geo_rows())}}
        md = "\n".join(benchlib.geo_markdown(doc))
        self.assertIn("steady 200/s for 30 s", md)
        self.assertIn("| 6000 | 199.5 | 2.50 | 0.040 | 0.080 | 0.120 | 0.300 | 0.000 / 0.200 / 0.200 (2 samples) |", md)
        self.assertIn("availdb / PostgreSQL lag ratio: p50 4.00, p95 4.00, p99 3.00, max 6.00.", md)
        self.assertIn("| 1 | B->A | 3 of 100 | 0.050 | 7 of 7 |", md)
        self.assertIn("Acknowledged ids missing on the new source or (once it followed) the old one: 0 of 450.", md)
        self.assertIn("| `geo_term_1000mb` | 1050.0 | n/a | 20.0 | 52.5 | n/a | **0.020** | 1000000 / 1000000 |", md)
        self.assertEqual(benchlib.geo_markdown({"summary": {"geo": None}}), [])


class Document(unittest.TestCase):
    def test_meta_nests_types_and_collects(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "meta.tsv")
            with open(path, "w") as f:
                f.write("stamp\t20261122-010203\nmachine.cores:n\t2\nmachine.cpu\tAMD EPYC 7B13\n"
                        "versions.availdb_commit\t0123456\nconfig.lag.interval_s:n\t0.5\n"
                        "checks[]\tone\nchecks[]\ttwo, with a comma\nnot a meta line\n")
            meta = benchlib.read_meta(path)
        self.assertEqual(meta["machine"], {"cores": 2, "cpu": "AMD EPYC 7B13"})
        self.assertEqual(meta["versions"]["availdb_commit"], "0123456")
        self.assertEqual(meta["config"]["lag"]["interval_s"], 0.5)
        self.assertEqual(meta["checks"], ["one", "two, with a comma"])

    def test_report_writes_json_and_markdown(self):
        rows = Summaries().matrix_rows()
        rows.append({"kind": "seeding", "scenario": "seeding", "phase": "seeding", "trial": "1", "replica": "r3",
                     "bytes": "41000000", "elapsed_s": "1.5", "mb_per_s": "27.3", "note": "from restart"})
        with tempfile.TemporaryDirectory() as d:
            write_csv(os.path.join(d, "r.csv"), rows)
            with open(os.path.join(d, "meta.tsv"), "w") as f:
                f.write("stamp\tT\nmachine.cores:n\t2\n")
            with open(os.path.join(d, "fo.json"), "w") as f:
                json.dump({"trials": [{"kind": "kill", "failover_s": 1.1}]}, f)
            self.assertEqual(benchlib.main(["report", "--csv", os.path.join(d, "r.csv"), "--meta", os.path.join(d, "meta.tsv"),
                                            "--failover", os.path.join(d, "fo.json"), "--patroni", os.path.join(d, "missing.json"),
                                            "--json", os.path.join(d, "r.json"), "--md", os.path.join(d, "r.md")]), 0)
            with open(os.path.join(d, "r.json")) as f:
                doc = json.load(f)
            with open(os.path.join(d, "r.md")) as f:
                md = f.read()
        self.assertEqual(doc["schema"], 1)
        self.assertEqual(doc["machine"]["cores"], 2)
        self.assertEqual(len(doc["measurements"]), len(rows))
        self.assertEqual(doc["measurements"][0]["tps"], 100)
        self.assertEqual(doc["measurements"][0]["system"], "sync2")
        self.assertNotIn("patroni", doc["failover"])
        self.assertEqual(doc["failover"]["availdb_summary"]["kill_failover_s"]["n"], 1)
        self.assertIn("| 4 | availdb sync, 1 sync secondary | 200 | 100–300 | 0.80 | 0.44 |", md)
        self.assertIn("| seeding | 1 | r3 | 41.0 | 1.50 | 27.3 | from restart |", md)


class Sampler(unittest.TestCase):
    def test_samples_on_schedule_and_skips_overrun_slots(self):
        now = [0.0]
        durations = iter([0.1, 1.3, 0.1, 0.1, 0.1, 0.1])

        def clock():
            return now[0]

        def sleep(s):
            self.assertGreater(s, 0)
            now[0] += s

        def query():
            now[0] += next(durations)
            return ["r2,0,4148,0.5", "r3,0,0,"]

        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "s.csv")
            benchlib.sample(query, 0.5, 2.0, path, clock=clock, sleep=sleep)
            with open(path) as f:
                lines = f.read().splitlines()
        times = sorted({float(line.split(",")[0]) for line in lines})
        # 0.0 and 0.5 on time; the 0.5 call ran until 1.9, so 1.0 and 1.5 are skipped.
        self.assertEqual(times, [0.0, 0.5, 2.0])
        self.assertEqual(lines[:2], ["0.000,r2,0,4148,0.5", "0.000,r3,0,0,"])


class Plots(unittest.TestCase):
    def test_plots_of_a_small_run(self):
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            self.skipTest("matplotlib is not installed (apt-get install python3-matplotlib)")
        rows = Summaries().matrix_rows()
        for t in range(4):
            rows.append({"kind": "lag", "scenario": "lag", "system": "sync3", "t_s": str(t / 2), "replica": "r2",
                         "redo_queue_bytes": "4148", "log_send_queue_bytes": "0", "secondary_lag_s": "0.001"})
            rows.append({"kind": "progress", "scenario": "lag", "system": "sync3", "t_s": str(t), "tps": "400"})
        doc = benchlib.build_document(rows, {"stamp": "T", "config": {"lag": {"seconds": 1}}},
                                      failover={"trials": [{"kind": "kill", "failover_s": 1.0},
                                                           {"kind": "planned", "window_s": 0.05}]},
                                      patroni={"trials": [{"kind": "kill", "failover_s": 26.0}]})
        doc = json.loads(json.dumps(doc))  # plot reads what the JSON file holds
        with tempfile.TemporaryDirectory() as d:
            written = benchlib.plot(doc, d)
            names = sorted(os.path.basename(p) for p in written)
            self.assertEqual(names, ["commit_latency.png", "commit_tps.png", "failover.png", "lag.png"])
        rows = [{k: str(v) for k, v in r.items()} for r in
                [run_row("listener", s, c, 1, 1000 + c) for s in ("r1_direct", "rw_listener", "ro4_r2_direct", "ro4_t3")
                 for c in (1, 4)]]
        doc = json.loads(json.dumps(benchlib.build_document(rows, {"stamp": "T"})))
        with tempfile.TemporaryDirectory() as d:
            written = benchlib.plot(doc, d)
            self.assertEqual([os.path.basename(p) for p in written], ["listener.png"])
            for p in written:
                with open(p, "rb") as f:
                    self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")


if __name__ == "__main__":
    unittest.main()
