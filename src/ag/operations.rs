//! Long operations as `sys.dm_operation_status` shows them (Azure's view
//! of the same name): each termination, geo-failover and handover started
//! on this node, and each BACKUP, with its state, progress and error, plus
//! every geo-secondary being seeded right now. The running ones are also
//! `sys.dm_exec_requests` (SQL Server's `percent_complete` of a BACKUP).
//!
//! # A backup's pace
//! A BACKUP also counts the bytes of the database it has read and the
//! read rate in force ([`Operations::reads`], [`Operations::read`]); a
//! RESTORE counts the bytes of the backup file it has gone through (a
//! RESTORE LOG goes through its file twice, to check it and then to apply
//! it, and counts both) and is never paced. `sys.dm_exec_requests` shows,
//! for a running operation:
//! * `estimated_completion_time`: the time elapsed so far times the share
//!   left over the share done, in ms; NULL until some progress is made.
//! * `bytes_per_second`: the bytes read so far over the time elapsed so
//!   far; NULL for an operation that reads no bytes, or before any time
//!   has passed.
//!
//! The instant is always the caller's, so tests inject time.
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
    /// The bytes of the database read so far (a BACKUP), or of the backup
    /// file gone through (a RESTORE); None for an operation that does not
    /// count them.
    pub bytes_processed: Option<u64>,
    /// The most bytes a second it reads; None: unlimited.
    pub rate_limit: Option<u64>,
}

impl Operation {
    /// Milliseconds left at `now_us`, from the pace so far (the module's
    /// rule); None when unknown or when the operation has ended.
    pub fn estimated_completion_ms(&self, now_us: i64) -> Option<u64> {
        let done = self.percent_complete;
        if self.state != OperationState::InProgress || done <= 0.0 {
            return None;
        }
        let elapsed_us = now_us.saturating_sub(self.start_us).max(0) as f64;
        let left_us = elapsed_us * (100.0 - done).max(0.0) / done;
        Some((left_us / 1000.0).round() as u64)
    }

    /// The bytes read a second so far at `now_us` (the module's rule).
    pub fn bytes_per_second(&self, now_us: i64) -> Option<u64> {
        let bytes = self.bytes_processed?;
        let end_us = if self.state == OperationState::InProgress {
            now_us
        } else {
            self.last_modify_us
        };
        let elapsed_us = end_us.saturating_sub(self.start_us);
        (elapsed_us > 0).then(|| (u128::from(bytes) * 1_000_000 / elapsed_us as u128) as u64)
    }
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
            bytes_processed: None,
            rate_limit: None,
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

    /// Operation `id` reads the database (a BACKUP), at most `rate` bytes
    /// a second (0: unlimited): it counts its bytes from 0.
    pub fn reads(&self, id: u64, rate: u64) {
        let mut guard = self.next.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(op) = guard.1.iter_mut().find(|op| op.id == id) {
            op.bytes_processed = Some(op.bytes_processed.unwrap_or(0));
            op.rate_limit = (rate > 0).then_some(rate);
        }
    }

    /// Operation `id` has read `bytes` so far.
    pub fn read(&self, id: u64, bytes: u64, now_us: i64) {
        let mut guard = self.next.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(op) = guard.1.iter_mut().find(|op| op.id == id) {
            if op.state == OperationState::InProgress {
                op.bytes_processed = Some(bytes);
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

    /// A running operation at `percent`, started at 0 µs.
    fn running(percent: f64, bytes: Option<u64>) -> Operation {
        let ops = Operations::default();
        let id = ops.start("BACKUP DATABASE", "app", "", 0);
        if let Some(bytes) = bytes {
            ops.reads(id, 0);
            ops.read(id, bytes, 1);
        }
        ops.progress(id, percent, 1);
        ops.list().remove(0)
    }

    #[test]
    fn an_estimate_is_null_until_some_progress_is_made() {
        assert_eq!(running(0.0, None).estimated_completion_ms(5_000_000), None);
        assert_eq!(
            running(0.5, None).estimated_completion_ms(5_000_000),
            Some(995_000)
        );
    }

    #[test]
    fn an_estimate_is_the_time_so_far_times_the_share_left_over_the_share_done() {
        // A quarter in 2 s: three quarters take 6 s more.
        assert_eq!(
            running(25.0, None).estimated_completion_ms(2_000_000),
            Some(6_000)
        );
        // Later at the same percent, the pace is slower and so the estimate longer.
        assert_eq!(
            running(25.0, None).estimated_completion_ms(4_000_000),
            Some(12_000)
        );
        // All pages read, the log still being copied: nothing left to estimate.
        assert_eq!(
            running(100.0, None).estimated_completion_ms(4_000_000),
            Some(0)
        );
    }

    #[test]
    fn an_ended_operation_has_no_estimate() {
        let ops = Operations::default();
        let a = ops.start("BACKUP DATABASE", "app", "", 0);
        ops.progress(a, 50.0, 1_000_000);
        ops.finish(a, None, 2_000_000);
        let b = ops.start("BACKUP DATABASE", "app", "", 0);
        ops.progress(b, 50.0, 1_000_000);
        ops.finish(b, Some("the disk is full".into()), 2_000_000);
        for op in ops.list() {
            assert_eq!(op.estimated_completion_ms(3_000_000), None, "{op:?}");
        }
    }

    #[test]
    fn the_rate_is_the_bytes_read_so_far_over_the_time_so_far() {
        let op = running(10.0, Some(3 << 20));
        assert_eq!(op.bytes_processed, Some(3 << 20));
        assert_eq!(op.bytes_per_second(2_000_000), Some(3 << 19));
        // No time passed yet: no rate rather than a division by zero.
        assert_eq!(op.bytes_per_second(0), None);
        // An operation that reads no bytes has no rate.
        assert_eq!(running(10.0, None).bytes_per_second(2_000_000), None);
    }

    #[test]
    fn an_ended_operation_keeps_the_rate_it_ended_at() {
        let ops = Operations::default();
        let id = ops.start("BACKUP DATABASE", "app", "", 0);
        ops.reads(id, 0);
        ops.read(id, 4_000_000, 1_000_000);
        ops.finish(id, None, 2_000_000);
        let op = &ops.list()[0];
        assert_eq!(op.bytes_per_second(60_000_000), Some(2_000_000));
        // Bytes told after the end are not counted.
        ops.read(id, 9_000_000, 3_000_000);
        assert_eq!(ops.list()[0].bytes_processed, Some(4_000_000));
    }

    #[test]
    fn a_backup_counts_from_zero_bytes_with_its_limit_and_a_limit_of_zero_is_none() {
        let ops = Operations::default();
        let paced = ops.start("BACKUP DATABASE", "app", "", 0);
        let free = ops.start("BACKUP LOG", "app", "", 0);
        ops.start("FAILOVER", "app", "B", 0);
        ops.reads(paced, 16 << 20);
        ops.reads(free, 0);
        let list = ops.list();
        assert_eq!(
            (list[0].bytes_processed, list[0].rate_limit),
            (Some(0), Some(16 << 20))
        );
        assert_eq!(
            (list[1].bytes_processed, list[1].rate_limit),
            (Some(0), None)
        );
        assert_eq!((list[2].bytes_processed, list[2].rate_limit), (None, None));
    }
}
