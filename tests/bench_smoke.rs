//! The benchmark harness must not rot: `scripts/bench --smoke` runs its
//! quick scenarios (the commit, rw and TPC-B matrix, lag, seeding, geo,
//! backup, repair) against this
//! build's binary and must exit 0 with a CSV and a JSON document holding
//! every expected row; `scripts/bench-tls` must run both of its modes; and
//! the unit tests of its statistics module
//! (`scripts/bench-scripts/test_benchlib.py`) must pass.
//!
//! Performance is not asserted here (the numbers of a 1-second smoke run
//! on a shared machine mean nothing); only that the harness runs, measures
//! and checks what it says. It needs `pgbench`, `psql`, `python3` and
//! PostgreSQL's server binaries (Debian's `postgresql`, which `scripts/test`
//! installs); a missing one fails the test with install instructions.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

mod common;

use common::run_bounded;

/// Hang guard for the whole smoke run, not a performance bound. The script
/// gets SIGTERM (it stops every server it started) a minute before this.
const SMOKE_TIMEOUT: Duration = Duration::from_secs(660);
const SCRIPT_TIMEOUT_SECS: u64 = 600;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The one `<prefix>*.json` of a scenario in the results folder, parsed.
fn scenario_json(dir: &Path, prefix: &str) -> serde_json::Value {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("the results folder")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with(prefix) && name.ends_with(".json")
        })
        .collect();
    assert_eq!(found.len(), 1, "one {prefix}*.json: {found:?}");
    serde_json::from_str(&std::fs::read_to_string(&found[0]).expect("scenario JSON"))
        .expect("valid scenario JSON")
}

fn describe(output: &Output) -> String {
    format!(
        "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The checks the bench reported failed (its `bench: FAILED …` lines), put
/// first in a failure message: a long output is cut in the middle by CI.
fn failed_checks(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let failed: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("bench: FAILED"))
        .collect();
    if failed.is_empty() {
        "(no `bench: FAILED` line on stderr)".to_string()
    } else {
        failed.join("\n")
    }
}

/// Fails the test, with install instructions, when `program args` cannot run.
fn require_tool(program: &str, args: &[&str], install: &str) {
    let problem = match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => return,
        Ok(out) => format!("`{program} {}` failed: {}", args.join(" "), describe(&out)),
        Err(e) => format!("`{program}` cannot be run: {e}"),
    };
    panic!("{problem}\nThe benchmark smoke test needs it. Run the tests with scripts/test, which installs every test tool, or install it with: {install}");
}

fn require_postgresql_server() {
    let found = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            dirs.flatten()
                .any(|d| d.path().join("bin/initdb").is_file())
        })
        .unwrap_or(false);
    assert!(
        found,
        "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin: the benchmark compares \
         availdb with PostgreSQL. Run the tests with scripts/test, which installs them, or: apt-get install -y postgresql"
    );
}

