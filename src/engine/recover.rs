//! Start-up recovery: make the database file equal to (checkpoint LSN + log)
//! before any connection opens it.
//!
//! SQLite's own WAL is a cache. It may hold a transaction that committed in
//! SQLite but never reached the log (a crash between the two): that
//! transaction was never acknowledged and must not reappear, or this node
//! would diverge from its replicas. So the WAL is discarded and every record
//! from the checkpoint LSN on is redone from the log. Full page images make
//! redo idempotent, so redoing records the file already holds is harmless.
//! Recovery writes the images into the file itself ([`FileRedo`]) rather
//! than through SQLite, which would read the file's schema first: the file
//! may be torn by a checkpoint that a crash interrupted.
//!
//! A replica that stopped while taking a full image (seeding, rewind: the
//! log's `image-pending` is set) has a file that is old or part new, which
//! SQLite may refuse; its log is emptied back to the image's LSN and the
//! file removed, so the image starts over from the primary.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use rusqlite::Connection;

use super::capture::wal_path;
use super::error::{Error, Result};
use super::redo::{Applier, PageSet};
use crate::log::{self, Log, LogError, Lsn, Record};

/// Records redone per SQLite transaction during recovery.
const REDO_BATCH: usize = 256;

/// Opens the log of the database at `db_path` and brings the file up to the
/// end of the log's last whole transaction. Returns the log and that LSN
/// (the applied LSN): a log that ends inside a large transaction (a crash
/// between its parts) keeps those parts, unapplied.
pub fn recover(name: &str, db_path: &Path, log_dir: &Path) -> Result<(Arc<Log>, Lsn)> {
    let fresh_log = !log_dir.exists();
    if fresh_log && db_path.exists() {
        // A database older than its log: its content (WAL included) is the
        // starting point, so fold the WAL into the file first.
        adopt(db_path)?;
    }
    let log = Log::open(log_dir).map_err(|e| log_error(name, e))?;
    if let Some((lsn, epoch)) = log.image_pending() {
        // A replica stopped while being seeded or rewound: its file is the
        // old one or part of the new image, which SQLite may not even open.
        // Start the image over: the log empty at its LSN, the file empty;
        // the primary sends the image again (or a newer one).
        tracing::warn!(
            database = name,
            lsn,
            "stopped while taking a full image: the image starts over"
        );
        if log.end_lsn() > lsn {
            log.restart_at(lsn, epoch).map_err(|e| log_error(name, e))?;
        }
        discard_wal(db_path)?;
        remove_file_if_present(db_path)?;
        return Ok((Arc::new(log), lsn));
    }
    if fresh_log {
        if db_path.exists() {
            // The log must be able to rebuild the file from nothing: start
            // it with a full image of what the file holds now.
            let conn = Connection::open(db_path)?;
            super::image::for_each_image_part(&conn, 1, |part| {
                log.append(part).map(|_| ()).map_err(|e| log_error(name, e))
            })?;
            log.sync_blocking().map_err(|e| log_error(name, e))?;
        }
        log::write_checkpoint(log_dir, log.end_lsn()).map_err(|e| log_error(name, e))?;
    }
    let checkpoint = log::read_checkpoint(log_dir).map_err(|e| log_error(name, e))?;
    discard_wal(db_path)?;
    let mut applied = checkpoint.max(log.first_lsn()).min(log.end_lsn());
    if log.end_lsn() > checkpoint {
        // A bounded slice of the log at a time, up to the end of its last
        // whole transaction: neither a long tail (a replica seeded with a
        // large image) nor a large transaction has to fit in memory.
        let upto = whole_end(&log, checkpoint).map_err(|e| log_error(name, e))?;
        let mut from = checkpoint;
        let mut count = 0;
        let mut file = FileRedo::open(name, db_path)?;
        while from < upto {
            let records: Vec<Record> = log
                .read_some(from, RECOVERY_READ_BYTES)
                .map_err(|e| log_error(name, e))?
                .into_iter()
                .take_while(|r| r.end_lsn() <= upto)
                .collect();
            let Some(last) = records.last() else { break };
            from = last.end_lsn();
            count += records.len();
            file.apply(&records)?;
        }
        file.sync()?;
        if upto > checkpoint {
            applied = upto;
        }
        if upto < log.end_lsn() {
            tracing::warn!(
                database = name,
                from = upto,
                to = log.end_lsn(),
                "the log ends inside a transaction (a crash between its parts): it is not applied"
            );
        }
        tracing::info!(
            database = name,
            records = count,
            from = checkpoint,
            to = applied,
            "recovered from the log"
        );
        log::write_checkpoint(log_dir, applied).map_err(|e| log_error(name, e))?;
    }
    Ok((Arc::new(log), applied))
}

