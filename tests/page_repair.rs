//! Automatic page repair, black-box: real `availdb server` processes form
//! availability group `ag1` (r1 primary, r2 and r3 synchronous secondaries,
//! database `app`); the test flips a bit in a page of a running replica's
//! database file and reads through that replica with a real client.
//!
//! Each time it checks what must hold (docs/ARCHITECTURE.md, "Page
//! checksums and automatic page repair"): the damage is found by the read
//! (page checksums), the page is repaired from a partner and the read
//! succeeds, `sys.dm_hadr_auto_page_repair` records it, every replica is
//! page-identical afterwards (safety rule 3), `PRAGMA integrity_check` is
//! ok and no acknowledged commit is lost (safety rule 1). A page damaged on
//! every replica is reported irreparable, with no crash and no loop.
//!
//! A replica's pages are in its database file (where the damage is
//! injected) right after it starts: recovery writes the log into the file
//! and empties SQLite's WAL. Every wait is bounded.

mod common;

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use common::group::{
    assert_has_acked, error_text, exec, ids, query_text, Group, InsertLoad, APP, CATCH_UP_TIMEOUT,
};
use common::TestServer;
use tokio_postgres::Client;

const POLL: Duration = Duration::from_millis(100);
/// Bound on a repair showing in the view after the read that found it.
const REPAIR_TIMEOUT: Duration = Duration::from_secs(30);

/// Rows of `t`, and the sum of their pads' lengths.
const ROWS: i64 = 3000;
const PAD: i64 = 200;

/// Creates `t` (with an index on `k`) and `s` on the primary.
async fn fill(group: &Group) {
    let c = group.primary().client(APP).await;
    exec(
        &c,
        &format!(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT, pad BLOB);
             CREATE INDEX t_k ON t(k);
             CREATE TABLE s(id INTEGER PRIMARY KEY, note TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS})
             INSERT INTO t SELECT i, 'k' || printf('%06d', i * 7919 % {ROWS}), randomblob({PAD}) FROM n;"
        ),
        "fill",
    )
    .await;
}

/// The root page of table or index `name` on `node`.
async fn root_page(node: &TestServer, name: &str) -> u32 {
    let c = node.client(APP).await;
    let rows = query_text(
        &c,
        &format!("SELECT rootpage FROM sqlite_schema WHERE name = '{name}'"),
    )
    .await
    .unwrap_or_else(|e| panic!("root page of {name}: {}", error_text(&e)));
    rows[0][0].as_deref().unwrap().parse().unwrap()
}

/// Flips one bit in the middle of page `pgno` of `app` in `node`'s file.
fn flip(node: &TestServer, pgno: u32) {
    let path = node.data_dir().join("databases").join(format!("{APP}.db"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut header = [0u8; 100];
    file.read_exact_at(&mut header, 0).unwrap();
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65536,
        n => u64::from(n),
    };
    assert_eq!(
        header[20], 8,
        "the file reserves 8 bytes a page for checksums"
    );
    let at = u64::from(pgno - 1) * page_size + page_size / 2 + 3;
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x04], at).unwrap();
    file.sync_all().unwrap();
}

/// A commit on the primary, redone everywhere: readers that cached pages
/// before the damage start a new snapshot, which reads the file again.
async fn touch(group: &Group, n: i64) {
    let c = group.primary().client(APP).await;
    exec(
        &c,
        &format!("INSERT INTO s(id, note) VALUES ({n}, 'touch')"),
        "touch",
    )
    .await;
    let all: Vec<usize> = (1..group.nodes.len()).collect();
    group.wait_caught_up(&all, CATCH_UP_TIMEOUT).await;
}

/// `(page_id, page_status_desc)` of every row of the repair view on `node`.
async fn repairs(node: &TestServer) -> Vec<(u32, String)> {
    let c = node.client(APP).await;
    query_text(
        &c,
        "SELECT page_id, page_status_desc FROM sys.dm_hadr_auto_page_repair \
         WHERE database_name = 'app' ORDER BY modification_time",
    )
    .await
    .unwrap()
    .into_iter()
    .map(|r| {
        (
            r[0].as_deref().unwrap().parse().unwrap(),
            r[1].clone().unwrap(),
        )
    })
    .collect()
}

