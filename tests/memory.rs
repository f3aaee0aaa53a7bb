//! Bounded memory (issue 16): real `availdb server` processes whose resident
//! memory is read from `/proc/<pid>/status` while they serve results and
//! transactions much larger than the bounds asserted here.
//!
//! The rule every test guards: **what a node holds in memory does not grow
//! with the size of a result or of a transaction** — rows go to the client
//! as SQLite produces them, and a transaction is captured, logged, shipped
//! and redone a bounded part at a time.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_postgres::{Client, SimpleQueryMessage};

use common::group::{error_text, query_text, Group, APP, CATCH_UP_TIMEOUT};
use common::memory::{mb, peak, reset_peak, rss, Sampler};
use common::{TestServer, DEFAULT_DB};

/// What a node may add to its resident memory while it serves one large
/// result or transaction, above what it held before (page cache of SQLite's
/// connections, buffers of the log and of the links included).
const GROWTH_BOUND: u64 = 120 << 20;

/// Rows of about 1 KB: `rows` of them make a table of about `rows` KB.
fn fill_sql(table: &str, from: u64, to: u64) -> String {
    format!(
        "INSERT INTO {table} SELECT value, hex(randomblob(500)) FROM generate_series({from}, {to})"
    )
}

/// Bounded memory, transactions: one transaction larger than a wire frame
/// (64 MiB) on a 3-replica synchronous group is captured, logged, shipped
/// and redone without any node holding it whole: every secondary is
/// SYNCHRONIZED afterwards with the same rows, and no node's peak resident
/// memory grows by more than [`GROWTH_BOUND`] (≈ 60–80 MB measured, the
/// same for 110 MB and for 330 MB).
///
/// Failed before capture read the WAL a part at a time and redo applied a
/// large transaction a read at a time (≈ 250 MB of growth on every node for
/// ≈ 110 MB of pages, and growing with the transaction).
#[tokio::test(flavor = "multi_thread")]
async fn bounded_memory_a_transaction_larger_than_a_frame_replicates_to_three_replicas() {
    // ≈ 110 MB of pages by default; AVAILDB_MEMORY_TX_ROWS=300000 measures
    // a 330 MB transaction (BENCHMARKS.md).
    let rows: u64 = std::env::var("AVAILDB_MEMORY_TX_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let group = Group::start(3).await;
    let c = group.primary().client(APP).await;
    c.batch_execute("CREATE TABLE big(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        .await
        .expect("create big");
    group.wait_synchronized(&[1, 2], CATCH_UP_TIMEOUT).await;
    let pids: Vec<u32> = group.nodes.iter().map(|n| n.pid()).collect();
    let before: Vec<u64> = pids.iter().map(|&p| common::memory::rss(p)).collect();
    for &p in &pids {
        reset_peak(p);
    }
    let sql = fill_sql("big", 1, rows);
    match tokio::time::timeout(Duration::from_secs(300), c.batch_execute(&sql)).await {
        Ok(Ok(())) => {}
        other => panic!("{sql}: {other:?}\n{}", group.logs()),
    }
    group.wait_synchronized(&[1, 2], CATCH_UP_TIMEOUT).await;
    group.wait_caught_up(&[1, 2], CATCH_UP_TIMEOUT).await;
    let expected = query_text(&c, "SELECT count(*), sum(length(v)), max(v) FROM big")
        .await
        .expect("count on r1");
    assert_eq!(expected[0][0].as_deref(), Some(rows.to_string().as_str()));
    for i in 1..3 {
        let s = group.nodes[i].client(APP).await;
        let rows = query_text(&s, "SELECT count(*), sum(length(v)), max(v) FROM big")
            .await
            .unwrap_or_else(|e| panic!("count on node {i}: {}", error_text(&e)));
        assert_eq!(rows, expected, "node {i} holds the whole transaction");
    }
    let mut report = String::new();
    let mut over = false;
    for (i, &p) in pids.iter().enumerate() {
        let grew = peak(p).saturating_sub(before[i]);
        report.push_str(&format!(
            "node {i}: before {}, peak {}, growth {}\n",
            mb(before[i]),
            mb(peak(p)),
            mb(grew)
        ));
        over |= grew > GROWTH_BOUND;
    }
    eprintln!("{report}");
    assert!(
        !over,
        "a node's resident memory grew by more than {} for one transaction of {rows} rows:\n{report}",
        mb(GROWTH_BOUND)
    );
}

/// Fills `big` with `rows` rows of about 1 KB in transactions of 20,000
/// rows (so that loading stays far from any transaction-size question).
async fn fill_big(c: &Client, rows: u64) {
    c.batch_execute("CREATE TABLE big(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        .await
        .expect("create big");
    let mut from = 1;
    while from <= rows {
        let to = (from + 19_999).min(rows);
        let sql = fill_sql("big", from, to);
        tokio::time::timeout(Duration::from_secs(120), c.batch_execute(&sql))
            .await
            .unwrap_or_else(|_| panic!("{sql} took longer than 120 s"))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        from = to + 1;
    }
}

/// Reads `SELECT id, v FROM big` with the simple protocol, sleeping
/// `pause` after every `every` rows; returns (rows, sum of id, bytes of v),
/// or the error that ended it.
async fn read_slowly(
    c: &Client,
    sql: &str,
    every: u64,
    pause: Duration,
) -> Result<(u64, u64, u64), tokio_postgres::Error> {
    let stream = c.simple_query_raw(sql).await?;
    futures::pin_mut!(stream);
    let (mut rows, mut ids, mut bytes) = (0u64, 0u64, 0u64);
    while let Some(message) = stream.next().await {
        if let SimpleQueryMessage::Row(row) = message? {
            rows += 1;
            ids += row.get(0).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            bytes += row.get(1).map_or(0, |v| v.len() as u64);
            if rows % every == 0 {
                tokio::time::sleep(pause).await;
            }
        }
    }
    Ok((rows, ids, bytes))
}

/// Bounded memory, results: `SELECT *` of a table of about 300 MB is read
/// whole by tokio-postgres through a portal with a fetch size (extended
/// protocol, `PortalSuspended` between fetches) and by a simple-protocol
/// client that reads slowly, at the same time. Every row arrives; the node's
/// resident memory grows by less than [`GROWTH_BOUND`] (materialized, the
/// result alone was several times the table); and the slow reader does not
/// stall another session's writes: they all commit while it is still
/// reading.
#[tokio::test(flavor = "multi_thread")]
async fn bounded_memory_select_star_of_a_large_table_streams_to_a_portal_and_a_slow_reader() {
    const ROWS: u64 = 300_000; // ≈ 300 MB of rows
    let server = TestServer::start().await;
    let c = server.client(DEFAULT_DB).await;
    fill_big(&c, ROWS).await;
    c.batch_execute("CREATE TABLE w(id INTEGER PRIMARY KEY, at TEXT)")
        .await
        .expect("create w");
    let pid = server.pid();
    let before = rss(pid);
    reset_peak(pid);
    let sampler = Sampler::start(pid);
    let expected_ids = ROWS * (ROWS + 1) / 2;

    // The portal reader: a transaction, a bound portal, 1,000 rows a fetch.
    let mut portal_client = server.client(DEFAULT_DB).await;
    let portal_reader = tokio::spawn(async move {
        let tx = portal_client.transaction().await.expect("begin");
        let portal = tx.bind("SELECT id, v FROM big", &[]).await.expect("bind");
        let (mut rows, mut ids, mut bytes, mut fetches) = (0u64, 0u64, 0u64, 0u64);
        loop {
            let batch = tx.query_portal(&portal, 1000).await.expect("fetch");
            fetches += 1;
            if batch.is_empty() {
                break;
            }
            for row in &batch {
                rows += 1;
                ids += row.get::<_, i32>(0) as u64;
                bytes += row.get::<_, &str>(1).len() as u64;
            }
        }
        tx.commit().await.expect("commit");
        (rows, ids, bytes, fetches)
    });

    // The slow reader: a pause every 2,000 rows, and a flag once it is done.
    let slow_done = Arc::new(AtomicBool::new(false));
    let slow_client = server.client(DEFAULT_DB).await;
    let slow = {
        let done = slow_done.clone();
        tokio::spawn(async move {
            let out = read_slowly(
                &slow_client,
                "SELECT id, v FROM big",
                2000,
                Duration::from_millis(100),
            )
            .await;
            done.store(true, Ordering::SeqCst);
            out
        })
    };

    // Another session's writes, while the slow reader holds its snapshot.
    let writer = server.client(DEFAULT_DB).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..50 {
        tokio::time::timeout(
            Duration::from_secs(30),
            writer.execute("INSERT INTO w(id, at) VALUES ($1, 'x')", &[&i]),
        )
        .await
        .unwrap_or_else(|_| panic!("write {i} waited 30 s behind a slow reader"))
        .unwrap_or_else(|e| panic!("write {i}: {e}"));
    }
    let writes_done_while_reading = !slow_done.load(Ordering::SeqCst);

    let (rows, ids, bytes, fetches) = tokio::time::timeout(Duration::from_secs(300), portal_reader)
        .await
        .expect("the portal reader finished within 300 s")
        .expect("portal reader");
    assert_eq!(
        (rows, ids),
        (ROWS, expected_ids),
        "every row through the portal"
    );
    assert_eq!(bytes, ROWS * 1000);
    assert!(
        fetches > ROWS / 1000,
        "{fetches} fetches: the portal was suspended between them"
    );
    let (srows, sids, sbytes) = tokio::time::timeout(Duration::from_secs(300), slow)
        .await
        .expect("the slow reader finished within 300 s")
        .expect("slow reader")
        .expect("slow read");
    assert_eq!(
        (srows, sids, sbytes),
        (ROWS, expected_ids, ROWS * 1000),
        "every row, read slowly"
    );
    assert!(
        writes_done_while_reading,
        "50 writes of another session committed only after the slow reader finished"
    );
    let sampled = sampler.finish();
    let grew = peak(pid).saturating_sub(before);
    let report = format!(
        "before {}, peak {} (sampled {}), growth {}",
        mb(before),
        mb(peak(pid)),
        mb(sampled),
        mb(grew)
    );
    eprintln!("{report}");
    assert!(
        grew < GROWTH_BOUND,
        "reading a {ROWS}-row table grew the node by more than {}: {report}",
        mb(GROWTH_BOUND)
    );
}

/// Bounded memory, budgets: what availdb must hold whole is charged to the
/// session's budget (`--session-memory-mb`), and past it the statement
/// fails with SQLSTATE 53200 naming the limit and the setting — the node
/// goes on serving. Three such buffers: a write's `RETURNING` rows, the
/// rest of a suspended portal when its transaction runs another statement
/// (read into memory so the portal keeps its own rows), and COPY FROM STDIN
/// data. A portal whose rest fits is drained and still returns exactly its
/// rows.
#[tokio::test(flavor = "multi_thread")]
async fn bounded_memory_buffers_past_the_session_budget_fail_with_53200_naming_the_setting() {
    let server = TestServer::builder()
        .arg("--session-memory-mb")
        .arg("4")
        .start()
        .await;
    let mut c = server.client(DEFAULT_DB).await;
    fill_big(&c, 20_000).await; // ≈ 20 MB
    let names_the_setting = |e: &tokio_postgres::Error, what: &str| {
        let db = e
            .as_db_error()
            .unwrap_or_else(|| panic!("{what}: not a server error: {e:?}"));
        assert_eq!(db.code().code(), "53200", "{what}: {db:?}");
        assert!(
            db.message().contains("session")
                && db.hint().unwrap_or("").contains("--session-memory-mb"),
            "{what}: the error names the limit and the setting: {db:?}"
        );
    };

    // RETURNING rows go out after the commit: held whole.
    let err = c
        .query("UPDATE big SET v = v RETURNING v", &[])
        .await
        .map(|rows| rows.len())
        .expect_err("20 MB of RETURNING rows past a 4 MB budget");
    names_the_setting(&err, "UPDATE … RETURNING");

    // A suspended portal whose transaction runs another statement.
    {
        let tx = c.transaction().await.expect("begin");
        let small = tx
            .bind("SELECT id FROM big WHERE id <= 5000", &[])
            .await
            .expect("bind small");
        let first = tx.query_portal(&small, 10).await.expect("first 10");
        assert_eq!(first.len(), 10);
        // Another statement of the same transaction: the portal's rest
        // (4,990 small rows) is read now and still comes from the portal.
        let n: i64 = tx
            .query_one("SELECT count(*) FROM big", &[])
            .await
            .expect("count while a portal is suspended")
            .get(0);
        assert_eq!(n, 20_000);
        let mut rest = 0;
        loop {
            let batch = tx.query_portal(&small, 1000).await.expect("rest of small");
            if batch.is_empty() {
                break;
            }
            rest += batch.len();
        }
        assert_eq!(
            rest, 4990,
            "the drained portal returns exactly its own rows"
        );
        let big = tx
            .bind("SELECT id, v FROM big", &[])
            .await
            .expect("bind big");
        tx.query_portal(&big, 10).await.expect("first 10 of big");
        tx.query_one("SELECT 1", &[])
            .await
            .expect("another statement while the big portal is suspended");
        // The rows read before the budget ran out come first, then 53200.
        let mut fetched = 10;
        let err = loop {
            match tx.query_portal(&big, 1000).await {
                Ok(batch) if batch.is_empty() => {
                    panic!("the big portal's 20 MB rest fit a 4 MB budget ({fetched} rows)")
                }
                Ok(batch) => fetched += batch.len(),
                Err(e) => break e,
            }
        };
        assert!(fetched < 20_000, "{fetched} rows before the error");
        names_the_setting(&err, "a suspended portal's rest");
    }

    // COPY FROM STDIN data waits for CopyDone.
    c.batch_execute("CREATE TABLE copied(id INTEGER PRIMARY KEY, v TEXT)")
        .await
        .expect("create copied");
    let sink = c
        .copy_in("COPY copied (id, v) FROM STDIN")
        .await
        .expect("copy in");
    futures::pin_mut!(sink);
    use futures::SinkExt;
    let line = "x".repeat(1000);
    let mut failed = None;
    for i in 0..8000 {
        let data = bytes::Bytes::from(format!("{i}\t{line}\n"));
        if let Err(e) = sink.send(data).await {
            failed = Some(e);
            break;
        }
    }
    let err = match failed {
        Some(e) => e,
        None => sink
            .finish()
            .await
            .expect_err("8 MB of COPY data past a 4 MB budget"),
    };
    names_the_setting(&err, "COPY FROM STDIN");

    // The node and the session go on.
    let n: i64 = c
        .query_one("SELECT count(*) FROM big", &[])
        .await
        .expect("the session goes on")
        .get(0);
    assert_eq!(n, 20_000);
    let view = query_text(
        &c,
        "SELECT physical_memory_in_use_bytes > 0, session_buffer_memory_limit_bytes, \
         buffer_memory_in_use_bytes FROM sys.dm_os_process_memory",
    )
    .await
    .expect("sys.dm_os_process_memory");
    assert_eq!(
        view,
        vec![vec![
            Some("t".into()),
            Some((4u64 << 20).to_string()),
            Some("0".into())
        ]],
        "the view shows the resident memory, the budget, and nothing held once idle"
    );
}

/// Bounded memory keeps `statement_timeout`: a result read so slowly that
/// it outlives the timeout ends with 57014, and the session goes on.
#[tokio::test(flavor = "multi_thread")]
async fn bounded_memory_statement_timeout_stops_a_slowly_read_result() {
    let server = TestServer::start().await;
    let c = server.client(DEFAULT_DB).await;
    fill_big(&c, 20_000).await;
    c.batch_execute("SET statement_timeout = '1s'")
        .await
        .expect("set");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        read_slowly(&c, "SELECT id, v FROM big", 100, Duration::from_millis(100)),
    )
    .await
    .expect("the slow read ended within 60 s");
    let err = out.expect_err("20,000 rows at 1,000 a second outlive a 1 s statement_timeout");
    assert_eq!(
        err.as_db_error().map(|d| d.code().code()),
        Some("57014"),
        "{err:?}"
    );
    let n: i64 = c
        .query_one("SELECT count(*) FROM big", &[])
        .await
        .expect("the session goes on")
        .get(0);
    assert_eq!(n, 20_000);
}

/// Hang guard for one client program's whole read, not a performance bound.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);

/// Fails the test, saying how to install it, when `program args` cannot
/// run (never a silent skip).
fn require_tool(program: &str, args: &[&str], install: &str) {
    let problem = match std::process::Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => return,
        Ok(out) => format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => format!("`{program}` cannot be run: {e}"),
    };
    panic!("{problem}\nThis test needs it. Run the tests with scripts/test, which installs every test tool, or: {install}");
}

/// Runs a client program that prints one row a line as `id|v`, reading
/// its output as it comes (a result of hundreds of MB is never held in the
/// test); returns (rows, sum of id, bytes of v), or what went wrong.
async fn count_printed_rows(
    mut cmd: std::process::Command,
    what: &'static str,
) -> Result<(u64, u64, u64), String> {
    use std::io::{BufRead, Read};
    tokio::task::spawn_blocking(move || {
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("{what}: cannot run: {e}"))?;
        let stdout = child.stdout.take().expect("stdout pipe");
        let mut stderr = child.stderr.take().expect("stderr pipe");
        let counter = std::thread::spawn(move || {
            let (mut rows, mut ids, mut bytes, mut odd) = (0u64, 0u64, 0u64, None);
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match line.split_once('|') {
                    Some((id, v)) if id.parse::<u64>().is_ok() => {
                        rows += 1;
                        ids += id.parse::<u64>().unwrap_or(0);
                        bytes += v.len() as u64;
                    }
                    _ => {
                        odd.get_or_insert(line);
                    }
                }
            }
            (rows, ids, bytes, odd)
        });
        let errors = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let deadline = std::time::Instant::now() + CLIENT_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for the client") {
                break Some(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let (rows, ids, bytes, odd) = counter.join().expect("stdout reader");
        let stderr = errors.join().unwrap_or_default();
        match status {
            None => Err(format!(
                "{what} did not finish within {CLIENT_TIMEOUT:?} ({rows} rows read)\n{stderr}"
            )),
            Some(s) if !s.success() => Err(format!("{what}: exit {s} after {rows} rows\n{stderr}")),
            Some(_) => match odd {
                Some(line) => Err(format!("{what} printed a line that is not a row: {line:?}")),
                None => Ok((rows, ids, bytes)),
            },
        }
    })
    .await
    .expect("client program thread")
}

