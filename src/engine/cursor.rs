//! Streaming a statement's rows: SQLite produces them on a thread of the
//! statement's own while the client reads them, with a bounded number of
//! bytes in between.
//!
//! # Protocol
//! ```text
//!  cursor thread (owns the connection)          session / wire (async)
//!  prepare, bind (an error: header with it) ──────► open() returns
//!  step rows into a batch (≤ BATCH_ROWS,
//!    ≤ BATCH_BYTES), charge it, queue it; the
//!    first time: header with the columns ─────────► open() returns,
//!                                                   RowSource::next_batch
//!  queue full (≥ WINDOW_BYTES): wait  ◄──────────── a batch taken: room
//!  last row: End(changes) ─────────────────────────► None
//!  give the holder back ───────────────────────────► CursorHandle::reclaim
//! ```
//! A statement that ends before its first batch is full sends its header
//! after its end: the session wakes once for the whole statement. A cancel
//! needs no header: the session tracks the statement from its start.
//!
//! The thread owns whatever holds the connection (a pooled reader, or the
//! session's transaction holder) for the statement's whole life and hands
//! it back at the end, so the connection is never used by two threads.
//!
//! # Rules
//! 1. **Bounded in flight.** At most [`WINDOW_BYTES`] of queued rows plus
//!    the batch being filled (one row more than [`BATCH_BYTES`] at most)
//!    wait for the client; every queued byte is charged to the session's
//!    budget ([`super::memory`]). A slow client stops its own thread, and
//!    its snapshot stays open; nothing else waits for it.
//! 2. **The connection comes back whole.** [`CursorHandle::reclaim`] either
//!    *drains* (the session needs the connection for another statement of
//!    the same transaction while a portal is suspended: the rest of the rows
//!    are read into the queue now, charged, so the portal still returns
//!    exactly the rows of its own statement) or *abandons* (the transaction
//!    ends: the portal dies with it, as in PostgreSQL, and a later fetch
//!    fails with 34000). A holder nobody takes back is released on the
//!    thread ([`Holds::release`]: a writer's open transaction rolled back).
//! 3. **Cancel and timeout stop the thread wherever it is** — inside
//!    `sqlite3_step` (interrupt) or waiting for room — and the client gets
//!    the error instead of the rows still queued.
//! 4. **A consumer that goes away** (portal closed, connection gone) stops
//!    the thread at its next batch and gives its charges back.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{Connection, InterruptHandle};
use tokio::sync::{oneshot, Notify};

use super::error::{Error, Result};
use super::exec::{self, Column};
use super::memory::{Charge, SessionMemory};

/// Bytes of rows that may wait between the cursor thread and the client.
pub const WINDOW_BYTES: usize = 1 << 20;
/// Rows per batch.
pub const BATCH_ROWS: usize = 256;
/// Bytes per batch (a batch ends after the row that reaches this).
pub const BATCH_BYTES: usize = 256 << 10;

/// Owns a connection for a cursor's life.
pub trait Holds: Send + 'static {
    /// The connection the statement runs on.
    fn connection(&self) -> &Connection;
    /// Called on the cursor's thread when nobody takes the holder back.
    fn release(self);
}

impl Holds for super::Reader {
    fn connection(&self) -> &Connection {
        self.conn().sqlite()
    }

    /// A reader rolls back its snapshot when it returns to the pool.
    fn release(self) {}
}

/// A batch of rows and what it is charged.
type Batch = (Vec<Vec<Value>>, Charge);

#[derive(Default)]
struct State {
    queue: VecDeque<Batch>,
    queued_bytes: usize,
    /// Rows changed, once the statement ran to its end.
    end: Option<Result<u64>>,
    /// The consumer reported the end (or error) already.
    finished: bool,
    consumer_gone: bool,
    /// Read everything now (rule 2): no window.
    drain: bool,
    /// Why the statement must stop (cancel, timeout, its transaction ended).
    stop: Option<Error>,
    /// The cursor thread waits for room (rule 1): only then does taking a
    /// batch, stopping or going away wake it. A result held whole has no
    /// thread, and a statement of a few rows never waits: a wake-up of
    /// nobody would still cost a system call per statement.
    producer_waits: bool,
}

struct Shared {
    state: Mutex<State>,
    room: Condvar,
    ready: Notify,
    interrupt: Mutex<Option<Arc<InterruptHandle>>>,
    timer: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets the state go, then wakes the cursor thread if it waits for
    /// room (it looks at the state again under the lock, so a change made
    /// before it waited is never missed).
    fn wake_producer(&self, state: MutexGuard<'_, State>) {
        let waits = state.producer_waits;
        drop(state);
        if waits {
            self.room.notify_all();
        }
    }

