//! The campaign's workload: bounded, mixed, and recording exactly what was
//! acknowledged.
//!
//! * **Inserts** (`acked`): unique ids, one autocommit INSERT each. `id` is
//!   not a key, so an insert that landed twice would show.
//! * **Transfers** (`accounts`, `transfers`): read-modify-write in one
//!   transaction. The transaction takes the write lock first (a no-op
//!   UPDATE of both accounts: SQLite has no `SELECT … FOR UPDATE`), reads
//!   both balances, and writes the new balances the client computed, with
//!   a `transfers` row saying what moved. The total never changes and each
//!   balance is its opening balance plus what `transfers` says it received
//!   minus what it sent.
//! * **Large transactions** (`big`, `big_tx`): 200 rows of 20 KB (about
//!   4 MB) in one transaction, so redo on the secondaries runs behind
//!   hardening; each also deletes the rows of the transaction two before
//!   it, so the database stays about 12 MB however long the run.
//! * **Read-your-writes**: after every few inserts the writer reads its
//!   commit's `availdb.commit_lsn` (`SHOW`), and a reader sets
//!   `availdb.read_after_lsn` to it on another node and must see the row.
//!
//! Every writer follows the primary (it reconnects with
//! `target_session_attrs=read-write` after any error) and never retries an
//! id: an id whose statement failed is in doubt (it may or may not be
//! there); an acknowledged id must be on every replica exactly once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_postgres::Client;

use super::net::{connect, connect_primary, first, query, Endpoint, Rows};
use super::rng::Rng;
use crate::common::group::APP;

/// Accounts of the bank and each one's opening balance.
pub const ACCOUNTS: u64 = 20;
pub const OPENING: i64 = 1000;
/// Rows per large transaction and bytes per row.
pub const BIG_ROWS: usize = 200;
pub const BIG_ROW_BYTES: usize = 20_000;

/// The schema, created once on the first primary.
pub fn schema() -> String {
    let accounts: Vec<String> = (1..=ACCOUNTS)
        .map(|id| format!("({id}, {OPENING})"))
        .collect();
    format!(
        "CREATE TABLE acked(seq INTEGER PRIMARY KEY, id INTEGER NOT NULL, w INTEGER NOT NULL); \
         CREATE INDEX acked_id ON acked(id); \
         CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL); \
         INSERT INTO accounts VALUES {}; \
         CREATE TABLE transfers(seq INTEGER PRIMARY KEY, id INTEGER NOT NULL, \
           src INTEGER NOT NULL, dst INTEGER NOT NULL, amount INTEGER NOT NULL); \
         CREATE TABLE big_tx(seq INTEGER PRIMARY KEY, id INTEGER NOT NULL); \
         CREATE TABLE big(tx INTEGER NOT NULL, k INTEGER NOT NULL, b BLOB); \
         CREATE INDEX big_by_tx ON big(tx); \
         CREATE TABLE orphans(seq INTEGER PRIMARY KEY, note TEXT NOT NULL)",
        accounts.join(", ")
    )
}

/// The three kinds of writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    Insert,
    Transfer,
    Big,
}

impl Op {
    pub const ALL: [Op; 3] = [Op::Insert, Op::Transfer, Op::Big];

    pub fn name(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Transfer => "transfer",
            Op::Big => "big_transaction",
        }
    }

    /// The table holding one row per acknowledged id of this kind.
    pub fn table(self) -> &'static str {
        match self {
            Op::Insert => "acked",
            Op::Transfer => "transfers",
            Op::Big => "big_tx",
        }
    }
}

/// One acknowledged commit: when it was sent and when it was answered,
/// in milliseconds since the campaign started.
#[derive(Clone, Copy, Debug)]
pub struct Ack {
    pub op: Op,
    pub sent_ms: u64,
    pub acked_ms: u64,
}

/// A read on another node that did not show the writer's own commit
/// although that node said it had redone past its LSN.
#[derive(Clone, Debug)]
pub struct StaleRead {
    pub at_ms: u64,
    pub id: i64,
    pub lsn: u64,
    pub written_on: usize,
    pub read_on: usize,
    /// The reading node's own account of itself, read right after.
    pub reader_state: String,
}