/// Waits (bounded) until the view on `node` shows `pgno` with `status`.
async fn wait_repair_status(group: &Group, node: usize, pgno: u32, status: &str) {
    let deadline = Instant::now() + REPAIR_TIMEOUT;
    loop {
        let rows = repairs(&group.nodes[node]).await;
        if rows.iter().any(|(p, s)| *p == pgno && s == status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "page {pgno} on r{} never reached {status}: {rows:?}\n{}",
            node + 1,
            group.logs()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Reads all of `t` on `client`: must succeed with every row.
async fn read_all(group: &Group, client: &Client, what: &str) {
    let rows = query_text(client, "SELECT count(*), sum(length(pad)) FROM t")
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{what}: the read failed: {}\n{}",
                error_text(&e),
                group.logs()
            )
        });
    assert_eq!(
        rows[0],
        vec![Some(ROWS.to_string()), Some((ROWS * PAD).to_string())],
        "{what}"
    );
}

/// Reads `t` through its index on `client`.
async fn read_by_index(group: &Group, client: &Client, what: &str) {
    let rows = query_text(
        client,
        "SELECT count(*) FROM t INDEXED BY t_k WHERE k >= 'k'",
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{what}: the read failed: {}\n{}",
            error_text(&e),
            group.logs()
        )
    });
    assert_eq!(rows[0], vec![Some(ROWS.to_string())], "{what}");
}

async fn integrity_ok(node: &TestServer, what: &str) {
    let c = node.client(APP).await;
    let rows = query_text(&c, "PRAGMA integrity_check").await.unwrap();
    assert_eq!(rows, vec![vec![Some("ok".to_string())]], "{what}");
}