/// A python3 that can import matplotlib (the plots' and their tests'
/// dependency; the one on PATH may be another install than Debian's), if any.
fn matplotlib_python() -> Option<&'static str> {
    ["python3", "/usr/bin/python3"].into_iter().find(|py| {
        Command::new(py)
            .args(["-c", "import matplotlib"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// One CSV file parsed into rows of (column name, value) maps.
struct Csv {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Csv {
    /// Reads a CSV whose cells hold no quotes except whole quoted cells
    /// (what scripts/bench writes: a quoted cell when it holds a comma).
    fn read(path: &Path) -> Csv {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let mut lines = text.lines().map(split_csv_line);
        let header = lines.next().expect("a header line");
        Csv {
            header,
            rows: lines.collect(),
        }
    }

    fn col(&self, name: &str) -> usize {
        self.header
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no column {name} in {:?}", self.header))
    }

    /// Rows whose columns equal the given values.
    fn matching(&self, wanted: &[(&str, &str)]) -> Vec<&Vec<String>> {
        let idx: Vec<(usize, &str)> = wanted.iter().map(|(c, v)| (self.col(c), *v)).collect();
        self.rows
            .iter()
            .filter(|r| {
                idx.iter()
                    .all(|(i, v)| r.get(*i).map(String::as_str) == Some(*v))
            })
            .collect()
    }
}

fn split_csv_line(line: &str) -> Vec<String> {
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cell.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => cells.push(std::mem::take(&mut cell)),
            c => cell.push(c),
        }
    }
    cells.push(cell);
    cells
}

/// The one file in `dir` named `results-*.EXT`.
fn result_file(dir: &Path, ext: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("the results folder")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("results-") && name.ends_with(&format!(".{ext}"))
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one results-*.{ext} in {}: {found:?}",
        dir.display()
    );
    found[0].clone()
}

#[test]
fn bench_smoke_runs_every_quick_scenario_and_writes_its_results() {
    require_tool(
        "psql",
        &["--version"],
        "apt-get install -y postgresql-client",
    );
    require_tool(
        "pgbench",
        &["--version"],
        "apt-get install -y postgresql (Debian 12 ships pgbench in postgresql-15)",
    );
    require_tool("python3", &["--version"], "apt-get install -y python3");
    require_postgresql_server();

    let out = tempfile::tempdir().expect("results folder");
    let output = run_bounded(
        Command::new("timeout")
            .args(["--kill-after=60", &SCRIPT_TIMEOUT_SECS.to_string(), "bash"])
            .arg(repo().join("scripts/bench"))
            .args([
                "--smoke", "commit", "rw", "tpcb", "lag", "seeding", "geo", "backup", "repair",
            ])
            .env("AVAILDB_BIN", env!("CARGO_BIN_EXE_availdb"))
            .env("BENCH_OUT", out.path())
            .env("BENCH_NO_INSTALL", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("BENCH_SECONDS")
            .env_remove("BENCH_TRIALS")
            .env_remove("BENCH_CLIENTS"),
        SMOKE_TIMEOUT,
    );
    assert!(
        output.status.success(),
        "scripts/bench --smoke failed:\n{}\n{}",
        failed_checks(&output),
        describe(&output)
    );

    let csv = Csv::read(&result_file(out.path(), "csv"));
    let systems = ["standalone", "async3", "sync2", "sync3", "pg_alone", "pg"];
    for system in systems {
        let init = csv.matching(&[("kind", "init"), ("scenario", "tpcb"), ("system", system)]);
        assert_eq!(init.len(), 1, "one pgbench -i of {system}");
    }
    for scenario in ["commit", "rw", "tpcb"] {
        for system in systems {
            let runs = csv.matching(&[
                ("kind", "run"),
                ("scenario", scenario),
                ("system", system),
                ("clients", "1"),
                ("trial", "1"),
            ]);
            assert_eq!(runs.len(), 1, "one {scenario} run of {system}");
            let tps: f64 = runs[0][csv.col("tps")]
                .parse()
                .unwrap_or_else(|_| panic!("{scenario} {system}: tps {:?}", runs[0]));
            assert!(tps > 0.0, "{scenario} {system}: tps {tps}");
            assert!(
                !csv.matching(&[
                    ("kind", "check"),
                    ("scenario", scenario),
                    ("system", system)
                ])
                .is_empty(),
                "{scenario} {system}: a row-count check"
            );
        }
    }
    for system in ["sync3", "async3"] {
        let lag = csv.matching(&[("kind", "lag"), ("system", system)]);
        assert!(!lag.is_empty(), "lag samples of {system}");
        for replica in ["r2", "r3"] {
            assert!(
                lag.iter().any(|r| r[csv.col("replica")] == replica),
                "lag samples of {system}/{replica}"
            );
        }
    }
    for phase in ["catch-up", "seeding"] {
        let rows = csv.matching(&[("kind", "seeding"), ("phase", phase)]);
        assert_eq!(rows.len(), 1, "one {phase} result");
        let bytes: u64 = rows[0][csv.col("bytes")].parse().expect("bytes");
        assert!(bytes > 1_000_000, "{phase}: {bytes} bytes");
    }

    // geo: the lag of both systems, one forced and one planned geo-failover,
    // the termination of the 1 MB database.
    for system in ["availdb", "pg"] {
        let rows = csv.matching(&[("kind", "geo_lag"), ("system", system)]);
        assert_eq!(rows.len(), 1, "one geo lag result of {system}");
        let p99: f64 = rows[0][csv.col("p99_ms")]
            .parse()
            .unwrap_or_else(|_| panic!("geo lag of {system}: p99 {:?}", rows[0]));
        assert!(p99.is_finite(), "geo lag of {system}: p99 {p99}");
    }
    for (kind, phase) in [
        ("geo_forced", "rto"),
        ("geo_forced", "lost"),
        ("geo_planned", "window"),
        ("geo_planned", "lost"),
        ("geo_termination", "termination"),
    ] {
        let rows = csv.matching(&[("kind", kind), ("phase", phase)]);
        assert_eq!(rows.len(), 1, "one {kind} {phase} row");
    }
    let planned = csv.matching(&[("kind", "geo_planned"), ("phase", "lost")]);
    assert_eq!(
        planned[0][csv.col("rows")],
        "0",
        "no acknowledged row lost in a planned geo-failover: {:?}",
        planned[0]
    );

    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(result_file(out.path(), "json")).expect("the JSON document"),
    )
    .expect("valid JSON");
    assert!(
        json["machine"]["cores"].as_u64().unwrap_or(0) > 0,
        "{}",
        json["machine"]
    );
    for key in ["availdb_commit", "postgresql", "pgbench", "sqlite"] {
        assert!(
            json["versions"][key].is_string(),
            "versions.{key}: {}",
            json["versions"]
        );
    }
    assert_eq!(json["config"]["smoke"], 1);
    let cells = json["summary"]["matrix"].as_array().expect("matrix cells");
    assert_eq!(cells.len(), 3 * systems.len(), "{cells:?}");
    for cell in cells {
        assert!(cell["tps_median"].as_f64().is_some(), "{cell}");
        assert!(cell["ratio_pg_sync"].as_f64().is_some(), "{cell}");
        assert!(cell["ratio_pg_alone"].as_f64().is_some(), "{cell}");
    }
    assert_eq!(json["summary"]["lag"].as_array().map(Vec::len), Some(4));
    assert_eq!(
        json["summary"]["seeding"]["phases"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    assert_eq!(json["failures"], 0);
    assert_eq!(
        json["measurements"].as_array().map(Vec::len),
        Some(csv.rows.len()),
        "every CSV row is a measurement in the JSON"
    );
    // The backup scenario: every measurement, and a point-in-time restore
    // that holds exactly the rows written before its STOPAT.
    let backup: Vec<PathBuf> = std::fs::read_dir(out.path())
        .expect("the results folder")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("backup-") && name.ends_with(".json")
        })
        .collect();
    assert_eq!(backup.len(), 1, "one backup-*.json: {backup:?}");
    let backup: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&backup[0]).expect("backup JSON"))
            .expect("valid backup JSON");
    assert_eq!(
        backup["failures"].as_array().map(Vec::len),
        Some(0),
        "{backup}"
    );
    let measures: Vec<&str> = backup["rows"]
        .as_array()
        .expect("backup rows")
        .iter()
        .filter_map(|r| r["measure"].as_str())
        .collect();
    for (measure, n) in [
        ("backup", 6),
        ("restore", 2),
        ("commit_during_backup", 2),
        ("pitr", 1),
        ("failovers", 1),
    ] {
        assert_eq!(
            measures.iter().filter(|m| **m == measure).count(),
            n,
            "{measure}: {backup}"
        );
    }
    // The repair scenario: every measurement, at a tiny size.
    let repair = scenario_json(out.path(), "repair-");
    assert_eq!(
        repair["failures"].as_array().map(Vec::len),
        Some(0),
        "{repair}"
    );
    let measures: Vec<&str> = repair["rows"]
        .as_array()
        .expect("repair rows")
        .iter()
        .filter_map(|r| r["measure"].as_str())
        .collect();
    for (measure, n) in [
        ("commit", 2),
        ("read", 2),
        ("scrub_throughput", 2),
        ("flip_to_repair", 1),
        ("checksum_cost", 1),
        ("failovers", 1),
    ] {
        assert_eq!(
            measures.iter().filter(|m| **m == measure).count(),
            n,
            "{measure}: {repair}"
        );
    }
    let md = std::fs::read_to_string(result_file(out.path(), "md")).expect("the markdown report");
    assert!(md.contains("### rw: "), "{md}");
    assert!(md.contains("### tpcb: "), "{md}");
    assert!(md.contains("### geo lag: "), "{md}");
    assert!(md.contains("availdb / PostgreSQL lag ratio"), "{md}");
    assert!(
        json["summary"]["geo"]["termination"]
            .as_array()
            .is_some_and(|t| t.len() == 1),
        "{}",
        json["summary"]["geo"]
    );
    if matplotlib_python().is_some() {
        let plots = std::fs::read_dir(out.path())
            .expect("the results folder")
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("plots-"))
            .expect("a plots folder (matplotlib is installed)")
            .path();
        for name in [
            "commit_tps",
            "commit_latency",
            "rw_tps",
            "rw_latency",
            "lag",
        ] {
            assert!(
                plots.join(format!("{name}.png")).is_file(),
                "{name}.png in {}",
                plots.display()
            );
        }
    }
}

