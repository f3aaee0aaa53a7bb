//! The transaction log: per database, an append-only sequence of records,
//! one per committed transaction, each holding the full images of the pages
//! the transaction changed.
//!
//! # Role
//! The log is the **source of truth**; the SQLite file is a cache of it. A
//! database file is a pure function of (checkpoint LSN, log): on start, a
//! node discards SQLite's unlogged WAL and redoes its log from the
//! checkpoint LSN. Log shipping sends these same records to secondaries,
//! which harden them in their own log and redo them.
//!
//! # Layout
//! ```text
//! DIR/log/<database>/<first-lsn, 16 hex digits>.avlog   segments (64 MiB)
//! DIR/log/<database>/checkpoint                         LSN the file holds
//! DIR/log/<database>/epochs                             epoch history
//! DIR/log/<database>/restart                            a log restart's intent
//! ```
//! The record format is in `record.rs` ([`Record`]); LSNs are byte positions, so the
//! first segment starts at 0 and each record's LSN is the previous record's
//! end.
//!
//! # Durability
//! * [`Log::append`] puts a record at the end of the log in memory;
//!   [`Log::wait_durable`] waits until a durable write covered it (direct
//!   I/O, `O_DIRECT | O_DSYNC`, or a buffered write and `fdatasync` where
//!   the file system refuses direct I/O: `store.rs`, "Direct I/O").
//!   Concurrent waiters share one write (group commit; `store.rs` has its
//!   rules), and a write wakes the waiters it covered, no other
//!   (`waiters.rs`). A commit is acknowledged only after it. A crash loses
//!   the records not yet written, as a power loss loses those not synced.
//! * A crash or power loss can leave a damaged tail — a torn record,
//!   zeroes, the last writes persisted partly or out of order: nothing
//!   there was acknowledged, so [`Log::open`] cuts the last segment back to
//!   its last valid record. Damage followed by a valid record is corruption
//!   of written data, a must-stop error ([`LogError::CorruptBeforeValid`],
//!   [`LogError::Corrupt`]); `store.rs` has the exact rule.
//! * An append that finds no room on disk is refused and the log goes on;
//!   a failed durable write is never retried — the log refuses writes
//!   ([`LogError::Failed`]) until the node restarts and re-reads the disk;
//!   the failure is announced to [`crate::failstop`], and the server exits.
//! * Seeding or rewinding restarts the log at a full image
//!   ([`Log::restart_at`]): segments, epoch history and checkpoint are
//!   replaced all or nothing across a crash (an intent file that
//!   [`Log::open`] finishes).
//! * New segments and the checkpoint file are made durable with an fsync of
//!   the file and of the directory; the checkpoint file is replaced by
//!   rename, so it is always either the old or the new LSN. A new log
//!   folder (and any folder created above it) is synced in its parent
//!   ([`crate::durable::create_dir_all`]).
//!
//! # Invariants
//! * LSNs strictly increase; a record's LSN is where it starts in the log.
//! * The checkpoint LSN is written only after the database file holds every
//!   record before it and has been fsynced.
//! * Segments are deleted only when they end at or before an LSN no reader
//!   (checkpoint, replica) needs.

mod record;
mod store;
mod waiters;

use std::fs;
use std::io::Write;
use std::path::Path;

pub use record::{DecodeError, Header, Lsn, Record};
pub use store::{Log, LogError, RawRecord, SEGMENT_BYTES};
pub use waiters::{LsnWaiter, LsnWaiters};

/// The epoch history of the log in `dir`: `(epoch, first LSN written in
/// it)`, oldest first, like PostgreSQL's timeline history. Two replicas'
/// histories give their fork point: the first LSN of the first epoch they
/// disagree on.
pub fn read_history(dir: &Path) -> Result<Vec<(u64, Lsn)>, LogError> {
    let path = dir.join("epochs");
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(LogError::Io { path, source }),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut parts = line.split_whitespace().map(str::parse::<u64>);
            match (parts.next(), parts.next()) {
                (Some(Ok(epoch)), Some(Ok(lsn))) => Ok((epoch, lsn)),
                _ => Err(LogError::Io {
                    path: path.clone(),
                    source: std::io::Error::other(format!("bad epoch history line {line:?}")),
                }),
            }
        })
        .collect()
}

