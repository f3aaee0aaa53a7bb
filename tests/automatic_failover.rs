//! Black-box tests of automatic and planned failover under the quorum
//! cluster manager: real `availdb server` processes on loopback form group
//! `ag1` (r1 primary, r2 and r3 SYNCHRONOUS_COMMIT secondaries, FAILOVER_MODE
//! = AUTOMATIC unless a test says otherwise, database `app`); the group is
//! under the nodes' embedded Raft cluster (the default CLUSTER_TYPE), so the
//! primary holds a lease (`availdb::ag::clustered::LEASE`) that it renews
//! through the cluster, and the cluster leader promotes a synchronized
//! secondary once the lease plus a margin ran out.
//!
//! Each test is named after the rule it guards:
//!
//! * safety rule 1 (RPO 0): a kill -9 of the primary under concurrent
//!   writers loses no acknowledged insert, and the old primary rejoins as a
//!   page-identical secondary; killed mid-way through shipping a large
//!   transaction, it leaves that transaction whole or absent on every
//!   survivor;
//! * safety rule 2 (one writer): a primary paused past its lease accepts no
//!   write once another replica was named, and nothing it was given after
//!   that point ever appears;
//! * planned failover (`ALTER AVAILABILITY GROUP ag1 FAILOVER`) moves the
//!   primary without loss, and is refused while the target is not
//!   SYNCHRONIZED;
//! * twenty consecutive failovers (kill -9, SIGSTOP, planned, in turn) keep
//!   a bank's total and every acknowledged commit;
//! * a read-scale group (CLUSTER_TYPE = NONE) never fails over by itself;
//! * a failover needs a majority of the cluster;
//! * a failover promotes only a replica whose node the cluster leader
//!   hears from, never a synchronized one that went down with the primary.
//!
//! Clients find the primary as applications do: a multi-host connection
//! string with `target_session_attrs=read-write` (`common::cluster`), and
//! reconnect after every error. Writers never retry an id: an id whose
//! statement failed is "in doubt" (it may or may not be there), an id that
//! was acknowledged must be on every replica exactly once. Every wait is
//! bounded; a failure quotes the nodes' logs.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::KeepLogsOnPanic;
use common::cluster::{
    acked_ids, attempted_ids, check_ids, counts, failover_ready, local_role, logs_of,
    named_primary, planned_failover, rows_on, summary, try_write, wait_failover_ready,
    wait_new_primary, wait_secondary_of, ReadWrite, Work, WriterOptions, WriterReport, Writers,
    FAILOVER_TIMEOUT, LEASE, MARGIN, RENEW_EVERY,
};
use common::group::{
    error_text, group_row, name, Group, GroupSpec, APP, CATCH_UP_TIMEOUT, GROUP, STATEMENT_TIMEOUT,
};
use common::{free_port, TestServer, DEFAULT_DB};
use tokio_postgres::Client;

const R1: usize = 0;
const R2: usize = 1;
const R3: usize = 2;
const ALL: [usize; 3] = [R1, R2, R3];

/// The writers' table: `id` is deliberately not a key, so an insert that
/// landed twice would show.
const CREATE_T: &str =
    "CREATE TABLE t(seq INTEGER PRIMARY KEY, id INTEGER NOT NULL, w INTEGER NOT NULL, pad BLOB)";

/// Bound on writers finishing their ids through a failover.
const WRITERS_TIMEOUT: Duration = Duration::from_secs(180);

/// A 3-node group, sync + AUTOMATIC, under the cluster (CLUSTER_TYPE
/// default), with `spec`'s other choices.
async fn automatic_group(spec: GroupSpec) -> Group {
    Group::start_with(GroupSpec {
        automatic: true,
        ..spec
    })
    .await
}

/// Runs one statement on node `i`'s database `db` (bounded), panicking
/// with the group's logs on error.
async fn run_on(group: &Group, i: usize, db: &str, sql: &str) {
    let client = group.nodes[i].client(db).await;
    run(group, &client, sql).await;
}

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

/// One autocommit INSERT of `id` into `t` per statement.
fn insert_work() -> Work {
    Arc::new(|id| {
        format!(
            "INSERT INTO t(id, w, pad) VALUES ({id}, {}, randomblob(200))",
            id / 1_000_000
        )
    })
}

/// Two writers of `per_task` inserts each into `t`, ids 1.. and 1000001..
fn insert_writers(rw: &ReadWrite, per_task: usize) -> Writers {
    Writers::start(
        rw,
        &WriterOptions {
            tasks: 2,
            first: 1,
            stride: 1_000_000,
            per_task,
            pace: Duration::from_millis(5),
            reconnect_within: Duration::from_secs(60),
        },
        insert_work(),
    )
}

/// Asserts that node `i` holds every acknowledged id of `reports` in `t`
/// exactly once, and nothing that was never sent.
async fn assert_t_on(group: &Group, i: usize, reports: &[WriterReport], what: &str) {
    let found = counts(&group.nodes[i], APP, "t", "id").await;
    if let Err(e) = check_ids(&found, &acked_ids(reports), &attempted_ids(reports)) {
        panic!(
            "{what}: {}'s t: {e}\nwriters: {}\n{}",
            name(i),
            summary(reports),
            group.logs()
        );
    }
}

/// Asserts that every writer sent all its ids (none gave up).
fn assert_finished(group: &Group, reports: &[WriterReport], per_task: usize, what: &str) {
    for r in reports {
        assert!(
            r.gave_up.is_none() && r.attempted.len() == per_task,
            "{what}: a writer did not send all {per_task} ids: {}\n{}",
            summary(reports),
            group.logs()
        );
    }
}