    fn stop(&self, why: Error) {
        let mut state = self.lock();
        if state.stop.is_none() && state.end.is_none() {
            state.stop = Some(why);
        }
        self.wake_producer(state);
        if let Some(handle) = self
            .interrupt
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            handle.interrupt();
        }
        self.ready.notify_one();
    }

    /// Queues a batch, waiting for room (rule 1). Err: stop producing.
    fn push(&self, batch: Batch, bytes: usize) -> std::result::Result<(), ()> {
        let mut state = self.lock();
        loop {
            if state.consumer_gone || state.stop.is_some() {
                return Err(());
            }
            if state.drain || state.queued_bytes < WINDOW_BYTES {
                state.queued_bytes += bytes;
                state.queue.push_back(batch);
                drop(state);
                self.ready.notify_one();
                return Ok(());
            }
            state.producer_waits = true;
            state = self.room.wait(state).unwrap_or_else(|e| e.into_inner());
            state.producer_waits = false;
        }
    }

    fn finish(&self, end: Result<u64>) {
        let mut state = self.lock();
        if state.end.is_none() {
            state.end = Some(end);
        }
        drop(state);
        if let Some(timer) = self.timer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            timer.abort();
        }
        self.ready.notify_one();
    }
}

/// The rows of an open cursor, as the client reads them.
pub struct RowSource {
    shared: Arc<Shared>,
}

impl RowSource {
    /// The next batch of rows; None after the last; an error ends the rows.
    pub async fn next_batch(&mut self) -> Option<Result<Vec<Vec<Value>>>> {
        loop {
            {
                let mut state = self.shared.lock();
                if state.finished {
                    return None;
                }
                if let Some(why) = state.stop.take() {
                    state.finished = true;
                    state.queue.clear();
                    state.queued_bytes = 0;
                    return Some(Err(why));
                }
                if let Some((rows, charge)) = state.queue.pop_front() {
                    state.queued_bytes = state.queued_bytes.saturating_sub(charge.bytes() as usize);
                    // Its bytes go back to the budget before the thread
                    // charges its next batch.
                    drop(charge);
                    self.shared.wake_producer(state);
                    return Some(Ok(rows));
                }
                if let Some(end) = state.end.take() {
                    state.finished = true;
                    return end.err().map(Err);
                }
            }
            self.shared.ready.notified().await;
        }
    }

    /// Waits for the statement's first rows or its end; when it failed
    /// before it produced a row, takes that error (the rows end with it):
    /// the statement changed nothing the client saw, so it can run again.
    pub async fn failed_at_start(&mut self) -> Option<Error> {
        loop {
            {
                let mut state = self.shared.lock();
                if state.finished || state.stop.is_some() || !state.queue.is_empty() {
                    return None;
                }
                match &state.end {
                    Some(Err(_)) => {
                        state.finished = true;
                        return state.end.take().and_then(|end| end.err());
                    }
                    Some(Ok(_)) => return None,
                    None => {}
                }
            }
            self.shared.ready.notified().await;
        }
    }

    /// Puts `rows`, taken from this source, back before the rest (a
    /// declared cursor's rows read ahead of a FETCH, when FETCH ALL hands
    /// the rest over to stream).
    pub fn push_front(&mut self, rows: Vec<Vec<Value>>, charge: Charge) {
        let mut state = self.shared.lock();
        // Only a source that has not yet answered its end takes rows back.
        debug_assert!(!state.finished, "rows pushed back after the end");
        state.queued_bytes += charge.bytes() as usize;
        state.queue.push_front((rows, charge));
        drop(state);
        self.shared.ready.notify_one();
    }

    /// Rows already produced and nothing more to come (a result held whole).
    pub fn buffered(rows: Vec<Vec<Value>>, charge: Charge) -> RowSource {
        let bytes = charge.bytes() as usize;
        let state = State {
            queue: VecDeque::from([(rows, charge)]),
            queued_bytes: bytes,
            end: Some(Ok(0)),
            ..State::default()
        };
        RowSource {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                room: Condvar::new(),
                ready: Notify::new(),
                interrupt: Mutex::new(None),
                timer: Mutex::new(None),
            }),
        }
    }
}

impl Drop for RowSource {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.consumer_gone = true;
        state.queue.clear();
        state.queued_bytes = 0;
        self.shared.wake_producer(state);
    }
}

/// Stops a cursor from another task (cancel requests).
#[derive(Clone)]
pub struct CursorStop {
    shared: Arc<Shared>,
}

