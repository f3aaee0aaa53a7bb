//! Black-box tests of physical log shipping: real `availdb server`
//! processes on loopback form availability group `ag1` (r1 primary, r2 … rN
//! synchronous-commit secondaries, database `app`), and real clients check
//! the safety rules (docs/ARCHITECTURE.md, "Safety rules") through SQL, the `sys` views, the page
//! images (`sqlite_dbpage`) and, for rule 6, a fake primary speaking the
//! replication wire protocol.
//!
//! Nodes are killed with SIGKILL and frozen with SIGSTOP; every wait is
//! bounded and every assertion is about what must hold, not about timing
//! (except the one lower bound that shows a commit waited for a session
//! timeout). Helpers live in `common::group`.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use availdb::group::{
    AvailabilityMode, FailoverMode, GroupConfig, ReplicaConfig, SecondaryConnections,
};
use availdb::log::Record;
use availdb::replication::wire::{Message, WireCodec};
use common::group::{
    assert_has_acked, db_states, error_text, exec, ids, pages, query_text, replica_states, Group,
    InsertLoad, LoadReport, APP, CATCH_UP_TIMEOUT, STATEMENT_TIMEOUT,
};
use common::{connect, free_port, TestServer, DEFAULT_DB, USER};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_postgres::Client;
use tokio_util::codec::Framed;

const POLL: Duration = Duration::from_millis(100);

/// Runs one statement (bounded), panicking with the group's logs on error.
async fn run(group: &Group, client: &Client, sql: &str) {
    match tokio::time::timeout(STATEMENT_TIMEOUT, client.batch_execute(sql)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{sql}: {}\n{}", error_text(&e), group.logs()),
        Err(_) => panic!(
            "{sql}: no answer within {STATEMENT_TIMEOUT:?}\n{}",
            group.logs()
        ),
    }
}

/// A small deterministic generator (xorshift64*), so runs are repeatable
/// without a `rand` dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ---------------------------------------------------------------- rule 3

#[tokio::test(flavor = "multi_thread")]
async fn safety_rule_3_secondaries_are_page_identical_after_mixed_workload() {
    let group = Group::start(3).await;
    let c = group.primary().client(APP).await;

    // DDL, a bulk insert, single-row commits, updates, deletes.
    run(
        &group,
        &c,
        "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER, note TEXT); \
         CREATE INDEX items_name ON items(name)",
    )
    .await;
    run(
        &group,
        &c,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) \
         INSERT INTO items SELECT i, 'item-' || i, i % 97, hex(randomblob(40)) FROM n",
    )
    .await;
    for i in 2001..2021 {
        run(
            &group,
            &c,
            &format!("INSERT INTO items VALUES ({i}, 'single-{i}', {i}, NULL)"),
        )
        .await;
    }
    run(
        &group,
        &c,
        "UPDATE items SET qty = qty + 1, note = NULL WHERE id % 3 = 0",
    )
    .await;
    run(&group, &c, "DELETE FROM items WHERE id % 5 = 0").await;
    run(
        &group,
        &c,
        "BEGIN; UPDATE items SET name = name || '-x' WHERE id < 100; \
         DELETE FROM items WHERE id BETWEEN 1500 AND 1600; \
         INSERT INTO items VALUES (5000, 'in-tx', 1, 'n'); COMMIT",
    )
    .await;
    // A rolled-back transaction ships nothing.
    run(&group, &c, "BEGIN; DELETE FROM items; ROLLBACK").await;
    run(
        &group,
        &c,
        "ALTER TABLE items ADD COLUMN extra TEXT DEFAULT 'x'",
    )
    .await;
    // A 3 MB blob (overflow pages).
    run(
        &group,
        &c,
        "CREATE TABLE blobs(id INTEGER PRIMARY KEY, data BLOB)",
    )
    .await;
    run(
        &group,
        &c,
        "INSERT INTO blobs VALUES (1, randomblob(3 * 1024 * 1024))",
    )
    .await;
    group
        .assert_page_identical("after DDL, DML and a 3 MB blob")
        .await;

    // Drop tables, then VACUUM (rewrites and shrinks the file).
    run(
        &group,
        &c,
        "CREATE TABLE scratch(a, b); INSERT INTO scratch VALUES (1, 2), (3, 4)",
    )
    .await;
    run(&group, &c, "DROP TABLE scratch").await;
    run(&group, &c, "DROP TABLE blobs").await;
    run(&group, &c, "VACUUM").await;
    let after_vacuum = group
        .assert_page_identical("after DROP TABLE and VACUUM")
        .await;

    // Grow the database, then shrink it again.
    run(
        &group,
        &c,
        "CREATE TABLE big(id INTEGER PRIMARY KEY, pad BLOB)",
    )
    .await;
    run(
        &group,
        &c,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 4000) \
         INSERT INTO big SELECT i, randomblob(1500) FROM n",
    )
    .await;
    let grown = group.assert_page_identical("after growing").await;
    assert!(
        grown > after_vacuum + 1000,
        "the big insert should have grown the database ({after_vacuum} → {grown} pages)"
    );
    run(&group, &c, "DELETE FROM big").await;
    run(&group, &c, "VACUUM").await;
    let shrunk = group
        .assert_page_identical("after shrinking (DELETE + VACUUM)")
        .await;
    assert!(
        shrunk < grown / 4,
        "DELETE + VACUUM should have shrunk the database ({grown} → {shrunk} pages)"
    );

    // Logical cross-check on top of the page images.
    let expected = query_text(
        &c,
        "SELECT count(*), sum(qty), group_concat(name) FROM items",
    )
    .await
    .expect("items on the primary");
    for i in 1..3 {
        let s = group.nodes[i].client(APP).await;
        let got = query_text(
            &s,
            "SELECT count(*), sum(qty), group_concat(name) FROM items",
        )
        .await
        .unwrap_or_else(|e| panic!("items on r{}: {}", i + 1, error_text(&e)));
        assert_eq!(got, expected, "items on r{} differ", i + 1);
    }
}

// ---------------------------------------------------------------- rule 4

const ACCOUNTS: i64 = 200;
const INITIAL_BALANCE: i64 = 1000;
const TRANSFERS: usize = 300;

#[derive(Debug, Default)]
struct ReaderReport {
    reads: usize,
    distinct_states: BTreeSet<i64>,
}

/// Reads `count(*), sum(balance), sum(balance * id)` until `done`, bounded;
/// any error or any other total is returned as `Err`.
async fn read_totals(
    client: Arc<Client>,
    done: Arc<AtomicBool>,
    who: String,
) -> Result<ReaderReport, String> {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut report = ReaderReport::default();
    let sql = "SELECT count(*), sum(balance), sum(balance * id) FROM accounts";
    while report.reads < 200_000 {
        let finished = done.load(Ordering::SeqCst);
        let rows = query_text(&client, sql)
            .await
            .map_err(|e| format!("{who}: read {} failed: {}", report.reads, error_text(&e)))?;
        report.reads += 1;
        let row = rows.first().ok_or_else(|| format!("{who}: no row"))?;
        let count: i64 = row[0].as_deref().and_then(|v| v.parse().ok()).unwrap_or(-1);
        let sum: i64 = row[1].as_deref().and_then(|v| v.parse().ok()).unwrap_or(-1);
        if count != ACCOUNTS || sum != ACCOUNTS * INITIAL_BALANCE {
            return Err(format!(
                "{who}: torn read after {} reads: {count} accounts holding {sum} (expected {ACCOUNTS} holding {})",
                report.reads,
                ACCOUNTS * INITIAL_BALANCE
            ));
        }
        if let Some(w) = row[2].as_deref().and_then(|v| v.parse().ok()) {
            report.distinct_states.insert(w);
        }
        if finished {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("{who}: the writer did not finish within 180 s"));
        }
    }
    Ok(report)
}

