//! Start-up recovery: make the database file equal to (checkpoint LSN + log)
//! before any connection opens it.
//!
//! SQLite's own WAL is a cache. It may hold a transaction that committed in
//! SQLite but never reached the log (a crash between the two): that
//! transaction was never acknowledged and must not reappear, or this node
//! would diverge from its replicas. So the WAL is discarded and every record
//! from the checkpoint LSN on is redone from the log. Full page images make
//! redo idempotent, so redoing records the file already holds is harmless.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use rusqlite::Connection;

use super::capture::wal_path;
use super::error::{Error, Result};
use super::redo::{Applier, PageSet};
use crate::log::{self, Log, LogError, Record};

/// Records redone per SQLite transaction during recovery.
const REDO_BATCH: usize = 256;

/// Opens the log of the database at `db_path` and brings the file up to the
/// log's end. Returns the log.
pub fn recover(name: &str, db_path: &Path, log_dir: &Path) -> Result<Arc<Log>> {
    let fresh_log = !log_dir.exists();
    if fresh_log && db_path.exists() {
        // A database older than its log: its content (WAL included) is the
        // starting point, so fold the WAL into the file first.
        adopt(db_path)?;
    }
    let log = Log::open(log_dir).map_err(|e| log_error(name, e))?;
    if fresh_log {
        if db_path.exists() {
            // The log must be able to rebuild the file from nothing: start
            // it with a full image of what the file holds now.
            let conn = Connection::open(db_path)?;
            let image = super::capture::base_image(&conn, 1)?;
            if !image.pages.is_empty() {
                log.append(image).map_err(|e| log_error(name, e))?;
                log.sync_blocking().map_err(|e| log_error(name, e))?;
            }
        }
        log::write_checkpoint(log_dir, log.end_lsn()).map_err(|e| log_error(name, e))?;
    }
    let checkpoint = log::read_checkpoint(log_dir).map_err(|e| log_error(name, e))?;
    discard_wal(db_path)?;
    if log.end_lsn() > checkpoint {
        let records = log.read_from(checkpoint).map_err(|e| log_error(name, e))?;
        redo(db_path, &records)?;
        tracing::info!(
            database = name,
            records = records.len(),
            from = checkpoint,
            to = log.end_lsn(),
            "recovered from the log"
        );
        log::write_checkpoint(log_dir, log.end_lsn()).map_err(|e| log_error(name, e))?;
    }
    Ok(Arc::new(log))
}

/// Redoes `records` into the file at `db_path` and checkpoints it fully.
pub fn redo(db_path: &Path, records: &[Record]) -> Result<()> {
    let mut applier = Applier::open(db_path).map_err(redo_error)?;
    for chunk in records.chunks(REDO_BATCH) {
        let sets: Vec<PageSet<'_>> = chunk
            .iter()
            .map(|r| PageSet {
                pages: &r.pages,
                db_size: r.db_size,
            })
            .collect();
        applier.apply(&sets).map_err(redo_error)?;
    }
    applier
        .connection()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    Ok(())
}

fn adopt(db_path: &Path) -> Result<()> {
    let conn = Connection::open(db_path)?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}

fn discard_wal(db_path: &Path) -> Result<()> {
    for path in [wal_path(db_path), db_path.with_extension("db-shm")] {
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io {
                    context: format!("cannot remove {}", path.display()),
                    source,
                })
            }
        }
    }
    Ok(())
}

fn log_error(name: &str, e: LogError) -> Error {
    Error::sql(
        "XX001",
        format!("database \"{name}\" cannot be recovered: {e}"),
    )
}

fn redo_error(e: super::redo::RedoError) -> Error {
    Error::sql("XX000", format!("redo failed: {e}"))
}
