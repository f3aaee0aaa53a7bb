//! Long operations as `sys.dm_operation_status` shows them (Azure's view
//! of the same name): each termination, geo-failover and handover started
//! on this node, and each BACKUP, with its state, progress and error, plus
//! every geo-secondary being seeded right now. The running ones are also
//! `sys.dm_exec_requests` (SQL Server's `percent_complete` of a BACKUP).
//!
//! # Invariants
//! * An operation is recorded when it starts (IN_PROGRESS) and finished
//!   exactly once (COMPLETED, or FAILED with the error users got).
//! * The registry is this node's memory: it keeps the last
//!   [`KEPT`] operations and starts empty after a restart.

use std::collections::VecDeque;
use std::sync::Mutex;

/// How many finished and running operations the view keeps.
pub const KEPT: usize = 100;

/// Where an operation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationState {
    /// Running.
    InProgress,
    /// Done.
    Completed,
    /// Ended with an error.
    Failed,
}

impl OperationState {
    /// The name the view shows.
    pub fn desc(self) -> &'static str {
        match self {
            OperationState::InProgress => "IN_PROGRESS",
            OperationState::Completed => "COMPLETED",
            OperationState::Failed => "FAILED",
        }
    }
}

/// One operation.
#[derive(Debug, Clone)]
pub struct Operation {
    /// Its number on this node.
    pub id: u64,
    /// What runs, e.g. `REMOVE SECONDARY (PLANNED)`.
    pub operation: String,
    /// The database.
    pub database: String,
    /// The partner server.
    pub partner: String,
    /// Where it stands.
    pub state: OperationState,
    /// 0 until done, 100 when completed.
    pub percent_complete: f64,
    /// The error users got, when it failed.
    pub error: Option<String>,
    /// When it started (µs since the Unix epoch).
    pub start_us: i64,
    /// When it last changed (µs since the Unix epoch).
    pub last_modify_us: i64,
}

/// The operations of this node.
#[derive(Debug, Default)]
pub struct Operations {
    next: Mutex<(u64, VecDeque<Operation>)>,
}

impl Operations {
    /// Records an operation that starts now; returns its number.
    pub fn start(&self, operation: &str, database: &str, partner: &str, now_us: i64) -> u64 {
        let mut guard = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let (next, list) = &mut *guard;
        *next += 1;
        list.push_back(Operation {
            id: *next,
            operation: operation.to_string(),
            database: database.to_string(),
            partner: partner.to_string(),
            state: OperationState::InProgress,
            percent_complete: 0.0,
            error: None,
            start_us: now_us,
            last_modify_us: now_us,
        });
        while list.len() > KEPT {
            list.pop_front();
        }
        *next
    }

    /// Operation `id` is `percent` done.
    pub fn progress(&self, id: u64, percent: f64, now_us: i64) {
        let mut guard = self.next.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(op) = guard.1.iter_mut().find(|op| op.id == id) {
            if op.state == OperationState::InProgress {
                op.percent_complete = percent.clamp(0.0, 100.0);
                op.last_modify_us = now_us;
            }
        }
    }

    /// Finishes operation `id` with its outcome.
    pub fn finish(&self, id: u64, error: Option<String>, now_us: i64) {
        let mut guard = self.next.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(op) = guard.1.iter_mut().find(|op| op.id == id) {
            op.state = if error.is_some() {
                OperationState::Failed
            } else {
                OperationState::Completed
            };
            if error.is_none() {
                op.percent_complete = 100.0;
            }
            op.error = error;
            op.last_modify_us = now_us;
        }
    }

    /// Every operation kept, oldest first.
    pub fn list(&self) -> Vec<Operation> {
        self.next
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operation_is_in_progress_until_finished_once_with_its_outcome() {
        let ops = Operations::default();
        let a = ops.start("FAILOVER", "app", "A", 10);
        let b = ops.start("REMOVE SECONDARY (PLANNED)", "app", "B", 11);
        assert_eq!(ops.list()[0].state, OperationState::InProgress);
        ops.finish(a, None, 20);
        ops.finish(b, Some("the link is down".into()), 21);
        let list = ops.list();
        assert_eq!(list[0].state.desc(), "COMPLETED");
        assert_eq!(list[0].percent_complete, 100.0);
        assert_eq!(list[1].state.desc(), "FAILED");
        assert_eq!(list[1].error.as_deref(), Some("the link is down"));
        assert_eq!(list[1].last_modify_us, 21);
    }

    #[test]
    fn only_the_last_operations_are_kept() {
        let ops = Operations::default();
        for i in 0..(KEPT as i64 + 5) {
            ops.start("FAILOVER", "app", "A", i);
        }
        let list = ops.list();
        assert_eq!(list.len(), KEPT);
        assert_eq!(list[0].id, 6);
    }
}
