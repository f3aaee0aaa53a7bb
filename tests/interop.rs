//! Real PostgreSQL clients against a real `availdb server`: `psql`,
//! `pgbench` in each query mode, psycopg 3 and pgcli. The scripts they run live in
//! `tests/interop/`. A missing client program is a test failure that says
//! how to install it (`scripts/test` installs all of them), never a silent skip.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use common::{run_bounded, simple_rows, simple_value, TestServer, DEFAULT_DB};

/// Hang guard for one client program run, not a performance bound.
const TOOL_TIMEOUT: Duration = Duration::from_secs(300);

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(name)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(output: &Output) -> String {
    format!(
        "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    )
}

/// Fails the test, with install instructions, when `program args` cannot run.
fn require_tool(program: &str, args: &[&str], install: &str) {
    let output = Command::new(program).args(args).output();
    let problem = match output {
        Ok(out) if out.status.success() => return,
        Ok(out) => format!("`{program} {}` failed: {}", args.join(" "), describe(&out)),
        Err(e) => format!("`{program}` cannot be run: {e}"),
    };
    panic!("{problem}\nThis test needs it. Run the tests with scripts/test, which installs every test tool, or install it with: {install}");
}

fn require_psql() {
    require_tool(
        "psql",
        &["--version"],
        "apt-get install -y postgresql-client",
    );
}

fn require_pgbench() {
    require_tool(
        "pgbench",
        &["--version"],
        "apt-get install -y postgresql-client postgresql (Debian 12 ships pgbench in postgresql-15)",
    );
}

fn require_psycopg() {
    require_tool(
        "python3",
        &["-c", "import psycopg"],
        "python3 -m pip install \"psycopg[binary]\" (scripts/test puts it in .venv/ and that first on PATH)",
    );
}

/// Runs a prepared command on a blocking thread, bounded by `TOOL_TIMEOUT`.
async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || run_bounded(&mut cmd, TOOL_TIMEOUT))
        .await
        .expect("client program thread")
}

