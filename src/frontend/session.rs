//! A client session: its database, settings and transaction state, and the
//! rules that route each statement to a reader or to the single writer.
//!
//! # Transaction state machine
//! ```text
//!            BEGIN                     error
//!   Idle ───────────► Active(holder) ─────────► Failed(holder)
//!    ▲                  │   ▲                      │
//!    └── COMMIT/ROLLBACK┘   └── ROLLBACK TO ───────┤
//!    └──────────────── COMMIT (= ROLLBACK) / ROLLBACK
//! ```
//! `holder` is what the open transaction runs on: nothing yet, a reader
//! snapshot (while it has only read), or the database's write lock. A read
//! transaction that starts writing moves to the writer, which sees every
//! commit so far. At READ COMMITTED (the default, as in PostgreSQL) that is
//! all: each statement may see newer data than the one before. At
//! REPEATABLE READ or SERIALIZABLE (`BEGIN ISOLATION LEVEL …`, `SET
//! TRANSACTION`, `default_transaction_isolation`) the move is allowed only
//! if no other transaction committed since its snapshot (checked under the
//! write lock), otherwise it fails with 40001, as SQLite's own
//! BUSY_SNAPSHOT and PostgreSQL's SERIALIZABLE do. Outside a transaction block each statement
//! runs alone: reads on a pooled reader, writes on the writer in autocommit.
//!
//! # Rows and memory
//! A read statement streams ([`Reply::Stream`], [`crate::engine::cursor`]):
//! outside a block on a pooled reader of its own, which returns to the pool
//! after the last row; inside one on the transaction's reader or writer,
//! which the cursor holds (`Holder::Cursor`) until the statement ends or
//! the session needs the connection again. Then the cursor is *settled*:
//! for another statement of the transaction its remaining rows are read
//! into memory for its portal (charged to the session's budget), and at
//! COMMIT or ROLLBACK the portal ends with its transaction. A write's rows
//! (`RETURNING`) go out after its commit and are held whole, charged; an
//! autocommit write runs inside a savepoint so that a refusal half way
//! rolls back (SQLite makes a RETURNING statement's changes at its first
//! step and would commit them at reset).
//!
//! # Cursors (DECLARE)
//! `DECLARE c CURSOR FOR q` runs `q` as a statement of the transaction and
//! keeps its rows' stream under the name `c`: it holds the transaction's
//! connection like a suspended portal (settled the same way when another
//! statement of the transaction runs) and ends with the transaction.
//! `WITH HOLD` streams on a pooled reader of its own instead, so it
//! outlives the transaction, and keeps that reader's snapshot until
//! `CLOSE`. `FETCH n` / `FETCH ALL` / `MOVE n` take rows from the stream;
//! cursors move forward only (backward forms are refused with 0A000), and
//! a WITH HOLD cursor declared in a transaction that wrote does not see
//! that transaction's own writes. `FETCH ALL` holds its rows whole.
//!
//! # Damaged pages
//! A statement that reads a page failing its checksum gets
//! [`Error::CorruptPage`] (XX001). Outside a transaction block it waits for
//! the page's repair from a replica ([`PAGE_REPAIR_WAIT`] at most) and runs
//! again — it changed nothing, since it failed — so the client sees no
//! error when the repair is quick; inside a block, or when the repair takes
//! longer, the client gets XX001 naming the page, which it may retry.
//!
//! # TEMP objects
//! The first `CREATE TEMP TABLE/VIEW/TRIGGER` gives the session a private
//! `pg_temp` schema ([`engine::temp`]); every reader or writer it borrows
//! from then on shows that schema and no other session's
//! (`Session::reader`, `Session::writer`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::types::Value;
use rusqlite::InterruptHandle;
use tokio::sync::Notify;

use crate::engine::cursor::{self, row_bytes, CursorHandle, CursorStop, Holds, RowSource};
use crate::engine::memory::{Charge, SessionMemory};
use crate::engine::{self, Column, Database, Engine, Error, Reader, Result, WriterGuard};
use crate::sql::command::Command;
use crate::sql::tag::command_tag;

use super::placement::{self, Placement};
use super::settings::{Settings, COMMIT_LSN, LAG_NOTICE_AFTER, READ_AFTER_LSN};

/// The longest a statement waits for `availdb.read_after_lsn` to be redone
/// (less when `statement_timeout` is shorter).
pub const READ_AFTER_LSN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a statement that hit a damaged page waits for its repair before
/// it fails with XX001 (retryable).
pub const PAGE_REPAIR_WAIT: Duration = Duration::from_secs(2);

/// What a statement produced, for the wire layer to send.
pub enum Reply {
    /// Rows and the tag that ends them.
    Rows {
        /// Result columns.
        columns: Vec<Column>,
        /// Result rows.
        rows: Vec<Vec<Value>>,
        /// Command tag.
        tag: String,
    },
    /// Rows read as the client takes them ([`cursor`]), or held whole
    /// under the session's memory budget (a write's `RETURNING` rows).
    Stream {
        /// Result columns.
        columns: Vec<Column>,
        /// The rows.
        rows: RowSource,
        /// Command tag; its last number is replaced by the rows sent.
        tag: String,
    },
    /// A statement without rows.
    Done(String),
    /// A transaction block began.
    TxStart(String),
    /// A transaction block ended.
    TxEnd(String),
}

/// Where a session is, as ReadyForQuery reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    /// Not in a transaction block.
    Idle,
    /// In a transaction block.
    InBlock,
    /// In a failed transaction block.
    Failed,
}

/// Messages to send the client besides the reply (notices, changed settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Aside {
    /// A WARNING or NOTICE.
    Notice {
        /// Severity word.
        severity: &'static str,
        /// SQLSTATE.
        code: &'static str,
        /// Text.
        message: String,
    },
    /// A ParameterStatus for a reported setting that changed.
    ParameterStatus(String, String),
}

/// Lets a cancel request (another connection) stop this session's statement.
#[derive(Default)]
pub struct CancelSlot {
    running: Mutex<Option<Arc<InterruptHandle>>>,
    /// Statements still streaming rows (portals included).
    cursors: Mutex<Vec<CursorStop>>,
    waiting: Notify,
    timed_out: AtomicBool,
}

impl CancelSlot {
    /// Interrupts the running statement, or the wait for the write lock.
    pub fn cancel(&self) {
        if let Some(handle) = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            handle.interrupt();
        }
        for cursor in self
            .cursors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            cursor.stop(Error::Canceled);
        }
        self.waiting.notify_waiters();
    }

    /// Lets cancel requests stop a streaming statement too.
    fn track(&self, cursor: CursorStop) {
        let mut cursors = self.cursors.lock().unwrap_or_else(|e| e.into_inner());
        cursors.retain(|c| !c.is_over());
        cursors.push(cursor);
    }

    fn set(&self, handle: Option<Arc<InterruptHandle>>) {
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = handle;
    }
}

enum Holder {
    Nothing,
    /// `seq`: the commit counter when the snapshot began, kept only when
    /// the transaction must fail rather than see later commits (40001).
    Reader {
        reader: Reader,
        seq: Option<u64>,
    },
    Writer(WriterGuard),
    /// A statement streams its rows on the transaction's reader or writer
    /// (a portal, perhaps suspended); taken back before anything else runs
    /// in the transaction ([`Session::settle`]).
    Cursor(CursorHandle<Holder>),
}

impl Holds for Holder {
    fn connection(&self) -> &rusqlite::Connection {
        match self {
            Holder::Reader { reader, .. } => reader.conn().sqlite(),
            Holder::Writer(w) => w.conn().sqlite(),
            Holder::Nothing | Holder::Cursor(_) => {
                unreachable!("a cursor runs on a reader or the writer only")
            }
        }
    }

    fn release(self) {
        drop_holder(self);
    }
}

/// What a read statement's rows come from once it answered.
enum StreamsOn<H: Holds> {
    /// A cursor's thread, which holds the connection until the last row
    /// (or until the session takes it back).
    Cursor(CursorHandle<H>),
    /// Nothing: the statement ran whole and its rows are held; the
    /// connection is free.
    Free(H),
}

enum Tx {
    Idle,
    Active { holder: Holder, read_only: bool },
    Failed { holder: Holder },
}

/// One client session.
pub struct Session {
    engine: Arc<Engine>,
    ag: Arc<crate::ag::Manager>,
    db: Arc<Database>,
    /// Who runs the statements: each is checked against its privileges
    /// ([`crate::auth`]) before it runs.
    principal: crate::auth::Principal,
    tx: Tx,
    /// The open transaction is REPEATABLE READ or SERIALIZABLE (see the
    /// module doc).
    strict: bool,
    /// Session settings (`SET`/`SHOW`).
    pub settings: Settings,
    cancel: Arc<CancelSlot>,
    asides: Vec<Aside>,
    /// The database took writes here (read-write, not RESOLVING) when the
    /// session began: if it becomes a secondary (this replica was demoted),
    /// the session ends.
    began_read_write: bool,
    /// Why the current transaction was ended from outside (a promotion of
    /// this replica ended its read snapshot), until it is rolled back.
    ended: Option<String>,
    /// This session's share of the node's memory budget.
    memory: Arc<SessionMemory>,
    /// Where the session's TEMP objects live, once it created one
    /// ([`engine::temp`]); every connection it borrows shows it.
    temp: Option<Arc<engine::TempSpace>>,
    /// What its `nextval` calls returned (`currval`, `lastval`).
    sequences: Arc<Mutex<engine::SessionSequences>>,
    /// Cursors opened with DECLARE, by name.
    cursors: std::collections::HashMap<String, NamedCursor>,
    /// Whether a statement text only reads, as SQLite said when it was
    /// prepared: a property of the text, so a session that runs the same
    /// statements again (prepared statements, every ORM) asks once instead
    /// of taking a hop to a blocking thread before each one. Cleared when
    /// full.
    readonly: std::collections::HashMap<String, bool>,
    /// How long statements ran, which decides where they run next
    /// ([`placement`]).
    placement: Placement,
    /// Notices sent while a statement still runs (BACKUP's `STATS`): the
    /// connection drains the receiver as it waits for the reply.
    live: tokio::sync::mpsc::UnboundedSender<String>,
    live_rx: Option<tokio::sync::mpsc::UnboundedReceiver<String>>,
}