#[tokio::test(flavor = "multi_thread")]
async fn safety_rule_4_readers_on_secondaries_never_see_a_torn_transfer() {
    let group = Group::start(3).await;
    let c = group.primary().client(APP).await;
    run(
        &group,
        &c,
        "CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL, pad BLOB)",
    )
    .await;
    // Padding spreads the accounts over many pages, so one transfer
    // usually touches two different leaf pages.
    run(
        &group,
        &c,
        &format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ACCOUNTS}) \
             INSERT INTO accounts SELECT i, {INITIAL_BALANCE}, randomblob(300) FROM n"
        ),
    )
    .await;
    group.wait_caught_up(&[1, 2], CATCH_UP_TIMEOUT).await;

    // Sessions on the secondaries opened before the writer starts (and
    // before table `midrun` exists).
    let r2 = Arc::new(group.nodes[1].client(APP).await);
    let r3 = Arc::new(group.nodes[2].client(APP).await);
    let done = Arc::new(AtomicBool::new(false));
    let readers = [
        tokio::spawn(read_totals(r2.clone(), done.clone(), "reader on r2".into())),
        tokio::spawn(read_totals(r3.clone(), done.clone(), "reader on r3".into())),
    ];

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let writer_result: Result<(), String> = async {
        for n in 0..TRANSFERS {
            let from = 1 + rng.below(ACCOUNTS as u64) as i64;
            let mut to = 1 + rng.below(ACCOUNTS as u64) as i64;
            if to == from {
                to = from % ACCOUNTS + 1;
            }
            let amount = 1 + rng.below(100) as i64;
            let sql = format!(
                "BEGIN; UPDATE accounts SET balance = balance - {amount} WHERE id = {from}; \
                 UPDATE accounts SET balance = balance + {amount} WHERE id = {to}; COMMIT"
            );
            match tokio::time::timeout(STATEMENT_TIMEOUT, c.batch_execute(&sql)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("transfer {n}: {}", error_text(&e))),
                Err(_) => return Err(format!("transfer {n}: no answer in time")),
            }
            if n == TRANSFERS / 2 {
                let ddl = "CREATE TABLE midrun(x INTEGER); INSERT INTO midrun VALUES (42)";
                c.batch_execute(ddl)
                    .await
                    .map_err(|e| format!("{ddl}: {}", error_text(&e)))?;
            }
        }
        Ok(())
    }
    .await;
    done.store(true, Ordering::SeqCst);
    let mut reports = Vec::new();
    for reader in readers {
        let result = tokio::time::timeout(Duration::from_secs(200), reader)
            .await
            .expect("readers are bounded")
            .expect("reader task panicked");
        reports.push(result);
    }
    if let Err(e) = writer_result {
        panic!("writer on the primary failed: {e}\n{}", group.logs());
    }
    for report in &reports {
        if let Err(e) = report {
            panic!("{e}\n{}", group.logs());
        }
    }
    for (report, who) in reports.iter().zip(["r2", "r3"]) {
        let report = report.as_ref().unwrap();
        eprintln!(
            "reader on {who}: {} reads, {} distinct states",
            report.reads,
            report.distinct_states.len()
        );
        assert!(
            report.distinct_states.len() >= 2,
            "the reader on {who} saw only {} state(s) in {} reads: it did not overlap the transfers",
            report.distinct_states.len(),
            report.reads
        );
    }

    // The already-open sessions see the table created mid-run, without
    // reconnecting.
    for (client, who) in [(&r2, "r2"), (&r3, "r3")] {
        let deadline = Instant::now() + CATCH_UP_TIMEOUT;
        loop {
            match query_text(client, "SELECT x FROM midrun").await {
                Ok(rows) => {
                    assert_eq!(rows, vec![vec![Some("42".to_string())]], "midrun on {who}");
                    break;
                }
                Err(e) if e.code().is_some_and(|c| c.code() == "42P01") => {}
                Err(e) => panic!(
                    "SELECT x FROM midrun on {who}: {}\n{}",
                    error_text(&e),
                    group.logs()
                ),
            }
            if Instant::now() > deadline {
                panic!(
                    "table midrun never became visible to the open session on {who}\n{}",
                    group.logs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    // Once caught up, the secondaries hold exactly the primary's balances.
    group.assert_page_identical("after the transfers").await;
    let expected = query_text(&c, "SELECT group_concat(balance) FROM accounts")
        .await
        .unwrap();
    for (client, who) in [(&r2, "r2"), (&r3, "r3")] {
        let got = query_text(client, "SELECT group_concat(balance) FROM accounts")
            .await
            .unwrap();
        assert_eq!(got, expected, "balances on {who}");
    }
}

// ------------------------------------------------- sync commit, SIGSTOP

/// Inserts one row (bounded), panicking with the logs on failure.
async fn insert_row(group: &Group, client: &Client, table: &str, id: i64) {
    let sql = format!("INSERT INTO {table}(id, v) VALUES ($1, 'row')");
    // `id INTEGER` is int4, as in PostgreSQL.
    let id32 = i32::try_from(id).expect("ids fit in int4");
    match tokio::time::timeout(STATEMENT_TIMEOUT, client.execute(sql.as_str(), &[&id32])).await {
        Ok(Ok(1)) => {}
        Ok(Ok(n)) => panic!("{sql} [{id}]: {n} rows"),
        Ok(Err(e)) => panic!("{sql} [{id}]: {}\n{}", error_text(&e), group.logs()),
        Err(_) => panic!(
            "{sql} [{id}]: the commit did not complete within {STATEMENT_TIMEOUT:?}\n{}",
            group.logs()
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_commit_waits_for_a_paused_secondary_only_until_the_session_timeout() {
    let group = Group::start(3).await; // SESSION_TIMEOUT = 5
    let c = group.primary().client(APP).await;
    run(&group, &c, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)").await;
    insert_row(&group, &c, "t", 1).await;
    group.wait_synchronized(&[1, 2], CATCH_UP_TIMEOUT).await;

    group.nodes[1].pause();
    let started = Instant::now();
    insert_row(&group, &c, "t", 2).await;
    let waited = started.elapsed();
    eprintln!("the commit with r2 frozen took {waited:?}");
    assert!(
        waited >= Duration::from_millis(3500),
        "a commit with synchronized r2 frozen returned after {waited:?}: it did not wait for r2 \
         until the session timeout (5 s)\n{}",
        group.logs()
    );
    // r2 left the synchronized set: later commits complete.
    for id in 3..=12 {
        insert_row(&group, &c, "t", id).await;
    }
    let view = group.primary_view().await;
    let r2 = view.iter().find(|s| s.replica == "r2").expect("r2's row");
    assert_eq!(
        r2.sync_state, "NOT SYNCHRONIZING",
        "r2 in the primary's view: {view:#?}"
    );
    let r3 = view.iter().find(|s| s.replica == "r3").expect("r3's row");
    assert_eq!(r3.sync_state, "SYNCHRONIZED", "r3: {view:#?}");
    let links = replica_states(group.primary()).await;
    let r2_link = links.iter().find(|l| l.replica == "r2").expect("r2's link");
    assert_eq!(r2_link.connected, "DISCONNECTED", "{links:#?}");
    assert_ne!(r2_link.health, "HEALTHY", "{links:#?}");

    group.nodes[1].resume();
    group.wait_synchronized(&[1, 2], CATCH_UP_TIMEOUT).await;
    group.wait_caught_up(&[1, 2], CATCH_UP_TIMEOUT).await;
    let all: BTreeSet<i64> = (1..=12).collect();
    for i in 1..3 {
        assert_eq!(
            ids(&group.nodes[i], APP, "t").await,
            all,
            "rows on r{} after it came back",
            i + 1
        );
    }
    // And commits wait for r2 again: it is back in the synchronized set,
    // so a new commit is hardened there when it returns.
    insert_row(&group, &c, "t", 13).await;
    let commit = group.commit_lsn().await;
    let view = group.primary_view().await;
    let r2 = view.iter().find(|s| s.replica == "r2").unwrap();
    assert!(
        r2.sync_state == "SYNCHRONIZED" && r2.hardened >= commit,
        "after a commit, synchronized r2 must have hardened it (commit LSN {commit}): {view:#?}"
    );
    group
        .assert_page_identical("after r2 was frozen and thawed")
        .await;
}

// ---------------------------------------------------------------- rule 1

#[tokio::test(flavor = "multi_thread")]
async fn safety_rule_1_an_acknowledged_commit_is_on_the_sync_secondary() {
    let mut group = Group::start(3).await;
    {
        let c = group.primary().client(APP).await;
        run(&group, &c, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)").await;
    }
    for round in 1..=3i32 {
        group.wait_synchronized(&[1, 2], CATCH_UP_TIMEOUT).await;
        // A restarted primary takes writes once the cluster grants it a
        // lease (RESOLVING until then).
        group.wait_takes_writes(0, CATCH_UP_TIMEOUT).await;
        let c = group.primary().client(APP).await;
        let sql = "INSERT INTO t(id, v) VALUES ($1, 'acked')";
        match tokio::time::timeout(STATEMENT_TIMEOUT, c.execute(sql, &[&round])).await {
            Ok(Ok(1)) => {}
            other => panic!("round {round}: {sql}: {other:?}\n{}", group.logs()),
        }
        // The moment the commit is acknowledged, the primary dies.
        group.nodes[0].kill9();
        drop(c);

        for i in 1..3 {
            let s = group.nodes[i].client(APP).await;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let rows = query_text(&s, "SELECT id FROM t ORDER BY id")
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "round {round}: reading r{} after the primary died: {}\n{}",
                            i + 1,
                            error_text(&e),
                            group.logs()
                        )
                    });
                let got: Vec<i32> = rows
                    .iter()
                    .filter_map(|r| r[0].as_deref().and_then(|v| v.parse().ok()))
                    .collect();
                if got == (1..=round).collect::<Vec<_>>() {
                    break;
                }
                if Instant::now() > deadline {
                    panic!(
                        "round {round}: r{} holds ids {got:?} 30 s after the primary died, but \
                         ids 1..={round} were acknowledged; its own view: {:#?}\n{}",
                        i + 1,
                        db_states(&group.nodes[i]).await,
                        group.logs()
                    );
                }
                tokio::time::sleep(POLL).await;
            }
            let ro = query_text(&s, "SHOW transaction_read_only").await.unwrap();
            assert_eq!(
                ro,
                vec![vec![Some("on".to_string())]],
                "r{} is still a read-only secondary",
                i + 1
            );
        }
        group.nodes[0].restart().await;
        assert_eq!(
            ids(group.primary(), APP, "t").await,
            (1..=i64::from(round)).collect::<BTreeSet<_>>(),
            "round {round}: the restarted primary's rows"
        );
    }
    group.wait_synchronized(&[1, 2], CATCH_UP_TIMEOUT).await;
    group
        .assert_page_identical("after three primary crashes")
        .await;
}

// ----------------------------------------------------- kill -9 secondary

async fn create_load_table(group: &Group) {
    let c = group.primary().client(APP).await;
    run(
        group,
        &c,
        "CREATE TABLE load(id INTEGER PRIMARY KEY, pad BLOB)",
    )
    .await;
    group
        .wait_caught_up(
            &(1..group.nodes.len()).collect::<Vec<_>>(),
            CATCH_UP_TIMEOUT,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_a_secondary_then_restart_loses_nothing() {
    let mut group = Group::start(3).await;
    create_load_table(&group).await;
    let load = InsertLoad::start(group.primary().client(APP).await, "load", 1, 100_000);
    load.wait_acked(100, Duration::from_secs(60)).await;

    group.nodes[2].kill9();
    let at_kill = load.acked_count();
    // The primary goes on committing without r3.
    load.wait_acked(at_kill + 100, Duration::from_secs(60))
        .await;
    group.nodes[2].restart().await;
    // … and while r3 catches up.
    load.wait_acked(load.acked_count() + 100, Duration::from_secs(60))
        .await;
    let report = load.finish().await;
    assert!(
        report.failed.is_none(),
        "an insert failed while only a secondary was down: {:?}\n{}",
        report.failed,
        group.logs()
    );

    group.wait_synchronized(&[1, 2], CATCH_UP_TIMEOUT).await;
    group.wait_caught_up(&[1, 2], CATCH_UP_TIMEOUT).await;
    for i in 0..3 {
        let present = ids(&group.nodes[i], APP, "load").await;
        assert_has_acked(&report, &present, &format!("r{}", i + 1));
        assert_eq!(
            present.len(),
            report.acked.len(),
            "r{}: every acknowledged insert and nothing else",
            i + 1
        );
    }
    group
        .assert_page_identical("after r3 was killed and restarted")
        .await;
}

// ------------------------------------------------------- kill -9 primary

/// Writers per round of the primary-kill test: several commits are in
/// flight (in doubt) when the primary dies.
const WRITERS: i64 = 4;
const CRASH_ROUNDS: i64 = 3;

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_the_primary_then_restart_loses_nothing_and_does_not_diverge() {
    let mut group = Group::start(3).await;
    create_load_table(&group).await;
    let mut all = LoadReport::default();
    let mut in_doubt = Vec::new();
    for round in 0..CRASH_ROUNDS {
        // The restarted primary takes writes once the cluster grants it a
        // lease (RESOLVING until then).
        group.wait_takes_writes(0, CATCH_UP_TIMEOUT).await;
        let mut loads = Vec::new();
        for w in 0..WRITERS {
            let first = 1 + round * 1_000_000 + w * 100_000;
            loads.push(InsertLoad::start(
                group.primary().client(APP).await,
                "load",
                first,
                90_000,
            ));
        }
        for load in &loads {
            load.wait_acked(40, Duration::from_secs(60)).await;
        }
        group.nodes[0].kill9();
        for load in loads {
            let report = load.join(Duration::from_secs(60)).await;
            let (id, why) = report
                .failed
                .clone()
                .expect("every writer fails once the primary is gone");
            eprintln!(
                "round {round}: writer acknowledged {} inserts; id {id} in doubt ({why})",
                report.acked.len()
            );
            in_doubt.push(id);
            all.acked.extend(&report.acked);
            all.attempted.extend(&report.attempted);
        }
        group.nodes[0].restart().await;
        let on_primary = ids(group.primary(), APP, "load").await;
        assert_has_acked(
            &all,
            &on_primary,
            &format!("round {round}: the restarted primary"),
        );
        group.wait_synchronized(&[1, 2], CATCH_UP_TIMEOUT).await;
    }

    // More commits through the restarted primary, once its lease is granted.
    group.wait_takes_writes(0, CATCH_UP_TIMEOUT).await;
    let after = InsertLoad::start(group.primary().client(APP).await, "load", 10_000_000, 200)
        .join(Duration::from_secs(120))
        .await;
    assert!(
        after.failed.is_none(),
        "insert after the restarts failed: {:?}\n{}",
        after.failed,
        group.logs()
    );
    all.acked.extend(&after.acked);
    all.attempted.extend(&after.attempted);

    group.wait_caught_up(&[1, 2], CATCH_UP_TIMEOUT).await;
    let mut sets = Vec::new();
    for i in 0..3 {
        let present = ids(&group.nodes[i], APP, "load").await;
        assert_has_acked(&all, &present, &format!("r{}", i + 1));
        sets.push(present);
    }
    // No divergence: every replica holds the same rows, in-doubt ones
    // included (each is on all replicas or on none).
    for (i, set) in sets.iter().enumerate().skip(1) {
        let only_primary: Vec<_> = sets[0].difference(set).collect();
        let only_here: Vec<_> = set.difference(&sets[0]).collect();
        assert!(
            only_primary.is_empty() && only_here.is_empty(),
            "r{} diverged from the primary: ids only on r1 {only_primary:?}, only on r{} \
             {only_here:?} (in doubt: {in_doubt:?})\n{}",
            i + 1,
            i + 1,
            group.logs()
        );
    }
    group
        .assert_page_identical("after the primary was killed and restarted")
        .await;
}

// ---------------------------------------------------------------- rule 6

type Wire = Framed<TcpStream, WireCodec>;

async fn wire_connect(port: u16) -> Wire {
    let socket = tokio::time::timeout(
        Duration::from_secs(10),
        TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .expect("connect to the endpoint in time")
    .unwrap_or_else(|e| panic!("connect to endpoint 127.0.0.1:{port}: {e}"));
    Framed::new(socket, WireCodec)
}

async fn wire_send(conn: &mut Wire, message: Message) {
    tokio::time::timeout(Duration::from_secs(10), conn.send(message))
        .await
        .expect("send in time")
        .expect("send a wire message");
}

/// The next message, `None` when the peer closed the connection.
async fn wire_next(conn: &mut Wire) -> Option<Message> {
    match tokio::time::timeout(Duration::from_secs(15), conn.next()).await {
        Err(_) => panic!("the node sent nothing within 15 s"),
        Ok(None) => None,
        Ok(Some(Ok(m))) => Some(m),
        Ok(Some(Err(e))) => panic!("bad message from the node: {e}"),
    }
}

/// The next message that is not a Ping (the secondary pings while connected).
async fn wire_next_not_ping(conn: &mut Wire) -> Option<Message> {
    for _ in 0..100 {
        match wire_next(conn).await {
            Some(Message::Ping { .. }) => continue,
            other => return other,
        }
    }
    panic!("only pings from the node")
}

/// True when the node closes the connection (EOF, or a reset because it
/// closed with our unread bytes still queued) without sending anything
/// but pings.
async fn wire_closed(conn: &mut Wire) -> Result<(), Message> {
    for _ in 0..100 {
        match tokio::time::timeout(Duration::from_secs(15), conn.next()).await {
            Err(_) => {
                panic!("the node neither closed the connection nor sent anything within 15 s")
            }
            Ok(None) | Ok(Some(Err(_))) => return Ok(()),
            Ok(Some(Ok(Message::Ping { .. }))) => continue,
            Ok(Some(Ok(m))) => return Err(m),
        }
    }
    panic!("only pings from the node")
}

fn replica_config(name: &str, endpoint_port: u16) -> ReplicaConfig {
    ReplicaConfig {
        name: name.to_string(),
        endpoint: ([127, 0, 0, 1], endpoint_port).into(),
        availability_mode: AvailabilityMode::SynchronousCommit,
        failover_mode: FailoverMode::Manual,
        session_timeout_s: 10,
        secondary_allow_connections: SecondaryConnections::All,
        primary_allow_connections: Default::default(),
        read_only_routing_url: None,
        read_only_routing_list: vec![],
        backup_priority: 50,
        seeding_mode: Default::default(),
    }
}

/// The node's view of `sys.availability_groups` (name, version, epoch,
/// primary, cluster id).
async fn groups_view(server: &TestServer) -> Vec<Vec<Option<String>>> {
    let client = server.client(DEFAULT_DB).await;
    query_text(
        &client,
        "SELECT name, version, epoch, primary_replica, cluster_id FROM sys.availability_groups ORDER BY name",
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn safety_rule_6_a_peer_from_another_cluster_is_refused() {
    let group = Group::start(2).await;
    let c = group.primary().client(APP).await;
    run(
        &group,
        &c,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'one')",
    )
    .await;
    group.wait_caught_up(&[1], CATCH_UP_TIMEOUT).await;
    let r2 = &group.nodes[1];
    let before_groups = groups_view(r2).await;
    let real_cluster = before_groups[0][4].clone().expect("cluster id");
    let before_pages = pages(r2, APP).await;

    // A primary of another cluster, claiming the same group, a newer
    // definition and itself as primary.
    let other = "0ther0cluster0000000000000000000";
    let mut fake = GroupConfig {
        name: "ag1".into(),
        cluster_id: other.into(),
        version: 99,
        epoch: 7,
        primary: "r1".into(),
        databases: vec![APP.into()],
        required_synchronized_secondaries: 0,
        replicas: vec![
            replica_config("r1", free_port()),
            replica_config("r2", group.endpoints[1]),
        ],
        cluster_type: Default::default(),
        last_failover: None,
        failure_condition_level: 3,
        health_check_timeout_ms: 5000,
        listener: None,
        database_options: Default::default(),
        automated_backup_preference: Default::default(),
    };
    let mut conn = wire_connect(group.endpoints[1]).await;
    wire_send(
        &mut conn,
        Message::Hello {
            cluster_id: other.into(),
            group: "ag1".into(),
            from_replica: "r1".into(),
            to_replica: "r2".into(),
            epoch: 7,
        },
    )
    .await;
    wire_send(
        &mut conn,
        Message::Config {
            version: fake.version,
            config: fake.to_bytes(),
        },
    )
    .await;
    match wire_next_not_ping(&mut conn).await {
        Some(Message::Refuse { reason }) => {
            assert!(
                reason.contains("cluster") && reason.contains(other),
                "the refusal should name the foreign cluster: {reason:?}"
            );
        }
        other => panic!(
            "a peer of another cluster got {other:?} instead of Refuse\n{}",
            group.logs()
        ),
    }
    if let Err(m) = wire_closed(&mut conn).await {
        panic!("after Refuse the node should close the connection, but sent {m:?}");
    }

    // A Hello for a group this node never joined (right cluster id even).
    fake.name = "agnever".into();
    fake.cluster_id = real_cluster.clone();
    let mut conn = wire_connect(group.endpoints[1]).await;
    wire_send(
        &mut conn,
        Message::Hello {
            cluster_id: real_cluster.clone(),
            group: "agnever".into(),
            from_replica: "r1".into(),
            to_replica: "r2".into(),
            epoch: 1,
        },
    )
    .await;
    wire_send(
        &mut conn,
        Message::Config {
            version: 1,
            config: fake.to_bytes(),
        },
    )
    .await;
    match wire_next_not_ping(&mut conn).await {
        Some(Message::Refuse { reason }) => assert!(
            reason.contains("agnever"),
            "the refusal should name the group: {reason:?}"
        ),
        other => panic!("a Hello for an unjoined group got {other:?} instead of Refuse"),
    }

    // Nothing changed on r2: same definition, same pages, still fed by r1.
    assert_eq!(
        groups_view(r2).await,
        before_groups,
        "r2's group definition"
    );
    assert!(
        groups_view(r2)
            .await
            .iter()
            .all(|g| g[0].as_deref() != Some("agnever")),
        "r2 must not have joined agnever"
    );
    let after_pages = pages(r2, APP).await;
    if let Err(diff) = common::group::compare_pages(&before_pages, &after_pages) {
        panic!("r2's pages changed after refused peers:\n{diff}");
    }
    let links = replica_states(r2).await;
    assert!(
        links
            .iter()
            .any(|l| l.is_local && l.connected == "CONNECTED"),
        "r2 is still connected to its real primary: {links:#?}"
    );
    run(&group, &c, "INSERT INTO t VALUES (2, 'two')").await;
    group.wait_synchronized(&[1], CATCH_UP_TIMEOUT).await;
    group
        .assert_page_identical("after refused peers, a new commit")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn safety_rule_6_a_corrupt_record_is_refused_and_nothing_applied() {
    let endpoint = free_port();
    let node = TestServer::builder().replica("rx", endpoint).start().await;
    let admin = node.client(DEFAULT_DB).await;
    exec(&admin, "ALTER AVAILABILITY GROUP agx JOIN", "rx").await;

    // Real page images: a database on the same node, read over the wire.
    exec(&admin, "CREATE DATABASE src", "rx").await;
    let src = node.client("src").await;
    exec(
        &src,
        "CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT); \
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100) \
         INSERT INTO kv SELECT i, 'value-' || i FROM n",
        "src",
    )
    .await;
    let image = pages(&node, "src").await;
    let page_size = image[0].1.len() as u32;
    let image: Vec<(u32, Vec<u8>)> = image.into_iter().map(|(p, d)| (p as u32, d)).collect();
    assert!(
        image.len() >= 2,
        "the source database has {} pages",
        image.len()
    );

    let cluster = "fake0cluster0000000000000000000";
    let config = GroupConfig {
        name: "agx".into(),
        cluster_id: cluster.into(),
        version: 1,
        epoch: 1,
        primary: "fp".into(),
        databases: vec!["fake".into()],
        required_synchronized_secondaries: 0,
        replicas: vec![
            replica_config("fp", free_port()),
            replica_config("rx", endpoint),
        ],
        cluster_type: Default::default(),
        last_failover: None,
        failure_condition_level: 3,
        health_check_timeout_ms: 5000,
        listener: None,
        database_options: Default::default(),
        automated_backup_preference: Default::default(),
    };
    let hello = || Message::Hello {
        cluster_id: cluster.into(),
        group: "agx".into(),
        from_replica: "fp".into(),
        to_replica: "rx".into(),
        epoch: 1,
    };
    let handshake = |mut conn: Wire| {
        let config = config.clone();
        async move {
            wire_send(&mut conn, hello()).await;
            wire_send(
                &mut conn,
                Message::Config {
                    version: config.version,
                    config: config.to_bytes(),
                },
            )
            .await;
            let start = match wire_next_not_ping(&mut conn).await {
                Some(Message::Welcome { replica, databases }) => {
                    assert_eq!(replica, "rx");
                    databases
                        .iter()
                        .find(|d| d.database == "fake")
                        .unwrap_or_else(|| panic!("Welcome without database fake: {databases:?}"))
                        .end_lsn
                }
                other => panic!("the joined node answered {other:?} instead of Welcome"),
            };
            (conn, start)
        }
    };
    let (mut conn, start) = handshake(wire_connect(endpoint).await).await;
    eprintln!("database fake's log ends at LSN {start} before the batch");

    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let full = Record {
        lsn: start,
        epoch: 1,
        commit_time_us: now_us,
        db_size: image.len() as u32,
        page_size,
        pages: image.clone(),
        flags: Record::IMAGE_START,
    };
    let mut next_page = image[1].1.clone();
    next_page[page_size as usize - 1] ^= 0x01;
    let second = Record {
        lsn: full.end_lsn(),
        epoch: 1,
        commit_time_us: now_us + 1,
        db_size: image.len() as u32,
        page_size,
        pages: vec![(2, next_page)],
        flags: 0,
    };
    let mut full_bytes = Vec::new();
    full.encode_into(&mut full_bytes);
    let mut corrupt = Vec::new();
    second.encode_into(&mut corrupt);
    // Flip one byte inside the page image: the checksum no longer matches.
    let middle = 48 + 4 + page_size as usize / 2;
    corrupt[middle] ^= 0x40;

    wire_send(
        &mut conn,
        Message::Records {
            database: "fake".into(),
            records: vec![full_bytes.clone().into(), corrupt.into()],
        },
    )
    .await;
    match wire_next_not_ping(&mut conn).await {
        Some(Message::Refuse { reason }) => assert!(
            reason.to_ascii_lowercase().contains("corrupt"),
            "the refusal should say the record is corrupt: {reason:?}"
        ),
        other => panic!(
            "a batch with a corrupt record got {other:?} instead of Refuse\n{}",
            node.log_tail()
        ),
    }

    // Nothing of the batch was hardened or applied, not even the valid
    // first record.
    let state = db_states(&node)
        .await
        .into_iter()
        .find(|s| s.database == "fake" && s.is_local)
        .unwrap_or_else(|| panic!("no local row for database fake\n{}", node.log_tail()));
    assert_eq!(
        (state.hardened, state.redone),
        (start, start),
        "after a refused batch the log must end where it did ({start}): {state:#?}"
    );
    let fake = node.client("fake").await;
    let tables = query_text(&fake, "SELECT count(*) FROM sqlite_master")
        .await
        .unwrap();
    assert_eq!(
        tables,
        vec![vec![Some("0".to_string())]],
        "database fake must still be empty"
    );

    // Control: the same valid record alone is accepted and redone, so the
    // refusal above was for the corrupt record, not for the batch's shape.
    let (mut conn, start_again) = handshake(wire_connect(endpoint).await).await;
    assert_eq!(start_again, start, "the log end reported again");
    wire_send(
        &mut conn,
        Message::Records {
            database: "fake".into(),
            records: vec![full_bytes.into()],
        },
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match wire_next_not_ping(&mut conn).await {
            Some(Message::Progress {
                database,
                hardened_lsn,
                ..
            }) if database == "fake" && hardened_lsn >= full.end_lsn() => break,
            Some(Message::Progress { .. } | Message::Pong { .. }) => {}
            other => panic!("a valid full image got {other:?}\n{}", node.log_tail()),
        }
        assert!(
            Instant::now() < deadline,
            "no Progress for the valid record"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(rows) = query_text(&fake, "SELECT count(*) FROM kv").await {
            if rows == vec![vec![Some("100".to_string())]] {
                break;
            }
        }
        if Instant::now() > deadline {
            panic!(
                "the valid image was not redone into fake within 30 s\n{}",
                node.log_tail()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

// ------------------------------------------- seeding a large database

/// A database far larger than a wire frame (64 MiB) seeds a new secondary:
/// the full image travels as a run of bounded records, and the secondary
/// ends page-identical — also with a schema that lives on pages beyond the
/// image's first part (tables created after the data), and after the
/// secondary is killed and recovers from its log.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_larger_than_a_wire_frame_seeds_a_new_secondary() {
    const MIB_ROWS: i64 = 80;
    let mut nodes = Vec::new();
    let mut endpoints = Vec::new();
    for name in ["r1", "r2"] {
        let endpoint = free_port();
        nodes.push(TestServer::builder().replica(name, endpoint).start().await);
        endpoints.push(endpoint);
    }
    let r1 = nodes[0].client(DEFAULT_DB).await;
    r1.batch_execute(&format!("CREATE DATABASE {APP}"))
        .await
        .expect("create app");
    let app = nodes[0].client(APP).await;
    app.batch_execute("CREATE TABLE big(id INTEGER PRIMARY KEY, b BLOB NOT NULL)")
        .await
        .expect("create big");
    for id in 1..=MIB_ROWS {
        app.batch_execute(&format!(
            "INSERT INTO big VALUES ({id}, randomblob(1048576))"
        ))
        .await
        .unwrap_or_else(|e| panic!("insert {id}: {}", error_text(&e)));
    }
    // Tables created after the data: the schema spills onto high pages.
    for t in 0..60 {
        let columns: Vec<String> = (0..12)
            .map(|c| format!("a_long_column_name_to_grow_the_schema_{c} TEXT"))
            .collect();
        app.batch_execute(&format!(
            "CREATE TABLE late{t}(id INTEGER PRIMARY KEY, {})",
            columns.join(", ")
        ))
        .await
        .unwrap_or_else(|e| panic!("create late{t}: {}", error_text(&e)));
    }
    app.batch_execute("INSERT INTO late59(id) VALUES (1)")
        .await
        .expect("insert into late59");

    let r2 = nodes[1].client(DEFAULT_DB).await;
    r2.batch_execute("ALTER AVAILABILITY GROUP ag1 JOIN")
        .await
        .expect("join on r2");
    let mut group = Group {
        nodes,
        endpoints,
        spec: common::group::GroupSpec {
            replicas: 2,
            ..Default::default()
        },
        proxy: None,
        endpoint_hosts: vec!["127.0.0.1".into(); 2],
    };
    r1.batch_execute(&group.create_statement())
        .await
        .unwrap_or_else(|e| panic!("create the group: {}", error_text(&e)));
    group
        .wait_synchronized(&[1], Duration::from_secs(180))
        .await;
    // Synchronized once the image is hardened; redone a little later (the
    // image holds no commit, so wait for the primary's whole log).
    group
        .wait_caught_up_to(0, &[1], Duration::from_secs(180))
        .await;
    group
        .assert_page_identical_to(0, &[1], "after seeding a large database")
        .await;
    let check = |node: &TestServer| {
        let conn = node.conn_string(APP);
        async move {
            let client = connect(&conn).await.expect("connect");
            query_text(
                &client,
                "SELECT count(*), sum(length(b)) FROM big; SELECT count(*) FROM late59",
            )
            .await
            .expect("read big")
        }
    };
    let expected = vec![
        vec![
            Some(MIB_ROWS.to_string()),
            Some((MIB_ROWS << 20).to_string()),
        ],
        vec![Some("1".to_string())],
    ];
    assert_eq!(check(&group.nodes[1]).await, expected, "r2 after seeding");

    group.nodes[1].kill9();
    group.nodes[1].restart().await;
    group
        .wait_synchronized(&[1], Duration::from_secs(180))
        .await;
    assert_eq!(
        check(&group.nodes[1]).await,
        expected,
        "r2 after its restart"
    );
}

// --------------------------------------------------- suspend and resume

/// A 3-replica group whose table `t` holds ids 1..=10 on every replica;
/// a session on the primary's `app`.
async fn three_replicas_with_ten_rows() -> (Group, Client) {
    let group = Group::start(3).await;
    let c = group.primary().client(APP).await;
    run(&group, &c, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)").await;
    for id in 1..=10 {
        insert_row(&group, &c, "t", id).await;
    }
    group.wait_caught_up(&[1, 2], CATCH_UP_TIMEOUT).await;
    (group, c)
}

#[tokio::test(flavor = "multi_thread")]
async fn suspend_and_resume_data_movement() {
    let (group, c) = three_replicas_with_ten_rows().await;
    let admin = group.primary().client(DEFAULT_DB).await;
    run(&group, &admin, "ALTER DATABASE app SET HADR SUSPEND").await;

    let view = group.primary_view().await;
    for r in ["r2", "r3"] {
        let s = view.iter().find(|s| s.replica == r).expect("row");
        assert!(
            s.is_suspended && s.sync_state == "NOT SYNCHRONIZING",
            "{r} after SUSPEND: {view:#?}"
        );
    }
    // A definition change restarts the primary's links: the suspension
    // stays (it is recorded, as is one from a forced failover).
    run(
        &group,
        &admin,
        "ALTER AVAILABILITY GROUP ag1 MODIFY REPLICA ON 'r3' WITH (SESSION_TIMEOUT = 6)",
    )
    .await;
    // Commits do not wait for suspended secondaries (they would never
    // harden: nothing is sent to them).
    for id in 11..=30 {
        insert_row(&group, &c, "t", id).await;
    }
    let commit = group.commit_lsn().await;
    let view = group.primary_view().await;
    for i in 1..3 {
        let own = group.local_state(i).await.expect("own row");
        assert!(
            own.hardened < commit,
            "r{} hardened {} of {commit} while data movement was suspended",
            i + 1,
            own.hardened
        );
        assert_eq!(
            ids(&group.nodes[i], APP, "t").await,
            (1..=10).collect::<BTreeSet<_>>(),
            "rows on suspended r{}",
            i + 1
        );
        let s = view.iter().find(|s| s.replica == format!("r{}", i + 1));
        assert!(
            s.is_some_and(|s| s.is_suspended && s.sync_state == "NOT SYNCHRONIZING"),
            "still suspended after commits: {view:#?}"
        );
    }

    run(&group, &admin, "ALTER DATABASE app SET HADR RESUME").await;
    group.wait_synchronized(&[1, 2], CATCH_UP_TIMEOUT).await;
    let view = group.primary_view().await;
    assert!(
        view.iter().all(|s| !s.is_suspended),
        "after RESUME: {view:#?}"
    );
    group.wait_caught_up(&[1, 2], CATCH_UP_TIMEOUT).await;
    for i in 1..3 {
        assert_eq!(
            ids(&group.nodes[i], APP, "t").await,
            (1..=30).collect::<BTreeSet<_>>(),
            "rows on r{} after RESUME",
            i + 1
        );
    }
    group
        .assert_page_identical("after SUSPEND and RESUME")
        .await;
}

/// `SET HADR SUSPEND` run on a secondary suspends data movement to that
/// secondary alone: the primary takes it out of the synchronized set and
/// stops sending, commits no longer wait for it, the other secondary goes
/// on; RESUME there brings it back to SYNCHRONIZED with every row.
#[tokio::test(flavor = "multi_thread")]
async fn a_secondary_suspends_and_resumes_its_own_data_movement() {
    let (group, c) = three_replicas_with_ten_rows().await;
    let r2 = group.nodes[1].client(DEFAULT_DB).await;
    run(&group, &r2, "ALTER DATABASE app SET HADR SUSPEND").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let view = group.primary_view().await;
        let row = |r: &str| view.iter().find(|s| s.replica == r).cloned();
        let (two, three) = (row("r2"), row("r3"));
        if two
            .as_ref()
            .is_some_and(|s| s.is_suspended && s.sync_state == "NOT SYNCHRONIZING")
            && three
                .as_ref()
                .is_some_and(|s| !s.is_suspended && s.sync_state == "SYNCHRONIZED")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the primary did not take r2's suspension within 30 s: {view:#?}\n{}",
            group.logs()
        );
        tokio::time::sleep(POLL).await;
    }
    let own = group.local_state(1).await.expect("r2's own row");
    assert!(own.is_suspended, "r2's own row: {own:#?}");
    for id in 11..=30 {
        insert_row(&group, &c, "t", id).await;
    }
    group.wait_caught_up(&[2], CATCH_UP_TIMEOUT).await;
    assert_eq!(
        ids(&group.nodes[2], APP, "t").await,
        (1..=30).collect::<BTreeSet<_>>()
    );
    assert_eq!(
        ids(&group.nodes[1], APP, "t").await,
        (1..=10).collect::<BTreeSet<_>>(),
        "r2 while suspended"
    );

    run(&group, &r2, "ALTER DATABASE app SET HADR RESUME").await;
    group.wait_synchronized(&[1, 2], CATCH_UP_TIMEOUT).await;
    group.assert_page_identical("after r2 resumed").await;
    assert_eq!(
        ids(&group.nodes[1], APP, "t").await,
        (1..=30).collect::<BTreeSet<_>>()
    );
}

// ------------------------------------------------------------ availdb up

/// A base port P with P, P+1, P+2 and P+100, P+101, P+102 free now.
fn free_port_block() -> u16 {
    for _ in 0..100 {
        let base = free_port();
        if base > u16::MAX - 200 {
            continue;
        }
        // The listener's two ports, three replicas' client ports, their
        // endpoints and their HTTP ports.
        let ports = [
            base,
            base + 1,
            base + 2,
            base + 3,
            base + 4,
            base + 100,
            base + 101,
            base + 102,
            base + 150,
            base + 151,
            base + 152,
        ];
        let held: Vec<_> = ports
            .iter()
            .map_while(|p| TcpListener::bind(("127.0.0.1", *p)).ok())
            .collect();
        if held.len() == ports.len() {
            return base;
        }
    }
    panic!("no block of free ports found")
}

/// Direct children of `pid`, from /proc.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid …": comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let ppid = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next());
            state != Some("Z")
        }
    }
}

fn send_signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg("-s")
        .arg(signal)
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// Kills `availdb up` and its nodes if the test ends early.
struct UpGuard {
    child: Option<Child>,
    nodes: Vec<u32>,
}

impl Drop for UpGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.nodes.extend(children_of(child.id()));
            let _ = child.kill();
            let _ = child.wait();
        }
        for pid in &self.nodes {
            if alive(*pid) {
                send_signal(*pid, "KILL");
            }
        }
    }
}

fn read_file(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    text
}

/// A running `availdb up --replicas 3` on free ports in a temporary folder,
/// up (it printed "is up"); dropping `guard` stops it and its nodes.
struct Up {
    dir: tempfile::TempDir,
    base: u16,
    out_path: std::path::PathBuf,
    err_path: std::path::PathBuf,
    pid: u32,
    guard: UpGuard,
}

impl Up {
    /// Starts it with `extra` arguments and waits (bounded) for "is up".
    async fn start(extra: &[&str]) -> Up {
        let dir = tempfile::Builder::new()
            .prefix("availdb-up-")
            .tempdir()
            .unwrap();
        let base = free_port_block();
        let out_path = dir.path().join("up.out");
        let err_path = dir.path().join("up.err");
        let child = Command::new(env!("CARGO_BIN_EXE_availdb"))
            .arg("up")
            .args(["--replicas", "3"])
            .args(["--port", &base.to_string()])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(extra)
            .env_remove("AVAILDB_PASSWORD")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .spawn()
            .expect("spawn availdb up");
        let pid = child.id();
        let mut up = Up {
            dir,
            base,
            out_path,
            err_path,
            pid,
            guard: UpGuard {
                child: Some(child),
                nodes: vec![],
            },
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        while !read_file(&up.out_path).contains("is up") {
            if let Some(status) = up.guard.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "availdb up exited ({status}) before the group was up\n{}",
                    up.output()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "availdb up did not report the group up within 90 s\n{}",
                    up.output()
                );
            }
            tokio::time::sleep(POLL).await;
        }
        up
    }

    fn output(&self) -> String {
        up_output(self.dir.path(), &self.out_path, &self.err_path)
    }

    /// Waits (bounded) until up's output holds `line`.
    async fn wait_for(&self, line: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !read_file(&self.out_path).contains(line) {
            assert!(
                Instant::now() < deadline,
                "availdb up did not print {line:?} within {within:?}\n{}",
                self.output()
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

/// What `up` printed and the tail of each node's log, for a failure.
fn up_output(dir: &Path, out_path: &Path, err_path: &Path) -> String {
    let mut s = format!(
        "--- up stdout ---\n{}\n--- up stderr ---\n{}",
        read_file(out_path),
        read_file(err_path)
    );
    for r in ["r1", "r2", "r3"] {
        let log = read_file(&dir.join("data").join(r).join("node.log"));
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(30);
        s.push_str(&format!(
            "\n--- {r} node.log ---\n{}",
            lines[from..].join("\n")
        ));
    }
    s
}

/// The node process of replica `name` among `nodes`.
fn node_named(nodes: &[u32], name: &str) -> u32 {
    nodes
        .iter()
        .copied()
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&format!("\0{name}\0")))
        })
        .unwrap_or_else(|| panic!("no {name} among {nodes:?}"))
}

/// `availdb up --no-restart` is for failover drills: a killed primary is
/// left down (up says so once and never starts it), and the group fails
/// over to a secondary, which then takes writes through the listener.
#[tokio::test(flavor = "multi_thread")]
async fn availdb_up_with_no_restart_leaves_a_killed_primary_down_and_the_group_fails_over() {
    let mut up = Up::start(&["--no-restart"]).await;
    let nodes = children_of(up.pid);
    up.guard.nodes = nodes.clone();
    assert_eq!(nodes.len(), 3, "{nodes:?}\n{}", up.output());
    let r1 = node_named(&nodes, "r1");
    send_signal(r1, "KILL");
    up.wait_for("r1 exited", Duration::from_secs(30)).await;
    assert!(
        read_file(&up.out_path).contains("left down (--no-restart"),
        "{}",
        up.output()
    );
    up.wait_for(
        "is now the primary of ag1 (was r1)",
        Duration::from_secs(60),
    )
    .await;
    let conn = format!(
        "host=127.0.0.1 port={} user={USER} dbname={APP} connect_timeout=10",
        up.base
    );
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    loop {
        let wrote = match connect(&conn).await {
            Ok(client) => client
                .batch_execute("CREATE TABLE IF NOT EXISTS drill(id INTEGER PRIMARY KEY)")
                .await
                .is_ok(),
            Err(_) => false,
        };
        if wrote {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no write through the listener after the failover\n{}",
            up.output()
        );
        tokio::time::sleep(POLL).await;
    }
    let out = read_file(&up.out_path);
    assert!(!out.contains("r1 restarted"), "{}", up.output());
    assert_eq!(out.matches("r1 exited").count(), 1, "reported once\n{out}");
    assert!(!alive(r1), "r1 was started again");
    assert_eq!(children_of(up.pid).len(), 2, "{}", up.output());
}

#[tokio::test(flavor = "multi_thread")]
async fn availdb_up_starts_a_working_three_replica_group_restarts_a_killed_node_and_sigterm_stops_it(
) {
    let up = Up::start(&[]).await;
    let (dir, base, out_path, up_pid) = (&up.dir, up.base, up.out_path.as_path(), up.pid);
    let mut guard = up.guard;
    let output = || up_output(dir.path(), out_path, &up.err_path);
    let nodes = children_of(up_pid);
    guard.nodes = nodes.clone();
    eprintln!(
        "availdb up (pid {up_pid}, nodes {nodes:?}):\n{}",
        read_file(out_path)
    );
    assert_eq!(
        nodes.len(),
        3,
        "availdb up should run 3 node processes: {nodes:?}"
    );

    let conn = |port: u16| {
        format!("host=127.0.0.1 port={port} user={USER} dbname={APP} connect_timeout=10")
    };
    // The listener's read-write port reaches the primary.
    let r1 = connect(&conn(base))
        .await
        .unwrap_or_else(|e| panic!("connect to the listener: {e:?}\n{}", output()));
    match tokio::time::timeout(
        STATEMENT_TIMEOUT,
        r1.batch_execute(
            "CREATE TABLE greeting(id INTEGER PRIMARY KEY, v TEXT); \
             INSERT INTO greeting VALUES (1, 'written on r1')",
        ),
    )
    .await
    {
        Ok(Ok(())) => {}
        other => panic!("write on r1: {other:?}\n{}", output()),
    }
    // The replicas' own ports follow the listener's read-only port, which
    // reaches a readable secondary.
    for (port, name) in [
        (base + 3, "r2"),
        (base + 4, "r3"),
        (base + 1, "the listener's read-only port"),
    ] {
        let client = connect(&conn(port))
            .await
            .unwrap_or_else(|e| panic!("connect to {name}: {e:?}\n{}", output()));
        let deadline = Instant::now() + CATCH_UP_TIMEOUT;
        loop {
            match query_text(&client, "SELECT v FROM greeting WHERE id = 1").await {
                Ok(rows) if rows == vec![vec![Some("written on r1".to_string())]] => break,
                Ok(_) => {}
                Err(e) if e.code().is_some_and(|c| c.code() == "42P01") => {}
                Err(e) => panic!("read on {name}: {}\n{}", error_text(&e), output()),
            }
            if Instant::now() > deadline {
                panic!("{name} never showed r1's row\n{}", output());
            }
            tokio::time::sleep(POLL).await;
        }
        let ro = query_text(&client, "SHOW transaction_read_only")
            .await
            .unwrap();
        assert_eq!(
            ro,
            vec![vec![Some("on".to_string())]],
            "{name} is read-only"
        );
    }

    // Every node serves HTTP health checks on PORT + 149 + i.
    let (status, body) = common::http_get(base + 150, "/primary").await;
    assert_eq!(status, 200, "r1 /primary: {body}\n{}", output());
    let (status, body) = common::http_get(base + 151, "/replica").await;
    assert_eq!(status, 200, "r2 /replica: {body}\n{}", output());

    // up names `availdb status`, which shows every replica from the
    // listener's port and from a secondary's (following the primary's
    // routing URL that up sets).
    assert!(
        read_file(out_path).contains(&format!("availdb status --port {base}")),
        "{}",
        output()
    );
    for (port, from) in [(base, None), (base + 3, Some("rows from the primary r1"))] {
        let out = Command::new(env!("CARGO_BIN_EXE_availdb"))
            .args(["status", "--once", "--port", &port.to_string()])
            .env_remove("AVAILDB_PASSWORD")
            .output()
            .expect("run availdb status");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "availdb status on {port}: {text}\n{}",
            output()
        );
        assert!(text.contains("group ag1: primary r1"), "{text}");
        for r in ["r1", "r2", "r3"] {
            assert!(
                text.lines().any(|l| {
                    let mut cells = l.split_whitespace();
                    cells.next() == Some("app") && cells.next() == Some(r)
                }),
                "no row for {r} from port {port}:\n{text}"
            );
        }
        if let Some(note) = from {
            assert!(text.contains(note), "{text}");
        }
    }

    // up restarts a node that dies, and says so.
    let r2 = node_named(&nodes, "r2");
    send_signal(r2, "KILL");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !read_file(out_path).contains("r2 restarted") {
        assert!(
            Instant::now() < deadline,
            "availdb up did not restart r2 within 60 s\n{}",
            output()
        );
        tokio::time::sleep(POLL).await;
    }
    assert!(
        read_file(out_path).contains("r2 exited unexpectedly"),
        "{}",
        output()
    );
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    loop {
        let read = match connect(&conn(base + 3)).await {
            Ok(client) => query_text(&client, "SELECT v FROM greeting WHERE id = 1")
                .await
                .ok(),
            Err(_) => None,
        };
        if read == Some(vec![vec![Some("written on r1".to_string())]]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted r2 does not serve r1's row\n{}",
            output()
        );
        tokio::time::sleep(POLL).await;
    }
    let nodes = children_of(up_pid);
    guard.nodes = nodes.clone();
    assert_eq!(nodes.len(), 3, "after the restart: {nodes:?}\n{}", output());

    send_signal(up_pid, "TERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = guard.child.as_mut().unwrap().try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            panic!(
                "availdb up did not exit within 30 s of SIGTERM\n{}",
                output()
            );
        }
        tokio::time::sleep(POLL).await;
    };
    guard.child = None;
    assert!(
        status.success(),
        "availdb up exited with {status}\n{}",
        output()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<u32> = nodes.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            panic!(
                "node processes {left:?} still run after availdb up exited\n{}",
                output()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Issue 9 cause 8: one transaction larger than a wire frame (64 MiB) was
/// acknowledged and then stopped replication for good ("frame of … bytes
/// exceeds the limit"), leaving the group without a failover target. A
/// transaction is now a run of bounded records: the secondary stays
/// SYNCHRONIZED, redoes it whole, and is page-identical to the primary.
#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_larger_than_a_wire_frame_replicates_and_keeps_the_secondary_synchronized() {
    let group = Group::start(2).await;
    let c = group.primary().client(APP).await;
    run(
        &group,
        &c,
        "CREATE TABLE big(id INTEGER PRIMARY KEY, b BLOB NOT NULL)",
    )
    .await;
    // 72 MiB in one transaction.
    let sql = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 72) \
               INSERT INTO big SELECT i, randomblob(1048576) FROM n";
    match tokio::time::timeout(Duration::from_secs(120), c.batch_execute(sql)).await {
        Ok(Ok(())) => {}
        other => panic!("{sql}: {other:?}\n{}", group.logs()),
    }
    group.wait_synchronized(&[1], CATCH_UP_TIMEOUT).await;
    group
        .assert_page_identical("after a 72 MiB transaction")
        .await;
    let s = group.nodes[1].client(APP).await;
    let rows = query_text(&s, "SELECT count(*), sum(length(b)) FROM big")
        .await
        .unwrap_or_else(|e| panic!("count on r2: {}", error_text(&e)));
    assert_eq!(
        rows,
        vec![vec![
            Some("72".to_string()),
            Some((72 * 1048576).to_string())
        ]],
        "r2 holds the whole transaction"
    );
}
