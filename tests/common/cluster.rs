//! Groups under the quorum cluster manager (automatic and planned
//! failover): find the primary the cluster named from any live node, connect
//! the way a client with a multi-host connection string and
//! `target_session_attrs=read-write` does, and drive writers that reconnect
//! through failovers and record which commits were acknowledged.
//!
//! Nodes that are killed or paused (SIGSTOP) cannot be asked anything, so
//! every helper that polls nodes takes the indexes of the live ones. Every
//! wait is bounded and panics with every live node's log tail.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use super::group::{
    db_states, error_text, group_row, name, query_text, replica_states, rows_of, Group, GroupRow,
    APP, GROUP, STATEMENT_TIMEOUT,
};
use super::{TestServer, DEFAULT_DB, USER};

/// The primary's lease, its renewal period and the leader's margin, as
/// the code under test has them.
#[allow(unused_imports)]
pub use availdb::ag::clustered::{LEASE, MARGIN, RENEW_EVERY};
/// Bound on an automatic failover becoming visible on the new primary
/// (LEASE + MARGIN + a tick + an election, on a loaded 2-core machine with
/// a debug build: generous on purpose).
pub const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one host's session start-up (TCP, start-up, `SHOW
/// transaction_read_only`): libpq's `connect_timeout`, which applies to
/// each host of a multi-host string separately.
pub const HOST_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between attempts of a client that could not connect or write.
pub const RETRY: Duration = Duration::from_millis(20);

const POLL: Duration = Duration::from_millis(100);

/// How a client finds the writable primary.
#[derive(Clone, Debug)]
pub struct ReadWrite {
    ports: Vec<u16>,
    db: String,
    multi_host: bool,
}

impl ReadWrite {
    /// A real multi-host connection string handed to tokio-postgres, which
    /// tries the hosts in order and keeps the first that answers `SHOW
    /// transaction_read_only` with `off`. tokio-postgres bounds only the TCP
    /// connect of each host, so a node that is paused (SIGSTOP) would hang
    /// it: use this where nodes are killed, not paused. The whole attempt is
    /// bounded here.
    pub fn multi_host(group: &Group, db: &str) -> ReadWrite {
        ReadWrite {
            ports: group.nodes.iter().map(TestServer::port).collect(),
            db: db.to_string(),
            multi_host: true,
        }
    }

    /// The same search done host by host with each host's whole start-up
    /// bounded by [`HOST_TIMEOUT`], as libpq does with `connect_timeout`:
    /// a paused node costs one timeout, not the whole connection.
    pub fn each_host(group: &Group, db: &str) -> ReadWrite {
        ReadWrite {
            multi_host: false,
            ..ReadWrite::multi_host(group, db)
        }
    }

    /// The multi-host connection string (libpq syntax).
    pub fn conn_string(&self) -> String {
        let hosts = vec!["127.0.0.1"; self.ports.len()].join(",");
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        format!(
            "host={hosts} port={} user={USER} dbname={} target_session_attrs=read-write connect_timeout={}",
            ports.join(","),
            self.db,
            HOST_TIMEOUT.as_secs()
        )
    }

    /// One attempt to reach the primary; the error says what each host
    /// answered (or the last one, for the multi-host string).
    pub async fn connect(&self) -> Result<Client, String> {
        if self.multi_host {
            let bound = HOST_TIMEOUT * (self.ports.len() as u32 + 2);
            return connect_within(&self.conn_string(), bound).await;
        }
        let mut errors = Vec::new();
        for port in &self.ports {
            let single = format!(
                "host=127.0.0.1 port={port} user={USER} dbname={} target_session_attrs=read-write connect_timeout={}",
                self.db,
                HOST_TIMEOUT.as_secs()
            );
            match connect_within(&single, HOST_TIMEOUT).await {
                Ok(client) => return Ok(client),
                Err(e) => errors.push(format!("port {port}: {e}")),
            }
        }
        Err(errors.join("; "))
    }

    /// Connects, retrying every [`RETRY`] until `timeout`.
    pub async fn connect_retrying(&self, timeout: Duration) -> Result<Client, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.connect().await {
                Ok(client) => return Ok(client),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("no writable primary within {timeout:?}: {e}"))
                }
                Err(_) => tokio::time::sleep(RETRY).await,
            }
        }
    }

    /// Runs `sql` on the primary, reconnecting and retrying the whole
    /// statement on any failure until `timeout`: only for statements that
    /// are safe to repeat (reads, `CREATE TABLE IF NOT EXISTS`).
    pub async fn query_retrying(
        &self,
        sql: &str,
        timeout: Duration,
    ) -> Result<Vec<Vec<Option<String>>>, String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.connect().await {
                Ok(client) => {
                    match tokio::time::timeout(STATEMENT_TIMEOUT, client.simple_query(sql)).await {
                        Ok(Ok(messages)) => return Ok(rows_of(messages)),
                        Ok(Err(e)) => last = error_text(&e),
                        Err(_) => last = format!("no answer within {STATEMENT_TIMEOUT:?}"),
                    }
                }
                Err(e) => last = e,
            }
            tokio::time::sleep(RETRY).await;
        }
        Err(format!(
            "{sql}: not answered by a primary within {timeout:?}: {last}"
        ))
    }
}