async fn psql(server: &TestServer, args: &[&str]) -> Output {
    let mut cmd = server.libpq_command("psql", DEFAULT_DB);
    cmd.arg("-X").args(args);
    run(cmd).await
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_runs_files_and_commands_and_prints_command_tags() {
    require_psql();
    let server = TestServer::start().await;

    let file = script("psql_roundtrip.sql");
    let out = psql(
        &server,
        &["-v", "ON_ERROR_STOP=1", "-f", file.to_str().unwrap()],
    )
    .await;
    assert!(
        out.status.success(),
        "psql -f psql_roundtrip.sql: {}",
        describe(&out)
    );
    let stdout = text(&out.stdout);
    for tag in ["INSERT 0 3", "UPDATE 2", "DELETE 1", "(2 rows)"] {
        assert!(
            stdout.lines().any(|line| line.trim() == tag),
            "psql output lacks the line {tag:?}: {}",
            describe(&out)
        );
    }

    let out = psql(
        &server,
        &[
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "INSERT INTO fruit(name, price) VALUES ('fig', 3)",
            "-c",
            "SELECT name, price FROM fruit ORDER BY id",
            "-A",
            "-t",
            "-F",
            "|",
        ],
    )
    .await;
    assert!(out.status.success(), "psql -c: {}", describe(&out));
    assert_eq!(
        text(&out.stdout),
        "INSERT 0 1\napple|2.5\nplum|1.5\nfig|3\n",
        "psql -c output: {}",
        describe(&out)
    );

    let server_side = server.client(DEFAULT_DB).await;
    assert_eq!(
        simple_value(&server_side, "SELECT count(*) FROM fruit")
            .await
            .as_deref(),
        Some("3"),
        "rows written through psql"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_exits_non_zero_on_sql_errors_and_reports_the_sqlstate() {
    require_psql();
    let server = TestServer::start().await;

    let out = psql(&server, &["-v", "VERBOSITY=verbose", "-c", "SELEC 1"]).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "psql -c 'SELEC 1': {}",
        describe(&out)
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("ERROR:") && stderr.contains("42601"),
        "psql should print the error with SQLSTATE 42601: {}",
        describe(&out)
    );

    let file = script("psql_stops_on_error.sql");
    let out = psql(
        &server,
        &[
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            "VERBOSITY=verbose",
            "-f",
            file.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "psql -f with ON_ERROR_STOP stops with status 3: {}",
        describe(&out)
    );
    assert!(
        text(&out.stderr).contains("23505"),
        "psql should report the unique violation: {}",
        describe(&out)
    );
    let server_side = server.client(DEFAULT_DB).await;
    let (notes, _) = simple_rows(&server_side, "SELECT note FROM ledger ORDER BY id").await;
    assert_eq!(
        notes,
        vec![vec![Some("first".to_string())]],
        "psql ran past the error"
    );
}

/// Runs both pgbench scripts with `-c 2 -t 50` in `mode` and checks from the
/// server that every transaction happened exactly once.
async fn pgbench_in_mode(mode: &str) {
    const CLIENTS: i64 = 2;
    const TRANSACTIONS_PER_CLIENT: i64 = 50;
    const TOTAL: i64 = CLIENTS * TRANSACTIONS_PER_CLIENT;
    require_pgbench();
    let server = TestServer::start().await;
    let setup = server.client(DEFAULT_DB).await;
    // Plain SQL only, so that a failure here is never a typing problem.
    let counters: Vec<String> = (1..=100).map(|id| format!("({id}, 0)")).collect();
    setup
        .batch_execute(&format!(
            "CREATE TABLE counters(id INTEGER PRIMARY KEY, hits INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE events(id INTEGER PRIMARY KEY, counter_id INTEGER NOT NULL REFERENCES counters(id));
             INSERT INTO counters(id, hits) VALUES {};",
            counters.join(", ")
        ))
        .await
        .expect("create pgbench tables");

    let mut cmd = server.libpq_command("pgbench", DEFAULT_DB);
    cmd.args(["-n", "-M", mode])
        .args(["-c", &CLIENTS.to_string()])
        .args(["-t", &TRANSACTIONS_PER_CLIENT.to_string()])
        .arg("-f")
        .arg(script("pgbench_counter.sql"))
        .arg("-f")
        .arg(script("pgbench_autocommit.sql"));
    let out = run(cmd).await;
    let report = format!("{}\n{}", describe(&out), server.log_tail());
    assert!(out.status.success(), "pgbench -M {mode}: {report}");
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "number of transactions actually processed: {TOTAL}/{TOTAL}"
        )),
        "pgbench -M {mode} did not process every transaction: {report}"
    );
    assert!(
        !stdout.contains("number of failed transactions")
            || stdout.contains("number of failed transactions: 0 "),
        "pgbench -M {mode} reported failed transactions: {report}"
    );

    let (rows, _) = simple_rows(
        &setup,
        "SELECT (SELECT sum(hits) FROM counters), (SELECT count(*) FROM events),
                (SELECT count(*) FROM counters
                  WHERE hits <> (SELECT count(*) FROM events WHERE counter_id = counters.id))",
    )
    .await;
    let total = Some(TOTAL.to_string());
    assert_eq!(
        rows,
        vec![vec![total.clone(), total, Some("0".to_string())]],
        "[sum(hits), count(events), counters whose hits differ from their events] after pgbench -M {mode}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pgbench_simple_protocol_runs_every_transaction_once() {
    pgbench_in_mode("simple").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pgbench_extended_protocol_runs_every_transaction_once() {
    pgbench_in_mode("extended").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pgbench_prepared_statements_run_every_transaction_once() {
    pgbench_in_mode("prepared").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn psycopg_round_trips_parameters_transactions_and_sqlstates() {
    require_psycopg();
    let server = TestServer::start().await;
    let mut cmd = Command::new("python3");
    cmd.arg(script("psycopg_smoke.py"))
        .arg(server.conn_string(DEFAULT_DB))
        .env_remove("PGSERVICE")
        .env_remove("PGOPTIONS")
        .env_remove("PGSSLMODE");
    let out = run(cmd).await;
    let report = format!("{}\n{}", describe(&out), server.log_tail());
    assert!(out.status.success(), "psycopg_smoke.py: {report}");
    assert!(
        text(&out.stdout).contains("psycopg smoke: ok"),
        "psycopg_smoke.py did not finish: {report}"
    );

    let c = server.client(DEFAULT_DB).await;
    let (people, _) = simple_rows(&c, "SELECT id, name, age FROM people ORDER BY id").await;
    let row = |id: &str, name: &str, age: Option<&str>| {
        vec![
            Some(id.to_string()),
            Some(name.to_string()),
            age.map(str::to_string),
        ]
    };
    assert_eq!(
        people,
        vec![
            row("1", "ada", Some("36")),
            row("2", "brian", Some("40")),
            row("3", "chloé", Some("7")),
            row("4", "dan", None),
        ],
        "rows psycopg left behind"
    );
}

fn require_pgcli() {
    require_tool(
        "pgcli",
        &["--version"],
        "python3 -m pip install pgcli (scripts/test puts it in .venv/ and that first on PATH)",
    );
}

/// `pgcli ARGS` against `server`, non-interactive (`-w`: never a password
/// prompt), with a home of its own for the config and log it writes.
async fn pgcli(server: &TestServer, home: &std::path::Path, args: &[&str]) -> Output {
    let mut cmd = server.libpq_command("pgcli", DEFAULT_DB);
    // TZ: pgcli sets the session's time zone to the local one.
    cmd.env("HOME", home)
        .env("TZ", "UTC")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("PGDATABASE")
        .args(["-h", "127.0.0.1", "-p", &server.port().to_string()])
        .args(["-U", common::USER, "-w"])
        .args(args);
    run(cmd).await
}

/// Output lines with runs of spaces made one, so that table rows compare
/// whatever the column widths.
fn squeezed_lines(out: &Output) -> Vec<String> {
    text(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// pgcli (issue 14), non-interactively: `-c` commands (a query, `\dt`,
/// `\d t`, `SHOW time zone`, `\dv`, `\di`, `\dn`, `\l`, `\df`, `\du`) print
/// what psql would, its start-up queries and the completion refresher it
/// runs alongside (tables, columns, functions, types, foreign keys) fail on
/// nothing, `-l` lists the databases and `--ping postgres` answers. Before:
/// `\dt` failed on pgspecial's `relkind = ANY('{r,p,""}')` (malformed JSON),
/// `\d t` on `substring(… for 128)`, the refresher on `ANY(%s)` with a list
/// and on a column alias `default`.
#[tokio::test(flavor = "multi_thread")]
async fn pgcli_runs_commands_lists_databases_and_describes_tables() {
    require_pgcli();
    let server = TestServer::start().await;
    let home = tempfile::tempdir().expect("a home for pgcli");
    let c = server.client(DEFAULT_DB).await;
    c.batch_execute(
        "CREATE TABLE item (id serial PRIMARY KEY, name text NOT NULL, qty integer DEFAULT 0);
         CREATE INDEX item_name ON item (name);
         CREATE VIEW cheap AS SELECT name FROM item WHERE qty < 5;
         INSERT INTO item (name, qty) VALUES ('apple', 3), ('plum', 7)",
    )
    .await
    .expect("set up");

    let mut args = vec!["--less-chatty", DEFAULT_DB];
    for command in [
        "SELECT name, qty FROM item ORDER BY id",
        "\\dt",
        "\\d item",
        "SHOW time zone",
        "\\dv",
        "\\di",
        "\\dn",
        "\\l",
        "\\df",
        "\\du",
    ] {
        args.extend(["-c", command]);
    }
    let out = pgcli(&server, home.path(), &args).await;
    let report = format!("{}\n{}", describe(&out), server.log_tail());
    assert!(out.status.success(), "pgcli -c: {report}");
    let stderr = text(&out.stderr);
    for bad in ["Traceback", "Exception", "error", "ERROR"] {
        assert!(!stderr.contains(bad), "pgcli said {bad:?}: {report}");
    }
    let lines = squeezed_lines(&out);
    for want in [
        "| apple | 3 |",
        "| plum | 7 |",
        "| public | item | table | availdb |",
        "| id | integer | not null default nextval('item_id_seq'::regclass) |",
        "| name | text | not null |",
        "| qty | integer | default 0 |",
        "\"item_pkey\" PRIMARY KEY, btree (id)",
        "\"item_name\" btree (name)",
        "| UTC |",
        "| public | cheap | view | availdb |",
        "| public | item_name | index | availdb |",
        "| public | availdb |",
        "| availdb | availdb | UTF8 | C.UTF-8 | C.UTF-8 | <null> |",
        "SELECT 0",
    ] {
        assert!(
            lines.iter().any(|l| l == want),
            "pgcli output lacks the line {want:?}: {report}"
        );
    }

    let out = pgcli(&server, home.path(), &["-l"]).await;
    let report = format!("{}\n{}", describe(&out), server.log_tail());
    assert!(out.status.success(), "pgcli -l: {report}");
    assert!(
        squeezed_lines(&out)
            .iter()
            .any(|l| l.starts_with("| availdb | availdb | UTF8 |")),
        "pgcli -l does not list availdb: {report}"
    );

    let out = pgcli(&server, home.path(), &["--ping", "postgres"]).await;
    assert!(
        out.status.success() && text(&out.stdout).contains("PONG"),
        "pgcli --ping postgres: {}",
        describe(&out)
    );
}
