//! Taking a backup: a full one (a read snapshot's pages plus the log that
//! makes them consistent) or a log one (the records of an LSN range).

use std::fs;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::claim::{Claim, Claims};
use super::error::{BackupError, Result};
use super::format::{self, Block, BlockKind, Header, Kind, Manifest};
use super::history::{self, Entry};
use crate::engine::Database;
use crate::log::{Log, LogError, Lsn, Record};

/// Most threads that compress a full backup's blocks at once.
const COMPRESSORS: usize = 4;

fn compressors() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, COMPRESSORS)
}

/// Raw bytes of log records per log block.
const LOG_BLOCK_BYTES: u64 = 8 << 20;

/// What to back up, and how.
#[derive(Debug, Clone)]
pub struct BackupRequest {
    /// Full or log.
    pub kind: Kind,
    /// Where to write the backup (on this node).
    pub path: PathBuf,
    /// WITH COPY_ONLY.
    pub copy_only: bool,
    /// WITH COMPRESSION (zstd).
    pub compression: bool,
    /// WITH CHECKSUM: the file is read back and verified before BACKUP returns.
    pub checksum: bool,
    /// The database's availability group here ("" outside one).
    pub group: String,
    /// This node's replica name.
    pub replica: String,
    /// Told the pages copied so far and the database's pages, as a full
    /// backup goes (for `STATS` and `percent_complete`).
    pub progress: Option<Progress>,
    /// `TO URL`: once complete at `path` (a staging file), the backup is
    /// uploaded there, and the history records the URL.
    pub upload: Option<super::remote::Remote>,
    /// Recorded in the node's backup history (and so proven in the
    /// background); false for the backup automatic seeding streams to a
    /// replica, which is removed once sent.
    pub record: bool,
}

/// A progress callback: told (done, total).
#[derive(Clone)]
pub struct Progress(pub Arc<dyn Fn(u64, u64) + Send + Sync>);

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress")
    }
}

/// A finished backup.
#[derive(Debug, Clone)]
pub struct Taken {
    /// Its header.
    pub header: Header,
    /// Its manifest.
    pub manifest: Manifest,
    /// The file's size.
    pub size: u64,
    /// How long it took.
    pub duration: Duration,
    /// Pages in the image (full backups).
    pub pages: u64,
    /// Log records carried.
    pub records: u64,
    /// Where the next log backup starts: one transaction before the end.
    pub next_from: Lsn,
}

/// At start-up: holds each database's log for the next log backup of the
/// chain this node's history shows (its newest backup that is not
/// copy-only), as [`take`] did when that backup was taken.
pub fn hold_logs(engine: &crate::engine::Engine) {
    let entries = history::read(engine.data_dir()).unwrap_or_default();
    for name in engine.names() {
        let newest = entries
            .iter()
            .filter(|e| e.database == name && !e.copy_only)
            .max_by_key(|e| e.end_lsn);
        if let (Some(from), Ok(db)) = (newest.and_then(|e| e.next_from), engine.database(&name)) {
            db.hold_log_for_backups(from);
        }
    }
}