async fn connect_within(conn_string: &str, bound: Duration) -> Result<Client, String> {
    match tokio::time::timeout(bound, tokio_postgres::connect(conn_string, NoTls)).await {
        Ok(Ok((client, connection))) => {
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(client)
        }
        Ok(Err(e)) => Err(error_text(&e)),
        Err(_) => Err(format!("no session within {bound:?}")),
    }
}

// ------------------------------------------------------------- the writers

/// What a statement of a writer does with its unique id: the SQL to run
/// (one simple-protocol query: a single INSERT, or BEGIN … COMMIT).
pub type Work = Arc<dyn Fn(i64) -> String + Send + Sync>;

/// What one writer did.
#[derive(Debug, Default, Clone)]
pub struct WriterReport {
    /// Ids whose statement returned success (acknowledged commits).
    pub acked: Vec<i64>,
    /// Ids whose statement failed or got no answer, and why: each may or
    /// may not have committed. Never retried under the same id.
    pub in_doubt: Vec<(i64, String)>,
    /// Every id sent (acknowledged or in doubt).
    pub attempted: Vec<i64>,
    /// Connection attempts that found no writable primary.
    pub failed_connects: usize,
    /// Why the writer stopped early (no primary within its bound).
    pub gave_up: Option<String>,
}

/// Writer tasks, each running `work(id)` for its own ids through a
/// [`ReadWrite`] connection that it re-opens after every error, so it
/// follows the primary through failovers.
pub struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<WriterReport>>,
}

/// How writers run.
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// Number of tasks; task `k` uses ids `first + k * stride ..`.
    pub tasks: usize,
    /// First id of task 0.
    pub first: i64,
    /// Distance between the id ranges of two tasks.
    pub stride: i64,
    /// Ids per task (the task ends after sending that many).
    pub per_task: usize,
    /// Sleep after each acknowledged statement (keeps two cores usable).
    pub pace: Duration,
    /// Bound on finding a primary after an error, per gap.
    pub reconnect_within: Duration,
}