/// Statement texts a session remembers as reading or writing.
const READONLY_MEMO: usize = 256;

/// The placement memo's key for a transaction's move onto the writer.
const BEGIN_IMMEDIATE: &str = "BEGIN IMMEDIATE";

/// A cursor opened with `DECLARE` (see the module page).
struct NamedCursor {
    columns: Vec<Column>,
    /// Rows read from `rows` and not yet fetched.
    pending: std::collections::VecDeque<Vec<Value>>,
    /// The statement still streaming, until its last row.
    rows: Option<RowSource>,
    /// WITH HOLD: outlives its transaction.
    hold: bool,
}

impl Session {
    /// A session on `db`.
    pub fn new(
        engine: Arc<Engine>,
        ag: Arc<crate::ag::Manager>,
        db: Arc<Database>,
        settings: Settings,
        principal: crate::auth::Principal,
    ) -> Session {
        // A primary without its lease (RESOLVING, e.g. just restarted or
        // already deposed) never served this session as the writer.
        let began_read_write = db.role() == engine::Role::ReadWrite && !db.is_resolving();
        let (live, live_rx) = tokio::sync::mpsc::unbounded_channel();
        Session {
            ag,
            db,
            principal,
            tx: Tx::Idle,
            strict: false,
            settings,
            cancel: Arc::new(CancelSlot::default()),
            asides: Vec::new(),
            began_read_write,
            ended: None,
            memory: engine.memory().session(),
            temp: None,
            sequences: Arc::default(),
            cursors: Default::default(),
            readonly: Default::default(),
            placement: Placement::default(),
            live,
            live_rx: Some(live_rx),
            engine,
        }
    }

    /// The receiver of notices sent while a statement runs, for the
    /// connection to drain during `execute`; given back with
    /// [`Session::give_back_live`].
    pub fn take_live(&mut self) -> Option<tokio::sync::mpsc::UnboundedReceiver<String>> {
        self.live_rx.take()
    }

    /// Gives back what [`Session::take_live`] took.
    pub fn give_back_live(&mut self, rx: tokio::sync::mpsc::UnboundedReceiver<String>) {
        self.live_rx = Some(rx);
    }

    /// Why the session must end: its database was read-write here when it
    /// began and this replica has since become a secondary (a failover
    /// demoted it). Sent as FATAL, as SQL Server drops such connections.
    pub fn demoted(&self) -> Option<Error> {
        let engine::Role::Secondary { group, primary } = self.db.role() else {
            return None;
        };
        self.began_read_write.then(|| {
            Error::sql(
                "57P01",
                format!(
                    "terminating connection: replica \"{}\" is no longer the primary of availability group \"{group}\" (\"{primary}\" is)",
                    self.ag.node()
                ),
            )
            .with_hint("reconnect through the group's listener, or with target_session_attrs=read-write, to reach the new primary")
        })
    }

    /// Why the session must end because its database is being replaced
    /// here by a copy the primary seeded (`Database::retire`): the session
    /// would hold the old copy, which the new one can only replace once
    /// nothing holds it. Sent as FATAL.
    pub fn retired(&self) -> Option<Error> {
        self.db
            .is_retiring()
            .then(|| retired_error(self.db.name(), self.ag.node()))
    }

    /// Ends a transaction that holds a read snapshot of the database (the
    /// replica is becoming its primary, which needs the snapshot gone):
    /// the transaction fails, as PostgreSQL fails a standby's query that
    /// conflicts with recovery, and its statements get 25P02 with `why`
    /// until the client rolls back. True when there was one.
    pub fn end_read_transaction(&mut self, why: &str) -> bool {
        // A cursor (a portal streaming rows) on a secondary reads too: it
        // stops when its handle is dropped.
        let holds_reader = matches!(
            &self.tx,
            Tx::Active {
                holder: Holder::Reader { .. } | Holder::Cursor(_),
                ..
            } | Tx::Failed {
                holder: Holder::Reader { .. } | Holder::Cursor(_)
            }
        );
        if holds_reader {
            let old = std::mem::replace(
                &mut self.tx,
                Tx::Failed {
                    holder: Holder::Nothing,
                },
            );
            if let Tx::Active {
                holder: Holder::Cursor(cursor),
                ..
            }
            | Tx::Failed {
                holder: Holder::Cursor(cursor),
            } = old
            {
                cursor.abandon();
            }
            self.ended = Some(why.to_string());
        }
        holds_reader
    }

    /// The handle a cancel request uses.
    pub fn cancel_slot(&self) -> Arc<CancelSlot> {
        self.cancel.clone()
    }

    /// The session's database.
    pub fn database(&self) -> &Arc<Database> {
        &self.db
    }

    /// True inside a transaction block (including a failed one).
    pub fn in_transaction(&self) -> bool {
        !matches!(self.tx, Tx::Idle)
    }

    /// The transaction status.
    pub fn status(&self) -> TxStatus {
        match self.tx {
            Tx::Idle => TxStatus::Idle,
            Tx::Active { .. } => TxStatus::InBlock,
            Tx::Failed { .. } => TxStatus::Failed,
        }
    }

    /// Records an error found before the statement ran (e.g. a parameter
    /// that does not decode), or while its rows were sent: it fails an
    /// open transaction block too.
    pub fn note_error(&mut self, err: &Error) {
        self.fail_transaction(err);
    }

    /// A result's rows failed while they were sent (cancel, timeout,
    /// budget, a value that does not convert): an open transaction block
    /// fails, as after any failed statement.
    pub fn note_stream_error(&mut self) {
        self.fail_transaction(&Error::sql("XX000", "the statement's rows failed"));
    }

    /// The session's memory budget (COPY data is charged to it).
    pub fn memory(&self) -> &Arc<SessionMemory> {
        &self.memory
    }

    /// Takes the transaction's connection back from a statement still
    /// streaming on it: `drain` keeps the rest of its rows for its portal
    /// (charged to the budget), otherwise the portal ends with its
    /// transaction.
    async fn settle(holder: Holder, drain: bool) -> Holder {
        match holder {
            Holder::Cursor(handle) => handle.reclaim(drain).await,
            other => other,
        }
    }

    /// The transaction's holder, taken back from a streaming statement.
    async fn settle_tx(&mut self, drain: bool) {
        self.tx = match std::mem::replace(&mut self.tx, Tx::Idle) {
            Tx::Active { holder, read_only } => Tx::Active {
                holder: Session::settle(holder, drain).await,
                read_only,
            },
            Tx::Failed { holder } => Tx::Failed {
                holder: Session::settle(holder, drain).await,
            },
            Tx::Idle => Tx::Idle,
        };
    }

