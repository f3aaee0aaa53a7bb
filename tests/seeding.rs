//! Seeding (automatic): a secondary that needs a database the primary's
//! log no longer holds from its start gets a full image of it, written to
//! the primary's log — or, from 16 MiB (`--seed-by-backup-from-mb`), a
//! backup the primary streams to it. Real `availdb server` processes of a 3-replica group
//! on loopback, with small log segments (set for this whole binary) so the
//! log is truncated quickly.
//!
//! Rules guarded, each by the test of the same name:
//! * replicas that need an image together share one;
//! * a large database is seeded from a streamed backup while its commits go
//!   on;
//! * a replica killed while restoring its seed starts with its old copy and
//!   is seeded again;
//! * a session on the old copy ends when a seeded copy replaces it.

mod common;

use std::time::{Duration, Instant};

use common::group::{
    assert_has_acked, compare_pages, exec, ids, name, pages, query_text, try_pages, Group,
    GroupSpec, InsertLoad, CATCH_UP_TIMEOUT,
};
use common::DEFAULT_DB;

const POLL: Duration = Duration::from_millis(100);

/// Seeding writes one full image for the replicas that need one together:
/// a database added to a 3-replica group seeds both secondaries from the
/// same image (each used to get an image of its own, which also passed
/// through the other's stream: a 2 GB database's log grew to 29 GB).
#[tokio::test(flavor = "multi_thread")]
async fn secondaries_seeded_together_share_one_full_image() {
    // Small log segments, so that the writer's checkpoints drop the log
    // before the secondaries join and they must be seeded from an image.
    std::env::set_var("AVAILDB_LOG_SEGMENT_BYTES", "262144");
    // Images, not streamed backups, for this 30 MB database.
    let group = Group::start_with(GroupSpec {
        args: vec!["--seed-by-backup-from-mb".into(), "1024".into()],
        ..GroupSpec::default()
    })
    .await;
    let admin = group.primary().client(DEFAULT_DB).await;
    exec(&admin, "CREATE DATABASE extra", "on r1").await;
    let extra = group.primary().client("extra").await;
    exec(
        &extra,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB NOT NULL)",
        "on r1",
    )
    .await;
    // 30 MB in three transactions: the writer checkpoints past 16 MB of
    // WAL and drops the log before it, so the secondaries need an image.
    for k in 0..3 {
        let sql = format!(
            "INSERT INTO t SELECT value, randomblob(2000) FROM generate_series({}, {})",
            k * 5000 + 1,
            (k + 1) * 5000
        );
        exec(&extra, &sql, "on r1").await;
    }
    exec(
        &admin,
        "ALTER AVAILABILITY GROUP ag1 ADD DATABASE extra",
        "on r1",
    )
    .await;
    for i in 1..3 {
        let deadline = Instant::now() + CATCH_UP_TIMEOUT;
        loop {
            let seen = match group.nodes[i].try_client("extra").await {
                Ok(c) => query_text(&c, "SELECT count(*) FROM t").await.ok(),
                Err(_) => None,
            };
            if seen == Some(vec![vec![Some("15000".to_string())]]) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {i} never held extra's 15000 rows: {seen:?}\n{}",
                group.logs()
            );
            tokio::time::sleep(POLL).await;
        }
    }
    let images = group.nodes[0]
        .log()
        .matches("wrote a full image to the log for seeding")
        .count();
    assert_eq!(
        images,
        1,
        "r1 wrote {images} full images to seed two secondaries\n{}",
        group.logs()
    );
}

/// Fills `db` on the primary with `chunks` × 12 MB in table `t` (ids from
/// 1), one transaction per chunk.
async fn fill(group: &Group, db: &str, chunks: i64) {
    let client = group.primary().client(db).await;
    exec(
        &client,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, pad BLOB NOT NULL)",
        "on r1",
    )
    .await;
    for k in 0..chunks {
        let sql = format!(
            "INSERT INTO t SELECT value, randomblob(2000) FROM generate_series({}, {})",
            k * 6000 + 1,
            (k + 1) * 6000
        );
        exec(&client, &sql, "on r1").await;
    }
}

/// Creates database `big` on the primary, fills it with `chunks` of 12 MB
/// (`fill`) and adds it to ag1: its secondaries are seeded.
async fn add_big(group: &Group, chunks: i64) {
    let admin = group.primary().client(DEFAULT_DB).await;
    exec(&admin, "CREATE DATABASE big", "on r1").await;
    fill(group, "big", chunks).await;
    exec(
        &admin,
        "ALTER AVAILABILITY GROUP ag1 ADD DATABASE big",
        "on r1",
    )
    .await;
}