impl CursorStop {
    /// Stops the statement with `why` (rule 3).
    pub fn stop(&self, why: Error) {
        self.shared.stop(why);
    }

    /// True once the statement ended, one way or another.
    pub fn is_over(&self) -> bool {
        let state = self.shared.lock();
        state.end.is_some() || state.finished || state.consumer_gone
    }
}

/// The session's side of a cursor running on its holder.
pub struct CursorHandle<H: Holds> {
    shared: Arc<Shared>,
    back: Option<oneshot::Receiver<H>>,
}

impl<H: Holds> CursorHandle<H> {
    /// Takes the holder back (rule 2): `drain` keeps the rest of the rows
    /// for the portal (charged; past the budget the portal gets 53200),
    /// otherwise the statement stops and its portal is gone.
    pub async fn reclaim(mut self, drain: bool) -> H {
        {
            let mut state = self.shared.lock();
            if drain {
                state.drain = true;
            } else if !state.finished {
                state.stop = Some(closed_portal());
                state.queue.clear();
                state.queued_bytes = 0;
            }
            self.shared.wake_producer(state);
        }
        if !drain {
            self.shared.stop(closed_portal());
        }
        self.shared.ready.notify_one();
        let back = self.back.take().expect("a handle is reclaimed once");
        match back.await {
            Ok(holder) => holder,
            // The thread panicked (and the panic was reported there).
            Err(_) => panic!("a cursor thread ended without giving its connection back"),
        }
    }

    /// Stops the statement without waiting for the holder; whoever has it
    /// last releases it ([`Holds::release`]).
    pub fn abandon(self) {
        self.shared.stop(closed_portal());
    }
}

impl<H: Holds> Drop for CursorHandle<H> {
    /// Dropping the handle alone lets the statement go on (an autocommit
    /// read streams to its end); the holder is released by whoever has it.
    fn drop(&mut self) {
        if let Some(mut back) = self.back.take() {
            // Closed first, so a holder sent from now on fails on the
            // thread, which releases it; one sent before is released here.
            back.close();
            if let Ok(holder) = back.try_recv() {
                holder.release();
            }
        }
    }
}

fn closed_portal() -> Error {
    Error::sql("34000", "the portal was closed: its transaction ended")
}

/// An open cursor: its columns, its rows and (for a session's holder) the
/// way to get the holder back.
pub struct Opened<H: Holds> {
    /// Result columns.
    pub columns: Vec<Column>,
    /// The rows, as the client reads them.
    pub rows: RowSource,
    /// Gives the holder back.
    pub handle: CursorHandle<H>,
    /// The statement had run to its end when it was opened: all its rows
    /// are queued (how long `open` took is how long it ran).
    pub complete: bool,
}

/// Runs `sql` on `holder`'s connection on a thread of its own and returns
/// once its first batch of rows is queued or it ended (or it failed to
/// prepare: then with the holder): a statement of a few rows wakes the
/// session once, not once for its columns and again for its rows.
/// `track` gets the way to stop the statement as soon as it starts (a
/// cancel request may come before it returns). `timeout` is
/// `statement_timeout`, counted from now over the statement's whole life
/// (57014 at the end of it).
pub async fn open<H: Holds>(
    holder: H,
    sql: String,
    params: Vec<Value>,
    with_types: bool,
    memory: Arc<SessionMemory>,
    timeout: Option<Duration>,
    track: impl FnOnce(CursorStop),
) -> std::result::Result<Opened<H>, (H, Error)> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        room: Condvar::new(),
        ready: Notify::new(),
        interrupt: Mutex::new(None),
        timer: Mutex::new(None),
    });
    let (header_tx, header_rx) = oneshot::channel::<Result<Vec<Column>>>();
    let (back_tx, back_rx) = oneshot::channel::<H>();
    let thread_shared = shared.clone();
    let spawned = super::threads::CURSORS.run(move || {
        run(
            holder,
            &sql,
            &params,
            with_types,
            &memory,
            &thread_shared,
            header_tx,
            back_tx,
        )
    });
    if let Err(e) = spawned {
        // The closure (and the holder in it) is gone with the failed spawn.
        panic!("cannot start a cursor thread: {e}");
    }
    if let Some(limit) = timeout {
        let timed = shared.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            timed.stop(Error::sql(
                "57014",
                "canceling statement due to statement timeout",
            ));
        });
        *shared.timer.lock().unwrap_or_else(|e| e.into_inner()) = Some(timer.abort_handle());
    }
    track(CursorStop {
        shared: shared.clone(),
    });
    let header = header_rx.await;
    let handle = CursorHandle {
        shared: shared.clone(),
        back: Some(back_rx),
    };
    match header {
        Ok(Ok(columns)) => {
            let complete = shared.lock().end.is_some();
            Ok(Opened {
                columns,
                complete,
                rows: RowSource { shared },
                handle,
            })
        }
        Ok(Err(e)) => {
            let holder = handle.reclaim(false).await;
            Err((holder, e))
        }
        Err(_) => panic!("a cursor thread ended before it reported its columns"),
    }
}

