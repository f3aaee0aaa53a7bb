//! Segment files on disk: appending, group commit, reading back, recovery.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::record::{DecodeError, Lsn, Record};

/// A segment is closed and a new one started past this size.
pub const SEGMENT_BYTES: u64 = 64 << 20;

/// The segment size in use: [`SEGMENT_BYTES`], or `AVAILDB_LOG_SEGMENT_BYTES`
/// (at least 64 KiB) — a knob for tests that need the log to be truncated
/// (and replicas to be seeded from full images) without writing 64 MiB.
pub fn segment_bytes() -> u64 {
    static SIZE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SIZE.get_or_init(|| {
        std::env::var("AVAILDB_LOG_SEGMENT_BYTES")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(SEGMENT_BYTES, |n| n.max(64 << 10))
    })
}

/// Log errors.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The file system failed us.
    #[error("log I/O error in {path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// A record before the end of the log is damaged: the log cannot be
    /// trusted past it. This is a must-stop error.
    #[error("log record at LSN {lsn} in {path} is corrupt ({cause}); restore this database from a replica")]
    Corrupt {
        /// Segment file.
        path: PathBuf,
        /// Position of the bad record.
        lsn: Lsn,
        /// What is wrong.
        cause: DecodeError,
    },
    /// A read asked for records the log no longer (or never) held.
    #[error("LSN {wanted} is not in the log, which holds {first}..{end}")]
    OutOfRange {
        /// Requested position.
        wanted: Lsn,
        /// First LSN held.
        first: Lsn,
        /// End of the log.
        end: Lsn,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone)]
struct Segment {
    first_lsn: Lsn,
    path: PathBuf,
}

/// A record as stored: its bytes and the fields a sender needs.
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// Where it starts.
    pub lsn: Lsn,
    /// Its commit time (µs since the Unix epoch).
    pub commit_time_us: i64,
    /// The encoded record, checksum included.
    pub bytes: Arc<[u8]>,
}

impl RawRecord {
    /// Where the next record starts.
    pub fn end_lsn(&self) -> Lsn {
        self.lsn + self.bytes.len() as u64
    }
}

/// Recent records kept in memory for senders (bytes).
const RECENT_BYTES: u64 = 32 << 20;

struct Tail {
    /// The newest records, so senders that keep up never read the disk.
    recent: std::collections::VecDeque<RawRecord>,
    recent_bytes: u64,
    segments: Vec<Segment>,
    file: Arc<File>,
    /// Bytes written to the current segment.
    len: u64,
    /// LSN the next record gets.
    end: Lsn,
    /// Encoding buffer, reused.
    buf: Vec<u8>,
    /// Bumped by [`Log::reset_to`]: a sync of the file that was current
    /// before a reset says nothing about the log after it.
    generation: u64,
    /// The last record held: where it starts and its stored crc32c.
    last: Option<(Lsn, u32)>,
}

/// The group-commit turn of one waiter; handed back even when the waiter
/// is dropped mid-sync.
struct SyncTurn<'a>(&'a AtomicBool);

impl Drop for SyncTurn<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The append-only log of one database.
pub struct Log {
    dir: PathBuf,
    tail: Mutex<Tail>,
    durable: watch::Sender<Lsn>,
    written: watch::Sender<Lsn>,
    syncing: AtomicBool,
    /// Commit time of the last record appended (µs since the Unix epoch).
    last_commit_us: std::sync::atomic::AtomicI64,
}