    /// Notices and parameter changes produced since the last call, taken
    /// out of the session's list (which keeps its capacity: a commit adds
    /// one every time).
    pub fn take_asides(&mut self) -> std::vec::Drain<'_, Aside> {
        self.asides.drain(..)
    }

    /// Runs one classified statement. On error the session is left in the
    /// state PostgreSQL would be in (a failed transaction block stays failed
    /// until ROLLBACK).
    pub async fn execute(&mut self, cmd: Command, params: Vec<Value>) -> Result<Reply> {
        crate::telemetry::get().statements.inc();
        // A statement outside a transaction block that hit a damaged page
        // runs again once the page is repaired (it changed nothing).
        let again = matches!(self.tx, Tx::Idle).then(|| (cmd.clone(), params.clone()));
        let mut result = self.dispatch(cmd, params).await;
        if let (Err(Error::CorruptPage { .. }), Some((cmd, params))) = (&result, again) {
            if self.db.wait_for_page_repair(PAGE_REPAIR_WAIT).await {
                result = self.dispatch(cmd, params).await;
            }
        }
        let result = result.map_err(|e| self.db.name_damage(e));
        if let Err(e) = &result {
            self.db.suspect_damage(e);
        }
        let timed_out = self.cancel.timed_out.swap(false, Ordering::SeqCst);
        match result {
            Err(err) => {
                self.fail_transaction(&err);
                if timed_out && err.sqlstate() == "57014" {
                    Err(Error::sql(
                        "57014",
                        "canceling statement due to statement timeout",
                    ))
                } else {
                    Err(err)
                }
            }
            ok => ok,
        }
    }

    /// Describes a statement on the connection its transaction would use.
    pub async fn describe(&mut self, sql: String) -> Result<engine::Described> {
        if crate::ag::views::mentions_sys(&sql) {
            let snapshot = self.ag.snapshot();
            return blocking(move || snapshot.describe(&sql)).await;
        }
        let sql = self.place_temp(sql).await?;
        self.settle_tx(true).await;
        if let Tx::Active {
            holder: Holder::Writer(_),
            ..
        } = self.tx
        {
            let Tx::Active {
                holder: Holder::Writer(w),
                read_only,
            } = std::mem::replace(&mut self.tx, Tx::Idle)
            else {
                unreachable!("matched above")
            };
            let (w, res) = blocking(move || {
                let res = engine::describe(w.conn().sqlite(), &sql);
                (w, res)
            })
            .await;
            self.tx = Tx::Active {
                holder: Holder::Writer(w),
                read_only,
            };
            return res;
        }
        let reader = self.reader()?;
        blocking(move || engine::describe(reader.conn().sqlite(), &sql)).await
    }

    async fn dispatch(&mut self, cmd: Command, params: Vec<Value>) -> Result<Reply> {
        if matches!(self.tx, Tx::Failed { .. })
            && !matches!(
                cmd,
                Command::Commit
                    | Command::Rollback
                    | Command::Savepoint {
                        rollback_to: true,
                        ..
                    }
            )
        {
            return Err(match &self.ended {
                Some(why) => Error::sql(
                    "25P02",
                    format!("current transaction was ended: {why}; commands ignored until end of transaction block"),
                )
                .with_hint("ROLLBACK, then run the transaction again"),
                None => Error::sql(
                    "25P02",
                    "current transaction is aborted, commands ignored until end of transaction block",
                ),
            });
        }
        self.authorize(&cmd).await?;
        match cmd {
            Command::Begin { read_only, strict } => Ok(self.begin(read_only, strict)),
            Command::Commit => self.commit().await,
            Command::Rollback => Ok(self.rollback("ROLLBACK")),
            Command::Savepoint { sql, rollback_to } => self.savepoint(sql, rollback_to).await,
            Command::SetTransaction {
                read_only,
                strict,
                session,
            } => Ok(self.set_transaction(read_only, strict, session)),
            Command::Set { name, value } => {
                let changed = self.settings.set(&name, value.as_deref())?;
                self.asides
                    .extend(changed.map(|(n, v)| Aside::ParameterStatus(n, v)));
                Ok(Reply::Done("SET".into()))
            }
            Command::Reset { name } => {
                let changed = self.settings.reset(name.as_deref());
                self.asides.extend(
                    changed
                        .into_iter()
                        .map(|(n, v)| Aside::ParameterStatus(n, v)),
                );
                Ok(Reply::Done("RESET".into()))
            }
            Command::Show { name } => self.show(&name),
            Command::CreateDatabase { name } => {
                self.outside_transaction("CREATE DATABASE")?;
                let engine = self.engine.clone();
                blocking(move || engine.create_database(&name)).await?;
                Ok(Reply::Done("CREATE DATABASE".into()))
            }
            Command::DropDatabase { name, if_exists } => self.drop_database(name, if_exists).await,
            Command::SessionUser => Ok(single_text("current_user", self.principal.name())),
            Command::CurrentSchema => Ok(single_text("current_schema", "public")),
            Command::WaitForCopySync { database, server } => {
                let lsn = self.ag.wait_for_copy_sync(&database, &server).await?;
                Ok(single_text("wait_for_database_copy_sync", &lsn.to_string()))
            }
            Command::BackupPreferred { database } => {
                let preferred = self
                    .ag
                    .is_preferred_backup_replica(&database)
                    .unwrap_or(true);
                Ok(Reply::Rows {
                    columns: vec![super::backup::preferred_column()],
                    rows: vec![vec![Value::Integer(preferred as i64)]],
                    tag: "SELECT 1".into(),
                })
            }
            Command::NoOp { tag } => Ok(Reply::Done(tag)),
            Command::Ag(sql) => {
                self.outside_transaction("availability group DDL")?;
                let statement = crate::sql::ag::parse(&sql).map_err(|e| {
                    let err = Error::sql("42601", e.message.clone());
                    match e.hint {
                        Some(h) => err.with_hint(h),
                        None => err,
                    }
                })?;
                let executed = self.ag.execute(statement).await?;
                for message in executed.notices {
                    self.asides.push(Aside::Notice {
                        severity: "NOTICE",
                        code: "00000",
                        message,
                    });
                }
                Ok(Reply::Done(executed.tag))
            }
            Command::Role(sql) => {
                self.outside_transaction("role and privilege statements")?;
                let done = super::roles::execute(&self.ag, &sql).await?;
                self.asides.extend(done.notice.map(|message| Aside::Notice {
                    severity: "NOTICE",
                    code: "00000",
                    message,
                }));
                Ok(Reply::Done(done.tag))
            }
            Command::Backup(sql) => {
                self.outside_transaction("BACKUP and RESTORE")?;
                let statement = crate::sql::backup::parse(&sql)
                    .map_err(|message| Error::sql("42601", message))?;
                let done =
                    super::backup::execute(&self.engine, &self.ag, statement, &self.live).await?;
                for message in done.notices {
                    self.asides.push(Aside::Notice {
                        severity: "NOTICE",
                        code: "00000",
                        message,
                    });
                }
                Ok(done.reply)
            }
            Command::Unsupported { message, hint } => {
                Err(Error::sql("0A000", message).with_hint(hint))
            }
            Command::AlterDefinition { table, edits } => {
                self.run_unit(move |w| {
                    // The rows already there must satisfy the new definition.
                    let check = |before: bool| -> Result<()> {
                        for edit in edits.iter().filter(|e| e.checked_before() == before) {
                            if let Some((sql, state, message)) = edit.check(&table) {
                                let bad: i64 =
                                    w.conn().sqlite().query_row(&sql, [], |r| r.get(0))?;
                                if bad > 0 {
                                    return Err(Error::sql(state, message));
                                }
                            }
                        }
                        Ok(())
                    };
                    check(true)?;
                    let changed = w.conn().edit_table_definition(&table, |sql| {
                        crate::sql::pg::definition::apply(sql, &edits)
                    })?;
                    // ALTER COLUMN … TYPE [USING]: the values take the new type.
                    let rewrites = crate::sql::pg::definition::rewrites(&edits, &changed)
                        .map_err(|(message, hint)| Error::sql("42804", message).with_hint(hint))?;
                    w.conn().rewrite_columns(&table, &rewrites)?;
                    check(false)?;
                    Ok(0)
                })
                .await?;
                Ok(Reply::Done("ALTER TABLE".into()))
            }
            Command::Batch { statements, tag } => {
                let steps = statements
                    .into_iter()
                    .map(|s| (s, vec![Vec::new()]))
                    .collect();
                self.run_many(steps).await?;
                Ok(Reply::Done(tag))
            }
            Command::Declare { name, query, hold } => self.declare(name, query, hold, params).await,
            Command::Fetch {
                name,
                count,
                move_only,
            } => self.fetch(&name, count, move_only).await,
            Command::CloseCursor { name: None } => {
                self.cursors.clear();
                Ok(Reply::Done("CLOSE CURSOR".into()))
            }
            Command::CloseCursor { name: Some(name) } => match self.cursors.remove(&name) {
                Some(_) => Ok(Reply::Done("CLOSE CURSOR".into())),
                None => Err(no_cursor(&name)),
            },
            Command::Copy(_) => Err(Error::sql(
                "0A000",
                "COPY must be sent as the only statement of a Query message",
            )
            .with_hint("send COPY on its own (psql's \\copy and drivers' copy APIs do)")),
            Command::Sql(sql) if crate::ag::views::mentions_sys(&sql) => {
                let snapshot = self.ag.snapshot();
                let outcome =
                    blocking(move || snapshot.query(&sql, &params).map(|o| (sql, o))).await;
                let (sql, outcome) = outcome?;
                Ok(reply(&sql, outcome))
            }
            Command::Sql(sql) => {
                self.wait_for_redo().await?;
                self.lag_notice();
                let sql = self.place_temp(sql).await?;
                self.sql(sql, params).await
            }
        }
    }

    /// Refuses (42501) a statement the session's role has no privilege for
    /// ([`crate::auth`]; [`Command::access`] says which it needs). The
    /// administrator may do everything.
    pub async fn authorize(&mut self, cmd: &Command) -> Result<()> {
        use crate::auth::{Need, Privilege};
        use crate::sql::command::Access;
        let crate::auth::Principal::Role(name) = &self.principal else {
            return Ok(());
        };
        let name = name.clone();
        let role = self.ag.role(&name);
        let database = self.db.name().to_string();
        let need = match (cmd.access(), cmd) {
            // A role may change its own password, as in PostgreSQL.
            (_, Command::Role(sql)) if changes_own_password(sql, &name) => Need::Nothing,
            (Access::Fixed(need), _) => need,
            (Access::ReadOrWrite, Command::Sql(sql)) if crate::ag::views::mentions_sys(sql) => {
                Need::Read
            }
            (Access::ReadOrWrite, Command::Sql(sql)) => {
                let writer = role
                    .as_ref()
                    .is_some_and(|r| crate::auth::has(r, &Privilege::Write(database.clone())));
                if writer {
                    Need::Write
                } else {
                    // The same test that sends a statement to a reader or
                    // to the writer: SQLite's, on the prepared statement.
                    let reader = self.reader()?;
                    let (_, read_only) = self.is_readonly(reader, sql).await;
                    if read_only? {
                        Need::Read
                    } else {
                        Need::Write
                    }
                }
            }
            (Access::ReadOrWrite, _) => Need::Write,
        };
        crate::auth::check(&name, role.as_ref(), need, &database, &what_is(cmd))
            .map_err(super::roles::denied)
    }

    /// `DECLARE`: a cursor WITHOUT HOLD streams on its transaction's
    /// connection, like a portal of the transaction (drained into memory
    /// when another statement of the transaction needs the connection);
    /// one WITH HOLD streams on a pooled reader of its own, its snapshot
    /// kept until CLOSE or the session's end.
    async fn declare(
        &mut self,
        name: String,
        query: String,
        hold: bool,
        params: Vec<Value>,
    ) -> Result<Reply> {
        if self.cursors.contains_key(&name) {
            return Err(
                Error::sql("42P03", format!("cursor \"{name}\" already exists"))
                    .with_hint("CLOSE it first, or choose another name"),
            );
        }
        if !hold && !self.in_transaction() {
            return Err(Error::sql(
                "25P01",
                "DECLARE CURSOR can only be used in transaction blocks",
            )
            .with_hint("BEGIN first, or DECLARE … CURSOR WITH HOLD"));
        }
        self.wait_for_redo().await?;
        self.lag_notice();
        let reply = if hold {
            let reader = self.reader()?;
            match self.stream(reader, query, params).await {
                // The reader goes back to the pool after the last row.
                Ok((_streams_on, reply)) => reply,
                Err((_, e)) => return Err(e),
            }
        } else {
            self.sql(query, params).await?
        };
        let cursor = match reply {
            Reply::Stream { columns, rows, .. } => NamedCursor {
                columns,
                pending: Default::default(),
                rows: Some(rows),
                hold,
            },
            Reply::Rows { columns, rows, .. } => NamedCursor {
                columns,
                pending: rows.into(),
                rows: None,
                hold,
            },
            _ => return Err(Error::sql("42P11", "a cursor's statement must return rows")),
        };
        self.cursors.insert(name, cursor);
        Ok(Reply::Done("DECLARE CURSOR".into()))
    }

    /// `FETCH` / `MOVE`: the next `count` rows (None: all the rest).
    ///
    /// Memory stays bounded as for any query: `FETCH ALL` hands the rest of
    /// the cursor's statement over to stream, read as the client takes it;
    /// the rows of `FETCH n` are charged to the session's budget while they
    /// wait to be sent (past it, 53200); `MOVE` keeps no row.
    async fn fetch(&mut self, name: &str, count: Option<u64>, move_only: bool) -> Result<Reply> {
        const WHAT: &str = "rows of FETCH";
        let memory = self.memory.clone();
        let cursor = self.cursors.get_mut(name).ok_or_else(|| no_cursor(name))?;
        if count.is_none() && !move_only {
            if let Some(mut rest) = cursor.rows.take() {
                if !cursor.pending.is_empty() {
                    let ahead: Vec<Vec<Value>> = cursor.pending.drain(..).collect();
                    let bytes = ahead.iter().map(|r| row_bytes(r) as u64).sum();
                    rest.push_front(ahead, memory.charge(bytes, WHAT)?);
                }
                return Ok(Reply::Stream {
                    columns: cursor.columns.clone(),
                    rows: rest,
                    tag: "FETCH 0".into(),
                });
            }
        }
        let want = count.unwrap_or(u64::MAX);
        let mut rows = Vec::new();
        let mut charge = memory.charge(0, WHAT)?;
        let mut moved = 0u64;
        while moved < want {
            if let Some(row) = cursor.pending.pop_front() {
                moved += 1;
                if !move_only {
                    charge.grow(row_bytes(&row) as u64, WHAT)?;
                    rows.push(row);
                }
                continue;
            }
            let Some(source) = cursor.rows.as_mut() else {
                break;
            };
            match source.next_batch().await {
                Some(Ok(batch)) => cursor.pending.extend(batch),
                Some(Err(e)) => {
                    cursor.rows = None;
                    return Err(e);
                }
                None => cursor.rows = None,
            }
        }
        if move_only {
            return Ok(Reply::Done(format!("MOVE {moved}")));
        }
        Ok(Reply::Stream {
            columns: cursor.columns.clone(),
            tag: format!("FETCH {}", rows.len()),
            rows: RowSource::buffered(rows, charge),
        })
    }

    /// The columns `FETCH` from cursor `name` returns (Describe).
    pub fn cursor_columns(&self, name: &str) -> Result<Vec<Column>> {
        self.cursors
            .get(name)
            .map(|c| c.columns.clone())
            .ok_or_else(|| no_cursor(name))
    }

    /// Cursors WITHOUT HOLD end with their transaction.
    fn end_transaction_cursors(&mut self) {
        self.cursors.retain(|_, c| c.hold);
    }

    /// Reports a commit's end LSN (ParameterStatus `availdb.commit_lsn`):
    /// a secondary that has redone up to it shows the commit.
    fn committed(&mut self, end: crate::log::Lsn, started: Instant) {
        let telemetry = crate::telemetry::get();
        telemetry.commits.inc();
        telemetry.commit_duration.observe(started.elapsed());
        // Formatted once: copied into the value the setting holds, moved
        // into the report.
        let end = end.to_string();
        self.settings
            .record_with(COMMIT_LSN, |held| held.push_str(&end));
        self.asides
            .push(Aside::ParameterStatus(COMMIT_LSN.into(), end));
    }

    /// Read-your-writes: on a secondary, waits until `availdb.read_after_lsn`
    /// is redone here, at most [`READ_AFTER_LSN_TIMEOUT`] (or
    /// `statement_timeout`). A primary, or a database outside any group,
    /// shows every commit already.
    async fn wait_for_redo(&mut self) -> Result<()> {
        let Some(target) = self.settings.read_after_lsn else {
            return Ok(());
        };
        let limit = self
            .settings
            .statement_timeout
            .map_or(READ_AFTER_LSN_TIMEOUT, |t| t.min(READ_AFTER_LSN_TIMEOUT));
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let Some(mut redone) = self.ag.redone_watch(self.db.name()) else {
                // A primary, or outside any group, shows every commit. A
                // replica that is neither (RESOLVING, or a secondary whose
                // intake has not started) cannot tell whether its copy holds
                // the primary's LSN or a diverged one: wait for its intake.
                use crate::engine::fence::Fence;
                let fence = self.db.fence();
                let waits = match &fence {
                    Fence::Secondary { .. } => true,
                    Fence::GeoSecondary { .. } => false,
                    _ => fence.check(crate::engine::monotonic_us()).is_err(),
                };
                if !waits {
                    return Ok(());
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::sql(
                        "55000",
                        format!(
                            "database \"{}\" on replica \"{}\" is not linked to a primary: it cannot tell whether it holds LSN {target} (waited {} ms)",
                            self.db.name(),
                            self.ag.node(),
                            limit.as_millis()
                        ),
                    )
                    .with_hint("retry, read on the primary, or RESET availdb.read_after_lsn"));
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(20)) => continue,
                    _ = self.cancel.waiting.notified() => return Err(Error::Canceled),
                }
            };
            let reached = tokio::select! {
                r = tokio::time::timeout_at(deadline, redone.wait_for(|lsn| *lsn >= target)) => r.map(|r| r.map(|_| ())),
                _ = self.cancel.waiting.notified() => return Err(Error::Canceled),
            };
            match reached {
                Ok(Ok(_)) => return Ok(()),
                // Redo restarted (a new definition): follow the new one.
                Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(_) => {
                    let at = *redone.borrow();
                    return Err(Error::sql(
                        "55000",
                        format!(
                            "database \"{}\" on replica \"{}\" has redone up to LSN {at}, not yet LSN {target} (waited {} ms)",
                            self.db.name(),
                            self.ag.node(),
                            limit.as_millis()
                        ),
                    )
                    .with_hint("retry, read on the primary, or RESET availdb.read_after_lsn; sys.dm_hadr_database_replica_states shows the redo queue"));
                }
            }
        }
    }

    /// A read on a secondary that trails its primary by more than
    /// `availdb.lag_notice_after`, or that no primary ships log to, is told
    /// so with a NOTICE — unless read-your-writes was asked
    /// (`availdb.read_after_lsn`: the read waited for what it needs). The
    /// lag is what the secondary knows ([`crate::ag::Staleness`]), the one
    /// `/replica?lag=` checks.
    fn lag_notice(&mut self) {
        if self.settings.read_after_lsn.is_some() || !self.db.is_secondary() {
            return;
        }
        let Some(after) = self.settings.lag_notice_after() else {
            return;
        };
        let Some(s) = self.ag.staleness(self.db.name()) else {
            return;
        };
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        if let Some(message) = lag_notice_text(&s, after, now_us, self.db.name(), self.ag.node()) {
            self.asides.push(Aside::Notice {
                severity: "NOTICE",
                code: "00000",
                message,
            });
        }
    }

    async fn savepoint(&mut self, sql: String, rollback_to: bool) -> Result<Reply> {
        let tag = command_tag(&sql, 0, 0);
        match std::mem::replace(&mut self.tx, Tx::Idle) {
            Tx::Idle => Err(Error::sql(
                "25P01",
                format!("{tag} can only be used in transaction blocks"),
            )),
            Tx::Failed { holder } if rollback_to => {
                let Holder::Writer(w) = Session::settle(holder, false).await else {
                    return Err(Error::sql("3B001", "savepoint does not exist"));
                };
                let (w, res) = on_writer(
                    &self.cancel,
                    self.settings.statement_timeout,
                    false,
                    w,
                    move |w, _| engine::run(w.conn().sqlite(), &sql, &[], false),
                )
                .await;
                match res {
                    Ok(_) => {
                        self.tx = Tx::Active {
                            holder: Holder::Writer(w),
                            read_only: false,
                        };
                        Ok(Reply::Done(tag))
                    }
                    Err(e) => {
                        self.tx = Tx::Failed {
                            holder: Holder::Writer(w),
                        };
                        Err(e)
                    }
                }
            }
            Tx::Failed { holder } => {
                self.tx = Tx::Failed { holder };
                Err(Error::sql(
                    "25P02",
                    "current transaction is aborted, commands ignored until end of transaction block",
                ))
            }
            Tx::Active { holder, read_only } => {
                // Savepoints live on the connection that will do the writes.
                let w = self.writer_for_transaction(holder).await?;
                let (w, res) = on_writer(
                    &self.cancel,
                    self.settings.statement_timeout,
                    false,
                    w,
                    move |w, _| engine::run(w.conn().sqlite(), &sql, &[], false),
                )
                .await;
                self.tx = Tx::Active {
                    holder: Holder::Writer(w),
                    read_only,
                };
                res.map(|_| Reply::Done(tag))
            }
        }
    }

    fn begin(&mut self, read_only: Option<bool>, strict: Option<bool>) -> Reply {
        if self.in_transaction() {
            self.warn("25001", "there is already a transaction in progress");
        } else {
            self.strict = strict.unwrap_or_else(|| {
                crate::sql::command::is_strict_isolation(
                    &self
                        .settings
                        .show("default_transaction_isolation")
                        .unwrap_or_default(),
                )
            });
            self.tx = Tx::Active {
                holder: Holder::Nothing,
                read_only: read_only.unwrap_or(self.settings.default_read_only),
            };
        }
        Reply::TxStart("BEGIN".into())
    }

    async fn commit(&mut self) -> Result<Reply> {
        self.ended = None;
        self.end_transaction_cursors();
        // Portals end with their transaction.
        self.settle_tx(false).await;
        match std::mem::replace(&mut self.tx, Tx::Idle) {
            Tx::Idle => {
                self.warn("25P01", "there is no transaction in progress");
                Ok(Reply::TxEnd("COMMIT".into()))
            }
            Tx::Failed { holder } => {
                release(holder).await;
                Ok(Reply::TxEnd("ROLLBACK".into()))
            }
            Tx::Active {
                holder: Holder::Writer(w),
                ..
            } => {
                // The commit is the write: it needs a valid lease now.
                if let Err(e) = self.db.check_writable() {
                    w.conn().reset();
                    return Err(e);
                }
                // The write lock is released before the waits, so later
                // commits share this one's fsync and replication round trip.
                let started = Instant::now();
                let inline = self.placement.commit_inline();
                let committed = commit_on_writer(
                    &self.cancel,
                    self.settings.statement_timeout,
                    &self.db,
                    inline,
                    w,
                    |w, at| match engine::until(w.conn().sqlite(), at, || {
                        engine::run_control(w.conn().sqlite(), "COMMIT")
                    }) {
                        Ok(()) => Ok(((), w.after_commit()?)),
                        Err(e) => {
                            // Never capture after a failed COMMIT: its frames
                            // may be in the WAL without being committed.
                            w.conn().reset();
                            Err(Error::from(e))
                        }
                    },
                )
                .await;
                self.placement.ran(placement::COMMIT, committed.1);
                self.placement.transaction_ended();
                let ((), end) = committed.0?;
                self.db.commit_durable(end).await?;
                self.committed(end, started);
                Ok(Reply::TxEnd("COMMIT".into()))
            }
            Tx::Active { holder, .. } => {
                release(holder).await;
                Ok(Reply::TxEnd("COMMIT".into()))
            }
        }
    }

    fn rollback(&mut self, tag: &str) -> Reply {
        self.ended = None;
        self.placement.transaction_ended();
        self.end_transaction_cursors();
        match std::mem::replace(&mut self.tx, Tx::Idle) {
            Tx::Idle => self.warn("25P01", "there is no transaction in progress"),
            Tx::Active { holder, .. } | Tx::Failed { holder } => drop_holder(holder),
        }
        Reply::TxEnd(tag.into())
    }

    fn set_transaction(
        &mut self,
        read_only: Option<bool>,
        strict: Option<bool>,
        session: bool,
    ) -> Reply {
        if session {
            if let Some(ro) = read_only {
                self.settings.default_read_only = ro;
            }
            if let Some(strict) = strict {
                let level = if strict {
                    "serializable"
                } else {
                    "read committed"
                };
                self.settings
                    .record("default_transaction_isolation", level.into());
            }
            return Reply::Done("SET".into());
        }
        match &mut self.tx {
            Tx::Active {
                holder: Holder::Nothing,
                read_only: current,
            } => {
                if let Some(ro) = read_only {
                    *current = ro;
                }
                if let Some(strict) = strict {
                    self.strict = strict;
                }
            }
            Tx::Active { .. } | Tx::Failed { .. } => {
                self.warn("25001", "SET TRANSACTION must be called before any query")
            }
            Tx::Idle => self.warn(
                "25P01",
                "SET TRANSACTION can only be used in transaction blocks",
            ),
        }
        Reply::Done("SET".into())
    }

    fn show(&self, name: &str) -> Result<Reply> {
        if name == "all" {
            let rows = self
                .settings
                .all(self.transaction_read_only())
                .into_iter()
                .map(|(n, v)| vec![Value::Text(n), Value::Text(v)])
                .collect::<Vec<_>>();
            let tag = format!("SELECT {}", rows.len());
            let text = |n: &str| Column {
                name: n.into(),
                ty: crate::sql::types::ValueType::Text,
            };
            return Ok(Reply::Rows {
                columns: vec![text("name"), text("setting")],
                rows,
                tag,
            });
        }
        let value = if name == "transaction_read_only" {
            on_off(self.transaction_read_only())
        } else if name == "in_hot_standby"
            || (name == "default_transaction_read_only" && self.hot_standby())
        {
            on_off(self.hot_standby())
        } else {
            self.settings.show(name).ok_or_else(|| {
                Error::sql(
                    "42704",
                    format!("unrecognized configuration parameter \"{name}\""),
                )
            })?
        };
        Ok(single_text(name, &value))
    }

    /// What `SHOW transaction_read_only` says: on a secondary, on a
    /// READ_ONLY database, in a read-only transaction, or by default.
    fn transaction_read_only(&self) -> bool {
        self.hot_standby()
            || self.db.is_read_only()
            || match self.tx {
                Tx::Active { read_only, .. } => read_only,
                _ => self.settings.default_read_only,
            }
    }

    /// True when the session's database is a secondary (read-only) here.
    pub fn hot_standby(&self) -> bool {
        matches!(self.db.role(), engine::Role::Secondary { .. })
    }

    async fn drop_database(&mut self, name: String, if_exists: bool) -> Result<Reply> {
        self.outside_transaction("DROP DATABASE")?;
        if name == self.db.name() {
            return Err(
                Error::sql("55006", "cannot drop the currently open database").with_hint(
                    "connect to another database (e.g. dbname=availdb) to drop this one",
                ),
            );
        }
        let engine = self.engine.clone();
        let target = name.clone();
        match blocking(move || engine.drop_database(&target)).await {
            Err(Error::NoSuchDatabase(_)) if if_exists => {
                self.asides.push(Aside::Notice {
                    severity: "NOTICE",
                    code: "00000",
                    message: format!("database \"{name}\" does not exist, skipping"),
                });
                Ok(Reply::Done("DROP DATABASE".into()))
            }
            Err(e) => Err(e),
            Ok(()) => Ok(Reply::Done("DROP DATABASE".into())),
        }
    }

    /// Whether `sql` only reads, remembered (see `Session::readonly`) or
    /// asked of SQLite on `holder`'s connection.
    async fn is_readonly<H: Holds>(&mut self, holder: H, sql: &str) -> (H, Result<bool>) {
        if let Some(ro) = self.readonly.get(sql) {
            return (holder, Ok(*ro));
        }
        let s = sql.to_string();
        let (holder, ro) = blocking(move || {
            let ro = engine::is_readonly(holder.connection(), &s);
            (holder, ro)
        })
        .await;
        if let Ok(ro) = ro {
            if self.readonly.len() >= READONLY_MEMO {
                self.readonly.clear();
            }
            self.readonly.insert(sql.to_string(), ro);
        }
        (holder, ro)
    }

    fn outside_transaction(&self, what: &str) -> Result<()> {
        if self.in_transaction() {
            Err(Error::sql(
                "25001",
                format!("{what} cannot run inside a transaction block"),
            ))
        } else {
            Ok(())
        }
    }

    async fn sql(&mut self, sql: String, params: Vec<Value>) -> Result<Reply> {
        match std::mem::replace(&mut self.tx, Tx::Idle) {
            Tx::Idle => self.autocommit(sql, params).await,
            Tx::Active { holder, read_only } => {
                let holder = Session::settle(holder, true).await;
                let (holder, res) = self
                    .in_transaction_block(holder, read_only, sql, params)
                    .await;
                self.tx = Tx::Active { holder, read_only };
                res
            }
            Tx::Failed { .. } => unreachable!("refused in dispatch"),
        }
    }

    async fn autocommit(&mut self, sql: String, params: Vec<Value>) -> Result<Reply> {
        let read_only = self.settings.default_read_only;
        let reader = self.reader()?;
        let (reader, ro) = self.is_readonly(reader, &sql).await;
        let ro = ro.map_err(|e| self.read_only_error(e, &sql))?;
        if ro {
            // Streams on its own pooled reader; the reader goes back to the
            // pool when the last row is sent (or the portal is closed).
            return match self.stream(reader, sql, params).await {
                Ok((
                    _streams_on,
                    Reply::Stream {
                        columns,
                        mut rows,
                        tag,
                    },
                )) => match rows.failed_at_start().await {
                    // Before any row: the statement may run again
                    // (`execute`, a damaged page being repaired).
                    Some(e) => Err(e),
                    None => Ok(Reply::Stream { columns, rows, tag }),
                },
                Ok((_streams_on, reply)) => Ok(reply),
                Err((_, e)) => Err(e),
            };
        }
        if read_only {
            // Fails on the read-only connection with the right error.
            let handle = reader.conn().interrupt_handle();
            let s = sql.clone();
            let read = interruptible(
                &self.cancel,
                self.settings.statement_timeout,
                handle,
                false,
                move |_| engine::run(reader.conn().sqlite(), &s, &params, true),
            )
            .await;
            let outcome = read.map_err(|e| self.read_only_error(e, &sql))?;
            return Ok(reply(&sql, outcome));
        }
        drop(reader);
        let w = self.writer().await?;
        let s = sql.clone();
        let memory = self.memory.clone();
        let timeout = self.settings.statement_timeout;
        let started = Instant::now();
        let inline = self.placement.inline(&sql);
        let res = commit_on_writer(&self.cancel, timeout, &self.db, inline, w, move |w, at| {
            // A write that returns rows runs in a transaction of its own:
            // SQLite makes all of a RETURNING statement's changes at its
            // first step and commits them when it is reset, so rows refused
            // by the budget half way must roll back, never commit
            // unacknowledged. (Others run as they are: VACUUM cannot run
            // inside a transaction.)
            let conn = w.conn().sqlite();
            let returns_rows = conn.prepare_cached(&s)?.column_count() > 0;
            if returns_rows {
                conn.execute_batch("SAVEPOINT availdb_statement")?;
            }
            let outcome = engine::until(conn, at, || {
                engine::run_charged(conn, &s, &params, true, Some(&memory))
            });
            let released = match (&outcome, returns_rows) {
                (Err(_), true) => {
                    w.conn().reset();
                    Ok(())
                }
                (Ok(_), true) => conn.execute_batch("RELEASE availdb_statement"),
                (_, false) => Ok(()),
            };
            if released.is_err() || !conn.is_autocommit() {
                // A statement outside a block must not leave a
                // transaction open on the shared writer (nor end ours).
                let fenced = conn.is_autocommit();
                w.conn().reset();
                if let (Err(e), true) = (released, fenced) {
                    return Err(Error::from(e));
                }
                return Err(Error::sql(
                    "25P01",
                    "transaction control must use BEGIN, COMMIT and ROLLBACK",
                ));
            }
            let outcome = outcome?;
            Ok((outcome, w.after_commit()?))
        })
        .await;
        self.placement.ran(&sql, res.1);
        self.placement.transaction_ended();
        let ((outcome, charge), end) = res.0?;
        self.db.commit_durable(end).await?;
        self.committed(end, started);
        Ok(reply_charged(&sql, outcome, charge))
    }

    /// Answers a read statement on `holder`: run whole inline when the
    /// session knows it to be short ([`placement`], stopped at its budget
    /// and run again on a cursor otherwise), or on a cursor that sends its
    /// rows as they come. On error the holder comes back.
    async fn stream<H: Holds>(
        &mut self,
        holder: H,
        sql: String,
        params: Vec<Value>,
    ) -> std::result::Result<(StreamsOn<H>, Reply), (H, Error)> {
        let holder = if self.placement.inline(&sql) {
            let started = Instant::now();
            let handle = Arc::new(holder.connection().get_interrupt_handle());
            let memory = self.memory.clone();
            let (s, p) = (sql.clone(), params.clone());
            let (holder, ran) = interruptible(
                &self.cancel,
                self.settings.statement_timeout,
                handle,
                true,
                move |at| {
                    // Its statement_timeout, if shorter, is its budget.
                    let budget = at.map_or(placement::READ_BUDGET, |at| {
                        at.saturating_duration_since(Instant::now())
                            .min(placement::READ_BUDGET)
                    });
                    let ran = engine::run_briefly(
                        holder.connection(),
                        &s,
                        &p,
                        true,
                        &memory,
                        budget,
                        placement::READ_BYTES,
                    );
                    (holder, ran)
                },
            )
            .await;
            match ran {
                Ok(engine::Brief::Done(outcome, charge)) => {
                    self.placement.ran(&sql, started.elapsed());
                    return Ok((
                        StreamsOn::Free(holder),
                        reply_charged(&sql, outcome, charge),
                    ));
                }
                Ok(engine::Brief::TooLong) => {
                    self.placement.streamed(&sql);
                    holder
                }
                Err(e) => {
                    self.placement.ran(&sql, started.elapsed());
                    return Err((holder, self.read_only_error(e, &sql)));
                }
            }
        } else {
            holder
        };
        let tag = command_tag(&sql, 0, 0);
        let slot = self.cancel.clone();
        let started = Instant::now();
        match cursor::open(
            holder,
            sql.clone(),
            params,
            true,
            self.memory.clone(),
            self.settings.statement_timeout,
            move |stop| slot.track(stop),
        )
        .await
        {
            Ok(opened) => {
                if opened.complete {
                    self.placement.ran(&sql, started.elapsed());
                } else {
                    self.placement.streamed(&sql);
                }
                Ok((
                    StreamsOn::Cursor(opened.handle),
                    Reply::Stream {
                        columns: opened.columns,
                        rows: opened.rows,
                        tag,
                    },
                ))
            }
            Err((holder, e)) => Err((holder, self.read_only_error(e, &sql))),
        }
    }

    async fn in_transaction_block(
        &mut self,
        holder: Holder,
        read_only: bool,
        sql: String,
        params: Vec<Value>,
    ) -> (Holder, Result<Reply>) {
        let holder = match holder {
            // A statement known to write (it ran before in this session)
            // goes straight to the writer: no reader, and no hop to a
            // blocking thread to ask SQLite what it already told us.
            Holder::Nothing if !read_only && self.readonly.get(&sql) == Some(&false) => {
                match self.writer_for_transaction(Holder::Nothing).await {
                    Ok(w) => Holder::Writer(w),
                    Err(e) => return (Holder::Nothing, Err(e)),
                }
            }
            Holder::Nothing => match self.reader() {
                Ok(reader) => {
                    // Read the commit counter before the snapshot starts, so
                    // a commit racing with BEGIN makes the upgrade check fail
                    // safe (a spurious 40001), never pass wrongly.
                    let seq = self.strict.then(|| self.db.commit_seq());
                    let s = sql.clone();
                    let (reader, res) = blocking(move || {
                        let conn = reader.conn().sqlite();
                        let res = engine::is_readonly(conn, &s).and_then(|ro| {
                            if ro || read_only {
                                conn.execute_batch("BEGIN")?;
                            }
                            Ok(ro)
                        });
                        (reader, res)
                    })
                    .await;
                    match res {
                        Ok(true) => Holder::Reader { reader, seq },
                        Ok(false) if read_only => Holder::Reader { reader, seq },
                        Ok(false) => match self.writer_for_transaction(Holder::Nothing).await {
                            Ok(w) => Holder::Writer(w),
                            Err(e) => return (Holder::Nothing, Err(e)),
                        },
                        Err(e) => return (Holder::Nothing, Err(e)),
                    }
                }
                Err(e) => return (Holder::Nothing, Err(e)),
            },
            other => other,
        };
        match holder {
            Holder::Reader { reader, seq } => {
                let (reader, ro) = self.is_readonly(reader, &sql).await;
                match ro {
                    Err(e) => (
                        Holder::Reader { reader, seq },
                        Err(self.read_only_error(e, &sql)),
                    ),
                    Ok(true) => {
                        self.stream_in_transaction(Holder::Reader { reader, seq }, sql, params)
                            .await
                    }
                    Ok(false) if read_only => {
                        // Fails on the read-only snapshot with the right error.
                        let handle = reader.conn().interrupt_handle();
                        let s = sql.clone();
                        let (reader, res) = interruptible(
                            &self.cancel,
                            self.settings.statement_timeout,
                            handle,
                            false,
                            move |_| {
                                let res = engine::run(reader.conn().sqlite(), &s, &params, true);
                                (reader, res)
                            },
                        )
                        .await;
                        (
                            Holder::Reader { reader, seq },
                            res.map(|o| reply(&sql, o))
                                .map_err(|e| self.read_only_error(e, &sql)),
                        )
                    }
                    Ok(false) => match self
                        .writer_for_transaction(Holder::Reader { reader, seq })
                        .await
                    {
                        Ok(w) => self.run_on_writer(w, sql, params).await,
                        Err(e) => (Holder::Nothing, Err(e)),
                    },
                }
            }
            Holder::Writer(w) => self.run_on_writer(w, sql, params).await,
            Holder::Nothing | Holder::Cursor(_) => {
                unreachable!("a holder was chosen and settled above")
            }
        }
    }

    /// Streams a read statement on the transaction's holder, which the
    /// cursor keeps until the session needs it again.
    async fn stream_in_transaction(
        &mut self,
        holder: Holder,
        sql: String,
        params: Vec<Value>,
    ) -> (Holder, Result<Reply>) {
        match self.stream(holder, sql, params).await {
            Ok((StreamsOn::Cursor(handle), reply)) => (Holder::Cursor(handle), Ok(reply)),
            Ok((StreamsOn::Free(holder), reply)) => (holder, Ok(reply)),
            Err((holder, e)) => (holder, Err(e)),
        }
    }

    async fn run_on_writer(
        &mut self,
        w: WriterGuard,
        sql: String,
        params: Vec<Value>,
    ) -> (Holder, Result<Reply>) {
        let (holder, ro) = self.is_readonly(Holder::Writer(w), &sql).await;
        match ro {
            Err(e) => return (holder, Err(e)),
            // A read inside a write transaction streams from the writer,
            // which sees the transaction's own writes.
            Ok(true) => return self.stream_in_transaction(holder, sql, params).await,
            Ok(false) => {}
        }
        let Holder::Writer(w) = holder else {
            unreachable!("is_readonly gives back the holder it was given")
        };
        let s = sql.clone();
        let memory = self.memory.clone();
        let inline = self.placement.inline(&sql);
        let started = Instant::now();
        let (w, res) = on_writer(
            &self.cancel,
            self.settings.statement_timeout,
            inline,
            w,
            move |w, at| {
                let conn = w.conn().sqlite();
                engine::until(conn, at, || {
                    engine::run_charged(conn, &s, &params, true, Some(&memory))
                })
            },
        )
        .await;
        self.placement.ran(&sql, started.elapsed());
        (
            Holder::Writer(w),
            res.map(|(outcome, charge)| reply_charged(&sql, outcome, charge)),
        )
    }

    /// Runs SQLite statements, each once per row of parameters, as one
    /// unit: its own transaction outside a block, a savepoint inside one.
    /// Returns the rows changed.
    pub async fn run_many(&mut self, steps: Vec<(String, Vec<Vec<Value>>)>) -> Result<u64> {
        self.run_unit(move |w: &mut WriterGuard| -> Result<u64> {
            let conn = w.conn().sqlite();
            let mut changes = 0;
            for (sql, rows) in &steps {
                for params in rows {
                    changes += engine::run(conn, sql, params, false)?.changes;
                }
            }
            Ok(changes)
        })
        .await
    }

    /// Runs `run` on the writer as one unit: its own transaction outside a
    /// block, a savepoint inside one.
    async fn run_unit(
        &mut self,
        run: impl FnOnce(&mut WriterGuard) -> Result<u64> + Send + 'static,
    ) -> Result<u64> {
        match std::mem::replace(&mut self.tx, Tx::Idle) {
            Tx::Idle => {
                let w = self.writer().await?;
                let timeout = self.settings.statement_timeout;
                let started = Instant::now();
                let res =
                    commit_on_writer(&self.cancel, timeout, &self.db, false, w, move |w, _| {
                        engine::run_control(w.conn().sqlite(), BEGIN_IMMEDIATE)?;
                        let changes = match run(w) {
                            Ok(n) => n,
                            Err(e) => {
                                w.conn().reset();
                                return Err(e);
                            }
                        };
                        if let Err(e) = engine::run_control(w.conn().sqlite(), "COMMIT") {
                            w.conn().reset();
                            return Err(Error::from(e));
                        }
                        Ok((changes, w.after_commit()?))
                    })
                    .await;
                let (changes, end) = res.0?;
                self.db.commit_durable(end).await?;
                self.committed(end, started);
                Ok(changes)
            }
            Tx::Active {
                read_only: true,
                holder,
            } => {
                self.tx = Tx::Active {
                    holder,
                    read_only: true,
                };
                Err(Error::sql(
                    "25006",
                    "cannot execute a write in a read-only transaction",
                ))
            }
            Tx::Active { holder, read_only } => {
                let w = match self.writer_for_transaction(holder).await {
                    Ok(w) => w,
                    Err(e) => {
                        self.tx = Tx::Active {
                            holder: Holder::Nothing,
                            read_only,
                        };
                        return Err(e);
                    }
                };
                let started = Instant::now();
                let (w, res) = on_writer(
                    &self.cancel,
                    self.settings.statement_timeout,
                    false,
                    w,
                    move |w, _| {
                        let conn = w.conn().sqlite();
                        conn.execute_batch("SAVEPOINT availdb_many")?;
                        match run(w) {
                            Ok(n) => {
                                w.conn().sqlite().execute_batch("RELEASE availdb_many")?;
                                Ok(n)
                            }
                            Err(e) => {
                                let _ = w.conn().sqlite().execute_batch(
                                    "ROLLBACK TO availdb_many; RELEASE availdb_many",
                                );
                                Err(e)
                            }
                        }
                    },
                )
                .await;
                self.placement.worked(started.elapsed());
                self.tx = Tx::Active {
                    holder: Holder::Writer(w),
                    read_only,
                };
                res
            }
            Tx::Failed { .. } => unreachable!("refused in dispatch"),
        }
    }

    /// The columns a COPY names, or all of the table's, with their types.
    pub async fn copy_columns(&mut self, spec: &crate::sql::pg::CopySpec) -> Result<Vec<Column>> {
        let table = spec.table.clone().unwrap_or_default();
        let reader = self.reader()?;
        let cols = blocking(move || -> Result<Vec<(String, String)>> {
            let conn = reader.conn().sqlite();
            let mut stmt = conn.prepare("SELECT name, type FROM pragma_table_info(?1)")?;
            let rows = stmt
                .query_map([&table], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await?;
        let name = spec.table.clone().unwrap_or_default();
        if cols.is_empty() {
            return Err(Error::sql(
                "42P01",
                format!("relation \"{name}\" does not exist"),
            ));
        }
        let wanted: Vec<String> = if spec.columns.is_empty() {
            cols.iter().map(|(n, _)| n.clone()).collect()
        } else {
            spec.columns.clone()
        };
        wanted
            .into_iter()
            .map(|w| {
                cols.iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(&w))
                    .map(|(n, t)| Column {
                        name: n.clone(),
                        ty: crate::sql::types::ValueType::from_decltype(t),
                    })
                    .ok_or_else(|| {
                        Error::sql(
                            "42703",
                            format!("column \"{w}\" of relation \"{name}\" does not exist"),
                        )
                    })
            })
            .collect()
    }

    /// Borrows a pooled reader, showing the session's TEMP objects.
    fn reader(&self) -> Result<Reader> {
        let reader = self.db.reader()?;
        reader.conn().bind(self.temp.as_deref(), &self.sequences)?;
        Ok(reader)
    }

    /// Takes the write lock, the writer showing the session's TEMP objects.
    /// The wait counts against `statement_timeout` too (as a lock wait
    /// does in PostgreSQL): otherwise a session behind a transaction that
    /// holds the lock waited for it past its own limit.
    async fn writer(&mut self) -> Result<WriterGuard> {
        let wait = self
            .db
            .writer(self.settings.lock_timeout, &self.cancel.waiting);
        let w = match self.settings.statement_timeout {
            Some(limit) => tokio::time::timeout(limit, wait).await.map_err(|_| {
                Error::sql("57014", "canceling statement due to statement timeout").with_hint(
                    format!(
                    "the statement waited {} ms for database \"{}\"'s write lock, which another \
                         session's transaction holds",
                    limit.as_millis(),
                    self.db.name()
                ),
                )
            })??,
            None => wait.await?,
        };
        w.conn().bind(self.temp.as_deref(), &self.sequences)?;
        Ok(w)
    }

    /// Places a statement creating a TEMP object in the session's own
    /// `pg_temp` schema, which the first such statement creates
    /// ([`engine::temp`]). The connections the session holds did not show
    /// it when they were borrowed, and SQLite attaches only outside a
    /// transaction: a read snapshot at READ COMMITTED is let go (the next
    /// statement may see newer data anyway), but a transaction that
    /// already wrote, or must keep its snapshot, cannot take it.
    async fn place_temp(&mut self, sql: String) -> Result<String> {
        let Some(placed) = crate::sql::pg::temp_object(&sql) else {
            // `CREATE INDEX i ON tt` of a TEMP table goes where tt is.
            if let Some(temp) = &self.temp {
                if let Some((table, placed)) = crate::sql::pg::index_on_temp_table(&sql) {
                    if temp.has_table(&table) {
                        return Ok(placed);
                    }
                }
            }
            return Ok(sql);
        };
        if self.temp.is_some() {
            return Ok(placed);
        }
        self.settle_tx(true).await;
        if let Tx::Active { holder, .. } = &mut self.tx {
            match holder {
                Holder::Nothing => {}
                Holder::Reader { seq: None, .. } => *holder = Holder::Nothing,
                Holder::Reader { .. } | Holder::Writer(_) | Holder::Cursor(_) => {
                    return Err(Error::sql(
                        "0A000",
                        "not supported in availdb: the session's first TEMP object created inside a transaction that has already written (or runs at REPEATABLE READ or SERIALIZABLE)",
                    )
                    .with_hint("create it at the start of the transaction, or before it"))
                }
            }
        }
        self.temp = Some(Arc::new(engine::TempSpace::new()?));
        Ok(placed)
    }

    /// Moves an open transaction onto the writer (BEGIN IMMEDIATE there).
    /// From a reader snapshot this is allowed only if nothing committed since
    /// the snapshot began; otherwise the transaction must retry (40001).
    async fn writer_for_transaction(&mut self, holder: Holder) -> Result<WriterGuard> {
        let snapshot_seq = match Session::settle(holder, true).await {
            Holder::Writer(w) => return Ok(w),
            Holder::Reader { reader, seq } => {
                drop(reader);
                seq
            }
            Holder::Nothing | Holder::Cursor(_) => None,
        };
        let w = self.writer().await?;
        if let Some(seq) = snapshot_seq {
            if self.db.commit_seq() != seq {
                return Err(Error::sql(
                    "40001",
                    "could not serialize access due to concurrent update",
                )
                .with_hint(
                    "the transaction read data another transaction has since changed; retry it",
                ));
            }
        }
        let begin = move || {
            let res = engine::run_control(w.conn().sqlite(), BEGIN_IMMEDIATE).map_err(Error::from);
            (w, res)
        };
        let started = Instant::now();
        let (w, res) = if self.placement.inline(BEGIN_IMMEDIATE) {
            begin()
        } else {
            blocking(begin).await
        };
        self.placement.ran(BEGIN_IMMEDIATE, started.elapsed());
        res.map(|_| w)
    }

    /// Marks the transaction failed after `err` (or forgets it when SQLite
    /// already rolled it back).
    fn fail_transaction(&mut self, err: &Error) {
        self.tx = match std::mem::replace(&mut self.tx, Tx::Idle) {
            Tx::Idle => Tx::Idle,
            Tx::Active { holder, .. } | Tx::Failed { holder } => {
                let holder = if err.ends_transaction() || holder_in_autocommit(&holder) {
                    drop_holder(holder);
                    Holder::Nothing
                } else {
                    holder
                };
                Tx::Failed { holder }
            }
        };
    }

    /// Rewords SQLite's "attempt to write a readonly database" for a session
    /// in a read-only transaction.
    fn read_only_error(&self, err: Error, sql: &str) -> Error {
        if err.sqlstate() == "25006" {
            let verb = command_tag(sql, 0, 0);
            let verb = verb.split_whitespace().next().unwrap_or("statement");
            Error::sql(
                "25006",
                format!("cannot execute {verb} in a read-only transaction"),
            )
        } else {
            err
        }
    }

    fn warn(&mut self, code: &'static str, message: &str) {
        self.asides.push(Aside::Notice {
            severity: "WARNING",
            code,
            message: message.to_string(),
        });
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Tx::Active { holder, .. } | Tx::Failed { holder } =
            std::mem::replace(&mut self.tx, Tx::Idle)
        {
            drop_holder(holder);
        }
    }
}

fn holder_in_autocommit(holder: &Holder) -> bool {
    match holder {
        Holder::Nothing => true,
        Holder::Reader { reader, .. } => reader.conn().sqlite().is_autocommit(),
        Holder::Writer(w) => w.conn().sqlite().is_autocommit(),
        // The statement's transaction is open on it.
        Holder::Cursor(_) => false,
    }
}

/// Ends whatever transaction the holder has open, without blocking the
/// async runtime for long: a rollback only discards in-memory state.
fn drop_holder(holder: Holder) {
    match holder {
        Holder::Nothing => {}
        // The reader rolls back when it returns to the pool.
        Holder::Reader { reader, .. } => drop(reader),
        Holder::Writer(w) => w.conn().reset(),
        // Stopped; the cursor's thread (or its handle) releases what it
        // holds, a writer's transaction rolled back.
        Holder::Cursor(handle) => handle.abandon(),
    }
}

async fn release(holder: Holder) {
    let _ = blocking(move || drop_holder(holder)).await;
}

fn reply(sql: &str, outcome: engine::Outcome) -> Reply {
    let tag = command_tag(sql, outcome.rows.len(), outcome.changes);
    if outcome.columns.is_empty() {
        Reply::Done(tag)
    } else {
        Reply::Rows {
            columns: outcome.columns,
            rows: outcome.rows,
            tag,
        }
    }
}

/// [`reply`] for rows held whole under `charge` (a write's `RETURNING`).
fn reply_charged(sql: &str, outcome: engine::Outcome, charge: Option<Charge>) -> Reply {
    match charge {
        Some(charge) if !outcome.columns.is_empty() => Reply::Stream {
            tag: command_tag(sql, outcome.rows.len(), outcome.changes),
            columns: outcome.columns,
            rows: RowSource::buffered(outcome.rows, charge),
        },
        _ => reply(sql, outcome),
    }
}

/// `ALTER ROLE me [WITH] PASSWORD '…'` and nothing else.
fn changes_own_password(sql: &str, me: &str) -> bool {
    matches!(
        crate::sql::role::parse(sql),
        Ok(crate::sql::role::RoleStatement::Alter {
            name,
            login: None,
            password: Some(Some(_)),
            connection_limit: None,
        }) if name == me
    )
}

/// How a refusal names a statement.
fn what_is(cmd: &Command) -> String {
    match cmd {
        Command::Sql(sql) => {
            let tag = command_tag(sql, 0, 0);
            tag.split_whitespace()
                .next()
                .unwrap_or("the statement")
                .to_string()
        }
        Command::Batch { tag, .. } => tag.clone(),
        Command::AlterDefinition { .. } => "ALTER TABLE".into(),
        Command::Copy(_) => "COPY".into(),
        Command::Declare { .. } => "DECLARE".into(),
        Command::CreateDatabase { .. } => "CREATE DATABASE".into(),
        Command::DropDatabase { .. } => "DROP DATABASE".into(),
        Command::Ag(_) => "availability group and cluster DDL".into(),
        Command::Backup(_) => "BACKUP and RESTORE".into(),
        Command::Role(_) => "a role or privilege statement".into(),
        _ => "the statement".into(),
    }
}

fn no_cursor(name: &str) -> Error {
    Error::sql("34000", format!("cursor \"{name}\" does not exist"))
}

fn single_text(name: &str, value: &str) -> Reply {
    Reply::Rows {
        columns: vec![Column {
            name: name.to_string(),
            ty: crate::sql::types::ValueType::Text,
        }],
        rows: vec![vec![Value::Text(value.to_string())]],
        tag: "SELECT 1".into(),
    }
}

pub(super) fn on_off(b: bool) -> String {
    if b { "on" } else { "off" }.to_string()
}

/// Runs `f` on a blocking thread, or here when `inline`
/// ([`placement`]), while `handle` is what a cancel request interrupts.
///
/// `statement_timeout` interrupts it too. Off the worker a timer task
/// does; inline, `f` is given the instant its statements must stop at and
/// runs them under [`engine::until`]: a task spawned just before the
/// worker blocks would wait on that worker's own queue (tokio keeps the
/// task a worker spawned last for that worker) until the statement ended
/// by itself.
async fn interruptible<T: Send + 'static>(
    slot: &Arc<CancelSlot>,
    timeout: Option<Duration>,
    handle: Arc<InterruptHandle>,
    inline: bool,
    f: impl FnOnce(Option<Instant>) -> T + Send + 'static,
) -> T {
    slot.set(Some(handle));
    let out = if inline {
        let deadline = timeout.map(|limit| Instant::now() + limit);
        let out = f(deadline);
        if deadline.is_some_and(|at| Instant::now() >= at) {
            slot.timed_out.store(true, Ordering::SeqCst);
        }
        out
    } else {
        let timer = timeout.map(|limit| {
            let slot = slot.clone();
            tokio::spawn(async move {
                tokio::time::sleep(limit).await;
                slot.timed_out.store(true, Ordering::SeqCst);
                slot.cancel();
            })
        });
        let out = blocking(move || f(None)).await;
        if let Some(timer) = timer {
            timer.abort();
        }
        out
    };
    slot.set(None);
    out
}

