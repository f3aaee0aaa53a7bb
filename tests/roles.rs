//! Roles, privileges and stored SCRAM verifiers (SECURITY.md "Roles and
//! privileges"), with real `availdb server` processes and real clients
//! (tokio-postgres, psql):
//!
//! * each statement class needs its privilege (READ, WRITE, ADMIN,
//!   CONNECT), refused with 42501 naming it and who can grant it;
//! * roles live in the cluster: a user made on the primary logs in on the
//!   secondaries, and after a planned failover on the new primary, with
//!   the same privileges;
//! * a wrong password is 28P01 and changes nothing; an unknown user is
//!   refused the same way;
//! * what the nodes keep on disk is the verifier, never the password;
//! * the administrator's password may be configured as a verifier;
//! * the extended protocol's Parse needs what running the statement needs;
//! * a node in no cluster keeps its roles in its data directory, and
//!   `CREATE CLUSTER` carries them into the cluster it forms;
//! * a role's `CONNECTION LIMIT` refuses its sessions past it with 53300
//!   on each node, a failover's new primary included.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use common::cluster::{planned_failover, wait_failover_ready};
use common::group::{error_text, exec, query_text, Group, GroupSpec, APP, STATEMENT_TIMEOUT};
use common::{availdb_bin, connect, free_port, run_bounded, TestServer, DEFAULT_DB};

/// The administrator's password of every node.
const ADMIN_PW: &str = "admin-pw-19";
/// Role passwords: long and distinctive, so that finding them on disk
/// cannot be a coincidence.
const READER_PW: &str = "reader-secret-2b9f1c";
const WRITER_PW: &str = "writer-secret-77d0ae";
const BOSS_PW: &str = "boss-secret-c41e9f";
const STRANGER_PW: &str = "stranger-secret-0a5d3b";
const VISITOR_PW: &str = "visitor-secret-5e0c7a";
/// Bound on a role made on one node being known on another (one Raft
/// round trip and an apply; generous for a loaded machine).
const SPREAD_TIMEOUT: Duration = Duration::from_secs(20);

fn conn_string(server: &TestServer, user: &str, password: &str, db: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={user} password={password} dbname={db} connect_timeout=10",
        server.port()
    )
}

/// Logs in as `user`, retrying (bounded) while the node does not know the
/// role yet: a new role reaches the other nodes through the cluster.
async fn login(server: &TestServer, user: &str, password: &str, db: &str) -> Client {
    let deadline = Instant::now() + SPREAD_TIMEOUT;
    loop {
        match connect(&conn_string(server, user, password, db)).await {
            Ok(client) => return client,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!(
                "{user} could not log in to {db} on port {}: {}\n{}",
                server.port(),
                error_text(&e),
                server.log_tail()
            ),
        }
    }
}

/// The SQLSTATE, message and hint of `sql` on `client` (None: it worked).
async fn refusal(client: &Client, sql: &str) -> Option<(String, String, String)> {
    match tokio::time::timeout(STATEMENT_TIMEOUT, client.batch_execute(sql)).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(match e.as_db_error() {
            Some(db) => (
                db.code().code().to_string(),
                db.message().to_string(),
                db.hint().unwrap_or_default().to_string(),
            ),
            None => (String::new(), format!("{e:?}"), String::new()),
        }),
        Err(_) => panic!("{sql}: no answer within {STATEMENT_TIMEOUT:?}"),
    }
}

/// `sql` must be refused with 42501 naming `privilege` and the GRANT.
async fn assert_denied(client: &Client, who: &str, sql: &str, privilege: &str) {
    match refusal(client, sql).await {
        Some((code, message, hint)) => {
            assert_eq!(code, "42501", "{who}: {sql}: {message}");
            assert!(
                message.contains(&format!("no {privilege} privilege")) && message.contains(who),
                "{who}: {sql}: the message should name the role and {privilege}: {message}"
            );
            assert!(
                hint.contains("GRANT") && hint.contains(who) && hint.contains("availdb"),
                "{who}: {sql}: the hint should say who can grant what: {hint}"
            );
        }
        None => panic!("{who}: {sql}: succeeded without {privilege}"),
    }
}

async fn assert_allowed(client: &Client, who: &str, sql: &str) {
    if let Some((code, message, _)) = refusal(client, sql).await {
        panic!("{who}: {sql}: refused with {code} {message}");
    }
}

