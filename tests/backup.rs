//! Black-box tests of BACKUP and RESTORE: real `availdb server` processes
//! on loopback, driven with a PostgreSQL client. They check that
//!
//! * a copy-only full backup taken on a secondary while the primary takes
//!   writes restores on another node to exactly the rows committed before
//!   its LSN, and, with the log backups after it, to a copy page-identical
//!   to the primary;
//! * log backups taken on both sides of a failover form one chain that
//!   restores to a point in time between two known commits;
//! * every bad input (a missing, truncated, bit-flipped or foreign file, a
//!   log backup with a gap, STOPAT outside the backups, RESTORE over an
//!   existing database, BACKUP on a secondary that is not synchronizing)
//!   gets a clear error with its SQLSTATE, leaves nothing half-restored
//!   online and the source untouched, and a retry then works;
//! * a backup whose reads are rate-limited (`--backup-kib-per-s`) still
//!   completes and restores page-identical.
//!
//! Every wait and load is bounded; helpers live in `common`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::cluster::{planned_failover, wait_failover_ready};
use common::group::{
    compare_pages, error_text, exec, ids, name, pages, query_text, Group, GroupSpec, InsertLoad,
    APP, CATCH_UP_TIMEOUT,
};
use common::{assert_sqlstate, free_port, TestServer, DEFAULT_DB};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

/// Runs one statement through the simple protocol, bounded.
async fn run(
    client: &Client,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, tokio_postgres::Error> {
    query_text(client, sql).await
}

/// Runs one statement that must succeed.
async fn ok(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    run(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e)))
}

fn state(code: &str) -> SqlState {
    SqlState::from_code(code)
}

fn disk(path: &Path) -> String {
    path.display().to_string().replace('\'', "''")
}

/// `(first_lsn, last_lsn)` of a backup file, from RESTORE HEADERONLY.
async fn lsn_range(client: &Client, path: &Path) -> (u64, u64) {
    let rows = ok(
        client,
        &format!("RESTORE HEADERONLY FROM DISK = '{}'", disk(path)),
    )
    .await;
    let n = |i: usize| rows[0][i].as_deref().unwrap().parse::<u64>().unwrap();
    (n(4), n(5))
}

/// A standalone server with database `app` holding `t(id, v)` rows
/// 1..=rows, and a full backup of it; returns the server, an `app` client,
/// the backup's path and its directory.
async fn standalone_with_backup(rows: i64) -> (TestServer, Client, PathBuf, tempfile::TempDir) {
    let server = TestServer::start().await;
    let admin = server.client(DEFAULT_DB).await;
    exec(&admin, "CREATE DATABASE app", "create app").await;
    let app = server.client(APP).await;
    exec(
        &app,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
        "create t",
    )
    .await;
    insert(&app, 1..=rows).await;
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.bak");
    ok(
        &admin,
        &format!(
            "BACKUP DATABASE app TO DISK = '{}' WITH COMPRESSION",
            disk(&full)
        ),
    )
    .await;
    (server, app, full, dir)
}

async fn insert(client: &Client, ids: std::ops::RangeInclusive<i64>) {
    for id in ids {
        exec(
            client,
            &format!("INSERT INTO t(id, v) VALUES ({id}, 'row {id}')"),
            "insert",
        )
        .await;
    }
}

fn range(ids: std::ops::RangeInclusive<i64>) -> BTreeSet<i64> {
    ids.collect()
}