impl Log {
    /// Opens (or creates) the log in `dir`. A torn record at the very end is
    /// cut off — it was never acknowledged; damage anywhere else is an error.
    pub fn open(dir: &Path) -> Result<Log, LogError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut segments = list_segments(dir)?;
        if segments.is_empty() {
            let path = segment_path(dir, 0);
            create_segment(dir, &path)?;
            segments.push(Segment { first_lsn: 0, path });
        }
        let last = segments.last().expect("at least one segment").clone();
        let (end, len, mut last_record) = scan_segment(&last, true)?;
        if last_record.is_none() && segments.len() > 1 {
            // The last segment is empty (it had just rolled): the last
            // record closes the one before.
            last_record = scan_segment(&segments[segments.len() - 2], false)?.2;
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&last.path)
            .map_err(io_err(&last.path))?;
        Ok(Log {
            dir: dir.to_path_buf(),
            tail: Mutex::new(Tail {
                recent: std::collections::VecDeque::new(),
                recent_bytes: 0,
                segments,
                file: Arc::new(file),
                len,
                end,
                buf: Vec::new(),
                generation: 0,
                last: last_record,
            }),
            durable: watch::channel(end).0,
            written: watch::channel(end).0,
            syncing: AtomicBool::new(false),
            last_commit_us: std::sync::atomic::AtomicI64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// LSN the next record will get (everything before it is written).
    pub fn end_lsn(&self) -> Lsn {
        self.lock().end
    }

    /// Everything before this LSN is on stable storage.
    pub fn durable_lsn(&self) -> Lsn {
        *self.durable.borrow()
    }

    /// The last record held: where it starts and its stored crc32c (None
    /// for an empty log).
    pub fn last_record(&self) -> Option<(Lsn, u32)> {
        self.lock().last
    }

    /// The stored crc32c of the record that starts at `lsn` and where it
    /// ends; None when no record starts there (or it is no longer held).
    pub fn record_checksum_at(&self, lsn: Lsn) -> Result<Option<(Lsn, u32)>, LogError> {
        if lsn < self.first_lsn() || lsn >= self.end_lsn() {
            return Ok(None);
        }
        match self.read_raw(lsn, 1) {
            Ok(records) => Ok(records.first().filter(|r| r.lsn == lsn).map(|r| {
                let crc =
                    u32::from_le_bytes(r.bytes[r.bytes.len() - 4..].try_into().expect("4 bytes"));
                (r.end_lsn(), crc)
            })),
            // Not a record boundary of this log.
            Err(LogError::Corrupt { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// First LSN still held.
    pub fn first_lsn(&self) -> Lsn {
        self.lock().segments[0].first_lsn
    }

    /// Appends a record (its `lsn` is assigned here) without waiting for
    /// durability; returns the record's end LSN, to pass to
    /// [`Log::wait_durable`] before acknowledging the commit.
    pub fn append(&self, mut record: Record) -> Result<Lsn, LogError> {
        let mut tail = self.lock();
        record.lsn = tail.end;
        self.last_commit_us
            .store(record.commit_time_us, Ordering::Relaxed);
        let len = record.encoded_len() as u64;
        if tail.len > 0 && tail.len + len > segment_bytes() {
            self.roll(&mut tail)?;
        }
        let mut buf = std::mem::take(&mut tail.buf);
        buf.clear();
        record.encode_into(&mut buf);
        let path = tail.segments.last().expect("a segment").path.clone();
        (&*tail.file).write_all(&buf).map_err(io_err(&path))?;
        let crc = u32::from_le_bytes(buf[buf.len() - 4..].try_into().expect("4 bytes"));
        tail.last = Some((record.lsn, crc));
        let raw = RawRecord {
            lsn: record.lsn,
            commit_time_us: record.commit_time_us,
            bytes: Arc::from(buf.as_slice()),
        };
        tail.buf = buf;
        tail.recent_bytes += len;
        tail.recent.push_back(raw);
        while tail.recent_bytes > RECENT_BYTES && tail.recent.len() > 1 {
            let old = tail.recent.pop_front().expect("not empty");
            tail.recent_bytes -= old.bytes.len() as u64;
        }
        tail.len += len;
        tail.end += len;
        self.written.send_replace(tail.end);
        Ok(tail.end)
    }

    /// Closes the current segment (synced, so durability never has to look
    /// back) and starts a new one at the current end.
    fn roll(&self, tail: &mut Tail) -> Result<(), LogError> {
        let old = tail.segments.last().expect("a segment").path.clone();
        tail.file.sync_data().map_err(io_err(&old))?;
        self.durable.send_if_modified(|d| {
            let moved = *d < tail.end;
            *d = (*d).max(tail.end);
            moved
        });
        let path = segment_path(&self.dir, tail.end);
        create_segment(&self.dir, &path)?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        tail.segments.push(Segment {
            first_lsn: tail.end,
            path,
        });
        tail.file = Arc::new(file);
        tail.len = 0;
        Ok(())
    }

    /// Waits until everything before `lsn` is durable. Group commit: one
    /// waiter at a time syncs everything written so far; the others wait
    /// for that sync instead of issuing their own.
    ///
    /// Cancellation-safe: a waiter dropped in the middle of its sync (a
    /// commit whose other half failed first, a timeout) hands the turn on,
    /// so the log never stops becoming durable.
    pub async fn wait_durable(&self, lsn: Lsn) -> Result<(), LogError> {
        let mut rx = self.durable.subscribe();
        loop {
            if *rx.borrow_and_update() >= lsn {
                return Ok(());
            }
            if self.syncing.swap(true, Ordering::AcqRel) {
                // Another waiter is syncing; its result may cover us.
                let _ =
                    tokio::time::timeout(std::time::Duration::from_millis(50), rx.changed()).await;
                continue;
            }
            let _turn = SyncTurn(&self.syncing);
            let (file, target, path, generation) = self.sync_target();
            let synced = tokio::task::spawn_blocking(move || file.sync_data())
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
            synced.map_err(io_err(&path))?;
            self.mark_durable(target, generation);
        }
    }

    /// Syncs now, from a blocking context (e.g. before a checkpoint).
    pub fn sync_blocking(&self) -> Result<Lsn, LogError> {
        let (file, target, path, generation) = self.sync_target();
        file.sync_data().map_err(io_err(&path))?;
        self.mark_durable(target, generation);
        Ok(target)
    }

    /// What a sync started now covers: the current file, up to the end.
    fn sync_target(&self) -> (Arc<File>, Lsn, PathBuf, u64) {
        let tail = self.lock();
        (
            tail.file.clone(),
            tail.end,
            tail.segments.last().expect("a segment").path.clone(),
            tail.generation,
        )
    }

    /// Publishes that everything before `target` is durable, unless the log
    /// was reset since the sync started (then it covered another file).
    fn mark_durable(&self, target: Lsn, generation: u64) {
        let tail = self.lock();
        if tail.generation != generation {
            return;
        }
        self.durable.send_if_modified(|d| {
            let moved = *d < target;
            *d = (*d).max(target);
            moved
        });
    }

    /// All records from `from` (a record boundary) to the end, in order.
    pub fn read_from(&self, from: Lsn) -> Result<Vec<Record>, LogError> {
        self.read_some(from, u64::MAX)
    }

    /// Records from `from` (a record boundary) in order, stopping after
    /// about `max_bytes` (at least one record when there is one).
    pub fn read_some(&self, from: Lsn, max_bytes: u64) -> Result<Vec<Record>, LogError> {
        let (segments, end) = {
            let tail = self.lock();
            (tail.segments.clone(), tail.end)
        };
        let first = segments[0].first_lsn;
        if from < first || from > end {
            return Err(LogError::OutOfRange {
                wanted: from,
                first,
                end,
            });
        }
        let corrupt = |seg: &Segment, lsn: Lsn| {
            let path = seg.path.clone();
            move |cause| LogError::Corrupt { path, lsn, cause }
        };
        let mut out = Vec::new();
        let mut budget = max_bytes;
        for (i, seg) in segments.iter().enumerate() {
            let seg_end = segments.get(i + 1).map_or(end, |next| next.first_lsn);
            if seg_end <= from {
                continue;
            }
            // `from` is a record boundary, so reading can start right there.
            let start = from.max(seg.first_lsn);
            let len = (seg_end - start).min(budget);
            let cut = start + len < seg_end;
            let bytes = read_range(&seg.path, start - seg.first_lsn, len)?;
            let mut at = 0usize;
            while at < bytes.len() {
                let lsn = start + at as u64;
                let (record, n) = match Record::decode(&bytes[at..]) {
                    Err(DecodeError::Torn { .. }) if cut => {
                        if out.is_empty() {
                            // The first record alone is over the budget:
                            // its header says how long it is.
                            let offset = lsn - seg.first_lsn;
                            let header = read_range(&seg.path, offset, 8)?;
                            let body = header
                                .get(4..8)
                                .map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
                            let whole = read_range(&seg.path, offset, 12 + body as u64)?;
                            out.push(Record::decode(&whole).map_err(corrupt(seg, lsn))?.0);
                        }
                        return Ok(out);
                    }
                    decoded => decoded.map_err(corrupt(seg, lsn))?,
                };
                if record.lsn != lsn {
                    let cause =
                        DecodeError::Inconsistent(format!("record says LSN {}", record.lsn));
                    return Err(corrupt(seg, lsn)(cause));
                }
                out.push(record);
                at += n;
            }
            budget -= len;
            if cut || budget == 0 {
                break;
            }
        }
        Ok(out)
    }

    /// Records from `from` (a record boundary) as stored, for shipping:
    /// from memory when they are recent, else read and checked from disk.
    /// Stops after about `max_bytes` (at least one record when there is one).
    pub fn read_raw(&self, from: Lsn, max_bytes: u64) -> Result<Vec<RawRecord>, LogError> {
        {
            let tail = self.lock();
            if from == tail.end {
                return Ok(Vec::new());
            }
            if tail.recent.front().is_some_and(|r| r.lsn <= from) {
                let mut out = Vec::new();
                let mut size = 0u64;
                for r in tail.recent.iter().skip_while(|r| r.lsn < from) {
                    if out.is_empty() && r.lsn != from {
                        break;
                    }
                    if !out.is_empty() && size + r.bytes.len() as u64 > max_bytes {
                        break;
                    }
                    size += r.bytes.len() as u64;
                    out.push(r.clone());
                }
                if !out.is_empty() {
                    return Ok(out);
                }
            }
        }
        Ok(self
            .read_some(from, max_bytes)?
            .into_iter()
            .map(|r| {
                let mut bytes = Vec::with_capacity(r.encoded_len());
                r.encode_into(&mut bytes);
                RawRecord {
                    lsn: r.lsn,
                    commit_time_us: r.commit_time_us,
                    bytes: bytes.into(),
                }
            })
            .collect())
    }

    /// Appends a record received from the primary at its own LSN, which
    /// must be this log's end (the logs of all replicas share LSNs).
    pub fn append_at(&self, record: &Record) -> Result<Lsn, LogError> {
        let end = self.end_lsn();
        if record.lsn != end {
            return Err(LogError::OutOfRange {
                wanted: record.lsn,
                first: self.first_lsn(),
                end,
            });
        }
        self.append(record.clone())
    }

    /// Empties the log and starts it again at `lsn` (a replica being seeded
    /// from a full image recorded at `lsn` on the primary).
    pub fn reset_to(&self, lsn: Lsn) -> Result<(), LogError> {
        let mut tail = self.lock();
        let path = segment_path(&self.dir, lsn);
        create_segment(&self.dir, &path)?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        for seg in std::mem::take(&mut tail.segments) {
            if seg.path != path {
                fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
            }
        }
        tail.segments.push(Segment {
            first_lsn: lsn,
            path,
        });
        tail.file = Arc::new(file);
        tail.len = 0;
        tail.end = lsn;
        tail.recent.clear();
        tail.recent_bytes = 0;
        tail.generation += 1;
        tail.last = None;
        self.durable.send_replace(lsn);
        self.written.send_replace(lsn);
        Ok(())
    }

    /// Cuts every record at or after `lsn`, which must be a record boundary
    /// between the first LSN and the end: the parts of a transaction whose
    /// last part never reached the log (a crash between its parts) before
    /// the log takes new records after them. Later segments are removed, the
    /// one holding `lsn` is cut and synced.
    pub fn truncate_from(&self, lsn: Lsn) -> Result<(), LogError> {
        let mut tail = self.lock();
        if lsn >= tail.end {
            return Ok(());
        }
        let first = tail.segments[0].first_lsn;
        if lsn < first {
            return Err(LogError::OutOfRange {
                wanted: lsn,
                first,
                end: tail.end,
            });
        }
        while tail.segments.len() > 1 && tail.segments.last().is_some_and(|s| s.first_lsn > lsn) {
            let seg = tail.segments.pop().expect("more than one segment");
            fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
        }
        let seg = tail.segments.last().expect("a segment").clone();
        let file = OpenOptions::new()
            .write(true)
            .open(&seg.path)
            .map_err(io_err(&seg.path))?;
        file.set_len(lsn - seg.first_lsn)
            .map_err(io_err(&seg.path))?;
        file.sync_all().map_err(io_err(&seg.path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        tail.file = Arc::new(
            OpenOptions::new()
                .append(true)
                .open(&seg.path)
                .map_err(io_err(&seg.path))?,
        );
        tail.len = lsn - seg.first_lsn;
        tail.end = lsn;
        while tail.recent.back().is_some_and(|r| r.end_lsn() > lsn) {
            let dropped = tail.recent.pop_back().expect("not empty");
            tail.recent_bytes -= dropped.bytes.len() as u64;
        }
        tail.last = tail.recent.back().map(|r| {
            let crc = u32::from_le_bytes(r.bytes[r.bytes.len() - 4..].try_into().expect("4 bytes"));
            (r.lsn, crc)
        });
        tail.generation += 1;
        drop(tail);
        if self.last_record().is_none() && lsn > first {
            // The record before the cut was no longer cached: read it back.
            let (_, _, last) = scan_segment(&seg, false)?;
            self.lock().last = last;
        }
        self.written.send_replace(lsn);
        self.durable.send_modify(|d| *d = (*d).min(lsn));
        Ok(())
    }

    /// Commit time of the last record appended since the log was opened
    /// (µs since the Unix epoch), None before the first.
    pub fn last_commit_us(&self) -> Option<i64> {
        Some(self.last_commit_us.load(Ordering::Relaxed)).filter(|t| *t != 0)
    }

    /// A receiver that sees the end LSN move at every append.
    pub fn subscribe_end(&self) -> watch::Receiver<Lsn> {
        self.written.subscribe()
    }

    /// Deletes whole segments that end at or before `lsn` (no replica and no
    /// checkpoint needs them any more). The current segment is kept.
    pub fn truncate_before(&self, lsn: Lsn) -> Result<usize, LogError> {
        let mut tail = self.lock();
        let mut removed = 0;
        while tail.segments.len() > 1 && tail.segments[1].first_lsn <= lsn {
            let seg = tail.segments.remove(0);
            fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
            removed += 1;
        }
        Ok(removed)
    }
}

fn segment_path(dir: &Path, first_lsn: Lsn) -> PathBuf {
    dir.join(format!("{first_lsn:016x}.avlog"))
}

fn list_segments(dir: &Path) -> Result<Vec<Segment>, LogError> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".avlog"))
        else {
            continue;
        };
        if let Ok(first_lsn) = u64::from_str_radix(stem, 16) {
            segments.push(Segment { first_lsn, path });
        }
    }
    segments.sort_by_key(|s| s.first_lsn);
    Ok(segments)
}

/// Creates an empty segment and makes its directory entry durable.
fn create_segment(dir: &Path, path: &Path) -> Result<(), LogError> {
    File::create(path)
        .and_then(|f| f.sync_all())
        .map_err(io_err(path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn read_range(path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, LogError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    file.seek(SeekFrom::Start(offset)).map_err(io_err(path))?;
    let mut bytes = Vec::with_capacity(len.min(64 << 20) as usize);
    Read::by_ref(&mut file)
        .take(len)
        .read_to_end(&mut bytes)
        .map_err(io_err(path))?;
    Ok(bytes)
}

/// What a scan of a segment found: its end LSN, its valid length, and its
/// last record's start and crc.
type Scanned = (Lsn, u64, Option<(Lsn, u32)>);

/// Walks a segment's records; returns (end LSN, valid length, the last
/// record's start and crc). With `cut_torn`, a torn last record is
/// truncated away.
fn scan_segment(seg: &Segment, cut_torn: bool) -> Result<Scanned, LogError> {
    let mut file = File::open(&seg.path).map_err(io_err(&seg.path))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io_err(&seg.path))?;
    let mut at = 0usize;
    let mut last = None;
    while at < bytes.len() {
        match Record::decode(&bytes[at..]) {
            Ok((_, len)) => {
                let crc =
                    u32::from_le_bytes(bytes[at + len - 4..at + len].try_into().expect("4 bytes"));
                last = Some((seg.first_lsn + at as u64, crc));
                at += len;
            }
            Err(DecodeError::Torn { .. }) if cut_torn => {
                tracing::warn!(segment = %seg.path.display(), at, "cutting a torn record at the end of the log");
                let f = OpenOptions::new()
                    .write(true)
                    .open(&seg.path)
                    .map_err(io_err(&seg.path))?;
                f.set_len(at as u64).map_err(io_err(&seg.path))?;
                f.sync_all().map_err(io_err(&seg.path))?;
                break;
            }
            Err(cause) => {
                return Err(LogError::Corrupt {
                    path: seg.path.clone(),
                    lsn: seg.first_lsn + at as u64,
                    cause,
                })
            }
        }
    }
    Ok((seg.first_lsn + at as u64, at as u64, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u8) -> Record {
        Record {
            lsn: 0,
            epoch: 1,
            commit_time_us: n as i64,
            db_size: n as u32,
            page_size: 64,
            pages: vec![(n as u32, vec![n; 64])],
            flags: 0,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiter_dropped_in_the_middle_of_its_sync_does_not_stop_group_commit() {
        use futures::FutureExt;
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        for round in 1..=20u8 {
            let end = log.append(record(round)).unwrap();
            // Polled once: it takes the sync turn and starts syncing, then
            // is dropped (as when the other half of a commit fails first).
            assert!(log.wait_durable(end).now_or_never().is_none());
            let end = log.append(record(round)).unwrap();
            tokio::time::timeout(std::time::Duration::from_secs(10), log.wait_durable(end))
                .await
                .unwrap_or_else(|_| panic!("round {round}: the log never became durable"))
                .unwrap();
        }
    }

    #[tokio::test]
    async fn a_sync_of_the_file_before_a_reset_does_not_make_the_new_log_durable() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        log.append(record(1)).unwrap();
        let (_, _, _, before) = log.sync_target();
        log.reset_to(1_000).unwrap();
        let end = log
            .append_at(&Record {
                lsn: 1_000,
                ..record(2)
            })
            .unwrap();
        log.mark_durable(end, before);
        assert_eq!(log.durable_lsn(), 1_000);
        log.wait_durable(end).await.unwrap();
        assert_eq!(log.durable_lsn(), end);
    }

    #[tokio::test]
    async fn appended_records_read_back_in_order_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        let mut ends = Vec::new();
        for n in 1..=5 {
            ends.push(log.append(record(n)).unwrap());
        }
        log.wait_durable(*ends.last().unwrap()).await.unwrap();
        assert_eq!(log.durable_lsn(), log.end_lsn());
        drop(log);
        let log = Log::open(dir.path()).unwrap();
        let all = log.read_from(0).unwrap();
        assert_eq!(
            all.iter().map(|r| r.db_size).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert_eq!(all[1].lsn, all[0].end_lsn());
        let tail = log.read_from(ends[2]).unwrap();
        assert_eq!(tail.len(), 2);
        assert_eq!(log.read_some(0, 1).unwrap().len(), 1, "at least one record");
        assert_eq!(
            log.read_some(ends[0], (ends[1] - ends[0]) + 1)
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            log.read_some(ends[0], 2 * (ends[1] - ends[0]))
                .unwrap()
                .len(),
            2
        );
        assert!(log.read_from(ends[2] + 1).is_err(), "not a record boundary");
        assert!(matches!(
            log.read_from(ends[4] + 1),
            Err(LogError::OutOfRange { .. })
        ));
    }

    #[test]
    fn raw_reads_match_decoded_reads_from_memory_and_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        for n in 1..=4 {
            log.append(record(n)).unwrap();
        }
        let decoded = log.read_from(0).unwrap();
        let check = |raw: Vec<RawRecord>, from: usize| {
            for (r, d) in raw.iter().zip(&decoded[from..]) {
                assert_eq!(Record::decode(&r.bytes).unwrap().0, *d);
                assert_eq!(r.end_lsn(), d.end_lsn());
            }
            raw.len()
        };
        assert_eq!(check(log.read_raw(0, u64::MAX).unwrap(), 0), 4);
        assert_eq!(check(log.read_raw(decoded[2].lsn, 1).unwrap(), 2), 1);
        assert!(log.read_raw(log.end_lsn(), 10).unwrap().is_empty());
        drop(log);
        let log = Log::open(dir.path()).unwrap();
        assert_eq!(
            check(log.read_raw(decoded[1].lsn, u64::MAX).unwrap(), 1),
            3,
            "from disk"
        );
    }

    #[test]
    fn a_torn_last_record_is_cut_and_never_returned() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        let end1 = log.append(record(1)).unwrap();
        log.append(record(2)).unwrap();
        drop(log);
        let seg = segment_path(dir.path(), 0);
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 10)
            .unwrap();
        let log = Log::open(dir.path()).unwrap();
        assert_eq!(log.end_lsn(), end1);
        assert_eq!(log.read_from(0).unwrap().len(), 1);
        assert_eq!(
            log.append(record(3)).unwrap(),
            end1 + record(3).encoded_len() as u64
        );
    }

    #[test]
    fn a_corrupt_record_before_the_end_is_a_must_stop_error() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        log.append(record(1)).unwrap();
        log.append(record(2)).unwrap();
        drop(log);
        let seg = segment_path(dir.path(), 0);
        let mut bytes = fs::read(&seg).unwrap();
        bytes[50] ^= 1;
        fs::write(&seg, bytes).unwrap();
        assert!(matches!(
            Log::open(dir.path()),
            Err(LogError::Corrupt { lsn: 0, .. })
        ));
    }

    #[test]
    fn a_replica_log_takes_records_at_the_primary_lsns_and_can_restart_at_an_image() {
        let dir = tempfile::tempdir().unwrap();
        let primary = Log::open(&dir.path().join("p")).unwrap();
        let replica = Log::open(&dir.path().join("r")).unwrap();
        for n in 1..=3 {
            primary.append(record(n)).unwrap();
        }
        let records = primary.read_from(0).unwrap();
        for r in &records[..2] {
            replica.append_at(r).unwrap();
        }
        assert!(
            replica.append_at(&records[1]).is_err(),
            "a duplicate is refused"
        );
        replica.reset_to(records[2].lsn).unwrap();
        replica.append_at(&records[2]).unwrap();
        drop(replica);
        let replica = Log::open(&dir.path().join("r")).unwrap();
        assert_eq!(replica.first_lsn(), records[2].lsn);
        assert_eq!(replica.end_lsn(), primary.end_lsn());
        assert_eq!(replica.read_from(records[2].lsn).unwrap(), records[2..]);
    }

    #[tokio::test]
    async fn concurrent_waiters_share_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path()).unwrap());
        let mut tasks = Vec::new();
        for n in 0..16 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let end = log.append(record(n)).unwrap();
                log.wait_durable(end).await.unwrap();
                end
            }));
        }
        for t in tasks {
            let end = t.await.unwrap();
            assert!(log.durable_lsn() >= end);
        }
    }
}