impl Writers {
    /// Starts `options.tasks` writers.
    pub fn start(rw: &ReadWrite, options: &WriterOptions, work: Work) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let tasks = (0..options.tasks)
            .map(|k| {
                let first = options.first + k as i64 * options.stride;
                let ids = first..first + options.per_task as i64;
                tokio::spawn(write_loop(
                    rw.clone(),
                    ids,
                    options.clone(),
                    work.clone(),
                    stop.clone(),
                    acked.clone(),
                ))
            })
            .collect();
        Writers { stop, acked, tasks }
    }

    /// Statements acknowledged so far, all tasks together.
    pub fn acked(&self) -> usize {
        self.acked.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until `n` statements were acknowledged in all.
    pub async fn wait_acked(&self, n: usize, timeout: Duration, logs: impl Fn() -> String) {
        let deadline = Instant::now() + timeout;
        while self.acked() < n {
            if self.tasks.iter().all(|t| t.is_finished()) {
                panic!(
                    "the writers ended after {} acknowledged statements, before {n}\n{}",
                    self.acked(),
                    logs()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "only {} statements acknowledged within {timeout:?} (wanted {n})\n{}",
                    self.acked(),
                    logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (bounded) for every task to end by itself.
    pub async fn join(self, timeout: Duration) -> Vec<WriterReport> {
        let deadline = Instant::now() + timeout;
        let mut reports = Vec::new();
        for task in self.tasks {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, task).await {
                Ok(Ok(report)) => reports.push(report),
                Ok(Err(e)) => panic!("a writer panicked: {e}"),
                Err(_) => {
                    self.stop.store(true, Ordering::SeqCst);
                    panic!("the writers did not finish within {timeout:?}");
                }
            }
        }
        reports
    }

    /// Asks every task to stop after its current statement and returns
    /// their reports (bounded).
    pub async fn finish(self) -> Vec<WriterReport> {
        self.stop.store(true, Ordering::SeqCst);
        self.join(STATEMENT_TIMEOUT + Duration::from_secs(30)).await
    }
}

async fn write_loop(
    rw: ReadWrite,
    ids: std::ops::Range<i64>,
    options: WriterOptions,
    work: Work,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
) -> WriterReport {
    let mut report = WriterReport::default();
    let mut client: Option<Client> = None;
    'ids: for id in ids {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let deadline = Instant::now() + options.reconnect_within;
        while client.is_none() {
            match rw.connect().await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    report.failed_connects += 1;
                    if stop.load(Ordering::SeqCst) {
                        break 'ids;
                    }
                    if Instant::now() > deadline {
                        report.gave_up = Some(format!(
                            "no writable primary within {:?} before id {id}: {e}",
                            options.reconnect_within
                        ));
                        break 'ids;
                    }
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
        let c = client.as_ref().expect("connected");
        let sql = work(id);
        report.attempted.push(id);
        match tokio::time::timeout(STATEMENT_TIMEOUT, c.batch_execute(&sql)).await {
            Ok(Ok(())) => {
                report.acked.push(id);
                acked.fetch_add(1, Ordering::SeqCst);
                if !options.pace.is_zero() {
                    tokio::time::sleep(options.pace).await;
                }
            }
            Ok(Err(e)) => {
                report.in_doubt.push((id, error_text(&e)));
                client = None;
                tokio::time::sleep(RETRY).await;
            }
            Err(_) => {
                report
                    .in_doubt
                    .push((id, format!("no answer within {STATEMENT_TIMEOUT:?}")));
                client = None;
            }
        }
    }
    report
}

/// All reports' acknowledged ids.
pub fn acked_ids(reports: &[WriterReport]) -> BTreeSet<i64> {
    reports
        .iter()
        .flat_map(|r| r.acked.iter().copied())
        .collect()
}

/// All reports' attempted ids.
pub fn attempted_ids(reports: &[WriterReport]) -> BTreeSet<i64> {
    reports
        .iter()
        .flat_map(|r| r.attempted.iter().copied())
        .collect()
}

/// A short account of what the writers saw (for messages).
pub fn summary(reports: &[WriterReport]) -> String {
    let mut out = String::new();
    for (k, r) in reports.iter().enumerate() {
        let _ = write!(
            out,
            "writer {k}: {} acknowledged, {} in doubt, {} failed connects{}; ",
            r.acked.len(),
            r.in_doubt.len(),
            r.failed_connects,
            r.gave_up
                .as_ref()
                .map(|g| format!(", gave up: {g}"))
                .unwrap_or_default()
        );
        for (id, why) in r.in_doubt.iter().take(5) {
            let _ = write!(out, "[{id}: {why}] ");
        }
    }
    out
}

/// `SELECT key, count(*) … GROUP BY key` on `server`'s `db`: how many rows
/// hold each value of `column` in `table`.
pub async fn counts(
    server: &TestServer,
    db: &str,
    table: &str,
    column: &str,
) -> BTreeMap<i64, i64> {
    let client = server.client(db).await;
    let sql = format!("SELECT {column}, count(*) FROM {table} GROUP BY {column}");
    match tokio::time::timeout(STATEMENT_TIMEOUT, client.query(sql.as_str(), &[])).await {
        Ok(Ok(rows)) => rows
            .iter()
            .map(|r| (super::int(r, 0), r.get::<_, i64>(1)))
            .collect(),
        Ok(Err(e)) => panic!(
            "{sql} on port {}: {}\n{}",
            server.port(),
            error_text(&e),
            server.log_tail()
        ),
        Err(_) => panic!("{sql} on port {}: no answer in time", server.port()),
    }
}

/// Checks one node's copy of a writers' table: every acknowledged id
/// exactly once, no id more than once, nothing that was never sent.
/// `Err` says what is wrong.
pub fn check_ids(
    counts: &BTreeMap<i64, i64>,
    acked: &BTreeSet<i64>,
    attempted: &BTreeSet<i64>,
) -> Result<(), String> {
    let missing: Vec<i64> = acked
        .iter()
        .copied()
        .filter(|id| !counts.contains_key(id))
        .collect();
    let duplicated: Vec<(i64, i64)> = counts
        .iter()
        .filter(|(_, &n)| n != 1)
        .map(|(&id, &n)| (id, n))
        .collect();
    let phantom: Vec<i64> = counts
        .keys()
        .copied()
        .filter(|id| !attempted.contains(id))
        .collect();
    if missing.is_empty() && duplicated.is_empty() && phantom.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{} of {} acknowledged ids missing: {:?}; ids present more than once (id, count): {:?}; \
         ids never sent: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(50)],
        &duplicated[..duplicated.len().min(50)],
        &phantom[..phantom.len().min(50)]
    ))
}

