//! Where a statement's SQLite work runs: on the session's own async worker
//! thread ("inline"), or on a blocking thread while the session's task
//! waits for it.
//!
//! A hop to a blocking thread and back costs two context switches and a
//! wake-up of a parked worker — more than a point update itself on a small
//! machine. Measured on a standalone node (`scripts/bench-ab`, rw
//! transaction at `-c 1`): 34–37 context switches per transaction with
//! every statement on a blocking thread, 16 with them inline, and about a
//! quarter less server CPU per transaction. But a statement that runs long
//! inline holds its worker: the sessions queued behind it wait until
//! another worker steals them. So only statements known to be short run
//! inline, and a statement is known by its last run.
//!
//! # Rules
//! 1. **Inline only what ran short last time.** A statement text runs
//!    inline only when its last run in this session took at most
//!    [`INLINE_LIMIT`]. Its first run, and the run after a slow one, go to
//!    a blocking thread; a quick run there makes it inline again. So a
//!    worker is held past the limit at most once in a row per statement
//!    text, by a run that became slow unexpectedly.
//! 2. **A commit runs inline only after a short transaction**: the
//!    commit's own last run was short and no statement of its transaction
//!    ran past the limit (a commit's cost grows with its transaction).
//! 3. **A read that runs inline is stopped at [`READ_BUDGET`]** (or once
//!    its rows pass [`READ_BYTES`]) and runs again on a cursor thread,
//!    where it streams; nothing of the stopped run was sent. A read
//!    changes nothing, so running it again is safe; a write cannot be
//!    stopped half way (inside a block that would roll the block back),
//!    which is why rule 1 is all that bounds a write.
//! 4. **No session sleeps through a wait on its worker.** After an
//!    inline commit the local log's fsync is awaited: the group commit's
//!    leader syncs on its own worker (`Log::wait_durable_here`; one
//!    leader at a time, so one worker at most, for one sync: when records
//!    were written meanwhile, a blocking thread syncs them), every other
//!    committer awaits the durable LSN with its worker free, and so joins
//!    the next fsync. Before it waits, a committer yields once when the next writer
//!    already holds the write lock (`Database::commit_durable`): that
//!    writer was woken on this worker, in the slot no other worker steals
//!    from, and would otherwise wait out this worker's fsync lock in hand.
//!    (Off the worker, a commit's blocking thread waits for its fsync
//!    itself, as before.)
//! 5. **Cancels and timeouts reach an inline statement.** A cancel request
//!    interrupts it from the task that reads the request, on another
//!    worker. `statement_timeout` is watched by the statement itself
//!    (`engine::until`: SQLite's progress handler): a timer task spawned
//!    just before the worker blocks would sit in that worker's own slot
//!    until the statement ended by itself.
//! 6. **Only on a multi-thread runtime**, where another worker goes on
//!    while one is busy; on a current-thread runtime (in-process tests)
//!    every run goes to a blocking thread.
//! 7. **Bounded**: at most [`MEMO`] statement texts are remembered per
//!    session; the memo is cleared when full.
//!
//! This module decides only; the session runs ([`super::session`]). The
//! durations are given to it, so the rules are tested without clocks.

use std::collections::HashMap;
use std::time::Duration;

/// The longest a statement's last run may have taken for it to run inline.
pub const INLINE_LIMIT: Duration = Duration::from_millis(1);

/// How long a read known short may run inline before it is stopped and
/// run again on a cursor thread (rule 3): what a misjudged read costs the
/// sessions behind it at most.
pub const READ_BUDGET: Duration = Duration::from_millis(4);

/// Bytes of rows a read run inline may hold; past them it is stopped and
/// streams from a cursor thread instead (a short run with a big result is
/// streamed, never held whole).
pub const READ_BYTES: usize = crate::engine::cursor::BATCH_BYTES;

/// Statement texts remembered per session.
pub const MEMO: usize = 256;

/// The key under which commits of transaction blocks are remembered.
pub const COMMIT: &str = "COMMIT";

/// A session's memory of how long its statements ran.
#[derive(Debug, Default)]
pub struct Placement {
    last: HashMap<String, Duration>,
    /// A statement of the current transaction ran past the limit.
    heavy: bool,
}

