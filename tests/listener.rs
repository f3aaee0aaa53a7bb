//! The availability group listener and read-only routing, with real
//! `availdb server` processes and real clients (tokio-postgres, psql,
//! psycopg): writes through the listener reach the primary, read-intent
//! sessions follow the routing list, ALLOW_CONNECTIONS holds on every node,
//! a client keeps the listener's address across failovers, libpq's
//! `target_session_attrs` finds the right node, read-your-writes with
//! `availdb.read_after_lsn`, the PostgreSQL catalog and sequences follow
//! the primary across failovers, and broken start-up packets never wedge
//! the listener. Every wait is bounded; nothing asserts how long anything took.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::{Client, NoTls};

use common::cluster::{planned_failover, wait_failover_ready, KeepLogsOnPanic};
use common::group::{error_text, exec, name, query_text, Group, GroupSpec, APP, GROUP};
use common::{free_port, run_bounded, DEFAULT_DB, USER};

/// Bound on the listener answering after it was defined, and on a client
/// reaching a new primary through it after a failover.
const REACH_TIMEOUT: Duration = Duration::from_secs(60);
/// Hang guard for one psql or python run.
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(100);

/// A listener's two ports.
#[derive(Clone, Copy, Debug)]
struct Listener {
    rw: u16,
    ro: u16,
}

impl Listener {
    fn conn(&self, port: u16, db: &str, extra: &str) -> String {
        format!("host=127.0.0.1 port={port} user={USER} dbname={db} connect_timeout=20 {extra}")
    }

    /// Read-write port, database `db`, extra libpq keywords.
    fn rw(&self, db: &str, extra: &str) -> String {
        self.conn(self.rw, db, extra)
    }

    /// Read-only port.
    fn ro(&self, db: &str, extra: &str) -> String {
        self.conn(self.ro, db, extra)
    }
}