// ------------------------------------------------------ the group's state

/// Every live node's last log lines.
pub fn logs_of(group: &Group, live: &[usize]) -> String {
    let mut out = String::new();
    for (i, node) in group.nodes.iter().enumerate() {
        if live.contains(&i) {
            let _ = writeln!(out, "===== {} =====\n{}", name(i), node.log_tail());
        } else {
            let _ = writeln!(
                out,
                "===== {} (down or paused) =====\n{}",
                name(i),
                node.log_tail()
            );
        }
    }
    out
}

/// Node index of replica `r{n}`.
pub fn index_of(replica: &str) -> Option<usize> {
    replica
        .strip_prefix('r')
        .and_then(|n| n.parse::<usize>().ok())
        .and_then(|n| n.checked_sub(1))
}

/// The primary and epoch the newest definition among `live` nodes names.
pub async fn named_primary(group: &Group, live: &[usize]) -> Option<(usize, u64)> {
    let mut best: Option<GroupRow> = None;
    for &i in live {
        if let Some(row) = group_row(&group.nodes[i]).await {
            if best.as_ref().is_none_or(|b| row.epoch > b.epoch) {
                best = Some(row);
            }
        }
    }
    best.and_then(|row| index_of(&row.primary_replica).map(|i| (i, row.epoch)))
}

/// Node `i`'s own role in `sys.dm_hadr_availability_replica_states`.
pub async fn local_role(group: &Group, i: usize) -> Option<String> {
    replica_states(&group.nodes[i])
        .await
        .into_iter()
        .find(|r| r.is_local)
        .map(|r| r.role)
}