/// Takes a backup of `db` as `request` says, records it in the node's
/// backup history under `data_dir`, and returns what it wrote. The file
/// appears under its name only once complete (it is written beside it
/// first); a failed backup leaves nothing.
pub async fn take(db: Arc<Database>, data_dir: &Path, request: BackupRequest) -> Result<Taken> {
    let started = Instant::now();
    let started_us = now_us();
    if let Some((lsn, _)) = db.log().image_pending() {
        return Err(BackupError::NotSynchronizing {
            database: db.name().to_string(),
            why: format!(
                "it is being seeded (a full image from LSN {lsn} is not wholly redone yet)"
            ),
        });
    }
    let _writing = start_writing(&request.path)?;
    let partial = partial_path(&request.path);
    let outcome = match request.kind {
        Kind::Full => full(&db, &request, &partial, started_us).await,
        Kind::Log => log_backup(&db, data_dir, &request, &partial, started_us).await,
    };
    let mut taken = match outcome {
        Ok(t) => t,
        Err(e) => {
            let _ = fs::remove_file(&partial);
            return Err(e);
        }
    };
    if request.checksum {
        // WITH CHECKSUM: read the whole file back before it takes its name.
        let path = partial.clone();
        let verified = tokio::task::spawn_blocking(move || super::restore::verify(&path))
            .await
            .map_err(|e| BackupError::Io {
                what: "verify",
                path: partial.clone(),
                source: std::io::Error::other(e.to_string()),
            })
            .and_then(|r| r);
        if let Err(e) = verified {
            let _ = fs::remove_file(&partial);
            return Err(e);
        }
    }
    let publish = || -> std::io::Result<()> {
        fs::File::open(&partial)?.sync_all()?;
        fs::rename(&partial, &request.path)?;
        if let Some(dir) = request.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    if let Err(source) = publish() {
        let _ = fs::remove_file(&partial);
        return Err(BackupError::Io {
            what: "write the backup to",
            path: request.path.clone(),
            source,
        });
    }
    if let Some(remote) = &request.upload {
        // The chain moves on (the log hold below) only once the object is
        // there.
        remote.upload(&request.path).await?;
    }
    taken.duration = started.elapsed();
    taken.next_from = one_transaction_before(db.log(), taken.header.end_lsn);
    if !request.copy_only {
        // A backup chain is in use: the log stays until the next log backup.
        db.hold_log_for_backups(taken.next_from);
    }
    if !request.record {
        return Ok(taken);
    }
    let recorded = match &request.upload {
        Some(remote) => PathBuf::from(&remote.url),
        None => request.path.clone(),
    };
    history::append(data_dir, &Entry::of(&taken, &recorded, taken.duration)).map_err(|source| {
        BackupError::Io {
            what: "record the backup in",
            path: history::path(data_dir),
            source,
        }
    })?;
    let telemetry = crate::telemetry::get();
    telemetry.backups.inc();
    telemetry.backup_bytes.inc_by(taken.size);
    tracing::info!(database = %db.name(), path = %request.path.display(), first = taken.header.first_lsn, end = taken.header.end_lsn, bytes = taken.size, "backup taken");
    Ok(taken)
}

static WRITING: Claims<PathBuf> = std::sync::Mutex::new(None);

/// One BACKUP at a time per destination file on this node (they would
/// share the `.partial` file).
fn start_writing(path: &Path) -> Result<Claim<PathBuf>> {
    Claim::take(&WRITING, path.to_path_buf()).ok_or_else(|| BackupError::Io {
        what: "write the backup to",
        path: path.to_path_buf(),
        source: std::io::Error::other("another BACKUP is writing this file"),
    })
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

pub(crate) fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn random_id() -> [u8; 16] {
    *uuid::Uuid::new_v4().as_bytes()
}

fn log_error(db: &Database, e: LogError) -> BackupError {
    match e {
        LogError::OutOfRange { wanted, first, .. } => BackupError::LogMovedOn {
            database: db.name().to_string(),
            wanted,
            first,
        },
        other => BackupError::Log {
            database: db.name().to_string(),
            message: other.to_string(),
        },
    }
}

/// The newest LSN at or before the log's end where a transaction ends:
/// every record before it is whole, and (read after the snapshot began and
/// commits settled) every transaction the snapshot holds is before it.
/// The log remembers no boundary only when no transaction ended since it
/// was opened with a partial one at its end; redo, which applies whole
/// transactions, is then still at `floor` (the applied LSN read before).
fn settled_end(log: &Log, floor: Lsn) -> Lsn {
    log.boundary_at_or_before(log.end_lsn())
        .unwrap_or(floor)
        .max(floor)
}

/// Where the log portion starts: the start of the transaction that ends at
/// `at`, so a restore always overlaps the record before by one transaction
/// and can check that the chain is the same log (its checksum); `at` itself
/// when the log holds nothing before it.
fn one_transaction_before(log: &Log, at: Lsn) -> Lsn {
    let first = log.first_lsn();
    if at <= first {
        return at;
    }
    log.boundary_at_or_before(at - 1)
        .filter(|b| *b >= first)
        .unwrap_or(at)
}

fn io(path: &Path, what: &'static str) -> impl Fn(std::io::Error) -> BackupError {
    let path = path.to_path_buf();
    move |source| BackupError::Io {
        what,
        path: path.clone(),
        source,
    }
}

/// Copies `[from, end)` of the log into blocks, keeping the page hashes and
/// the manifest's record fields up to date.
fn copy_log(
    db: &Database,
    from: Lsn,
    end: Lsn,
    out: &mut format::Writer<BufWriter<crate::durable::FlushBehind>>,
    path: &Path,
    hashes: Option<&mut Vec<u32>>,
    manifest: &mut Manifest,
) -> Result<u64> {
    let log = db.log();
    let mut at = from;
    let mut records = 0u64;
    let mut hashes = hashes;
    let mut payload = Vec::new();
    let mut count = 0u32;
    let mut flush = |payload: &mut Vec<u8>, count: &mut u32| -> Result<()> {
        if *count == 0 {
            return Ok(());
        }
        out.block(&Block {
            kind: BlockKind::Log,
            image_start: false,
            image_more: false,
            count: *count,
            db_size: 0,
            payload: std::mem::take(payload),
        })
        .map_err(io(path, "write the backup to"))?;
        *count = 0;
        Ok(())
    };
    while at < end {
        let batch = log
            .read_some(at, LOG_BLOCK_BYTES)
            .map_err(|e| log_error(db, e))?;
        if batch.is_empty() {
            return Err(log_error(
                db,
                LogError::OutOfRange {
                    wanted: at,
                    first: log.first_lsn(),
                    end: log.end_lsn(),
                },
            ));
        }
        for record in batch {
            if record.lsn >= end {
                break;
            }
            let start = payload.len();
            record.encode_into(&mut payload);
            let crc = u32::from_le_bytes(payload[payload.len() - 4..].try_into().expect("4 bytes"));
            if manifest.first_commit_us == 0 {
                manifest.first_commit_us = record.commit_time_us;
            }
            manifest.last_commit_us = record.commit_time_us;
            manifest.last_record = Some((record.lsn, crc));
            if let Some(h) = hashes.as_deref_mut() {
                overlay(h, &record);
            }
            at = record.end_lsn();
            count += 1;
            records += 1;
            if payload.len() - start > 0 && payload.len() as u64 >= LOG_BLOCK_BYTES {
                flush(&mut payload, &mut count)?;
            }
        }
    }
    flush(&mut payload, &mut count)?;
    Ok(records)
}

/// Applies a record's pages to per-page hashes (index = page number - 1);
/// at a transaction's (or image's) end the database takes its size.
pub(super) fn overlay(hashes: &mut Vec<u32>, record: &Record) {
    for (pgno, image) in &record.pages {
        let i = *pgno as usize - 1;
        if hashes.len() <= i {
            hashes.resize(i + 1, 0);
        }
        hashes[i] = crc32c::crc32c(image);
    }
    if !record.continues_transaction() && !record.image_continues() {
        hashes.resize(record.db_size as usize, 0);
    }
}

async fn full(
    db: &Arc<Database>,
    request: &BackupRequest,
    partial: &Path,
    started_us: i64,
) -> Result<Taken> {
    let mut read_ends = db.subscribe_read_ends();
    read_ends.borrow_and_update();
    let reader = db.reader()?;
    // Every transaction before `floor` committed in SQLite before this
    // point, so the snapshot begun next holds it.
    let floor = db.applied_lsn();
    let reader = tokio::task::spawn_blocking(move || -> crate::engine::Result<_> {
        let conn = reader.conn().sqlite();
        conn.execute_batch("BEGIN")?;
        conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
            r.get::<_, i64>(0)
        })?;
        Ok(reader)
    })
    .await
    .map_err(|e| BackupError::Log {
        database: db.name().to_string(),
        message: e.to_string(),
    })??;
    db.commits_settled().await;
    let log = db.log().clone();
    let end = settled_end(&log, floor);
    log.wait_durable(end).await.map_err(|e| log_error(db, e))?;
    let from = one_transaction_before(&log, floor);
    let epoch = db.epoch_history().last().map_or(1, |(e, _)| *e);
    let db = db.clone();
    let request = request.clone();
    let path = partial.to_path_buf();
    let partial = partial.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<Taken> {
        let file = fs::File::create(&partial).map_err(io(&partial, "write the backup to"))?;
        let conn = reader.conn().sqlite();
        let page_size: u32 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(crate::engine::Error::from)?;
        let header = Header {
            kind: Kind::Full,
            copy_only: request.copy_only,
            compressed: request.compression,
            id: random_id(),
            first_lsn: from,
            end_lsn: end,
            previous: None,
            page_size,
            epoch,
            started_us,
            database: db.name().to_string(),
            group: request.group.clone(),
            replica: request.replica.clone(),
        };
        let mut out = format::Writer::new(
            BufWriter::with_capacity(1 << 20, crate::durable::FlushBehind::new(file)),
            &header,
        )
        .map_err(io(&partial, "write the backup to"))?;
        let mut hashes: Vec<u32> = Vec::new();
        let mut pages = 0u64;
        let mut failed: Option<BackupError> = None;
        // This thread reads the snapshot's pages; up to COMPRESSORS threads
        // encode (compress, checksum) the blocks; one writes them in order.
        let compress = out.compresses();
        let workers = if compress { compressors() } else { 1 };
        let (copied, written) = std::thread::scope(|scope| {
            let (work_tx, work_rx) = std::sync::mpsc::sync_channel::<(u64, Block)>(workers);
            let work_rx = Arc::new(std::sync::Mutex::new(work_rx));
            let (done_tx, done_rx) =
                std::sync::mpsc::sync_channel::<(u64, std::io::Result<Vec<u8>>)>(workers);
            for _ in 0..workers {
                let (rx, tx) = (work_rx.clone(), done_tx.clone());
                scope.spawn(move || loop {
                    let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok((seq, block)) = next else { break };
                    if tx
                        .send((seq, format::encode_block(&block, compress)))
                        .is_err()
                    {
                        break;
                    }
                });
            }
            drop((work_rx, done_tx));
            let out = &mut out;
            let writer = scope.spawn(move || -> std::io::Result<()> {
                let mut waiting = std::collections::BTreeMap::new();
                let mut next = 0u64;
                for (seq, encoded) in done_rx {
                    waiting.insert(seq, encoded?);
                    while let Some(bytes) = waiting.remove(&next) {
                        out.encoded(bytes)?;
                        next += 1;
                    }
                }
                Ok(())
            });
            let mut seq = 0u64;
            let copied = crate::engine::image::for_each_image_part(conn, epoch, |part| {
                if read_ends.has_changed().unwrap_or(false) {
                    failed = Some(BackupError::Interrupted {
                        database: db.name().to_string(),
                    });
                    return Err(crate::engine::Error::Canceled);
                }
                pages += part.pages.len() as u64;
                if let Some(progress) = &request.progress {
                    (progress.0)(pages, u64::from(part.db_size).max(pages));
                }
                overlay(&mut hashes, &part);
                let block = Block {
                    kind: BlockKind::Pages,
                    image_start: part.starts_image(),
                    image_more: part.image_continues(),
                    count: part.pages.len() as u32,
                    db_size: part.db_size,
                    payload: format::pages_payload(&part.pages),
                };
                if work_tx.send((seq, block)).is_err() {
                    // The writer stopped: its error is reported below.
                    return Err(crate::engine::Error::Canceled);
                }
                seq += 1;
                Ok(())
            });
            drop(work_tx);
            let written = writer.join().unwrap_or_else(|_| {
                Err(std::io::Error::other("the backup's writer thread panicked"))
            });
            (copied, written)
        });
        if let Err(e) = written {
            failed.get_or_insert(io(&partial, "write the backup to")(e));
        }
        let _ = conn.execute_batch("COMMIT");
        drop(reader);
        if let Some(e) = failed {
            return Err(e);
        }
        copied?;
        crate::crashpoint::hit("backup.pages_written");
        let mut manifest = Manifest::default();
        let records = copy_log(
            &db,
            from,
            end,
            &mut out,
            &partial,
            Some(&mut hashes),
            &mut manifest,
        )?;
        manifest.db_size = hashes.len() as u32;
        manifest.page_hashes = hashes;
        manifest.finished_us = now_us();
        let (_, size) = out
            .finish(manifest.clone())
            .map_err(io(&partial, "write the backup to"))?;
        Ok(Taken {
            header,
            manifest,
            size,
            duration: Duration::ZERO,
            pages,
            records,
            next_from: end,
        })
    })
    .await
    .map_err(|e| BackupError::Io {
        what: "write the backup to",
        path,
        source: std::io::Error::other(e.to_string()),
    })?
}