/// Waits until node `i`'s copy of `db` is page-identical to the primary's.
async fn wait_page_identical(group: &Group, i: usize, db: &str, what: &str) {
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    loop {
        let expected = pages(group.primary(), db).await;
        // No session, or one ended, while the copy is replaced: not yet.
        let actual = try_pages(&group.nodes[i], db).await.unwrap_or_default();
        match compare_pages(&expected, &actual) {
            Ok(()) => return,
            Err(diff) if Instant::now() > deadline => panic!(
                "{what}: {} never became page-identical to the primary:\n{diff}\n{}",
                name(i),
                group.logs()
            ),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// `(role, state, transfer_size_bytes, transferred_size_bytes)` of every
/// seed of `db` on node `i`, oldest first.
async fn seeds(group: &Group, i: usize, db: &str) -> Vec<Vec<Option<String>>> {
    let client = group.nodes[i].client(DEFAULT_DB).await;
    query_text(
        &client,
        &format!(
            "SELECT role_desc, internal_state_desc, transfer_size_bytes, transferred_size_bytes \
             FROM sys.dm_hadr_physical_seeding_stats WHERE local_database_name = '{db}' \
             ORDER BY start_time_utc"
        ),
    )
    .await
    .unwrap()
}

/// A database of at least `--seed-by-backup-from-mb` (16 MiB) is seeded
/// from a backup the primary streams to each replica, read from a snapshot
/// without the write lock: commits are acknowledged while the backup is
/// read (a full image in the log held the write lock while every page was
/// read, so writers waited), no image enters the primary's log (it went to
/// every replica that reads the log), and the replicas end page-identical,
/// every acknowledged commit there.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_database_is_seeded_from_a_streamed_backup_while_its_commits_go_on() {
    std::env::set_var("AVAILDB_LOG_SEGMENT_BYTES", "262144");
    let group = Group::start(3).await;
    // 48 MB, in four transactions.
    add_big(&group, 4).await;
    // Sessions of the group's primary started before the definition
    // changed end with it: the load starts on the new one.
    group.wait_takes_writes(0, CATCH_UP_TIMEOUT).await;
    let load = InsertLoad::start(group.primary().client("big").await, "t", 100_000, 50_000);
    // Watch the primary's seeds: commits acknowledged between two moments
    // at which a seed's backup is being read.
    let mut first_seen: Option<usize> = None;
    let mut during: Option<(usize, usize)> = None;
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    loop {
        let rows = seeds(&group, 0, "big").await;
        let reading = rows.iter().any(|r| r[1].as_deref() == Some("BACKING_UP"));
        let acked = load.acked_count();
        if reading {
            match first_seen {
                None => first_seen = Some(acked),
                Some(before) if acked > before => {
                    during = Some((before, acked));
                    break;
                }
                Some(_) => {}
            }
        }
        let completed = rows
            .iter()
            .filter(|r| r[1].as_deref() == Some("COMPLETED"))
            .count();
        if completed == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the seeds of big never completed: {rows:?}\n{}",
            group.logs()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (before, after) = during.unwrap_or_else(|| {
        panic!(
            "no commit was acknowledged while a seed's backup was read (first seen reading at {first_seen:?} acknowledged)\n{}",
            group.logs()
        )
    });
    eprintln!("commits acknowledged while the seed backups were read: {before} -> {after}");
    // The load goes on until both copies hold the 24000 rows of the seed.
    for i in 1..3 {
        let deadline = Instant::now() + CATCH_UP_TIMEOUT;
        loop {
            let seeded = match group.nodes[i].try_client("big").await {
                Ok(c) => query_text(&c, "SELECT count(*) FROM t WHERE id <= 24000")
                    .await
                    .ok(),
                Err(_) => None,
            };
            if seeded == Some(vec![vec![Some("24000".to_string())]]) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} never held the seeded rows: {seeded:?}\n{}",
                name(i),
                group.logs()
            );
            tokio::time::sleep(POLL).await;
        }
    }
    let report = load.finish().await;
    assert!(report.failed.is_none(), "the load failed: {report:?}");
    for i in 1..3 {
        wait_page_identical(&group, i, "big", "after the load").await;
        let present = ids(&group.nodes[i], "big", "t").await;
        assert_has_acked(
            &report,
            &present.into_iter().filter(|id| *id >= 100_000).collect(),
            &name(i),
        );
    }
    assert_eq!(
        group.nodes[0]
            .log()
            .matches("wrote a full image to the log for seeding")
            .count(),
        0,
        "the primary wrote a full image into its log\n{}",
        group.logs()
    );
    // Both ends show each seed, whole.
    let primary = seeds(&group, 0, "big").await;
    assert_eq!(primary.len(), 2, "{primary:?}");
    for i in 1..3 {
        let here = seeds(&group, i, "big").await;
        assert_eq!(here.len(), 1, "{}: {here:?}", name(i));
        for row in primary.iter().chain(&here) {
            assert_eq!(row[1].as_deref(), Some("COMPLETED"), "{row:?}");
            assert_eq!(row[2], row[3], "every byte sent and received: {row:?}");
        }
        assert_eq!(here[0][0].as_deref(), Some("SECONDARY"));
    }
}

/// A replica killed while it restores the backup its seed streamed (crash
/// point `restore.built`: the copy built and checked, not yet RESTORING)
/// starts again with its old copy, intact, and is seeded again: it ends
/// with every commit, those made while it was down included.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_killed_while_restoring_its_seed_starts_with_its_old_copy_and_is_seeded_again() {
    std::env::set_var("AVAILDB_LOG_SEGMENT_BYTES", "262144");
    let spec = GroupSpec {
        replicas: 2,
        env: vec![("AVAILDB_CRASH_AT", "restore.built")],
        ..GroupSpec::default()
    };
    let mut group = Group::start_with(spec).await;
    add_big(&group, 2).await;
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    while group.nodes[1].is_running() {
        assert!(
            Instant::now() < deadline,
            "r2 never reached the crash point while restoring its seed\n{}",
            group.logs()
        );
        tokio::time::sleep(POLL).await;
    }
    assert!(
        group.nodes[1]
            .log()
            .contains("crash point restore.built reached"),
        "r2 stopped for another reason\n{}",
        group.logs()
    );
    // Commits go on while it is down.
    let big = group.primary().client("big").await;
    exec(
        &big,
        "INSERT INTO t SELECT value, randomblob(100) FROM generate_series(20001, 20100)",
        "on r1",
    )
    .await;
    group.nodes[1].set_env("AVAILDB_CRASH_AT", None);
    group.nodes[1].restart().await;
    wait_page_identical(&group, 1, "big", "seeded again after a crash mid-restore").await;
    let count = query_text(
        &group.nodes[1].client("big").await,
        "SELECT count(*) FROM t",
    )
    .await
    .unwrap();
    assert_eq!(count, vec![vec![Some("12100".to_string())]]);
    let primary = seeds(&group, 0, "big").await;
    assert!(
        primary.len() >= 2 && primary.last().unwrap()[1].as_deref() == Some("COMPLETED"),
        "the primary seeded r2 twice, the second time whole: {primary:?}"
    );
}