impl Placement {
    /// Whether `sql` runs inline now (rules 1 and 6).
    pub fn inline(&self, sql: &str) -> bool {
        multi_thread() && self.known_short(sql)
    }

    /// Whether the commit of the current transaction runs inline (rule 2).
    pub fn commit_inline(&self) -> bool {
        !self.heavy && self.inline(COMMIT)
    }

    /// Records that `sql` ran for `took` (wherever it ran).
    pub fn ran(&mut self, sql: &str, took: Duration) {
        if took > INLINE_LIMIT {
            self.heavy = true;
        }
        if let Some(last) = self.last.get_mut(sql) {
            *last = took;
            return;
        }
        if self.last.len() >= MEMO {
            self.last.clear();
        }
        self.last.insert(sql.to_string(), took);
    }

    /// Records that read `sql` did not end quickly (it streams, or was
    /// stopped at the budget): its next run streams from the start. A
    /// long read makes no commit heavy.
    pub fn streamed(&mut self, sql: &str) {
        let heavy = self.heavy;
        self.ran(sql, Duration::MAX);
        self.heavy = heavy;
    }

    /// Records work of the current transaction that is not remembered by
    /// text (a COPY's rows, a batch): past the limit, the commit goes to a
    /// blocking thread.
    pub fn worked(&mut self, took: Duration) {
        if took > INLINE_LIMIT {
            self.heavy = true;
        }
    }

    /// The transaction ended (committed, rolled back, or an autocommit
    /// statement done): the next one starts light.
    pub fn transaction_ended(&mut self) {
        self.heavy = false;
    }

    fn known_short(&self, sql: &str) -> bool {
        self.last.get(sql).is_some_and(|took| *took <= INLINE_LIMIT)
    }
}

/// True on a multi-thread tokio runtime (rule 6).
fn multi_thread() -> bool {
    crate::runtime::multi_thread()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_micros(200);
    const LONG: Duration = Duration::from_millis(40);

    #[test]
    fn a_statement_never_run_goes_to_a_blocking_thread() {
        let p = Placement::default();
        assert!(!p.known_short("UPDATE t SET a = 1"));
    }

    #[test]
    fn a_statement_runs_inline_only_while_its_last_run_was_short() {
        let mut p = Placement::default();
        p.ran("UPDATE t SET a = 1", SHORT);
        assert!(p.known_short("UPDATE t SET a = 1"));
        p.ran("UPDATE t SET a = 1", LONG);
        assert!(
            !p.known_short("UPDATE t SET a = 1"),
            "a slow run sends the next one off"
        );
        p.ran("UPDATE t SET a = 1", SHORT);
        assert!(
            p.known_short("UPDATE t SET a = 1"),
            "a quick run brings it back"
        );
        assert!(!p.known_short("UPDATE t SET a = 2"), "texts are told apart");
    }

    #[test]
    fn a_commit_after_a_heavy_statement_goes_to_a_blocking_thread() {
        let mut p = Placement::default();
        p.ran(COMMIT, SHORT);
        assert!(p.known_short(COMMIT) && !p.heavy);
        p.ran("INSERT INTO t SELECT * FROM big", LONG);
        assert!(p.heavy, "the transaction is heavy now");
        p.transaction_ended();
        assert!(!p.heavy, "the next transaction starts light");
    }

    #[test]
    fn a_read_that_streamed_goes_to_a_cursor_thread_and_leaves_the_commit_light() {
        let mut p = Placement::default();
        p.ran("SELECT * FROM t", SHORT);
        p.streamed("SELECT * FROM t");
        assert!(!p.known_short("SELECT * FROM t"));
        assert!(!p.heavy);
    }

    #[test]
    fn the_memo_is_bounded() {
        let mut p = Placement::default();
        for i in 0..MEMO + 10 {
            p.ran(&format!("SELECT {i}"), SHORT);
        }
        assert!(p.last.len() <= MEMO);
    }

    #[test]
    fn nothing_runs_inline_outside_a_multi_thread_runtime() {
        let mut p = Placement::default();
        p.ran("SELECT 1", SHORT);
        assert!(!p.inline("SELECT 1"), "no runtime here");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async { assert!(!p.inline("SELECT 1")) });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        rt.block_on(async { assert!(p.inline("SELECT 1")) });
    }
}