/// Approximate bytes a row holds (values plus their slots), as memory
/// budgets count them.
pub fn row_bytes(row: &[Value]) -> usize {
    row.iter()
        .map(|v| {
            32 + match v {
                Value::Text(s) => s.len(),
                Value::Blob(b) => b.len(),
                _ => 0,
            }
        })
        .sum()
}

/// The cursor thread.
#[allow(clippy::too_many_arguments)]
fn run<H: Holds>(
    holder: H,
    sql: &str,
    params: &[Value],
    with_types: bool,
    memory: &Arc<SessionMemory>,
    shared: &Shared,
    header: oneshot::Sender<Result<Vec<Column>>>,
    back: oneshot::Sender<H>,
) {
    let mut columns = None;
    let result = produce(
        &holder,
        sql,
        params,
        with_types,
        memory,
        shared,
        header,
        &mut columns,
    );
    // No interrupt may reach the connection once it goes back (rule 3).
    *shared.interrupt.lock().unwrap_or_else(|e| e.into_inner()) = None;
    shared.finish(result);
    // A statement that ended within its first batch: its columns, rows and
    // end are all there when the session wakes.
    announce(&mut columns);
    if let Err(holder) = back.send(holder) {
        holder.release();
    }
}

/// The columns of a statement that runs, not yet sent to the session.
type Unannounced = Option<(oneshot::Sender<Result<Vec<Column>>>, Vec<Column>)>;

/// Sends the columns if they were not sent yet; false when the session is
/// gone.
fn announce(columns: &mut Unannounced) -> bool {
    match columns.take() {
        Some((header, columns)) => header.send(Ok(columns)).is_ok(),
        None => true,
    }
}

#[allow(clippy::too_many_arguments)]
fn produce<H: Holds>(
    holder: &H,
    sql: &str,
    params: &[Value],
    with_types: bool,
    memory: &Arc<SessionMemory>,
    shared: &Shared,
    header: oneshot::Sender<Result<Vec<Column>>>,
    unannounced: &mut Unannounced,
) -> Result<u64> {
    let conn = holder.connection();
    *shared.interrupt.lock().unwrap_or_else(|e| e.into_inner()) =
        Some(Arc::new(conn.get_interrupt_handle()));
    let prepared = exec::prepare(conn, sql, params, with_types);
    let (mut stmt, columns) = match prepared {
        Ok(p) => p,
        Err(e) => {
            let _ = header.send(Err(e));
            return Ok(0);
        }
    };
    let ncols = columns.len();
    // Sent with the first batch, or by `run` at the end (see `open`).
    *unannounced = Some((header, columns));
    let stopped = |e: rusqlite::Error| -> Error {
        // An interrupt we asked for reports our reason, not SQLite's.
        match shared.lock().stop.take() {
            Some(why) => why,
            None => Error::from(e),
        }
    };
    let mut cursor = stmt.raw_query();
    let mut batch = Vec::new();
    let mut bytes = 0usize;
    loop {
        let row = match cursor.next() {
            Ok(Some(row)) => row,
            Ok(None) => break,
            Err(e) => return Err(stopped(e)),
        };
        let mut values = Vec::with_capacity(ncols);
        for i in 0..ncols {
            values.push(row.get::<_, Value>(i).map_err(Error::from)?);
        }
        bytes += row_bytes(&values);
        batch.push(values);
        if batch.len() >= BATCH_ROWS || bytes >= BATCH_BYTES {
            let charge = memory.charge(bytes as u64, "rows waiting for the client")?;
            if shared
                .push((std::mem::take(&mut batch), charge), bytes)
                .is_err()
                || !announce(unannounced)
            {
                return Ok(0);
            }
            bytes = 0;
        }
    }
    drop(cursor);
    if !batch.is_empty() {
        let charge = memory.charge(bytes as u64, "rows waiting for the client")?;
        if shared.push((batch, charge), bytes).is_err() {
            return Ok(0);
        }
    }
    Ok(if ncols == 0 || !stmt.readonly() {
        conn.changes()
    } else {
        0
    })
}
