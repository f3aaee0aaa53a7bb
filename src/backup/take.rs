//! Taking a backup: a full one (a read snapshot's pages plus the log that
//! makes them consistent) or a log one (the records of an LSN range).

use std::fs;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::claim::{Claim, Claims};
use super::error::{BackupError, Result};
use super::format::{self, Block, Header, Kind, Manifest};
use super::history::{self, Entry};
use super::rate::{BytesRead, Limit};
use crate::engine::Database;
use crate::log::{Log, LogError, Lsn, Record};

/// Most threads that check, hash and compress a full backup's blocks at once.
const WORKERS: usize = 4;

fn workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, WORKERS)
}

/// Runs `work` on a blocking thread; a thread that panicked is an I/O
/// error of `what` on `path`.
async fn on_blocking_thread<T: Send + 'static>(
    what: &'static str,
    path: PathBuf,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| BackupError::Io {
            what,
            path,
            source: std::io::Error::other(e.to_string()),
        })?
}

/// Raw bytes of log records per log block.
const LOG_BLOCK_BYTES: u64 = 8 << 20;

/// Longest sleep of a rate-limited backup's reader between two checks that
/// no promotion is ending the node's readers.
const PACING_STEP: Duration = Duration::from_millis(50);

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
    /// backup goes, or the LSNs copied of a log backup's range (for
    /// `STATS` and `percent_complete`).
    pub progress: Option<Progress>,
    /// `TO URL`: once complete at `path` (a staging file), the backup is
    /// uploaded there, and the history records the URL.
    pub upload: Option<super::remote::Remote>,
    /// Recorded in the node's backup history (and so proven in the
    /// background); false for the backup automatic seeding streams to a
    /// replica, which is removed once sent.
    pub record: bool,
    /// Yield to commits: the backup's threads run at a lower CPU priority
    /// (nice +10) and in the idle I/O class, so they take only the CPU and
    /// disk that redo, hardening and the node's other work leave; on an
    /// idle machine the backup runs as fast.
    /// Set for a backup on a secondary, whose CPU also hardens the
    /// primary's synchronous commits.
    pub gentle: bool,
    /// Most bytes a second the backup reads of the database (its pages and
    /// the log records it copies; [`super::rate`]); 0: unlimited.
    pub rate: u64,
    /// Told the bytes of the database read so far (its pages and log
    /// records), as the backup goes (for `bytes_processed`).
    pub read: Option<BytesRead>,
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
        let verified = on_blocking_thread("verify", partial.clone(), move || {
            super::restore::verify(&path)
        })
        .await;
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
/// the manifest's record fields up to date; the records read are charged
/// to `limit`, and the reading waits as it says. `progress`, when given, is
/// told the LSNs copied of the range after each batch (a log backup's
/// `STATS` and `percent_complete`).
#[allow(clippy::too_many_arguments)]
fn copy_log(
    db: &Database,
    from: Lsn,
    end: Lsn,
    out: &mut format::Writer<BufWriter<crate::durable::FlushBehind>>,
    path: &Path,
    hashes: Option<&mut Vec<u32>>,
    manifest: &mut Manifest,
    limit: &mut Limit,
    progress: Option<&Progress>,
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
        out.block(&Block::log(*count, std::mem::take(payload)))
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
        let read: usize = batch.iter().map(Record::encoded_len).sum();
        std::thread::sleep(limit.took(read as u64));
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
        if let Some(progress) = progress {
            (progress.0)(at.min(end) - from, end - from);
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
    let gentle = request.gentle;
    on_blocking_thread("write the backup to", path, move || {
        own_thread(gentle, move || -> Result<Taken> {
            let conn = reader.conn().sqlite();
            let layout = super::pages::layout(conn)?;
            let header = Header {
                kind: Kind::Full,
                copy_only: request.copy_only,
                compressed: request.compression,
                id: random_id(),
                first_lsn: from,
                end_lsn: end,
                previous: None,
                page_size: layout.page_size,
                epoch,
                started_us,
                database: db.name().to_string(),
                group: request.group.clone(),
                replica: request.replica.clone(),
            };
            let mut out = create_backup_file(&partial, &header)?;
            let mut limit = Limit::new(request.rate).telling(request.read.clone());
            let copied = copy_pages(
                &db,
                conn,
                &layout,
                &request,
                &mut out,
                &partial,
                &mut read_ends,
                &mut limit,
            );
            let _ = conn.execute_batch("COMMIT");
            drop(reader);
            let (mut hashes, pages) = copied?;
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
                &mut limit,
                None,
            )?;
            manifest.db_size = hashes.len() as u32;
            manifest.page_hashes = hashes;
            finish_backup_file(out, &partial, header, manifest, pages, records)
        })
    })
    .await
}