/// Reads `SELECT id, v FROM big` through psycopg 3 in the way `argv[2]`
/// names and prints each row as `id|v`: `client` (a client-side cursor:
/// libpq receives the whole result), `stream` (`Cursor.stream`, libpq's
/// single-row mode) or `named` (a server-side cursor: psycopg DECLAREs it
/// and FETCHes `itersize` rows at a time).
const PSYCOPG_READ_BIG: &str = r#"
import sys, psycopg
conninfo, mode = sys.argv[1], sys.argv[2]
out = sys.stdout
with psycopg.connect(conninfo) as conn:
    if mode == "client":
        cur = conn.cursor()
        cur.execute("SELECT id, v FROM big")
        rows = cur
    elif mode == "stream":
        rows = conn.cursor().stream("SELECT id, v FROM big")
    elif mode == "named":
        cur = conn.cursor("big_cursor")
        cur.itersize = 2000
        cur.execute("SELECT id, v FROM big")
        rows = cur
    else:
        raise SystemExit(f"unknown mode {mode}")
    for (i, v) in rows:
        out.write(f"{i}|{v}\n")
    conn.commit()
"#;

/// Bounded memory, results through real clients: `SELECT *` of a table of
/// about 200 MB is read whole through psql (plain, and with `FETCH_COUNT`,
/// which makes psql DECLARE a cursor and FETCH from it) and through
/// psycopg 3 (a client-side cursor, `Cursor.stream`, and a server-side
/// named cursor). Every row arrives each time, and the node's peak resident
/// memory grows by less than [`GROWTH_BOUND`] for each read (the clients
/// hold what they receive; the node does not). The 1 GB figure of issue 16
/// is measured by `scripts/bench memory` (BENCHMARKS.md).
#[tokio::test(flavor = "multi_thread")]
async fn bounded_memory_select_star_streams_to_psql_and_psycopg_client_and_server_side_cursors() {
    const ROWS: u64 = 200_000; // ≈ 200 MB of rows
    require_tool(
        "psql",
        &["--version"],
        "apt-get install -y postgresql-client",
    );
    require_tool(
        "python3",
        &["-c", "import psycopg"],
        "python3 -m pip install \"psycopg[binary]\" (scripts/test puts it in .venv/ and that first on PATH)",
    );
    let server = TestServer::start().await;
    let c = server.client(DEFAULT_DB).await;
    fill_big(&c, ROWS).await;
    let pid = server.pid();
    let expected = (ROWS, ROWS * (ROWS + 1) / 2, ROWS * 1000);

    let psql = |fetch_count: Option<&str>| {
        let mut cmd = server.libpq_command("psql", DEFAULT_DB);
        cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"]);
        if let Some(n) = fetch_count {
            cmd.args(["-v", &format!("FETCH_COUNT={n}")]);
        }
        cmd.args(["-c", "SELECT id, v FROM big"]);
        cmd
    };
    let psycopg = |mode: &str| {
        let mut cmd = std::process::Command::new("python3");
        cmd.args(["-c", PSYCOPG_READ_BIG])
            .arg(server.conn_string(DEFAULT_DB))
            .arg(mode)
            .env_remove("PGSERVICE")
            .env_remove("PGOPTIONS")
            .env_remove("PGSSLMODE")
            .stdin(std::process::Stdio::null());
        cmd
    };
    let reads: [(&'static str, std::process::Command); 5] = [
        ("psql", psql(None)),
        ("psql with FETCH_COUNT=1000", psql(Some("1000"))),
        ("psycopg, client-side cursor", psycopg("client")),
        ("psycopg, Cursor.stream", psycopg("stream")),
        ("psycopg, server-side named cursor", psycopg("named")),
    ];
    let mut report = String::new();
    let mut over = Vec::new();
    for (what, cmd) in reads {
        let before = rss(pid);
        reset_peak(pid);
        let sampler = Sampler::start(pid);
        let got = count_printed_rows(cmd, what).await;
        let sampled = sampler.finish();
        let got = got.unwrap_or_else(|e| panic!("{e}\n{}", server.log_tail()));
        assert_eq!(got, expected, "{what}: (rows, sum of ids, bytes of v)");
        let grew = peak(pid).saturating_sub(before);
        report.push_str(&format!(
            "{what}: before {}, peak {} (sampled {}), growth {}\n",
            mb(before),
            mb(peak(pid)),
            mb(sampled),
            mb(grew)
        ));
        if grew >= GROWTH_BOUND {
            over.push(what);
        }
    }
    eprintln!("{report}");
    assert!(
        over.is_empty(),
        "reading a {ROWS}-row table through {over:?} grew the node by more than {}:\n{report}",
        mb(GROWTH_BOUND)
    );
}

/// Runs `sql` through `c` and returns how long it took to commit; panics
/// after a 30 s hang guard.
async fn timed_write(c: &Client, sql: &str) -> Duration {
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(30), c.batch_execute(sql))
        .await
        .unwrap_or_else(|_| panic!("{sql} waited 30 s"))
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    started.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Bounded memory, slow readers do not stall writers: while one session
/// reads `SELECT id, v FROM big` at one row a second and another holds the
/// same large result open without reading it at all (both snapshots open,
/// their cursor threads waiting for room), a third session commits 40
/// small inserts, 20 updates of rows the readers have not reached yet,
/// and 20 MB in one transaction (enough WAL for SQLite's automatic
/// checkpoint to try, and stop at the readers' snapshots). Every write
/// commits with its usual latency (median within a small factor of the
/// same writes without readers, none past 3 s); the node does not grow
/// with the held results; and once read, both results are exactly the
/// snapshot each statement started with (no updated row shows). The
/// writes are spread over about ten seconds (a bounded loop).
#[tokio::test(flavor = "multi_thread")]
async fn bounded_memory_a_reader_at_one_row_a_second_and_a_stalled_reader_do_not_stall_writes() {
    const ROWS: u64 = 100_000; // ≈ 100 MB: far more than the window and the sockets hold
    let server = TestServer::start().await;
    let c = server.client(DEFAULT_DB).await;
    fill_big(&c, ROWS).await;
    c.batch_execute(
        "CREATE TABLE w(id INTEGER PRIMARY KEY, at TEXT); CREATE TABLE bulk(id INTEGER PRIMARY KEY, v TEXT)",
    )
    .await
    .expect("create w, bulk");
    let writer = server.client(DEFAULT_DB).await;
    let mut baseline = Vec::new();
    for i in 0..20 {
        baseline.push(timed_write(&writer, &format!("INSERT INTO w VALUES ({i}, 'before')")).await);
    }
    let baseline = median(baseline);

    let pid = server.pid();
    let before = rss(pid);
    reset_peak(pid);
    let sampler = Sampler::start(pid);

    // The stalled reader: its first row read, then nothing until released.
    let stalled_client = server.client(DEFAULT_DB).await;
    let release = Arc::new(tokio::sync::Notify::new());
    let stalled = {
        let release = release.clone();
        tokio::spawn(async move {
            let stream = stalled_client
                .simple_query_raw("SELECT id, v FROM big")
                .await
                .expect("stalled query");
            futures::pin_mut!(stream);
            let mut rows = Vec::new();
            let mut first = true;
            while let Some(message) = stream.next().await {
                if let SimpleQueryMessage::Row(row) = message.expect("stalled read") {
                    rows.push((
                        row.get(0).unwrap_or("").to_string(),
                        row.get(1).map_or(0, str::len),
                    ));
                    if first {
                        first = false;
                        release.notified().await;
                    }
                }
            }
            rows
        })
    };
    // The reader at one row a second, until told to hurry.
    let hurry = Arc::new(AtomicBool::new(false));
    let slow_client = server.client(DEFAULT_DB).await;
    let slow = {
        let hurry = hurry.clone();
        tokio::spawn(async move {
            let stream = slow_client
                .simple_query_raw("SELECT id, v FROM big")
                .await
                .expect("slow query");
            futures::pin_mut!(stream);
            let (mut rows, mut changed, mut slowly) = (0u64, 0u64, 0u64);
            while let Some(message) = stream.next().await {
                if let SimpleQueryMessage::Row(row) = message.expect("slow read") {
                    rows += 1;
                    if row.get(1) == Some("changed") {
                        changed += 1;
                    }
                    if !hurry.load(Ordering::SeqCst) {
                        slowly += 1;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            (rows, changed, slowly)
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut small = Vec::new();
    for i in 0..40 {
        small.push(
            timed_write(
                &writer,
                &format!("INSERT INTO w VALUES ({}, 'during')", 100 + i),
            )
            .await,
        );
        if i % 2 == 0 {
            let id = ROWS - i;
            small.push(
                timed_write(
                    &writer,
                    &format!("UPDATE big SET v = 'changed' WHERE id = {id}"),
                )
                .await,
            );
        }
        // Spread over ≈ 10 s: the slow reader reads about ten rows meanwhile.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let bulk = timed_write(&writer, &fill_sql("bulk", 1, 20_000)).await;
    let after_bulk = timed_write(&writer, "INSERT INTO w VALUES (1000, 'after bulk')").await;
    let held = sampler.max();
    let slow_still_reading = !slow.is_finished() && !stalled.is_finished();

    hurry.store(true, Ordering::SeqCst);
    release.notify_one();
    let stalled_rows = tokio::time::timeout(Duration::from_secs(300), stalled)
        .await
        .expect("the stalled reader finished within 300 s once released")
        .expect("stalled reader");
    let (slow_rows, slow_changed, slowly) = tokio::time::timeout(Duration::from_secs(300), slow)
        .await
        .expect("the slow reader finished within 300 s once hurried")
        .expect("slow reader");
    let sampled = sampler.finish();

    let median_during = median(small.clone());
    let worst = small.iter().max().copied().unwrap_or_default();
    let report = format!(
        "writes without readers: median {baseline:?}; with them: median {median_during:?}, worst {worst:?}, \
         20 MB transaction {bulk:?}, insert after it {after_bulk:?}; the slow reader read {slowly} rows at one a second; \
         node before {}, peak while held {}, peak {} (sampled {})",
        mb(before),
        mb(held),
        mb(peak(pid)),
        mb(sampled)
    );
    eprintln!("{report}");
    assert!(
        slow_still_reading,
        "the readers finished before the writes: {report}"
    );
    assert!(
        median_during <= baseline * 5 + Duration::from_millis(25),
        "writes slowed down behind the readers: {report}"
    );
    assert!(
        worst < Duration::from_secs(3) && after_bulk < Duration::from_secs(3),
        "a write waited behind the readers: {report}"
    );
    assert_eq!(
        stalled_rows.len() as u64,
        ROWS,
        "every row to the stalled reader"
    );
    assert!(
        stalled_rows.iter().all(|(_, len)| *len == 1000),
        "the stalled reader saw an update made after its statement started"
    );
    assert_eq!(
        (slow_rows, slow_changed),
        (ROWS, 0),
        "every row to the slow reader, as of its statement's start"
    );
    assert!(
        peak(pid).saturating_sub(before) < GROWTH_BOUND,
        "two held results and 20 MB of writes grew the node by more than {}: {report}",
        mb(GROWTH_BOUND)
    );
    let n = query_text(&c, "SELECT count(*) FROM w WHERE at <> 'before'")
        .await
        .expect("count w");
    assert_eq!(n[0][0].as_deref(), Some("41"));
}

/// Resets the peak resident memory of `pids` and returns what each holds
/// now.
fn start_measuring(pids: &[u32]) -> Vec<u64> {
    pids.iter()
        .map(|&p| {
            let now = rss(p);
            reset_peak(p);
            now
        })
        .collect()
}

/// How much each of `pids` grew above `before` at its peak, one line per
/// node (`names`), and whether any grew by its bound (`bounds`) or more.
fn growth_report(names: &[&str], pids: &[u32], before: &[u64], bounds: &[u64]) -> (String, bool) {
    let mut report = String::new();
    let mut over = false;
    for (((name, &p), &b), &bound) in names.iter().zip(pids).zip(before).zip(bounds) {
        let grew = peak(p).saturating_sub(b);
        report.push_str(&format!(
            "{name}: before {}, peak {}, growth {} (bound {})\n",
            mb(b),
            mb(peak(p)),
            mb(grew),
            mb(bound)
        ));
        over |= grew >= bound;
    }
    (report, over)
}

/// What a primary may add to its resident memory while it seeds two
/// replicas at once. Each seed is a backup taken through a pipeline of
/// 8 MiB blocks (`src/backup/take.rs`): the block being read, a queue of
/// one to the workers that check, hash and compress, each worker's input
/// and output, a queue of one to the writer, and the blocks it holds to
/// write them in order — about (3 + 3 × the workers) blocks, as take.rs
/// counts them, the workers being the cores up to 4. Measured here (2 cores): ≈ 115 MB for two seeds, the same for
/// databases of 150 MB and 300 MB. Slack of 40 MiB on top.
fn seeding_primary_growth_bound() -> u64 {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4)) as u64;
    2 * (3 + 3 * workers) * (8 << 20) + (40 << 20)
}

/// Bounded memory, catch-up and seeding: a synchronous secondary that was
/// down while about 150 MB was committed catches up from the primary's log,
/// and a database of about 150 MB added to the group is seeded to both
/// secondaries (a backup streamed from the primary); in both, the log and
/// the images are read, sent and applied a part at a time: no node's peak
/// resident memory grows by [`GROWTH_BOUND`] or more (the seeding primary
/// by [`seeding_primary_growth_bound`]: two seeds at once), and the
/// secondaries end with the primary's rows. The catch-up also runs at link
/// speed (batches back to back), not at one batch per ping. The 2 GB
/// seeding figure of issue 16 is measured by `scripts/bench memory`
/// (`BENCH_MEMORY_SEED_MB`).
#[tokio::test(flavor = "multi_thread")]
async fn bounded_memory_catch_up_and_seeding_of_a_large_database_keep_every_node_bounded() {
    // ≈ 200 MB of rows by default (compressed ≈ 110 MB a seed: both held
    // whole would pass the bound on 2 cores); AVAILDB_MEMORY_SEED_ROWS=n measures other
    // sizes.
    let rows_env = std::env::var("AVAILDB_MEMORY_SEED_ROWS").ok();
    let rows: u64 = rows_env.and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let mut group = Group::start(3).await;
    let count_sql = "SELECT count(*), sum(length(v)), max(v) FROM big";

    // Catch-up: r3 down while the primary commits rows rows, then back.
    let c = group.primary().client(APP).await;
    c.batch_execute("CREATE TABLE marker(id INTEGER PRIMARY KEY)")
        .await
        .expect("create marker");
    group.wait_caught_up(&[1, 2], CATCH_UP_TIMEOUT).await;
    group.nodes[2].kill9();
    fill_big(&c, rows).await;
    let expected = query_text(&c, count_sql).await.expect("count on r1");
    group.nodes[2].restart().await;
    let pids = [group.nodes[0].pid(), group.nodes[2].pid()];
    let before = start_measuring(&pids);
    let catching_up = std::time::Instant::now();
    group.wait_caught_up(&[2], CATCH_UP_TIMEOUT * 3).await;
    let caught_up_in = catching_up.elapsed();
    let (catch_up, over) = growth_report(
        &["r1 (primary)", "r3 (catching up)"],
        &pids,
        &before,
        &[GROWTH_BOUND, GROWTH_BOUND],
    );
    eprintln!("catch-up of {rows} rows in {caught_up_in:?}:\n{catch_up}");
    let s = group.nodes[2].client(APP).await;
    assert_eq!(
        query_text(&s, count_sql).await.expect("count on r3"),
        expected,
        "r3 caught up with every row"
    );
    assert!(
        !over,
        "catching up {rows} rows grew a node past its bound:\n{catch_up}"
    );
    // Batches back to back: the primary, its log end standing still, sent
    // a replica behind one 4 MiB batch per ping (≈ 6.3 MB/s: 32 s for
    // these 200 MB, debug build; 4 s since).
    let floor = (rows * 1000) as f64 / (2.0 * 6.3e6);
    assert!(
        caught_up_in.as_secs_f64() < floor,
        "catching up {rows} rows took {caught_up_in:?} (≥ {floor:.0} s: one batch per ping?)\n{catch_up}"
    );

    // Seeding: a new database of rows rows added to the group.
    let admin = group.primary().client(DEFAULT_DB).await;
    admin
        .batch_execute("CREATE DATABASE seeded")
        .await
        .expect("create database seeded");
    let p = group.primary().client("seeded").await;
    fill_big(&p, rows).await;
    let expected = query_text(&p, count_sql).await.expect("count on r1");
    let pids: Vec<u32> = group.nodes.iter().map(|n| n.pid()).collect();
    let before = start_measuring(&pids);
    admin
        .batch_execute("ALTER AVAILABILITY GROUP ag1 ADD DATABASE seeded")
        .await
        .expect("add database seeded");
    let deadline = std::time::Instant::now() + CATCH_UP_TIMEOUT * 3;
    let mut pending = vec![1, 2];
    while !pending.is_empty() {
        let mut still = Vec::new();
        for i in pending {
            let rows = match group.nodes[i].try_client("seeded").await {
                Ok(s) => query_text(&s, count_sql).await.ok(),
                Err(_) => None,
            };
            if rows.as_ref() != Some(&expected) {
                still.push(i);
            }
        }
        pending = still;
        assert!(
            std::time::Instant::now() < deadline,
            "nodes {pending:?} did not hold the seeded rows within {:?}\n{}",
            CATCH_UP_TIMEOUT * 3,
            group.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seeds = query_text(
        &admin,
        "SELECT internal_state_desc, transfer_size_bytes FROM sys.dm_hadr_physical_seeding_stats \
         WHERE local_database_name = 'seeded'",
    )
    .await
    .expect("seeding stats");
    let (seeding, over) = growth_report(
        &["r1 (primary)", "r2", "r3"],
        &pids,
        &before,
        &[seeding_primary_growth_bound(), GROWTH_BOUND, GROWTH_BOUND],
    );
    eprintln!("seeding a database of {rows} rows ({seeds:?}):\n{seeding}");
    assert!(
        !over,
        "seeding a database of {rows} rows grew a node past its bound:\n{seeding}"
    );
}