/// Runs `f` on the writer, interruptibly (inline when `inline`, see
/// [`super::placement`]; `f` is given the instant its statements must stop
/// at, see [`interruptible`]); gives the writer back.
async fn on_writer<T: Send + 'static>(
    slot: &Arc<CancelSlot>,
    timeout: Option<Duration>,
    inline: bool,
    mut w: WriterGuard,
    f: impl FnOnce(&mut WriterGuard, Option<Instant>) -> Result<T> + Send + 'static,
) -> (WriterGuard, Result<T>) {
    let handle = w.conn().interrupt_handle();
    interruptible(slot, timeout, handle, inline, move |at| {
        let res = f(&mut w, at);
        (w, res)
    })
    .await
}

/// Runs `commit` on the writer, interruptibly, where it commits and
/// captures a write transaction (returning its end LSN with its result),
/// and gives the write lock up. Off the async worker (not `inline`), it
/// then waits on the same blocking thread for the local log to harden the
/// commit: group commit is untouched (the next writer commits while this
/// one syncs, and the sync covers both), and a hop to another thread for
/// the fsync, which on a small machine costs more than the fsync, is
/// saved. Inline, it does not wait here (rule 4 of [`super::placement`]): the
/// caller's [`Database::commit_durable`] waits. The caller awaits it
/// either way (the local durability, the secondaries' acknowledgements,
/// the fence: a failed fsync is reported there). Also returns how long the commit itself
/// took (its fsync wait left out), for the session's placement memo.
async fn commit_on_writer<T: Send + 'static>(
    slot: &Arc<CancelSlot>,
    timeout: Option<Duration>,
    db: &Arc<Database>,
    inline: bool,
    mut w: WriterGuard,
    commit: impl FnOnce(&mut WriterGuard, Option<Instant>) -> Result<(T, crate::log::Lsn)>
        + Send
        + 'static,
) -> (Result<(T, crate::log::Lsn)>, Duration) {
    let handle = w.conn().interrupt_handle();
    let log = db.log().clone();
    let own = slot.clone();
    interruptible(slot, timeout, handle, inline, move |at| {
        let started = Instant::now();
        let committed = commit(&mut w, at);
        let took = started.elapsed();
        // From here the connection is the next writer's: a cancel of this
        // session must not interrupt it.
        own.set(None);
        drop(w);
        if !inline {
            if let Ok((_, end)) = &committed {
                // A failure is the log's for good: commit_durable reports it.
                let _ = log.wait_durable_blocking(*end);
            }
        }
        (committed, took)
    })
    .await
}

