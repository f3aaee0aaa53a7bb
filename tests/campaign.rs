//! The fault campaign against real processes (issue 9; safety rules 1–4 and
//! 7 of docs/ARCHITECTURE.md): a group of three real `availdb server` nodes
//! as `availdb up` makes them (synchronous commit, automatic failover,
//! under the embedded cluster; every link between nodes through the test
//! proxy, so it can be cut) runs a mixed, bounded workload — bank transfers
//! with a constant total, an acknowledged-id ledger, 4 MB transactions that
//! keep redo behind, read-your-writes reads on other nodes — while a seeded
//! nemesis injects one fault at a time: kill -9, SIGSTOP past the lease,
//! partitions, planned and forced failovers, definition changes,
//! suspend/resume, kill -9 during seeding, rewind and promotion (crash
//! points), and, as root, a full disk (`campaign/nemesis.rs` lists them).
//!
//! After the nemesis stops, everything is healed and the checks run
//! (`campaign/checker.rs`): exactly one primary within seconds, every
//! acknowledged commit on every replica exactly once, the bank's total,
//! `PRAGMA integrity_check`, replicas page-identical to the primary and
//! their logs holding the same records at the same LSNs; then every node
//! restarts and the checks run again. A report (JSON, text and a PNG
//! timeline) goes to the directory the run prints.
//!
//! * `cargo test --test campaign`: the short campaign (CI): the fixed seed
//!   [`campaign::SHORT_SEED`], every fault kind once, a few minutes with a
//!   debug build.
//! * `scripts/campaign`: the long campaign (`AVAILDB_CAMPAIGN=long`,
//!   `AVAILDB_CAMPAIGN_FAULTS`, default 200) on a release build.
//! * `AVAILDB_CAMPAIGN_SEED=n` replays a seed; `AVAILDB_CAMPAIGN_KINDS=a,b`
//!   runs only those kinds; `AVAILDB_CAMPAIGN_DIR` says where the report
//!   goes.

#[path = "campaign/mod.rs"]
mod campaign;
mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_campaign_loses_no_acknowledged_commit_and_leaves_identical_replicas() {
    let cfg = campaign::Config::from_env();
    eprintln!(
        "campaign: {} mode, seed {:#x} (replay: AVAILDB_CAMPAIGN_SEED={:#x}), report in {}",
        cfg.mode,
        cfg.seed,
        cfg.seed,
        cfg.dir.display()
    );
    let report = campaign::run(&cfg).await;
    let text = report.write(&cfg.dir);
    eprintln!("{text}\ncampaign: report in {}", cfg.dir.display());
    assert_eq!(
        report.violation_count(),
        0,
        "the campaign found violations (seed {:#x}); report and logs in {}\n{text}",
        cfg.seed,
        cfg.dir.display()
    );
}