/// Safety rule 1: every acknowledged commit survives the loss of the
/// primary. Two writers insert 300 unique ids each through a multi-host
/// read-write connection; the primary is killed with SIGKILL mid-load; the
/// cluster promotes a synchronized secondary; the writers finish there.
/// Every acknowledged id is on the new primary and on the other survivor
/// exactly once; the old primary, restarted, rejoins as a page-identical
/// secondary holding the same rows.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_the_primary_fails_over_and_loses_no_acknowledged_insert() {
    let mut group = automatic_group(GroupSpec::default()).await;
    let _logs = KeepLogsOnPanic::new(
        &group,
        "kill_9_of_the_primary_fails_over_and_loses_no_acknowledged_insert",
    );
    run_on(&group, R1, APP, CREATE_T).await;
    let rw = ReadWrite::multi_host(&group, APP);
    let per_task = 300;
    let writers = insert_writers(&rw, per_task);
    writers
        .wait_acked(100, Duration::from_secs(60), || group.logs())
        .await;
    let acked_before_kill = writers.acked();
    group.nodes[R1].kill9();
    let killed = Instant::now();
    let survivors = [R2, R3];
    let (new, epoch, _) = wait_new_primary(&group, &survivors, &[R1], 1, FAILOVER_TIMEOUT).await;
    let named_after = killed.elapsed();
    let reports = writers.join(WRITERS_TIMEOUT).await;
    assert_finished(&group, &reports, per_task, "after the kill");
    let acked = acked_ids(&reports);
    assert!(
        acked.len() > acked_before_kill,
        "no insert was acknowledged after the kill ({} before it): {}\n{}",
        acked_before_kill,
        summary(&reports),
        logs_of(&group, &survivors)
    );
    eprintln!(
        "{} named primary at epoch {epoch} {named_after:?} after the kill; {}",
        name(new),
        summary(&reports)
    );
    let other = if new == R2 { R3 } else { R2 };
    group
        .wait_caught_up_to(new, &[other], CATCH_UP_TIMEOUT)
        .await;
    assert_t_on(&group, new, &reports, "on the new primary").await;
    assert_t_on(&group, other, &reports, "on the surviving secondary").await;

    group.nodes[R1].restart().await;
    wait_secondary_of(&group, &ALL, R1, new, epoch).await;
    group
        .assert_page_identical_to(new, &[R1, other], "after the old primary rejoined")
        .await;
    assert_t_on(&group, R1, &reports, "on the old primary after it rejoined").await;
}

/// When [`kill_9_during_a_large_transaction`] kills the primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KillAt {
    /// Once r2 has hardened 20 MB of the transaction's parts, before its
    /// commit could be acknowledged.
    MidShipping,
    /// As soon as the transaction's commit is acknowledged: hardened on the
    /// synchronous secondaries, their redo possibly still behind.
    JustAcknowledged,
}