/// Runs blocking SQLite work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// The NOTICE a read of `db` on secondary `node` gets when it may be
/// behind its primary: cut off from it, suspended, or more than `after`
/// behind (see [`crate::ag::Staleness`]); None when it is close enough.
/// It says what to do to read the newest commits.
fn lag_notice_text(
    s: &crate::ag::Staleness,
    after: Duration,
    now_us: i64,
    db: &str,
    node: &str,
) -> Option<String> {
    let group = &s.group;
    let newest = match s.newest_redone_commit_us {
        Some(t) => format!(
            "its newest commit here is {:.1} s old",
            (now_us.saturating_sub(t)).max(0) as f64 / 1e6
        ),
        None => "no commit is redone here yet".into(),
    };
    let what = if !s.connected {
        format!(
            "replica \"{node}\" is not connected to the primary of availability group \"{group}\", so database \"{db}\" may be behind it ({newest})"
        )
    } else if s.suspended {
        format!(
            "data movement of database \"{db}\" is suspended on replica \"{node}\", so it may be behind its primary ({newest})"
        )
    } else {
        match s.lag_seconds(now_us) {
            Some(lag) if lag <= after.as_secs_f64() => return None,
            Some(lag) => format!(
                "database \"{db}\" on replica \"{node}\" is {lag:.1} s behind its primary ({} bytes of log not yet redone)",
                s.redo_queue
            ),
            None => format!(
                "database \"{db}\" on replica \"{node}\" is behind its primary by an unknown time ({} bytes of log not yet redone, {newest})",
                s.redo_queue
            ),
        }
    };
    Some(format!(
        "{what}: this read may miss recent commits. To read them, read on the primary or SET {READ_AFTER_LSN} to a commit's {COMMIT_LSN}; SET {LAG_NOTICE_AFTER} = 0 silences this notice"
    ))
}