/// Runs `f` on a thread of its own (named `backup`), at a lower CPU
/// priority when `gentle`, and waits for it: niceness is per thread on
/// Linux and cannot be raised back without privileges, so it is never set
/// on a pooled thread.
fn own_thread<T: Send + 'static>(
    gentle: bool,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let spawned = std::thread::Builder::new()
        .name("backup".into())
        .spawn(move || {
            if gentle {
                yield_to_commits();
            }
            f()
        });
    let failed = |what: &str| BackupError::Io {
        what: "write the backup to",
        path: PathBuf::new(),
        source: std::io::Error::other(what.to_string()),
    };
    match spawned {
        Ok(handle) => handle
            .join()
            .unwrap_or_else(|_| Err(failed("the backup's thread panicked"))),
        Err(e) => Err(failed(&format!("cannot start the backup's thread: {e}"))),
    }
}

/// Lowers the calling thread's priority (a thread the backup started,
/// which ends with it): CPU nice +10, so commits and redo win the cores,
/// and the idle I/O class, so the writeback it starts (`FlushBehind`)
/// waits while the commits' fsyncs are queued (I/O schedulers that keep
/// priorities: mq-deadline, BFQ).
fn yield_to_commits() {
    /// `ioprio_set`'s "a thread or process" and the idle class
    /// (`linux/ioprio.h`).
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_IDLE: libc::c_long = 3 << 13;
    // SAFETY: setpriority and ioprio_set with this thread's id change only
    // its own priorities; a failure (not permitted, not supported) leaves
    // them as they were.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            libc::c_long::from(tid),
            IOPRIO_IDLE,
        );
    }
}

/// Bytes of pages per block: [`super::pages::BLOCK_BYTES`], or with a
/// read rate, a sixteenth of a second of reading (at least 256 KiB), so a
/// paced backup reads, compresses and writes in small steps rather than a
/// large block at a time.
fn block_bytes(rate: u64) -> usize {
    if rate == 0 {
        return super::pages::BLOCK_BYTES;
    }
    usize::try_from(rate / 16)
        .unwrap_or(usize::MAX)
        .clamp(256 << 10, super::pages::BLOCK_BYTES)
}

/// What stopped the writer of a full backup's pages.
enum PagesFailed {
    Write(std::io::Error),
    Damaged(u32),
}