/// What the read-your-writes reader saw.
#[derive(Clone, Debug, Default)]
pub struct RywStats {
    /// Reads that returned the row.
    pub seen: u64,
    /// Reads refused or not answered (node down, paused, redo behind past
    /// the 10 s wait): allowed, counted by reason.
    pub unavailable: BTreeMap<String, u64>,
    /// Reads that answered without the row: a violation.
    pub stale: Vec<StaleRead>,
}

/// Shared clock and records of one campaign.
pub struct Recorder {
    pub start: Instant,
    pub acks: Mutex<Vec<Ack>>,
    pub ryw: Mutex<RywStats>,
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            start: Instant::now(),
            acks: Mutex::new(Vec::new()),
            ryw: Mutex::new(RywStats::default()),
        })
    }

    /// Milliseconds since the campaign started.
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

/// What one writer task did.
#[derive(Clone, Debug)]
pub struct WriterReport {
    pub op: Op,
    pub acked: Vec<i64>,
    /// Ids whose commit may or may not have happened, with why.
    pub in_doubt: Vec<(i64, String)>,
    /// Every id begun (acknowledged, in doubt, or failed before COMMIT).
    pub attempted: Vec<i64>,
    /// Errors by SQLSTATE (or client error), for the report.
    pub errors: BTreeMap<String, u64>,
    /// Why the writer stopped early: no primary within its bound.
    pub gave_up: Option<String>,
}

/// The running workload.
pub struct Workload {
    stop: Arc<AtomicBool>,
    writers: Vec<tokio::task::JoinHandle<WriterReport>>,
    reader: tokio::task::JoinHandle<()>,
}

/// How long a writer looks for a primary before it gives up (a liveness
/// violation: the campaign's faults are all healed well within this).
pub const RECONNECT_WITHIN: Duration = Duration::from_secs(120);
/// Bound on one small statement, and on a large transaction.
const SMALL_TIMEOUT: Duration = Duration::from_secs(15);
const BIG_TIMEOUT: Duration = Duration::from_secs(40);
/// Per-host bound of a connection attempt (libpq's connect_timeout).
const PER_HOST: Duration = Duration::from_secs(2);

impl Workload {
    /// Starts two inserters, two transfer clients, one large-transaction
    /// writer and the read-your-writes reader.
    pub fn start(nodes: Vec<Endpoint>, rec: Arc<Recorder>, rng: &mut Rng) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let (tokens, token_rx) = mpsc::channel(64);
        let mut writers = Vec::new();
        let plan = [
            (Op::Insert, 0),
            (Op::Insert, 1),
            (Op::Transfer, 0),
            (Op::Transfer, 1),
            (Op::Big, 0),
        ];
        for (op, k) in plan {
            writers.push(tokio::spawn(write_loop(Writer {
                op,
                first: k * 10_000_000 + 1,
                task: k,
                nodes: nodes.clone(),
                rec: rec.clone(),
                stop: stop.clone(),
                rng: rng.fork(),
                tokens: (op == Op::Insert).then(|| tokens.clone()),
            })));
        }
        let reader = tokio::spawn(ryw_loop(nodes, rec, token_rx, rng.fork(), stop.clone()));
        Workload {
            stop,
            writers,
            reader,
        }
    }

    /// True while every writer is still running.
    pub fn all_running(&self) -> bool {
        self.writers.iter().all(|w| !w.is_finished())
    }

    /// Stops every task after its current statement; their reports.
    pub async fn finish(self) -> Vec<WriterReport> {
        self.stop.store(true, Ordering::SeqCst);
        let mut reports = Vec::new();
        for w in self.writers {
            match tokio::time::timeout(BIG_TIMEOUT + RECONNECT_WITHIN, w).await {
                Ok(Ok(report)) => reports.push(report),
                Ok(Err(e)) => panic!("a writer panicked: {e}"),
                Err(_) => panic!("a writer did not stop in time"),
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), self.reader).await;
        reports
    }
}

struct Writer {
    op: Op,
    first: i64,
    task: i64,
    nodes: Vec<Endpoint>,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    rng: Rng,
    tokens: Option<mpsc::Sender<(i64, u64, usize)>>,
}

/// Why a write failed: before its COMMIT was sent (it did not happen) or
/// after (in doubt).
struct Failed {
    in_doubt: bool,
    why: String,
}