/// The FATAL of a connection that asks for a database while it is being
/// replaced by a copy the primary seeded (57P03, "cannot connect now").
pub fn replacing_error(database: &str, node: &str) -> Error {
    Error::sql(
        "57P03",
        format!(
            "database \"{database}\" on replica \"{node}\" is being replaced by a copy the primary seeded"
        ),
    )
    .with_hint("connect again in a moment: the new copy serves as soon as it is in place")
}

/// The FATAL of a session whose database is being replaced by a copy the
/// primary seeded ([`Session::retired`]; also sent to an idle session the
/// front end ended for it).
pub fn retired_error(database: &str, node: &str) -> Error {
    Error::sql(
        "57P01",
        format!(
            "terminating connection: database \"{database}\" on replica \"{node}\" is being replaced by a copy the primary seeded"
        ),
    )
    .with_hint("reconnect: the new copy serves as soon as it is in place")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ag::Staleness;

    const NOW: i64 = 1_000_000_000_000_000;

    fn caught_up() -> Staleness {
        Staleness {
            group: "ag1".into(),
            connected: true,
            suspended: false,
            redo_queue: 0,
            newest_redone_commit_us: Some(NOW - 60_000_000),
        }
    }

    fn notice(s: &Staleness) -> Option<String> {
        lag_notice_text(s, Duration::from_secs(1), NOW, "app", "r2")
    }

    #[test]
    fn a_connected_secondary_within_the_threshold_gets_no_lag_notice() {
        // Nothing to redo: not behind, however old the newest commit.
        assert_eq!(notice(&caught_up()), None);
        // Log to redo, its newest redone commit 0.5 s old: within 1 s.
        let s = Staleness {
            redo_queue: 4096,
            newest_redone_commit_us: Some(NOW - 500_000),
            ..caught_up()
        };
        assert_eq!(notice(&s), None);
    }

    #[test]
    fn a_secondary_behind_by_more_than_the_threshold_says_by_how_much_and_what_to_do() {
        let s = Staleness {
            redo_queue: 4096,
            newest_redone_commit_us: Some(NOW - 2_500_000),
            ..caught_up()
        };
        let text = notice(&s).expect("2.5 s behind, threshold 1 s");
        assert!(
            text.contains("is 2.5 s behind its primary (4096 bytes"),
            "{text}"
        );
        assert!(text.contains("SET availdb.read_after_lsn"), "{text}");
        let unknown = Staleness {
            newest_redone_commit_us: None,
            ..s
        };
        let text = notice(&unknown).expect("log to redo, no commit redone");
        assert!(text.contains("unknown time"), "{text}");
    }

    #[test]
    fn a_cut_off_or_suspended_secondary_gets_a_lag_notice_even_with_nothing_to_redo() {
        let cut_off = Staleness {
            connected: false,
            ..caught_up()
        };
        let text = notice(&cut_off).expect("disconnected");
        assert!(
            text.contains("not connected to the primary of availability group \"ag1\"")
                && text.contains("60.0 s old"),
            "{text}"
        );
        let suspended = Staleness {
            suspended: true,
            ..caught_up()
        };
        assert!(notice(&suspended)
            .expect("suspended")
            .contains("suspended on replica \"r2\""));
    }
}