/// Counts of `big` that readers on the secondaries saw while a large
/// transaction was shipped and the group failed over: polls every 50 ms
/// (reconnecting after errors) until `stop`.
fn watch_big(
    group: &Group,
    nodes: &[usize],
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<BTreeSet<(usize, u64)>> {
    let conns: Vec<(usize, String)> = nodes
        .iter()
        .map(|&i| (i, group.nodes[i].conn_string(APP)))
        .collect();
    tokio::spawn(async move {
        let mut seen = BTreeSet::new();
        let mut clients: Vec<Option<Client>> = conns.iter().map(|_| None).collect();
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            for (k, (i, conn)) in conns.iter().enumerate() {
                if clients[k].is_none() {
                    let attempt = tokio::time::timeout(
                        Duration::from_secs(2),
                        tokio_postgres::connect(conn, tokio_postgres::NoTls),
                    );
                    if let Ok(Ok((client, connection))) = attempt.await {
                        tokio::spawn(connection);
                        clients[k] = Some(client);
                    }
                }
                let Some(client) = &clients[k] else { continue };
                let count = tokio::time::timeout(
                    Duration::from_secs(5),
                    client.simple_query("SELECT count(*) FROM big"),
                )
                .await;
                match count {
                    Ok(Ok(messages)) => {
                        if let Some(n) = common::group::rows_of(messages)
                            .first()
                            .and_then(|r| r[0].as_deref())
                            .and_then(|v| v.parse().ok())
                        {
                            seen.insert((*i, n));
                        }
                    }
                    _ => clients[k] = None,
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        seen
    })
}

/// The body of the kill-during-a-large-transaction tests: 20 small commits,
/// then one transaction of ≈ 110 MB (about a hundred parts) on r1, killed
/// with SIGKILL at `at`. Readers on r2 and r3 poll the table throughout and
/// never see part of the transaction; the cluster promotes a secondary;
/// every acknowledged commit is there, and of the large transaction either
/// all rows or none (all if its commit was acknowledged), on both
/// survivors alike; the old primary, restarted, rejoins page-identical.
async fn kill_9_during_a_large_transaction(test: &str, at: KillAt) {
    const ROWS: u64 = 100_000;
    let mut group = automatic_group(GroupSpec::default()).await;
    let _logs = KeepLogsOnPanic::new(&group, test);
    run_on(&group, R1, APP, CREATE_T).await;
    run_on(
        &group,
        R1,
        APP,
        "CREATE TABLE big(id INTEGER PRIMARY KEY, v TEXT NOT NULL)",
    )
    .await;
    for id in 1..=20 {
        let sql = format!("INSERT INTO t(id, w, pad) VALUES ({id}, 0, NULL)");
        run_on(&group, R1, APP, &sql).await;
    }
    group.wait_caught_up(&[R2, R3], CATCH_UP_TIMEOUT).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = watch_big(&group, &[R2, R3], stop.clone());
    let (_, start) = common::group::log_bounds(&group.nodes[R2], APP).await;
    let loader = group.nodes[R1].client(APP).await;
    let load = tokio::spawn(async move {
        let sql = format!(
            "INSERT INTO big SELECT value, hex(randomblob(500)) FROM generate_series(1, {ROWS})"
        );
        tokio::time::timeout(Duration::from_secs(300), loader.batch_execute(&sql)).await
    });
    let acknowledged = match at {
        KillAt::MidShipping => {
            // Kill once a secondary has hardened some of the parts.
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let (_, end) = common::group::log_bounds(&group.nodes[R2], APP).await;
                if end > start + (20 << 20) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "r2 received less than 20 MB of the large transaction in 120 s\n{}",
                    group.logs()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            group.nodes[R1].kill9();
            matches!(load.await, Ok(Ok(Ok(()))))
        }
        KillAt::JustAcknowledged => {
            match load.await {
                Ok(Ok(Ok(()))) => {}
                other => panic!("the large transaction: {other:?}\n{}", group.logs()),
            }
            group.nodes[R1].kill9();
            true
        }
    };
    let redone_at_kill: Vec<Option<(u64, u64)>> = vec![
        common::cluster::local_lsns(&group, R2).await,
        common::cluster::local_lsns(&group, R3).await,
    ];
    let survivors = [R2, R3];
    let (new, epoch, _) = wait_new_primary(&group, &survivors, &[R1], 1, FAILOVER_TIMEOUT).await;
    let other = if new == R2 { R3 } else { R2 };
    group
        .wait_caught_up_to(new, &[other], CATCH_UP_TIMEOUT)
        .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let watched = tokio::time::timeout(Duration::from_secs(30), watcher)
        .await
        .expect("the readers stopped within 30 s")
        .expect("readers");
    let partial: Vec<&(usize, u64)> = watched
        .iter()
        .filter(|(_, n)| *n != 0 && *n != ROWS)
        .collect();
    assert!(
        partial.is_empty(),
        "readers on the secondaries saw part of the large transaction (node, rows): {partial:?}\n{}",
        group.logs()
    );
    assert!(
        watched.iter().any(|(i, _)| *i == R2) && watched.iter().any(|(i, _)| *i == R3),
        "the readers never read both secondaries: {watched:?}"
    );
    let mut seen = Vec::new();
    for i in survivors {
        let small = rows_on(&group, i, APP, "SELECT count(*) FROM t").await;
        assert_eq!(
            small[0][0].as_deref(),
            Some("20"),
            "{} lost acknowledged commits\n{}",
            name(i),
            group.logs()
        );
        let big = rows_on(&group, i, APP, "SELECT count(*) FROM big").await;
        let n: u64 = big[0][0].as_deref().unwrap_or("0").parse().unwrap();
        assert!(
            n == 0 || n == ROWS,
            "{} holds {n} of the large transaction's {ROWS} rows: part of a transaction\n{}",
            name(i),
            group.logs()
        );
        assert!(
            !acknowledged || n == ROWS,
            "the large transaction was acknowledged, {} lacks it\n{}",
            name(i),
            group.logs()
        );
        let check = rows_on(&group, i, APP, "PRAGMA integrity_check").await;
        assert_eq!(check[0][0].as_deref(), Some("ok"), "{}", name(i));
        seen.push(n);
    }
    assert_eq!(
        seen[0], seen[1],
        "the survivors disagree on the large transaction"
    );
    eprintln!(
        "{at:?}: (hardened, redone) of r2 and r3 at the kill {redone_at_kill:?}; readers saw {watched:?}; \
         {} named primary at epoch {epoch}; the large transaction (acknowledged: {acknowledged}) is {} there",
        name(new),
        if seen[0] == ROWS { "whole" } else { "absent" }
    );

    group.nodes[R1].restart().await;
    wait_secondary_of(&group, &ALL, R1, new, epoch).await;
    group
        .assert_page_identical_to(new, &[R1, other], "after the old primary rejoined")
        .await;
}

/// Safety rules 1 and 4 across a kill in the middle of a large
/// transaction (issue 16): while the primary ships one transaction of
/// ≈ 110 MB to its synchronous secondaries, it is killed with SIGKILL; the
/// transaction is whole or absent everywhere, never part of it, even to
/// readers on the secondaries meanwhile
/// ([`kill_9_during_a_large_transaction`]). The 1 GB figure of issue 16 is
/// measured by `scripts/bench memory`.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_the_primary_mid_way_through_shipping_a_large_transaction_keeps_it_whole_or_absent(
) {
    kill_9_during_a_large_transaction(
        "kill_9_of_the_primary_mid_way_through_shipping_a_large_transaction_keeps_it_whole_or_absent",
        KillAt::MidShipping,
    )
    .await;
}

/// Safety rules 1 and 4 right after a large transaction's acknowledgement
/// (issue 16): the primary is killed with SIGKILL the moment its ≈ 110 MB
/// commit is acknowledged, while the secondaries may still be redoing its
/// parts; the new primary holds it whole, readers on the secondaries never
/// saw part of it, and the replicas end page-identical
/// ([`kill_9_during_a_large_transaction`]).
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_the_primary_right_after_a_large_transaction_is_acknowledged_keeps_it_whole() {
    kill_9_during_a_large_transaction(
        "kill_9_of_the_primary_right_after_a_large_transaction_is_acknowledged_keeps_it_whole",
        KillAt::JustAcknowledged,
    )
    .await;
}

/// Safety rules 1 and 2 across a network partition: the primary is cut off
/// from both secondaries (cluster and replication traffic alike, through
/// the test proxy) while two writers insert through a multi-host read-write
/// connection. The majority names a new primary; the primary left in the
/// minority stops taking writes (its lease is not renewed: RESOLVING, then
/// read-only); the writers finish on the new primary. After the partition
/// heals, the old primary rejoins as a secondary of the new one and
/// converges page-identically; every acknowledged insert is on every
/// replica exactly once, and nothing the minority was sent after the cut
/// appears anywhere.
#[tokio::test(flavor = "multi_thread")]
async fn a_primary_cut_off_from_the_majority_stops_writing_and_rejoins_after_the_heal() {
    let group = Group::start_partitionable(GroupSpec {
        automatic: true,
        ..GroupSpec::default()
    })
    .await;
    let _logs = KeepLogsOnPanic::new(
        &group,
        "a_primary_cut_off_from_the_majority_stops_writing_and_rejoins_after_the_heal",
    );
    let proxy = group.proxy.as_ref().expect("a partitionable group");
    run_on(&group, R1, APP, CREATE_T).await;
    let rw = ReadWrite::multi_host(&group, APP);
    let per_task = 300;
    let writers = insert_writers(&rw, per_task);
    writers
        .wait_acked(100, Duration::from_secs(60), || group.logs())
        .await;
    // A session on r1 opened before the cut, used after it.
    let minority = group.nodes[R1].client(APP).await;

    proxy.partition(&[R1], &[R2, R3]);
    let cut = Instant::now();
    let majority = [R2, R3];
    let (new, epoch, _) = wait_new_primary(&group, &majority, &[R1], 1, FAILOVER_TIMEOUT).await;
    eprintln!(
        "{} named primary at epoch {epoch} {:?} after the cut",
        name(new),
        cut.elapsed()
    );

    // The minority side writes nothing from now on.
    let mut refused = Vec::new();
    for id in [-1i64, -2, -3] {
        let sql = format!("INSERT INTO t(id, w, pad) VALUES ({id}, 9, NULL)");
        let outcome = try_write(&minority, &sql).await;
        assert!(
            outcome.is_some(),
            "r1, cut off from the majority after {} became primary, acknowledged {sql}\n{}",
            name(new),
            group.logs()
        );
        refused.extend(outcome);
    }
    eprintln!("writes on the minority side: {refused:?}");

    let reports = writers.join(WRITERS_TIMEOUT).await;
    assert_finished(&group, &reports, per_task, "through the partition");
    let other = if new == R2 { R3 } else { R2 };

    proxy.heal();
    wait_secondary_of(&group, &ALL, R1, new, epoch).await;
    group
        .wait_caught_up_to(new, &[R1, other], CATCH_UP_TIMEOUT)
        .await;
    group
        .assert_page_identical_to(new, &[R1, other], "after the partition healed")
        .await;
    for i in ALL {
        assert_t_on(&group, i, &reports, "after the partition healed").await;
        let stale = rows_on(&group, i, APP, "SELECT count(*) FROM t WHERE id < 0").await;
        assert_eq!(
            stale,
            vec![vec![Some("0".to_string())]],
            "{}: a write sent to the minority side landed\n{}",
            name(i),
            group.logs()
        );
    }
}

/// Safety rule 2: one writer. The primary is frozen (SIGSTOP) with an open
/// write transaction whose COMMIT and another session's INSERT are sent
/// while it is frozen; it stays frozen past its lease and margin, until
/// another replica is primary and has taken writes. Once it runs again it
/// refuses writes (25006: RESOLVING, then read-only), the two pending
/// statements fail, and none of what it was given after the new primary was
/// named appears on any replica, even after it rejoined.
#[tokio::test(flavor = "multi_thread")]
async fn a_paused_primary_accepts_no_write_after_a_new_primary_is_named() {
    let group = automatic_group(GroupSpec::default()).await;
    let _logs = KeepLogsOnPanic::new(
        &group,
        "a_paused_primary_accepts_no_write_after_a_new_primary_is_named",
    );
    run_on(
        &group,
        R1,
        APP,
        "CREATE TABLE p(id INTEGER PRIMARY KEY, v TEXT NOT NULL)",
    )
    .await;
    let before: BTreeSet<i64> = (1..=10).collect();
    for id in &before {
        run_on(
            &group,
            R1,
            APP,
            &format!("INSERT INTO p VALUES ({id}, 'before')"),
        )
        .await;
    }
    // Session A holds an open write transaction; session B is idle.
    let a = group.nodes[R1].client(APP).await;
    run(
        &group,
        &a,
        "BEGIN; INSERT INTO p VALUES (100, 'open at SIGSTOP')",
    )
    .await;
    let b = group.nodes[R1].client(APP).await;

    group.nodes[R1].pause();
    let paused = Instant::now();
    let pending_commit = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(90), a.batch_execute("COMMIT")).await
    });
    let pending_insert = tokio::spawn(async move {
        tokio::time::timeout(
            Duration::from_secs(90),
            b.batch_execute("INSERT INTO p VALUES (101, 'sent while stopped')"),
        )
        .await
    });

    let others = [R2, R3];
    let (new, epoch, _) = wait_new_primary(&group, &others, &[R1], 1, FAILOVER_TIMEOUT).await;
    let named_after = paused.elapsed();
    // The leader waits for the lease (counted from the last renewal, at most
    // one renewal period before the pause) plus its margin.
    assert!(
        named_after >= LEASE + MARGIN - RENEW_EVERY,
        "{} was named primary {named_after:?} after the old primary stopped, before its \
         {LEASE:?} lease (renewed every {RENEW_EVERY:?}) and the {MARGIN:?} margin could have \
         run out\n{}",
        name(new),
        logs_of(&group, &others)
    );
    let after: BTreeSet<i64> = (200..=209).collect();
    for id in &after {
        run_on(
            &group,
            new,
            APP,
            &format!("INSERT INTO p VALUES ({id}, 'on the new primary')"),
        )
        .await;
    }
    // Frozen for at least 3 s in all (more than twice lease + margin).
    let frozen_for = Duration::from_secs(3);
    if let Some(left) = frozen_for.checked_sub(paused.elapsed()) {
        tokio::time::sleep(left).await;
    }
    group.nodes[R1].resume();

    // The old primary refuses every write from the moment it runs again.
    let refused: BTreeSet<i64> = (300..=304).collect();
    let c = group.nodes[R1].client(APP).await;
    for id in &refused {
        let sql = format!("INSERT INTO p VALUES ({id}, 'after SIGCONT')");
        match try_write(&c, &sql).await {
            None => panic!(
                "{sql} on the old primary succeeded after {} was named primary\n{}",
                name(new),
                group.logs()
            ),
            Some(code) => assert!(
                code.starts_with("25006"),
                "{sql} on the old primary: expected SQLSTATE 25006 (RESOLVING or read-only), \
                 got {code}\n{}",
                group.logs()
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (what, pending) in [
        ("COMMIT of the transaction open at SIGSTOP", pending_commit),
        ("INSERT sent while stopped", pending_insert),
    ] {
        match pending.await.expect("pending statement task") {
            Ok(Ok(())) => panic!(
                "{what} was acknowledged by the old primary after {} was named primary\n{}",
                name(new),
                group.logs()
            ),
            Ok(Err(e)) => eprintln!("{what}: failed as it must: {}", error_text(&e)),
            Err(_) => panic!("{what}: no answer within 90 s\n{}", group.logs()),
        }
    }

    wait_secondary_of(&group, &ALL, R1, new, epoch).await;
    let other = if new == R2 { R3 } else { R2 };
    group
        .assert_page_identical_to(new, &[R1, other], "after the paused primary rejoined")
        .await;
    let expected: BTreeSet<i64> = before.union(&after).copied().collect();
    for i in ALL {
        let found = counts(&group.nodes[i], APP, "p", "id").await;
        let ids: BTreeSet<i64> = found.keys().copied().collect();
        assert_eq!(
            ids,
            expected,
            "{} holds the wrong rows of p (100 and 101 were given to the paused primary, \
             300..=304 to it after SIGCONT: none may appear)\n{}",
            name(i),
            group.logs()
        );
    }
}

/// Planned failover: `ALTER AVAILABILITY GROUP ag1 FAILOVER` on a
/// synchronized secondary while two writers insert through a multi-host
/// read-write connection. The target becomes primary at the next epoch, the
/// old primary a secondary, the writers finish on the new primary, and every
/// acknowledged id is on every replica exactly once, page-identical.
#[tokio::test(flavor = "multi_thread")]
async fn planned_failover_moves_the_primary_without_loss() {
    let group = automatic_group(GroupSpec::default()).await;
    let _logs = KeepLogsOnPanic::new(&group, "planned_failover_moves_the_primary_without_loss");
    run_on(&group, R1, APP, CREATE_T).await;
    match planned_failover(&group, R1).await {
        Err((code, message)) => assert!(
            code == "55000" && message.contains("already the primary"),
            "FAILOVER on the primary: expected 55000 \"already the primary\", got {code} {message}"
        ),
        Ok(_) => panic!("FAILOVER on the primary itself succeeded\n{}", group.logs()),
    }
    wait_failover_ready(&group, R1, &[R2, R3]).await;
    let rw = ReadWrite::multi_host(&group, APP);
    let per_task = 300;
    let writers = insert_writers(&rw, per_task);
    writers
        .wait_acked(100, Duration::from_secs(60), || group.logs())
        .await;
    let took = planned_failover(&group, R2)
        .await
        .unwrap_or_else(|(code, message)| {
            panic!(
                "FAILOVER on synchronized r2: {code} {message}\n{}",
                group.logs()
            )
        });
    let row = group_row(&group.nodes[R2]).await.expect("r2's group row");
    assert_eq!(
        (row.primary_replica.as_str(), row.epoch),
        ("r2", 2),
        "after FAILOVER on r2 (it took {took:?}), r2's definition\n{}",
        group.logs()
    );
    assert_eq!(
        local_role(&group, R2).await.as_deref(),
        Some("PRIMARY"),
        "r2's role after FAILOVER returned\n{}",
        group.logs()
    );
    wait_secondary_of(&group, &ALL, R1, R2, 2).await;
    let reports = writers.join(WRITERS_TIMEOUT).await;
    assert_finished(&group, &reports, per_task, "after the planned failover");
    eprintln!("FAILOVER took {took:?}; {}", summary(&reports));
    group
        .assert_page_identical_to(R2, &[R1, R3], "after the planned failover")
        .await;
    for i in ALL {
        assert_t_on(&group, i, &reports, "after the planned failover").await;
    }
}

/// Planned failover is refused (55000, "not SYNCHRONIZED") while the target
/// may lack acknowledged commits: an ASYNCHRONOUS_COMMIT replica, and a
/// synchronous one whose data movement is suspended on the primary. The
/// primary stays primary and keeps taking writes. Once resumed and back in
/// the synchronized set, the same target's FAILOVER succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn planned_failover_is_refused_while_the_target_is_not_synchronized() {
    let group = automatic_group(GroupSpec {
        asynchronous_replicas: vec![R3],
        ..GroupSpec::default()
    })
    .await;
    let _logs = KeepLogsOnPanic::new(
        &group,
        "planned_failover_is_refused_while_the_target_is_not_synchronized",
    );
    run_on(
        &group,
        R1,
        APP,
        "CREATE TABLE q(id INTEGER PRIMARY KEY); INSERT INTO q VALUES (1)",
    )
    .await;
    let not_synchronized = |who: &str, result: Result<Duration, (String, String)>| {
        match result {
        Err((code, message)) => assert!(
            code == "55000" && message.contains("not SYNCHRONIZED"),
            "FAILOVER on {who}: expected 55000 with \"not SYNCHRONIZED\", got {code}: {message}\n{}",
            group.logs()
        ),
        Ok(_) => panic!("FAILOVER on {who} succeeded\n{}", group.logs()),
    }
    };
    not_synchronized(
        "r3 (ASYNCHRONOUS_COMMIT)",
        planned_failover(&group, R3).await,
    );

    run_on(
        &group,
        R1,
        DEFAULT_DB,
        &format!("ALTER DATABASE {APP} SET HADR SUSPEND"),
    )
    .await;
    // The primary stops waiting for r2 (and r3) as soon as they left the
    // synchronized set, which must happen in the cluster first.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let view = group.view_on(R1).await;
        if view
            .iter()
            .any(|s| s.replica == "r2" && s.sync_state != "SYNCHRONIZED")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "r2 still SYNCHRONIZED on r1 30 s after SUSPEND: {view:#?}\n{}",
            group.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Acknowledged without r2: r2 must not become primary now.
    run_on(&group, R1, APP, "INSERT INTO q VALUES (2)").await;
    // Where the view tells, give r2's copy of the cluster's state a moment
    // to show it left the set (not asserted: FAILOVER is the check).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut r2_ready = failover_ready(&group, R2).await;
    while r2_ready
        .as_ref()
        .is_some_and(|m| m.get("r2") == Some(&true))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        r2_ready = failover_ready(&group, R2).await;
    }
    let suspended = planned_failover(&group, R2).await;
    if let Ok(took) = suspended {
        let rows = rows_on(&group, R2, APP, "SELECT id FROM q ORDER BY id").await;
        panic!(
            "FAILOVER on r2 succeeded ({took:?}) although r2's data movement is suspended and \
             row 2 was acknowledged without it; r2 now holds q = {rows:?}; r2's \
             is_failover_ready before FAILOVER: {r2_ready:?}\n{}",
            group.logs()
        );
    }
    not_synchronized("r2 (suspended)", suspended);
    for i in ALL {
        let row = group_row(&group.nodes[i]).await.expect("group row");
        assert_eq!(
            (row.primary_replica.as_str(), row.epoch),
            ("r1", 1),
            "{}'s definition after two refused failovers\n{}",
            name(i),
            group.logs()
        );
    }

    run_on(
        &group,
        R1,
        DEFAULT_DB,
        &format!("ALTER DATABASE {APP} SET HADR RESUME"),
    )
    .await;
    wait_failover_ready(&group, R1, &[R2]).await;
    // r2's copy of the cluster's state may be a heartbeat behind.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match planned_failover(&group, R2).await {
            Ok(_) => break,
            Err((code, message))
                if message.contains("not SYNCHRONIZED") && Instant::now() < deadline =>
            {
                eprintln!("FAILOVER on r2 right after RESUME: {code} {message}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err((code, message)) => panic!(
                "FAILOVER on r2 after RESUME: {code} {message}\n{}",
                group.logs()
            ),
        }
    }
    wait_secondary_of(&group, &ALL, R1, R2, 2).await;
    run_on(&group, R2, APP, "INSERT INTO q VALUES (3)").await;
    let rows = rows_on(&group, R2, APP, "SELECT id FROM q ORDER BY id").await;
    assert_eq!(
        rows,
        vec![
            vec![Some("1".to_string())],
            vec![Some("2".to_string())],
            vec![Some("3".to_string())]
        ],
        "q on the new primary (row 2 was acknowledged while r2 was suspended, before RESUME)\n{}",
        group.logs()
    );
}

