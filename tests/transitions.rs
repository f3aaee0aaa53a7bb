//! Safety rule 7: rules 1–5 hold *during* transitions, not only between
//! them. Real `availdb server` processes form group `ag1` (three
//! synchronous replicas with automatic failover, as `availdb up` makes
//! them) while two clients commit large transactions back to back through
//! a multi-host `target_session_attrs=read-write` connection string: 200
//! rows of 20 KB each (about 4 MB), so redo on the secondaries runs behind
//! hardening. Meanwhile the group changes under them — definition changes
//! on the primary (`MODIFY REPLICA … SESSION_TIMEOUT`) and planned
//! failovers on a secondary — every ~1.2 s.
//!
//! After the load stops, the group must have exactly one primary, and on
//! every replica: each acknowledged transaction is present whole (200 rows),
//! no transaction is present in part, `PRAGMA integrity_check` is `ok`, and
//! the pages are identical to the primary's at the same LSN.
//!
//! Every loop is bounded and every wait panics with the nodes' logs.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{
    acked_ids, attempted_ids, named_primary, planned_failover, summary, KeepLogsOnPanic, ReadWrite,
    WriterOptions, WriterReport, Writers,
};
use common::group::{
    error_text, name, query_text, Group, GroupSpec, APP, GROUP, STATEMENT_TIMEOUT,
};
use common::DEFAULT_DB;

/// Rows per transaction and bytes per row: about 4 MB per commit.
const ROWS: usize = 200;
const ROW_BYTES: usize = 20_000;
/// Time between two transitions.
const EVERY: Duration = Duration::from_millis(1200);

async fn big_group() -> Group {
    let group = Group::start_with(GroupSpec {
        replicas: 3,
        automatic: true,
        ..GroupSpec::default()
    })
    .await;
    let client = group.nodes[0].client(APP).await;
    client
        .batch_execute("CREATE TABLE big(id INTEGER PRIMARY KEY, tx INTEGER NOT NULL, k INTEGER NOT NULL, b BLOB)")
        .await
        .unwrap_or_else(|e| panic!("CREATE TABLE: {}", error_text(&e)));
    group
}

/// One writer statement: transaction `tx` inserts its [`ROWS`] rows.
fn big_transaction(tx: i64) -> String {
    format!(
        "BEGIN; \
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS}) \
         INSERT INTO big(tx, k, b) SELECT {tx}, i, randomblob({ROW_BYTES}) FROM n; \
         COMMIT"
    )
}

fn writers(group: &Group) -> Writers {
    Writers::start(
        &ReadWrite::multi_host(group, APP),
        &WriterOptions {
            tasks: 2,
            first: 1,
            stride: 100_000,
            per_task: 60,
            pace: Duration::ZERO,
            reconnect_within: Duration::from_secs(40),
        },
        Arc::new(big_transaction),
    )
}

/// What happened to one transition.
#[derive(Debug)]
enum Outcome {
    Done,
    /// Refused with this SQLSTATE and message (e.g. the target was not
    /// synchronized yet): allowed, as long as the group stays whole.
    Refused(String, String),
}

/// `MODIFY REPLICA ON 'r2' WITH (SESSION_TIMEOUT = n)` on the primary.
async fn change_definition(group: &Group, primary: usize, timeout_s: u32) -> Outcome {
    let client = group.nodes[primary].client(DEFAULT_DB).await;
    let sql = format!(
        "ALTER AVAILABILITY GROUP {GROUP} MODIFY REPLICA ON 'r2' WITH (SESSION_TIMEOUT = {timeout_s})"
    );
    match tokio::time::timeout(Duration::from_secs(60), client.batch_execute(&sql)).await {
        Ok(Ok(())) => Outcome::Done,
        Ok(Err(e)) => {
            let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
            Outcome::Refused(code, error_text(&e))
        }
        Err(_) => panic!(
            "{sql} on {}: no answer within 60 s\n{}",
            name(primary),
            group.logs()
        ),
    }
}