/// The bench scripts' tools; CI installs them (.ci/run).
fn require_pgbench_and_python() {
    require_tool(
        "pgbench",
        &["--version"],
        "apt-get install -y postgresql (Debian 12 ships pgbench in postgresql-15)",
    );
    require_tool("python3", &["--version"], "apt-get install -y python3");
}

/// `scripts/bench-tls` (client TLS on vs off, BENCHMARKS.md) runs against
/// this build: every run of both modes is reported, the TLS ones really
/// over TLS (the script stops when a required TLS session fails), and the
/// medians line of each workload is printed. No number is judged.
#[test]
fn bench_tls_runs_both_modes_alternated_and_prints_the_medians() {
    require_pgbench_and_python();
    let output = run_bounded(
        Command::new("timeout")
            .args(["--kill-after=30", "240", "bash"])
            .arg(repo().join("scripts/bench-tls"))
            .args(["--rounds", "2", "--seconds", "1"])
            .arg(env!("CARGO_BIN_EXE_availdb"))
            .env_remove("PGSSLMODE"),
        Duration::from_secs(300),
    );
    let text = describe(&output);
    assert!(output.status.success(), "{text}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    for workload in ["point_select", "insert"] {
        // Two rounds, alternated: disable then require, then the reverse.
        let modes: Vec<&str> = stdout
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some(workload) && l.contains(" sslmode="))
            .filter_map(|l| l.split_whitespace().nth(2))
            .collect();
        assert_eq!(
            modes,
            [
                "sslmode=disable",
                "sslmode=require",
                "sslmode=require",
                "sslmode=disable"
            ],
            "{workload}: {text}"
        );
        assert!(
            stdout.lines().any(|l| l.starts_with("availdb")
                && l.contains(workload)
                && l.contains("TLS off")
                && l.contains("TLS on")),
            "{workload}: no medians line: {text}"
        );
    }
}