async fn log_backup(
    db: &Arc<Database>,
    data_dir: &Path,
    request: &BackupRequest,
    partial: &Path,
    started_us: i64,
) -> Result<Taken> {
    db.commits_settled().await;
    let log = db.log().clone();
    let end = settled_end(&log, db.applied_lsn().max(log.first_lsn()));
    log.wait_durable(end).await.map_err(|e| log_error(db, e))?;
    // Start where the chain's log is held (one transaction before where the
    // last backup of the chain ended, on whichever replica of the group it
    // was taken); without a hold, one transaction before where this node's
    // last backup ended; a node that knows of none starts where its log
    // starts. Overlap is harmless: a restore skips what it holds, after
    // checking the overlapping record is the same.
    let hold = db.log_backup_hold();
    let known = history::read(data_dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.database == db.name() && e.end_lsn <= end)
        .max_by_key(|e| e.end_lsn);
    let from = match known {
        _ if hold != u64::MAX && hold >= log.first_lsn() && hold <= end => hold,
        Some(e) if e.next_from.is_some_and(|n| n >= log.first_lsn()) => {
            e.next_from.unwrap_or(e.end_lsn)
        }
        Some(e) if e.end_lsn >= log.first_lsn() => one_transaction_before(&log, e.end_lsn),
        _ => log.first_lsn(),
    };
    let epoch = db.epoch_history().last().map_or(1, |(e, _)| *e);
    let db = db.clone();
    let request = request.clone();
    let path = partial.to_path_buf();
    let partial = partial.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<Taken> {
        let file = fs::File::create(&partial).map_err(io(&partial, "write the backup to"))?;
        let header = Header {
            kind: Kind::Log,
            copy_only: request.copy_only,
            compressed: request.compression,
            id: random_id(),
            first_lsn: from,
            end_lsn: end,
            previous: None,
            page_size: 0,
            epoch,
            started_us,
            database: db.name().to_string(),
            group: request.group.clone(),
            replica: request.replica.clone(),
        };
        let mut out = format::Writer::new(
            BufWriter::with_capacity(1 << 20, crate::durable::FlushBehind::new(file)),
            &header,
        )
        .map_err(io(&partial, "write the backup to"))?;
        let mut manifest = Manifest::default();
        let records = copy_log(&db, from, end, &mut out, &partial, None, &mut manifest)?;
        manifest.finished_us = now_us();
        let (_, size) = out
            .finish(manifest.clone())
            .map_err(io(&partial, "write the backup to"))?;
        Ok(Taken {
            header,
            manifest,
            size,
            duration: Duration::ZERO,
            pages: 0,
            records,
            next_from: end,
        })
    })
    .await
    .map_err(|e| BackupError::Io {
        what: "write the backup to",
        path,
        source: std::io::Error::other(e.to_string()),
    })?
}