// ------------------------------------------------------- twenty failovers

/// Accounts of the bank and what each starts with.
const ACCOUNTS: i64 = 10;
const OPENING: i64 = 1000;

/// One transfer per id: from and to accounts and the amount follow from
/// the id; the ledger row records it under the id.
fn transfer_work() -> Work {
    Arc::new(|id| {
        let h = (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let from = (h % ACCOUNTS as u64) as i64 + 1;
        let to = ((h >> 16) % (ACCOUNTS as u64 - 1)) as i64 + 1;
        let to = if to >= from { to + 1 } else { to };
        let amount = ((h >> 32) % 50) as i64 + 1;
        format!(
            "BEGIN; \
             UPDATE accounts SET balance = balance - {amount} WHERE id = {from}; \
             UPDATE accounts SET balance = balance + {amount} WHERE id = {to}; \
             INSERT INTO ledger(id, src, dst, amount) VALUES ({id}, {from}, {to}, {amount}); \
             COMMIT"
        )
    })
}

/// Checks the bank on the primary (through `rw`): the total is unchanged
/// and every account's balance is its opening balance plus what the ledger
/// says it received minus what it sent (so no transfer was half applied).
async fn check_bank(rw: &ReadWrite, group: &Group, live: &[usize], what: &str) {
    let sql = format!(
        "SELECT (SELECT sum(balance) FROM accounts), \
                (SELECT count(*) FROM accounts a WHERE a.balance <> {OPENING} \
                   + (SELECT coalesce(sum(amount), 0) FROM ledger WHERE dst = a.id) \
                   - (SELECT coalesce(sum(amount), 0) FROM ledger WHERE src = a.id)), \
                (SELECT count(*) FROM ledger)"
    );
    let rows = rw
        .query_retrying(&sql, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}\n{}", logs_of(group, live)));
    let row = &rows[0];
    let total = row[0].clone().unwrap_or_default();
    let inconsistent = row[1].clone().unwrap_or_default();
    assert_eq!(
        (total.as_str(), inconsistent.as_str()),
        ((ACCOUNTS * OPENING).to_string().as_str(), "0"),
        "{what}: (total, accounts whose balance disagrees with the ledger), {} ledger rows\n{}",
        row[2].clone().unwrap_or_default(),
        logs_of(group, live)
    );
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// SIGKILL of the primary, then a restart of it.
    Kill,
    /// SIGSTOP of the primary until another is named, then SIGCONT.
    Pause,
    /// `FAILOVER` on a synchronized secondary.
    Planned,
    /// The primary cut off from both secondaries until another is named,
    /// then healed.
    Partition,
}

/// The twenty consecutive failovers: kill -9 + restart, SIGSTOP +
/// SIGCONT, a partition of the primary from the majority + heal, and
/// planned failover in turn, while two clients make bank
/// transfers (BEGIN; two UPDATEs; a ledger INSERT; COMMIT) and one inserts
/// unique ids, all through read-write multi-host connections that
/// reconnect on error. After each failover the bank's total is unchanged and
/// every balance agrees with the ledger, on the new primary; at the end
/// every acknowledged transfer and insert is on every replica exactly once,
/// and the replicas are page-identical. About a minute with a debug build
/// here; `AVAILDB_FAILOVER_ROUNDS=n` runs n rounds instead of 20.
#[tokio::test(flavor = "multi_thread")]
async fn twenty_failovers_keep_the_bank_total_and_every_acknowledged_insert() {
    let rounds: usize = std::env::var("AVAILDB_FAILOVER_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut group = Group::start_partitionable(GroupSpec {
        automatic: true,
        ..GroupSpec::default()
    })
    .await;
    let _logs = KeepLogsOnPanic::new(
        &group,
        "twenty_failovers_keep_the_bank_total_and_every_acknowledged_insert",
    );
    let values: Vec<String> = (1..=ACCOUNTS)
        .map(|id| format!("({id}, {OPENING})"))
        .collect();
    run_on(
        &group,
        R1,
        APP,
        &format!(
            "CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL); \
             INSERT INTO accounts VALUES {}; \
             CREATE TABLE ledger(id INTEGER PRIMARY KEY, src INTEGER NOT NULL, \
               dst INTEGER NOT NULL, amount INTEGER NOT NULL); \
             {CREATE_T}",
            values.join(", ")
        ),
    )
    .await;
    // Paused nodes are part of the rounds: connect host by host, each host
    // bounded (libpq's connect_timeout semantics).
    let rw = ReadWrite::each_host(&group, APP);
    let options = WriterOptions {
        tasks: 2,
        first: 1,
        stride: 10_000_000,
        per_task: 5_000_000,
        pace: Duration::from_millis(10),
        reconnect_within: Duration::from_secs(90),
    };
    let transfers = Writers::start(&rw, &options, transfer_work());
    let inserts = Writers::start(
        &rw,
        &WriterOptions {
            tasks: 1,
            first: 1,
            ..options.clone()
        },
        insert_work(),
    );
    transfers
        .wait_acked(20, Duration::from_secs(60), || group.logs())
        .await;

    let started = Instant::now();
    let mut primary = R1;
    let mut epoch = 1;
    let mut log = Vec::new();
    for round in 0..rounds {
        let fault = [Fault::Kill, Fault::Pause, Fault::Partition, Fault::Planned][round % 4];
        let secondaries: Vec<usize> = ALL.into_iter().filter(|&i| i != primary).collect();
        wait_failover_ready(&group, primary, &secondaries).await;
        let acked_before = transfers.acked();
        let t0 = Instant::now();
        let (new, new_epoch) = match fault {
            Fault::Kill => {
                group.nodes[primary].kill9();
                let (new, e, _) =
                    wait_new_primary(&group, &secondaries, &[primary], epoch, FAILOVER_TIMEOUT)
                        .await;
                group.nodes[primary].restart().await;
                (new, e)
            }
            Fault::Pause => {
                group.nodes[primary].pause();
                let named =
                    wait_new_primary(&group, &secondaries, &[primary], epoch, FAILOVER_TIMEOUT)
                        .await;
                group.nodes[primary].resume();
                (named.0, named.1)
            }
            Fault::Partition => {
                let proxy = group.proxy.as_ref().expect("a partitionable group");
                proxy.partition(&[primary], &secondaries);
                let named =
                    wait_new_primary(&group, &secondaries, &[primary], epoch, FAILOVER_TIMEOUT)
                        .await;
                proxy.heal();
                (named.0, named.1)
            }
            Fault::Planned => {
                let target = secondaries[(round / 4) % secondaries.len()];
                if let Err((code, message)) = planned_failover(&group, target).await {
                    panic!(
                        "round {round}: FAILOVER on {}: {code} {message}\n{}",
                        name(target),
                        group.logs()
                    );
                }
                (target, epoch + 1)
            }
        };
        let switched = t0.elapsed();
        assert_eq!(
            new_epoch,
            epoch + 1,
            "round {round} ({fault:?}): epochs move by one\n{}",
            group.logs()
        );
        wait_secondary_of(&group, &ALL, primary, new, new_epoch).await;
        // The transfers go on, on the new primary.
        transfers
            .wait_acked(acked_before + 5, Duration::from_secs(60), || group.logs())
            .await;
        check_bank(
            &rw,
            &group,
            &ALL,
            &format!("after round {round} ({fault:?} of {})", name(primary)),
        )
        .await;
        log.push(format!(
            "round {round}: {fault:?} {} -> {} (epoch {new_epoch}) in {switched:?}",
            name(primary),
            name(new)
        ));
        primary = new;
        epoch = new_epoch;
    }
    let transfer_reports = transfers.finish().await;
    let insert_reports = inserts.finish().await;
    eprintln!(
        "{rounds} failovers in {:?}:\n{}\ntransfers: {}\ninserts: {}",
        started.elapsed(),
        log.join("\n"),
        summary(&transfer_reports),
        summary(&insert_reports)
    );
    assert_eq!(
        named_primary(&group, &ALL).await,
        Some((primary, epoch)),
        "the group's primary at the end\n{}",
        group.logs()
    );
    check_bank(&rw, &group, &ALL, "at the end").await;
    let secondaries: Vec<usize> = ALL.into_iter().filter(|&i| i != primary).collect();
    group
        .assert_page_identical_to(primary, &secondaries, "after twenty failovers")
        .await;
    for i in ALL {
        let ledger = counts(&group.nodes[i], APP, "ledger", "id").await;
        if let Err(e) = check_ids(
            &ledger,
            &acked_ids(&transfer_reports),
            &attempted_ids(&transfer_reports),
        ) {
            panic!("{}'s ledger: {e}\n{}", name(i), group.logs());
        }
        assert_t_on(&group, i, &insert_reports, "after twenty failovers").await;
    }
    for node in &mut group.nodes {
        assert!(node.is_running(), "a node is down at the end");
    }
}