#[tokio::test(flavor = "multi_thread")]
async fn page_repair_after_bit_flips_on_a_secondary_data_page_index_page_and_page_1() {
    let mut group = Group::start(3).await;
    fill(&group).await;
    group.wait_caught_up(&[1, 2], CATCH_UP_TIMEOUT).await;
    group.nodes[1].restart().await;
    group.wait_synchronized(&[1], CATCH_UP_TIMEOUT).await;
    let data = root_page(&group.nodes[1], "t").await;
    let index = root_page(&group.nodes[1], "t_k").await;

    for (step, (pgno, what)) in [(data, "data page"), (index, "index page"), (1, "page 1")]
        .into_iter()
        .enumerate()
    {
        flip(&group.nodes[1], pgno);
        touch(&group, step as i64 + 1).await;
        let reader = group.nodes[1].client(APP).await;
        // The read finds the damage, waits for the repair, and succeeds.
        if pgno == index {
            read_by_index(&group, &reader, what).await;
        } else {
            read_all(&group, &reader, what).await;
        }
        wait_repair_status(&group, 1, pgno, "AUTOMATIC_PAGE_REPAIR_SUCCEEDED").await;
    }
    let rows = repairs(&group.nodes[1]).await;
    assert_eq!(rows.len(), 3, "one row per repaired page: {rows:?}");
    group
        .assert_page_identical("after three repairs on r2")
        .await;
    integrity_ok(&group.nodes[1], "r2 after its repairs").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn page_repair_after_bit_flips_on_the_primary_data_page_and_page_1_is_logged_to_every_secondary(
) {
    let mut group = Group::start(3).await;
    fill(&group).await;
    group.wait_caught_up(&[1, 2], CATCH_UP_TIMEOUT).await;
    group.nodes[0].restart().await;
    group.wait_takes_writes(0, CATCH_UP_TIMEOUT).await;
    group.wait_synchronized(&[1, 2], CATCH_UP_TIMEOUT).await;
    let data = root_page(&group.nodes[0], "t").await;
    flip(&group.nodes[0], data);
    touch(&group, 1).await;
    let reader = group.primary().client(APP).await;
    read_all(&group, &reader, "the primary's data page").await;
    wait_repair_status(&group, 0, data, "AUTOMATIC_PAGE_REPAIR_SUCCEEDED").await;
    // Page 1 (the header and the schema's root) on the primary too.
    flip(&group.nodes[0], 1);
    touch(&group, 2).await;
    let reader = group.primary().client(APP).await;
    read_all(&group, &reader, "the primary's page 1").await;
    wait_repair_status(&group, 0, 1, "AUTOMATIC_PAGE_REPAIR_SUCCEEDED").await;
    // The repairs were logged commits: the secondaries redid them.
    group
        .assert_page_identical("after repairs on the primary")
        .await;
    integrity_ok(group.primary(), "r1 after its repairs").await;
    touch(&group, 3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn page_repair_on_a_secondary_during_a_write_load_loses_no_acknowledged_commit() {
    let mut group = Group::start(3).await;
    fill(&group).await;
    exec(
        &group.primary().client(APP).await,
        "CREATE TABLE load(id INTEGER PRIMARY KEY, pad BLOB)",
        "load table",
    )
    .await;
    group.wait_caught_up(&[1, 2], CATCH_UP_TIMEOUT).await;
    group.nodes[1].restart().await;
    group.wait_synchronized(&[1], CATCH_UP_TIMEOUT).await;
    let index = root_page(&group.nodes[1], "t_k").await;
    let load = InsertLoad::start(group.primary().client(APP).await, "load", 1, 100_000);
    load.wait_acked(50, CATCH_UP_TIMEOUT).await;
    flip(&group.nodes[1], index);
    load.wait_acked(100, CATCH_UP_TIMEOUT).await;
    let reader = group.nodes[1].client(APP).await;
    read_by_index(&group, &reader, "index page under load").await;
    wait_repair_status(&group, 1, index, "AUTOMATIC_PAGE_REPAIR_SUCCEEDED").await;
    load.wait_acked(200, CATCH_UP_TIMEOUT).await;
    let report = load.finish().await;
    assert!(
        report.failed.is_none(),
        "the load failed: {:?}",
        report.failed
    );
    group
        .assert_page_identical("after a repair under load")
        .await;
    for (i, node) in group.nodes.iter().enumerate() {
        assert_has_acked(
            &report,
            &ids(node, APP, "load").await,
            &format!("r{}", i + 1),
        );
    }
    integrity_ok(&group.nodes[1], "r2 after its repair under load").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_damaged_on_every_replica_is_irreparable_reported_and_the_rest_is_served() {
    let mut group = Group::start(3).await;
    fill(&group).await;
    group.wait_caught_up(&[1, 2], CATCH_UP_TIMEOUT).await;
    for i in [1, 2, 0] {
        group.nodes[i].restart().await;
    }
    group.wait_takes_writes(0, CATCH_UP_TIMEOUT).await;
    group.wait_synchronized(&[1, 2], CATCH_UP_TIMEOUT).await;
    let index = root_page(&group.nodes[1], "t_k").await;
    for node in &group.nodes {
        flip(node, index);
    }
    touch(&group, 1).await;
    let reader = group.nodes[1].client(APP).await;
    let err = query_text(
        &reader,
        "SELECT count(*) FROM t INDEXED BY t_k WHERE k >= 'k'",
    )
    .await
    .expect_err("every copy of the page is damaged");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "XX001", "{}", error_text(&err));
    assert!(
        db.message().contains(&format!("page {index}")),
        "the error names the page: {}",
        db.message()
    );
    wait_repair_status(&group, 1, index, "IRREPARABLE").await;
    // No crash, no loop: the node serves what does not need the page.
    read_all(&group, &reader, "the table without its index").await;
    let again = query_text(
        &reader,
        "SELECT count(*) FROM t INDEXED BY t_k WHERE k >= 'k'",
    )
    .await
    .expect_err("still damaged");
    assert!(
        again
            .as_db_error()
            .unwrap()
            .message()
            .contains("irreparable"),
        "{}",
        error_text(&again)
    );
    assert_eq!(
        repairs(&group.nodes[1]).await.len(),
        1,
        "one row, not one per read"
    );
    // The secondary that cannot get the page is suspended (it does not
    // hold the primary's commits back); the primary still takes writes.
    wait_suspension(&group, 1, "r2", "r2 suspended for the page", |row| {
        suspended_row(row) && row[2].as_deref() == Some("SUSPEND_FROM_REDO")
    })
    .await;
    exec(
        &group.primary().client(APP).await,
        "INSERT INTO s(id, note) VALUES (2, 'after')",
        "a commit with the page irreparable",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_scrub_finds_and_repairs_a_damaged_page_that_no_query_reads() {
    let mut group = Group::start(3).await;
    fill(&group).await;
    group.wait_caught_up(&[1, 2], CATCH_UP_TIMEOUT).await;
    group.nodes[2].restart().await;
    group.wait_synchronized(&[2], CATCH_UP_TIMEOUT).await;
    let index = root_page(&group.nodes[2], "t_k").await;
    flip(&group.nodes[2], index);
    // No statement reads the index: the background scrub finds the page.
    wait_repair_status(&group, 2, index, "AUTOMATIC_PAGE_REPAIR_SUCCEEDED").await;
    let c = group.nodes[2].client(APP).await;
    let scrub = query_text(
        &c,
        "SELECT damaged_pages_found, page_count > 0 FROM sys.dm_hadr_page_scrub_status \
         WHERE database_name = 'app'",
    )
    .await
    .unwrap();
    assert_eq!(
        scrub,
        vec![vec![Some("1".to_string()), Some("t".to_string())]],
        "the scrub's progress names what it found"
    );
    group
        .assert_page_identical("after a repair found by the scrub")
        .await;
    integrity_ok(&group.nodes[2], "r3 after the scrub's repair").await;
}

/// Copies page `from` of `app` over page `to` in `node`'s file: a sealed
/// page in the wrong place (a misdirected or lost write), which passes its
/// checksum.
fn misplace(node: &TestServer, from: u32, to: u32) {
    let path = node.data_dir().join("databases").join(format!("{APP}.db"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let size = page_size(&file);
    let mut page = vec![0u8; size as usize];
    file.read_exact_at(&mut page, u64::from(from - 1) * size)
        .unwrap();
    file.write_all_at(&page, u64::from(to - 1) * size).unwrap();
    file.sync_all().unwrap();
}

fn page_size(file: &std::fs::File) -> u64 {
    let mut header = [0u8; 100];
    file.read_exact_at(&mut header, 0).unwrap();
    match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65536,
        n => u64::from(n),
    }
}

/// Two children of the interior root page `root` of a table in `node`'s
/// file: the first cell's left child and the right-most child.
fn two_children(node: &TestServer, root: u32) -> (u32, u32) {
    let path = node.data_dir().join("databases").join(format!("{APP}.db"));
    let file = std::fs::File::open(&path).unwrap();
    let size = page_size(&file);
    let mut page = vec![0u8; size as usize];
    file.read_exact_at(&mut page, u64::from(root - 1) * size)
        .unwrap();
    assert_eq!(page[0], 0x05, "the root of t is an interior table page");
    let be32 = |at: usize| u32::from_be_bytes([page[at], page[at + 1], page[at + 2], page[at + 3]]);
    let right = be32(8);
    let first_cell = usize::from(u16::from_be_bytes([page[12], page[13]]));
    (be32(first_cell), right)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_scrub_finds_a_sealed_page_that_differs_from_the_primarys_and_repairs_it() {
    let mut group = Group::start(3).await;
    fill(&group).await;
    group.wait_caught_up(&[1, 2], CATCH_UP_TIMEOUT).await;
    group.nodes[2].restart().await;
    group.wait_synchronized(&[2], CATCH_UP_TIMEOUT).await;
    let root = root_page(&group.nodes[2], "t").await;
    let (first, last) = two_children(&group.nodes[2], root);
    misplace(&group.nodes[2], first, last);
    // The page passes its checksum: only the comparison with the primary
    // finds it.
    wait_repair_status(&group, 2, last, "AUTOMATIC_PAGE_REPAIR_SUCCEEDED").await;
    let c = group.nodes[2].client(APP).await;
    let scrub = query_text(
        &c,
        "SELECT mismatched_pages_found FROM sys.dm_hadr_page_scrub_status \
         WHERE database_name = 'app'",
    )
    .await
    .unwrap();
    assert_eq!(scrub, vec![vec![Some("1".to_string())]]);
    group
        .assert_page_identical("after the scrub replaced a misplaced page")
        .await;
    integrity_ok(&group.nodes[2], "r3 after the scrub's repair").await;
    read_all(&group, &c, "r3's table after the repair").await;
}

/// Page `pgno` of `app` as `node`'s file holds it.
fn read_page(node: &TestServer, pgno: u32) -> Vec<u8> {
    let path = node.data_dir().join("databases").join(format!("{APP}.db"));
    let file = std::fs::File::open(&path).unwrap();
    let size = page_size(&file);
    let mut page = vec![0u8; size as usize];
    file.read_exact_at(&mut page, u64::from(pgno - 1) * size)
        .unwrap();
    page
}

/// Writes `page` over page `pgno` of `app` in `node`'s file.
fn write_page(node: &TestServer, pgno: u32, page: &[u8]) {
    let path = node.data_dir().join("databases").join(format!("{APP}.db"));
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(page, u64::from(pgno - 1) * page.len() as u64)
        .unwrap();
    file.sync_all().unwrap();
}

/// `(synchronization_state_desc, is_suspended, suspend_reason_desc,
/// last_error)` of `app`'s row for `replica` on `node`.
async fn suspension(node: &TestServer, replica: &str) -> Vec<Option<String>> {
    let c = node.client(APP).await;
    let rows = query_text(
        &c,
        &format!(
            "SELECT synchronization_state_desc, is_suspended, suspend_reason_desc, last_error \
             FROM sys.dm_hadr_database_replica_states \
             WHERE database_name = 'app' AND replica = '{replica}'"
        ),
    )
    .await
    .unwrap();
    rows.into_iter().next().unwrap_or_default()
}

/// Waits (bounded) until `check` holds for `replica`'s row on node `node`.
async fn wait_suspension(
    group: &Group,
    node: usize,
    replica: &str,
    what: &str,
    check: impl Fn(&[Option<String>]) -> bool,
) {
    let deadline = Instant::now() + REPAIR_TIMEOUT;
    loop {
        let row = suspension(&group.nodes[node], replica).await;
        if check(&row) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: r{}'s row of {replica} stayed {row:?}\n{}",
            node + 1,
            group.logs()
        );
        tokio::time::sleep(POLL).await;
    }
}

fn suspended_row(row: &[Option<String>]) -> bool {
    row.get(1).and_then(|v| v.as_deref()) == Some("t")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secondary_that_cannot_get_a_page_is_suspended_from_redo_and_resumes_on_its_own_once_the_page_is_repaired(
) {
    let mut group = Group::start(3).await;
    fill(&group).await;
    exec(
        &group.primary().client(APP).await,
        "CREATE TABLE load(id INTEGER PRIMARY KEY, pad BLOB)",
        "load table",
    )
    .await;
    group.wait_caught_up(&[1, 2], CATCH_UP_TIMEOUT).await;
    for i in [1, 2, 0] {
        group.nodes[i].restart().await;
    }
    group.wait_takes_writes(0, CATCH_UP_TIMEOUT).await;
    group.wait_synchronized(&[1, 2], CATCH_UP_TIMEOUT).await;
    let index = root_page(&group.nodes[1], "t_k").await;
    let good = read_page(&group.nodes[0], index);
    // No replica has a good copy of the page: r2 cannot get it.
    for node in &group.nodes {
        flip(node, index);
    }
    let load = InsertLoad::start(group.primary().client(APP).await, "load", 1, 100_000);
    load.wait_acked(20, CATCH_UP_TIMEOUT).await;
    let reader = group.nodes[1].client(APP).await;
    let err = query_text(
        &reader,
        "SELECT count(*) FROM t INDEXED BY t_k WHERE k >= 'k'",
    )
    .await
    .expect_err("every copy of the page is damaged");
    assert_eq!(
        err.as_db_error().map(|e| e.code().code()),
        Some("XX001"),
        "{}",
        error_text(&err)
    );
    wait_repair_status(&group, 1, index, "IRREPARABLE").await;
    // r2 stays in a clear state: suspended from redo, saying which page.
    wait_suspension(&group, 1, "r2", "r2 suspended for the page", |row| {
        suspended_row(row)
            && row[0].as_deref() == Some("NOT SYNCHRONIZING")
            && row[2].as_deref() == Some("SUSPEND_FROM_REDO")
            && row[3]
                .as_deref()
                .is_some_and(|e| e.contains(&format!("page {index} ")))
    })
    .await;
    // The primary sees its partner suspended itself, and commits go on.
    wait_suspension(&group, 0, "r2", "the primary sees r2 suspended", |row| {
        suspended_row(row) && row[2].as_deref() == Some("SUSPEND_FROM_PARTNER")
    })
    .await;
    let acked = load.acked_count();
    load.wait_acked(acked + 20, CATCH_UP_TIMEOUT).await;
    // The source is put right: the primary's copy verifies again.
    write_page(&group.nodes[0], index, &good);
    // r2 (and r3, whose scrub finds its copy damaged too) get the page
    // from the primary and resume on their own.
    wait_repair_status(&group, 1, index, "AUTOMATIC_PAGE_REPAIR_SUCCEEDED").await;
    wait_repair_status(&group, 2, index, "AUTOMATIC_PAGE_REPAIR_SUCCEEDED").await;
    for (i, replica) in [(1, "r2"), (2, "r3")] {
        wait_suspension(&group, i, replica, "resumed", |row| {
            !suspended_row(row) && row[2].is_none()
        })
        .await;
    }
    let acked = load.acked_count();
    load.wait_acked(acked + 20, CATCH_UP_TIMEOUT).await;
    let report = load.finish().await;
    assert!(
        report.failed.is_none(),
        "the load failed: {:?}",
        report.failed
    );
    group.wait_synchronized(&[1, 2], CATCH_UP_TIMEOUT).await;
    group.wait_caught_up(&[1, 2], CATCH_UP_TIMEOUT).await;
    read_by_index(&group, &reader, "r2's index after it resumed").await;
    group
        .assert_page_identical("after the secondaries resumed with the page repaired")
        .await;
    for (i, node) in group.nodes.iter().enumerate() {
        assert_has_acked(
            &report,
            &ids(node, APP, "load").await,
            &format!("r{}", i + 1),
        );
        integrity_ok(node, &format!("r{} after the suspension", i + 1)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_sqlite_finds_malformed_where_no_checksum_failed_is_scrubbed_at_once_and_repaired() {
    // Scheduled scrubbing off: only the pass started at once can find it.
    let mut group = Group::start_with(common::group::GroupSpec {
        args: vec!["--scrub-kib-per-s".into(), "0".into()],
        ..Default::default()
    })
    .await;
    fill(&group).await;
    group.wait_caught_up(&[1, 2], CATCH_UP_TIMEOUT).await;
    group.nodes[2].restart().await;
    group.wait_synchronized(&[2], CATCH_UP_TIMEOUT).await;
    let root = root_page(&group.nodes[2], "t").await;
    let index = root_page(&group.nodes[2], "t_k").await;
    let (_, last) = two_children(&group.nodes[2], root);
    // An index page, sealed, where the table expects one of its leaves:
    // SQLite's B-tree finds the file malformed, no checksum fails.
    misplace(&group.nodes[2], index, last);
    let reader = group.nodes[2].client(APP).await;
    let err = query_text(&reader, "SELECT count(*), sum(length(pad)) FROM t")
        .await
        .expect_err("the table reaches a page of the index");
    let db_err = err.as_db_error().expect("a server error");
    assert_eq!(db_err.code().code(), "XX001", "{}", error_text(&err));
    // The pass at once compares with the primary and finds the page.
    wait_repair_status(&group, 2, last, "AUTOMATIC_PAGE_REPAIR_SUCCEEDED").await;
    let scrub = query_text(
        &reader,
        "SELECT immediate_passes >= 1, last_immediate_pass_reason, mismatched_pages_found, \
         passes_completed, rate_bytes_per_second \
         FROM sys.dm_hadr_page_scrub_status WHERE database_name = 'app'",
    )
    .await
    .unwrap();
    assert_eq!(scrub.len(), 1, "{scrub:?}");
    assert_eq!(scrub[0][0].as_deref(), Some("t"), "{scrub:?}");
    assert!(
        scrub[0][1]
            .as_deref()
            .is_some_and(|r| r.contains("malformed")),
        "the view says what started the pass: {scrub:?}"
    );
    assert_eq!(
        scrub[0][2..],
        [Some("1".into()), Some("0".into()), Some("0".into())],
        "one mismatch found, and by no scheduled pass: {scrub:?}"
    );
    read_all(&group, &reader, "r3's table after the repair").await;
    group
        .assert_page_identical("after the pass at once replaced the page")
        .await;
    integrity_ok(&group.nodes[2], "r3 after the repair").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sealed_but_wrong_page_on_the_primary_is_outvoted_by_the_secondaries_and_repaired_from_them(
) {
    // A fast scrub, so passes come often during the test.
    let mut group = Group::start_with(common::group::GroupSpec {
        args: vec!["--scrub-kib-per-s".into(), "65536".into()],
        ..Default::default()
    })
    .await;
    fill(&group).await;
    exec(
        &group.primary().client(APP).await,
        "CREATE TABLE load(id INTEGER PRIMARY KEY, pad BLOB)",
        "load table",
    )
    .await;
    group.wait_caught_up(&[1, 2], CATCH_UP_TIMEOUT).await;
    group.nodes[0].restart().await;
    group.wait_takes_writes(0, CATCH_UP_TIMEOUT).await;
    group.wait_synchronized(&[1, 2], CATCH_UP_TIMEOUT).await;
    let root = root_page(&group.nodes[0], "t").await;
    let (first, last) = two_children(&group.nodes[0], root);
    let load = InsertLoad::start(group.primary().client(APP).await, "load", 1, 100_000);
    load.wait_acked(20, CATCH_UP_TIMEOUT).await;
    // A lost write on the primary: the page passes its checksum, and only
    // the secondaries' copies, agreeing against it, show it is wrong.
    misplace(&group.nodes[0], first, last);
    wait_repair_status(&group, 0, last, "AUTOMATIC_PAGE_REPAIR_SUCCEEDED").await;
    let acked = load.acked_count();
    load.wait_acked(acked + 20, CATCH_UP_TIMEOUT).await;
    let report = load.finish().await;
    assert!(
        report.failed.is_none(),
        "the load failed: {:?}",
        report.failed
    );
    let c = group.primary().client(APP).await;
    let scrub = query_text(
        &c,
        "SELECT mismatched_pages_found FROM sys.dm_hadr_page_scrub_status \
         WHERE database_name = 'app'",
    )
    .await
    .unwrap();
    assert_eq!(
        scrub,
        vec![vec![Some("1".to_string())]],
        "one mismatch, and no false one under the load"
    );
    // The secondaries kept their copies: the primary's was not taken for
    // the truth.
    for i in [1, 2] {
        let rows = repairs(&group.nodes[i]).await;
        assert!(
            !rows.iter().any(|(p, _)| *p == last),
            "r{} repaired its good copy of page {last} from the primary's wrong one: {rows:?}",
            i + 1
        );
    }
    read_all(&group, &c, "the primary's table after the repair").await;
    group.wait_caught_up(&[1, 2], CATCH_UP_TIMEOUT).await;
    group
        .assert_page_identical("after the primary's page was repaired from the majority")
        .await;
    for (i, node) in group.nodes.iter().enumerate() {
        assert_has_acked(
            &report,
            &ids(node, APP, "load").await,
            &format!("r{}", i + 1),
        );
        integrity_ok(node, &format!("r{} after the primary's repair", i + 1)).await;
    }
}
