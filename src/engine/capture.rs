//! Capture: turning each commit on the writer into a log record, and
//! checkpointing SQLite only as far as the log is durable.
//!
//! Runs on the writer connection's thread, under the write lock, right after
//! SQLite's COMMIT and before the next write — the only moment the WAL's
//! newest frames are known to be exactly that transaction's (see
//! `docs/sqlite-notes.md` on missed WAL generations).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

use super::error::{Error, Result};
use super::wal::{WalError, WalReader};
use crate::log::{self, Log, Lsn, Record};

/// WAL frames after which the writer checkpoints (about 16 MB of 4 KB pages).
const CHECKPOINT_FRAMES: u32 = 4000;

/// The capture state of one database's writer.
pub struct Capture {
    wal: WalReader,
    /// The database file, synced by [`Capture::checkpoint`] itself.
    db_path: PathBuf,
    log: Arc<Log>,
    log_dir: PathBuf,
    epoch: Arc<AtomicU64>,
    retain_from: Arc<AtomicU64>,
    /// Frames in the WAL after the last commit, as SQLite's wal_hook says.
    wal_frames: Arc<AtomicU32>,
    /// The database's page size and whether its pages carry checksums,
    /// asked once (neither changes in WAL mode; asked again after
    /// [`Capture::skip_to_end`]).
    layout: Option<(u32, bool)>,
}

impl Capture {
    /// Capture for the database at `db_path`, appending to `log`.
    pub fn new(
        db_path: &Path,
        log: Arc<Log>,
        log_dir: PathBuf,
        epoch: Arc<AtomicU64>,
        retain_from: Arc<AtomicU64>,
        wal_frames: Arc<AtomicU32>,
    ) -> Capture {
        Capture {
            wal: WalReader::new(wal_path(db_path)),
            db_path: db_path.to_path_buf(),
            log,
            log_dir,
            epoch,
            retain_from,
            wal_frames,
            layout: None,
        }
    }

    /// Forgets everything in the WAL so far: the frames there were written
    /// by redo (this node was a secondary) and are in the log already.
    /// Called when the database becomes writable here.
    ///
    /// The writer connection empties the WAL itself (TRUNCATE checkpoint):
    /// SQLite gives a connection that never restarted the WAL a random salt
    /// at its first restart after another connection's, which a reader
    /// cannot tell from a missed generation (see `wal.rs`).
    pub fn skip_to_end(&mut self, conn: &Connection, db_path: &Path) -> Result<()> {
        let (log_frames, copied) = checkpoint(conn, rusqlite::ffi::SQLITE_CHECKPOINT_TRUNCATE)?;
        if log_frames != 0 || copied != 0 {
            return Err(Error::sql(
                "55P03",
                "cannot empty the WAL: readers still use it; retry in a moment",
            ));
        }
        self.wal = WalReader::new(wal_path(db_path));
        self.wal_frames.store(0, Ordering::SeqCst);
        self.layout = None;
        Ok(())
    }

    /// Whether the WAL reader was told of the WAL's changes (tests).
    #[cfg(test)]
    pub fn watches_the_wal(&self) -> bool {
        self.wal.is_watching()
    }