// ------------------------------------------------ what must not fail over

/// A read-scale group (CLUSTER_TYPE = NONE) is not run by the cluster: when
/// its primary dies nothing is promoted, even with every replica
/// synchronous and AUTOMATIC, for several times the time an automatic
/// failover takes. FORCE_FAILOVER_ALLOW_DATA_LOSS still works.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_scale_group_never_fails_over_automatically() {
    let mut group = automatic_group(GroupSpec {
        cluster_type: Some("NONE"),
        ..GroupSpec::default()
    })
    .await;
    let _logs = KeepLogsOnPanic::new(&group, "a_read_scale_group_never_fails_over_automatically");
    let row = group_row(group.primary()).await.expect("r1's group row");
    assert_eq!(
        row.cluster_type_desc.as_deref(),
        Some("NONE"),
        "cluster type\n{}",
        group.logs()
    );
    run_on(
        &group,
        R1,
        APP,
        "CREATE TABLE n(id INTEGER PRIMARY KEY); INSERT INTO n VALUES (1), (2), (3)",
    )
    .await;
    group.wait_caught_up(&[R2, R3], CATCH_UP_TIMEOUT).await;
    group.nodes[R1].kill9();
    // An automatic failover would take LEASE + MARGIN + a tick (about
    // 1.1 s) plus an election; watch for several times that.
    let watch = Duration::from_secs(5);
    let start = Instant::now();
    while start.elapsed() < watch {
        for i in [R2, R3] {
            let row = group_row(&group.nodes[i]).await.expect("group row");
            let role = local_role(&group, i).await;
            assert!(
                row.primary_replica == "r1"
                    && row.epoch == 1
                    && role.as_deref() == Some("SECONDARY"),
                "{} {:?} after r1 died in a CLUSTER_TYPE = NONE group: its definition names {} at \
                 epoch {}, its role is {role:?}\n{}",
                name(i),
                start.elapsed(),
                row.primary_replica,
                row.epoch,
                logs_of(&group, &[R2, R3])
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let c = group.nodes[R2].client(APP).await;
    let refused = try_write(&c, "INSERT INTO n VALUES (4)").await;
    assert!(
        refused
            .as_deref()
            .is_some_and(|code| code.starts_with("25006")),
        "a write on r2 before FORCE: expected 25006, got {refused:?}"
    );

    group.force_failover(R2).await;
    let row = group_row(&group.nodes[R2]).await.expect("r2's group row");
    assert_eq!(
        (row.primary_replica.as_str(), row.epoch),
        ("r2", 2),
        "r2 after FORCE_FAILOVER_ALLOW_DATA_LOSS\n{}",
        group.logs()
    );
    run_on(&group, R2, APP, "INSERT INTO n VALUES (4)").await;
    let rows = rows_on(&group, R2, APP, "SELECT count(*) FROM n").await;
    assert_eq!(rows, vec![vec![Some("4".to_string())]], "n on r2");
}

/// A failover is a cluster decision and needs a majority: with the primary
/// and one secondary frozen (SIGSTOP), the remaining secondary is never
/// promoted, and FORCE_FAILOVER_ALLOW_DATA_LOSS on it fails with 55000 and
/// a message about the majority. Once the two run again the group takes
/// writes.
#[tokio::test(flavor = "multi_thread")]
async fn failover_decision_needs_a_cluster_majority() {
    let group = automatic_group(GroupSpec::default()).await;
    let _logs = KeepLogsOnPanic::new(&group, "failover_decision_needs_a_cluster_majority");
    run_on(
        &group,
        R1,
        APP,
        "CREATE TABLE m(id INTEGER PRIMARY KEY); INSERT INTO m VALUES (1)",
    )
    .await;
    wait_failover_ready(&group, R1, &[R2, R3]).await;
    // r2 first, so r1 and r3 are never a majority without r2 for long.
    group.nodes[R2].pause();
    group.nodes[R1].pause();
    let paused = Instant::now();
    let watch = Duration::from_secs(5);
    while paused.elapsed() < watch {
        let row = group_row(&group.nodes[R3]).await.expect("r3's group row");
        let role = local_role(&group, R3).await;
        if row.primary_replica != "r1" || row.epoch != 1 || role.as_deref() != Some("SECONDARY") {
            group.nodes[R1].resume();
            group.nodes[R2].resume();
            panic!(
                "r3 {:?} after r1 and r2 stopped: its definition names {} at epoch {}, its role \
                 is {role:?}: promoted without a majority\n{}",
                paused.elapsed(),
                row.primary_replica,
                row.epoch,
                group.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let c = group.nodes[R3].client(DEFAULT_DB).await;
    let sql = format!("ALTER AVAILABILITY GROUP {GROUP} FORCE_FAILOVER_ALLOW_DATA_LOSS");
    let forced = tokio::time::timeout(Duration::from_secs(60), c.batch_execute(&sql)).await;
    let row = group_row(&group.nodes[R3]).await.expect("r3's group row");
    group.nodes[R1].resume();
    group.nodes[R2].resume();
    match forced {
        Err(_) => panic!("{sql} on r3: no answer within 60 s\n{}", group.logs()),
        Ok(Ok(())) => panic!(
            "{sql} on r3 succeeded with r1 and r2 stopped (no majority)\n{}",
            group.logs()
        ),
        Ok(Err(e)) => {
            let db = e
                .as_db_error()
                .unwrap_or_else(|| panic!("{sql}: not a server error: {e:?}"));
            assert!(
                db.code().code() == "55000" && db.message().contains("majority"),
                "{sql} on r3 without a majority: expected 55000 mentioning the majority, got {}",
                error_text(&e)
            );
            eprintln!("FORCE without a majority: {}", error_text(&e));
        }
    }
    assert_eq!(
        (row.primary_replica.as_str(), row.epoch),
        ("r1", 1),
        "r3's definition after the refused FORCE\n{}",
        group.logs()
    );
    // With the majority back, the group takes writes again (whoever is
    // primary now).
    let rw = ReadWrite::each_host(&group, APP);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let written = match rw.connect().await {
            Ok(client) => try_write(&client, "INSERT OR IGNORE INTO m VALUES (2)").await,
            Err(e) => Some(e),
        };
        match written {
            None => break,
            Some(e) if Instant::now() > deadline => {
                panic!(
                    "no write accepted 60 s after r1 and r2 resumed: {e}\n{}",
                    group.logs()
                )
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Automatic failover promotes only a replica whose node the cluster
/// leader hears from. r1 (primary) and r2 (synchronized, first by name)
/// are frozen together (SIGSTOP), so r2 is still in the cluster's
/// synchronized set: nobody took it out. Two witnesses keep a majority
/// with r3. The leader must promote r3 at epoch 2 — promoting r2 would
/// leave the group with a primary that never takes office (and the
/// synchronized set emptied, so no second try). Once r1 and r2 run again
/// they follow r3, and r3 holds every row.
#[tokio::test(flavor = "multi_thread")]
async fn automatic_failover_never_promotes_a_synchronized_replica_the_cluster_does_not_hear_from() {
    let group = automatic_group(GroupSpec::default()).await;
    let _logs = KeepLogsOnPanic::new(
        &group,
        "automatic_failover_never_promotes_a_synchronized_replica_the_cluster_does_not_hear_from",
    );
    let mut witnesses: Vec<TestServer> = Vec::new();
    for w in ["w1", "w2"] {
        let endpoint = free_port();
        witnesses.push(
            TestServer::builder()
                .arg("--witness")
                .replica(w, endpoint)
                .start()
                .await,
        );
        run_on(
            &group,
            R1,
            DEFAULT_DB,
            &format!(
                "ALTER CLUSTER ADD NODE '{w}' WITH (ENDPOINT_URL = 'tcp://127.0.0.1:{endpoint}')"
            ),
        )
        .await;
    }
    run_on(
        &group,
        R1,
        APP,
        "CREATE TABLE h(id INTEGER PRIMARY KEY); INSERT INTO h VALUES (1), (2), (3)",
    )
    .await;
    wait_failover_ready(&group, R1, &[R2, R3]).await;

    group.nodes[R2].pause();
    group.nodes[R1].pause();
    let witness_logs = || {
        witnesses
            .iter()
            .map(|w| w.log_tail())
            .collect::<Vec<_>>()
            .join("\n")
    };
    // The leader is r3 or a witness; it says whom it promotes.
    let promoted_r2 = || {
        std::iter::once(&group.nodes[R3])
            .chain(&witnesses)
            .flat_map(|n| n.log().lines().map(str::to_string).collect::<Vec<_>>())
            .find(|l| l.contains("promoting") && l.contains("to=r2"))
    };
    let deadline = Instant::now() + FAILOVER_TIMEOUT;
    let (row, role) = loop {
        if let Some(line) = promoted_r2() {
            group.nodes[R1].resume();
            group.nodes[R2].resume();
            panic!(
                "the cluster promoted r2, which was frozen: {line}\n{}\n{}",
                logs_of(&group, &[R3]),
                witness_logs()
            );
        }
        let row = group_row(&group.nodes[R3]).await.expect("r3's group row");
        let role = local_role(&group, R3).await;
        if row.epoch > 1 && (row.primary_replica != "r3" || role.as_deref() == Some("PRIMARY")) {
            break (row, role);
        }
        if Instant::now() > deadline {
            group.nodes[R1].resume();
            group.nodes[R2].resume();
            panic!(
                "no failover within {FAILOVER_TIMEOUT:?} of r1 and r2 stopping: r3's \
                 definition names {} at epoch {}, its role is {role:?}\n{}\n{}",
                row.primary_replica,
                row.epoch,
                logs_of(&group, &[R3]),
                witness_logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    group.nodes[R1].resume();
    group.nodes[R2].resume();
    assert_eq!(
        (row.primary_replica.as_str(), row.epoch, role.as_deref()),
        ("r3", 2, Some("PRIMARY")),
        "the cluster promoted a replica it could not reach (r2 was frozen)\n{}\n{}",
        logs_of(&group, &[R3]),
        witness_logs()
    );
    run_on(&group, R3, APP, "INSERT INTO h VALUES (4)").await;
    let rows = rows_on(&group, R3, APP, "SELECT count(*) FROM h").await;
    assert_eq!(rows, vec![vec![Some("4".to_string())]], "h on r3");
    wait_secondary_of(&group, &ALL, R2, R3, 2).await;
    wait_secondary_of(&group, &ALL, R1, R3, 2).await;
}
