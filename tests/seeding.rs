//! Seeding (automatic): a secondary that needs a database the primary's
//! log no longer holds from its start gets a full image of it, written to
//! the primary's log. Real `availdb server` processes of a 3-replica group
//! on loopback, with small log segments (set for this whole binary) so the
//! log is truncated quickly.
//!
//! Rules guarded, each by the test of the same name:
//! * replicas that need an image together share one.

mod common;

use std::time::{Duration, Instant};

use common::group::{exec, query_text, Group, CATCH_UP_TIMEOUT};
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
    let group = Group::start(3).await;
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
