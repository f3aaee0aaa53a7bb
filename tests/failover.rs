//! Black-box tests of forced failover (`ALTER AVAILABILITY GROUP ag1
//! FORCE_FAILOVER_ALLOW_DATA_LOSS`): real `availdb server` processes on
//! loopback form group `ag1` (r1 primary, r2 … rN secondaries, database
//! `app`); r1 is killed with SIGKILL, r2 is forced to become primary, and
//! real clients check through SQL, the `sys` views and the page images
//! (`sqlite_dbpage`) that
//!
//! * the new primary starts at the next epoch with data movement to every
//!   secondary suspended until `ALTER DATABASE app SET HADR RESUME`;
//! * a former primary that comes back steps down to a read-only secondary,
//!   and a divergent tail of its log (commits the new primary never
//!   received) is discarded, reported as exactly that LSN range in
//!   `sys.availability_groups.last_failover_data_lost`, and replaced by the
//!   new primary's data (safety rule 5: a forced failover loses only what
//!   it reports);
//! * the new primary keeps its role, epoch and data across a restart.
//!
//! A divergent tail is made deterministically: `SET HADR SUSPEND` on the
//! primary stops shipping, the rows committed after it exist on the primary
//! only, and the primary's `last_commit_lsn` before and after them bounds
//! what the failover must report lost. Every wait is bounded; helpers live
//! in `common::group`.

mod common;

use std::collections::BTreeSet;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use common::group::{
    db_states, error_text, group_row, ids, log_bounds, name, query_text, replica_states, Group,
    GroupRow, GroupSpec, APP, CATCH_UP_TIMEOUT, GROUP, STATEMENT_TIMEOUT,
};
use common::{TestServer, DEFAULT_DB};
use tokio_postgres::Client;

const POLL: Duration = Duration::from_millis(100);
/// Node indexes: r1 (the primary that fails), r2 (forced to be primary), r3.
const R1: usize = 0;
const R2: usize = 1;
const R3: usize = 2;
/// Rows written before the failure (replicated), after suspension on r1
/// (never shipped: lost), and on r2 after the failover. B is shorter than
/// C here, so the new primary's log outgrows the former primary's.
const ROWS_A: RangeInclusive<i64> = 1..=20;
const ROWS_B: RangeInclusive<i64> = 101..=105;
const ROWS_C: RangeInclusive<i64> = 201..=220;
/// Rows written on r2 after r1 rejoined.
const ROWS_D: RangeInclusive<i64> = 301..=305;

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

/// Runs one statement on node `i`'s database `db`.
async fn run_on(group: &Group, i: usize, db: &str, sql: &str) {
    let client = group.nodes[i].client(db).await;
    run(group, &client, sql).await;
}

/// Inserts `ids` into `t` on node `i`, one acknowledged autocommit each.
async fn insert_ids(group: &Group, i: usize, ids: RangeInclusive<i64>) {
    insert_padded(group, i, ids, 0).await;
}

/// `insert_ids` with `pad` random bytes in each row (0: a short text).
async fn insert_padded(group: &Group, i: usize, ids: RangeInclusive<i64>, pad: i64) {
    let client = group.nodes[i].client(APP).await;
    for id in ids {
        let sql = if pad > 0 {
            format!("INSERT INTO t(id, v) VALUES ($1, randomblob({pad}))")
        } else {
            "INSERT INTO t(id, v) VALUES ($1, 'row')".to_string()
        };
        // `id INTEGER` is int4, as in PostgreSQL.
        let id32 = i32::try_from(id).expect("ids fit in int4");
        match tokio::time::timeout(STATEMENT_TIMEOUT, client.execute(sql.as_str(), &[&id32])).await
        {
            Ok(Ok(1)) => {}
            Ok(Ok(n)) => panic!("{sql} [{id}] on {}: {n} rows", name(i)),
            Ok(Err(e)) => panic!(
                "{sql} [{id}] on {}: {}\n{}",
                name(i),
                error_text(&e),
                group.logs()
            ),
            Err(_) => panic!(
                "{sql} [{id}] on {}: no answer within {STATEMENT_TIMEOUT:?}\n{}",
                name(i),
                group.logs()
            ),
        }
    }
}

fn set(ranges: &[RangeInclusive<i64>]) -> BTreeSet<i64> {
    ranges.iter().flat_map(|r| r.clone()).collect()
}