fn code_of(why: &str) -> String {
    // error_text ends with "(SQLSTATE)" for server errors.
    match why.rsplit_once('(') {
        Some((_, tail)) if tail.len() == 6 && tail.ends_with(')') => tail[..5].to_string(),
        _ if why.starts_with("no answer") => "timeout".into(),
        _ => "client".into(),
    }
}

async fn write_loop(mut w: Writer) -> WriterReport {
    let mut report = WriterReport {
        op: w.op,
        acked: Vec::new(),
        in_doubt: Vec::new(),
        attempted: Vec::new(),
        errors: BTreeMap::new(),
        gave_up: None,
    };
    let mut session: Option<(Client, usize)> = None;
    let mut prefer = 0;
    let mut id = w.first;
    while !w.stop.load(Ordering::SeqCst) {
        if session.is_none() {
            let deadline = Instant::now() + RECONNECT_WITHIN;
            loop {
                match connect_primary(&w.nodes, APP, prefer, PER_HOST).await {
                    Ok(s) => {
                        prefer = s.1;
                        session = Some(s);
                        break;
                    }
                    Err(e) => {
                        if w.stop.load(Ordering::SeqCst) {
                            return report;
                        }
                        if Instant::now() > deadline {
                            report.gave_up = Some(format!(
                                "no writable primary within {RECONNECT_WITHIN:?} at {} ms: {e}",
                                w.rec.now_ms()
                            ));
                            return report;
                        }
                        prefer = (prefer + 1) % w.nodes.len();
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        let (client, on) = session.as_ref().expect("connected");
        let on = *on;
        report.attempted.push(id);
        let sent_ms = w.rec.now_ms();
        let outcome = match w.op {
            Op::Insert => insert(client, id, w.task).await,
            Op::Transfer => transfer(client, id, &mut w.rng).await,
            Op::Big => big(client, id).await,
        };
        match outcome {
            Ok(()) => {
                let acked_ms = w.rec.now_ms();
                report.acked.push(id);
                w.rec.acks.lock().unwrap().push(Ack {
                    op: w.op,
                    sent_ms,
                    acked_ms,
                });
                if let Some(tokens) = &w.tokens {
                    if id % 4 == 0 {
                        if let Ok(rows) =
                            query(client, "SHOW availdb.commit_lsn", SMALL_TIMEOUT).await
                        {
                            if let Some(lsn) = first(&rows).and_then(|v| v.parse().ok()) {
                                let _ = tokens.try_send((id, lsn, on));
                            }
                        }
                    }
                }
                let pace = match w.op {
                    Op::Insert => Duration::from_millis(5),
                    Op::Transfer => Duration::from_millis(10),
                    Op::Big => w.rng.millis(200, 1500),
                };
                tokio::time::sleep(pace).await;
            }
            Err(failed) => {
                *report.errors.entry(code_of(&failed.why)).or_default() += 1;
                if failed.in_doubt {
                    report.in_doubt.push((id, failed.why));
                }
                session = None;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        id += 1;
    }
    report
}

async fn run(client: &Client, sql: &str, bound: Duration, in_doubt: bool) -> Result<Rows, Failed> {
    query(client, sql, bound)
        .await
        .map_err(|why| Failed { in_doubt, why })
}

async fn insert(client: &Client, id: i64, task: i64) -> Result<(), Failed> {
    let sql = format!("INSERT INTO acked(id, w) VALUES ({id}, {task})");
    run(client, &sql, SMALL_TIMEOUT, true).await.map(|_| ())
}

async fn transfer(client: &Client, id: i64, rng: &mut Rng) -> Result<(), Failed> {
    let a = 1 + rng.below(ACCOUNTS);
    let b = 1 + (a + rng.below(ACCOUNTS - 1)) % ACCOUNTS;
    let amount = 1 + rng.below(50) as i64;
    run(client, "BEGIN", SMALL_TIMEOUT, false).await?;
    run(
        client,
        &format!("UPDATE accounts SET balance = balance WHERE id IN ({a}, {b})"),
        SMALL_TIMEOUT,
        false,
    )
    .await?;
    let rows = run(
        client,
        &format!("SELECT id, balance FROM accounts WHERE id IN ({a}, {b})"),
        SMALL_TIMEOUT,
        false,
    )
    .await?;
    let balance = |acct: u64| -> Result<i64, Failed> {
        rows.iter()
            .find(|r| r[0].as_deref() == Some(&acct.to_string()))
            .and_then(|r| r[1].as_deref().and_then(|v| v.parse().ok()))
            .ok_or_else(|| Failed {
                in_doubt: false,
                why: format!("account {acct} not found in {rows:?}"),
            })
    };
    let (from, to) = (balance(a)? - amount, balance(b)? + amount);
    run(
        client,
        &format!(
            "UPDATE accounts SET balance = {from} WHERE id = {a}; \
             UPDATE accounts SET balance = {to} WHERE id = {b}; \
             INSERT INTO transfers(id, src, dst, amount) VALUES ({id}, {a}, {b}, {amount})"
        ),
        SMALL_TIMEOUT,
        false,
    )
    .await?;
    run(client, "COMMIT", SMALL_TIMEOUT, true).await.map(|_| ())
}

async fn big(client: &Client, id: i64) -> Result<(), Failed> {
    let sql = format!(
        "BEGIN; \
         INSERT INTO big_tx(id) VALUES ({id}); \
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {BIG_ROWS}) \
         INSERT INTO big(tx, k, b) SELECT {id}, i, randomblob({BIG_ROW_BYTES}) FROM n; \
         DELETE FROM big WHERE tx <= {}; \
         COMMIT",
        id - 3
    );
    run(client, &sql, BIG_TIMEOUT, true).await.map(|_| ())
}

/// Reads each token `(id, commit LSN, node written on)` on another node
/// with `availdb.read_after_lsn`: the row must be there.
async fn ryw_loop(
    nodes: Vec<Endpoint>,
    rec: Arc<Recorder>,
    mut tokens: mpsc::Receiver<(i64, u64, usize)>,
    mut rng: Rng,
    stop: Arc<AtomicBool>,
) {
    let mut sessions: Vec<Option<Client>> = (0..nodes.len()).map(|_| None).collect();
    loop {
        let token = tokio::select! {
            t = tokens.recv() => t,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if stop.load(Ordering::SeqCst) { return; }
                continue;
            }
        };
        let Some((id, lsn, written_on)) = token else {
            return;
        };
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let others: Vec<usize> = (0..nodes.len()).filter(|&i| i != written_on).collect();
        let on = rng.pick(&others);
        if sessions[on].is_none() {
            match connect(&nodes[on].conn(APP, 2, ""), PER_HOST).await {
                Ok(c) => sessions[on] = Some(c),
                Err(e) => {
                    unavailable(&rec, &format!("connect: {}", code_of(&e)));
                    continue;
                }
            }
        }
        let client = sessions[on].as_ref().expect("connected");
        let set = format!("SET availdb.read_after_lsn = '{lsn}'");
        let read = async {
            query(client, &set, SMALL_TIMEOUT).await?;
            query(
                client,
                &format!("SELECT count(*) FROM acked WHERE id = {id}"),
                SMALL_TIMEOUT,
            )
            .await
        };
        match read.await {
            Ok(rows) if first(&rows).as_deref() == Some("1") => rec.ryw.lock().unwrap().seen += 1,
            Ok(rows) => {
                let reader_state = match query(
                    client,
                    "SELECT (SELECT primary_replica || ' epoch ' || epoch FROM sys.availability_groups), \
                     (SELECT synchronization_state_desc || ' hardened ' || last_hardened_lsn || \
                      ' redone ' || last_redone_lsn FROM sys.dm_hadr_database_replica_states \
                      WHERE is_local AND database_name = 'app')",
                    SMALL_TIMEOUT,
                )
                .await
                {
                    Ok(r) => format!("{r:?}"),
                    Err(e) => e,
                };
                rec.ryw.lock().unwrap().stale.push(StaleRead {
                    at_ms: rec.now_ms(),
                    id,
                    lsn,
                    written_on,
                    read_on: on,
                    reader_state: format!("count {rows:?}; {reader_state}"),
                });
            }
            Err(e) => {
                unavailable(&rec, &code_of(&e));
                sessions[on] = None;
            }
        }
    }
}

fn unavailable(rec: &Recorder, why: &str) {
    *rec.ryw
        .lock()
        .unwrap()
        .unavailable
        .entry(why.to_string())
        .or_default() += 1;
}