/// Records durably that `epoch` starts at `first_lsn` (no-op when the
/// history already ends with that epoch or a newer one).
pub fn append_history(dir: &Path, epoch: u64, first_lsn: Lsn) -> Result<(), LogError> {
    let history = read_history(dir)?;
    if history.last().is_some_and(|(e, _)| *e >= epoch) {
        return Ok(());
    }
    let path = dir.join("epochs");
    let io = |source| LogError::Io {
        path: path.clone(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io)?;
    writeln!(f, "{epoch} {first_lsn}").map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

/// Replaces the epoch history with one entry (a log restarted at a full
/// image holds nothing of the epochs before it).
pub fn reset_history(dir: &Path, epoch: u64, first_lsn: Lsn) -> Result<(), LogError> {
    let tmp = dir.join("epochs.tmp");
    let path = dir.join("epochs");
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| LogError::Io { path: p, source }
    };
    let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
    writeln!(f, "{epoch} {first_lsn}").map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, &path).map_err(io(&path))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Where a replica's log stops agreeing with ours, if it does: the first
/// LSN below `their_end` that the two histories attribute to different
/// epochs, or our end when their log goes past it. None when every record
/// they hold is one we hold too (they can continue from their end).
///
/// A history lists `(epoch, first LSN this log holds of it)`. Where a log
/// starts (a replica seeded mid-epoch) does not matter: only LSNs both logs
/// cover are compared, and epochs only change at listed boundaries, so
/// checking the boundaries suffices.
pub fn divergence(
    ours: &[(u64, Lsn)],
    our_end: Lsn,
    theirs: &[(u64, Lsn)],
    their_end: Lsn,
) -> Option<Lsn> {
    let epoch_at =
        |h: &[(u64, Lsn)], lsn: Lsn| h.iter().rev().find(|(_, s)| *s <= lsn).map(|(e, _)| *e);
    let start = ours
        .first()
        .map_or(0, |x| x.1)
        .max(theirs.first().map_or(0, |x| x.1));
    let mut points: Vec<Lsn> = ours
        .iter()
        .chain(theirs)
        .map(|(_, s)| *s)
        .chain(std::iter::once(start))
        .filter(|p| *p >= start && *p < their_end)
        .collect();
    points.sort_unstable();
    let differs = points.into_iter().find(|p| {
        !theirs.is_empty() && !ours.is_empty() && epoch_at(ours, *p) != epoch_at(theirs, *p)
    });
    match differs {
        Some(p) => Some(p.min(our_end)),
        None if their_end > our_end => Some(our_end),
        None => None,
    }
}

/// Reads the checkpoint LSN of the log in `dir` (0 when there is none yet).
pub fn read_checkpoint(dir: &Path) -> Result<Lsn, LogError> {
    let path = dir.join("checkpoint");
    match fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map_err(|_| LogError::Io {
            path: path.clone(),
            source: std::io::Error::other(format!("not an LSN: {:?}", text.trim())),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(source) => Err(LogError::Io { path, source }),
    }
}

/// Durably records that the database file holds everything before `lsn`.
pub fn write_checkpoint(dir: &Path, lsn: Lsn) -> Result<(), LogError> {
    let tmp = dir.join("checkpoint.tmp");
    let path = dir.join("checkpoint");
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| LogError::Io { path: p, source }
    };
    let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
    writeln!(f, "{lsn}").map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, &path).map_err(io(&path))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_history_appends_only_newer_epochs_and_finds_the_fork() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_history(dir.path()).unwrap().is_empty());
        append_history(dir.path(), 1, 0).unwrap();
        append_history(dir.path(), 2, 500).unwrap();
        append_history(dir.path(), 2, 900).unwrap();
        assert_eq!(read_history(dir.path()).unwrap(), [(1, 0), (2, 500)]);
        reset_history(dir.path(), 2, 900).unwrap();
        assert_eq!(read_history(dir.path()).unwrap(), [(2, 900)]);
    }

    #[test]
    fn divergence_is_the_first_lsn_the_histories_attribute_to_different_epochs() {
        let new_primary = [(1, 0), (2, 700)];
        // The old primary stayed in epoch 1 and wrote past 700: its tail diverged.
        assert_eq!(divergence(&new_primary, 900, &[(1, 0)], 950), Some(700));
        // A secondary that stopped at 650 in epoch 1 continues.
        assert_eq!(divergence(&new_primary, 900, &[(1, 0)], 650), None);
        // One seeded mid-epoch (its log starts at 12000) agrees too.
        assert_eq!(divergence(&[(1, 0)], 20000, &[(1, 12000)], 15000), None);
        assert_eq!(divergence(&[(1, 12000)], 20000, &[(1, 0)], 15000), None);
        // Ahead of us in the same epoch: diverged at our end.
        assert_eq!(divergence(&[(1, 0)], 500, &[(1, 0)], 600), Some(500));
        // Two different epoch 2s.
        assert_eq!(
            divergence(&[(1, 0), (2, 500)], 900, &[(1, 0), (2, 700)], 800),
            Some(500)
        );
        // Empty history on one side (nothing written yet): only ends matter.
        assert_eq!(divergence(&[(1, 0)], 100, &[], 0), None);
    }

    #[test]
    fn checkpoint_lsn_survives_and_starts_at_zero() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_checkpoint(dir.path()).unwrap(), 0);
        write_checkpoint(dir.path(), 12345).unwrap();
        assert_eq!(read_checkpoint(dir.path()).unwrap(), 12345);
    }
}