/// A seeded copy replaces the old one without waiting for the clients of
/// the old one: a session a client keeps open on a secondary's copy (here
/// the empty copy of a replica that lost its files) is ended when the
/// copy the primary seeded takes its place, and gets FATAL 57P01 at its
/// next statement; new sessions read the seeded copy.
///
/// Found by a benchmark that polled the secondary while it was seeded:
/// the new copy waited until no session held the old one (up to 20 s),
/// and a session that stayed open past that kept reading the old copy.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_on_the_old_copy_ends_when_a_seeded_copy_replaces_it() {
    std::env::set_var("AVAILDB_LOG_SEGMENT_BYTES", "262144");
    let mut group = Group::start(2).await;
    // 24 MB: above the size seeded from a streamed backup.
    add_big(&group, 2).await;
    wait_page_identical(&group, 1, "big", "first seeding").await;
    // r2 loses its copy while data movement is suspended: it starts
    // with an empty copy, which a client opens before the seed comes.
    let big = group.primary().client("big").await;
    exec(&big, "ALTER DATABASE big SET HADR SUSPEND", "on r1").await;
    group.nodes[1].kill9();
    let dir = group.nodes[1].data_dir();
    for file in ["big.db", "big.db-wal", "big.db-shm"] {
        let _ = std::fs::remove_file(dir.join("databases").join(file));
    }
    let _ = std::fs::remove_dir_all(dir.join("log").join("big"));
    group.nodes[1].restart().await;
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    let held = loop {
        if let Ok(c) = group.nodes[1].try_client("big").await {
            if c.simple_query("SELECT 1").await.is_ok() {
                break c;
            }
        }
        assert!(
            Instant::now() < deadline,
            "r2 never served its empty copy of big\n{}",
            group.logs()
        );
        tokio::time::sleep(POLL).await;
    };
    exec(&big, "ALTER DATABASE big SET HADR RESUME", "on r1").await;
    wait_page_identical(&group, 1, "big", "seeded again").await;
    let count = query_text(
        &group.nodes[1].client("big").await,
        "SELECT count(*) FROM t",
    )
    .await
    .unwrap();
    assert_eq!(count, vec![vec![Some("12000".to_string())]]);
    let ended = held
        .simple_query("SELECT count(*) FROM t")
        .await
        .expect_err("the session on the old copy goes on");
    let code = ended.as_db_error().map(|e| e.code().code().to_string());
    assert_eq!(
        code.as_deref(),
        Some("57P01"),
        "{ended:?}\n{}",
        group.logs()
    );
    assert!(
        group.nodes[1]
            .log()
            .contains("a copy the primary seeded replaces it"),
        "r2 did not end the session on its old copy\n{}",
        group.logs()
    );
}