    /// Appends a record for every transaction committed since the last
    /// call; returns the log's end LSN (what the commit must wait for).
    ///
    /// Holds one part of a transaction in memory at a time: the WAL is read
    /// for where each page's image lies, then part by part (issue 16: a
    /// transaction of any size is captured in bounded memory).
    pub fn after_commit(&mut self, conn: &Connection) -> Result<Lsn> {
        if !self.wal.is_watching() {
            // Every connection of the engine goes through the VFS
            // (`Database::open` installs it first), so the reader may look
            // at the WAL's file and header only when the VFS says they
            // changed (`vfs.rs`, "What capture learns from the shim").
            if let Some(changes) = super::vfs::wal_changes_of(conn) {
                self.wal.watch(changes);
            }
        }
        // Defence in depth: what we read must be exactly what SQLite wrote.
        let hooked = self.wal_frames.load(Ordering::SeqCst);
        let transactions = self
            .wal
            .read_commits_to((hooked != 0).then_some(hooked))
            .map_err(capture_error)?;
        if hooked != 0 && hooked != self.wal.frames_read() {
            return Err(Error::sql(
                "XX000",
                format!(
                    "capture read {} WAL frames, but SQLite reports {hooked}: a commit was not captured",
                    self.wal.frames_read()
                ),
            )
            .with_hint("the database stopped accepting writes to keep its log whole; restart the node"));
        }
        let (page_size, sealed) = match self.layout {
            Some(layout) => layout,
            None => *self.layout.insert((
                page_size(conn)?,
                reserved_bytes(conn)? == super::checksum::RESERVED as i32,
            )),
        };
        let epoch = self.epoch.load(Ordering::SeqCst);
        let mut end = self.log.end_lsn();
        for tx in transactions {
            let commit_time_us = now_us();
            for (positions, more) in split_pages(tx.pages, page_size) {
                let mut pages = self.wal.read_pages(&positions).map_err(capture_error)?;
                if sealed {
                    // WAL frames hold pages as SQLite modified them, their
                    // checksum stale (see `vfs`): the log carries them sealed.
                    for (_, page) in &mut pages {
                        super::checksum::seal(page);
                    }
                }
                end = self
                    .log
                    .append(Record {
                        lsn: 0,
                        epoch,
                        commit_time_us,
                        db_size: tx.db_size,
                        page_size,
                        pages,
                        // Pages without their hole: an inserted row changes a
                        // few bytes of a page that is mostly free space.
                        flags: Record::HOLES | if more { Record::TX_MORE } else { 0 },
                    })
                    .map_err(log_error)?;
                crate::crashpoint::hit("capture.part_appended");
            }
        }
        if self.wal.frames_read() >= CHECKPOINT_FRAMES {
            self.checkpoint(conn)?;
        }
        Ok(end)
    }

    /// Copies the WAL into the database file once the log holds (durably)
    /// every frame in it; records the checkpoint LSN only if the copy was
    /// complete and the file synced, then drops log segments nobody needs.
    ///
    /// The writer runs with `synchronous = OFF`, so SQLite syncs neither
    /// the WAL before the copy nor the file after it. The WAL needs no
    /// sync: recovery discards it and redoes the log from the checkpoint
    /// LSN (`recover`). Syncing it cost a write of every frame since the
    /// last checkpoint (about 16 MB) with the write lock held, every 4,000
    /// frames: a stall of every writer (BENCHMARKS.md, "the sixth step").
    /// The file is synced here, before the checkpoint LSN lets the log
    /// before it go.
    fn checkpoint(&mut self, conn: &Connection) -> Result<()> {
        let durable = self.log.sync_blocking().map_err(log_error)?;
        if !checkpoint_passive(conn)? {
            // A reader still uses older frames; try again after later commits.
            return Ok(());
        }
        sync_checkpointed_file(conn, &self.db_path)?;
        log::write_checkpoint(&self.log_dir, durable).map_err(log_error)?;
        let keep = durable.min(self.retain_from.load(Ordering::SeqCst));
        self.log.truncate_before(keep).map_err(log_error)?;
        Ok(())
    }
}

/// A transaction's pages (images, or where they lie) in parts of at most
/// [`Record::PART_BYTES`] of images (at least one page each), each with
/// whether another part follows: a transaction of any size becomes records
/// far below a wire frame.
fn split_pages<P>(pages: Vec<P>, page_size: u32) -> Vec<(Vec<P>, bool)> {
    let per_part = (Record::PART_BYTES / page_size.max(1) as usize).max(1);
    if pages.len() <= per_part {
        return vec![(pages, false)];
    }
    let mut parts = Vec::with_capacity(pages.len().div_ceil(per_part));
    let mut pages = pages.into_iter().peekable();
    while pages.peek().is_some() {
        let part: Vec<_> = pages.by_ref().take(per_part).collect();
        parts.push((part, pages.peek().is_some()));
    }
    parts
}