/// The end of the log's last record at or after `from` that does not
/// continue a transaction (`from` when there is none): how far recovery
/// may redo. Known without reading when the log ends whole; otherwise the
/// log is read from `from`, a bounded slice at a time.
fn whole_end(log: &Log, from: Lsn) -> std::result::Result<Lsn, LogError> {
    let end = log.end_lsn();
    if log.boundary_at_or_before(end) == Some(end) {
        return Ok(end);
    }
    let mut at = from;
    let mut whole = from;
    while at < end {
        let records = log.read_some(at, RECOVERY_READ_BYTES)?;
        let Some(last) = records.last() else { break };
        if let Some(r) = records.iter().rfind(|r| !r.continues_transaction()) {
            whole = r.end_lsn();
        }
        at = last.end_lsn();
    }
    Ok(whole)
}

/// How many of `records` (in log order) form whole transactions: everything
/// up to the last record that does not continue a transaction. A full
/// image's parts count as whole (seeding applies them as they come).
pub fn whole_transactions(records: &[Record]) -> usize {
    records
        .iter()
        .rposition(|r| !r.continues_transaction())
        .map_or(0, |i| i + 1)
}

/// Redoes `records` into the file at `db_path`, checkpoints it fully and
/// syncs it.
pub fn redo(db_path: &Path, records: &[Record]) -> Result<()> {
    let mut applier = Applier::open(db_path).map_err(redo_error)?;
    apply_all(&mut applier, records)?;
    let conn = applier.connection();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    super::capture::sync_checkpointed_file(conn, db_path)
}

/// Recovery's redo: the log's page images written straight into the file.
///
/// Recovery runs before any connection opens the file and after SQLite's WAL
/// is discarded, so nothing needs to be read from the file — which may be
/// torn: a checkpoint copies the WAL's pages into it in ascending page
/// order, and a crash in the middle leaves new pages over old ones (or,
/// after a full image, over zeros). Redo through SQLite (`sqlite_dbpage`)
/// loads the schema from the file before it writes anything, and fails on
/// such a file ("database disk image is malformed"); page images written
/// at their offsets make the file whole whatever it held. Each page is the
/// primary's image as its pager wrote it (page 1's header included); after
/// each transaction's last record the file takes that transaction's size.
struct FileRedo {
    name: String,
    path: std::path::PathBuf,
    file: fs::File,
    page_size: Option<u32>,
}

impl FileRedo {
    fn open(name: &str, path: &Path) -> Result<FileRedo> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|source| Error::Io {
                context: format!("cannot open {} for recovery", path.display()),
                source,
            })?;
        Ok(FileRedo {
            name: name.to_string(),
            path: path.to_path_buf(),
            file,
            page_size: None,
        })
    }

    /// Writes whole transactions (or full image parts), in log order.
    fn apply(&mut self, records: &[Record]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let io = |path: &Path| {
            let context = format!("cannot write {} during recovery", path.display());
            move |source| Error::Io { context, source }
        };
        for record in records {
            let page_size = *self.page_size.get_or_insert(record.page_size);
            if record.page_size != page_size {
                return Err(Error::sql(
                    "XX001",
                    format!(
                        "database \"{}\" cannot be recovered: the record at LSN {} has pages of {} bytes, the ones before {page_size}",
                        self.name, record.lsn, record.page_size
                    ),
                ));
            }
            record.check_contents().map_err(|e| {
                Error::sql(
                    "XX001",
                    format!(
                        "database \"{}\" cannot be recovered: the record at LSN {}: {e}",
                        self.name, record.lsn
                    ),
                )
            })?;
            for (pgno, image) in &record.pages {
                let offset = u64::from(*pgno - 1) * u64::from(page_size);
                self.file
                    .write_all_at(image, offset)
                    .map_err(io(&self.path))?;
            }
            if !record.continues_transaction() {
                self.file
                    .set_len(u64::from(record.db_size) * u64::from(page_size))
                    .map_err(io(&self.path))?;
            }
        }
        Ok(())
    }

    /// Makes what was written durable (before the checkpoint LSN moves).
    fn sync(self) -> Result<()> {
        self.file.sync_all().map_err(|source| Error::Io {
            context: format!("cannot sync {} after recovery", self.path.display()),
            source,
        })
    }
}

/// Bytes of log read at a time during recovery.
const RECOVERY_READ_BYTES: u64 = 16 << 20;

fn apply_all(applier: &mut Applier, records: &[Record]) -> Result<()> {
    for chunk in records.chunks(REDO_BATCH) {
        let sets: Vec<PageSet<'_>> = chunk
            .iter()
            .map(|r| PageSet {
                pages: &r.pages,
                db_size: r.db_size,
            })
            .collect();
        // A log may end inside a full image (a replica stopped while being
        // seeded): the rest arrives from the primary.
        let partial = chunk.last().is_some_and(Record::image_continues);
        if partial {
            applier.apply_partial(&sets).map_err(redo_error)?;
        } else {
            applier.apply(&sets).map_err(redo_error)?;
        }
    }
    Ok(())
}

fn adopt(db_path: &Path) -> Result<()> {
    let conn = Connection::open(db_path)?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}

fn discard_wal(db_path: &Path) -> Result<()> {
    for path in [wal_path(db_path), db_path.with_extension("db-shm")] {
        remove_file_if_present(&path)?;
    }
    Ok(())
}

fn remove_file_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            context: format!("cannot remove {}", path.display()),
            source,
        }),
    }
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
