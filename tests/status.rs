//! `availdb status` against real nodes (`src/cli/status.rs`):
//!
//! * `--once` prints every replica of the group with the role, connection,
//!   synchronization state and failover readiness the primary's `sys`
//!   views give, and a suspended secondary as such;
//! * asked at a secondary, it shows the primary's rows (reached at its
//!   READ_ONLY_ROUTING_URL) and says so; with the primary gone, the
//!   secondary's own row and why;
//! * without `--once` it redraws the table every `--interval`;
//! * an unreachable node, or one that does not answer (stopped), fails
//!   `--once` promptly with what to do.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::group::{query_text, Group, APP, CATCH_UP_TIMEOUT, GROUP};
use common::{availdb_bin, free_port, run_bounded, TestServer, DEFAULT_DB};

/// How long a state change may take to show in the views.
const SETTLE: Duration = Duration::from_secs(30);

/// A replica's line: (replica, role, connection, synchronization state,
/// failover ready).
type Row = (String, String, String, String, String);

/// `availdb status --port PORT ARGS`, bounded.
fn status(port: u16, args: &[&str]) -> Output {
    run_bounded(
        Command::new(availdb_bin())
            .arg("status")
            .args(["--port", &port.to_string()])
            .args(args)
            .env_remove("AVAILDB_PASSWORD"),
        Duration::from_secs(30),
    )
}

/// `status --once` on `port`: its text, which must have succeeded.
fn once(port: u16) -> String {
    let out = status(port, &["--once"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "availdb status --once on {port}: {:?}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The table's rows, sorted by replica.
fn table_rows(text: &str) -> Vec<Row> {
    let mut rows: Vec<Row> = text
        .lines()
        .skip_while(|l| !l.starts_with("DATABASE"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| {
            let cells: Vec<&str> = l
                .split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect();
            assert_eq!(cells.len(), 13, "a row of 13 columns: {l:?}\n{text}");
            let c = |i: usize| cells[i].to_string();
            (c(1), c(2), c(3), c(4), c(5))
        })
        .collect();
    rows.sort();
    rows
}

/// The same rows from node `i`'s `sys` views.
async fn view_rows(group: &Group, i: usize) -> Vec<Row> {
    let client = group.nodes[i].client(DEFAULT_DB).await;
    let rows = query_text(
        &client,
        "SELECT d.replica, r.role_desc, r.connected_state_desc,
                d.synchronization_state_desc || CASE WHEN d.is_suspended THEN ' (suspended)' ELSE '' END,
                CASE WHEN d.is_primary_replica THEN '-'
                     WHEN d.is_failover_ready THEN 'yes' ELSE 'no' END
         FROM sys.dm_hadr_database_replica_states d
         JOIN sys.dm_hadr_availability_replica_states r
           ON r.group_id = d.group_id AND r.replica = d.replica
         ORDER BY d.replica",
    )
    .await
    .expect("the views");
    rows.into_iter()
        .map(|r| {
            let t = |k: usize| r[k].clone().unwrap_or_default();
            (t(0), t(1), t(2), t(3), t(4))
        })
        .collect()
}

/// Polls until `status --once` on `port` shows what node `i`'s views say
/// and `also` holds for the rows; returns the text.
async fn wait_matching(
    group: &Group,
    port: u16,
    i: usize,
    also: impl Fn(&[Row]) -> bool,
) -> String {
    let deadline = Instant::now() + SETTLE;
    loop {
        let text = tokio::task::spawn_blocking(move || once(port))
            .await
            .unwrap();
        let (shown, viewed) = (table_rows(&text), view_rows(group, i).await);
        if shown == viewed && also(&shown) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "availdb status shows {shown:#?}, the views {viewed:#?}\n{text}\n{}",
            group.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_every_replica_as_the_primary_s_views_do_from_any_node_and_refreshes() {
    let mut group = Group::start(3).await;
    group.wait_synchronized(&[1, 2], CATCH_UP_TIMEOUT).await;
    let primary = group.primary().client(APP).await;
    for (i, node) in group.nodes.iter().enumerate() {
        primary
            .batch_execute(&format!(
                "ALTER AVAILABILITY GROUP {GROUP} MODIFY REPLICA ON 'r{}' WITH \
                 (SECONDARY_ROLE (READ_ONLY_ROUTING_URL = 'tcp://127.0.0.1:{}'))",
                i + 1,
                node.port()
            ))
            .await
            .expect("routing URL");
    }
    let ports: Vec<u16> = group.nodes.iter().map(|n| n.port()).collect();

    // On the primary: three rows, as its views say.
    let text = wait_matching(&group, ports[0], 0, |rows| rows.len() == 3).await;
    assert!(
        text.contains("group ag1: primary r1") && text.contains("a failover now loses nothing"),
        "{text}"
    );

    // Asked at a secondary: the primary's rows, saying so.
    let text = wait_matching(&group, ports[2], 0, |rows| rows.len() == 3).await;
    assert!(
        text.contains("rows from the primary r1: r3 is a secondary"),
        "{text}"
    );

    // A suspended secondary shows as such, not failover-ready.
    let r2 = group.nodes[1].client(APP).await;
    r2.batch_execute(&format!("ALTER DATABASE {APP} SET HADR SUSPEND"))
        .await
        .expect("suspend on r2");
    let text = wait_matching(&group, ports[0], 0, |rows| {
        rows.iter().any(|(r, _, _, state, ready)| {
            r == "r2" && state.contains("(suspended)") && ready == "no"
        })
    })
    .await;
    eprintln!("{text}");
    r2.batch_execute(&format!("ALTER DATABASE {APP} SET HADR RESUME"))
        .await
        .expect("resume on r2");

    // Without --once: a table per interval, until stopped.
    let port = ports[0];
    let out = tokio::task::spawn_blocking(move || {
        run_bounded(
            Command::new("timeout")
                .args(["3", availdb_bin().to_str().unwrap(), "status"])
                .args(["--port", &port.to_string(), "--interval", "0.5"]),
            Duration::from_secs(30),
        )
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let tables = text.matches("availdb status of").count();
    assert!(
        (4..=8).contains(&tables),
        "3 s at 0.5 s a refresh drew {tables} tables:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text.matches("\nDATABASE").count(),
        tables,
        "every refresh draws the whole table:\n{text}"
    );

    // The primary gone (manual failover: no new one): a secondary shows
    // its own row and why.
    group.nodes[0].kill9();
    let text = tokio::task::spawn_blocking(move || once(ports[1]))
        .await
        .unwrap();
    let rows = table_rows(&text);
    assert_eq!(rows.len(), 1, "{text}");
    assert_eq!(rows[0].0, "r2", "{text}");
    assert!(
        text.contains("only r2's own row") && text.contains("the primary r1 cannot be reached"),
        "{text}"
    );
}

#[test]
fn status_once_on_a_port_without_a_node_fails_saying_what_to_give() {
    let port = free_port();
    let out = status(port, &["--once"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("cannot connect to 127.0.0.1:{port}")) && err.contains("--port"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_once_on_a_stopped_node_gives_up_within_seconds_saying_what_to_try() {
    let server = TestServer::start().await;
    server.pause();
    let port = server.port();
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || status(port, &["--once"]))
        .await
        .unwrap();
    let took = started.elapsed();
    server.resume();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        took < Duration::from_secs(20),
        "availdb status hung on a stopped node ({took:?}): {err}"
    );
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("--port"),
        "{err}"
    );
    eprintln!("after {took:?}: {err}");
}