/// `<db>-wal`.
pub fn wal_path(db_path: &Path) -> PathBuf {
    PathBuf::from(format!("{}-wal", db_path.display()))
}

/// Syncs the database file a complete checkpoint just wrote, before its
/// checkpoint LSN is recorded: the writer and the redo connection run with
/// `synchronous = OFF`, so SQLite did not.
pub(super) fn sync_checkpointed_file(conn: &Connection, db_path: &Path) -> Result<()> {
    super::vfs::sync_database_file(conn).map_err(|source| Error::Io {
        context: format!("cannot sync {} after a checkpoint", db_path.display()),
        source,
    })
}

/// Runs a PASSIVE checkpoint through the C API (the authorizer refuses the
/// PRAGMA to clients); true when every frame was copied.
pub fn checkpoint_passive(conn: &Connection) -> Result<bool> {
    let (log_frames, copied) = checkpoint(conn, rusqlite::ffi::SQLITE_CHECKPOINT_PASSIVE)?;
    Ok(log_frames == copied)
}

/// Runs a checkpoint of `mode`; returns (frames in the WAL, frames copied).
pub(super) fn checkpoint(conn: &Connection, mode: std::ffi::c_int) -> Result<(i32, i32)> {
    let mut log_frames = 0;
    let mut copied = 0;
    // SAFETY: the handle is valid for the connection's lifetime and used on
    // the thread that owns the connection; the out-pointers are live locals.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_wal_checkpoint_v2(
            conn.handle(),
            c"main".as_ptr(),
            mode,
            &mut log_frames,
            &mut copied,
        )
    };
    match rc {
        rusqlite::ffi::SQLITE_OK => Ok((log_frames, copied)),
        rusqlite::ffi::SQLITE_BUSY => Err(Error::sql(
            "55P03",
            "checkpoint could not finish: readers still use the WAL",
        )),
        _ => Err(Error::sql(
            "58030",
            format!("checkpoint failed with SQLite code {rc}"),
        )),
    }
}

fn page_size(conn: &Connection) -> Result<u32> {
    Ok(conn.query_row("PRAGMA page_size", [], |r| r.get::<_, u32>(0))?)
}

/// The bytes SQLite reserves at the end of each page of `conn`'s database
/// ([`super::checksum::RESERVED`] when its pages carry checksums).
pub(super) fn reserved_bytes(conn: &Connection) -> Result<i32> {
    let mut reserve: i32 = -1;
    conn.file_control(
        Some("main"),
        rusqlite::FileControl::ReserveBytes(&mut reserve),
    )?;
    Ok(reserve)
}

pub(super) fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn capture_error(e: WalError) -> Error {
    Error::sql(
        "XX000",
        format!("cannot capture the committed transaction from the WAL: {e}"),
    )
    .with_hint("the database stopped accepting writes to keep its log whole; restart the node")
}

fn log_error(e: log::LogError) -> Error {
    Error::sql("58030", format!("cannot write the transaction log: {e}"))
        .with_hint("the database stopped accepting writes to keep its log whole; fix the disk and restart the node")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_transaction_is_split_into_bounded_parts_in_page_order() {
        // Issue 9 cause 8: a record larger than one wire frame could never
        // be shipped.
        let page = 4096u32;
        let per_part = Record::PART_BYTES / page as usize;
        let pages: Vec<(u32, Vec<u8>)> = (1..=(2 * per_part as u32 + 3))
            .map(|n| (n, vec![0u8; page as usize]))
            .collect();
        let parts = split_pages(pages, page);
        assert_eq!(parts.len(), 3);
        assert_eq!(
            parts
                .iter()
                .map(|(p, more)| (p.len(), *more))
                .collect::<Vec<_>>(),
            [(per_part, true), (per_part, true), (3, false)]
        );
        assert_eq!(parts[1].0[0].0, per_part as u32 + 1);
        let small = split_pages(vec![(1, vec![0; 512])], 512);
        assert_eq!(small.len(), 1);
        assert!(!small[0].1);
    }
}