/// Waits until a live node other than those in `not` is primary at an
/// epoch above `after`: its own definition names it and its own replica
/// row says PRIMARY. Returns the node, the epoch and how long it took.
pub async fn wait_new_primary(
    group: &Group,
    live: &[usize],
    not: &[usize],
    after: u64,
    timeout: Duration,
) -> (usize, u64, Duration) {
    let start = Instant::now();
    let deadline = start + timeout;
    loop {
        let mut seen = Vec::new();
        for &i in live {
            let row = group_row(&group.nodes[i]).await;
            let role = local_role(group, i).await;
            if let Some(row) = &row {
                if row.epoch > after
                    && row.primary_replica == name(i)
                    && !not.contains(&i)
                    && role.as_deref() == Some("PRIMARY")
                {
                    return (i, row.epoch, start.elapsed());
                }
            }
            seen.push((name(i), row.map(|r| (r.primary_replica, r.epoch)), role));
        }
        if Instant::now() > deadline {
            panic!(
                "no new primary (not {:?}, epoch > {after}) within {timeout:?}; \
                 (node, its definition's (primary, epoch), its role): {seen:?}\n{}",
                not.iter().map(|&i| name(i)).collect::<Vec<_>>(),
                logs_of(group, live)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until node `i` is a secondary of `primary` at `epoch`.
pub async fn wait_secondary_of(
    group: &Group,
    live: &[usize],
    i: usize,
    primary: usize,
    epoch: u64,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = group_row(&group.nodes[i]).await;
        let role = local_role(group, i).await;
        let done = row
            .as_ref()
            .is_some_and(|r| r.primary_replica == name(primary) && r.epoch == epoch)
            && role.as_deref() == Some("SECONDARY");
        if done {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "{} is not a secondary of {} at epoch {epoch} within 60 s; its definition: \
                 {row:#?}; its role: {role:?}\n{}",
                name(i),
                name(primary),
                logs_of(group, live)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Per replica, the `is_failover_ready` column of node `i`'s rows of
/// `sys.dm_hadr_database_replica_states` for `app` (in the cluster's
/// synchronized set); None when this build's view has no such column.
pub async fn failover_ready(group: &Group, i: usize) -> Option<BTreeMap<String, bool>> {
    let client = group.nodes[i].client(DEFAULT_DB).await;
    let sql =
        format!("SELECT * FROM sys.dm_hadr_database_replica_states WHERE database_name = '{APP}'");
    let messages = match tokio::time::timeout(STATEMENT_TIMEOUT, client.simple_query(&sql)).await {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => panic!("{sql} on {}: {}", name(i), error_text(&e)),
        Err(_) => panic!("{sql} on {}: no answer in time", name(i)),
    };
    let mut out = BTreeMap::new();
    for m in messages {
        if let SimpleQueryMessage::Row(row) = m {
            let column = |n: &str| row.columns().iter().position(|c| c.name() == n);
            let (Some(ready), Some(replica)) = (column("is_failover_ready"), column("replica"))
            else {
                return None;
            };
            out.insert(
                row.get(replica).unwrap_or_default().to_string(),
                matches!(row.get(ready), Some("t" | "true" | "1")),
            );
        }
    }
    Some(out)
}

/// Waits until node `primary` sees every node in `secondaries`
/// SYNCHRONIZED and CONNECTED and — where the view tells — in the
/// cluster's synchronized set, so an automatic or planned failover to any
/// of them is allowed.
pub async fn wait_failover_ready(group: &Group, primary: usize, secondaries: &[usize]) {
    group
        .wait_synchronized_on(primary, secondaries, Duration::from_secs(60))
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let Some(ready) = failover_ready(group, primary).await else {
            // No column: the synchronized set follows SYNCHRONIZED by one
            // cluster round trip.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return;
        };
        let pending: Vec<String> = secondaries
            .iter()
            .map(|&i| name(i))
            .filter(|n| ready.get(n) != Some(&true))
            .collect();
        if pending.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "{pending:?} SYNCHRONIZED on {} but not in the cluster's synchronized set \
                 within 30 s: {ready:?}\n{}",
                name(primary),
                group.logs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Runs `ALTER AVAILABILITY GROUP ag1 FAILOVER` on node `i`; the result
/// as `Err((sqlstate, message))` when refused.
pub async fn planned_failover(group: &Group, i: usize) -> Result<Duration, (String, String)> {
    let client = group.nodes[i].client(DEFAULT_DB).await;
    let sql = format!("ALTER AVAILABILITY GROUP {GROUP} FAILOVER");
    let start = Instant::now();
    match tokio::time::timeout(Duration::from_secs(60), client.batch_execute(&sql)).await {
        Ok(Ok(())) => Ok(start.elapsed()),
        Ok(Err(e)) => Err(match e.as_db_error() {
            Some(db) => (db.code().code().to_string(), db.message().to_string()),
            None => (String::new(), format!("{e:?}")),
        }),
        Err(_) => panic!(
            "{sql} on {}: no answer within 60 s\n{}",
            name(i),
            group.logs()
        ),
    }
}

/// `INSERT` through `client`; the SQLSTATE when it fails (empty for a
/// client-side error), or None when it succeeded.
pub async fn try_write(client: &Client, sql: &str) -> Option<String> {
    match tokio::time::timeout(STATEMENT_TIMEOUT, client.batch_execute(sql)).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(
            e.code()
                .map(|c| format!("{} ({})", c.code(), error_text(&e)))
                .unwrap_or_else(|| format!("client error ({e:?})")),
        ),
        Err(_) => Some(format!("no answer within {STATEMENT_TIMEOUT:?}")),
    }
}

/// Node `i`'s local row of `app` in `sys.dm_hadr_database_replica_states`
/// (hardened and redone LSNs), for messages.
pub async fn local_lsns(group: &Group, i: usize) -> Option<(u64, u64)> {
    db_states(&group.nodes[i])
        .await
        .into_iter()
        .find(|s| s.is_local && s.database == APP)
        .map(|s| (s.hardened, s.redone))
}

/// Rows of `sql` on node `i`'s database `db` (simple protocol), panicking
/// with the logs on error.
pub async fn rows_on(group: &Group, i: usize, db: &str, sql: &str) -> Vec<Vec<Option<String>>> {
    let client = group.nodes[i].client(db).await;
    query_text(&client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql} on {}: {}\n{}", name(i), error_text(&e), group.logs()))
}

/// Copies every node's whole log to `target/tmp/<test>/rN.log` when the
/// test panics (the panic message quotes only their last lines, and the
/// nodes' directories are removed). Declare it after the group, so it is
/// dropped first.
pub struct KeepLogsOnPanic {
    test: String,
    logs: Vec<std::path::PathBuf>,
}

impl KeepLogsOnPanic {
    /// Watches `group`'s nodes for test `test`.
    pub fn new(group: &Group, test: &str) -> KeepLogsOnPanic {
        KeepLogsOnPanic {
            test: test.to_string(),
            logs: group
                .nodes
                .iter()
                .map(|n| n.data_dir().with_file_name("server.log"))
                .collect(),
        }
    }
}

impl Drop for KeepLogsOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(&self.test);
        if std::fs::create_dir_all(&dir).is_err() {
            return;
        }
        for (i, log) in self.logs.iter().enumerate() {
            let _ = std::fs::copy(log, dir.join(format!("{}.log", name(i))));
        }
        eprintln!("the nodes' whole logs are in {}", dir.display());
    }
}