/// The SQLSTATE of a refused login (panics if it succeeds).
async fn login_refusal(server: &TestServer, user: &str, password: &str, db: &str) -> String {
    match connect(&conn_string(server, user, password, db)).await {
        Ok(_) => panic!("{user} logged in to {db} with {password:?}"),
        Err(e) => e
            .code()
            .map(|c| c.code().to_string())
            .unwrap_or_else(|| format!("client error {e:?}")),
    }
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap().flatten() {
                stack.push(entry.path());
            }
        } else if let Ok(bytes) = std::fs::read(&path) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

/// Makes the roles of the tests on `admin` (the primary, as `availdb`).
async fn make_roles(admin: &Client) {
    for sql in [
        format!("CREATE USER reader WITH PASSWORD '{READER_PW}'"),
        format!("GRANT CONNECT, READ ON DATABASE {APP} TO reader"),
        format!("CREATE USER writer PASSWORD '{WRITER_PW}'"),
        format!("GRANT ALL ON DATABASE {APP} TO writer"),
        format!("CREATE ROLE boss LOGIN PASSWORD '{BOSS_PW}'"),
        "GRANT ADMIN TO boss".to_string(),
        format!("CREATE USER stranger PASSWORD '{STRANGER_PW}'"),
        format!("GRANT READ ON DATABASE {APP} TO stranger"),
        format!("CREATE USER visitor PASSWORD '{VISITOR_PW}'"),
        format!("GRANT CONNECT ON DATABASE {APP} TO visitor"),
    ] {
        exec(admin, &sql, "availdb on the primary").await;
    }
}

/// What every role may and may not do on `server`, which is the primary
/// (writes possible) or a secondary.
async fn check_statement_classes(server: &TestServer, primary: bool, table: &str) {
    let reader = login(server, "reader", READER_PW, APP).await;
    assert_allowed(&reader, "reader", "SELECT count(*) FROM t").await;
    assert_denied(&reader, "reader", "INSERT INTO t VALUES (100)", "WRITE").await;
    assert_denied(&reader, "reader", "UPDATE t SET id = id", "WRITE").await;
    assert_denied(&reader, "reader", "DELETE FROM t", "WRITE").await;
    assert_denied(&reader, "reader", "CREATE TABLE r_made (x INT)", "WRITE").await;
    assert_denied(&reader, "reader", "DROP TABLE t", "WRITE").await;
    assert_denied(&reader, "reader", "CREATE DATABASE nope", "ADMIN").await;
    assert_denied(&reader, "reader", "CREATE USER nope", "ADMIN").await;
    assert_denied(&reader, "reader", "GRANT ADMIN TO reader", "ADMIN").await;
    assert_denied(
        &reader,
        "reader",
        "ALTER AVAILABILITY GROUP ag1 FAILOVER",
        "ADMIN",
    )
    .await;
    assert_denied(
        &reader,
        "reader",
        "BACKUP DATABASE app TO DISK = 'nowhere.bak'",
        "ADMIN",
    )
    .await;
    // Session statements need nothing.
    assert_allowed(&reader, "reader", "SET statement_timeout = 5000").await;
    assert_allowed(&reader, "reader", "BEGIN; SELECT 1; COMMIT").await;
    let who = query_text(&reader, "SELECT current_user").await.unwrap();
    assert_eq!(who[0][0].as_deref(), Some("reader"));

    // COPY FROM loads outside the statement path: checked on its own (on
    // a session of its own, which the refused COPY leaves as it was).
    let copier = login(server, "reader", READER_PW, APP).await;
    match copier.copy_in::<_, bytes::Bytes>("COPY t FROM STDIN").await {
        Ok(_) => panic!("reader: COPY t FROM STDIN was accepted"),
        Err(e) => assert_eq!(
            e.code().map(|c| c.code()),
            Some("42501"),
            "reader: COPY FROM: {}",
            error_text(&e)
        ),
    }
    // COPY TO reads: READ is enough, through the extended protocol too.
    // On a session of its own: after a refused `copy_in`, tokio-postgres
    // sends CopyFail and Sync, and the ReadyForQuery that answers that Sync
    // (PostgreSQL 15 sends it as well) is taken for the next request's reply.
    let fresh = login(server, "reader", READER_PW, APP).await;
    let rows = fresh
        .copy_out("COPY t TO STDOUT")
        .await
        .unwrap_or_else(|e| panic!("reader: COPY t TO STDOUT: {}", error_text(&e)));
    let rows: Vec<bytes::Bytes> = futures::TryStreamExt::try_collect(Box::pin(rows))
        .await
        .unwrap_or_else(|e| panic!("reader: COPY t TO STDOUT rows: {}", error_text(&e)));
    assert!(!rows.is_empty(), "reader: COPY t TO STDOUT sent no rows");

    check_prepare_needs_the_privilege_of_running(server, APP).await;

    let writer = login(server, "writer", WRITER_PW, APP).await;
    assert_allowed(&writer, "writer", "SELECT count(*) FROM t").await;
    assert_denied(&writer, "writer", "CREATE USER nope", "ADMIN").await;
    assert_denied(
        &writer,
        "writer",
        "ALTER AVAILABILITY GROUP ag1 FAILOVER",
        "ADMIN",
    )
    .await;
    if primary {
        assert_allowed(&writer, "writer", &format!("CREATE TABLE {table} (x INT)")).await;
        assert_allowed(
            &writer,
            "writer",
            &format!("INSERT INTO {table} VALUES (1)"),
        )
        .await;
        assert_allowed(&writer, "writer", &format!("DELETE FROM {table}")).await;
        assert_allowed(&writer, "writer", &format!("DROP TABLE {table}")).await;
    }

    // READ without CONNECT: refused at the door, FATAL 42501.
    let code = login_refusal(server, "stranger", STRANGER_PW, APP).await;
    assert_eq!(code, "42501", "stranger without CONNECT on {APP}");

    let boss = login(server, "boss", BOSS_PW, APP).await;
    assert_allowed(&boss, "boss", "SELECT count(*) FROM t").await;
    let states = query_text(
        &boss,
        "SELECT count(*) FROM sys.dm_hadr_database_replica_states",
    )
    .await;
    assert!(states.is_ok(), "boss reads the sys views: {states:?}");
}