/// Asserts that node `i`'s table `t` holds exactly `expected`.
async fn assert_rows(group: &Group, i: usize, expected: &BTreeSet<i64>, what: &str) {
    let got = ids(&group.nodes[i], APP, "t").await;
    if &got != expected {
        let missing: Vec<_> = expected.difference(&got).collect();
        let extra: Vec<_> = got.difference(expected).collect();
        panic!(
            "{what}: {} holds the wrong rows: missing {missing:?}, unexpected {extra:?}\n{}",
            name(i),
            group.logs()
        );
    }
}

/// Node `i`'s `sys.availability_groups` row; panics when it has none.
async fn row_on(group: &Group, i: usize) -> GroupRow {
    group_row(&group.nodes[i])
        .await
        .unwrap_or_else(|| panic!("{} has no row for {GROUP}\n{}", name(i), group.logs()))
}

/// Polls node `i`'s `sys.availability_groups` row (bounded) until `done`.
async fn wait_group_row(
    group: &Group,
    i: usize,
    what: &str,
    done: impl Fn(&GroupRow) -> bool,
) -> GroupRow {
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    loop {
        let row = group_row(&group.nodes[i]).await;
        if let Some(row) = row.as_ref().filter(|r| done(r)) {
            return row.clone();
        }
        if Instant::now() > deadline {
            panic!(
                "{what}: not reached on {} within {CATCH_UP_TIMEOUT:?}; last row: {row:#?}\n{}",
                name(i),
                group.logs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until node `old` (a former primary) has stepped down: its own
/// replica row says SECONDARY and its definition names `primary` at
/// `epoch`.
async fn wait_stepped_down(group: &Group, old: usize, primary: usize, epoch: u64) {
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    loop {
        let row = group_row(&group.nodes[old]).await;
        let me = replica_states(&group.nodes[old])
            .await
            .into_iter()
            .find(|r| r.is_local);
        let stepped_down = row
            .as_ref()
            .is_some_and(|r| r.primary_replica == name(primary) && r.epoch == epoch)
            && me.as_ref().is_some_and(|m| m.role == "SECONDARY");
        if stepped_down {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "{} did not step down to a secondary of {} at epoch {epoch} within \
                 {CATCH_UP_TIMEOUT:?}; its group row: {row:#?}; its own replica row: {me:#?}\n{}",
                name(old),
                name(primary),
                group.logs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A write on node `i` fails with 25006; returns the error's message and
/// hint. Also checks that a new session there reports
/// `transaction_read_only = on`.
async fn assert_read_only(group: &Group, i: usize, id: i64) -> (String, String) {
    let client = group.nodes[i].client(APP).await;
    let ro = query_text(&client, "SHOW transaction_read_only")
        .await
        .unwrap_or_else(|e| panic!("SHOW transaction_read_only: {}", error_text(&e)));
    assert_eq!(
        ro,
        vec![vec![Some("on".to_string())]],
        "transaction_read_only on {}\n{}",
        name(i),
        group.logs()
    );
    write_refused(group, &client, i, id).await
}

/// `INSERT` of `id` through `client` (on node `i`) fails with 25006;
/// returns the message and hint.
async fn write_refused(group: &Group, client: &Client, i: usize, id: i64) -> (String, String) {
    let sql = "INSERT INTO t(id, v) VALUES ($1, 'refused')";
    let id32 = i32::try_from(id).expect("ids fit in int4");
    let result = match tokio::time::timeout(STATEMENT_TIMEOUT, client.execute(sql, &[&id32])).await
    {
        Ok(result) => result,
        Err(_) => panic!(
            "{sql} [{id}] on {}: no answer within {STATEMENT_TIMEOUT:?}\n{}",
            name(i),
            group.logs()
        ),
    };
    match result {
        Ok(n) => panic!(
            "{sql} [{id}] on {}, a secondary, succeeded ({n} rows); expected SQLSTATE 25006\n{}",
            name(i),
            group.logs()
        ),
        Err(e) => {
            let db = e.as_db_error().unwrap_or_else(|| {
                panic!("{sql} [{id}] on {}: not a server error: {e:?}", name(i))
            });
            assert_eq!(
                db.code().code(),
                "25006",
                "{sql} [{id}] on {}: expected SQLSTATE 25006, got {}",
                name(i),
                error_text(&e)
            );
            (
                db.message().to_string(),
                db.hint().unwrap_or_default().to_string(),
            )
        }
    }
}

/// The rows of a divergence: B (committed on r1 after SUSPEND, `b_pad`
/// random bytes each) and C (written on r2 after the failover).
#[derive(Clone)]
struct Tail {
    b: RangeInclusive<i64>,
    b_pad: i64,
    c: RangeInclusive<i64>,
}

/// B shorter than C: the new primary's log ends past the lost tail.
fn short_tail() -> Tail {
    Tail {
        b: ROWS_B,
        b_pad: 0,
        c: ROWS_C,
    }
}

/// A divergent tail made and failed over: group started with `spec`,
/// table `t` with rows A everywhere, rows B committed on r1 after SUSPEND
/// (LSN `before..after` of r1's log, never shipped), r1 killed, r2 forced
/// to be primary, rows C written on r2. Nothing is resumed and r1 is not
/// restarted yet.
struct Diverged {
    group: Group,
    before: u64,
    after: u64,
    tail: Tail,
}

async fn diverge_and_fail_over(spec: GroupSpec, tail: Tail) -> Diverged {
    let mut group = Group::start_with(spec).await;
    let all: Vec<usize> = (1..group.nodes.len()).collect();
    run_on(
        &group,
        R1,
        APP,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
    )
    .await;
    insert_ids(&group, R1, ROWS_A).await;
    let before = group.wait_caught_up(&all, CATCH_UP_TIMEOUT).await;
    assert_eq!(
        log_bounds(group.primary(), APP).await.1,
        before,
        "r1's log should end at its last commit once rows A are in\n{}",
        group.logs()
    );
    let r2_hardened = group.local_state(R2).await.map(|s| s.hardened);
    assert_eq!(
        r2_hardened,
        Some(before),
        "r2 should hold r1's whole log before the failure\n{}",
        group.logs()
    );

    run_on(
        &group,
        R1,
        DEFAULT_DB,
        &format!("ALTER DATABASE {APP} SET HADR SUSPEND"),
    )
    .await;
    insert_padded(&group, R1, tail.b.clone(), tail.b_pad).await;
    let after = group.commit_lsn().await;
    assert!(
        after > before,
        "rows B did not move r1's last_commit_lsn ({before} → {after})"
    );
    for &i in &all {
        let own = group.local_state(i).await.expect("own row");
        assert_eq!(
            own.hardened,
            before,
            "{} received part of rows B although data movement was suspended\n{}",
            name(i),
            group.logs()
        );
    }

    group.nodes[R1].kill9();
    group.force_failover(R2).await;
    insert_ids(&group, R2, tail.c.clone()).await;
    let (_, r2_end) = log_bounds(&group.nodes[R2], APP).await;
    eprintln!(
        "lost tail on r1: LSN {before}..{after} ({} bytes); r2's log ends at {r2_end} \
         ({} bytes past the fork)",
        after - before,
        r2_end - before
    );
    Diverged {
        group,
        before,
        after,
        tail,
    }
}

/// Resumes data movement on r2, restarts r1, and checks the outcome of a
/// forced failover with a divergent tail: the loss is reported as exactly
/// r1's LSN `before..after`, r1 steps down (and, in a synchronous group,
/// becomes SYNCHRONIZED), rows D committed on r2 afterwards reach it, all
/// three replicas converge page-identically with rows A, C and D and no
/// row B, and r1 refuses writes.
async fn rejoin_and_check_the_loss(diverged: Diverged) -> Group {
    let Diverged {
        mut group,
        before,
        after,
        tail,
    } = diverged;
    run_on(
        &group,
        R2,
        DEFAULT_DB,
        &format!("ALTER DATABASE {APP} SET HADR RESUME"),
    )
    .await;
    group.nodes[R1].restart().await;
    let row = wait_group_row(&group, R2, "loss known after r1 returned", |r| {
        r.last_failover_loss_known
    })
    .await;
    assert_eq!(
        row.last_failover_data_lost.as_deref(),
        Some(format!("{APP}: LSN {before}..{after}").as_str()),
        "the reported loss must be exactly what r1 committed after SUSPEND \
         (its last_commit_lsn went {before} → {after}): {row:#?}\n{}",
        group.logs()
    );
    assert_eq!(
        (row.epoch, row.primary_replica.as_str()),
        (2, "r2"),
        "{row:#?}"
    );

    wait_stepped_down(&group, R1, R2, 2).await;
    if group.spec.synchronous {
        group
            .wait_synchronized_on(R2, &[R1, R3], CATCH_UP_TIMEOUT)
            .await;
    }
    // Replication goes on after the rejoin: rows D, committed on r2 once r1
    // is back, must reach r1 too.
    insert_ids(&group, R2, ROWS_D).await;
    group
        .wait_caught_up_to(R2, &[R1, R3], CATCH_UP_TIMEOUT)
        .await;
    let expected = set(&[ROWS_A, tail.c.clone(), ROWS_D]);
    let view: Vec<_> = group
        .view_on(R2)
        .await
        .into_iter()
        .map(|s| (s.replica, s.sync_state, s.hardened, s.redone))
        .collect();
    let what = format!(
        "rows A, C and D everywhere, rows B nowhere (r2's view, (replica, state, hardened, \
         redone): {view:?})"
    );
    for i in [R1, R2, R3] {
        assert_rows(&group, i, &expected, &what).await;
    }
    group
        .assert_page_identical_to(R2, &[R1, R3], "after r1 rejoined as a secondary")
        .await;
    assert_read_only(&group, R1, 900).await;
    for i in [R1, R2, R3] {
        assert_rows(&group, i, &expected, "after the refused write on r1").await;
    }
    group
}

// ---------------------------------------------------------------- rule 5

#[tokio::test(flavor = "multi_thread")]
async fn forced_failover_of_an_async_group_loses_exactly_the_reported_range() {
    let diverged = diverge_and_fail_over(
        GroupSpec {
            synchronous: false,
            ..GroupSpec::default()
        },
        short_tail(),
    )
    .await;
    let group = &diverged.group;

    // The new primary's definition, while r1 has not come back: the loss
    // is not known yet.
    let row = row_on(group, R2).await;
    assert_eq!(
        (row.epoch, row.primary_replica.as_str()),
        (2, "r2"),
        "r2 after the forced failover: {row:#?}"
    );
    assert_eq!(
        row.cluster_type_desc.as_deref(),
        Some("EXTERNAL"),
        "{row:#?}"
    );
    assert!(row.last_failover_time.is_some(), "{row:#?}");
    assert_eq!(
        row.last_failover_reason.as_deref(),
        Some("FORCE_FAILOVER_ALLOW_DATA_LOSS"),
        "{row:#?}"
    );
    assert_eq!(row.last_failover_from.as_deref(), Some("r1"), "{row:#?}");
    assert_eq!(row.last_failover_to.as_deref(), Some("r2"), "{row:#?}");
    assert!(
        !row.last_failover_loss_known && row.last_failover_data_lost.is_none(),
        "the loss cannot be known before r1 returns: {row:#?}"
    );

    rejoin_and_check_the_loss(diverged).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forced_failover_loses_only_the_reported_range_when_the_lost_tail_outsizes_the_new_log() {
    // Rows B are large and C is short: r1's lost tail reaches past
    // everything r2 writes after the fork, the full image r2 sends for the
    // rewind included, so that image lands at an LSN r1's stale log already
    // covers. Synchronous commit: once r1 is SYNCHRONIZED again, commits on
    // r2 wait for it to harden them.
    let diverged = diverge_and_fail_over(
        GroupSpec::default(),
        Tail {
            b: 101..=140,
            b_pad: 10_000,
            c: 201..=205,
        },
    )
    .await;
    rejoin_and_check_the_loss(diverged).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forced_failover_without_divergence_reports_no_loss() {
    let mut group = Group::start(3).await;
    run_on(
        &group,
        R1,
        APP,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
    )
    .await;
    insert_ids(&group, R1, ROWS_A).await;
    group.wait_synchronized(&[R2, R3], CATCH_UP_TIMEOUT).await;
    group.wait_caught_up(&[R2, R3], CATCH_UP_TIMEOUT).await;
    group.nodes[R1].kill9();

    group.force_failover(R2).await;
    insert_ids(&group, R2, ROWS_C).await;
    run_on(
        &group,
        R2,
        DEFAULT_DB,
        &format!("ALTER DATABASE {APP} SET HADR RESUME"),
    )
    .await;
    group.nodes[R1].restart().await;
    let row = wait_group_row(&group, R2, "loss known after r1 returned", |r| {
        r.last_failover_loss_known
    })
    .await;
    assert_eq!(
        row.last_failover_data_lost.as_deref(),
        Some("none"),
        "r1 had nothing r2 lacked: {row:#?}\n{}",
        group.logs()
    );
    assert_eq!(
        (
            row.epoch,
            row.primary_replica.as_str(),
            row.last_failover_from.as_deref()
        ),
        (2, "r2", Some("r1")),
        "{row:#?}"
    );

    wait_stepped_down(&group, R1, R2, 2).await;
    group
        .wait_synchronized_on(R2, &[R1, R3], CATCH_UP_TIMEOUT)
        .await;
    group
        .assert_page_identical_to(R2, &[R1, R3], "after r1 rejoined without divergence")
        .await;
    let expected = set(&[ROWS_A, ROWS_C]);
    for i in [R1, R2, R3] {
        assert_rows(&group, i, &expected, "rows A and C everywhere").await;
    }
    assert_read_only(&group, R1, 900).await;
}

// ------------------------------------------------------- suspended start

#[tokio::test(flavor = "multi_thread")]
async fn after_forced_failover_other_secondaries_stay_suspended_until_resumed() {
    let mut group = Group::start(3).await;
    run_on(
        &group,
        R1,
        APP,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
    )
    .await;
    insert_ids(&group, R1, ROWS_A).await;
    group.wait_caught_up(&[R2, R3], CATCH_UP_TIMEOUT).await;
    group.nodes[R1].kill9();
    group.force_failover(R2).await;

    // r3 learns the new definition (primary r2, epoch 2) even while data
    // movement is suspended.
    wait_group_row(&group, R3, "r3 knows r2 as primary at epoch 2", |r| {
        r.primary_replica == "r2" && r.epoch == 2
    })
    .await;
    let view = group.view_on(R2).await;
    for r in ["r1", "r3"] {
        let s = view.iter().find(|s| s.replica == r);
        assert!(
            s.is_some_and(|s| s.is_suspended && s.sync_state == "NOT SYNCHRONIZING"),
            "{r} must start suspended after the forced failover; r2's view: {view:#?}"
        );
    }

    // Commits on r2 do not wait for the suspended secondaries, and nothing
    // moves to r3.
    insert_ids(&group, R2, ROWS_C).await;
    let commit = group.commit_lsn_on(R2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_rows(&group, R3, &set(&[ROWS_A]), "r3 while suspended").await;
    let own = group.local_state(R3).await.expect("r3's own row");
    assert!(
        own.hardened < commit,
        "r3 hardened {} of r2's {commit} while data movement was suspended\n{}",
        own.hardened,
        group.logs()
    );
    let view = group.view_on(R2).await;
    assert!(
        view.iter()
            .find(|s| s.replica == "r3")
            .is_some_and(|s| s.is_suspended),
        "r3 still suspended after commits on r2: {view:#?}"
    );

    run_on(
        &group,
        R2,
        DEFAULT_DB,
        &format!("ALTER DATABASE {APP} SET HADR RESUME"),
    )
    .await;
    group
        .wait_synchronized_on(R2, &[R3], CATCH_UP_TIMEOUT)
        .await;
    let view = group.view_on(R2).await;
    assert!(
        view.iter().all(|s| !s.is_suspended),
        "after RESUME: {view:#?}"
    );
    group
        .assert_page_identical_to(R2, &[R3], "r3 after RESUME on r2")
        .await;
    assert_rows(&group, R3, &set(&[ROWS_A, ROWS_C]), "r3 after RESUME").await;
}

// ----------------------------------------------------------- refusals

/// Runs FORCE_FAILOVER on `server` for `group_name`; returns the SQLSTATE
/// and message it failed with.
async fn force_failover_refused(server: &TestServer, group_name: &str) -> (String, String) {
    let client = server.client(DEFAULT_DB).await;
    let sql = format!("ALTER AVAILABILITY GROUP {group_name} FORCE_FAILOVER_ALLOW_DATA_LOSS");
    match tokio::time::timeout(STATEMENT_TIMEOUT, client.batch_execute(&sql)).await {
        Err(_) => panic!("{sql}: no answer within {STATEMENT_TIMEOUT:?}"),
        Ok(Ok(())) => panic!(
            "{sql} on port {} succeeded; it should have been refused\n{}",
            server.port(),
            server.log_tail()
        ),
        Ok(Err(e)) => {
            let db = e
                .as_db_error()
                .unwrap_or_else(|| panic!("{sql}: not a server error: {e:?}"));
            (db.code().code().to_string(), db.message().to_string())
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn forced_failover_is_refused_on_the_primary_and_on_unknown_groups() {
    let group = Group::start(2).await;
    run_on(
        &group,
        R1,
        APP,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
    )
    .await;

    let (code, message) = force_failover_refused(group.primary(), GROUP).await;
    assert_eq!(code, "55000", "on the primary: {message}");
    assert!(
        message.contains("already the primary") && message.contains(GROUP),
        "on the primary, the message should say it is already the primary of {GROUP}: {message}"
    );

    for i in [R1, R2] {
        let (code, message) = force_failover_refused(&group.nodes[i], "nosuch").await;
        assert_eq!(code, "42704", "unknown group on {}: {message}", name(i));
        assert!(
            message.contains("nosuch") && message.contains("does not exist"),
            "unknown group on {}: the message should name the group: {message}",
            name(i)
        );
    }

    // A node that joined the group but never received its data.
    let joined = TestServer::builder()
        .replica("r9", common::free_port())
        .start()
        .await;
    {
        let client = joined.client(DEFAULT_DB).await;
        run(
            &group,
            &client,
            &format!("ALTER AVAILABILITY GROUP {GROUP} JOIN"),
        )
        .await;
    }
    let (code, message) = force_failover_refused(&joined, GROUP).await;
    assert_eq!(code, "55000", "on a joined replica without data: {message}");

    // Nothing changed: r1 is still the primary at epoch 1 and replicates.
    for i in [R1, R2] {
        let row = row_on(&group, i).await;
        assert_eq!(
            (row.epoch, row.primary_replica.as_str()),
            (1, "r1"),
            "{} after the refused failovers: {row:#?}",
            name(i)
        );
        assert!(row.last_failover_reason.is_none(), "{row:#?}");
    }
    insert_ids(&group, R1, ROWS_A).await;
    group
        .assert_page_identical("after the refused failovers")
        .await;
    assert_rows(&group, R2, &set(&[ROWS_A]), "r2 after the refusals").await;
}

// ------------------------------------------------ the former primary

#[tokio::test(flavor = "multi_thread")]
async fn old_primary_that_returns_does_not_accept_writes_after_stepping_down() {
    let Diverged { mut group, .. } =
        diverge_and_fail_over(GroupSpec::default(), short_tail()).await;
    run_on(
        &group,
        R2,
        DEFAULT_DB,
        &format!("ALTER DATABASE {APP} SET HADR RESUME"),
    )
    .await;
    group.nodes[R1].restart().await;
    // A session opened right away: r1 may still think it is the primary.
    let early = group.nodes[R1].client(APP).await;
    wait_stepped_down(&group, R1, R2, 2).await;
    wait_group_row(&group, R2, "loss known after r1 returned", |r| {
        r.last_failover_loss_known
    })
    .await;

    let (message, hint) = write_refused(&group, &early, R1, 901).await;
    assert!(
        message.contains("r2") || hint.contains("r2"),
        "a session opened on r1 right after its restart: the 25006 error should name the new \
         primary r2: message {message:?}, hint {hint:?}"
    );
    let (message, hint) = assert_read_only(&group, R1, 902).await;
    assert!(
        message.contains("r2") || hint.contains("r2"),
        "a new session on r1: the 25006 error should name the new primary r2: \
         message {message:?}, hint {hint:?}"
    );

    group
        .assert_page_identical_to(R2, &[R1, R3], "after the refused writes on r1")
        .await;
    let expected = set(&[ROWS_A, ROWS_C]);
    for i in [R1, R2, R3] {
        assert_rows(&group, i, &expected, "no refused write landed anywhere").await;
    }
}

// ------------------------------------------------ the new primary persists

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_new_primary_comes_back_as_primary_at_the_same_epoch_with_its_data() {
    let mut group = Group::start(3).await;
    run_on(
        &group,
        R1,
        APP,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
    )
    .await;
    insert_ids(&group, R1, ROWS_A).await;
    group.wait_caught_up(&[R2, R3], CATCH_UP_TIMEOUT).await;
    group.nodes[R1].kill9();
    group.force_failover(R2).await;
    insert_ids(&group, R2, ROWS_C).await;
    let row_before = row_on(&group, R2).await;

    group.nodes[R2].kill9();
    group.nodes[R2].restart().await;

    let row = row_on(&group, R2).await;
    assert_eq!(
        (row.epoch, row.primary_replica.as_str()),
        (2, "r2"),
        "r2 after its restart: {row:#?}\n{}",
        group.logs()
    );
    assert_eq!(
        (
            &row.last_failover_time,
            &row.last_failover_reason,
            &row.last_failover_from,
            &row.last_failover_to,
            row.last_failover_loss_known,
            &row.last_failover_data_lost,
        ),
        (
            &row_before.last_failover_time,
            &row_before.last_failover_reason,
            &row_before.last_failover_from,
            &row_before.last_failover_to,
            false,
            &None,
        ),
        "the failover record survives the restart: before {row_before:#?}, after {row:#?}"
    );
    // A restarted primary is RESOLVING until the cluster renews its lease.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let me = replica_states(&group.nodes[R2])
            .await
            .into_iter()
            .find(|r| r.is_local);
        if me.as_ref().is_some_and(|m| m.role == "PRIMARY") {
            break;
        }
        assert!(
            Instant::now() < deadline && me.as_ref().is_some_and(|m| m.role == "RESOLVING"),
            "r2's own replica row after its restart should become PRIMARY: {me:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_rows(&group, R2, &set(&[ROWS_A, ROWS_C]), "r2 after its restart").await;
    let suspended: Vec<_> = db_states(&group.nodes[R2])
        .await
        .into_iter()
        .filter(|s| !s.is_local)
        .map(|s| (s.replica, s.is_suspended))
        .collect();
    // The forced failover's suspension survives the restart: data moves
    // again only when an operator resumes it.
    assert!(
        !suspended.is_empty() && suspended.iter().all(|(_, s)| *s),
        "after r2's restart, (replica, is_suspended) in r2's view: {suspended:?}\n{}",
        group.logs()
    );

    // Still writable, and still the group's primary: r3 follows once resumed.
    let d = 301..=310;
    insert_ids(&group, R2, d.clone()).await;
    run_on(
        &group,
        R2,
        DEFAULT_DB,
        &format!("ALTER DATABASE {APP} SET HADR RESUME"),
    )
    .await;
    group
        .assert_page_identical_to(R2, &[R3], "r3 after r2's restart")
        .await;
    assert_rows(&group, R3, &set(&[ROWS_A, ROWS_C, d.clone()]), "r3").await;

    // The former primary returns to the restarted new primary: no loss.
    group.nodes[R1].restart().await;
    let row = wait_group_row(&group, R2, "loss known after r1 returned", |r| {
        r.last_failover_loss_known
    })
    .await;
    assert_eq!(
        row.last_failover_data_lost.as_deref(),
        Some("none"),
        "{row:#?}\n{}",
        group.logs()
    );
    wait_stepped_down(&group, R1, R2, 2).await;
    group
        .assert_page_identical_to(R2, &[R1, R3], "r1 after r2's restart")
        .await;
    assert_rows(&group, R1, &set(&[ROWS_A, ROWS_C, d]), "r1").await;
}

// ------------------------------------------------- after a rewind

#[tokio::test(flavor = "multi_thread")]
async fn a_rewound_former_primary_restarts_as_a_secondary_with_the_new_primary_data() {
    let diverged = diverge_and_fail_over(GroupSpec::default(), short_tail()).await;
    let mut group = rejoin_and_check_the_loss(diverged).await;
    let (first, end) = log_bounds(&group.nodes[R1], APP).await;
    eprintln!("r1's log after the rewind holds LSN {first}..{end}");

    // A plain restart (SIGTERM, start) of the rewound node.
    group.nodes[R1].restart().await;
    wait_stepped_down(&group, R1, R2, 2).await;
    group
        .wait_synchronized_on(R2, &[R1, R3], CATCH_UP_TIMEOUT)
        .await;
    let e = 401..=405;
    insert_ids(&group, R2, e.clone()).await;
    group
        .assert_page_identical_to(R2, &[R1, R3], "after the rewound r1 restarted")
        .await;
    let expected = set(&[ROWS_A, ROWS_C, ROWS_D, e]);
    for i in [R1, R2, R3] {
        assert_rows(&group, i, &expected, "after the rewound r1 restarted").await;
    }
    assert_read_only(&group, R1, 900).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rewound_former_primary_is_not_rewound_again_when_it_reconnects() {
    let diverged = diverge_and_fail_over(GroupSpec::default(), short_tail()).await;
    let mut group = rejoin_and_check_the_loss(diverged).await;
    let row = row_on(&group, R2).await;

    // r1 now holds r2's log from the full image it restarted at. When the
    // link comes up again (here: r2 restarts), r1's log agrees with r2's
    // and continues: r2 appends no new full image for it, and r1's log is
    // not restarted.
    let (_, r2_end) = log_bounds(&group.nodes[R2], APP).await;
    let r1_bounds = log_bounds(&group.nodes[R1], APP).await;
    let rewinds = |log: &str| log.matches("the replica's log diverged").count();
    let rewinds_before = rewinds(&group.nodes[R2].log());
    group.nodes[R2].restart().await;
    group
        .wait_synchronized_on(R2, &[R1, R3], CATCH_UP_TIMEOUT)
        .await;
    let (_, r2_end_now) = log_bounds(&group.nodes[R2], APP).await;
    let r1_bounds_now = log_bounds(&group.nodes[R1], APP).await;
    let rewinds_now = rewinds(&group.nodes[R2].log());
    assert!(
        r2_end_now == r2_end && r1_bounds_now == r1_bounds && rewinds_now == rewinds_before,
        "r1, rewound once, was treated as divergent again when its link to r2 came back up: \
         r2's log end {r2_end} → {r2_end_now}; r1's log (first, end) {r1_bounds:?} → \
         {r1_bounds_now:?}; r2 logged \"the replica's log diverged\" {rewinds_now} times \
         (before the reconnect: {rewinds_before})\n{}",
        group.logs()
    );
    let row_now = row_on(&group, R2).await;
    assert_eq!(
        row_now.last_failover_data_lost, row.last_failover_data_lost,
        "the reported loss must not change when r1 reconnects"
    );
    group
        .assert_page_identical_to(R2, &[R1, R3], "after r1 reconnected")
        .await;
}

/// Rule: a read transaction left open on a secondary does not stop that
/// secondary from becoming primary (SQL Server ends such sessions at a role
/// change): a planned failover to it succeeds, and the new primary takes
/// writes.
#[tokio::test(flavor = "multi_thread")]
async fn an_open_read_transaction_on_the_target_does_not_block_a_planned_failover() {
    let group = Group::start(2).await;
    run_on(
        &group,
        0,
        APP,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)",
    )
    .await;
    insert_ids(&group, 0, 1..=20).await;
    group.wait_synchronized(&[1], CATCH_UP_TIMEOUT).await;
    let reader = group.nodes[1].client(APP).await;
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM t")
        .await
        .unwrap_or_else(|e| panic!("a read on r2: {}", error_text(&e)));
    // A second session on r2 holds a portal suspended after 5 of its rows.
    let mut streamer = group.nodes[1].client(APP).await;
    let portal_tx = streamer.transaction().await.unwrap();
    let portal = portal_tx
        .bind("SELECT id FROM t ORDER BY id", &[])
        .await
        .unwrap();
    let first = portal_tx.query_portal(&portal, 5).await.unwrap();
    assert_eq!(first.len(), 5);
    // More commits on r1 that r2 redoes while the readers hold snapshots.
    insert_ids(&group, 0, 21..=40).await;
    common::cluster::wait_failover_ready(&group, 0, &[1]).await;
    common::cluster::planned_failover(&group, 1)
        .await
        .unwrap_or_else(|(code, m)| {
            panic!(
                "planned failover to r2 with a read open there: {code} {m}\n{}",
                group.logs()
            )
        });
    group.wait_takes_writes(1, CATCH_UP_TIMEOUT).await;
    insert_ids(&group, 1, 41..=50).await;
    assert_rows(&group, 1, &(1..=50).collect(), "the new primary").await;

    // The reader's transaction was ended, and it is told why.
    let ended = reader
        .batch_execute("SELECT count(*) FROM t")
        .await
        .expect_err("the read transaction was ended by the promotion");
    assert_eq!(
        ended.code().map(|c| c.code()),
        Some("25P02"),
        "{}",
        error_text(&ended)
    );
    assert!(
        error_text(&ended).contains("becoming the primary"),
        "{}",
        error_text(&ended)
    );
    reader.batch_execute("ROLLBACK").await.unwrap();
    let rows = query_text(&reader, "SELECT count(*) FROM t").await.unwrap();
    assert_eq!(rows[0][0].as_deref(), Some("50"), "the session goes on");
    // The portal's transaction was ended too (rows it had already read
    // may still be fetched: they are of its own snapshot).
    let ended = portal_tx
        .batch_execute("SELECT count(*) FROM t")
        .await
        .expect_err("the portal's transaction was ended by the promotion");
    assert_eq!(ended.code().map(|c| c.code()), Some("25P02"));
    drop(portal);
}