/// The primary every node agrees on, waited for (bounded).
async fn wait_primary(group: &Group) -> (usize, u64) {
    let all: Vec<usize> = (0..group.nodes.len()).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((p, epoch)) = named_primary(group, &all).await {
            if let Ok(client) = group.nodes[p].try_client(APP).await {
                let read_only = query_text(&client, "SHOW transaction_read_only").await;
                let writable = read_only
                    .ok()
                    .and_then(|rows| rows.first().and_then(|r| r[0].clone()));
                if writable.as_deref() == Some("off") {
                    return (p, epoch);
                }
            }
        }
        if Instant::now() > deadline {
            panic!(
                "the group has no writable primary 60 s after the load\n{}",
                group.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `transition(k)` every [`EVERY`] for `count` transitions while the
/// writers commit, then checks the group (see the module page).
async fn run_under_load(
    group: &Group,
    count: usize,
    mut transition: impl FnMut(usize, usize) -> Option<(usize, bool)>,
) -> Vec<Outcome> {
    let load = writers(group);
    load.wait_acked(2, Duration::from_secs(120), || group.logs())
        .await;
    let mut outcomes = Vec::new();
    for k in 0..count {
        let (primary, _) = wait_primary(group).await;
        match transition(k, primary) {
            Some((node, true)) => {
                outcomes.push(change_definition(group, node, 5 + (k % 3) as u32 * 2).await)
            }
            Some((node, false)) => outcomes.push(match planned_failover(group, node).await {
                Ok(_) => Outcome::Done,
                Err((code, message)) => Outcome::Refused(code, message),
            }),
            None => {}
        }
        if let Some(Outcome::Refused(code, message)) = outcomes.last() {
            // A planned failover to a replica that is not synchronized yet
            // is refused up front (55000 "not SYNCHRONIZED"); anything else
            // — a transition that started and did not finish — is a bug.
            assert!(
                message.contains("not SYNCHRONIZED")
                    || message.contains("is not in the synchronized set"),
                "transition {k} failed: {code} {message}\n{}",
                group.logs()
            );
        }
        tokio::time::sleep(EVERY).await;
    }
    let reports = load.finish().await;
    check_group(group, &reports).await;
    outcomes
}

/// The checks of the module page.
async fn check_group(group: &Group, reports: &[WriterReport]) {
    let (primary, epoch) = wait_primary(group).await;
    let acked = acked_ids(reports);
    let attempted = attempted_ids(reports);
    assert!(
        !acked.is_empty(),
        "no transaction was acknowledged: {}\n{}",
        summary(reports),
        group.logs()
    );
    let secondaries: Vec<usize> = (0..group.nodes.len()).filter(|&i| i != primary).collect();
    group
        .assert_page_identical_to(primary, &secondaries, "after transitions under load")
        .await;
    for i in 0..group.nodes.len() {
        let client = group.nodes[i].client(APP).await;
        let check = query_text(&client, "PRAGMA integrity_check")
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "integrity_check on {}: {}\n{}",
                    name(i),
                    error_text(&e),
                    group.logs()
                )
            });
        assert_eq!(
            check.first().and_then(|r| r[0].clone()).as_deref(),
            Some("ok"),
            "{} (primary {} at epoch {epoch}) fails PRAGMA integrity_check: {check:?}\n{}",
            name(i),
            name(primary),
            group.logs()
        );
        let rows = tokio::time::timeout(
            STATEMENT_TIMEOUT,
            client.query("SELECT tx, count(*) FROM big GROUP BY tx", &[]),
        )
        .await
        .expect("count in time")
        .unwrap_or_else(|e| panic!("count on {}: {}", name(i), error_text(&e)));
        let counts: BTreeMap<i64, i64> = rows
            .iter()
            .map(|r| (i64::from(r.get::<_, i32>(0)), r.get(1)))
            .collect();
        let partial: Vec<(i64, i64)> = counts
            .iter()
            .filter(|(_, &n)| n != ROWS as i64)
            .map(|(&tx, &n)| (tx, n))
            .collect();
        let missing: BTreeSet<i64> = acked
            .iter()
            .copied()
            .filter(|tx| !counts.contains_key(tx))
            .collect();
        let phantom: Vec<i64> = counts
            .keys()
            .copied()
            .filter(|tx| !attempted.contains(tx))
            .collect();
        assert!(
            partial.is_empty() && missing.is_empty() && phantom.is_empty(),
            "{}: transactions present in part (tx, rows): {partial:?}; acknowledged and missing: {missing:?}; \
             never sent: {phantom:?} ({})\n{}",
            name(i),
            summary(reports),
            group.logs()
        );
    }
    eprintln!(
        "checked {} acknowledged transactions on {} replicas (primary {} at epoch {epoch}); {}",
        acked.len(),
        group.nodes.len(),
        name(primary),
        summary(reports)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_definition_change_under_load_loses_no_record_and_corrupts_no_replica() {
    let group = big_group().await;
    let _logs = KeepLogsOnPanic::new(&group, "definition_changes_under_load");
    let outcomes = run_under_load(&group, 12, |_, primary| Some((primary, true))).await;
    eprintln!("outcomes: {outcomes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn planned_failovers_and_definition_changes_under_load_keep_one_primary_and_identical_replicas(
) {
    let group = big_group().await;
    let _logs = KeepLogsOnPanic::new(&group, "failovers_and_changes_under_load");
    let n = group.nodes.len();
    let outcomes = run_under_load(&group, 12, |k, primary| {
        if k % 2 == 0 {
            Some((primary, true))
        } else {
            // The next replica after the primary takes over.
            Some(((primary + 1 + k / 2 % (n - 1)) % n, false))
        }
    })
    .await;
    let done = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Done))
        .count();
    eprintln!("outcomes: {outcomes:?}");
    assert!(
        done >= 6,
        "too few transitions happened: {outcomes:?}\n{}",
        group.logs()
    );
}