/// Databases of `server`, from pg_database-free `sys.databases`.
async fn database_names(server: &TestServer) -> Vec<String> {
    let client = server.client(DEFAULT_DB).await;
    ok(&client, "SELECT name FROM sys.databases ORDER BY name")
        .await
        .into_iter()
        .filter_map(|r| r[0].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_only_backup_on_a_secondary_under_writes_restores_to_the_rows_and_pages_of_its_lsn()
{
    let group = Group::start(2).await;
    let primary = group.nodes[0].client(APP).await;
    exec(
        &primary,
        "CREATE TABLE load(id INTEGER PRIMARY KEY, pad BLOB)",
        "create load",
    )
    .await;
    let load = InsertLoad::start(group.nodes[0].client(APP).await, "load", 1, 100_000);
    load.wait_acked(300, Duration::from_secs(60)).await;
    let secondary = group.nodes[1].client(DEFAULT_DB).await;
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("app-full.bak");

    // A secondary takes only copy-only full backups.
    assert_sqlstate(
        run(
            &secondary,
            &format!("BACKUP DATABASE app TO DISK = '{}'", disk(&full)),
        )
        .await,
        &state("55000"),
        "a full backup on a secondary without COPY_ONLY",
    );
    let acked_before = load.acked_count() as i64;
    ok(
        &secondary,
        &format!(
            "BACKUP DATABASE app TO DISK = '{}' WITH COPY_ONLY, COMPRESSION, CHECKSUM, STATS = 10",
            disk(&full)
        ),
    )
    .await;
    let acked_after = load.acked_count() as i64;
    load.wait_acked(acked_after as usize + 100, Duration::from_secs(60))
        .await;
    let report = load.finish().await;
    assert!(
        report.failed.is_none(),
        "the load failed: {:?}",
        report.failed
    );
    group.wait_caught_up(&[1], CATCH_UP_TIMEOUT).await;
    let log = dir.path().join("app-log.bak");
    ok(
        &secondary,
        &format!("BACKUP LOG app TO DISK = '{}'", disk(&log)),
    )
    .await;

    // Restore elsewhere: a node outside the group.
    let other = TestServer::start().await;
    let admin = other.client(DEFAULT_DB).await;
    ok(
        &admin,
        &format!(
            "RESTORE DATABASE copy_at_backup FROM DISK = '{}' WITH RECOVERY",
            disk(&full)
        ),
    )
    .await;
    // Inserts are sequential: the rows at the backup's LSN are a prefix
    // holding every insert acknowledged before BACKUP began and none
    // begun after it returned (one may be committed, not yet acknowledged).
    let restored = ids(&other, "copy_at_backup", "load").await;
    let k = restored.len() as i64;
    assert_eq!(restored, range(1..=k), "the restored rows are not a prefix");
    assert!(
        k >= acked_before && k <= acked_after + 1,
        "the backup holds {k} rows; {acked_before} were acknowledged before BACKUP and {acked_after} when it returned"
    );

    // The full backup and the log backup after it: the primary's pages.
    ok(
        &admin,
        &format!(
            "RESTORE DATABASE copy_now FROM DISK = '{}' WITH NORECOVERY",
            disk(&full)
        ),
    )
    .await;
    ok(
        &admin,
        &format!(
            "RESTORE LOG copy_now FROM DISK = '{}' WITH RECOVERY",
            disk(&log)
        ),
    )
    .await;
    let expected = pages(group.primary(), APP).await;
    let actual = pages(&other, "copy_now").await;
    if let Err(diff) = compare_pages(&expected, &actual) {
        panic!("full + log backup restored differs from the primary:\n{diff}");
    }
    // The same chain stopped at the full backup's LSN is the full backup.
    let (_, full_end) = lsn_range(&admin, &full).await;
    ok(
        &admin,
        &format!(
            "RESTORE DATABASE copy_stopped FROM DISK = '{}' WITH NORECOVERY",
            disk(&full)
        ),
    )
    .await;
    ok(
        &admin,
        &format!(
            "RESTORE LOG copy_stopped FROM DISK = '{}' WITH STOPATLSN = '{full_end}', RECOVERY",
            disk(&log)
        ),
    )
    .await;
    let at_backup = pages(&other, "copy_at_backup").await;
    let stopped = pages(&other, "copy_stopped").await;
    if let Err(diff) = compare_pages(&at_backup, &stopped) {
        panic!("the chain stopped at the full backup's LSN differs from the full backup:\n{diff}");
    }

    // sys.backup_history on the secondary lists both, taken by r2.
    let history = ok(
        &secondary,
        "SELECT type, CASE WHEN is_copy_only THEN 'copy-only' ELSE 'normal' END, replica_name, \
         CASE WHEN first_lsn <= last_lsn AND backup_size > 0 THEN 'ok' ELSE 'bad' END \
         FROM sys.backup_history ORDER BY backup_start_date",
    )
    .await;
    let rows: Vec<Vec<String>> = history
        .into_iter()
        .map(|r| r.into_iter().map(Option::unwrap_or_default).collect())
        .collect();
    assert_eq!(
        rows,
        [
            ["DATABASE", "copy-only", "r2", "ok"]
                .map(String::from)
                .to_vec(),
            ["LOG", "normal", "r2", "ok"].map(String::from).to_vec(),
        ],
        "sys.backup_history on r2"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_on_a_secondary_that_is_not_synchronizing_is_refused_with_55000() {
    let group = Group::start(2).await;
    let secondary = group.nodes[1].client(DEFAULT_DB).await;
    exec(&secondary, "ALTER DATABASE app SET HADR SUSPEND", "suspend").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.bak");
    for sql in [
        format!(
            "BACKUP DATABASE app TO DISK = '{}' WITH COPY_ONLY",
            disk(&path)
        ),
        format!("BACKUP LOG app TO DISK = '{}'", disk(&path)),
    ] {
        let result = run(&secondary, &sql).await;
        let message = result.as_ref().err().map(error_text).unwrap_or_default();
        assert!(message.contains("NOT SYNCHRONIZING"), "{sql}: {message}");
        assert_sqlstate(result, &state("55000"), &sql);
    }
    assert!(!path.exists(), "a refused backup left a file");
    exec(&secondary, "ALTER DATABASE app SET HADR RESUME", "resume").await;
    group.wait_synchronized(&[1], CATCH_UP_TIMEOUT).await;
    ok(
        &secondary,
        &format!(
            "BACKUP DATABASE app TO DISK = '{}' WITH COPY_ONLY",
            disk(&path)
        ),
    )
    .await;
    ok(
        &secondary,
        &format!("RESTORE VERIFYONLY FROM DISK = '{}'", disk(&path)),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_chain_across_a_failover_restores_to_a_point_between_two_commits() {
    let group = Group::start(2).await;
    let r1 = group.nodes[0].client(APP).await;
    exec(
        &r1,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
        "create t",
    )
    .await;
    insert(&r1, 1..=10).await;
    let dir = tempfile::tempdir().unwrap();
    let (full, log1, log2) = (
        dir.path().join("full.bak"),
        dir.path().join("log1.bak"),
        dir.path().join("log2.bak"),
    );
    let admin1 = group.nodes[0].client(DEFAULT_DB).await;
    ok(
        &admin1,
        &format!("BACKUP DATABASE app TO DISK = '{}'", disk(&full)),
    )
    .await;
    insert(&r1, 11..=20).await;
    ok(
        &admin1,
        &format!("BACKUP LOG app TO DISK = '{}'", disk(&log1)),
    )
    .await;
    drop((r1, admin1));

    wait_failover_ready(&group, 0, &[1]).await;
    if let Err((code, message)) = planned_failover(&group, 1).await {
        panic!(
            "planned failover to r2: {message} ({code})\n{}",
            group.logs()
        );
    }
    group.wait_takes_writes(1, Duration::from_secs(60)).await;
    let r2 = group.nodes[1].client(APP).await;
    insert(&r2, 21..=30).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let between = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    insert(&r2, 31..=40).await;
    let admin2 = group.nodes[1].client(DEFAULT_DB).await;
    ok(
        &admin2,
        &format!("BACKUP LOG app TO DISK = '{}'", disk(&log2)),
    )
    .await;

    let other = TestServer::start().await;
    let admin = other.client(DEFAULT_DB).await;
    ok(
        &admin,
        &format!(
            "RESTORE DATABASE pit FROM DISK = '{}' WITH NORECOVERY",
            disk(&full)
        ),
    )
    .await;
    ok(
        &admin,
        &format!(
            "RESTORE LOG pit FROM DISK = '{}' WITH NORECOVERY",
            disk(&log1)
        ),
    )
    .await;
    let stop = between.format("%Y-%m-%d %H:%M:%S%.6f+00");
    ok(
        &admin,
        &format!(
            "RESTORE LOG pit FROM DISK = '{}' WITH STOPAT = '{stop}', RECOVERY",
            disk(&log2)
        ),
    )
    .await;
    assert_eq!(
        ids(&other, "pit", "t").await,
        range(1..=30),
        "restored to {stop}: rows committed before it present, after it absent"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_of_a_missing_file_is_refused_with_58p01_and_leaves_nothing() {
    let server = TestServer::start().await;
    let admin = server.client(DEFAULT_DB).await;
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here.bak");
    assert_sqlstate(
        run(
            &admin,
            &format!("RESTORE DATABASE x FROM DISK = '{}'", disk(&missing)),
        )
        .await,
        &state("58P01"),
        "RESTORE from a missing file",
    );
    assert!(!database_names(&server).await.contains(&"x".to_string()));
    assert!(!server.data_dir().join("restoring").join("x").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_backup_is_refused_with_xx001_and_nothing_is_left_restoring() {
    let (server, _app, full, dir) = standalone_with_backup(50).await;
    let admin = server.client(DEFAULT_DB).await;
    let bytes = std::fs::read(&full).unwrap();
    let cut = dir.path().join("cut.bak");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let result = run(
        &admin,
        &format!(
            "RESTORE DATABASE x FROM DISK = '{}' WITH NORECOVERY",
            disk(&cut)
        ),
    )
    .await;
    let message = result.as_ref().err().map(error_text).unwrap_or_default();
    assert!(message.contains("truncated"), "{message}");
    assert_sqlstate(result, &state("XX001"), "RESTORE from a truncated file");
    assert!(!server.data_dir().join("restoring").join("x").exists());
    // The database takes sessions: nothing left it RESTORING.
    assert!(server.try_client("x").await.is_err());
    ok(
        &admin,
        &format!("RESTORE DATABASE x FROM DISK = '{}'", disk(&full)),
    )
    .await;
    assert_eq!(ids(&server, "x", "t").await, range(1..=50));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bit_flipped_backup_is_refused_with_xx001_by_restore_and_by_verifyonly() {
    let (server, _app, full, dir) = standalone_with_backup(200).await;
    let admin = server.client(DEFAULT_DB).await;
    let mut bytes = std::fs::read(&full).unwrap();
    let flipped = dir.path().join("flipped.bak");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(&flipped, &bytes).unwrap();
    for sql in [
        format!("RESTORE VERIFYONLY FROM DISK = '{}'", disk(&flipped)),
        format!("RESTORE DATABASE x FROM DISK = '{}'", disk(&flipped)),
    ] {
        let result = run(&admin, &sql).await;
        let message = result.as_ref().err().map(error_text).unwrap_or_default();
        assert!(message.contains("corrupt"), "{sql}: {message}");
        assert_sqlstate(result, &state("XX001"), &sql);
    }
    assert!(!database_names(&server).await.contains(&"x".to_string()));
    ok(
        &admin,
        &format!("RESTORE VERIFYONLY FROM DISK = '{}'", disk(&full)),
    )
    .await;
    ok(
        &admin,
        &format!("RESTORE DATABASE x FROM DISK = '{}'", disk(&full)),
    )
    .await;
    assert_eq!(ids(&server, "x", "t").await, range(1..=200));
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_into_a_name_that_is_not_a_database_name_is_refused_with_42602() {
    let (server, _app, full, _dir) = standalone_with_backup(5).await;
    let admin = server.client(DEFAULT_DB).await;
    for name in ["\"../escape\"", "\"a b\"", "[x/y]"] {
        let sql = format!(
            "RESTORE DATABASE {name} FROM DISK = '{}' WITH NORECOVERY",
            disk(&full)
        );
        assert_sqlstate(run(&admin, &sql).await, &state("42602"), &sql);
    }
    assert!(!server.data_dir().join("escape").exists());
    let restoring = server.data_dir().join("restoring");
    let left: Vec<_> = std::fs::read_dir(&restoring)
        .map(|d| d.collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "a refused restore left {left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_file_is_refused_with_22023_as_not_a_backup() {
    let (server, _app, _full, _dir) = standalone_with_backup(5).await;
    let admin = server.client(DEFAULT_DB).await;
    // A SQLite database file is a file of the right size and the wrong kind.
    let foreign = server.data_dir().join("databases").join("app.db");
    let result = run(
        &admin,
        &format!("RESTORE DATABASE x FROM DISK = '{}'", disk(&foreign)),
    )
    .await;
    let message = result.as_ref().err().map(error_text).unwrap_or_default();
    assert!(message.contains("not an availdb backup"), "{message}");
    assert_sqlstate(result, &state("22023"), "RESTORE from a SQLite file");
    assert!(!database_names(&server).await.contains(&"x".to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_backup_with_a_gap_is_refused_with_55000_and_the_chain_in_order_restores() {
    let (server, app, full, dir) = standalone_with_backup(10).await;
    let admin = server.client(DEFAULT_DB).await;
    let (log1, log2) = (dir.path().join("log1.bak"), dir.path().join("log2.bak"));
    insert(&app, 11..=20).await;
    ok(
        &admin,
        &format!("BACKUP LOG app TO DISK = '{}'", disk(&log1)),
    )
    .await;
    insert(&app, 21..=30).await;
    ok(
        &admin,
        &format!("BACKUP LOG app TO DISK = '{}'", disk(&log2)),
    )
    .await;
    let source_before = pages(&server, APP).await;

    ok(
        &admin,
        &format!(
            "RESTORE DATABASE x FROM DISK = '{}' WITH NORECOVERY",
            disk(&full)
        ),
    )
    .await;
    let result = run(
        &admin,
        &format!("RESTORE LOG x FROM DISK = '{}'", disk(&log2)),
    )
    .await;
    let message = result.as_ref().err().map(error_text).unwrap_or_default();
    assert!(message.contains("missing between them"), "{message}");
    assert_sqlstate(result, &state("55000"), "RESTORE LOG past a gap");
    // Still RESTORING, untouched by the refused log: the chain in order works.
    ok(
        &admin,
        &format!(
            "RESTORE LOG x FROM DISK = '{}' WITH NORECOVERY",
            disk(&log1)
        ),
    )
    .await;
    ok(
        &admin,
        &format!("RESTORE LOG x FROM DISK = '{}' WITH RECOVERY", disk(&log2)),
    )
    .await;
    assert_eq!(ids(&server, "x", "t").await, range(1..=30));
    if let Err(diff) = compare_pages(&source_before, &pages(&server, APP).await) {
        panic!("the source changed:\n{diff}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stopat_outside_the_backups_is_refused_with_22023_and_the_restore_goes_on() {
    let (server, app, full, dir) = standalone_with_backup(10).await;
    let admin = server.client(DEFAULT_DB).await;
    let log = dir.path().join("log.bak");
    insert(&app, 11..=20).await;
    ok(
        &admin,
        &format!("BACKUP LOG app TO DISK = '{}'", disk(&log)),
    )
    .await;
    ok(
        &admin,
        &format!(
            "RESTORE DATABASE x FROM DISK = '{}' WITH NORECOVERY",
            disk(&full)
        ),
    )
    .await;
    for stop in ["2001-01-01 00:00:00", "2999-01-01 00:00:00"] {
        let sql = format!(
            "RESTORE LOG x FROM DISK = '{}' WITH STOPAT = '{stop}', RECOVERY",
            disk(&log)
        );
        let result = run(&admin, &sql).await;
        let message = result.as_ref().err().map(error_text).unwrap_or_default();
        assert!(
            message.contains("outside what this backup can restore to"),
            "{sql}: {message}"
        );
        assert_sqlstate(result, &state("22023"), &sql);
    }
    let (_, full_end) = lsn_range(&admin, &full).await;
    let sql = format!(
        "RESTORE LOG x FROM DISK = '{}' WITH STOPATLSN = '{}', RECOVERY",
        disk(&log),
        full_end - 1
    );
    assert_sqlstate(run(&admin, &sql).await, &state("22023"), &sql);
    // Still RESTORING: sessions are refused with 55000 and say why.
    match server.try_client("x").await {
        Ok(_) => panic!("a RESTORING database took a session"),
        Err(e) => {
            assert!(error_text(&e).contains("RESTORING"), "{}", error_text(&e));
            assert_eq!(e.code(), Some(&state("55000")));
        }
    }
    ok(
        &admin,
        &format!("RESTORE LOG x FROM DISK = '{}' WITH RECOVERY", disk(&log)),
    )
    .await;
    assert_eq!(ids(&server, "x", "t").await, range(1..=20));
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_over_an_existing_database_needs_replace_and_leaves_the_source_untouched() {
    let (server, app, full, _dir) = standalone_with_backup(10).await;
    let admin = server.client(DEFAULT_DB).await;
    insert(&app, 11..=15).await;
    drop(app);
    let result = run(
        &admin,
        &format!("RESTORE DATABASE app FROM DISK = '{}'", disk(&full)),
    )
    .await;
    let message = result.as_ref().err().map(error_text).unwrap_or_default();
    assert!(message.contains("already exists"), "{message}");
    assert_sqlstate(result, &state("42P04"), "RESTORE over app without REPLACE");
    assert_eq!(
        ids(&server, APP, "t").await,
        range(1..=15),
        "the source changed"
    );
    ok(
        &admin,
        &format!(
            "RESTORE DATABASE app FROM DISK = '{}' WITH REPLACE",
            disk(&full)
        ),
    )
    .await;
    assert_eq!(ids(&server, APP, "t").await, range(1..=10));
    // The restored database takes writes and survives a restart.
    let app = server.client(APP).await;
    insert(&app, 100..=101).await;
    drop(app);
    let mut server = server;
    server.restart().await;
    let mut expected = range(1..=10);
    expected.extend([100, 101]);
    assert_eq!(ids(&server, APP, "t").await, expected);
}

/// Restarts `server` with `AVAILDB_CRASH_AT = point`, runs `sql` (the
/// process aborts at the point), waits for the exit, then restarts it
/// without the crash point.
async fn crash_during(server: &mut TestServer, point: &str, sql: &str) {
    server.set_env("AVAILDB_CRASH_AT", Some(point));
    server.restart().await;
    let admin = server.client(DEFAULT_DB).await;
    let result = run(&admin, sql).await;
    assert!(
        result.is_err(),
        "{sql} succeeded although {point} should abort the process"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while server.is_running() {
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not abort at {point}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.set_env("AVAILDB_CRASH_AT", None);
    server.restart().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_killed_midway_leaves_no_file_under_its_name_and_a_retry_works() {
    let (mut server, _app, _full, dir) = standalone_with_backup(300).await;
    let path = dir.path().join("again.bak");
    let sql = format!("BACKUP DATABASE app TO DISK = '{}'", disk(&path));
    crash_during(&mut server, "backup.pages_written", &sql).await;
    assert!(
        !path.exists(),
        "a backup killed midway left a file under its name"
    );
    let admin = server.client(DEFAULT_DB).await;
    ok(&admin, &sql).await;
    ok(
        &admin,
        &format!("RESTORE VERIFYONLY FROM DISK = '{}'", disk(&path)),
    )
    .await;
    ok(
        &admin,
        &format!("RESTORE DATABASE x FROM DISK = '{}'", disk(&path)),
    )
    .await;
    assert_eq!(ids(&server, "x", "t").await, range(1..=300));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_killed_midway_leaves_nothing_online_and_a_retry_works() {
    let (mut server, app, full, dir) = standalone_with_backup(100).await;
    let log = dir.path().join("log.bak");
    let admin = server.client(DEFAULT_DB).await;
    insert(&app, 101..=150).await;
    ok(
        &admin,
        &format!("BACKUP LOG app TO DISK = '{}'", disk(&log)),
    )
    .await;
    drop((app, admin));

    // Killed while building the copy: no database, nothing RESTORING.
    let restore_full = format!(
        "RESTORE DATABASE x FROM DISK = '{}' WITH NORECOVERY",
        disk(&full)
    );
    crash_during(&mut server, "restore.built", &restore_full).await;
    assert!(!database_names(&server).await.contains(&"x".to_string()));
    match server.try_client("x").await {
        Ok(_) => panic!("a half-restored database took a session"),
        Err(e) => assert_eq!(e.code(), Some(&state("3D000")), "{}", error_text(&e)),
    }
    let admin = server.client(DEFAULT_DB).await;
    ok(&admin, &restore_full).await;
    drop(admin);

    // Killed while writing a log backup's records: still RESTORING, and
    // RECOVERY waits for that log backup to be restored again.
    let restore_log = format!("RESTORE LOG x FROM DISK = '{}' WITH NORECOVERY", disk(&log));
    crash_during(&mut server, "restore.log_written", &restore_log).await;
    let admin = server.client(DEFAULT_DB).await;
    let result = run(&admin, "RESTORE DATABASE x WITH RECOVERY").await;
    let message = result.as_ref().err().map(error_text).unwrap_or_default();
    assert!(message.contains("interrupted"), "{message}");
    assert_sqlstate(
        result,
        &state("55000"),
        "RECOVERY after an interrupted RESTORE LOG",
    );
    ok(&admin, &restore_log).await;
    ok(&admin, "RESTORE DATABASE x WITH RECOVERY").await;
    assert_eq!(ids(&server, "x", "t").await, range(1..=150));
}

/// Polls `sys.fn_hadr_backup_is_preferred_replica('app')` on every node
/// until it answers `expected` (node order), at most 30 s.
async fn wait_preferred(group: &Group, expected: &[&str], what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut got = Vec::new();
        for node in &group.nodes {
            let client = node.client(DEFAULT_DB).await;
            let rows = ok(
                &client,
                "SELECT sys.fn_hadr_backup_is_preferred_replica('app')",
            )
            .await;
            got.push(rows[0][0].clone().unwrap_or_default());
        }
        if got == expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: fn_hadr_backup_is_preferred_replica answered {got:?}, expected {expected:?}\n{}",
            group.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_preference_and_priority_pick_one_replica_and_follow_a_failover() {
    let group = Group::start(3).await;
    let r1 = group.nodes[0].client(DEFAULT_DB).await;
    exec(
        &r1,
        "ALTER AVAILABILITY GROUP ag1 MODIFY REPLICA ON 'r3' WITH (BACKUP_PRIORITY = 80)",
        "priority",
    )
    .await;
    exec(
        &r1,
        "ALTER AVAILABILITY GROUP ag1 SET (AUTOMATED_BACKUP_PREFERENCE = SECONDARY_ONLY)",
        "preference",
    )
    .await;
    wait_preferred(
        &group,
        &["0", "0", "1"],
        "SECONDARY_ONLY, r3 has the highest priority",
    )
    .await;
    let shown = ok(
        &r1,
        "SELECT automated_backup_preference_desc FROM sys.availability_groups",
    )
    .await;
    assert_eq!(shown[0][0].as_deref(), Some("SECONDARY_ONLY"));
    exec(
        &r1,
        "ALTER AVAILABILITY GROUP ag1 MODIFY REPLICA ON 'r3' WITH (BACKUP_PRIORITY = 0)",
        "priority 0",
    )
    .await;
    wait_preferred(&group, &["0", "1", "0"], "priority 0 is never chosen").await;
    exec(
        &r1,
        "ALTER AVAILABILITY GROUP ag1 SET (AUTOMATED_BACKUP_PREFERENCE = PRIMARY)",
        "preference",
    )
    .await;
    wait_preferred(&group, &["1", "0", "0"], "PRIMARY").await;
    drop(r1);
    wait_failover_ready(&group, 0, &[1, 2]).await;
    if let Err((code, message)) = planned_failover(&group, 1).await {
        panic!(
            "planned failover to r2: {message} ({code})\n{}",
            group.logs()
        );
    }
    group.wait_takes_writes(1, Duration::from_secs(60)).await;
    wait_preferred(
        &group,
        &["0", "1", "0"],
        "PRIMARY follows the failover to r2",
    )
    .await;
}

/// `log_first_lsn` of `app` on `server` (`sys.databases`).
async fn log_first_lsn(server: &TestServer) -> u64 {
    let client = server.client(DEFAULT_DB).await;
    let rows = ok(
        &client,
        "SELECT log_first_lsn FROM sys.databases WHERE name = 'app'",
    )
    .await;
    rows[0][0].as_deref().unwrap().parse().unwrap()
}

/// Three endpoint nodes (no group yet) with `env`, and on r1 the database
/// `app` with table `t` holding ids 1..=50; r1's admin and app clients.
async fn three_nodes_with_app(env: &[(&str, &str)]) -> (Group, Client, Client) {
    let mut nodes = Vec::new();
    let mut endpoints = Vec::new();
    for i in 0..3 {
        let endpoint = free_port();
        let mut builder = TestServer::builder().replica(&name(i), endpoint);
        for (key, value) in env {
            builder = builder.env(key, value);
        }
        nodes.push(builder.start().await);
        endpoints.push(endpoint);
    }
    let group = Group {
        nodes,
        endpoints,
        spec: GroupSpec::default(),
        proxy: None,
        endpoint_hosts: vec!["127.0.0.1".to_string(); 3],
    };
    let r1 = group.nodes[0].client(DEFAULT_DB).await;
    exec(&r1, "CREATE DATABASE app", "r1").await;
    let app = group.nodes[0].client(APP).await;
    exec(
        &app,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
        "create t",
    )
    .await;
    insert(&app, 1..=50).await;
    (group, r1, app)
}

#[tokio::test(flavor = "multi_thread")]
async fn manual_seeding_a_replica_restored_with_norecovery_joins_without_a_full_image() {
    let (group, r1, app) = three_nodes_with_app(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let (full, log) = (dir.path().join("full.bak"), dir.path().join("log.bak"));
    ok(
        &r1,
        &format!("BACKUP DATABASE app TO DISK = '{}'", disk(&full)),
    )
    .await;
    insert(&app, 51..=60).await;
    ok(&r1, &format!("BACKUP LOG app TO DISK = '{}'", disk(&log))).await;
    let (_, restored_at) = lsn_range(&r1, &log).await;

    // r3 is seeded by hand: the full backup and the log, WITH NORECOVERY.
    let r3 = group.nodes[2].client(DEFAULT_DB).await;
    ok(
        &r3,
        &format!(
            "RESTORE DATABASE app FROM DISK = '{}' WITH NORECOVERY",
            disk(&full)
        ),
    )
    .await;
    ok(
        &r3,
        &format!(
            "RESTORE LOG app FROM DISK = '{}' WITH NORECOVERY",
            disk(&log)
        ),
    )
    .await;
    for i in 1..3 {
        let client = group.nodes[i].client(DEFAULT_DB).await;
        exec(&client, "ALTER AVAILABILITY GROUP ag1 JOIN", &name(i)).await;
    }
    exec(&r1, &group.create_statement(), "r1").await;
    group.wait_synchronized(&[1, 2], CATCH_UP_TIMEOUT).await;
    exec(
        &r3,
        "ALTER DATABASE app SET HADR AVAILABILITY GROUP = ag1",
        "r3",
    )
    .await;
    insert(&app, 61..=70).await;
    group.assert_page_identical("after manual seeding").await;
    assert_eq!(ids(&group.nodes[2], APP, "t").await, range(1..=70));
    // r3's log starts where its restore ended: the primary continued
    // there, sending neither a full image nor the log before it (r2, empty
    // when it joined, took the primary's whole log from LSN 0).
    assert!(restored_at > 0);
    assert_eq!(log_first_lsn(&group.nodes[2]).await, restored_at);
    assert_eq!(log_first_lsn(&group.nodes[1]).await, 0);
}

/// The primary's row for database app on `replica`: (state, last error).
async fn primary_row(group: &Group, replica: &str) -> (String, Option<String>) {
    let client = group.nodes[0].client(DEFAULT_DB).await;
    let rows = ok(
        &client,
        &format!(
            "SELECT synchronization_state_desc, last_error FROM sys.dm_hadr_database_replica_states \
             WHERE database_name = 'app' AND replica = '{replica}' AND NOT is_local"
        ),
    )
    .await;
    let row = rows
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no row for {replica}"));
    (row[0].clone().unwrap_or_default(), row[1].clone())
}

/// Waits until the primary says why `replica` gets nothing of app.
async fn wait_awaiting(group: &Group, replica: &str, says: &str) -> String {
    let deadline = std::time::Instant::now() + CATCH_UP_TIMEOUT;
    loop {
        let (state, error) = primary_row(group, replica).await;
        if let Some(error) = error.clone().filter(|e| e.contains(says)) {
            assert_eq!(state, "NOT SYNCHRONIZING", "{replica}: {error}");
            return error;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{replica} never showed \"{says}\" (state {state}, error {error:?})\n{}",
            group.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Rule: a replica with SEEDING_MODE = MANUAL is never sent a full image.
/// Without a copy, the primary says what to restore (and holds no log for
/// it); a copy restored there WITH NORECOVERY after it joined the group
/// joins with `SET HADR AVAILABILITY GROUP` and synchronizes from its LSN;
/// a restored copy older than the primary's log is refused with both LSNs,
/// and a newer backup restored over it (`WITH NORECOVERY, REPLACE`)
/// replaces it in place when it joins.
#[tokio::test(flavor = "multi_thread")]
async fn a_manual_seeding_replica_waits_for_a_restore_joins_after_it_and_a_copy_too_old_is_refused_with_its_lsns_and_replaced_by_a_newer_restore(
) {
    // Small segments: the log moves past an old backup soon.
    let (group, r1, app) = three_nodes_with_app(&[("AVAILDB_LOG_SEGMENT_BYTES", "262144")]).await;
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.bak");
    ok(
        &r1,
        &format!(
            "BACKUP DATABASE app TO DISK = '{}' WITH COPY_ONLY",
            disk(&old)
        ),
    )
    .await;
    let (_, old_end) = lsn_range(&r1, &old).await;

    let create = group.create_statement();
    let create = create
        .replace("'r2' WITH (", "'r2' WITH (SEEDING_MODE = MANUAL, ")
        .replace("'r3' WITH (", "'r3' WITH (SEEDING_MODE = MANUAL, ");
    for i in 1..3 {
        let client = group.nodes[i].client(DEFAULT_DB).await;
        exec(&client, "ALTER AVAILABILITY GROUP ag1 JOIN", &name(i)).await;
    }
    exec(&r1, &create, "r1").await;
    let modes = ok(
        &r1,
        "SELECT replica_server_name, seeding_mode_desc FROM sys.availability_replicas ORDER BY 1",
    )
    .await;
    assert_eq!(
        modes,
        [["r1", "AUTOMATIC"], ["r2", "MANUAL"], ["r3", "MANUAL"]]
            .map(|r| r.map(|v| Some(v.to_string())).to_vec())
    );
    for replica in ["r2", "r3"] {
        let why = wait_awaiting(&group, replica, "SEEDING_MODE is MANUAL").await;
        assert!(why.contains("restore it there WITH NORECOVERY"), "{why}");
    }
    for i in 1..3 {
        assert!(!database_names(&group.nodes[i])
            .await
            .contains(&APP.to_string()));
    }

    // r3: joining with nothing restored says what to do.
    let r3 = group.nodes[2].client(DEFAULT_DB).await;
    let join = "ALTER DATABASE app SET HADR AVAILABILITY GROUP = ag1";
    assert_sqlstate(
        run(&r3, join).await,
        &state("55000"),
        "join before a restore",
    );

    // r3: restored after joining the group, then joined.
    insert(&app, 51..=60).await;
    let fresh = dir.path().join("fresh.bak");
    ok(
        &r1,
        &format!(
            "BACKUP DATABASE app TO DISK = '{}' WITH COPY_ONLY",
            disk(&fresh)
        ),
    )
    .await;
    let (_, fresh_end) = lsn_range(&r1, &fresh).await;
    assert_sqlstate(
        run(
            &r3,
            &format!("RESTORE DATABASE app FROM DISK = '{}'", disk(&fresh)),
        )
        .await,
        &state("55000"),
        "RESTORE WITH RECOVERY of a group's database on a manual-seeding replica",
    );
    ok(
        &r3,
        &format!(
            "RESTORE DATABASE app FROM DISK = '{}' WITH NORECOVERY",
            disk(&fresh)
        ),
    )
    .await;
    ok(&r3, join).await;
    group.wait_synchronized(&[2], CATCH_UP_TIMEOUT).await;
    insert(&app, 61..=70).await;
    group
        .assert_page_identical_on(&[2], "after manual seeding")
        .await;
    assert_eq!(ids(&group.nodes[2], APP, "t").await, range(1..=70));
    assert_eq!(log_first_lsn(&group.nodes[2]).await, fresh_end);
    assert!(!group.nodes[2].log().contains("taking in a full image"));

    // The primary's log moves past the old backup (r2 holds none of it).
    exec(&app, "CREATE TABLE filler(pad BLOB)", "filler").await;
    let mut rounds = 0;
    while log_first_lsn(&group.nodes[0]).await <= old_end {
        rounds += 1;
        assert!(
            rounds <= 60,
            "the primary's log never moved past LSN {old_end}"
        );
        exec(
            &app,
            "INSERT INTO filler SELECT randomblob(1024) FROM generate_series(1, 1000)",
            "fill",
        )
        .await;
        exec(&app, "DELETE FROM filler", "empty").await;
    }
    let first = log_first_lsn(&group.nodes[0]).await;

    // r2: the old copy is refused with both LSNs, and nothing is sent.
    let r2 = group.nodes[1].client(DEFAULT_DB).await;
    ok(
        &r2,
        &format!(
            "RESTORE DATABASE app FROM DISK = '{}' WITH NORECOVERY",
            disk(&old)
        ),
    )
    .await;
    let refused = run(&r2, join).await;
    let message = match &refused {
        Err(e) => error_text(e),
        Ok(_) => String::new(),
    };
    assert_sqlstate(
        refused,
        &state("55000"),
        "join of a copy older than the log",
    );
    assert!(
        message.contains(&format!("ends at LSN {old_end}"))
            && message.contains("older than the primary's log"),
        "{message}"
    );
    let why = wait_awaiting(&group, "r2", "older than the primary's log").await;
    assert!(
        why.contains(&format!("ends at LSN {old_end}")) && why.contains("starts at LSN"),
        "{why} (first {first})"
    );
    assert!(!group.nodes[1].log().contains("taking in a full image"));
    assert!(
        why.contains("WITH NORECOVERY, REPLACE"),
        "the refusal says how to replace the copy: {why}"
    );

    // A newer backup restored over the refused copy replaces it in place.
    let newer = dir.path().join("newer.bak");
    ok(
        &r1,
        &format!(
            "BACKUP DATABASE app TO DISK = '{}' WITH COPY_ONLY",
            disk(&newer)
        ),
    )
    .await;
    let (_, newer_end) = lsn_range(&r1, &newer).await;
    assert_sqlstate(
        run(
            &r2,
            &format!(
                "RESTORE DATABASE app FROM DISK = '{}' WITH NORECOVERY",
                disk(&newer)
            ),
        )
        .await,
        &state("42P04"),
        "a restore over the refused copy without REPLACE",
    );
    ok(
        &r2,
        &format!(
            "RESTORE DATABASE app FROM DISK = '{}' WITH NORECOVERY, REPLACE",
            disk(&newer)
        ),
    )
    .await;
    if let Err(e) = run(&r2, join).await {
        panic!(
            "the join of the copy restored over the refused one: {}\n{}",
            error_text(&e),
            group.logs()
        );
    }
    group.wait_synchronized(&[1, 2], CATCH_UP_TIMEOUT).await;
    group
        .assert_page_identical_on(&[1], "after replacing the refused copy")
        .await;
    assert_eq!(ids(&group.nodes[1], APP, "t").await, range(1..=70));
    assert_eq!(log_first_lsn(&group.nodes[1]).await, newer_end);
    assert!(!group.nodes[1].log().contains("taking in a full image"));

    // Switched to AUTOMATIC (the refusal's other way out), the replica's
    // links restart and it stays synchronized from its copy: nothing to seed.
    exec(
        &r1,
        "ALTER AVAILABILITY GROUP ag1 MODIFY REPLICA ON 'r2' WITH (SEEDING_MODE = AUTOMATIC)",
        "r1",
    )
    .await;
    insert(&app, 71..=75).await;
    group.wait_synchronized(&[1, 2], CATCH_UP_TIMEOUT).await;
    group.wait_caught_up(&[1, 2], CATCH_UP_TIMEOUT).await;
    assert_eq!(ids(&group.nodes[1], APP, "t").await, range(1..=75));
    assert!(!group.nodes[1].log().contains("taking in a full image"));
}

/// A session on the default database whose notices (`STATS` steps, the
/// paced line) arrive on the returned channel.
async fn client_with_notices(
    server: &TestServer,
) -> (Client, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (client, mut connection) =
        tokio_postgres::connect(&server.conn_string(DEFAULT_DB), tokio_postgres::NoTls)
            .await
            .expect("connect");
    let (notices_tx, notices) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = futures::StreamExt::next(&mut stream).await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notice(n)) => {
                    let _ = notices_tx.send(n.message().to_string());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    (client, notices)
}

/// Runs `sql` (at most 60 s) and returns every notice that came with it
/// and, of those, the "p percent processed." steps.
async fn run_with_notices(
    client: &Client,
    notices: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    sql: &str,
) -> (Vec<String>, Vec<String>) {
    tokio::time::timeout(Duration::from_secs(60), client.batch_execute(sql))
        .await
        .unwrap_or_else(|_| panic!("{sql}: no answer within 60 s"))
        .unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e)));
    let mut got = Vec::new();
    while let Ok(Some(n)) = tokio::time::timeout(Duration::from_millis(500), notices.recv()).await {
        got.push(n);
    }
    let steps = got
        .iter()
        .filter(|n| n.ends_with("percent processed."))
        .cloned()
        .collect();
    (got, steps)
}

/// The newest `operation` of `sys.dm_operation_status` is COMPLETED at 100 %.
async fn assert_completed_at_100(client: &Client, operation: &str) {
    let rows = ok(
        client,
        &format!(
            "SELECT operation, state_desc, percent_complete FROM sys.dm_operation_status \
             WHERE operation = '{operation}' ORDER BY operation_id DESC LIMIT 1"
        ),
    )
    .await;
    assert_eq!(
        rows,
        [[
            Some(operation.to_string()),
            Some("COMPLETED".into()),
            Some("100".into())
        ]]
    );
}

/// Rule: `BACKUP … WITH STATS = n` tells "p percent processed." at every
/// n percent, in order, each once, ending at 100, as the backup goes (the
/// notices are sent while it runs, not with its reply); the backup is a
/// long operation of `sys.dm_operation_status` (100 percent when done) and
/// of `sys.dm_exec_requests` while it runs.
#[tokio::test(flavor = "multi_thread")]
async fn backup_and_restore_with_stats_report_each_step_and_show_as_operations() {
    let (server, _app, _full, dir) = standalone_with_backup(2000).await;
    let (client, mut notices) = client_with_notices(&server).await;
    let path = dir.path().join("stats.bak");
    let sql = format!(
        "BACKUP DATABASE app TO DISK = '{}' WITH STATS = 30",
        disk(&path)
    );
    let (got, steps) = run_with_notices(&client, &mut notices, &sql).await;
    assert_eq!(
        steps,
        [
            "30 percent processed.",
            "60 percent processed.",
            "90 percent processed.",
            "100 percent processed."
        ],
        "all notices: {got:?}"
    );
    assert!(
        got.last()
            .is_some_and(|n| n.starts_with("BACKUP DATABASE successfully processed")),
        "{got:?}"
    );
    assert_completed_at_100(&client, "BACKUP DATABASE").await;
    assert!(ok(&client, "SELECT * FROM sys.dm_exec_requests")
        .await
        .is_empty());

    // RESTORE … WITH STATS reports as it checks and writes the file.
    let sql = format!(
        "RESTORE DATABASE copy FROM DISK = '{}' WITH STATS = 50",
        disk(&path)
    );
    let (got, steps) = run_with_notices(&client, &mut notices, &sql).await;
    assert_eq!(
        steps,
        ["50 percent processed.", "100 percent processed."],
        "all notices: {got:?}"
    );
    assert_completed_at_100(&client, "RESTORE DATABASE").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_backup_and_restore_commands_run_on_a_node_or_offline_on_its_data_directory() {
    let (mut server, _app, _full, dir) = standalone_with_backup(40).await;
    let file = dir.path().join("cli.bak");
    let port = server.port().to_string();
    let run = |args: Vec<String>| {
        let mut cmd = std::process::Command::new(common::availdb_bin());
        cmd.args(args);
        common::run_bounded(&mut cmd, Duration::from_secs(60))
    };
    let path = file.display().to_string();
    let out = run([
        "backup",
        "app",
        "--to",
        &path,
        "--compression",
        "--checksum",
        "--port",
        &port,
    ]
    .map(String::from)
    .to_vec());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "availdb backup: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("BACKUP DATABASE successfully processed"),
        "{stdout}"
    );
    let out = run(["restore", "y", "--from", &path, "--port", &port]
        .map(String::from)
        .to_vec());
    assert!(
        out.status.success(),
        "availdb restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ids(&server, "y", "t").await, range(1..=40));
    // A refusal is the command's error, with the node's hint.
    let out = run(["restore", "y", "--from", &path, "--port", &port]
        .map(String::from)
        .to_vec());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("42P04") && stderr.contains("REPLACE"),
        "{stderr}"
    );

    // Offline, on the data directory: refused while the node runs there.
    let data = server.data_dir().display().to_string();
    let offline = dir.path().join("offline.bak").display().to_string();
    let backup_offline = ["backup", "app", "--to", &offline, "--data-dir", &data]
        .map(String::from)
        .to_vec();
    let out = run(backup_offline.clone());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("in use by another availdb process"),
        "{stderr}"
    );
    server.sigterm().await;
    let out = run(backup_offline);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("(offline) processed"),
        "offline backup: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(["restore", "z", "--from", &offline, "--data-dir", &data]
        .map(String::from)
        .to_vec());
    assert!(
        out.status.success(),
        "offline restore: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    server.restart().await;
    assert_eq!(ids(&server, "z", "t").await, range(1..=40));
    let client = server.client(DEFAULT_DB).await;
    let history = ok(
        &client,
        "SELECT replica_name FROM sys.backup_history ORDER BY backup_start_date DESC LIMIT 1",
    )
    .await;
    assert_eq!(history[0][0].as_deref(), Some("offline"));
}

/// A tmpfs the test mounts itself (needs root), unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mb: u32) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "availdb-test"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .output();
    }
}

/// Fills the file system holding `dir` up to `leave` free bytes with one
/// file, which it returns.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    let c = std::ffi::CString::new(dir.display().to_string()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    let free = st.f_bavail as u64 * st.f_frsize as u64;
    let filler = dir.join("filler");
    let f = std::fs::File::create(&filler).unwrap();
    let block = vec![0xa5u8; 1 << 16];
    let mut written = 0u64;
    while written + leave + block.len() as u64 <= free {
        std::io::Write::write_all(&mut &f, &block).unwrap();
        written += block.len() as u64;
    }
    f.sync_all().unwrap();
    filler
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_during_backup_or_restore_fails_with_58030_leaves_nothing_and_a_retry_works() {
    // No background proofs: their scratch copies would race with the
    // filled data directory.
    let server = TestServer::builder()
        .tmpfs_data(64)
        .arg("--backup-verify-kib-per-s")
        .arg("0")
        .start()
        .await;
    let admin = server.client(DEFAULT_DB).await;
    exec(&admin, "CREATE DATABASE app", "create app").await;
    let app = server.client(APP).await;
    exec(
        &app,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)",
        "create t",
    )
    .await;
    exec(
        &app,
        "INSERT INTO t(id, v) SELECT value, randomblob(1000) FROM generate_series(1, 6000)",
        "6 MB of rows",
    )
    .await;

    // BACKUP to a disk with 2 MiB: refused, nothing under the name.
    let small = SmallDisk::mount(2);
    let full_on_small = small.dir.path().join("full.bak");
    let sql = format!("BACKUP DATABASE app TO DISK = '{}'", disk(&full_on_small));
    let result = run(&admin, &sql).await;
    let message = result.as_ref().err().map(error_text).unwrap_or_default();
    assert!(message.to_lowercase().contains("no space"), "{message}");
    assert_sqlstate(result, &state("58030"), &sql);
    let left: Vec<_> = std::fs::read_dir(small.dir.path()).unwrap().collect();
    assert!(left.is_empty(), "a failed backup left {left:?}");
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.bak");
    ok(
        &admin,
        &format!("BACKUP DATABASE app TO DISK = '{}'", disk(&full)),
    )
    .await;

    // RESTORE onto a full data directory: refused, nothing RESTORING.
    let filler = fill(&server.data_dir(), 1 << 20);
    let sql = format!(
        "RESTORE DATABASE x FROM DISK = '{}' WITH NORECOVERY",
        disk(&full)
    );
    let result = run(&admin, &sql).await;
    let message = result.as_ref().err().map(error_text).unwrap_or_default();
    assert!(message.to_lowercase().contains("no space"), "{message}");
    assert_sqlstate(result, &state("58030"), &sql);
    let restoring = server.data_dir().join("restoring");
    let left: Vec<_> = std::fs::read_dir(&restoring)
        .map(|d| d.collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "a failed restore left {left:?}");
    std::fs::remove_file(filler).unwrap();
    ok(&admin, &sql).await;
    ok(&admin, "RESTORE DATABASE x WITH RECOVERY").await;
    assert_eq!(ids(&server, "x", "t").await.len(), 6000);
    drop(small);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_backup_on_a_writable_database_under_writes_restores_to_a_consistent_prefix() {
    let server = TestServer::start().await;
    let admin = server.client(DEFAULT_DB).await;
    exec(&admin, "CREATE DATABASE app", "create app").await;
    let app = server.client(APP).await;
    exec(
        &app,
        "CREATE TABLE load(id INTEGER PRIMARY KEY, pad BLOB)",
        "create load",
    )
    .await;
    let load = InsertLoad::start(server.client(APP).await, "load", 1, 100_000);
    load.wait_acked(300, Duration::from_secs(60)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut bounds = Vec::new();
    // Several backups while the load runs, each restored to a prefix.
    for i in 0..3 {
        let path = dir.path().join(format!("full{i}.bak"));
        let before = load.acked_count() as i64;
        ok(
            &admin,
            &format!(
                "BACKUP DATABASE app TO DISK = '{}' WITH COMPRESSION",
                disk(&path)
            ),
        )
        .await;
        let after = load.acked_count() as i64;
        bounds.push((path, before, after));
        load.wait_acked(after as usize + 50, Duration::from_secs(60))
            .await;
    }
    let report = load.finish().await;
    assert!(
        report.failed.is_none(),
        "the load failed: {:?}",
        report.failed
    );
    for (i, (path, before, after)) in bounds.iter().enumerate() {
        let db = format!("copy{i}");
        ok(
            &admin,
            &format!("RESTORE DATABASE {db} FROM DISK = '{}'", disk(path)),
        )
        .await;
        let restored = ids(&server, &db, "load").await;
        let k = restored.len() as i64;
        assert_eq!(
            restored,
            range(1..=k),
            "backup {i}: the restored rows are not a prefix"
        );
        assert!(
            k >= *before && k <= after + 1,
            "backup {i} holds {k} rows; {before} were acknowledged before BACKUP and {after} when it returned"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_statements_work_over_the_extended_protocol() {
    let (server, _app, full, dir) = standalone_with_backup(5).await;
    let admin = server.client(DEFAULT_DB).await;
    let rows = admin
        .query(
            &format!("RESTORE HEADERONLY FROM DISK = '{}'", disk(&full)),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("HEADERONLY: {}", error_text(&e)));
    assert_eq!(rows[0].get::<_, String>("backup_type"), "DATABASE");
    assert_eq!(rows[0].get::<_, String>("database_name"), "app");
    assert!(rows[0].get::<_, bool>("is_compressed"));
    assert!(rows[0].get::<_, i64>("last_lsn") >= rows[0].get::<_, i64>("first_lsn"));
    let log = dir.path().join("log.bak");
    admin
        .execute(&format!("BACKUP LOG app TO DISK = '{}'", disk(&log)), &[])
        .await
        .unwrap_or_else(|e| panic!("BACKUP LOG: {}", error_text(&e)));
    let preferred = admin
        .query_one("SELECT sys.fn_hadr_backup_is_preferred_replica('app')", &[])
        .await
        .unwrap_or_else(|e| panic!("fn_hadr_backup_is_preferred_replica: {}", error_text(&e)));
    assert_eq!(
        preferred.get::<_, i32>(0),
        1,
        "a database outside any group backs up here"
    );
}

/// `(log_first_lsn, log_reuse_wait_desc)` of `app` on `server`.
async fn log_state(server: &TestServer) -> (u64, String) {
    let client = server.client(DEFAULT_DB).await;
    let rows = ok(
        &client,
        "SELECT log_first_lsn, log_reuse_wait_desc FROM sys.databases WHERE name = 'app'",
    )
    .await;
    (
        rows[0][0].as_deref().unwrap().parse().unwrap(),
        rows[0][1].clone().unwrap_or_default(),
    )
}

/// Writes about `mb` MiB to `t` in transactions of about 1 MiB, ids from
/// `first`; returns the next free id.
async fn write_mb(client: &Client, first: i64, mb: i64) -> i64 {
    let mut id = first;
    for _ in 0..mb {
        exec(
            client,
            &format!(
                "INSERT INTO t(id, v) SELECT value, randomblob(3000) FROM generate_series({id}, {})",
                id + 339
            ),
            "1 MiB of rows",
        )
        .await;
        id += 340;
    }
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_chain_keeps_the_log_until_the_next_log_backup() {
    let mut server = TestServer::start().await;
    server.set_env("AVAILDB_LOG_SEGMENT_BYTES", Some("65536"));
    server.restart().await;
    let admin = server.client(DEFAULT_DB).await;
    exec(&admin, "CREATE DATABASE app", "create app").await;
    let app = server.client(APP).await;
    exec(
        &app,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)",
        "create t",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (full, log1, log2) = (
        dir.path().join("full.bak"),
        dir.path().join("log1.bak"),
        dir.path().join("log2.bak"),
    );
    ok(
        &admin,
        &format!("BACKUP DATABASE app TO DISK = '{}'", disk(&full)),
    )
    .await;
    let (_, full_end) = lsn_range(&admin, &full).await;
    // Checkpoints come after 4000 WAL frames (16 MiB): write past two.
    let next = write_mb(&app, 1, 40).await;
    let (first, wait) = log_state(&server).await;
    assert!(
        first < full_end,
        "the log was truncated to {first}, past the chain's end {full_end}"
    );
    assert_eq!(wait, "LOG_BACKUP");
    ok(
        &admin,
        &format!("BACKUP LOG app TO DISK = '{}'", disk(&log1)),
    )
    .await;
    let (_, log1_end) = lsn_range(&admin, &log1).await;
    let next = write_mb(&app, next, 40).await;
    let (first, _) = log_state(&server).await;
    assert!(
        first > full_end,
        "after the log backup the log was not truncated: it starts at {first}"
    );
    assert!(
        first < log1_end,
        "the log was truncated to {first}, past the chain's end {log1_end}"
    );
    // The hold survives a restart (the node's backup history).
    server.restart().await;
    let app = server.client(APP).await;
    let next = write_mb(&app, next, 40).await;
    let (first, _) = log_state(&server).await;
    assert!(
        first < log1_end,
        "after a restart the log was truncated to {first}, past {log1_end}"
    );
    let admin = server.client(DEFAULT_DB).await;
    ok(
        &admin,
        &format!("BACKUP LOG app TO DISK = '{}'", disk(&log2)),
    )
    .await;
    ok(
        &admin,
        &format!(
            "RESTORE DATABASE x FROM DISK = '{}' WITH NORECOVERY",
            disk(&full)
        ),
    )
    .await;
    ok(
        &admin,
        &format!(
            "RESTORE LOG x FROM DISK = '{}' WITH NORECOVERY",
            disk(&log1)
        ),
    )
    .await;
    ok(
        &admin,
        &format!("RESTORE LOG x FROM DISK = '{}' WITH RECOVERY", disk(&log2)),
    )
    .await;
    assert_eq!(ids(&server, "x", "t").await, range(1..=next - 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_chain_holds_the_log_on_every_replica_so_log_backups_continue_across_a_failover() {
    let group = Group::start_with(GroupSpec {
        replicas: 2,
        // Small segments: a log not held is truncated soon.
        env: vec![("AVAILDB_LOG_SEGMENT_BYTES", "65536")],
        ..GroupSpec::default()
    })
    .await;
    let app = group.nodes[0].client(APP).await;
    exec(
        &app,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)",
        "create t",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (full, log1, log2) = (
        dir.path().join("full.bak"),
        dir.path().join("log1.bak"),
        dir.path().join("log2.bak"),
    );
    let admin1 = group.nodes[0].client(DEFAULT_DB).await;
    ok(
        &admin1,
        &format!("BACKUP DATABASE app TO DISK = '{}'", disk(&full)),
    )
    .await;
    let (_, full_end) = lsn_range(&admin1, &full).await;
    // Checkpoints come after 4000 WAL frames (16 MiB): write past two.
    let next = write_mb(&app, 1, 40).await;
    group.wait_caught_up(&[1], CATCH_UP_TIMEOUT).await;
    let (first, wait) = log_state(&group.nodes[1]).await;
    assert!(
        first < full_end,
        "the secondary truncated its log to {first}, past the chain's end {full_end}: a failover now would break the chain"
    );
    assert_eq!(wait, "LOG_BACKUP", "the secondary's log_reuse_wait_desc");

    // A log backup on the secondary moves the hold on the primary too.
    let admin2 = group.nodes[1].client(DEFAULT_DB).await;
    ok(
        &admin2,
        &format!("BACKUP LOG app TO DISK = '{}'", disk(&log1)),
    )
    .await;
    let (log1_first, log1_end) = lsn_range(&admin2, &log1).await;
    assert!(
        log1_first <= full_end,
        "the secondary's log backup starts at {log1_first}, after the chain's end {full_end}"
    );
    let next = write_mb(&app, next, 40).await;
    let (first, _) = log_state(&group.nodes[0]).await;
    assert!(
        first > full_end,
        "after the secondary's log backup the primary still keeps its log from {first}, before {full_end}"
    );
    assert!(
        first < log1_end,
        "the primary truncated its log to {first}, past the chain's end {log1_end}"
    );
    drop((app, admin1, admin2));

    // After a failover the former primary, now a secondary, continues the
    // chain from the last log backup, which it did not take.
    wait_failover_ready(&group, 0, &[1]).await;
    if let Err((code, message)) = planned_failover(&group, 1).await {
        panic!(
            "planned failover to r2: {message} ({code})\n{}",
            group.logs()
        );
    }
    group.wait_takes_writes(1, Duration::from_secs(60)).await;
    let app = group.nodes[1].client(APP).await;
    let next = write_mb(&app, next, 40).await;
    group.wait_caught_up(&[0], CATCH_UP_TIMEOUT).await;
    let admin1 = group.nodes[0].client(DEFAULT_DB).await;
    ok(
        &admin1,
        &format!("BACKUP LOG app TO DISK = '{}'", disk(&log2)),
    )
    .await;
    let (log2_first, _) = lsn_range(&admin1, &log2).await;
    assert!(
        log2_first <= log1_end,
        "the log backup after the failover starts at {log2_first}, after the chain's end {log1_end}"
    );

    let other = TestServer::start().await;
    let admin = other.client(DEFAULT_DB).await;
    for (path, how) in [
        (&full, "DATABASE x FROM DISK = '{}' WITH NORECOVERY"),
        (&log1, "LOG x FROM DISK = '{}' WITH NORECOVERY"),
        (&log2, "LOG x FROM DISK = '{}' WITH RECOVERY"),
    ] {
        ok(
            &admin,
            &format!("RESTORE {}", how.replace("{}", &disk(path))),
        )
        .await;
    }
    assert_eq!(ids(&other, "x", "t").await, range(1..=next - 1));
}

/// `(device, state, desc, restorable_lsn, last_lsn)` of every backup on
/// `server`, once no proof is PENDING (bounded).
async fn proofs(server: &TestServer) -> Vec<(String, String, String, Option<u64>, u64)> {
    let client = server.client(DEFAULT_DB).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let rows = ok(
            &client,
            "SELECT physical_device_name, verification_state, verification_desc, restorable_lsn, last_lsn
             FROM sys.backup_history ORDER BY backup_start_date",
        )
        .await;
        let rows: Vec<_> = rows
            .into_iter()
            .map(|r| {
                (
                    r[0].clone().unwrap(),
                    r[1].clone().unwrap(),
                    r[2].clone().unwrap_or_default(),
                    r[3].as_deref().map(|v| v.parse().unwrap()),
                    r[4].as_deref().unwrap().parse().unwrap(),
                )
            })
            .collect();
        if rows.iter().all(|r| r.1 != "PENDING") {
            return rows;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "backups still not proven after 120 s: {rows:?}\n{}",
            server.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The value of the `/metrics` sample `name{labels}` on `server`.
async fn metric(server: &TestServer, sample: &str) -> Option<f64> {
    let answer = availdb::traffic::http::request(
        &format!("127.0.0.1:{}", server.http_port()),
        "GET",
        "/metrics",
        None,
        Duration::from_secs(10),
    )
    .await
    .expect("GET /metrics");
    let text = String::from_utf8_lossy(&answer.body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_backup_is_restored_in_the_background_and_one_that_does_not_restore_is_reported() {
    let server = TestServer::start().await;
    let admin = server.client(DEFAULT_DB).await;
    exec(&admin, "CREATE DATABASE app", "create app").await;
    let app = server.client(APP).await;
    exec(
        &app,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)",
        "create t",
    )
    .await;
    exec(&app, "CREATE INDEX t_v ON t(v)", "index").await;
    let next = write_mb(&app, 1, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let (full, log1, log2) = (
        dir.path().join("full.bak"),
        dir.path().join("log1.bak"),
        dir.path().join("log2.bak"),
    );
    ok(
        &admin,
        &format!(
            "BACKUP DATABASE app TO DISK = '{}' WITH COMPRESSION",
            disk(&full)
        ),
    )
    .await;
    let next = write_mb(&app, next, 1).await;
    ok(
        &admin,
        &format!("BACKUP LOG app TO DISK = '{}'", disk(&log1)),
    )
    .await;
    let rows = proofs(&server).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (device, state, desc, restorable, last) in &rows {
        assert_eq!(state, "VERIFIED", "{device}: {desc}");
        assert_eq!(
            *restorable,
            Some(*last),
            "{device} restores to the LSN it was taken at"
        );
    }
    assert!(
        rows[1].2.contains("2 backup file(s)"),
        "the log backup is proven with the full backup before it: {}",
        rows[1].2
    );
    assert_eq!(
        metric(&server, "availdb_backup_restorable_lsn{database=\"app\"}").await,
        Some(rows[1].4 as f64),
        "the newest verified restorable point is a metric"
    );

    // The full backup is damaged after it was proven: the next log
    // backup's chain does not restore, and says why.
    let mut bytes = std::fs::read(&full).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&full, &bytes).unwrap();
    write_mb(&app, next, 1).await;
    ok(
        &admin,
        &format!("BACKUP LOG app TO DISK = '{}'", disk(&log2)),
    )
    .await;
    let rows = proofs(&server).await;
    let (device, state, desc, restorable, _) = &rows[2];
    assert_eq!(device, &disk(&log2));
    assert_eq!(
        state, "FAILED",
        "a chain with a damaged full backup: {desc}"
    );
    assert!(
        desc.contains(&disk(&full)),
        "the failure names the damaged file: {desc}"
    );
    assert_eq!(*restorable, None);
    assert_eq!(rows[0].1, "VERIFIED", "an earlier outcome stays as it was");
    assert_eq!(
        metric(&server, "availdb_backup_proofs_failed{database=\"app\"}").await,
        Some(1.0)
    );
    assert!(
        !server.data_dir().join("backup").join("proof").exists(),
        "the scratch copy is removed"
    );
}

/// How many backups of `app` `server`'s history holds.
async fn backups_taken(server: &TestServer) -> usize {
    let client = server.client(DEFAULT_DB).await;
    ok(
        &client,
        "SELECT backup_id FROM sys.backup_history WHERE database_name = 'app'",
    )
    .await
    .len()
}

/// Waits (at most 60 s) until `server` has taken at least `n` backups.
async fn wait_backups(group: &Group, i: usize, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while backups_taken(&group.nodes[i]).await < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{} took fewer than {n} scheduled backups in 60 s\n{}",
            name(i),
            group.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_schedule_runs_only_on_the_preferred_replica_and_follows_a_failover() {
    let dir = tempfile::tempdir().unwrap();
    // Every replica has the same schedule and writes to the same directory.
    let schedule = format!("database=app,kind=log,every=1s,to={}", dir.path().display());
    let group = Group::start_with(GroupSpec {
        replicas: 2,
        args: vec!["--backup-schedule".into(), schedule],
        ..GroupSpec::default()
    })
    .await;
    let r1 = group.nodes[0].client(DEFAULT_DB).await;
    exec(
        &r1,
        "ALTER AVAILABILITY GROUP ag1 SET (AUTOMATED_BACKUP_PREFERENCE = SECONDARY_ONLY)",
        "preference",
    )
    .await;
    wait_preferred(&group, &["0", "1"], "SECONDARY_ONLY: r2").await;
    wait_backups(&group, 1, 3).await;
    assert_eq!(
        backups_taken(&group.nodes[0]).await,
        0,
        "the primary is not the preferred replica and took none"
    );
    let files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        files
            .iter()
            .all(|f| f.starts_with("app-log-") && f.ends_with("-r2.bak")),
        "{files:?}"
    );
    drop(r1);

    wait_failover_ready(&group, 0, &[1]).await;
    if let Err((code, message)) = planned_failover(&group, 1).await {
        panic!(
            "planned failover to r2: {message} ({code})\n{}",
            group.logs()
        );
    }
    group.wait_takes_writes(1, Duration::from_secs(60)).await;
    wait_preferred(&group, &["1", "0"], "SECONDARY_ONLY after the failover: r1").await;
    wait_backups(&group, 0, 1).await;
    let r2_before = backups_taken(&group.nodes[1]).await;
    wait_backups(&group, 0, 3).await;
    assert_eq!(
        backups_taken(&group.nodes[1]).await,
        r2_before,
        "r2, now the primary, stopped taking the scheduled backups"
    );
}

/// An S3-compatible object store on loopback (moto's server, from PyPI),
/// stopped on drop.
struct ObjectStore {
    child: std::process::Child,
    port: u16,
}

impl ObjectStore {
    async fn start() -> ObjectStore {
        let port = free_port();
        let child = std::process::Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "`moto_server` cannot be run: {e}\nThis test needs an S3-compatible store. Run the tests with scripts/test, which installs it in .venv/, or: python3 -m pip install \"moto[server]\""
                )
            });
        let store = ObjectStore { child, port };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server did not listen on port {port} within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        store
    }

    /// Creates a bucket (moto takes unsigned requests).
    async fn create_bucket(&self, name: &str) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        let request = format!(
            "PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        s.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "PUT /{name}: {answer}");
    }

    /// A node whose environment points at this store.
    fn node(&self) -> common::Builder {
        TestServer::builder()
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT", &format!("http://127.0.0.1:{}", self.port))
            .env("AWS_ALLOW_HTTP", "true")
    }
}

impl Drop for ObjectStore {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The files left in a node's backup staging folder once its background
/// proofs are done: a proof downloads a URL backup into the same folder
/// while it runs (and removes its copy when it ends), so a count taken
/// right after a BACKUP can see the proof's copy. Waits up to 60 s for the
/// folder to empty; returns what is left then.
async fn staging_files_once_proofs_end(staging: &std::path::Path) -> usize {
    let left = || std::fs::read_dir(staging).map(|d| d.count()).unwrap_or(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while left() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    left()
}

#[tokio::test(flavor = "multi_thread")]
async fn backups_to_an_s3_url_restore_verify_and_are_proven_and_a_missing_object_or_bucket_is_a_clear_error(
) {
    let store = ObjectStore::start().await;
    store.create_bucket("backups").await;
    let server = store.node().start().await;
    let admin = server.client(DEFAULT_DB).await;
    exec(&admin, "CREATE DATABASE app", "create app").await;
    let app = server.client(APP).await;
    exec(
        &app,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
        "create t",
    )
    .await;
    insert(&app, 1..=50).await;
    ok(
        &admin,
        "BACKUP DATABASE app TO URL = 's3://backups/app/full.bak' WITH COMPRESSION, CHECKSUM",
    )
    .await;
    insert(&app, 51..=80).await;
    ok(
        &admin,
        "BACKUP LOG app TO URL = 's3://backups/app/log1.bak'",
    )
    .await;
    let staging = server.data_dir().join("backup").join("staging");
    assert_eq!(
        staging_files_once_proofs_end(&staging).await,
        0,
        "the staging files are removed"
    );

    ok(
        &admin,
        "RESTORE VERIFYONLY FROM URL = 's3://backups/app/full.bak'",
    )
    .await;
    let header = ok(
        &admin,
        "RESTORE HEADERONLY FROM URL = 's3://backups/app/log1.bak'",
    )
    .await;
    assert_eq!(header.len(), 1, "{header:?}");
    ok(
        &admin,
        "RESTORE DATABASE x FROM URL = 's3://backups/app/full.bak' WITH NORECOVERY",
    )
    .await;
    ok(
        &admin,
        "RESTORE LOG x FROM URL = 's3://backups/app/log1.bak' WITH RECOVERY",
    )
    .await;
    assert_eq!(ids(&server, "x", "t").await, range(1..=80));

    assert_sqlstate(
        run(
            &admin,
            "RESTORE DATABASE y FROM URL = 's3://backups/app/none.bak'",
        )
        .await,
        &state("58P01"),
        "RESTORE of a missing object",
    );
    assert!(!database_names(&server).await.contains(&"y".to_string()));
    assert_sqlstate(
        run(
            &admin,
            "BACKUP DATABASE app TO URL = 's3://no-such-bucket/a.bak'",
        )
        .await,
        &state("58030"),
        "BACKUP to a bucket that does not exist",
    );
    assert_sqlstate(
        run(&admin, "BACKUP DATABASE app TO URL = 'gs://b/a.bak'").await,
        &state("22023"),
        "BACKUP to a store that is not S3",
    );
    assert_eq!(
        staging_files_once_proofs_end(&staging).await,
        0,
        "a failed upload leaves no staging file"
    );
    // Each failed one ended: the failed download and upload are FAILED, the
    // unusable destination was never started, none is left IN_PROGRESS.
    let operations = ok(
        &admin,
        "SELECT operation, state_desc FROM sys.dm_operation_status \
         WHERE state_desc <> 'COMPLETED' ORDER BY operation_id",
    )
    .await;
    let failed = |op: &str| vec![Some(op.to_string()), Some("FAILED".to_string())];
    assert_eq!(
        operations,
        [failed("RESTORE DATABASE"), failed("BACKUP DATABASE")],
        "{operations:?}"
    );

    let rows = proofs(&server).await;
    assert_eq!(
        rows.iter()
            .map(|r| (r.0.as_str(), r.1.as_str()))
            .collect::<Vec<_>>(),
        [
            ("s3://backups/app/full.bak", "VERIFIED"),
            ("s3://backups/app/log1.bak", "VERIFIED")
        ],
        "the history has the URLs, the failed backup is not there, and both objects were downloaded and proven: {rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limited_backup_still_completes_and_its_chain_restores_page_identical() {
    // 256 KiB/s against about 0.8 MB of pages and 0.4 MB of log (its last
    // transaction) in the full backup, 0.3 MB of log in the log backup:
    // the bucket (one second of reading) runs dry in both, so both wait
    // for it, and the full backup reads for a few seconds.
    let server = TestServer::builder()
        .arg("--backup-kib-per-s")
        .arg("256")
        .start()
        .await;
    let admin = server.client(DEFAULT_DB).await;
    exec(&admin, "CREATE DATABASE app", "create app").await;
    let app = server.client(APP).await;
    let fill = |from: i64, to: i64| {
        format!(
            "INSERT INTO t SELECT value, hex(randomblob(500)) FROM generate_series({from}, {to})"
        )
    };
    exec(
        &app,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
        "create t",
    )
    .await;
    exec(&app, &fill(1, 400), "fill t").await;
    exec(&app, &fill(401, 800), "fill t more").await;
    let dir = tempfile::tempdir().unwrap();
    let (full, log) = (dir.path().join("full.bak"), dir.path().join("log.bak"));

    // While it runs, the backup is a request showing the pace in force
    // and the bytes read so far; with STATS it says once that it is paced.
    let (client, mut notices) = client_with_notices(&server).await;
    let sql = format!(
        "BACKUP DATABASE app TO DISK = '{}' WITH COMPRESSION, STATS = 50",
        disk(&full)
    );
    let backup = tokio::spawn(async move { run_with_notices(&client, &mut notices, &sql).await });
    let mut seen = Vec::new();
    while !backup.is_finished() {
        seen.extend(
            ok(
                &admin,
                "SELECT rate_limit_bytes_per_second, bytes_processed FROM sys.dm_exec_requests \
                 WHERE command = 'BACKUP DATABASE'",
            )
            .await,
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (got, _) = backup.await.expect("the backup's task");
    assert!(!seen.is_empty(), "the running backup was never a request");
    assert!(
        seen.iter().all(|r| r[0].as_deref() == Some("262144")),
        "the limit in force is the node's 256 KiB/s: {seen:?}"
    );
    let bytes: Vec<u64> = seen
        .iter()
        .map(|r| r[1].as_deref().expect("bytes_processed").parse().unwrap())
        .collect();
    assert!(
        bytes.windows(2).all(|w| w[0] <= w[1]) && bytes.first() < bytes.last(),
        "bytes_processed grows as the backup reads: {bytes:?}"
    );
    let paced: Vec<_> = got
        .iter()
        .filter(|n| n.starts_with("reading at most"))
        .collect();
    assert_eq!(
        paced,
        ["reading at most 256 KiB/s (this node's backup read rate; set --backup-kib-per-s or backup_kib_per_s, 0 = unlimited)"],
        "all notices: {got:?}"
    );

    exec(&app, &fill(801, 1100), "more rows").await;
    // `availdb backup` says it once too, above its progress bar.
    let out = common::run_bounded(
        std::process::Command::new(common::availdb_bin())
            .args(["backup", "app", "--log", "--to"])
            .arg(&log)
            .args(["--port", &server.port().to_string()]),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "availdb backup --log: {stderr}");
    assert_eq!(
        stderr
            .matches("reading at most 256 KiB/s (this node's")
            .count(),
        1,
        "{stderr}"
    );
    ok(
        &admin,
        &format!(
            "RESTORE DATABASE copy FROM DISK = '{}' WITH NORECOVERY",
            disk(&full)
        ),
    )
    .await;
    ok(
        &admin,
        &format!(
            "RESTORE LOG copy FROM DISK = '{}' WITH RECOVERY",
            disk(&log)
        ),
    )
    .await;
    assert_eq!(ids(&server, "copy", "t").await, range(1..=1100));
    if let Err(diff) = compare_pages(&pages(&server, APP).await, &pages(&server, "copy").await) {
        panic!("the restored chain is not page-identical to its source:\n{diff}");
    }
}