/// The extended protocol's Parse needs what running the statement needs:
/// a role with CONNECT but no READ that prepares a SELECT is refused with
/// 42501 and learns nothing of the table's columns (tokio-postgres's
/// `prepare` is Parse, Describe, Sync, and would hand back the columns);
/// a role with READ prepares and sees them, but cannot prepare a write.
async fn check_prepare_needs_the_privilege_of_running(server: &TestServer, db: &str) {
    let visitor = login(server, "visitor", VISITOR_PW, db).await;
    for sql in ["SELECT * FROM t", "SELECT id FROM t WHERE id = $1"] {
        match visitor.prepare(sql).await {
            Ok(statement) => panic!(
                "visitor (no READ) prepared {sql} and was told its columns: {:?}",
                statement
                    .columns()
                    .iter()
                    .map(|c| (c.name().to_string(), c.type_().to_string()))
                    .collect::<Vec<_>>()
            ),
            Err(e) => {
                let refused = e
                    .as_db_error()
                    .unwrap_or_else(|| panic!("visitor: prepare {sql}: {e:?}"));
                assert_eq!(
                    refused.code().code(),
                    "42501",
                    "visitor: prepare {sql}: {refused:?}"
                );
                assert!(
                    refused.message().contains("no READ privilege")
                        && refused.message().contains("visitor"),
                    "visitor: prepare {sql}: {}",
                    refused.message()
                );
                let hint = refused.hint().unwrap_or_default();
                assert!(
                    hint.contains(&format!("GRANT READ ON DATABASE {db} TO visitor")),
                    "visitor: prepare {sql}: hint {hint}"
                );
            }
        }
    }
    // The session is still usable, and statements that need nothing are
    // prepared as before.
    let one = visitor
        .prepare("SHOW statement_timeout")
        .await
        .unwrap_or_else(|e| panic!("visitor: prepare SHOW: {}", error_text(&e)));
    assert_eq!(one.columns().len(), 1);

    let reader = login(server, "reader", READER_PW, db).await;
    let select = reader
        .prepare("SELECT id FROM t WHERE id = $1")
        .await
        .unwrap_or_else(|e| panic!("reader: prepare SELECT: {}", error_text(&e)));
    assert_eq!(select.columns()[0].name(), "id");
    match reader.prepare("INSERT INTO t VALUES ($1)").await {
        Ok(_) => panic!("reader (no WRITE) prepared an INSERT"),
        Err(e) => assert_eq!(
            e.code().map(|c| c.code()),
            Some("42501"),
            "reader: prepare INSERT: {}",
            error_text(&e)
        ),
    }
}