async fn connect(conn: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = match tokio::time::timeout(
        Duration::from_secs(30),
        tokio_postgres::connect(conn, NoTls),
    )
    .await
    {
        Ok(result) => result?,
        Err(_) => panic!("connecting with {conn:?} did not finish within 30 s"),
    };
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Connects, retrying every [`POLL`] until `timeout`.
async fn connect_retrying(conn: &str, timeout: Duration, group: &Group) -> Client {
    let deadline = Instant::now() + timeout;
    loop {
        match connect(conn).await {
            Ok(client) => return client,
            Err(e) if Instant::now() > deadline => panic!(
                "{conn}: no session within {timeout:?}: {}\n{}",
                error_text(&e),
                group.logs()
            ),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// The replica a session runs on.
async fn served_by(client: &Client) -> String {
    let rows = query_text(
        client,
        "SELECT replica FROM sys.dm_hadr_availability_replica_states WHERE is_local",
    )
    .await
    .unwrap_or_else(|e| panic!("which replica: {}", error_text(&e)));
    rows.first()
        .and_then(|r| r[0].clone())
        .expect("a local replica row")
}

async fn value(client: &Client, sql: &str) -> String {
    let rows = query_text(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e)));
    rows.first()
        .and_then(|r| r[0].clone())
        .unwrap_or_else(|| panic!("{sql}: no value"))
}

/// The SQLSTATE and whole text of a failed connection attempt.
fn refusal(result: Result<Client, tokio_postgres::Error>, what: &str) -> (String, String) {
    match result {
        Ok(_) => panic!("{what}: the session was accepted, expected a refusal"),
        Err(e) => match e.as_db_error() {
            Some(db) => (
                db.code().code().to_string(),
                format!("{} (hint: {:?})", db.message(), db.hint()),
            ),
            None => panic!("{what}: refused without a server error: {e:?}"),
        },
    }
}

/// Adds the listener (and runs `statements` first) on the primary `i`,
/// then waits until a session through it answers.
async fn define_listener(group: &Group, i: usize, statements: &[String]) -> Listener {
    let (rw, ro) = common::two_free_ports();
    let client = group.nodes[i].client(DEFAULT_DB).await;
    for sql in statements {
        exec(&client, sql, &name(i)).await;
    }
    exec(
        &client,
        &format!(
            "ALTER AVAILABILITY GROUP {GROUP} ADD LISTENER '{GROUP}-listener' (PORT = {rw}, READ_ONLY_PORT = {ro})"
        ),
        &name(i),
    )
    .await;
    let listener = Listener { rw, ro };
    connect_retrying(&listener.rw(DEFAULT_DB, ""), REACH_TIMEOUT, group).await;
    listener
}

/// The primary's routing list and each secondary's routing URL (r2's is
/// its client port; r3 has none, so sessions reach it through its
/// endpoint).
fn routing(group: &Group, list: &str) -> Vec<String> {
    vec![
        format!(
            "ALTER AVAILABILITY GROUP {GROUP} MODIFY REPLICA ON 'r1' WITH (PRIMARY_ROLE (READ_ONLY_ROUTING_LIST = {list}))"
        ),
        format!(
            "ALTER AVAILABILITY GROUP {GROUP} MODIFY REPLICA ON 'r2' WITH (SECONDARY_ROLE (READ_ONLY_ROUTING_URL = 'tcp://127.0.0.1:{}'))",
            group.nodes[1].port()
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn the_listener_sends_writes_to_the_primary_and_spreads_read_intent_over_the_routing_set() {
    let group = Group::start(3).await;
    let _logs = KeepLogsOnPanic::new(&group, "listener_routing");
    let listener = define_listener(&group, 0, &routing(&group, "(('r2', 'r3'), 'r1')")).await;
    group.wait_synchronized(&[1, 2], REACH_TIMEOUT).await;

    // The definition, as every replica shows it.
    let r3 = group.nodes[2].client(DEFAULT_DB).await;
    let rows = query_text(
        &r3,
        "SELECT dns_name, port, read_only_port FROM sys.availability_group_listeners",
    )
    .await
    .unwrap_or_else(|e| panic!("listener view: {}", error_text(&e)));
    let port = |p: u16| Some(p.to_string());
    assert_eq!(
        rows,
        vec![vec![
            Some(format!("{GROUP}-listener")),
            port(listener.rw),
            port(listener.ro)
        ]]
    );
    let rows = query_text(
        &r3,
        "SELECT routing_priority, read_only_replica_server_name \
         FROM sys.availability_read_only_routing_lists WHERE replica_server_name = 'r1' ORDER BY 1, 2",
    )
    .await
    .unwrap_or_else(|e| panic!("routing view: {}", error_text(&e)));
    let entry = |p: &str, r: &str| vec![Some(p.to_string()), Some(r.to_string())];
    assert_eq!(
        rows,
        vec![entry("1", "r2"), entry("1", "r3"), entry("2", "r1")]
    );

    let writer = connect_retrying(&listener.rw(APP, ""), REACH_TIMEOUT, &group).await;
    assert_eq!(served_by(&writer).await, "r1", "a read-write session");
    exec(
        &writer,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)",
        "listener",
    )
    .await;
    exec(&writer, "INSERT INTO t VALUES (1, 'one')", "listener").await;
    let token = value(&writer, "SHOW availdb.commit_lsn").await;
    assert!(token.parse::<u64>().unwrap() > 0, "commit LSN {token}");

    // Read intent by port, and by PGOPTIONS-style options on the
    // read-write port: round-robin over ('r2', 'r3'), never the primary.
    let mut seen = Vec::new();
    for i in 0..8 {
        let conn = if i % 2 == 0 {
            listener.ro(APP, "")
        } else {
            listener.rw(APP, "options='-c application_intent=read_only'")
        };
        let reader = connect_retrying(&conn, REACH_TIMEOUT, &group).await;
        seen.push(served_by(&reader).await);
        let write = reader
            .batch_execute("INSERT INTO t VALUES (99, 'no')")
            .await;
        assert_eq!(
            write
                .err()
                .and_then(|e| e.code().map(|c| c.code().to_string())),
            Some("25006".to_string()),
            "a write on a read-intent session"
        );
    }
    let distinct: BTreeSet<&str> = seen.iter().map(String::as_str).collect();
    assert_eq!(
        distinct,
        BTreeSet::from(["r2", "r3"]),
        "read-intent sessions went to {seen:?}"
    );

    // Read-your-writes through the listener: the token as a start-up option.
    let reader = connect_retrying(
        &listener.ro(APP, &format!("options='-c availdb.read_after_lsn={token}'")),
        REACH_TIMEOUT,
        &group,
    )
    .await;
    assert_eq!(value(&reader, "SELECT v FROM t WHERE id = 1").await, "one");

    // r3 gone: its set falls to r2. r2 not readable either: the primary,
    // last in the list, takes the reads.
    let mut group = group;
    group.nodes[2].kill9();
    for _ in 0..4 {
        let reader = connect_retrying(&listener.ro(APP, ""), REACH_TIMEOUT, &group).await;
        assert_eq!(served_by(&reader).await, "r2", "r3 is down");
    }
    let primary = group.primary().client(DEFAULT_DB).await;
    exec(
        &primary,
        &format!("ALTER AVAILABILITY GROUP {GROUP} MODIFY REPLICA ON 'r2' WITH (SECONDARY_ROLE (ALLOW_CONNECTIONS = NO))"),
        "r1",
    )
    .await;
    let deadline = Instant::now() + REACH_TIMEOUT;
    loop {
        let reader = connect_retrying(&listener.ro(APP, ""), REACH_TIMEOUT, &group).await;
        if served_by(&reader).await == "r1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "read intent never fell back to r1\n{}",
            group.logs()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Rule: a session a listener routes to a node on its own host is handed
/// to that node's front end, not relayed: in-process when it is the
/// listener's own node, by passing the client's socket to the node's
/// process otherwise. Every session reaches the primary and works, and is
/// counted open there until its client leaves.
#[tokio::test(flavor = "multi_thread")]
async fn sessions_routed_to_a_node_on_the_listeners_host_are_handed_over_not_relayed() {
    const SESSIONS: usize = 24;
    let group = Group::start(2).await;
    let _logs = KeepLogsOnPanic::new(&group, "listener_handover");
    let listener = define_listener(&group, 0, &[]).await;
    let mut before = [[0.0; 2]; 2];
    for (i, node) in group.nodes.iter().enumerate() {
        before[i] = [
            common::metric_sum(node, "availdb_listener_sessions_total").await,
            common::metric_sum(node, "availdb_listener_handovers_total").await,
        ];
    }
    let mut clients = Vec::new();
    for i in 0..SESSIONS {
        let client = connect_retrying(&listener.rw(APP, ""), REACH_TIMEOUT, &group).await;
        assert_eq!(served_by(&client).await, "r1", "session {i}");
        assert_eq!(value(&client, "SELECT 40 + 2").await, "42");
        clients.push(client);
    }
    let mut sessions = [0.0; 2];
    let mut handed = [0.0; 2];
    for (i, node) in group.nodes.iter().enumerate() {
        sessions[i] =
            common::metric_sum(node, "availdb_listener_sessions_total").await - before[i][0];
        handed[i] =
            common::metric_sum(node, "availdb_listener_handovers_total").await - before[i][1];
    }
    assert_eq!(
        sessions[0] + sessions[1],
        SESSIONS as f64,
        "sessions per node {sessions:?}"
    );
    // The kernel spreads the sessions over both nodes' listener sockets
    // (SO_REUSEPORT): all 24 on one node has a chance of 2^-23.
    assert!(
        sessions[0] > 0.0 && sessions[1] > 0.0,
        "sessions per node {sessions:?}"
    );
    // r1's listener handed its sessions to r1 in-process; r2's passed
    // every one of its sessions' sockets to r1's process.
    assert_eq!(handed, sessions, "handed over per node, sessions per node");
    // r1 serves all of them as handed over, open until their clients leave.
    let open = "availdb_listener_handed_over_sessions";
    assert_eq!(
        common::metric_sum(&group.nodes[0], open).await,
        SESSIONS as f64
    );
    assert_eq!(common::metric_sum(&group.nodes[1], open).await, 0.0);
    drop(clients);
    let deadline = Instant::now() + REACH_TIMEOUT;
    while common::metric_sum(&group.nodes[0], open).await > 0.0 {
        assert!(
            Instant::now() < deadline,
            "handed-over sessions still counted open 60 s after their clients left"
        );
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn allow_connections_is_enforced_on_every_node_directly_and_through_the_listener() {
    let group = Group::start(3).await;
    let _logs = KeepLogsOnPanic::new(&group, "listener_allow_connections");
    let settings = vec![
        format!(
            "ALTER AVAILABILITY GROUP {GROUP} MODIFY REPLICA ON 'r1' WITH (PRIMARY_ROLE (ALLOW_CONNECTIONS = READ_WRITE, READ_ONLY_ROUTING_LIST = ('r2', 'r3')))"
        ),
        format!("ALTER AVAILABILITY GROUP {GROUP} MODIFY REPLICA ON 'r2' WITH (SECONDARY_ROLE (ALLOW_CONNECTIONS = NO))"),
        format!(
            "ALTER AVAILABILITY GROUP {GROUP} MODIFY REPLICA ON 'r3' WITH (SECONDARY_ROLE (ALLOW_CONNECTIONS = READ_ONLY))"
        ),
    ];
    let listener = define_listener(&group, 0, &settings).await;
    let direct = |i: usize, extra: &str| format!("{} {extra}", group.nodes[i].conn_string(APP));
    let intent = "options='-c application_intent=read_only'";

    // The secondaries learn the settings with the next definition.
    let deadline = Instant::now() + REACH_TIMEOUT;
    while connect(&direct(1, "")).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "r2 still takes sessions\n{}",
            group.logs()
        );
        tokio::time::sleep(POLL).await;
    }
    let refused = [
        (1, "", "r2 ALLOW_CONNECTIONS = NO, no intent"),
        (1, intent, "r2 ALLOW_CONNECTIONS = NO, read intent"),
        (2, "", "r3 ALLOW_CONNECTIONS = READ_ONLY, no intent"),
        (
            0,
            intent,
            "r1 PRIMARY_ROLE ALLOW_CONNECTIONS = READ_WRITE, read intent",
        ),
    ];
    for (i, extra, what) in refused {
        let deadline = Instant::now() + REACH_TIMEOUT;
        let (code, text) = loop {
            match connect(&direct(i, extra)).await {
                Ok(_) if Instant::now() < deadline => tokio::time::sleep(POLL).await,
                other => break refusal(other, what),
            }
        };
        assert_eq!(code, "08004", "{what}: {text}");
        assert!(text.contains("ALLOW_CONNECTIONS"), "{what}: {text}");
    }
    let accepted = [
        (1, DEFAULT_DB, "", "r2, a database outside the group"),
        (2, APP, intent, "r3 with read intent"),
        (0, APP, "", "r1 without read intent"),
    ];
    for (i, db, extra, what) in accepted {
        let conn = format!("{} {extra}", group.nodes[i].conn_string(db));
        let client = connect(&conn)
            .await
            .unwrap_or_else(|e| panic!("{what}: {}", error_text(&e)));
        assert_eq!(served_by(&client).await, name(i), "{what}");
    }

    // Through the listener: r2 is not readable, so reads go to r3; the
    // primary keeps read-write sessions.
    for _ in 0..4 {
        let reader = connect_retrying(&listener.ro(APP, ""), REACH_TIMEOUT, &group).await;
        assert_eq!(served_by(&reader).await, "r3");
    }
    let writer = connect_retrying(&listener.rw(APP, ""), REACH_TIMEOUT, &group).await;
    assert_eq!(served_by(&writer).await, "r1");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_keeps_the_listener_address_across_failovers_and_sessions_on_a_demoted_primary_end(
) {
    let mut group = Group::start_with(GroupSpec {
        automatic: true,
        ..GroupSpec::default()
    })
    .await;
    let _logs = KeepLogsOnPanic::new(&group, "listener_failover");
    let listener = define_listener(&group, 0, &[]).await;
    wait_failover_ready(&group, 0, &[1, 2]).await;
    let writer = connect_retrying(&listener.rw(APP, ""), REACH_TIMEOUT, &group).await;
    exec(
        &writer,
        "CREATE TABLE t(id INTEGER PRIMARY KEY)",
        "listener",
    )
    .await;
    exec(&writer, "INSERT INTO t VALUES (1)", "listener").await;
    assert_eq!(served_by(&writer).await, "r1");
    let direct = group.nodes[0].client(APP).await;

    // Planned failover to r2: both sessions on r1 end, saying to reconnect.
    wait_failover_ready(&group, 0, &[1, 2]).await;
    if let Err((code, message)) = planned_failover(&group, 1).await {
        panic!("planned failover to r2: {code} {message}\n{}", group.logs());
    }
    for (client, what) in [
        (&direct, "direct session on r1"),
        (&writer, "listener session on r1"),
    ] {
        let deadline = Instant::now() + REACH_TIMEOUT;
        let err = loop {
            match client.simple_query("SELECT 1").await {
                Ok(_) if Instant::now() < deadline => tokio::time::sleep(POLL).await,
                Ok(_) => panic!("{what}: still served after the failover\n{}", group.logs()),
                Err(e) => break e,
            }
        };
        let db = err
            .as_db_error()
            .unwrap_or_else(|| panic!("{what}: ended without an error message: {err:?}"));
        assert_eq!(db.code().code(), "57P01", "{what}: {}", db.message());
        assert!(
            db.message().contains("no longer the primary"),
            "{what}: {}",
            db.message()
        );
        assert!(
            db.hint().is_some_and(|h| h.contains("reconnect")),
            "{what}: {:?}",
            db.hint()
        );
        assert!(client.is_closed() || client.simple_query("SELECT 1").await.is_err());
    }
    let writer = connect_retrying(&listener.rw(APP, ""), REACH_TIMEOUT, &group).await;
    assert_eq!(
        served_by(&writer).await,
        "r2",
        "the same address after a planned failover"
    );
    exec(
        &writer,
        "INSERT INTO t VALUES (2)",
        "listener after planned failover",
    )
    .await;

    // kill -9 of the primary: a session opened through the same address at
    // once is held by the listener (the dead primary refuses it; a replica
    // not yet in office answers 57P03) and reaches the replica the cluster
    // promotes, with no retry by the client.
    wait_failover_ready(&group, 1, &[0, 2]).await;
    group.nodes[1].kill9();
    let held = connect(&listener.rw(APP, "")).await.unwrap_or_else(|e| {
        panic!(
            "a session opened through the listener just after kill -9 of r2 was not held \
             until a new primary took it: {}\n{}",
            error_text(&e),
            group.logs()
        )
    });
    let held_on = served_by(&held).await;
    assert!(["r1", "r3"].contains(&held_on.as_str()), "{held_on}");
    drop(held);
    // Writes through the listener reach the new primary.
    let deadline = Instant::now() + REACH_TIMEOUT;
    let new_primary = loop {
        let attempt = async {
            let client = connect(&listener.rw(APP, ""))
                .await
                .map_err(|e| error_text(&e))?;
            client
                .batch_execute("INSERT OR IGNORE INTO t VALUES (3)")
                .await
                .map_err(|e| error_text(&e))?;
            Ok::<_, String>(served_by(&client).await)
        };
        match attempt.await {
            Ok(replica) => break replica,
            Err(e) if Instant::now() > deadline => {
                panic!(
                    "no write through the listener after kill -9 of r2: {e}\n{}",
                    group.logs()
                )
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    };
    assert!(
        ["r1", "r3"].contains(&new_primary.as_str()),
        "{new_primary}"
    );
    let client = connect_retrying(&listener.rw(APP, ""), REACH_TIMEOUT, &group).await;
    assert_eq!(
        value(
            &client,
            "SELECT group_concat(id) FROM (SELECT id FROM t ORDER BY id)"
        )
        .await,
        "1,2,3"
    );
}

/// Runs a command (bounded) and returns its stdout, failing with its output.
async fn output(mut cmd: Command, what: &str) -> String {
    for var in [
        "PGOPTIONS",
        "PGTARGETSESSIONATTRS",
        "PGSSLMODE",
        "PGSERVICE",
        "PGPASSWORD",
    ] {
        cmd.env_remove(var);
    }
    let out = tokio::task::spawn_blocking(move || run_bounded(&mut cmd, TOOL_TIMEOUT))
        .await
        .expect("client program thread");
    assert!(
        out.status.success(),
        "{what}: exit {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const WHICH: &str = "SELECT replica FROM sys.dm_hadr_availability_replica_states WHERE is_local";

const PSYCOPG_MATRIX: &str = r#"
import sys, psycopg
for conninfo in sys.argv[1:]:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(
            "SELECT replica FROM sys.dm_hadr_availability_replica_states WHERE is_local"
        ).fetchone()
        print(row[0])
"#;

const PSYCOPG_COMMIT_LSN: &str = r#"
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    conn.execute("CREATE TABLE IF NOT EXISTS lsn_probe(id INTEGER PRIMARY KEY)")
    conn.execute("INSERT INTO lsn_probe DEFAULT VALUES")
    print(conn.info.parameter_status("availdb.commit_lsn"))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn target_session_attrs_pick_the_right_node_in_psql_psycopg_and_tokio_postgres() {
    let psycopg = std::process::Command::new("python3")
        .args(["-c", "import psycopg"])
        .output();
    assert!(
        psycopg.is_ok_and(|o| o.status.success()),
        "this test needs psycopg 3 in the python3 on PATH: run it through scripts/test, \
         which makes .venv/ with psycopg and puts it first on PATH"
    );
    let group = Group::start(3).await;
    let _logs = KeepLogsOnPanic::new(&group, "listener_target_session_attrs");
    let hosts = |order: &[usize], attrs: &str| {
        let ports: Vec<String> = order
            .iter()
            .map(|&i| group.nodes[i].port().to_string())
            .collect();
        format!(
            "host={} port={} user={USER} dbname={APP} connect_timeout=10 target_session_attrs={attrs}",
            vec!["127.0.0.1"; order.len()].join(","),
            ports.join(",")
        )
    };
    // (host order, target_session_attrs, node libpq must pick)
    let matrix: Vec<(&[usize], &str, &str)> = vec![
        (&[1, 0, 2], "read-write", "r1"),
        (&[1, 0, 2], "primary", "r1"),
        (&[1, 0, 2], "read-only", "r2"),
        (&[1, 0, 2], "standby", "r2"),
        (&[1, 0, 2], "prefer-standby", "r2"),
        (&[1, 0, 2], "any", "r2"),
        (&[0, 2, 1], "read-only", "r3"),
        (&[0, 2, 1], "standby", "r3"),
        (&[0, 2, 1], "prefer-standby", "r3"),
        (&[0, 2, 1], "any", "r1"),
        (&[2, 1, 0], "read-write", "r1"),
    ];
    for (order, attrs, want) in &matrix {
        let conn = hosts(order, attrs);
        let mut psql = Command::new("psql");
        psql.args(["-X", "-A", "-t", "-c", WHICH, &conn]);
        let got = output(psql, &format!("psql {conn}")).await;
        assert_eq!(got.trim(), *want, "psql {conn}");
    }
    let mut python = Command::new("python3");
    python.arg("-c").arg(PSYCOPG_MATRIX);
    for (order, attrs, _) in &matrix {
        python.arg(hosts(order, attrs));
    }
    let got = output(python, "psycopg matrix").await;
    let want: Vec<&str> = matrix.iter().map(|(_, _, w)| *w).collect();
    assert_eq!(got.lines().collect::<Vec<_>>(), want, "psycopg picks");

    // tokio-postgres asks SHOW transaction_read_only.
    for (order, attrs, want) in [
        (&[1, 2, 0][..], "read-write", "r1"),
        (&[0, 1, 2][..], "read-only", "r2"),
    ] {
        let client = connect(&hosts(order, attrs))
            .await
            .unwrap_or_else(|e| panic!("tokio-postgres {attrs}: {}", error_text(&e)));
        assert_eq!(served_by(&client).await, want, "tokio-postgres {attrs}");
    }

    // psycopg sees every commit's LSN as ParameterStatus.
    let mut python = Command::new("python3");
    python
        .arg("-c")
        .arg(PSYCOPG_COMMIT_LSN)
        .arg(hosts(&[1, 0, 2], "read-write"));
    let lsn = output(python, "psycopg commit LSN").await;
    assert!(
        lsn.trim().parse::<u64>().is_ok_and(|n| n > 0),
        "availdb.commit_lsn = {lsn:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn read_after_lsn_waits_until_a_lagging_secondary_has_redone_the_write() {
    let group = Group::start(2).await;
    let _logs = KeepLogsOnPanic::new(&group, "listener_read_after_lsn");
    let primary = group.primary().client(APP).await;
    exec(&primary, "CREATE TABLE t(id INTEGER PRIMARY KEY)", "r1").await;
    group.wait_caught_up(&[1], REACH_TIMEOUT).await;

    // The secondary lags, deterministically: data movement is suspended.
    exec(
        &primary,
        &format!("ALTER DATABASE {APP} SET HADR SUSPEND"),
        "r1",
    )
    .await;
    exec(&primary, "INSERT INTO t VALUES (42)", "r1").await;
    let token = value(&primary, "SHOW availdb.commit_lsn").await;
    let secondary = group.nodes[1].client(APP).await;
    assert_eq!(
        value(&secondary, "SELECT count(*) FROM t").await,
        "0",
        "the secondary lags"
    );

    // Bounded: with data movement suspended the wait gives up.
    exec(&secondary, "SET statement_timeout = '300ms'", "r2").await;
    exec(
        &secondary,
        &format!("SET availdb.read_after_lsn = '{token}'"),
        "r2",
    )
    .await;
    let err = secondary
        .simple_query("SELECT count(*) FROM t")
        .await
        .expect_err("the wait must give up while data movement is suspended");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "55000", "{}", db.message());
    assert!(db.message().contains(&token), "{}", db.message());
    exec(&secondary, "RESET statement_timeout", "r2").await;

    // Data movement resumes in the background; the read waits for it.
    let resume = {
        let primary = group.primary().client(DEFAULT_DB).await;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            primary
                .batch_execute(&format!("ALTER DATABASE {APP} SET HADR RESUME"))
                .await
        })
    };
    assert_eq!(
        value(&secondary, "SELECT count(*) FROM t").await,
        "1",
        "read after the token"
    );
    resume
        .await
        .expect("resume task")
        .unwrap_or_else(|e| panic!("RESUME: {}", error_text(&e)));
}

/// `psql -c SQL…` on node `i`'s `app`, one session: (stdout, stderr, where
/// psql prints NOTICEs).
async fn psql(group: &Group, i: usize, sqls: &[&str]) -> (String, String) {
    let mut cmd = group.nodes[i].libpq_command("psql", APP);
    cmd.args(["-X", "-A", "-t"]);
    for sql in sqls {
        cmd.args(["-c", sql]);
    }
    let out = tokio::task::spawn_blocking(move || run_bounded(&mut cmd, TOOL_TIMEOUT))
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(
        out.status.success(),
        "psql {sqls:?} on {}: {stderr}",
        name(i)
    );
    (stdout, stderr)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_on_a_suspended_or_cut_off_secondary_gets_a_lag_notice_unless_read_your_writes_is_asked(
) {
    let mut group = Group::start(2).await;
    let _logs = KeepLogsOnPanic::new(&group, "listener_lag_notice");
    let primary = group.primary().client(APP).await;
    exec(&primary, "CREATE TABLE t(id INTEGER PRIMARY KEY)", "r1").await;
    exec(&primary, "INSERT INTO t VALUES (1)", "r1").await;
    let token = value(&primary, "SHOW availdb.commit_lsn").await;
    group.wait_caught_up(&[1], REACH_TIMEOUT).await;
    let read = "SELECT count(*) FROM t";

    // Caught up: no notice.
    let (out, err) = psql(&group, 1, &[read]).await;
    assert_eq!(out.trim(), "1");
    assert!(
        !err.contains("NOTICE"),
        "a caught-up secondary warned: {err}"
    );

    // Data movement suspended on r2: it says it may be behind, and what to
    // do; read-your-writes asked, or the notice turned off: no notice.
    let secondary = group.nodes[1].client(APP).await;
    exec(
        &secondary,
        &format!("ALTER DATABASE {APP} SET HADR SUSPEND"),
        "r2",
    )
    .await;
    exec(&primary, "INSERT INTO t VALUES (2)", "r1").await;
    let (_, err) = psql(&group, 1, &[read]).await;
    assert!(
        err.contains("NOTICE:")
            && err.contains("suspended on replica \"r2\"")
            && err.contains("this read may miss recent commits")
            && err.contains("SET availdb.read_after_lsn"),
        "{err}"
    );
    let ryw = format!("SET availdb.read_after_lsn = '{token}'");
    let (out, err) = psql(&group, 1, &[&ryw, read]).await;
    assert!(out.ends_with("1\n") || out.ends_with("2\n"), "{out}");
    assert!(!err.contains("NOTICE"), "read-your-writes asked: {err}");
    let (_, err) = psql(&group, 1, &["SET availdb.lag_notice_after = 0", read]).await;
    assert!(!err.contains("NOTICE"), "notice turned off: {err}");

    // Resumed and caught up: quiet again.
    exec(
        &secondary,
        &format!("ALTER DATABASE {APP} SET HADR RESUME"),
        "r2",
    )
    .await;
    group.wait_caught_up(&[1], REACH_TIMEOUT).await;
    let (out, err) = psql(&group, 1, &[read]).await;
    assert_eq!(out.trim(), "2");
    assert!(!err.contains("NOTICE"), "caught up again: {err}");

    // The primary gone (manual failover: none takes over): r2 is cut off.
    group.nodes[0].kill9();
    let deadline = Instant::now() + REACH_TIMEOUT;
    loop {
        let (out, err) = psql(&group, 1, &[read]).await;
        assert_eq!(out.trim(), "2", "{err}");
        if err.contains("is not connected to the primary of availability group \"ag1\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "r2, cut off from its primary, still reads without a notice: {err}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Sends `bytes` to the listener and returns what it answered before
/// closing: `N` for an encryption request, an ErrorResponse's SQLSTATE, or
/// nothing.
async fn raw_exchange(port: u16, bytes: &[u8], close_write: bool) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(bytes).await.expect("send");
    if close_write {
        s.shutdown().await.expect("shutdown");
    }
    let mut answer = Vec::new();
    match tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut answer)).await {
        Ok(_) => answer,
        Err(_) => panic!("the listener neither answered nor closed after {bytes:?}"),
    }
}

fn sqlstate_of(answer: &[u8]) -> Option<String> {
    let start = answer.iter().position(|b| *b == b'E')?;
    let body = answer.get(start + 5..)?;
    let mut fields = body.split(|b| *b == 0);
    fields.find_map(|f| {
        f.strip_prefix(b"C")
            .map(|c| String::from_utf8_lossy(c).into_owned())
    })
}

/// Bytes a broken client sends the listener, and what must come back: the
/// `N`s for its encryption requests, then an ErrorResponse with `sqlstate`
/// (or nothing, when the client left mid-packet).
struct Junk {
    what: &'static str,
    bytes: Vec<u8>,
    close_write: bool,
    prefix: &'static [u8],
    sqlstate: Option<&'static str>,
}

fn untyped(code: u32, body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(body);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_startup_packets_and_ssl_requests_get_a_clean_error_and_never_wedge_the_listener()
{
    let group = Group::start(2).await;
    let _logs = KeepLogsOnPanic::new(&group, "listener_malformed");
    let listener = define_listener(&group, 0, &[]).await;
    // A client that connects and says nothing holds no one up.
    let _idle = TcpStream::connect(("127.0.0.1", listener.rw))
        .await
        .expect("connect");

    let ssl = untyped(80_877_103, &[]);
    let gss = untyped(80_877_104, &[]);
    let mut ssl_then_short = ssl.clone();
    ssl_then_short.extend_from_slice(&3u32.to_be_bytes());
    let mut gss_ssl_then_v2 = gss.clone();
    gss_ssl_then_v2.extend_from_slice(&ssl);
    gss_ssl_then_v2.extend_from_slice(&untyped(0x0002_0000, &[]));
    let mut three_ssl = ssl.clone();
    three_ssl.extend_from_slice(&ssl);
    three_ssl.extend_from_slice(&ssl);
    let case = |what, bytes, close_write, prefix: &'static [u8], sqlstate| Junk {
        what,
        bytes,
        close_write,
        prefix,
        sqlstate,
    };
    let cases = [
        case(
            "SSLRequest, then a length of 3",
            ssl_then_short,
            false,
            b"N",
            Some("08P01"),
        ),
        case(
            "a length past 10000",
            20_000u32.to_be_bytes().to_vec(),
            false,
            b"",
            Some("08P01"),
        ),
        case(
            "GSSENC, SSL, then protocol 2",
            gss_ssl_then_v2,
            false,
            b"NN",
            Some("0A000"),
        ),
        case("three SSLRequests", three_ssl, false, b"NN", Some("08P01")),
        case(
            "parameters without their NUL",
            untyped(0x0003_0000, b"user\0availdb"),
            false,
            b"",
            Some("08P01"),
        ),
        case(
            "a truncated start-up packet",
            vec![0, 0, 0, 100, 0, 3, 0, 0, b'u'],
            true,
            b"",
            None,
        ),
        case("SSLRequest, then nothing", ssl, true, b"N", None),
    ];
    for junk in cases {
        for port in [listener.rw, listener.ro] {
            let answer = raw_exchange(port, &junk.bytes, junk.close_write).await;
            let what = junk.what;
            assert!(
                answer.starts_with(junk.prefix),
                "{what}: answered {answer:?}"
            );
            assert_eq!(
                sqlstate_of(&answer[junk.prefix.len()..]).as_deref(),
                junk.sqlstate,
                "{what}: {answer:?}"
            );
        }
    }
    // An unknown application_intent is refused by name.
    let (code, text) = refusal(
        connect(&listener.rw(APP, "options='-c application_intent=sometimes'")).await,
        "application_intent=sometimes",
    );
    assert_eq!(code, "22023", "{text}");
    assert!(text.contains("application_intent"), "{text}");

    // The listener still serves, and real clients negotiating SSL too.
    let client = connect(&listener.rw(APP, "sslmode=prefer"))
        .await
        .expect("a session after the junk");
    assert_eq!(served_by(&client).await, "r1");
    let mut psql = Command::new("psql");
    psql.args([
        "-X",
        "-A",
        "-t",
        "-c",
        WHICH,
        &listener.ro(APP, "sslmode=prefer"),
    ]);
    // No routing list: read intent goes to the primary, as in SQL Server.
    assert_eq!(
        output(psql, "psql through the read-only port").await.trim(),
        "r1"
    );
}

/// A stand-alone listener (`availdb listener --join`) process, killed and
/// its directory removed on drop.
struct StandAlone {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl StandAlone {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("listener.log")).unwrap_or_default()
    }
}

impl Drop for StandAlone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `availdb listener --join` on a host with no replica (its own loopback
/// address here) follows the cluster without voting and serves the
/// group's listener: sessions through it reach the primary, and after a
/// planned failover the same address reaches the new primary. It refuses
/// to host a replica, and shows as a non-voting member.
#[tokio::test(flavor = "multi_thread")]
async fn a_stand_alone_listener_follows_the_primary_without_hosting_a_replica() {
    let group = Group::start_with(GroupSpec {
        replicas: 2,
        ..GroupSpec::default()
    })
    .await;
    let _logs = KeepLogsOnPanic::new(
        &group,
        "a_stand_alone_listener_follows_the_primary_without_hosting_a_replica",
    );
    let listener = define_listener(&group, 0, &[]).await;
    let host = "127.0.0.9";
    let dir = tempfile::tempdir().expect("temp dir");
    let log = std::fs::File::create(dir.path().join("listener.log")).expect("log file");
    let client_port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_availdb"))
        .args(["listener", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--host", host, "--name", "l1"])
        .args(["--port", &client_port.to_string()])
        .args(["--endpoint", &format!("{host}:{}", free_port())])
        .args(["--join", &format!("127.0.0.1:{}", group.nodes[0].port())])
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("spawn availdb listener");
    let stand_alone = StandAlone { child, dir };
    let through = |db: &str| {
        format!(
            "host={host} port={} user={USER} dbname={db} connect_timeout=20",
            listener.rw
        )
    };
    let deadline = Instant::now() + REACH_TIMEOUT;
    let first = loop {
        if let Ok(client) = connect(&through(APP)).await {
            break client;
        }
        assert!(
            Instant::now() < deadline,
            "the stand-alone listener at {host}:{} never answered\n{}\n{}",
            listener.rw,
            stand_alone.log(),
            group.logs()
        );
        tokio::time::sleep(POLL).await;
    };
    assert_eq!(
        served_by(&first).await,
        "r1",
        "through the stand-alone listener"
    );
    let members = query_text(
        &first,
        "SELECT member_name, member_type_desc FROM sys.dm_hadr_cluster_members WHERE member_name = 'l1'",
    )
    .await
    .expect("members");
    assert_eq!(
        members,
        vec![vec![Some("l1".to_string()), Some("NON_VOTER".to_string())]]
    );
    let own = connect(&format!(
        "host={host} port={client_port} user={USER} dbname={DEFAULT_DB} connect_timeout=20"
    ))
    .await
    .expect("the listener host's own port");
    let refused = own
        .batch_execute(&format!("ALTER AVAILABILITY GROUP {GROUP} JOIN"))
        .await
        .expect_err("a listener host joining a group as a replica");
    assert!(
        error_text(&refused).contains("witness"),
        "{}",
        error_text(&refused)
    );
    drop(first);

    wait_failover_ready(&group, 0, &[1]).await;
    if let Err((code, message)) = planned_failover(&group, 1).await {
        panic!("FAILOVER on r2: {code} {message}\n{}", group.logs());
    }
    let deadline = Instant::now() + REACH_TIMEOUT;
    loop {
        if let Ok(client) = connect(&through(APP)).await {
            if served_by(&client).await == "r2" {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the stand-alone listener never reached the new primary r2\n{}\n{}",
            stand_alone.log(),
            group.logs()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The catalog an application's introspection reads, as text rows: the
/// relations of `public` with their OIDs and kinds, the columns of
/// `items` with their types, defaults and NOT NULL, its indexes and
/// constraints, and the sequences (not their last values, which move).
async fn catalog_snapshot(client: &Client) -> Vec<Vec<Option<String>>> {
    let mut rows = Vec::new();
    for sql in [
        "SELECT c.oid, c.relname, c.relkind FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' ORDER BY c.relname",
        "SELECT a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull \
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
         WHERE c.relname = 'items' AND a.attnum > 0 ORDER BY a.attnum",
        "SELECT column_name, data_type, column_default, is_nullable \
         FROM information_schema.columns WHERE table_name = 'items' \
         ORDER BY ordinal_position",
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'items' \
         ORDER BY indexname",
        "SELECT constraint_name, constraint_type FROM information_schema.table_constraints \
         WHERE table_name = 'items' ORDER BY constraint_name",
        "SELECT sequencename, data_type, start_value, increment_by FROM pg_sequences \
         ORDER BY sequencename",
    ] {
        let answer = query_text(client, sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e)));
        assert!(!answer.is_empty(), "{sql}: no rows");
        rows.push(vec![Some(sql.to_string())]);
        rows.extend(answer);
    }
    rows
}

/// Values handed out by sequence `s` and by the SERIAL key of `items`.
#[derive(Debug, Default)]
struct Taken {
    sequence: Vec<i64>,
    ids: Vec<i64>,
}

impl Taken {
    fn extend(&mut self, other: Taken) {
        self.sequence.extend(other.sequence);
        self.ids.extend(other.ids);
    }

    /// Fails if any value was handed out twice.
    fn assert_distinct(&self) {
        for (what, values) in [("nextval('s')", &self.sequence), ("items.id", &self.ids)] {
            let distinct: BTreeSet<i64> = values.iter().copied().collect();
            assert_eq!(
                distinct.len(),
                values.len(),
                "{what} handed out a value twice: {values:?}"
            );
        }
    }

    /// Fails unless every value in `later` is above every value here.
    fn assert_all_above(&self, later: &Taken, what: &str) {
        for (name, before, after) in [
            ("nextval('s')", &self.sequence, &later.sequence),
            ("items.id", &self.ids, &later.ids),
        ] {
            let max = before.iter().max().copied().unwrap_or(i64::MIN);
            assert!(
                after.iter().all(|v| *v > max),
                "{what}: {name} handed out {after:?}, before it up to {max}"
            );
        }
    }
}

/// Takes `n` values of sequence `s` and `n` SERIAL ids of `items` (one
/// autocommit statement each), so every value returned was committed.
async fn take_values(client: &Client, n: usize, tag: &str) -> Result<Taken, String> {
    let mut taken = Taken::default();
    for k in 0..n {
        for (sql, into) in [
            ("SELECT nextval('s')".to_string(), 0),
            (
                format!(
                    "INSERT INTO items (name, price) VALUES ('{tag}-{k}', {k}.25) RETURNING id"
                ),
                1,
            ),
        ] {
            let rows = query_text(client, &sql)
                .await
                .map_err(|e| format!("{sql}: {}", error_text(&e)))?;
            let v = rows
                .first()
                .and_then(|r| r[0].clone())
                .ok_or_else(|| format!("{sql}: no value"))?;
            let v = v.parse::<i64>().map_err(|e| format!("{sql}: {v}: {e}"))?;
            if into == 0 {
                taken.sequence.push(v);
            } else {
                taken.ids.push(v);
            }
        }
    }
    Ok(taken)
}

/// Issue 14: an application that reaches the group through the listener
/// sees the same catalog (same OIDs, types, defaults, indexes, sequences)
/// on whichever replica is primary, and its sequences and SERIAL keys go
/// on after every value the old primary committed, after a planned
/// failover and after the primary is killed (-9) and the cluster promotes
/// another: no value is ever handed out twice.
#[tokio::test(flavor = "multi_thread")]
async fn the_catalog_and_sequences_follow_the_primary_through_the_listener_across_failovers() {
    let mut group = Group::start_with(GroupSpec {
        automatic: true,
        ..GroupSpec::default()
    })
    .await;
    let _logs = KeepLogsOnPanic::new(&group, "listener_catalog_sequences");
    let listener = define_listener(&group, 0, &[]).await;
    let client = connect_retrying(&listener.rw(APP, ""), REACH_TIMEOUT, &group).await;
    client
        .batch_execute(
            "CREATE SEQUENCE s START 100 INCREMENT 3;
             CREATE TABLE items (
                 id serial PRIMARY KEY,
                 name varchar(40) NOT NULL UNIQUE,
                 price numeric(10,2),
                 added timestamptz DEFAULT now());
             CREATE INDEX items_price ON items (price)",
        )
        .await
        .unwrap_or_else(|e| panic!("schema through the listener: {}", error_text(&e)));
    assert_eq!(served_by(&client).await, "r1");
    let catalog = catalog_snapshot(&client).await;
    let flat = format!("{catalog:?}");
    for expected in [
        "items_id_seq",
        "items_price",
        "\"S\"",
        "character varying(40)",
        "numeric(10,2)",
        "nextval(",
    ] {
        assert!(flat.contains(expected), "{expected} not in {catalog:#?}");
    }
    let mut seen = take_values(&client, 10, "r1")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", group.logs()));

    // Planned failover to r2, reached through the same address.
    wait_failover_ready(&group, 0, &[1, 2]).await;
    if let Err((code, message)) = planned_failover(&group, 1).await {
        panic!("planned failover to r2: {code} {message}\n{}", group.logs());
    }
    let client = connect_retrying(&listener.rw(APP, ""), REACH_TIMEOUT, &group).await;
    assert_eq!(served_by(&client).await, "r2");
    assert_eq!(
        catalog_snapshot(&client).await,
        catalog,
        "the catalog on r2 after a planned failover"
    );
    let after = take_values(&client, 10, "r2")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", group.logs()));
    seen.assert_all_above(&after, "r2 after a planned failover");
    seen.extend(after);

    // kill -9 of r2: the cluster promotes r1 or r3; the first write
    // through the listener that succeeds is on it. An attempt that fails
    // half-way may have used a value: later values must still be above it,
    // which the checks below allow (they ask for distinct and increasing
    // values, not for no gaps).
    wait_failover_ready(&group, 1, &[0, 2]).await;
    group.nodes[1].kill9();
    let deadline = Instant::now() + REACH_TIMEOUT;
    let (client, mut after) = loop {
        let attempt = async {
            let client = connect(&listener.rw(APP, ""))
                .await
                .map_err(|e| error_text(&e))?;
            let taken = take_values(&client, 1, "promoted").await?;
            Ok::<_, String>((client, taken))
        };
        match attempt.await {
            Ok(done) => break done,
            Err(e) if Instant::now() > deadline => panic!(
                "no write through the listener after kill -9 of r2: {e}\n{}",
                group.logs()
            ),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    };
    let promoted = served_by(&client).await;
    assert!(["r1", "r3"].contains(&promoted.as_str()), "{promoted}");
    assert_eq!(
        catalog_snapshot(&client).await,
        catalog,
        "the catalog on {promoted} after r2 was killed"
    );
    after.extend(
        take_values(&client, 10, "after-kill")
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", group.logs())),
    );
    seen.assert_all_above(&after, &format!("{promoted} after kill -9 of r2"));
    seen.extend(after);
    seen.assert_distinct();

    // Every id an INSERT returned is in the table, each row with its own id.
    let ids: BTreeSet<i64> = query_text(&client, "SELECT id FROM items")
        .await
        .unwrap_or_else(|e| panic!("{}", error_text(&e)))
        .into_iter()
        .map(|r| r[0].as_deref().unwrap().parse().unwrap())
        .collect();
    let missing: Vec<_> = seen.ids.iter().filter(|id| !ids.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "ids returned but not in items on {promoted}: {missing:?}"
    );
    let last = value(
        &client,
        "SELECT last_value FROM pg_sequences WHERE sequencename = 's'",
    )
    .await;
    assert_eq!(
        last.parse::<i64>().ok(),
        seen.sequence.last().copied(),
        "pg_sequences.last_value on {promoted}: the last value taken"
    );
}
