//! `ALTER DATABASE … SET READ_ONLY | READ_WRITE`: a database property that
//! refuses writes on every replica with a message naming the read-only state
//! (distinct from "this is a secondary"), lets reads go on, shows in
//! `sys.databases.is_read_only`, and survives restarts and failovers.
//! Real `availdb server` processes, real clients.

mod common;

use std::time::Duration;

use common::cluster::{planned_failover, wait_failover_ready};
use common::group::{error_text, query_text, Group, GroupSpec, APP, STATEMENT_TIMEOUT};
use common::{TestServer, DEFAULT_DB};
use tokio_postgres::Client;

/// The SQLSTATE and message of `sql` on `client` (None: it succeeded).
async fn refusal(client: &Client, sql: &str) -> Option<(String, String)> {
    match tokio::time::timeout(STATEMENT_TIMEOUT, client.batch_execute(sql)).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some((
            e.code().map(|c| c.code().to_string()).unwrap_or_default(),
            error_text(&e),
        )),
        Err(_) => panic!("{sql}: no answer in time"),
    }
}

async fn is_read_only(client: &Client, db: &str) -> String {
    let rows = query_text(
        client,
        &format!("SELECT is_read_only FROM sys.databases WHERE name = '{db}'"),
    )
    .await
    .expect("sys.databases");
    rows[0][0].clone().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_database_refuses_writes_keeps_reads_and_stays_read_only_after_a_restart() {
    let mut server = TestServer::start().await;
    let admin = server.client(DEFAULT_DB).await;
    admin.batch_execute("CREATE DATABASE app").await.unwrap();
    let app = server.client(APP).await;
    app.batch_execute("CREATE TABLE t(id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    admin
        .batch_execute("ALTER DATABASE app SET READ_ONLY")
        .await
        .unwrap_or_else(|e| panic!("SET READ_ONLY: {}", error_text(&e)));
    let (code, message) = refusal(&app, "INSERT INTO t VALUES (2)")
        .await
        .expect("a write to a READ_ONLY database is refused");
    assert_eq!(code, "25006", "{message}");
    assert!(message.contains("READ_ONLY"), "{message}");
    assert!(!message.contains("secondary"), "{message}");
    let rows = query_text(&app, "SELECT count(*) FROM t").await.unwrap();
    assert_eq!(rows[0][0].as_deref(), Some("1"), "reads go on");
    assert_eq!(is_read_only(&admin, APP).await, "t");
    // Clients and probes (the traffic manager's read-write check) ask this.
    let shown = query_text(&app, "SHOW transaction_read_only")
        .await
        .unwrap();
    assert_eq!(
        shown[0][0].as_deref(),
        Some("on"),
        "SHOW on a READ_ONLY database"
    );
    drop((admin, app));

    server.restart().await;
    let admin = server.client(DEFAULT_DB).await;
    let app = server.client(APP).await;
    assert_eq!(is_read_only(&admin, APP).await, "t", "after a restart");
    assert!(refusal(&app, "INSERT INTO t VALUES (2)").await.is_some());
    admin
        .batch_execute("ALTER DATABASE app SET READ_WRITE")
        .await
        .unwrap();
    assert_eq!(refusal(&app, "INSERT INTO t VALUES (2)").await, None);
    assert_eq!(is_read_only(&admin, APP).await, "f");
    let shown = query_text(&app, "SHOW transaction_read_only")
        .await
        .unwrap();
    assert_eq!(shown[0][0].as_deref(), Some("off"), "SHOW after READ_WRITE");
}

#[tokio::test(flavor = "multi_thread")]
async fn open_write_transactions_make_no_wait_fail_and_are_rolled_back_by_rollback_immediate() {
    let server = TestServer::start().await;
    let admin = server.client(DEFAULT_DB).await;
    admin.batch_execute("CREATE DATABASE app").await.unwrap();
    let writer = server.client(APP).await;
    writer
        .batch_execute("CREATE TABLE t(id INTEGER PRIMARY KEY); BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let (code, message) = refusal(&admin, "ALTER DATABASE app SET READ_ONLY WITH NO_WAIT")
        .await
        .expect("NO_WAIT fails while a write transaction is open");
    assert_eq!(code, "55006", "{message}");
    assert_eq!(is_read_only(&admin, APP).await, "f", "nothing changed");

    admin
        .batch_execute("ALTER DATABASE app SET READ_ONLY WITH ROLLBACK IMMEDIATE")
        .await
        .unwrap_or_else(|e| panic!("ROLLBACK IMMEDIATE: {}", error_text(&e)));
    assert!(
        refusal(&writer, "COMMIT").await.is_some(),
        "the open transaction cannot commit any more"
    );
    let reader = server.client(APP).await;
    let rows = query_text(&reader, "SELECT count(*) FROM t").await.unwrap();
    assert_eq!(rows[0][0].as_deref(), Some("0"), "it was rolled back");
}

#[tokio::test(flavor = "multi_thread")]
async fn read_only_holds_on_every_replica_and_survives_a_planned_failover() {
    let group = Group::start_with(GroupSpec {
        replicas: 3,
        automatic: true,
        ..GroupSpec::default()
    })
    .await;
    let primary = group.nodes[0].client(APP).await;
    primary
        .batch_execute("CREATE TABLE t(id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let admin = group.nodes[0].client(DEFAULT_DB).await;
    admin
        .batch_execute("ALTER DATABASE app SET READ_ONLY")
        .await
        .unwrap_or_else(|e| {
            panic!(
                "SET READ_ONLY on the primary: {}\n{}",
                error_text(&e),
                group.logs()
            )
        });
    let (code, message) = refusal(&primary, "INSERT INTO t VALUES (2)")
        .await
        .expect("refused");
    assert_eq!(code, "25006");
    assert!(message.contains("READ_ONLY"), "{message}");
    // On a secondary the statement is refused: the primary decides.
    let r2_admin = group.nodes[1].client(DEFAULT_DB).await;
    let (code, _) = refusal(&r2_admin, "ALTER DATABASE app SET READ_WRITE")
        .await
        .expect("READ_WRITE on a secondary is refused");
    assert_eq!(code, "25006");
    // Every replica shows it once the definition reached it.
    for i in 0..3 {
        let c = group.nodes[i].client(DEFAULT_DB).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while is_read_only(&c, APP).await != "t" {
            assert!(
                std::time::Instant::now() < deadline,
                "r{} never showed READ_ONLY\n{}",
                i + 1,
                group.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    wait_failover_ready(&group, 0, &[1, 2]).await;
    planned_failover(&group, 1)
        .await
        .unwrap_or_else(|e| panic!("planned failover to r2: {e:?}\n{}", group.logs()));
    let r2 = group.nodes[1].client(APP).await;
    let (code, message) = refusal(&r2, "INSERT INTO t VALUES (2)")
        .await
        .expect("still READ_ONLY on the new primary");
    assert_eq!(code, "25006");
    assert!(message.contains("READ_ONLY"), "{message}");
    let r2_admin = group.nodes[1].client(DEFAULT_DB).await;
    r2_admin
        .batch_execute("ALTER DATABASE app SET READ_WRITE")
        .await
        .unwrap_or_else(|e| panic!("READ_WRITE on the new primary: {}", error_text(&e)));
    assert_eq!(refusal(&r2, "INSERT INTO t VALUES (2)").await, None);
}