/// Issue 19: a read-only user is refused writes with 42501 on every
/// replica — the primary, each secondary, and the new primary after a
/// planned failover — and every role logs in everywhere with the same
/// privileges, because roles are in the cluster's replicated state.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_user_is_refused_writes_with_42501_on_every_replica_after_a_failover() {
    let group = Group::start_with(GroupSpec {
        password: Some(ADMIN_PW.into()),
        ..GroupSpec::default()
    })
    .await;
    let admin = group.primary().client(APP).await;
    exec(
        &admin,
        "CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1), (2)",
        "r1",
    )
    .await;
    make_roles(&admin).await;
    exec(&admin, "ALTER ROLE visitor CONNECTION LIMIT 1", "r1").await;

    check_statement_classes(&group.nodes[0], true, "w_r1").await;
    for i in [1, 2] {
        check_statement_classes(&group.nodes[i], false, "never").await;
    }

    // The administrator with ADMIN (boss) fails over: r2 takes over.
    wait_failover_ready(&group, 0, &[1, 2]).await;
    planned_failover(&group, 1)
        .await
        .unwrap_or_else(|e| panic!("FAILOVER to r2: {e:?}\n{}", group.logs()));
    group.wait_takes_writes(1, Duration::from_secs(60)).await;
    check_statement_classes(&group.nodes[1], true, "w_r2").await;

    // The connection limit is the cluster's too: the new primary holds it.
    let visitor = login(&group.nodes[1], "visitor", VISITOR_PW, APP).await;
    assert_eq!(
        login_refusal(&group.nodes[1], "visitor", VISITOR_PW, APP).await,
        "53300",
        "a second session of visitor (CONNECTION LIMIT 1) on r2"
    );
    drop(visitor);

    // A REVOKE on the new primary holds everywhere, from the next statement
    // of a session already open on another replica.
    let writer_on_r3 = login(&group.nodes[2], "writer", WRITER_PW, APP).await;
    assert_allowed(&writer_on_r3, "writer", "SELECT count(*) FROM t").await;
    let boss = login(&group.nodes[1], "boss", BOSS_PW, APP).await;
    exec(
        &boss,
        &format!("REVOKE READ, WRITE ON DATABASE {APP} FROM writer"),
        "boss on r2",
    )
    .await;
    let deadline = Instant::now() + SPREAD_TIMEOUT;
    loop {
        match refusal(&writer_on_r3, "SELECT count(*) FROM t").await {
            Some((code, _, _)) if code == "42501" => break,
            other => assert!(
                Instant::now() < deadline,
                "writer on r3 still reads after the REVOKE on r2: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Issue 19: a wrong password is refused with 28P01 and changes nothing
/// (the right password still works, the role is as it was); a user name
/// that is no role is refused the same way, so a client cannot tell
/// which roles exist; a dropped role can no longer log in; and what the
/// nodes keep — cluster log and snapshot, databases, every file of every
/// data directory — holds the verifier, never the password.
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_is_28p01_and_only_verifiers_reach_the_disk_of_every_node() {
    let group = Group::start_with(GroupSpec {
        replicas: 2,
        password: Some(ADMIN_PW.into()),
        ..GroupSpec::default()
    })
    .await;
    let admin = group.primary().client(APP).await;
    exec(&admin, "CREATE TABLE t (id INT PRIMARY KEY)", "r1").await;
    make_roles(&admin).await;
    let roles_before = query_text(
        &admin,
        "SELECT rolname, rolcanlogin, rolsuper FROM pg_roles ORDER BY rolname",
    )
    .await
    .unwrap();
    assert_eq!(
        roles_before
            .iter()
            .map(|r| r[0].clone().unwrap_or_default())
            .collect::<Vec<_>>(),
        ["availdb", "boss", "reader", "stranger", "visitor", "writer"],
        "pg_roles lists the built-in administrator and every role"
    );

    for server in &group.nodes {
        let _ = login(server, "reader", READER_PW, APP).await;
        for _ in 0..2 {
            assert_eq!(
                login_refusal(server, "reader", "not-the-password", APP).await,
                "28P01"
            );
        }
        assert_eq!(
            login_refusal(server, "nobody", READER_PW, APP).await,
            "28P01",
            "an unknown user is refused as a wrong password is"
        );
        let reader = login(server, "reader", READER_PW, APP).await;
        assert_allowed(&reader, "reader", "SELECT count(*) FROM t").await;
    }
    let roles_after = query_text(
        &admin,
        "SELECT rolname, rolcanlogin, rolsuper FROM pg_roles ORDER BY rolname",
    )
    .await
    .unwrap();
    assert_eq!(roles_before, roles_after, "failed logins changed the roles");

    let boss = query_text(
        &admin,
        "SELECT type_desc, is_admin, has_password, permissions FROM sys.server_principals WHERE name = 'boss'",
    )
    .await
    .unwrap();
    assert_eq!(
        boss,
        [[
            Some("SQL_LOGIN".to_string()),
            Some("t".to_string()),
            Some("t".to_string()),
            Some("ADMIN".to_string())
        ]],
        "sys.server_principals shows boss"
    );
    let mut du = group.nodes[0].libpq_command("psql", APP);
    du.args(["-XAc", "\\du"]);
    let out = run_bounded(&mut du, Duration::from_secs(60));
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && listed.contains("boss") && listed.contains("reader"),
        "psql \\du lists the roles: {listed}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // psql, a libpq client, logs in with the role's password too.
    let mut psql = group.nodes[1].libpq_command("psql", APP);
    psql.env("PGUSER", "reader")
        .env("PGPASSWORD", READER_PW)
        .args(["-XAtc", "SELECT current_user"]);
    let out = run_bounded(&mut psql, Duration::from_secs(60));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "reader",
        "psql as reader on r2: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A role changes its own password (and only its own, and nothing
    // else of itself); roles are dropped through the cluster.
    let reader = login(&group.nodes[0], "reader", READER_PW, APP).await;
    assert_denied(&reader, "reader", "ALTER ROLE writer PASSWORD 'x'", "ADMIN").await;
    assert_denied(&reader, "reader", "ALTER ROLE reader NOLOGIN", "ADMIN").await;
    exec(
        &reader,
        "ALTER ROLE reader PASSWORD 'reader-second-5e8a'",
        "reader on r1",
    )
    .await;
    exec(&admin, "DROP ROLE stranger", "r1").await;
    for server in &group.nodes {
        let _ = login(server, "reader", "reader-second-5e8a", APP).await;
        assert_eq!(
            login_refusal(server, "reader", READER_PW, APP).await,
            "28P01"
        );
        assert_eq!(
            login_refusal(server, "stranger", STRANGER_PW, APP).await,
            "28P01"
        );
    }

    for (i, server) in group.nodes.iter().enumerate() {
        let data = server.data_dir();
        for password in [
            READER_PW,
            WRITER_PW,
            BOSS_PW,
            STRANGER_PW,
            "reader-second-5e8a",
        ] {
            let found = files_containing(&data, password.as_bytes());
            assert!(
                found.is_empty(),
                "node {i} keeps the password {password:?} in {found:?}"
            );
        }
        let verifiers = files_containing(&data.join("cluster"), b"SCRAM-SHA-256$4096:");
        assert!(
            !verifiers.is_empty(),
            "node {i}'s cluster files hold no verifier: where did the roles go?"
        );
    }
}

/// Issue 19: the administrator's password in a config file may be its
/// SCRAM-SHA-256 verifier (from `availdb verifier`): the administrator
/// logs in with the password, the HTTP API takes the password as its
/// bearer token, a wrong password is 28P01, and a malformed verifier
/// stops the node at start with what is wrong.
#[tokio::test(flavor = "multi_thread")]
async fn the_administrator_password_may_be_configured_as_a_verifier() {
    let mut make = std::process::Command::new(availdb_bin());
    make.arg("verifier").stdin(std::process::Stdio::piped());
    let mut child = make
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("availdb verifier");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{ADMIN_PW}").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let verifier = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        verifier.starts_with("SCRAM-SHA-256$4096:") && !verifier.contains(ADMIN_PW),
        "availdb verifier printed {verifier:?}"
    );

    let server = TestServer::builder()
        .verifier_in_config_file(&verifier, ADMIN_PW)
        .start()
        .await;
    let admin = server.client(DEFAULT_DB).await;
    let who = query_text(&admin, "SELECT current_user").await.unwrap();
    assert_eq!(who[0][0].as_deref(), Some("availdb"));
    assert_eq!(
        login_refusal(&server, "availdb", &verifier, DEFAULT_DB).await,
        "28P01",
        "the verifier itself is no password"
    );
    assert_eq!(
        files_containing(&server.data_dir(), ADMIN_PW.as_bytes()),
        Vec::<String>::new()
    );

    let broken = TestServer::builder()
        .verifier_in_config_file("SCRAM-SHA-256$4096:c2FsdA==$short:keys", ADMIN_PW)
        .start_expecting_exit()
        .await;
    assert!(
        broken.log.contains("not a SCRAM-SHA-256 verifier"),
        "a malformed verifier should stop the node saying so:\n{}",
        broken.log
    );
}

/// Issue 19: `CREATE/ALTER ROLE … CONNECTION LIMIT n` bounds the sessions
/// a role holds at once on a node: past it, FATAL 53300 "too many
/// connections for role" with what to change; a session's end frees its
/// place; `-1` lifts the limit; the built-in administrator has none; and
/// `pg_roles.rolconnlimit` shows it.
#[tokio::test(flavor = "multi_thread")]
async fn a_role_past_its_connection_limit_is_refused_with_53300_and_a_closed_session_frees_a_place()
{
    let server = TestServer::builder().password(ADMIN_PW).start().await;
    let db = DEFAULT_DB;
    let admin = server.client(db).await;
    for sql in [
        format!("CREATE USER capped WITH CONNECTION LIMIT 2 PASSWORD '{READER_PW}'"),
        format!("GRANT CONNECT, READ ON DATABASE {db} TO capped"),
    ] {
        exec(&admin, &sql, "availdb").await;
    }
    let limit_shown = || async {
        let rows = query_text(
            &admin,
            "SELECT rolconnlimit FROM pg_roles WHERE rolname = 'capped'",
        )
        .await
        .expect("pg_roles");
        rows[0][0].clone().expect("rolconnlimit")
    };
    assert_eq!(limit_shown().await, "2");
    let first = login(&server, "capped", READER_PW, db).await;
    let second = login(&server, "capped", READER_PW, db).await;
    let refused = connect(&conn_string(&server, "capped", READER_PW, db))
        .await
        .expect_err("a third session of a role limited to 2");
    let db_error = refused.as_db_error().expect("a server error");
    assert_eq!(db_error.code().code(), "53300", "{db_error:?}");
    assert_eq!(
        db_error.message(),
        "too many connections for role \"capped\""
    );
    assert!(
        db_error
            .hint()
            .is_some_and(|h| h.contains("CONNECTION LIMIT")),
        "{db_error:?}"
    );
    for (client, who) in [(&first, "first"), (&second, "second")] {
        assert_allowed(client, who, "SELECT 1").await;
    }
    // The administrator has no role limit.
    let mut admins = Vec::new();
    for _ in 0..3 {
        admins.push(server.client(db).await);
    }

    drop(first);
    // The server sees the session's end when its socket closes.
    let third = login(&server, "capped", READER_PW, db).await;
    assert_eq!(
        login_refusal(&server, "capped", READER_PW, db).await,
        "53300"
    );
    exec(&admin, "ALTER ROLE capped CONNECTION LIMIT -1", "availdb").await;
    // No limit after CONNECTION LIMIT -1: five sessions at once.
    let mut more = Vec::new();
    for _ in 0..3 {
        more.push(
            connect(&conn_string(&server, "capped", READER_PW, db))
                .await
                .expect("a session of a role without a limit"),
        );
    }
    assert_eq!(limit_shown().await, "-1");
    exec(&admin, "ALTER ROLE capped CONNECTION LIMIT 0", "availdb").await;
    assert_eq!(
        login_refusal(&server, "capped", READER_PW, db).await,
        "53300",
        "LIMIT 0 admits no new session"
    );
    drop((second, third, more, admins));
}

/// What the roles of the standalone test may and may not do on `server`.
async fn check_standalone_privileges(server: &TestServer) {
    let reader = login(server, "reader", READER_PW, DEFAULT_DB).await;
    assert_allowed(&reader, "reader", "SELECT count(*) FROM t").await;
    assert_denied(&reader, "reader", "INSERT INTO t VALUES (100)", "WRITE").await;
    assert_denied(&reader, "reader", "CREATE USER nope", "ADMIN").await;
    let writer = login(server, "writer", WRITER_PW, DEFAULT_DB).await;
    assert_allowed(&writer, "writer", "INSERT INTO t SELECT max(id) + 1 FROM t").await;
    assert_denied(&writer, "writer", "GRANT ADMIN TO writer", "ADMIN").await;
}

/// Issue 19: a node in no cluster has users too. Its roles live in its
/// data directory (`roles.json`), with the same statements and the same
/// checks (42501 with the GRANT to run, Parse included), survive a restart,
/// and what reaches the disk is the verifier, never the password.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_without_a_cluster_keeps_its_roles_in_its_data_directory_across_restarts() {
    let mut server = TestServer::builder().password(ADMIN_PW).start().await;
    let db = DEFAULT_DB;
    let admin = server.client(db).await;
    exec(
        &admin,
        "CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1), (2)",
        "availdb",
    )
    .await;
    for sql in [
        format!("CREATE USER reader WITH PASSWORD '{READER_PW}'"),
        format!("GRANT CONNECT, READ ON DATABASE {db} TO reader"),
        format!("CREATE USER visitor PASSWORD '{VISITOR_PW}'"),
        format!("GRANT CONNECT ON DATABASE {db} TO visitor"),
        format!("CREATE USER writer PASSWORD '{WRITER_PW}'"),
        format!("GRANT ALL ON DATABASE {db} TO writer"),
    ] {
        exec(&admin, &sql, "availdb").await;
    }
    let (code, _, _) = refusal(&admin, "CREATE USER availdb PASSWORD 'x'")
        .await
        .expect("CREATE USER availdb");
    assert_eq!(code, "42939", "availdb is reserved");
    let (code, _, _) = refusal(
        &admin,
        &format!("CREATE USER reader PASSWORD '{READER_PW}'"),
    )
    .await
    .expect("CREATE USER reader twice");
    assert_eq!(code, "42710", "a second role of the same name");

    check_standalone_privileges(&server).await;
    check_prepare_needs_the_privilege_of_running(&server, db).await;
    assert_eq!(
        login_refusal(&server, "reader", "not-the-password", db).await,
        "28P01"
    );

    // A restart: the same roles, the same privileges.
    drop(admin);
    server.restart().await;
    check_standalone_privileges(&server).await;
    check_prepare_needs_the_privilege_of_running(&server, db).await;

    // pg_roles (psql's \\du) reads the node's own roles.
    let admin = server.client(db).await;
    let listed = query_text(&admin, "SELECT rolname FROM pg_roles ORDER BY rolname")
        .await
        .unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|r| r[0].clone().unwrap_or_default())
            .collect::<Vec<_>>(),
        ["availdb", "reader", "visitor", "writer"],
        "pg_roles after a restart"
    );

    // Changes after the restart are kept too.
    for sql in [
        format!("ALTER ROLE reader PASSWORD '{BOSS_PW}'"),
        "DROP ROLE visitor".to_string(),
        format!("REVOKE WRITE ON DATABASE {db} FROM writer"),
    ] {
        exec(&admin, &sql, "availdb").await;
    }
    drop(admin);
    server.restart().await;
    assert_eq!(
        login_refusal(&server, "reader", READER_PW, db).await,
        "28P01"
    );
    let reader = login(&server, "reader", BOSS_PW, db).await;
    assert_allowed(&reader, "reader", "SELECT count(*) FROM t").await;
    assert_eq!(
        login_refusal(&server, "visitor", VISITOR_PW, db).await,
        "28P01"
    );
    let writer = login(&server, "writer", WRITER_PW, db).await;
    assert_denied(&writer, "writer", "DELETE FROM t", "WRITE").await;

    // Verifiers only on disk: no password anywhere in the data directory,
    // and the roles file holds the verifiers.
    server.sigterm().await;
    let data = server.data_dir();
    for password in [READER_PW, VISITOR_PW, WRITER_PW, BOSS_PW] {
        assert_eq!(
            files_containing(&data, password.as_bytes()),
            Vec::<String>::new(),
            "a password reached the disk"
        );
    }
    let holders = files_containing(&data, b"SCRAM-SHA-256$4096:");
    assert!(
        holders.iter().any(|f| f.ends_with("roles.json")),
        "the roles file should hold the verifiers: {holders:?}"
    );
}

