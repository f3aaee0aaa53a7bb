//! Memory budgets: what availdb's own buffers may hold, per session and per
//! node.
//!
//! # What is budgeted
//! Rows that wait between SQLite and the client socket (a streaming
//! statement's window, [`super::cursor`]), rows that cannot stream and must
//! be held whole (a write's `RETURNING` rows, which go out only after the
//! commit; a suspended portal's rest when its transaction needs the
//! connection for another statement; the rows of a declared cursor's
//! `FETCH n` — `FETCH ALL` streams), and the data of a `COPY … FROM
//! STDIN` until CopyDone. SQLite's own memory (page cache, sorter) is not:
//! it is bounded by SQLite's settings and spills to temporary files.
//!
//! # Rules
//! * Every byte is charged to its session first and to the node second; a
//!   charge that would pass either limit is refused whole, with nothing
//!   charged, and the statement fails with SQLSTATE 53200 naming the limit
//!   and the setting that raises it. Nothing aborts the process.
//! * A [`Charge`] gives its bytes back when it is dropped, so a buffer's
//!   charge lives exactly as long as the buffer (dropped rows, a closed
//!   portal, a failed statement).
//! * The node keeps the peak of what was charged, shown with the process's
//!   resident memory in `sys.dm_os_process_memory`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::error::{Error, Result};

/// Default of `--session-memory-mb`.
pub const DEFAULT_SESSION_MB: u64 = 256;
/// Default of `--node-memory-mb`.
pub const DEFAULT_NODE_MB: u64 = 1024;

/// The node's budget: the sum of every session's charges.
#[derive(Debug)]
pub struct NodeMemory {
    limit: AtomicU64,
    session_limit: AtomicU64,
    used: AtomicU64,
    peak: AtomicU64,
}

impl Default for NodeMemory {
    fn default() -> Self {
        NodeMemory::new(DEFAULT_SESSION_MB << 20, DEFAULT_NODE_MB << 20)
    }
}

impl NodeMemory {
    /// A budget of `node` bytes for the node and `session` for each session.
    pub fn new(session: u64, node: u64) -> NodeMemory {
        NodeMemory {
            limit: AtomicU64::new(node),
            session_limit: AtomicU64::new(session),
            used: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        }
    }

    /// Sets both limits (the node's start-up settings).
    pub fn set_limits(&self, session: u64, node: u64) {
        self.session_limit.store(session, Ordering::SeqCst);
        self.limit.store(node, Ordering::SeqCst);
    }

    /// The node's limit in bytes.
    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::SeqCst)
    }

    /// Each session's limit in bytes.
    pub fn session_limit(&self) -> u64 {
        self.session_limit.load(Ordering::SeqCst)
    }

    /// Bytes charged now, all sessions together.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// The most ever charged at once.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }

    /// A new session's budget.
    pub fn session(self: &Arc<Self>) -> Arc<SessionMemory> {
        Arc::new(SessionMemory {
            node: self.clone(),
            used: AtomicU64::new(0),
        })
    }
}

/// One session's budget, inside the node's.
#[derive(Debug)]
pub struct SessionMemory {
    node: Arc<NodeMemory>,
    used: AtomicU64,
}

impl SessionMemory {
    /// Bytes this session has charged now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// Charges `bytes` for `what` (e.g. "rows of a statement"); refused
    /// whole when the session's or the node's limit would be passed.
    pub fn charge(self: &Arc<Self>, bytes: u64, what: &str) -> Result<Charge> {
        let limit = self.node.session_limit();
        if let Err(used) = add_within(&self.used, bytes, limit) {
            return Err(Error::OutOfMemory {
                what: what.to_string(),
                wanted: bytes,
                used,
                limit,
                scope: "session",
                setting: "--session-memory-mb (session_memory_mb in --config)",
            });
        }
        let node_limit = self.node.limit();
        match add_within(&self.node.used, bytes, node_limit) {
            Ok(now) => {
                self.node.peak.fetch_max(now, Ordering::SeqCst);
            }
            Err(used) => {
                self.used.fetch_sub(bytes, Ordering::SeqCst);
                return Err(Error::OutOfMemory {
                    what: what.to_string(),
                    wanted: bytes,
                    used,
                    limit: node_limit,
                    scope: "node",
                    setting: "--node-memory-mb (node_memory_mb in --config)",
                });
            }
        }
        Ok(Charge {
            memory: self.clone(),
            bytes,
        })
    }
}

/// Adds `bytes` to `counter` unless the sum would pass `limit`; returns the
/// new sum, or what was used when refused.
fn add_within(counter: &AtomicU64, bytes: u64, limit: u64) -> std::result::Result<u64, u64> {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
            used.checked_add(bytes).filter(|sum| *sum <= limit)
        })
        .map(|before| before + bytes)
}

/// Bytes charged to a session and its node, given back on drop.
#[derive(Debug)]
pub struct Charge {
    memory: Arc<SessionMemory>,
    bytes: u64,
}

impl Charge {
    /// The bytes this charge holds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Takes `more` bytes into this charge (refused whole, like
    /// [`SessionMemory::charge`]).
    pub fn grow(&mut self, more: u64, what: &str) -> Result<()> {
        let extra = self.memory.charge(more, what)?;
        self.bytes += extra.bytes;
        std::mem::forget(extra);
        Ok(())
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.memory.used.fetch_sub(self.bytes, Ordering::SeqCst);
        self.memory
            .node
            .used
            .fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

/// The resident memory of this process now and at its peak, in bytes
/// (`VmRSS`, `VmHWM` of `/proc/self/status`; None where there is no such
/// file).
pub fn process_memory() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status.lines().find_map(|line| {
            let kb = line.strip_prefix(name)?.strip_prefix(':')?;
            kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
        })
    };
    Some((field("VmRSS")? * 1024, field("VmHWM")? * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charge_past_the_session_limit_is_refused_whole_with_53200_naming_the_setting() {
        let node = Arc::new(NodeMemory::new(100, 1000));
        let s = node.session();
        let a = s.charge(60, "rows").unwrap();
        let err = s.charge(50, "rows of SELECT").unwrap_err();
        assert_eq!(err.sqlstate(), "53200");
        let text = err.to_string();
        assert!(text.contains("session") && text.contains("100"), "{text}");
        assert!(err.hint().unwrap().contains("--session-memory-mb"));
        assert_eq!((s.used(), node.used()), (60, 60), "nothing of it charged");
        drop(a);
        assert_eq!((s.used(), node.used()), (0, 0));
        assert_eq!(node.peak(), 60);
    }

    #[test]
    fn the_node_limit_counts_every_session() {
        let node = Arc::new(NodeMemory::new(100, 150));
        let (s1, s2) = (node.session(), node.session());
        let _a = s1.charge(100, "rows").unwrap();
        let err = s2.charge(60, "COPY data").unwrap_err();
        assert_eq!(err.sqlstate(), "53200");
        assert!(err.hint().unwrap().contains("--node-memory-mb"));
        assert_eq!(s2.used(), 0, "a refused node charge leaves the session's");
        let mut b = s2.charge(50, "COPY data").unwrap();
        assert!(b.grow(1, "COPY data").is_err());
        assert_eq!(b.bytes(), 50);
        drop(b);
        assert_eq!(node.used(), 100);
    }
}