/// `scripts/bench-partner-tls` (BENCHMARKS.md, partner TLS on vs off) runs
/// on this build: both groups start (the TLS one really with partner TLS:
/// the script stops otherwise), idle CPU is reported for each, every
/// workload runs in both modes alternated, and the medians are printed.
/// No number is judged.
#[test]
fn bench_partner_tls_runs_both_groups_alternated_and_prints_the_medians() {
    require_pgbench_and_python();
    let output = run_bounded(
        Command::new("timeout")
            .args(["--kill-after=30", "300", "bash"])
            .arg(repo().join("scripts/bench-partner-tls"))
            .args(["--rounds", "2", "--seconds", "1"])
            .arg(env!("CARGO_BIN_EXE_availdb")),
        Duration::from_secs(360),
    );
    let text = describe(&output);
    assert!(output.status.success(), "{text}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    for group in ["tls", "plain"] {
        assert!(
            stdout.contains(&format!("idle CPU of the {group:<5} group")),
            "{group}: {text}"
        );
    }
    for (workload, clients) in [("insert", "1"), ("insert", "4"), ("rw", "4")] {
        let modes: Vec<&str> = stdout
            .lines()
            .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
                [w, "-c", c, mode, ..] if w == workload && c == clients => Some(mode),
                _ => None,
            })
            .collect();
        assert_eq!(
            modes,
            ["plain", "tls", "tls", "plain"],
            "{workload} -c {clients}: {text}"
        );
        let medians = format!("{workload}-c{clients} ");
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&medians) && l.contains("TLS costs")),
            "{workload} -c {clients}: no medians line: {text}"
        );
    }
}

#[test]
fn benchlib_unit_tests_pass() {
    require_tool("python3", &["--version"], "apt-get install -y python3");
    // Prefer a python3 with matplotlib, so the plot test runs too.
    let python = matplotlib_python().unwrap_or("python3");
    let output = run_bounded(
        Command::new(python)
            .args([
                "-m",
                "unittest",
                "discover",
                "-s",
                "scripts/bench-scripts",
                "-p",
                "test_*.py",
            ])
            .current_dir(repo())
            .env("PYTHONDONTWRITEBYTECODE", "1"),
        Duration::from_secs(300),
    );
    assert!(
        output.status.success(),
        "python3 -m unittest (scripts/bench-scripts/test_benchlib.py) failed: {}",
        describe(&output)
    );
}