/// What happens to a standalone node's roles when it enters a cluster:
/// `CREATE CLUSTER` carries them into the new cluster's state (its users
/// log in as before, after a restart too, and the node's roles file is
/// gone); a node that keeps roles of its own refuses to be added to an
/// existing cluster, and the `ALTER CLUSTER ADD NODE` says why and what to
/// do — once its roles are dropped, it joins and knows the cluster's.
#[tokio::test(flavor = "multi_thread")]
async fn create_cluster_carries_a_nodes_roles_and_a_node_with_its_own_is_not_added_to_another() {
    let mut a = TestServer::builder()
        .password(ADMIN_PW)
        .replica("a1", free_port())
        .start()
        .await;
    let b_endpoint = free_port();
    let b = TestServer::builder()
        .password(ADMIN_PW)
        .replica("b1", b_endpoint)
        .start()
        .await;
    let db = DEFAULT_DB;
    let a_admin = a.client(db).await;
    for sql in [
        format!("CREATE USER reader PASSWORD '{READER_PW}'"),
        format!("GRANT CONNECT, READ ON DATABASE {db} TO reader"),
    ] {
        exec(&a_admin, &sql, "availdb on a1").await;
    }
    let b_admin = b.client(db).await;
    for sql in [
        format!("CREATE USER stranger PASSWORD '{STRANGER_PW}'"),
        format!("GRANT CONNECT ON DATABASE {db} TO stranger"),
    ] {
        exec(&b_admin, &sql, "availdb on b1").await;
    }
    assert!(a.data_dir().join("roles.json").exists());

    exec(&a_admin, "CREATE CLUSTER", "availdb on a1").await;
    assert!(
        !a.data_dir().join("roles.json").exists(),
        "CREATE CLUSTER should have carried a1's roles into the cluster\n{}",
        a.log_tail()
    );
    let reader = login(&a, "reader", READER_PW, db).await;
    assert_allowed(&reader, "reader", "SELECT 1").await;
    drop((reader, a_admin));
    a.restart().await;
    let reader = login(&a, "reader", READER_PW, db).await;
    assert_allowed(&reader, "reader", "SELECT 1").await;

    // b1 keeps a role of its own: the cluster cannot add it.
    let a_admin = a.client(db).await;
    let add =
        format!("ALTER CLUSTER ADD NODE 'b1' WITH (ENDPOINT_URL = 'tcp://127.0.0.1:{b_endpoint}')");
    let (code, message, hint) =
        tokio::time::timeout(Duration::from_secs(60), refusal(&a_admin, &add))
            .await
            .unwrap_or_else(|_| panic!("{add}: no answer within 60 s\n{}", a.log_tail()))
            .unwrap_or_else(|| panic!("{add} added a node that keeps roles of its own"));
    assert_eq!(code, "55000", "{message}");
    assert!(
        message.contains("role(s) of its own") && message.contains("DROP ROLE"),
        "the refusal should say why and what to do: {message}"
    );
    assert!(hint.contains("DROP ROLE"), "{hint}");
    let stranger = login(&b, "stranger", STRANGER_PW, db).await;
    assert_allowed(&stranger, "stranger", "SET statement_timeout = 5000").await;
    drop(stranger);

    // Once b1's roles are dropped, it joins and knows the cluster's.
    exec(&b_admin, "DROP ROLE stranger", "availdb on b1").await;
    exec(&a_admin, &add, "availdb on a1").await;
    let reader_on_b = login(&b, "reader", READER_PW, db).await;
    assert_allowed(&reader_on_b, "reader", "SELECT 1").await;
    assert_denied(&reader_on_b, "reader", "CREATE TABLE x (i INT)", "WRITE").await;
}
