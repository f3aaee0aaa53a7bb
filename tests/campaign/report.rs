//! The report of one campaign: `report.json` (everything, including the
//! per-second throughput the timeline is drawn from), `report.txt` (the
//! same in words, also printed), `timeline.png` (drawn by
//! `scripts/campaign-scripts/timeline.py` with matplotlib; a machine
//! without it gets a loud message and no picture, never a failure), and
//! the nodes' whole logs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use super::checker::{Coverage, Violation};
use super::nemesis::{FaultRecord, Finding, Kind};
use super::workload::{Ack, Op, RywStats, WriterReport};

/// Everything a run found.
pub struct Report {
    pub seed: u64,
    pub mode: &'static str,
    pub faults_requested: usize,
    pub binary: String,
    pub root: bool,
    pub skipped_kinds: Vec<(Kind, &'static str)>,
    pub duration_ms: u64,
    pub faults: Vec<FaultRecord>,
    pub findings: Vec<Finding>,
    pub violations: Vec<Violation>,
    pub acks: Vec<Ack>,
    pub writers: Vec<WriterReport>,
    pub ryw: RywStats,
    /// Checks after the heal, then after every node restarted.
    pub rounds: Vec<(&'static str, Option<u64>, Coverage)>,
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

impl Report {
    /// For each fault, how long from its injection until the first commit
    /// sent after it was acknowledged (the group had a writable primary
    /// again); None when nothing was acknowledged after it.
    pub fn time_to_writable(&self) -> Vec<Option<u64>> {
        let mut acks: Vec<&Ack> = self.acks.iter().collect();
        acks.sort_by_key(|a| a.sent_ms);
        self.faults
            .iter()
            .map(|f| {
                acks.iter()
                    .filter(|a| a.sent_ms >= f.start_ms)
                    .map(|a| a.acked_ms)
                    .min()
                    .map(|t| t - f.start_ms)
            })
            .collect()
    }

    fn acked(&self, op: Op) -> usize {
        self.writers
            .iter()
            .filter(|w| w.op == op)
            .map(|w| w.acked.len())
            .sum()
    }

    fn in_doubt(&self, op: Op) -> usize {
        self.writers
            .iter()
            .filter(|w| w.op == op)
            .map(|w| w.in_doubt.len())
            .sum()
    }

    pub fn json(&self) -> Value {
        let ttw = self.time_to_writable();
        let mut all: Vec<u64> = ttw.iter().flatten().copied().collect();
        all.sort_unstable();
        let mut by_kind: BTreeMap<Kind, Vec<u64>> = BTreeMap::new();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for (f, t) in self.faults.iter().zip(&ttw) {
            *counts.entry(f.kind.name()).or_default() += 1;
            if let Some(t) = t {
                by_kind.entry(f.kind).or_default().push(*t);
            }
        }
        let by_kind: BTreeMap<&str, Value> = by_kind
            .into_iter()
            .map(|(k, mut v)| {
                v.sort_unstable();
                (
                    k.name(),
                    json!({"n": v.len(), "p50": percentile(&v, 50.0), "p99": percentile(&v, 99.0), "max": v.last()}),
                )
            })
            .collect();
        let seconds = (self.duration_ms / 1000 + 1) as usize;
        let mut throughput: BTreeMap<&str, Vec<u64>> = Op::ALL
            .iter()
            .map(|op| (op.name(), vec![0; seconds]))
            .collect();
        for a in &self.acks {
            if let Some(slot) = throughput
                .get_mut(a.op.name())
                .and_then(|v| v.get_mut((a.acked_ms / 1000) as usize))
            {
                *slot += 1;
            }
        }
        let errors: BTreeMap<String, u64> = self.writers.iter().flat_map(|w| w.errors.iter()).fold(
            BTreeMap::new(),
            |mut m, (k, v)| {
                *m.entry(k.clone()).or_default() += v;
                m
            },
        );
        json!({
            "seed": self.seed,
            "mode": self.mode,
            "binary": self.binary,
            "root": self.root,
            "faults_requested": self.faults_requested,
            "faults_injected": self.faults.len(),
            "duration_s": self.duration_ms as f64 / 1000.0,
            "skipped_kinds": self.skipped_kinds.iter().map(|(k, why)| json!({"kind": k.name(), "why": why})).collect::<Vec<_>>(),
            "faults_by_kind": counts,
            "acknowledged": Op::ALL.iter().map(|op| (op.name(), self.acked(*op))).collect::<BTreeMap<_, _>>(),
            "in_doubt": Op::ALL.iter().map(|op| (op.name(), self.in_doubt(*op))).collect::<BTreeMap<_, _>>(),
            "writer_errors": errors,
            "writers_gave_up": self.writers.iter().filter_map(|w| w.gave_up.clone()).collect::<Vec<_>>(),
            "read_your_writes": {
                "seen": self.ryw.seen,
                "unavailable": self.ryw.unavailable,
                "stale": self.ryw.stale.len(),
            },
            "time_to_writable_ms": {
                "n": all.len(),
                "p50": percentile(&all, 50.0),
                "p99": percentile(&all, 99.0),
                "max": all.last(),
                "by_kind": by_kind,
            },
            "checks": self.rounds.iter().map(|(what, primary_ms, c)| json!({
                "after": what,
                "one_primary_ms": primary_ms,
                "lsn": c.lsn,
                "acknowledged_commits_checked": c.acked_checked,
                "pages_compared": c.pages_compared,
                "log_records_compared": c.records_compared,
            })).collect::<Vec<_>>(),
            "violations": self.violations.iter().map(|v| json!({"check": v.check, "node": v.node, "detail": v.detail})).collect::<Vec<_>>(),
            "findings": self.findings.iter().map(|f| json!({"at_s": f.at_ms as f64 / 1000.0, "what": f.what, "detail": f.detail})).collect::<Vec<_>>(),
            "stale_reads": self.ryw.stale.iter().map(|s| json!({
                "at_s": s.at_ms as f64 / 1000.0, "id": s.id, "lsn": s.lsn,
                "written_on": format!("r{}", s.written_on + 1), "read_on": format!("r{}", s.read_on + 1),
                "reader_state": s.reader_state,
            })).collect::<Vec<_>>(),
            "faults": self.faults.iter().zip(&ttw).map(|(f, t)| json!({
                "n": f.n, "kind": f.kind.name(), "target": f.target, "primary": f.primary,
                "start_s": f.start_ms as f64 / 1000.0, "end_s": f.end_ms as f64 / 1000.0,
                "time_to_writable_ms": t, "outcome": f.outcome,
            })).collect::<Vec<_>>(),
            "throughput_per_s": throughput,
        })
    }

    pub fn text(&self, doc: &Value) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "fault campaign: seed {:#x} ({} mode), {} faults in {:.0} s, binary {}",
            self.seed,
            self.mode,
            self.faults.len(),
            self.duration_ms as f64 / 1000.0,
            self.binary
        );
        for (k, why) in &self.skipped_kinds {
            let _ = writeln!(out, "  SKIPPED {}: {why}", k.name());
        }
        let _ = writeln!(out, "faults by kind: {}", doc["faults_by_kind"]);
        let _ = writeln!(
            out,
            "acknowledged: {} (in doubt: {}); writer errors: {}",
            doc["acknowledged"], doc["in_doubt"], doc["writer_errors"]
        );
        let t = &doc["time_to_writable_ms"];
        let _ = writeln!(
            out,
            "time to a writable primary after a fault: p50 {} ms, p99 {} ms, max {} ms (n = {})",
            t["p50"], t["p99"], t["max"], t["n"]
        );
        for (kind, v) in t["by_kind"].as_object().into_iter().flatten() {
            let _ = writeln!(
                out,
                "  {kind:<26} n {:>3}  p50 {:>6} ms  p99 {:>6} ms  max {:>6} ms",
                v["n"], v["p50"], v["p99"], v["max"]
            );
        }
        let _ = writeln!(out, "read-your-writes: {}", doc["read_your_writes"]);
        for (what, primary_ms, c) in &self.rounds {
            let _ = writeln!(
                out,
                "checks after {what}: one primary after {primary_ms:?} ms; {} acknowledged commits \
                 checked on all replicas, {} pages and {} log records compared at LSN {}",
                c.acked_checked, c.pages_compared, c.records_compared, c.lsn
            );
        }
        let _ = writeln!(out, "findings: {}", self.findings.len());
        for f in &self.findings {
            let _ = writeln!(
                out,
                "  at {:.1} s {}: {}",
                f.at_ms as f64 / 1000.0,
                f.what,
                f.detail.lines().next().unwrap_or("")
            );
        }
        let _ = writeln!(
            out,
            "VIOLATIONS: {}",
            self.violations.len() + self.ryw.stale.len()
        );
        for v in &self.violations {
            let _ = writeln!(
                out,
                "  {} on {}: {}",
                v.check,
                v.node.as_deref().unwrap_or("-"),
                v.detail
            );
        }
        for s in &self.ryw.stale {
            let _ = writeln!(out, "  read_your_writes: {s:?}");
        }
        out
    }

    /// Violations of every kind, stale reads included.
    pub fn violation_count(&self) -> usize {
        self.violations.len() + self.ryw.stale.len()
    }

    /// Writes the report into `dir` and draws the timeline; the text.
    pub fn write(&self, dir: &Path) -> String {
        let doc = self.json();
        let text = self.text(&doc);
        std::fs::create_dir_all(dir).expect("create the report directory");
        let json_path = dir.join("report.json");
        std::fs::write(
            &json_path,
            serde_json::to_string_pretty(&doc).expect("JSON"),
        )
        .expect("write report.json");
        std::fs::write(dir.join("report.txt"), &text).expect("write report.txt");
        plot(&json_path, &dir.join("timeline.png"));
        text
    }
}

/// Runs the timeline script; says loudly when it cannot (no python3 with
/// matplotlib) and goes on.
fn plot(json: &Path, png: &Path) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join("campaign-scripts")
        .join("timeline.py");
    let python = ["python3", "/usr/bin/python3"].into_iter().find(|py| {
        Command::new(py)
            .args(["-c", "import matplotlib"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(python) = python else {
        eprintln!(
            "\n!!! campaign: matplotlib is not installed (apt-get install python3-matplotlib): \
             no timeline.png; the report is complete otherwise !!!\n"
        );
        return;
    };
    match Command::new(python)
        .arg(&script)
        .arg(json)
        .arg(png)
        .output()
    {
        Ok(out) if out.status.success() => eprintln!("campaign: timeline {}", png.display()),
        Ok(out) => eprintln!(
            "\n!!! campaign: {} failed ({}): {} !!!\n",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("\n!!! campaign: cannot run {python}: {e} !!!\n"),
    }
}