/// Copies the snapshot's pages (`pages.rs`): this thread reads the file,
/// up to [`workers`] threads check, hash and encode (compress) the blocks,
/// one writes them in order; each chunk read is charged to `limit`, and
/// the reading waits as it says (checking for a promotion meanwhile).
/// Returns every page's crc32c (index = page number - 1) and the pages
/// copied.
#[allow(clippy::too_many_arguments)]
fn copy_pages(
    db: &Database,
    conn: &rusqlite::Connection,
    layout: &super::pages::Layout,
    request: &BackupRequest,
    out: &mut format::Writer<BufWriter<crate::durable::FlushBehind>>,
    partial: &Path,
    read_ends: &mut tokio::sync::watch::Receiver<u64>,
    limit: &mut Limit,
) -> Result<(Vec<u32>, u64)> {
    use super::pages::{self, Chunk, EncodeError, Encoded};
    let compress = out.compresses();
    let checksummed = layout.checksummed;
    let page_size = layout.page_size as usize;
    let db_size = layout.db_size;
    let gentle = request.gentle;
    let workers = workers();
    let wal = crate::engine::wal_path(db.path());
    let pool = pages::Pool::default();
    let pool = &pool;
    let mut interrupted = false;
    let (read, written) = std::thread::scope(|scope| {
        // Queues of one: about (3 + 3 × workers) blocks of 8 MiB in use at
        // most (read, queued, each worker's input and output, written).
        let (work_tx, work_rx) = std::sync::mpsc::sync_channel::<Chunk>(1);
        let work_rx = Arc::new(std::sync::Mutex::new(work_rx));
        let (done_tx, done_rx) =
            std::sync::mpsc::sync_channel::<std::result::Result<Encoded, EncodeError>>(1);
        for _ in 0..workers {
            let (rx, tx) = (work_rx.clone(), done_tx.clone());
            scope.spawn(move || {
                if gentle {
                    yield_to_commits();
                }
                let mut compressor = match compress.then(|| zstd::bulk::Compressor::new(1)) {
                    Some(Ok(c)) => Some(c),
                    Some(Err(e)) => {
                        let _ = tx.send(Err(EncodeError::Io(e)));
                        return;
                    }
                    None => None,
                };
                loop {
                    let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok(chunk) = next else { break };
                    let encoded =
                        pages::encode(chunk, page_size, checksummed, compressor.as_mut(), pool);
                    if tx.send(encoded).is_err() {
                        break;
                    }
                }
            });
        }
        drop((work_rx, done_tx));
        let progress = request.progress.clone();
        let writer = scope.spawn(
            move || -> std::result::Result<(Vec<u32>, u64), PagesFailed> {
                if gentle {
                    yield_to_commits();
                }
                let mut hashes = vec![0u32; db_size as usize];
                let mut copied = 0u64;
                let mut waiting = std::collections::BTreeMap::new();
                let mut next = 0u64;
                for encoded in done_rx {
                    let encoded = match encoded {
                        Ok(e) => e,
                        Err(EncodeError::Damaged(pgno)) => return Err(PagesFailed::Damaged(pgno)),
                        Err(EncodeError::Io(e)) => return Err(PagesFailed::Write(e)),
                    };
                    waiting.insert(encoded.seq, encoded);
                    while let Some(block) = waiting.remove(&next) {
                        out.encoded(&block.bytes).map_err(PagesFailed::Write)?;
                        pool.give(block.bytes);
                        copied += block.hashes.len() as u64;
                        for (pgno, hash) in block.hashes {
                            hashes[pgno as usize - 1] = hash;
                        }
                        next += 1;
                        if let Some(progress) = &progress {
                            (progress.0)(copied, u64::from(db_size).max(copied));
                        }
                    }
                }
                Ok((hashes, copied))
            },
        );
        let read = pages::for_each_chunk(
            conn,
            layout,
            &wal,
            db.path(),
            block_bytes(request.rate),
            pool,
            |chunk| {
                let mut wait = limit.took(chunk.bytes.len() as u64);
                loop {
                    if read_ends.has_changed().unwrap_or(false) {
                        interrupted = true;
                        return Ok(false);
                    }
                    if wait.is_zero() {
                        break;
                    }
                    // In steps, so a promotion ending readers is seen soon.
                    let step = wait.min(PACING_STEP);
                    std::thread::sleep(step);
                    wait -= step;
                }
                // A failed send: the writer stopped, its error is reported below.
                Ok(work_tx.send(chunk).is_ok())
            },
        );
        drop(work_tx);
        let written = writer.join().unwrap_or_else(|_| {
            Err(PagesFailed::Write(std::io::Error::other(
                "the backup's writer thread panicked",
            )))
        });
        (read, written)
    });
    if interrupted {
        return Err(BackupError::Interrupted {
            database: db.name().to_string(),
        });
    }
    let (hashes, copied) = match written {
        Ok(done) => done,
        Err(PagesFailed::Write(e)) => return Err(io(partial, "write the backup to")(e)),
        Err(PagesFailed::Damaged(pgno)) => {
            crate::engine::damage::report(db.path(), pgno);
            return Err(BackupError::Engine(crate::engine::Error::CorruptPage {
                database: db.name().to_string(),
                pgno: Some(pgno),
                irreparable: false,
            }));
        }
    };
    read?;
    if copied != u64::from(db_size) {
        return Err(BackupError::Engine(crate::engine::Error::sql(
            "XX001",
            format!("a full backup read {copied} pages of a database of {db_size}"),
        )));
    }
    Ok((hashes, copied))
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
    on_blocking_thread("write the backup to", path, move || -> Result<Taken> {
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
        let mut out = create_backup_file(&partial, &header)?;
        let mut manifest = Manifest::default();
        let mut limit = Limit::new(request.rate).telling(request.read.clone());
        let records = copy_log(
            &db,
            from,
            end,
            &mut out,
            &partial,
            None,
            &mut manifest,
            &mut limit,
            request.progress.as_ref(),
        )?;
        finish_backup_file(out, &partial, header, manifest, 0, records)
    })
    .await
}

/// Creates the backup file at `partial` and writes its header: buffered,
/// with writeback started as it goes (`durable::FlushBehind`).
fn create_backup_file(
    partial: &Path,
    header: &Header,
) -> Result<format::Writer<BufWriter<crate::durable::FlushBehind>>> {
    let file = fs::File::create(partial).map_err(io(partial, "write the backup to"))?;
    format::Writer::new(
        BufWriter::with_capacity(1 << 20, crate::durable::FlushBehind::new(file)),
        header,
    )
    .map_err(io(partial, "write the backup to"))
}

/// Ends a backup file written through [`create_backup_file`] with its
/// manifest (stamped now) and describes it; the caller times it and may
/// move on where the next log backup starts.
fn finish_backup_file(
    out: format::Writer<BufWriter<crate::durable::FlushBehind>>,
    partial: &Path,
    header: Header,
    mut manifest: Manifest,
    pages: u64,
    records: u64,
) -> Result<Taken> {
    manifest.finished_us = now_us();
    let (_, size) = out
        .finish(manifest.clone())
        .map_err(io(partial, "write the backup to"))?;
    let next_from = header.end_lsn;
    Ok(Taken {
        header,
        manifest,
        size,
        duration: Duration::ZERO,
        pages,
        records,
        next_from,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paced_backup_reads_blocks_of_a_sixteenth_of_a_second_between_256_kib_and_the_full_block() {
        assert_eq!(block_bytes(0), super::super::pages::BLOCK_BYTES);
        assert_eq!(block_bytes(16 << 20), 1 << 20);
        assert_eq!(block_bytes(1 << 20), 256 << 10);
        assert_eq!(block_bytes(1 << 40), super::super::pages::BLOCK_BYTES);
    }
}
