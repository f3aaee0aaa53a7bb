//! Segment files on disk: appending, group commit, reading back, recovery.
//!
//! # Tail repair ([`Log::open`])
//! Only the last segment can end in bytes that never became durable (a
//! segment is synced before the next one starts). Its records are walked
//! from the start; at the first one that does not decode — torn, zeroes,
//! bad magic, bad checksum, or a record whose LSN is not where it lies —
//! the rest of the segment is searched for a *valid record*: one whose
//! checksum holds and whose stored LSN is its own position.
//! * None: the damage is the tail of the last writes (a crash, a power loss
//!   that persisted them partly or out of order, a short write). Nothing
//!   there was acknowledged — an fsync covering it would have covered the
//!   damaged bytes too — so the segment is cut back to the last valid
//!   record and synced.
//! * One: records were written after the damaged bytes, so the damage is
//!   not a tail: [`LogError::CorruptBeforeValid`], and the node does not
//!   start that database.
//!
//! # Direct I/O
//! An append puts the record in memory (the current segment's last
//! partial block and every record after it, `Tail::held`) and among the
//! recent records; nothing is written then. The write that makes records
//! durable ([`Log::write_out`], the group commit's sync) copies the held
//! bytes, padded to whole [`BLOCK`]s, and writes them at their block with
//! `O_DIRECT | O_DSYNC`: one system call, durable when it returns, through
//! no page cache, so nothing has to be written back first. Against a
//! buffered write and `fdatasync` it took a quarter less CPU and 4–16 µs
//! less per durable append (BENCHMARKS.md, "the next lever measured").
//! * **One write at a time** (the `io` lock, taken before the tail's):
//!   each write copies under both locks and writes under `io` alone, so
//!   appends go on meanwhile, and the disk only ever receives a later copy
//!   of a block than it holds. Closing a segment, a restart at an image
//!   and a cut take `io` first, so no write of the bytes they replace
//!   lands after them.
//! * **Memory is bounded**: past [`UNWRITTEN_BYTES`] not yet on disk the
//!   appender writes them out itself (a bulk load). A record not yet on
//!   disk never leaves the recent records, and a read of the files goes on
//!   there where the records on disk end.
//! * **Where the file system refuses `O_DIRECT`** (tmpfs; or with
//!   `AVAILDB_LOG_DIRECT_IO=off`) the same writes go through the page
//!   cache, each followed by `fdatasync`. A file system may also take the
//!   flag at open and refuse a write with `EINVAL` (its blocks are larger
//!   than [`BLOCK`], or it wants another alignment): such a write wrote
//!   nothing, so it is made again through the page cache, and so is every
//!   later write to that segment, with a warning — the log does not fail.
//! * **A crash loses what was not yet written**, as a power loss loses
//!   what was not synced: never an acknowledged commit (that waits for the
//!   write), and the database file is rebuilt from the log at start (the
//!   WAL is discarded). A log closed without a crash writes what it holds
//!   first.
//!
//! # Zeros written ahead
//! Records are written at their offset into zeros the segment file already
//! holds: [`PREALLOCATE_BYTES`] of zeros are written ahead of them, a chunk
//! at a time (never far past the segment's size). The write that makes a
//! commit durable then writes its data blocks only; into a growing file it
//! would also write the file's size and block map every time. Zeros are
//! written after the records' waiters are woken, and never on a commit's
//! way back to its client: a commit that synced on its own worker leaves
//! them to the blocking thread it hands the sync turn to (group commit,
//! rule 2), which writes them before it syncs again. A scan takes
//! the zeros after the last record for the end of the records, in the last
//! segment anywhere, in any other only where the next segment starts (zeros
//! short of it are lost records: [`LogError::Corrupt`]).
//!
//! # Group commit ([`Log::wait_durable`])
//! One sync (a write of the records held, above) at a time, holding the
//! *sync turn*, covers everything appended before it starts; a commit
//! whose record that sync covers waits for it instead of syncing again.
//! Rules:
//! 1. **Whoever finds the turn free takes it** and syncs up to the end
//!    of the log. The others wait: async ones, registered by the LSN they
//!    need, until a sync makes it durable (a sync wakes no other;
//!    `super::waiters`); blocking ones until the turn comes free
//!    ([`Log::wait_durable_blocking`]).
//! 2. **The turn passes on while records wait.** A commit that synced on
//!    its own worker ([`Log::wait_durable_here`]) and finds records
//!    written after what its sync covered, or zeros ahead due (above),
//!    does not give the turn up: it hands it to a blocking thread, which
//!    writes the zeros and syncs again at once, until nothing written is
//!    left to sync, and returns to its client. Under
//!    load the log then syncs back to back, and no sync waits for a
//!    waiting commit's task to be scheduled, nor holds a worker that
//!    statements need (the commit matrix in BENCHMARKS.md, "the sync turn
//!    passes on").
//! 3. **No record is left behind when the turn comes free.** A writer
//!    appends, then looks at the turn; the one giving it up lets go, then
//!    looks for records not yet durable (both with sequentially consistent
//!    order). The thread of rule 2 takes the turn back for them; a waiter
//!    giving its turn up wakes the async waiters to look again (blocking
//!    ones are woken at every release). So either the writer finds the
//!    turn free and syncs, or the one letting go sees its record: a
//!    waiting commit never depends on its wait's timeout.
//! 4. **A waiter dropped mid-sync hands the turn back** (its guard's
//!    `Drop`), so the log never stops becoming durable.
//!
//! # Failed writes
//! * An append writes nothing but the zeros ahead of its record when the
//!   room runs short; when that fails (ENOSPC, EFBIG) the record is refused
//!   and the log goes on, so a full disk fails a transaction, not the node.
//!   A write of records then lands on blocks the file already has.
//! * A failed write of records, or a failed fsync, is never retried: what
//!   reached the disk is unknown (the kernel may have dropped the dirty
//!   pages, and a second fsync would "succeed" without them: fsyncgate).
//!   The log refuses every append and durability wait from then on
//!   ([`LogError::Failed`]); a restart re-reads what is really on disk and
//!   repairs the tail.
//!
//! # Restart at a full image ([`Log::restart_at`])
//! Seeding or rewinding a replica replaces the whole log: its segments, its
//! epoch history and its checkpoint. That is several files, so it is made
//! crash-atomic with an intent file, `restart` (`LSN EPOCH`), written and
//! made durable first and removed last. [`Log::open`] finds an intent left
//! by a crash and finishes the restart (every step is idempotent) before
//! anything reads the log. Its last step writes `image-pending` (`LSN
//! EPOCH`): until the image's last part is redone
//! ([`Log::image_done`]) the database file is old or part new, and a node
//! that restarts then starts the image over ([`Log::image_pending`]). Crash points `log.restart.intent`,
//! `log.restart.new_segment`, `log.restart.old_removed`,
//! `log.restart.history` and `log.restart.checkpoint` stop a process after
//! each step.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::watch;

use super::record::{DecodeError, Header, Lsn, Record};
use super::waiters::LsnWaiters;

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
    /// A damaged record is followed by valid ones: data that was written
    /// (and perhaps acknowledged) is damaged, not a torn tail.
    #[error("log in {path} is damaged at LSN {lsn} ({cause}), but a valid record follows at LSN {next}: \
             this is corruption of written records, not a torn tail, and the log cannot be trusted; \
             restore this database from a replica (stop the node, move its file and this log folder \
             aside, start it again: it is seeded from the primary)")]
    CorruptBeforeValid {
        /// Segment file.
        path: PathBuf,
        /// Position of the first damaged byte.
        lsn: Lsn,
        /// What is wrong there.
        cause: DecodeError,
        /// Position of the valid record after it.
        next: Lsn,
    },
    /// A write or fsync failed and the log no longer knows what is on
    /// disk: it takes nothing more until it is opened again.
    #[error("the log in {dir} refuses writes since {cause}; restart this node (recovery re-reads the log from disk and cuts what never became durable)")]
    Failed {
        /// The log's directory.
        dir: PathBuf,
        /// The first failure.
        cause: String,
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
    /// The encoded record, checksum included (shared, never copied: the
    /// bytes written are the bytes kept and the bytes shipped).
    pub bytes: Bytes,
}

impl RawRecord {
    /// Where the next record starts.
    pub fn end_lsn(&self) -> Lsn {
        self.lsn + self.bytes.len() as u64
    }
}

/// Recent records kept in memory for senders (bytes).
const RECENT_BYTES: u64 = 32 << 20;
/// Recent transaction boundaries remembered ([`Log::boundary_at_or_before`]).
const BOUNDARIES: usize = 1 << 16;

/// Direct I/O writes whole blocks from memory aligned to them; this size
/// covers every device's logical block (512 bytes or 4 KiB).
const BLOCK: u64 = 4096;

/// Records appended and not yet written are written, durably, by the
/// appender once they pass this many bytes, so a bulk load's records wait
/// in memory no longer than that (module page, "Direct I/O").
const UNWRITTEN_BYTES: u64 = 4 << 20;

/// A log's buffers of bytes not yet written keep at most this much room
/// once a bulk load is written out ([`Aligned::shrink`]).
const HELD_BYTES: u64 = 1 << 20;

/// Bytes at a [`BLOCK`]-aligned address, as `O_DIRECT` needs: the buffer
/// starts at the first aligned byte of a larger allocation, and its
/// capacity is a whole number of blocks.
struct Aligned {
    bytes: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn with_capacity(capacity: usize) -> Aligned {
        let block = BLOCK as usize;
        let capacity = capacity.next_multiple_of(block).max(block);
        let bytes = vec![0u8; capacity + block];
        let start = bytes.as_ptr().align_offset(block);
        Aligned {
            bytes,
            start,
            len: 0,
        }
    }

    fn capacity(&self) -> usize {
        let block = BLOCK as usize;
        (self.bytes.len() - self.start) / block * block
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[self.start..self.start + self.len]
    }

    fn extend_from_slice(&mut self, more: &[u8]) {
        if self.len + more.len() > self.capacity() {
            let mut grown =
                Aligned::with_capacity((self.len + more.len()).max(2 * self.capacity()));
            grown.extend_from_slice(self.as_slice());
            *self = grown;
        }
        let at = self.start + self.len;
        self.bytes[at..at + more.len()].copy_from_slice(more);
        self.len += more.len();
    }

    fn replace_with(&mut self, bytes: &[u8]) {
        self.len = 0;
        self.extend_from_slice(bytes);
    }

    /// Drops the first `n` bytes (whole blocks now on disk).
    fn drop_front(&mut self, n: usize) {
        let from = self.start + n;
        self.bytes
            .copy_within(from..self.start + self.len, self.start);
        self.len -= n;
    }

    /// Gives memory back after a bulk load: a buffer past [`HELD_BYTES`]
    /// that holds less than a quarter of its room is made small again.
    fn shrink(&mut self) {
        if self.capacity() > HELD_BYTES as usize && self.len < self.capacity() / 4 {
            let mut small = Aligned::with_capacity(self.len.max(64 << 10));
            small.extend_from_slice(self.as_slice());
            *self = small;
        }
    }

    /// The bytes, then zeros to the end of their last block.
    fn blocks(&mut self) -> &[u8] {
        let padded = self.len.next_multiple_of(BLOCK as usize);
        self.bytes[self.start + self.len..self.start + padded].fill(0);
        &self.bytes[self.start..self.start + padded]
    }
}

/// The current segment opened for writing (module page, "Direct I/O"):
/// `records` by `O_DIRECT | O_DSYNC`, so each write is durable when it
/// returns and bypasses the page cache, and `zeros` by `O_DIRECT`; or,
/// where the file system refuses direct I/O (or `AVAILDB_LOG_DIRECT_IO` is
/// `off`), both the same file written through the page cache, each write
/// of records followed by `fdatasync`.
#[derive(Clone)]
struct SegmentFile {
    records: Arc<File>,
    zeros: Arc<File>,
    direct: bool,
    /// The same file opened without `O_DIRECT`, once a direct write was
    /// refused with `EINVAL` (module page, "Direct I/O"): every write
    /// goes through it from then on.
    refused: Arc<std::sync::OnceLock<File>>,
    /// For errors: shared, so a write's copy of it allocates nothing.
    path: Arc<Path>,
}

impl SegmentFile {
    fn open(path: &Path) -> Result<SegmentFile, LogError> {
        let buffered = || -> Result<SegmentFile, LogError> {
            let file = Arc::new(
                OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_err(path))?,
            );
            Ok(SegmentFile {
                records: file.clone(),
                zeros: file,
                direct: false,
                refused: Default::default(),
                path: path.into(),
            })
        };
        if !direct_io_wanted() {
            return buffered();
        }
        let direct = |flags| {
            OpenOptions::new()
                .write(true)
                .custom_flags(flags)
                .open(path)
        };
        match (
            direct(libc::O_DIRECT | libc::O_DSYNC),
            direct(libc::O_DIRECT),
        ) {
            (Ok(records), Ok(zeros)) => Ok(SegmentFile {
                records: Arc::new(records),
                zeros: Arc::new(zeros),
                direct: true,
                refused: Default::default(),
                path: path.into(),
            }),
            (Err(e), _) | (_, Err(e)) if e.raw_os_error() == Some(libc::EINVAL) => {
                static WARNED: AtomicBool = AtomicBool::new(false);
                if !WARNED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(segment = %path.display(), "the file system refuses direct I/O (O_DIRECT): the log writes through the page cache and syncs with fdatasync, which costs more CPU per commit");
                }
                buffered()
            }
            (Err(e), _) | (_, Err(e)) => Err(io_err(path)(e)),
        }
    }

    /// Writes whole blocks at `at` (a block boundary), durably.
    fn write_blocks(&self, blocks: &[u8], at: u64) -> io::Result<()> {
        if let Some(buffered) = self.write_at(&self.records, blocks, at)? {
            buffered.sync_data()?;
        }
        Ok(())
    }

    /// Writes `bytes` at `at` through `direct` (the records' or the zeros'
    /// descriptor), or through the page cache where direct I/O is off or
    /// was refused; returns the file written through the page cache, which
    /// a durable write then syncs.
    fn write_at<'a>(
        &'a self,
        direct: &'a File,
        bytes: &[u8],
        at: u64,
    ) -> io::Result<Option<&'a File>> {
        let file = match self.refused.get() {
            Some(file) => file,
            None if !self.direct => direct,
            None => match self.direct_write(direct, bytes, at) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.through_cache(e)?,
                written => return written.map(|()| None),
            },
        };
        file.write_all_at(bytes, at)?;
        Ok(Some(file))
    }

    /// A write through an `O_DIRECT` descriptor (refused with `EINVAL`
    /// where a test says so).
    fn direct_write(&self, file: &File, bytes: &[u8], at: u64) -> io::Result<()> {
        #[cfg(test)]
        if tests::REFUSE_DIRECT_WRITES.with(|r| r.get()) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        file.write_all_at(bytes, at)
    }

    /// The file opened without `O_DIRECT` after a direct write was refused
    /// with `refusal`: an `EINVAL` write wrote nothing, so writing the same
    /// bytes again through the page cache (and syncing them) is safe.
    fn through_cache(&self, refusal: io::Error) -> io::Result<&File> {
        if let Some(file) = self.refused.get() {
            return Ok(file);
        }
        let file = OpenOptions::new().write(true).open(&self.path)?;
        static WARNED: AtomicBool = AtomicBool::new(false);
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(segment = %self.path.display(), "the file system took O_DIRECT but refused a direct write ({refusal}): the log writes through the page cache and syncs with fdatasync from now on");
        }
        Ok(self.refused.get_or_init(|| file))
    }

    /// Writes zeros over `from..to` (block boundaries), not synced: up to
    /// [`PREALLOCATE_BYTES`] a write (each write of a direct file waits for
    /// the disk).
    fn write_zeros(&self, from: u64, to: u64) -> io::Result<()> {
        static ZEROS: std::sync::LazyLock<Aligned> = std::sync::LazyLock::new(|| {
            let mut zeros = Aligned::with_capacity(PREALLOCATE_BYTES as usize);
            zeros.len = zeros.capacity();
            zeros
        });
        let mut at = from;
        while at < to {
            let n = (to - at).min(ZEROS.len as u64) as usize;
            self.write_at(&self.zeros, &ZEROS.as_slice()[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }
}

/// Whether the log writes by direct I/O where the file system allows it:
/// unless `AVAILDB_LOG_DIRECT_IO=off`.
fn direct_io_wanted() -> bool {
    #[cfg(test)]
    if tests::FORCE_BUFFERED.with(|b| b.get()) {
        return false;
    }
    static WANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WANTED.get_or_init(|| {
        std::env::var("AVAILDB_LOG_DIRECT_IO").map_or(true, |v| !v.eq_ignore_ascii_case("off"))
    })
}

struct Tail {
    /// The newest records, so senders that keep up never read the disk;
    /// a record not yet on disk is never dropped from here.
    recent: std::collections::VecDeque<RawRecord>,
    recent_bytes: u64,
    segments: Vec<Segment>,
    file: SegmentFile,
    /// Bytes of the current segment: its records, written or not.
    len: u64,
    /// Bytes of the current segment on disk, durably (a record boundary).
    on_disk: u64,
    /// The current segment's bytes from `held_at` (a block boundary) to
    /// `len`: the last block written, when it is partial, and every record
    /// not yet written. The next write starts there.
    held: Aligned,
    held_at: u64,
    /// Bytes the current segment file holds: records, then zeros written
    /// ahead of them ([`PREALLOCATE_BYTES`]); a block boundary once any
    /// zeros are written.
    zeroed: u64,
    /// LSN the next record gets.
    end: Lsn,
    /// Bumped by [`Log::restart_at`] and [`Log::truncate_from`]: a reader
    /// that planned from the log as it was must plan again
    /// ([`Log::generation`]).
    generation: u64,
    /// The last record held: where it starts and its stored crc32c.
    last: Option<(Lsn, u32)>,
    /// Ends of the newest records that end a transaction outside a full
    /// image (at most [`BOUNDARIES`], ascending): where the database is
    /// consistent.
    boundaries: std::collections::VecDeque<Lsn>,
}

impl Tail {
    /// Where the records on disk end; those after it are in memory only.
    fn disk_end(&self) -> Lsn {
        self.segments.last().expect("a segment").first_lsn + self.on_disk
    }

    /// The current segment's path (for errors).
    fn path(&self) -> &Path {
        &self.segments.last().expect("a segment").path
    }

    /// Whether a record of `len` bytes goes into a new segment.
    fn full_for(&self, len: u64) -> bool {
        self.len > 0 && self.len.saturating_add(len) > segment_bytes()
    }

    /// The bytes of the current segment not yet on disk, as whole blocks,
    /// copied into `copy`; None when everything is on disk.
    fn unwritten(&self, copy: &mut Aligned) -> Option<Unwritten> {
        if self.on_disk == self.len {
            return None;
        }
        copy.replace_with(self.held.as_slice());
        Some(Unwritten {
            file: self.file.clone(),
            at: self.held_at,
            len: self.len,
            end: self.end,
        })
    }

    /// The zeros the current segment wants written ahead of its records
    /// (`from..to`), when less than half of [`PREALLOCATE_BYTES`] is left.
    fn zeros_due(&self) -> Option<(u64, u64)> {
        (self.zeroed < self.len + PREALLOCATE_BYTES / 2 && self.zeroed < segment_bytes())
            .then(|| (zeros_from(self), zero_target(self.len)))
    }

    /// Takes note that `written` is on disk: the whole blocks it wrote
    /// leave memory.
    fn wrote(&mut self, written: &Unwritten) {
        self.on_disk = self.on_disk.max(written.len);
        let whole = written.len / BLOCK * BLOCK;
        if whole > self.held_at {
            self.held.drop_front((whole - self.held_at) as usize);
            self.held_at = whole;
        }
        self.held.shrink();
    }

    /// Loads the current segment's last partial block from the file (all
    /// of the segment is on disk): the next write starts at that block.
    fn hold_last_block(&mut self) -> Result<(), LogError> {
        self.held_at = self.len / BLOCK * BLOCK;
        let bytes = read_range(self.path(), self.held_at, self.len - self.held_at)?;
        self.held.replace_with(&bytes);
        self.on_disk = self.len;
        Ok(())
    }

    fn boundary(&mut self, lsn: Lsn) {
        if self.boundaries.back().is_none_or(|b| *b < lsn) {
            if self.boundaries.len() == BOUNDARIES {
                self.boundaries.pop_front();
            }
            self.boundaries.push_back(lsn);
        }
    }
}

/// Whether [`Log::write_out`] also tops up the zeros written ahead of the
/// records (`# Zeros written ahead`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Zeros {
    /// After the records' waiters are woken, on the writer's thread.
    Ahead,
    /// Not now: a commit syncing on its own worker returns to its client
    /// first, and the blocking thread it hands the turn to writes them (a
    /// log closing needs none).
    Later,
}

/// What one write of the log's tail covers: the bytes from `at` (a block
/// boundary) to `len` of the current segment, whose records end at `end`.
/// No cut or restart comes between its copy and its end (both take `io`
/// first).
struct Unwritten {
    file: SegmentFile,
    at: u64,
    len: u64,
    end: Lsn,
}

/// The group-commit turn of one waiter; handed back even when the waiter
/// is dropped mid-sync, and then the waiters blocked on a thread
/// ([`Log::wait_durable_blocking`]) look again.
struct SyncTurn<'a>(&'a Log);

impl Drop for SyncTurn<'_> {
    fn drop(&mut self) {
        self.0.give_up_turn();
    }
}

/// The sync turn held apart from any waiter (rule 2 of group commit): by
/// the commit that synced last until it hands it to a blocking thread,
/// then by that thread. Given up when dropped, so a thread the runtime
/// never runs (it is shutting down) does not keep the turn.
struct HeldTurn(Arc<Log>);

impl HeldTurn {
    /// Syncs on a blocking thread of the current runtime (or here,
    /// outside one) until nothing written is left to sync, writing the
    /// zeros ahead of the records first when they are due (the commit that
    /// synced left them, [`Zeros::Later`]); or gives the turn up now when
    /// neither is.
    fn hand_on(self) {
        let held = if self.0.zeros_due() {
            Some(self)
        } else {
            self.keep_or_give_up()
        };
        let Some(held) = held else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || held.keep_syncing())),
            Err(_) => held.keep_syncing(),
        }
    }

    /// Syncs to the end of the log while records written are not
    /// durable, then gives the turn up (rule 3). A failed sync fails the
    /// log (its waiters see that) and gives the turn up.
    fn keep_syncing(mut self) {
        while self.0.sync_blocking().is_ok() {
            match self.keep_or_give_up() {
                Some(held) => self = held,
                None => return,
            }
        }
    }

    /// Keeps the turn while records written are not durable (and the log
    /// has not failed); otherwise gives it up, then looks again and takes
    /// it back for a record written meanwhile, unless another took it
    /// (rule 3: the writer appended before it looked at the turn).
    fn keep_or_give_up(self) -> Option<HeldTurn> {
        if self.0.unsynced() {
            return Some(self);
        }
        let log = self.0.clone();
        std::mem::forget(self);
        log.release_turn();
        std::sync::atomic::fence(Ordering::SeqCst);
        (log.unsynced() && !log.syncing.swap(true, Ordering::SeqCst)).then_some(HeldTurn(log))
    }
}

impl Drop for HeldTurn {
    fn drop(&mut self) {
        self.0.give_up_turn();
    }
}

/// The append-only log of one database.
pub struct Log {
    dir: PathBuf,
    /// The turn to write the segment files, with the copy of the bytes a
    /// write takes from the tail. Taken before `tail`, never after: a
    /// write copies under both, then writes under this one alone, so
    /// appends go on meanwhile (module page, "Direct I/O").
    io: Mutex<Aligned>,
    tail: Mutex<Tail>,
    durable: watch::Sender<Lsn>,
    written: watch::Sender<Lsn>,
    syncing: AtomicBool,
    /// Where waiters on a blocking thread sleep until the durable LSN
    /// moves or the group-commit turn is free
    /// ([`Log::wait_durable_blocking`]), and how many sleep there.
    blocked: (Mutex<usize>, std::sync::Condvar),
    /// The async waiters, by the LSN each waits for: a sync wakes the
    /// ones it made durable, no other (`super::waiters`).
    waiting: LsnWaiters,
    /// Commit time of the last record appended (µs since the Unix epoch).
    last_commit_us: std::sync::atomic::AtomicI64,
    /// Set at the first failed fsync or unrepairable write: the log takes
    /// no more records and makes nothing more durable.
    failed: Mutex<Option<String>>,
    /// Whether `failed` is set: read without its lock by every append
    /// and sync.
    has_failed: AtomicBool,
    /// The log restarted at a full image not yet wholly redone: (LSN,
    /// epoch) of the image (the `image-pending` file).
    image_pending: Mutex<Option<(Lsn, u64)>>,
    /// Tests make the next fsync fail with this error.
    #[cfg(test)]
    fail_next_sync: Mutex<Option<io::Error>>,
    /// Segment fsyncs so far, for tests of group commit.
    #[cfg(test)]
    syncs: std::sync::atomic::AtomicU64,
    /// While set, a write of zeros ahead waits (tests of who writes them).
    #[cfg(test)]
    zeros_held: AtomicBool,
}

impl Log {
    /// Opens (or creates) the log in `dir`. A torn record at the very end is
    /// cut off — it was never acknowledged; damage anywhere else is an error.
    pub fn open(dir: &Path) -> Result<Log, LogError> {
        crate::durable::create_dir_all(dir).map_err(io_err(dir))?;
        if let Some((lsn, epoch)) = read_restart_intent(dir)? {
            tracing::warn!(log = %dir.display(), lsn, epoch, "finishing a log restart that a crash interrupted");
            finish_restart(dir, lsn, epoch)?;
        }
        let mut segments = list_segments(dir)?;
        if segments.is_empty() {
            let path = segment_path(dir, 0);
            create_segment(dir, &path)?;
            segments.push(Segment { first_lsn: 0, path });
        }
        let last = segments.last().expect("at least one segment").clone();
        let (end, len, zeroed, mut last_record) = scan_segment(&last, true, None)?;
        if last_record.is_none() && segments.len() > 1 {
            // The last segment is empty (it had just rolled): the last
            // record closes the one before.
            let before = &segments[segments.len() - 2];
            last_record = scan_segment(before, false, Some(last.first_lsn))?.3;
        }
        let file = SegmentFile::open(&last.path)?;
        // What an earlier process wrote through the page cache (and a
        // kill -9 left there) is durable before the log says it is.
        file.records.sync_data().map_err(io_err(&last.path))?;
        let image_pending = read_lsn_epoch(dir, IMAGE_PENDING)?;
        let mut tail = Tail {
            recent: std::collections::VecDeque::new(),
            recent_bytes: 0,
            segments,
            file,
            len,
            on_disk: len,
            held: Aligned::with_capacity(BLOCK as usize),
            held_at: 0,
            zeroed,
            end,
            generation: 0,
            last: last_record,
            boundaries: std::collections::VecDeque::new(),
        };
        tail.hold_last_block()?;
        let log = Log {
            dir: dir.to_path_buf(),
            io: Mutex::new(Aligned::with_capacity(BLOCK as usize)),
            tail: Mutex::new(tail),
            durable: watch::channel(end).0,
            written: watch::channel(end).0,
            syncing: AtomicBool::new(false),
            blocked: (Mutex::new(0), std::sync::Condvar::new()),
            waiting: LsnWaiters::default(),
            last_commit_us: std::sync::atomic::AtomicI64::new(0),
            failed: Mutex::new(None),
            has_failed: AtomicBool::new(false),
            image_pending: Mutex::new(image_pending),
            #[cfg(test)]
            fail_next_sync: Mutex::new(None),
            #[cfg(test)]
            syncs: Default::default(),
            #[cfg(test)]
            zeros_held: AtomicBool::new(false),
        };
        // Where the log ends is a boundary unless its last record goes on
        // in the next (a crash between the parts; the database cuts such a
        // tail when it opens).
        let ends_whole = match log.last_record() {
            None => true,
            Some((lsn, _)) => log
                .read_from(lsn)
                .ok()
                .and_then(|records| records.last().cloned())
                .is_some_and(|r| !r.continues_transaction() && !r.image_continues()),
        };
        if ends_whole {
            let mut tail = log.lock();
            let end = tail.end;
            tail.boundary(end);
        }
        Ok(log)
    }

    /// The full image this log restarted at, while it is not wholly
    /// redone: (LSN, epoch). The database file is old or part new until
    /// then (module page).
    pub fn image_pending(&self) -> Option<(Lsn, u64)> {
        *self.image_pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records durably that the pending image is wholly redone.
    pub fn image_done(&self) -> Result<(), LogError> {
        let mut pending = self.image_pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.is_none() {
            return Ok(());
        }
        let path = self.dir.join(IMAGE_PENDING);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(LogError::Io { path, source }),
        }
        sync_dir(&self.dir)?;
        *pending = None;
        Ok(())
    }

    /// Why the log refuses writes (a failed fsync or an append it could
    /// not undo), if it does.
    pub fn failure(&self) -> Option<String> {
        if !self.has_failed.load(Ordering::Acquire) {
            return None;
        }
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn check_failed(&self) -> Result<(), LogError> {
        match self.failure() {
            Some(cause) => Err(LogError::Failed {
                dir: self.dir.clone(),
                cause,
            }),
            None => Ok(()),
        }
    }

    /// Records the first failure: from now on the log refuses writes.
    fn fail(&self, cause: String) -> LogError {
        tracing::error!(log = %self.dir.display(), "{cause}: the log takes no more writes until the node restarts");
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        if failed.is_none() {
            crate::failstop::announce(format!(
                "the transaction log in {} failed ({cause})",
                self.dir.display()
            ));
        }
        let cause = failed.get_or_insert(cause).clone();
        self.has_failed.store(true, Ordering::Release);
        drop(failed);
        // Nothing more becomes durable: the waiters learn it now.
        self.waiting.wake_all();
        LogError::Failed {
            dir: self.dir.clone(),
            cause,
        }
    }

    /// Writes the records appended so far that are not on disk, durably,
    /// and publishes them durable; returns the LSN everything before which
    /// is durable. The copy is taken under the tail's lock, the write made
    /// without it, so appends go on meanwhile; one write at a time (the
    /// `io` turn). A failed write fails the log for good, as a failed
    /// fsync does: what reached the disk is unknown.
    ///
    /// With [`Zeros::Ahead`] it then tops up the zeros written ahead of the
    /// records when they run short, after the records' waiters are woken;
    /// with [`Zeros::Later`] it leaves them to the blocking thread the sync
    /// turn goes on to.
    fn write_out(&self, zeros: Zeros) -> Result<Lsn, LogError> {
        let mut copy = self.io.lock().unwrap_or_else(|e| e.into_inner());
        let (unwritten, end) = {
            let tail = self.lock();
            self.check_failed()?;
            (tail.unwritten(&mut copy), tail.end)
        };
        // Without records to write, everything appended is on disk and was
        // published durable by the write that put it there (under `io`).
        let end = match unwritten {
            Some(unwritten) => {
                self.write_unwritten(&mut copy, &unwritten)?;
                let mut tail = self.lock();
                if self.failure().is_some() {
                    return Ok(unwritten.end);
                }
                self.publish(&mut tail, &unwritten);
                drop(tail);
                self.wake_durable(unwritten.end);
                unwritten.end
            }
            None => end,
        };
        if zeros == Zeros::Ahead {
            self.top_up_zeros();
        }
        Ok(end)
    }

    /// Writes the zeros ahead of the current segment's records when they
    /// run short. Called under `io`: no later write of records lands in
    /// these blocks before the zeros do, and the segment stays this one (a
    /// roll, a restart and a cut take `io` first). A failed write is left
    /// to the next append that needs the room, which writes the zeros
    /// itself and is refused if it cannot.
    fn top_up_zeros(&self) {
        let (file, (from, to)) = {
            let tail = self.lock();
            let Some(range) = tail.zeros_due() else {
                return;
            };
            (tail.file.clone(), range)
        };
        #[cfg(test)]
        while self.zeros_held.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        match file.write_zeros(from, to) {
            Ok(()) => {
                let mut tail = self.lock();
                tail.zeroed = tail.zeroed.max(to);
            }
            Err(e) => {
                tracing::warn!(segment = %file.path.display(), "writing zeros ahead of the log's records failed: {e}")
            }
        }
    }

    /// Whether zeros ahead of the records are due and the log can still
    /// write them (rule 2 of group commit keeps the turn for them).
    fn zeros_due(&self) -> bool {
        self.failure().is_none() && self.lock().zeros_due().is_some()
    }

    /// The write of [`Log::write_out`], also made under the tail's lock
    /// (a segment rolling, a cut): fails the log when it fails. The copy
    /// is emptied after it (and gives back a bulk load's room).
    fn write_unwritten(&self, copy: &mut Aligned, unwritten: &Unwritten) -> Result<(), LogError> {
        match self.injected_sync_error() {
            Some(e) => Err(e),
            None => unwritten.file.write_blocks(copy.blocks(), unwritten.at),
        }
        .map_err(|e| {
            self.fail(format!(
                "writing the log's records to {} durably failed: {e}",
                unwritten.file.path.display()
            ))
        })?;
        copy.len = 0;
        copy.shrink();
        Ok(())
    }

    /// Takes note that `unwritten` is on disk and publishes it durable,
    /// under the tail's lock.
    fn publish(&self, tail: &mut Tail, unwritten: &Unwritten) {
        tail.wrote(unwritten);
        self.raise_durable(unwritten.end);
    }

    /// Wakes the waiters of everything before `end`, now durable.
    fn wake_durable(&self, end: Lsn) {
        self.waiting.wake_upto(end);
        self.wake_blocked();
    }

    /// Under both locks (`io`, then the tail's): writes what the current
    /// segment has not on disk and publishes it durable.
    fn write_out_locked(&self, copy: &mut Aligned, tail: &mut Tail) -> Result<(), LogError> {
        if let Some(unwritten) = tail.unwritten(copy) {
            self.write_unwritten(copy, &unwritten)?;
            self.publish(tail, &unwritten);
            self.wake_durable(unwritten.end);
        }
        Ok(())
    }

    /// The fsync failure a test asked for, if any.
    fn injected_sync_error(&self) -> Option<io::Error> {
        #[cfg(test)]
        self.syncs.fetch_add(1, Ordering::SeqCst);
        #[cfg(test)]
        return self
            .fail_next_sync
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        #[cfg(not(test))]
        None
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
    ///
    /// A write that fails part-way is undone (the segment is cut back to
    /// its last record) before the error is returned; when that fails too
    /// the log takes nothing more ([`LogError::Failed`]).
    pub fn append(&self, mut record: Record) -> Result<Lsn, LogError> {
        let mut tail = self.tail_for(record.encoded_len() as u64)?;
        record.lsn = tail.end;
        let mut encoded = Vec::new();
        record.encode_into(&mut encoded);
        let end = self.write_record(&mut tail, &record, encoded.into())?;
        self.bound_unwritten(tail)?;
        Ok(end)
    }

    /// Appends a record received from the primary, as the primary encoded
    /// it, at its own LSN, which must be this log's end (the logs of all
    /// replicas share LSNs). `encoded` must be the bytes `record` was
    /// decoded from, whole ([`Record::decode`] checked their checksum and
    /// used every byte): they are written as they are, so every replica's
    /// log holds the primary's bytes and nothing is encoded or copied again.
    pub fn append_encoded(&self, record: &Record, encoded: Bytes) -> Result<Lsn, LogError> {
        let mut tail = self.tail_for(encoded.len() as u64)?;
        if record.lsn != tail.end {
            return Err(LogError::OutOfRange {
                wanted: record.lsn,
                first: tail.segments[0].first_lsn,
                end: tail.end,
            });
        }
        debug_assert_eq!(
            encoded.len(),
            record.encoded_len(),
            "not the record's encoding"
        );
        let end = self.write_record(&mut tail, record, encoded)?;
        self.bound_unwritten(tail)?;
        Ok(end)
    }

    /// The tail, locked, with room in its current segment for a record of
    /// `len` bytes: a full segment is closed and a new one started first.
    fn tail_for(&self, len: u64) -> Result<std::sync::MutexGuard<'_, Tail>, LogError> {
        loop {
            let tail = self.lock();
            self.check_failed()?;
            if !tail.full_for(len) {
                return Ok(tail);
            }
            drop(tail);
            self.roll(len)?;
        }
    }

    /// Lets go of the tail; when the records not yet on disk pass
    /// [`UNWRITTEN_BYTES`], writes them out now (a bulk load's).
    fn bound_unwritten(&self, tail: std::sync::MutexGuard<'_, Tail>) -> Result<(), LogError> {
        let unwritten = tail.len - tail.on_disk;
        drop(tail);
        if unwritten > UNWRITTEN_BYTES {
            self.write_out(Zeros::Ahead)?;
        }
        Ok(())
    }

    /// Puts `encoded` (the encoding of `record`, whose LSN is the end) at
    /// the end of the log, in memory until a write takes it to disk
    /// ([`Log::write_out`]), and among the recent records. The only I/O
    /// here is zeros written ahead when the room runs short: when that
    /// fails (a full disk) the record is refused and nothing changes.
    fn write_record(
        &self,
        tail: &mut Tail,
        record: &Record,
        encoded: Bytes,
    ) -> Result<Lsn, LogError> {
        let len = encoded.len() as u64;
        zero_ahead(tail, len).map_err(|source| LogError::Io {
            path: tail.path().to_path_buf(),
            source,
        })?;
        self.last_commit_us
            .store(record.commit_time_us, Ordering::Relaxed);
        tail.held.extend_from_slice(&encoded);
        let crc = u32::from_le_bytes(encoded[encoded.len() - 4..].try_into().expect("4 bytes"));
        tail.last = Some((record.lsn, crc));
        tail.recent_bytes += len;
        tail.recent.push_back(RawRecord {
            lsn: record.lsn,
            commit_time_us: record.commit_time_us,
            bytes: encoded,
        });
        let disk_end = tail.disk_end();
        while tail.recent_bytes > RECENT_BYTES
            && tail.recent.len() > 1
            && tail.recent.front().is_some_and(|r| r.end_lsn() <= disk_end)
        {
            let old = tail.recent.pop_front().expect("not empty");
            tail.recent_bytes -= old.bytes.len() as u64;
        }
        tail.len += len;
        tail.end += len;
        if !record.continues_transaction() && !record.image_continues() {
            let end = tail.end;
            tail.boundary(end);
        }
        self.written.send_replace(tail.end);
        Ok(tail.end)
    }

    /// Closes the current segment when a record of `len` bytes does not
    /// fit (written out and durable, so durability never has to look back)
    /// and starts a new one at the current end.
    fn roll(&self, len: u64) -> Result<(), LogError> {
        let mut copy = self.io.lock().unwrap_or_else(|e| e.into_inner());
        let mut tail = self.lock();
        self.check_failed()?;
        if !tail.full_for(len) {
            return Ok(());
        }
        self.write_out_locked(&mut copy, &mut tail)?;
        let path = segment_path(&self.dir, tail.end);
        create_segment(&self.dir, &path)?;
        tail.file = SegmentFile::open(&path)?;
        let first_lsn = tail.end;
        tail.segments.push(Segment { first_lsn, path });
        tail.len = 0;
        tail.on_disk = 0;
        tail.held.replace_with(&[]);
        tail.held_at = 0;
        tail.zeroed = 0;
        Ok(())
    }

    /// Waits until everything before `lsn` is durable. Group commit: one
    /// waiter at a time syncs everything written so far; the others wait
    /// for that sync instead of issuing their own.
    ///
    /// Cancellation-safe: a waiter dropped in the middle of its sync (a
    /// commit whose other half failed first, a timeout) hands the turn on,
    /// so the log never stops becoming durable.
    pub async fn wait_durable(self: &Arc<Self>, lsn: Lsn) -> Result<(), LogError> {
        self.wait_durable_syncing_on(lsn, false).await
    }

    /// [`Log::wait_durable`] for a commit's acknowledgement: when this
    /// waiter takes the sync turn, it syncs on the task's own worker
    /// thread (on a multi-thread runtime), saving the hop to a blocking
    /// thread and back that costs more than a small fsync. One worker at
    /// most is held so, since one waiter syncs at a time; the others await
    /// the durable LSN without holding theirs.
    ///
    /// When its sync leaves records written after what it covered, it
    /// hands the turn to a blocking thread that syncs them (rule 2 of the
    /// module's group commit) and returns.
    pub async fn wait_durable_here(self: &Arc<Self>, lsn: Lsn) -> Result<(), LogError> {
        self.wait_durable_syncing_on(lsn, true).await
    }

    /// Syncs on the waiter's own worker (on a multi-thread runtime), and
    /// hands the turn on, when called for a commit (`hand_on`).
    async fn wait_durable_syncing_on(
        self: &Arc<Self>,
        lsn: Lsn,
        hand_on: bool,
    ) -> Result<(), LogError> {
        let here = hand_on && crate::runtime::multi_thread();
        loop {
            if self.durable_lsn() >= lsn {
                return Ok(());
            }
            self.check_failed()?;
            if self.take_turn() {
                // Another holds the turn: its sync may cover this record,
                // or it finds the record when it lets go (rule 3). Checked
                // again once registered, so no wake-up is lost.
                let waiter = self.waiting.register(lsn);
                if self.durable_lsn() >= lsn {
                    return Ok(());
                }
                if self.syncing.load(Ordering::SeqCst) {
                    let _ =
                        tokio::time::timeout(std::time::Duration::from_millis(50), waiter.woken())
                            .await;
                }
                continue;
            }
            let _turn = SyncTurn(self);
            if self.covered(lsn)? {
                return Ok(());
            }
            if here {
                // The zeros ahead, when due, are left to the blocking
                // thread the turn goes on to below (rule 2).
                self.write_out(Zeros::Later)?;
            } else {
                let log = self.clone();
                tokio::task::spawn_blocking(move || log.write_out(Zeros::Ahead))
                    .await
                    .unwrap_or_else(|e| {
                        Err(self.fail(format!("the task writing the log stopped: {e}")))
                    })?;
            }
            if hand_on && self.durable_lsn() >= lsn {
                // This commit is durable; the turn goes on without it.
                std::mem::forget(_turn);
                HeldTurn(self.clone()).hand_on();
                return Ok(());
            }
        }
    }

    /// [`Log::wait_durable`] for a blocking thread: the commit path calls it
    /// on the thread that ran the transaction, right after giving up the
    /// write lock, so the fsync costs no hop to another thread. The same
    /// group commit: one waiter (async or blocking) syncs at a time,
    /// covering everything appended so far; the others sleep until the
    /// durable LSN moves or the turn is free.
    pub fn wait_durable_blocking(&self, lsn: Lsn) -> Result<(), LogError> {
        loop {
            if *self.durable.borrow() >= lsn {
                return Ok(());
            }
            self.check_failed()?;
            if self.take_turn() {
                let (lock, cv) = &self.blocked;
                let mut asleep = lock.lock().unwrap_or_else(|e| e.into_inner());
                // Checked again under the lock the publisher takes before
                // it wakes us: no wake-up is lost between check and sleep.
                if *self.durable.borrow() >= lsn || !self.syncing.load(Ordering::Acquire) {
                    continue;
                }
                *asleep += 1;
                let (mut asleep, _) = cv
                    .wait_timeout(asleep, std::time::Duration::from_millis(50))
                    .unwrap_or_else(|e| e.into_inner());
                *asleep -= 1;
                continue;
            }
            let _turn = SyncTurn(self);
            if self.covered(lsn)? {
                return Ok(());
            }
            self.write_out(Zeros::Ahead)?;
        }
    }

    /// For a waiter that just took the sync turn: whether the write that
    /// just ended covered `lsn`. A failure that raced with taking the turn
    /// is an error.
    fn covered(&self, lsn: Lsn) -> Result<bool, LogError> {
        self.check_failed()?;
        Ok(*self.durable.borrow() >= lsn)
    }

    /// Records written that are not durable yet (none count once the log
    /// has failed: nothing will make them durable).
    fn unsynced(&self) -> bool {
        *self.written.borrow() > self.durable_lsn() && self.failure().is_none()
    }

    /// Tries to take the sync turn; true when another holds it. The fence
    /// makes this waiter's record, appended before, visible to whoever
    /// lets the turn go after this (rule 3).
    fn take_turn(&self) -> bool {
        std::sync::atomic::fence(Ordering::SeqCst);
        self.syncing.swap(true, Ordering::SeqCst)
    }

    /// Frees the sync turn and wakes the waiters blocked on it.
    fn release_turn(&self) {
        self.syncing.store(false, Ordering::SeqCst);
        self.wake_blocked();
    }

    /// Frees the sync turn (group commit, rule 3): when records written
    /// are not durable, their async waiters may have looked at the turn
    /// before it came free, so they are woken to look again.
    fn give_up_turn(&self) {
        self.release_turn();
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.unsynced() {
            self.waiting.wake_all();
        }
    }

    /// Wakes the waiters sleeping in [`Log::wait_durable_blocking`], if
    /// any: the count is read under the lock a waiter holds from its last
    /// check until it sleeps, so none is missed, and a commit with nobody
    /// asleep (the usual case: commits wait on async tasks) makes no
    /// `futex` call.
    fn wake_blocked(&self) {
        let (lock, cv) = &self.blocked;
        let asleep = *lock.lock().unwrap_or_else(|e| e.into_inner());
        if asleep > 0 {
            cv.notify_all();
        }
    }

    /// Makes everything appended so far durable now, from a blocking
    /// context (e.g. before a checkpoint); returns the LSN covered.
    pub fn sync_blocking(&self) -> Result<Lsn, LogError> {
        self.check_failed()?;
        self.write_out(Zeros::Ahead)
    }

    /// Moves the durable LSN up to `upto` (never down).
    fn raise_durable(&self, upto: Lsn) {
        self.durable.send_if_modified(|d| {
            let moved = *d < upto;
            *d = (*d).max(upto);
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
        self.read_some_until(from, max_bytes, Lsn::MAX)
    }

    /// [`Log::read_some`], only the records that end by `until` (a redo
    /// that applies hardened records only): the others are not decoded.
    pub fn read_some_until(
        &self,
        from: Lsn,
        max_bytes: u64,
        until: Lsn,
    ) -> Result<Vec<Record>, LogError> {
        // The path errors name: the last segment read, or for records
        // from memory the current one (looked up only for an error).
        let (raw, read_path) = match self.read_recent(from, max_bytes) {
            Some(recent) => (recent, None),
            None => {
                let (raw, path) = self.read_stored(from, max_bytes)?;
                (raw, Some(path))
            }
        };
        raw.iter()
            .take_while(|r| r.end_lsn() <= until)
            .map(|r| {
                Record::decode(&r.bytes)
                    .map(|(record, _)| record)
                    .map_err(|cause| LogError::Corrupt {
                        path: read_path.clone().unwrap_or_else(|| {
                            self.lock().segments.last().expect("a segment").path.clone()
                        }),
                        lsn: r.lsn,
                        cause,
                    })
            })
            .collect()
    }

    /// Records from `from` (a record boundary) as stored, read from the
    /// segment files and checked ([`Record::check`]) but not decoded: each
    /// is a slice of one buffer per segment read; the newest, not yet on
    /// disk, from memory. Stops after about `max_bytes` (at least one
    /// record when there is one). Also returns the path of the last
    /// segment read, for the caller's errors.
    fn read_stored(
        &self,
        mut from: Lsn,
        max_bytes: u64,
    ) -> Result<(Vec<RawRecord>, PathBuf), LogError> {
        let mut out: Vec<RawRecord> = Vec::new();
        let mut size = 0u64;
        let mut retried_at = None;
        loop {
            let left = max_bytes.saturating_sub(size);
            if !out.is_empty() && left == 0 {
                return Ok((out, self.lock().path().to_path_buf()));
            }
            let (mut read, path, disk_end) = self.read_on_disk(from, left)?;
            size += read.iter().map(|r| r.bytes.len() as u64).sum::<u64>();
            out.append(&mut read);
            let Some(disk_end) = disk_end else {
                return Ok((out, path));
            };
            // The rest is in memory, unless a write took it to disk since
            // (and it left memory): then read the disk again from there.
            let next = out.last().map_or(from, RawRecord::end_lsn).max(disk_end);
            if let Some(mut recent) = self.read_recent(next, max_bytes.saturating_sub(size)) {
                out.append(&mut recent);
                return Ok((out, path));
            }
            if retried_at == Some(next) {
                // Neither on disk nor in memory, twice: not a record of
                // this log (it was cut or replaced meanwhile).
                let tail = self.lock();
                return Err(LogError::OutOfRange {
                    wanted: next,
                    first: tail.segments[0].first_lsn,
                    end: tail.end,
                });
            }
            retried_at = Some(next);
            from = next;
        }
    }

    /// [`Log::read_stored`] from the segment files only; the third value
    /// is where the records on disk ended, when the reading stopped there
    /// with the budget left and the log goes on in memory.
    fn read_on_disk(
        &self,
        from: Lsn,
        max_bytes: u64,
    ) -> Result<(Vec<RawRecord>, PathBuf, Option<Lsn>), LogError> {
        let (segments, end, disk_end) = {
            let tail = self.lock();
            (tail.segments.clone(), tail.end, tail.disk_end())
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
        let mut last_path = segments.last().expect("a segment").path.clone();
        let mut budget = max_bytes;
        for (i, seg) in segments.iter().enumerate() {
            let seg_end = segments.get(i + 1).map_or(disk_end, |next| next.first_lsn);
            if seg_end <= from {
                continue;
            }
            last_path = seg.path.clone();
            // `from` is a record boundary, so reading can start right there.
            let start = from.max(seg.first_lsn);
            let len = (seg_end - start).min(budget);
            let cut = start + len < seg_end;
            let bytes = Bytes::from(read_range(&seg.path, start - seg.first_lsn, len)?);
            let mut at = 0usize;
            while at < bytes.len() {
                let lsn = start + at as u64;
                let header = match Record::check(&bytes[at..]) {
                    Err(DecodeError::Torn { .. }) if cut => {
                        if out.is_empty() {
                            // The first record alone is over the budget:
                            // its header says how long it is.
                            let offset = lsn - seg.first_lsn;
                            let header = read_range(&seg.path, offset, 8)?;
                            let body = header
                                .get(4..8)
                                .map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
                            let whole =
                                Bytes::from(read_range(&seg.path, offset, 12 + body as u64)?);
                            let header = Record::check(&whole).map_err(corrupt(seg, lsn))?;
                            out.push(raw_at(lsn, header, whole, 0).map_err(corrupt(seg, lsn))?);
                        }
                        return Ok((out, last_path, None));
                    }
                    checked => checked.map_err(corrupt(seg, lsn))?,
                };
                out.push(raw_at(lsn, header, bytes.clone(), at).map_err(corrupt(seg, lsn))?);
                at += header.len;
            }
            budget -= len;
            if cut || budget == 0 {
                return Ok((out, last_path, None));
            }
        }
        Ok((out, last_path, (disk_end < end).then_some(disk_end)))
    }

    /// The records from `from` (a record boundary) on, about `max_bytes` of
    /// them (at least one, unless `max_bytes` is 0), as stored, from the
    /// newest records kept in memory: no I/O, so an async task may call it.
    /// None when they are not all there (`from` is older than the oldest
    /// kept, or the end).
    pub fn read_recent(&self, from: Lsn, max_bytes: u64) -> Option<Vec<RawRecord>> {
        let tail = self.lock();
        if max_bytes == 0 && from >= tail.recent.front()?.lsn && from <= tail.end {
            return Some(Vec::new());
        }
        if from >= tail.end || tail.recent.front().is_none_or(|r| r.lsn > from) {
            return None;
        }
        // A sender that keeps up asks for the newest few records: look
        // among them first, then search the rest.
        let newest = tail.recent.iter().rev().take(8).position(|r| r.lsn <= from);
        let first = match newest {
            Some(back) => tail.recent.len() - 1 - back,
            None => tail.recent.partition_point(|r| r.lsn < from),
        };
        if tail.recent.get(first).is_none_or(|r| r.lsn != from) {
            return None;
        }
        let mut out = Vec::new();
        let mut size = 0u64;
        for r in tail.recent.range(first..) {
            let len = r.bytes.len() as u64;
            if !out.is_empty() && size + len > max_bytes {
                break;
            }
            size += len;
            out.push(r.clone());
        }
        Some(out)
    }

    /// Records from `from` (a record boundary) as stored, for shipping:
    /// from memory when they are recent, else read and checked from disk.
    /// Stops after about `max_bytes` (at least one record when there is one).
    pub fn read_raw(&self, from: Lsn, max_bytes: u64) -> Result<Vec<RawRecord>, LogError> {
        if from == self.end_lsn() {
            return Ok(Vec::new());
        }
        if let Some(records) = self.read_recent(from, max_bytes) {
            return Ok(records);
        }
        Ok(self.read_stored(from, max_bytes)?.0)
    }

    /// Appends a record received from the primary at its own LSN, which
    /// must be this log's end (the logs of all replicas share LSNs),
    /// encoding it here; [`Log::append_encoded`] when its bytes are at hand.
    pub fn append_at(&self, record: &Record) -> Result<Lsn, LogError> {
        let mut encoded = Vec::new();
        record.encode_into(&mut encoded);
        self.append_encoded(record, encoded.into())
    }

    /// Empties the log and starts it again at a full image that starts at
    /// `lsn` in `epoch` (a replica being seeded or rewound from an image
    /// recorded at `lsn` on the primary): one segment starting at `lsn`,
    /// the history `epoch lsn`, the checkpoint `lsn`. Crash-atomic: an
    /// intent file makes [`Log::open`] finish a restart a crash interrupted
    /// (module page).
    pub fn restart_at(&self, lsn: Lsn, epoch: u64) -> Result<(), LogError> {
        // No write of the log replaced is under way or starts (`io`).
        let _io = self.io.lock().unwrap_or_else(|e| e.into_inner());
        let mut tail = self.lock();
        self.check_failed()?;
        write_restart_intent(&self.dir, lsn, epoch)?;
        crate::crashpoint::hit("log.restart.intent");
        finish_restart(&self.dir, lsn, epoch)?;
        let path = segment_path(&self.dir, lsn);
        tail.file = SegmentFile::open(&path)?;
        tail.segments = vec![Segment {
            first_lsn: lsn,
            path,
        }];
        tail.len = 0;
        tail.on_disk = 0;
        tail.held.replace_with(&[]);
        tail.held_at = 0;
        tail.zeroed = 0;
        tail.end = lsn;
        tail.recent.clear();
        tail.recent_bytes = 0;
        tail.generation += 1;
        tail.last = None;
        tail.boundaries.clear();
        tail.boundary(lsn);
        *self.image_pending.lock().unwrap_or_else(|e| e.into_inner()) = Some((lsn, epoch));
        self.durable.send_replace(lsn);
        self.written.send_replace(lsn);
        // Whatever they waited for belonged to the log replaced.
        self.waiting.wake_all();
        Ok(())
    }

    /// Cuts every record at or after `lsn`, which must be a record boundary
    /// between the first LSN and the end: the parts of a transaction whose
    /// last part never reached the log (a crash between its parts) before
    /// the log takes new records after them. Later segments are removed, the
    /// one holding `lsn` is cut and synced.
    pub fn truncate_from(&self, lsn: Lsn) -> Result<(), LogError> {
        // Everything goes to disk first, then the files are cut; no write
        // comes between (`io`).
        let mut copy = self.io.lock().unwrap_or_else(|e| e.into_inner());
        let mut tail = self.lock();
        if lsn >= tail.end {
            return Ok(());
        }
        self.check_failed()?;
        self.write_out_locked(&mut copy, &mut tail)?;
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
        sync_dir(&self.dir)?;
        tail.file = SegmentFile::open(&seg.path)?;
        tail.len = lsn - seg.first_lsn;
        tail.zeroed = tail.len;
        tail.hold_last_block()?;
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
        while tail.boundaries.back().is_some_and(|b| *b > lsn) {
            tail.boundaries.pop_back();
        }
        // The cut is at a transaction boundary (see above).
        tail.boundary(lsn);
        drop(tail);
        if self.last_record().is_none() && lsn > first {
            // The record before the cut was no longer cached: read it back.
            let (_, _, _, last) = scan_segment(&seg, false, None)?;
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

    /// The newest LSN at or before `lsn` where a transaction (or a full
    /// image) ends: a reader that stops there never holds part of one.
    /// None when no such LSN is remembered (the log holds at most the
    /// newest 65,536 boundaries).
    pub fn boundary_at_or_before(&self, lsn: Lsn) -> Option<Lsn> {
        let tail = self.lock();
        let after = tail.boundaries.partition_point(|b| *b <= lsn);
        after.checked_sub(1).map(|i| tail.boundaries[i])
    }

    /// Changes whenever the log is replaced or cut ([`Log::restart_at`],
    /// [`Log::truncate_from`]): a reader that planned from the log as it
    /// was (a replication link's start) must plan again.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// A receiver that sees [`Log::durable_lsn`] move at every sync.
    pub fn subscribe_durable(&self) -> watch::Receiver<Lsn> {
        self.durable.subscribe()
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

/// A log closed (a node shutting down, a database dropped or replaced)
/// writes what it holds in memory first: only a crash loses records not
/// yet written, as it loses records not yet synced.
impl Drop for Log {
    fn drop(&mut self) {
        if self.failure().is_none() {
            if let Err(e) = self.write_out(Zeros::Later) {
                tracing::warn!(log = %self.dir.display(), "closing the log, its last records could not be written: {e}");
            }
        }
    }
}

/// The intent file of a log restart (module page).
const RESTART_INTENT: &str = "restart";
/// Present from a log restart until its image is wholly redone (module
/// page): `LSN EPOCH` of the image.
const IMAGE_PENDING: &str = "image-pending";

/// Makes `LSN EPOCH` durable in the intent file: from here on the restart
/// is as good as done.
fn write_restart_intent(dir: &Path, lsn: Lsn, epoch: u64) -> Result<(), LogError> {
    write_lsn_epoch(dir, RESTART_INTENT, lsn, epoch)
}

/// The restart a crash interrupted: (LSN, epoch), if any.
fn read_restart_intent(dir: &Path) -> Result<Option<(Lsn, u64)>, LogError> {
    read_lsn_epoch(dir, RESTART_INTENT)
}

/// `LSN EPOCH` from the file `name` in `dir`, if it exists.
fn read_lsn_epoch(dir: &Path, name: &str) -> Result<Option<(Lsn, u64)>, LogError> {
    let path = dir.join(name);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(LogError::Io { path, source }),
    };
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    match (parts.next(), parts.next()) {
        (Some(Ok(lsn)), Some(Ok(epoch))) => Ok(Some((lsn, epoch))),
        _ => Err(LogError::Io {
            path,
            source: io::Error::other(format!(
                "bad contents {:?}: remove this log folder and the database file, the replica is seeded again",
                text.trim()
            )),
        }),
    }
}

/// Writes `LSN EPOCH` durably to the file `name` in `dir` (temp file,
/// fsync, rename, directory fsync).
fn write_lsn_epoch(dir: &Path, name: &str, lsn: Lsn, epoch: u64) -> Result<(), LogError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    File::create(&tmp)
        .and_then(|mut f| {
            writeln!(f, "{lsn} {epoch}")?;
            f.sync_all()
        })
        .map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    sync_dir(dir)
}

/// The steps of a restart after its intent is durable; each is
/// idempotent, so a crash anywhere leaves the intent to finish them again.
fn finish_restart(dir: &Path, lsn: Lsn, epoch: u64) -> Result<(), LogError> {
    let path = segment_path(dir, lsn);
    create_segment(dir, &path)?;
    crate::crashpoint::hit("log.restart.new_segment");
    for seg in list_segments(dir)? {
        if seg.path != path {
            fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
        }
    }
    sync_dir(dir)?;
    crate::crashpoint::hit("log.restart.old_removed");
    super::reset_history(dir, epoch, lsn)?;
    crate::crashpoint::hit("log.restart.history");
    super::write_checkpoint(dir, lsn)?;
    crate::crashpoint::hit("log.restart.checkpoint");
    write_lsn_epoch(dir, IMAGE_PENDING, lsn, epoch)?;
    let intent = dir.join(RESTART_INTENT);
    fs::remove_file(&intent).map_err(io_err(&intent))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    crate::durable::sync_dir(dir).map_err(io_err(dir))
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
    sync_dir(dir)
}

/// The record checked at `at` in `bytes`, which must start at `lsn`, as
/// stored: a slice of `bytes`, not a copy.
fn raw_at(lsn: Lsn, header: Header, bytes: Bytes, at: usize) -> Result<RawRecord, DecodeError> {
    if header.lsn != lsn {
        return Err(DecodeError::Inconsistent(format!(
            "record says LSN {}",
            header.lsn
        )));
    }
    Ok(RawRecord {
        lsn,
        commit_time_us: header.commit_time_us,
        bytes: bytes.slice(at..at + header.len),
    })
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

/// What a scan of a segment found: its end LSN, its valid length, the
/// file's length (records and the zeros written ahead of them), and its
/// last record's start and crc.
type Scanned = (Lsn, u64, u64, Option<(Lsn, u32)>);

/// Walks a segment's records; returns (end LSN, valid length, file length,
/// the last record's start and crc). The records end where only zeros
/// follow (written ahead, [`PREALLOCATE_BYTES`]) — in a segment that is not
/// the last, only at `ends_at`, where the next one starts. With `repair`
/// (the last segment), damage with no valid record after it is the tail of
/// the last writes and is cut off (module page); damage followed by a
/// valid record is always an error.
fn scan_segment(seg: &Segment, repair: bool, ends_at: Option<Lsn>) -> Result<Scanned, LogError> {
    let mut file = File::open(&seg.path).map_err(io_err(&seg.path))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io_err(&seg.path))?;
    let mut at = 0usize;
    let mut last = None;
    while at < bytes.len() {
        let lsn = seg.first_lsn + at as u64;
        if bytes[at..].iter().all(|b| *b == 0) && ends_at.is_none_or(|end| end == lsn) {
            return Ok((lsn, at as u64, bytes.len() as u64, last));
        }
        let cause = match Record::decode(&bytes[at..]) {
            Ok((record, len)) if record.lsn == lsn => {
                let crc =
                    u32::from_le_bytes(bytes[at + len - 4..at + len].try_into().expect("4 bytes"));
                last = Some((lsn, crc));
                at += len;
                continue;
            }
            Ok((record, _)) => {
                DecodeError::Inconsistent(format!("the record there says LSN {}", record.lsn))
            }
            Err(cause) => cause,
        };
        if let Some(next) = valid_record_after(&bytes, at + 1, seg.first_lsn) {
            return Err(LogError::CorruptBeforeValid {
                path: seg.path.clone(),
                lsn,
                cause,
                next,
            });
        }
        if !repair {
            return Err(LogError::Corrupt {
                path: seg.path.clone(),
                lsn,
                cause,
            });
        }
        tracing::warn!(
            segment = %seg.path.display(),
            lsn,
            cut = bytes.len() - at,
            "the log ends in a damaged tail ({cause}) with no valid record after it: never acknowledged, cut off"
        );
        let f = OpenOptions::new()
            .write(true)
            .open(&seg.path)
            .map_err(io_err(&seg.path))?;
        f.set_len(at as u64).map_err(io_err(&seg.path))?;
        f.sync_all().map_err(io_err(&seg.path))?;
        return Ok((lsn, at as u64, at as u64, last));
    }
    Ok((seg.first_lsn + at as u64, at as u64, at as u64, last))
}

/// Zeros are written this far ahead of the records of the current segment
/// (never far past its end), a chunk at a time: a record then overwrites
/// blocks the file already has, so the write that makes it durable writes
/// its data only, not the file's size and block map as well (PostgreSQL
/// zero-fills its WAL segments for the same reason). A scan takes the
/// zeros after the last record for the end of the log.
///
/// The write that takes records to disk ([`Log::write_out`]) tops the zeros
/// up when less than half of this is left, off the tail's lock, in one
/// write, after the records' waiters are woken (or on the blocking thread
/// the sync turn goes on to, [`Zeros::Later`]); an append
/// that finds too little room writes them itself, and is refused when it
/// cannot (a full disk). The zeros are not synced when written: the first
/// durable write into them makes the file's new blocks durable too. A
/// larger chunk made that first write stall every commit waiting on it
/// (4 MiB: 2.3–3.1 ms once in about 1,000 commits, BENCHMARKS.md, "the
/// sixth step").
pub const PREALLOCATE_BYTES: u64 = 256 << 10;

/// Where zeros written ahead of `tail`'s records start: the first block
/// boundary at or after both the records and the zeros already written
/// (the block the records end in is written whole with them).
fn zeros_from(tail: &Tail) -> u64 {
    tail.zeroed.max(tail.len).next_multiple_of(BLOCK)
}

/// How far zeros go for records that reach `needed` bytes: a chunk past
/// it, not past the segment's end unless the records are, to a block
/// boundary.
fn zero_target(needed: u64) -> u64 {
    (needed + PREALLOCATE_BYTES)
        .min(segment_bytes())
        .max(needed)
        .next_multiple_of(BLOCK)
}

/// Writes zeros after the current segment's records so that the next
/// `len` bytes of records land on zeros already written, unless they do
/// already. Called under the tail lock.
fn zero_ahead(tail: &mut Tail, len: u64) -> io::Result<()> {
    let needed = tail.len + len;
    if needed <= tail.zeroed {
        return Ok(());
    }
    let target = zero_target(needed);
    tail.file.write_zeros(zeros_from(tail), target)?;
    tail.zeroed = target;
    Ok(())
}

/// The LSN of the first valid record at or after byte `from` of a segment
/// that starts at `first_lsn`: its magic, its checksum, and its stored LSN
/// equal to where it lies (so bytes inside another record cannot pass).
fn valid_record_after(bytes: &[u8], from: usize, first_lsn: Lsn) -> Option<Lsn> {
    let magic = *b"AVL2";
    (from..(bytes.len() + 1).saturating_sub(16)).find_map(|o| {
        if bytes[o..o + 4] != magic {
            return None;
        }
        let at = first_lsn + o as u64;
        let stored_lsn = u64::from_le_bytes(bytes[o + 8..o + 16].try_into().expect("8 bytes"));
        if stored_lsn != at {
            return None;
        }
        Record::decode(&bytes[o..]).ok().map(|_| at)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Makes logs opened on this thread write through the page cache.
        pub(super) static FORCE_BUFFERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        /// Makes direct writes on this thread fail with `EINVAL`, as on a
        /// file system that takes `O_DIRECT` at open but not our blocks.
        pub(super) static REFUSE_DIRECT_WRITES: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

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

    #[test]
    fn a_transaction_boundary_is_never_inside_a_transaction_split_in_parts_and_survives_reopening()
    {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path()).unwrap());
        assert_eq!(log.boundary_at_or_before(0), Some(0), "an empty log");
        let one = log.append(record(1)).unwrap();
        let mut part = record(2);
        part.flags = Record::TX_MORE;
        let inside = log.append(part.clone()).unwrap();
        let inside2 = log.append(part).unwrap();
        assert_eq!(log.boundary_at_or_before(inside), Some(one));
        assert_eq!(log.boundary_at_or_before(inside2 + 10), Some(one));
        let two = log.append(record(3)).unwrap();
        assert_eq!(log.boundary_at_or_before(two), Some(two));
        assert_eq!(log.boundary_at_or_before(two - 1), Some(one));
        drop(log);
        let log = Arc::new(Log::open(dir.path()).unwrap());
        assert_eq!(log.boundary_at_or_before(two), Some(two), "reopened");
        let mut part = record(4);
        part.flags = Record::TX_MORE;
        let torn = log.append(part).unwrap();
        drop(log);
        let log = Arc::new(Log::open(dir.path()).unwrap());
        assert_eq!(
            log.boundary_at_or_before(torn),
            None,
            "a log that ends inside a transaction: unknown until it is cut"
        );
        log.truncate_from(two).unwrap();
        assert_eq!(log.boundary_at_or_before(torn), Some(two), "cut back");
        log.restart_at(torn + 1000, 2).unwrap();
        assert_eq!(log.boundary_at_or_before(torn + 999), None, "restarted");
        assert_eq!(log.boundary_at_or_before(torn + 1000), Some(torn + 1000));
    }

    #[test]
    fn a_new_log_folder_is_made_durable_in_every_parent_folder_created_for_it() {
        // A log whose segment and folder were fsynced can still vanish
        // whole in a power loss if the folders created above it were never
        // synced in their parents: records hardened (and acknowledged) gone.
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let dir = root.join("data/log/app");
        Log::open(&dir).unwrap();
        let synced = crate::durable::synced_under(root);
        for parent in [root.to_path_buf(), root.join("data"), root.join("data/log")] {
            assert!(
                synced.contains(&parent),
                "{} was not synced after a folder was created in it: {synced:?}",
                parent.display()
            );
        }
        assert!(synced.contains(&dir), "the new segment's entry: {synced:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiter_dropped_in_the_middle_of_its_sync_does_not_stop_group_commit() {
        use futures::FutureExt;
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path()).unwrap());
        for round in 1..=20u8 {
            // Polled once: it takes the sync turn and starts syncing on a
            // blocking thread, then is dropped (as when the other half of a
            // commit fails first). On a busy machine that thread may finish
            // a small sync before the one poll looks: then the waiter was
            // not dropped mid-sync, and the round tries again.
            let dropped_mid_sync = (0..100).any(|_| {
                let end = log.append(record(round)).unwrap();
                log.wait_durable(end).now_or_never().is_none()
            });
            assert!(
                dropped_mid_sync,
                "round {round}: 100 waiters in a row finished their sync within one poll"
            );
            let end = log.append(record(round)).unwrap();
            tokio::time::timeout(std::time::Duration::from_secs(10), log.wait_durable(end))
                .await
                .unwrap_or_else(|_| panic!("round {round}: the log never became durable"))
                .unwrap();
        }
    }

    /// Polls until `done` holds (10 s at most).
    async fn eventually(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// Group commit, rule 2: a sync that leaves records written after what
    /// it covered passes the turn to a blocking thread, which syncs them
    /// with nobody waiting for them, and then gives the turn up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_written_during_a_sync_are_synced_by_the_turn_passed_on() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path()).unwrap());
        // A sync holds the turn; it covers the first record, and two more
        // are written meanwhile.
        log.syncing.store(true, Ordering::SeqCst);
        let first = log.append(record(1)).unwrap();
        assert_eq!(log.sync_blocking().unwrap(), first);
        let ends = [
            log.append(record(2)).unwrap(),
            log.append(record(3)).unwrap(),
        ];
        HeldTurn(log.clone()).hand_on();
        eventually("the records written during the sync are durable", || {
            log.durable_lsn() == ends[1]
        })
        .await;
        eventually("the turn is free", || !log.syncing.load(Ordering::SeqCst)).await;
        assert_eq!(log.syncs.load(Ordering::SeqCst), 2, "one sync for both");
        // With nothing left to sync, the turn is given up at once.
        log.syncing.store(true, Ordering::SeqCst);
        HeldTurn(log.clone()).hand_on();
        assert!(!log.syncing.load(Ordering::SeqCst));
        assert_eq!(log.syncs.load(Ordering::SeqCst), 2);
    }

    /// Zeros written ahead never hold up a commit's return (`# Zeros
    /// written ahead`, group commit rule 2): a commit that syncs on its own
    /// worker while zeros are due returns with them not yet written, and
    /// the blocking thread it hands the turn to writes them, then frees the
    /// turn.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_syncing_on_its_worker_leaves_the_zeros_ahead_to_the_turn_passed_on() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path()).unwrap());
        let mut end = log.append(record(1)).unwrap();
        log.sync_blocking().unwrap();
        let zeroed = log.lock().zeroed;
        assert!(log.lock().zeros_due().is_none(), "a sync tops the zeros up");
        for n in 0..100_000u32 {
            if log.lock().zeros_due().is_some() {
                break;
            }
            end = log.append(record((n % 200) as u8 + 2)).unwrap();
        }
        assert!(
            log.lock().zeros_due().is_some(),
            "records reached the zeros' second half"
        );
        assert_eq!(
            log.lock().zeroed,
            zeroed,
            "the appends needed no zeros of their own"
        );

        log.zeros_held.store(true, Ordering::SeqCst);
        let commit = tokio::spawn({
            let log = log.clone();
            async move { log.wait_durable_here(end).await }
        });
        let returned = tokio::time::timeout(std::time::Duration::from_secs(10), commit).await;
        if returned.is_err() {
            log.zeros_held.store(false, Ordering::SeqCst);
            panic!("the commit waited for the zeros ahead");
        }
        returned.unwrap().unwrap().unwrap();
        assert_eq!(log.durable_lsn(), end);
        assert_eq!(
            log.lock().zeroed,
            zeroed,
            "not written on the commit's way back"
        );
        assert!(
            log.syncing.load(Ordering::SeqCst),
            "the turn went on for them"
        );

        log.zeros_held.store(false, Ordering::SeqCst);
        eventually("the turn passed on writes the zeros", || {
            log.lock().zeroed > zeroed
        })
        .await;
        eventually("and then frees the turn", || {
            !log.syncing.load(Ordering::SeqCst)
        })
        .await;
        assert!(log.lock().zeros_due().is_none());
    }

    /// Group commit, rule 3: whoever lets the turn go looks for records
    /// not yet durable and keeps (or takes back) the turn for them; a
    /// failed log has none, so a failure cannot keep a thread syncing.
    #[test]
    fn the_turn_is_kept_while_records_are_not_durable_and_never_on_a_failed_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path()).unwrap());
        log.syncing.store(true, Ordering::SeqCst);
        assert!(HeldTurn(log.clone()).keep_or_give_up().is_none());
        assert!(!log.syncing.load(Ordering::SeqCst), "nothing to sync: free");
        log.syncing.store(true, Ordering::SeqCst);
        let end = log.append(record(1)).unwrap();
        let kept = HeldTurn(log.clone()).keep_or_give_up().expect("kept");
        assert!(log.syncing.load(Ordering::SeqCst));
        // The thread's sync fails: the log fails, and the turn is free.
        *log.fail_next_sync.lock().unwrap() = Some(io::Error::from_raw_os_error(libc::EIO));
        kept.keep_syncing();
        assert!(!log.syncing.load(Ordering::SeqCst));
        assert!(log.failure().is_some());
        assert!(log.wait_durable_blocking(end).is_err());
        log.syncing.store(true, Ordering::SeqCst);
        assert!(
            HeldTurn(log.clone()).keep_or_give_up().is_none(),
            "a failed log keeps no turn for records it will never sync"
        );
    }

    /// Group commit, rule 3, for a waiter's turn: given up while records
    /// written are not durable, it wakes the async waiters (one of them may
    /// have found the turn taken just before); with none, it wakes nobody.
    #[test]
    fn a_turn_given_up_with_records_not_durable_wakes_the_waiters_to_look_again() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path()).unwrap());
        let waiter = log.waiting.register(1);
        log.syncing.store(true, Ordering::SeqCst);
        drop(SyncTurn(&log));
        assert!(!waiter.was_woken(), "nothing to sync: nobody woken");
        log.syncing.store(true, Ordering::SeqCst);
        let end = log.append(record(1)).unwrap();
        let after = log.waiting.register(end);
        drop(SyncTurn(&log));
        assert!(!log.syncing.load(Ordering::SeqCst));
        assert!(
            waiter.was_woken() && after.was_woken(),
            "the waiters look again"
        );
    }

    /// A sync wakes the async waiters whose records it made durable and
    /// no other (`waiters`, rule 1); a failure wakes every one, so they
    /// learn it at once.
    #[test]
    fn a_sync_wakes_only_the_waiters_it_made_durable() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path()).unwrap());
        let e1 = log.append(record(1)).unwrap();
        let e2 = e1 + record(2).encoded_len() as u64;
        let (w1, w2) = (log.waiting.register(e1), log.waiting.register(e2));
        log.sync_blocking().unwrap();
        assert_eq!(log.append(record(2)).unwrap(), e2);
        assert!(w1.was_woken(), "made durable: woken");
        assert!(!w2.was_woken(), "not durable yet: left asleep");
        *log.fail_next_sync.lock().unwrap() = Some(io::Error::from_raw_os_error(libc::EIO));
        assert!(log.sync_blocking().is_err());
        assert!(w2.was_woken(), "a failure wakes every waiter");
    }

    /// Commits on many tasks, each syncing on its worker when it finds the
    /// turn free: every one becomes durable, and when they are done the
    /// turn is free again (no handing on leaks it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_that_pass_the_turn_on_all_become_durable_and_free_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path()).unwrap());
        let committers: Vec<_> = (0..8u8)
            .map(|task| {
                let log = log.clone();
                tokio::spawn(async move {
                    for round in 0..25u8 {
                        let end = log.append(record(task * 25 + round)).unwrap();
                        log.wait_durable_here(end).await.unwrap();
                        assert!(log.durable_lsn() >= end);
                    }
                })
            })
            .collect();
        for committer in committers {
            tokio::time::timeout(std::time::Duration::from_secs(30), committer)
                .await
                .expect("every commit became durable")
                .unwrap();
        }
        eventually("the turn is free", || !log.syncing.load(Ordering::SeqCst)).await;
        assert_eq!(log.durable_lsn(), log.end_lsn());
    }

    /// A publisher wakes blocking waiters only when the count says some
    /// sleep (`wake_blocked`): a waiter must be counted for as long as it
    /// sleeps, or its wake-up is skipped, and uncounted once it is awake.
    #[test]
    fn a_blocking_waiter_is_counted_while_it_sleeps_and_not_after() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path()).unwrap());
        log.syncing.store(true, Ordering::SeqCst);
        let end = log.append(record(1)).unwrap();
        let asleep = || *log.blocked.0.lock().unwrap();
        let waiter = std::thread::spawn({
            let log = log.clone();
            move || log.wait_durable_blocking(end)
        });
        let mut polls = 0;
        while asleep() == 0 {
            polls += 1;
            assert!(polls < 2_000, "the waiter was never counted as asleep");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(asleep(), 1);
        drop(SyncTurn(&log));
        waiter.join().unwrap().unwrap();
        assert_eq!(log.durable_lsn(), end);
        assert_eq!(asleep(), 0, "an awake waiter is not counted");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commits_waiting_on_blocking_threads_while_a_sync_runs_share_the_next_one() {
        // Group commit on the commit path's blocking threads: records
        // appended while one waiter syncs are covered by one more sync, not
        // one each, and an async waiter is covered by it too.
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path()).unwrap());
        // A sync in progress holds the turn.
        log.syncing.store(true, Ordering::SeqCst);
        let ends: Vec<Lsn> = (1..=4).map(|n| log.append(record(n)).unwrap()).collect();
        let blocked: Vec<_> = ends
            .iter()
            .map(|&end| {
                let log = log.clone();
                std::thread::spawn(move || log.wait_durable_blocking(end))
            })
            .collect();
        let waiting = tokio::spawn({
            let log = log.clone();
            let end = ends[3];
            async move { log.wait_durable(end).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(log.durable_lsn(), 0, "nothing syncs while the turn is held");
        assert_eq!(log.syncs.load(Ordering::SeqCst), 0);
        // The sync in progress ends (it covered none of them).
        drop(SyncTurn(&log));
        for waiter in blocked {
            waiter.join().unwrap().unwrap();
        }
        waiting.await.unwrap().unwrap();
        assert_eq!(log.durable_lsn(), ends[3]);
        assert_eq!(
            log.syncs.load(Ordering::SeqCst),
            1,
            "five waiters, one sync"
        );
    }

    #[test]
    fn a_failed_fsync_on_the_blocking_path_fails_the_log_for_every_waiter() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path()).unwrap());
        let end1 = log.append(record(1)).unwrap();
        log.wait_durable_blocking(end1).unwrap();
        let end2 = log.append(record(2)).unwrap();
        *log.fail_next_sync.lock().unwrap() = Some(io::Error::from_raw_os_error(libc::EIO));
        let err = log.wait_durable_blocking(end2).unwrap_err();
        assert!(matches!(err, LogError::Failed { .. }), "{err}");
        // Never retried: the next waiter fails too instead of syncing.
        assert!(log.wait_durable_blocking(end2).is_err());
        assert_eq!(log.durable_lsn(), end1);
    }

    /// A write of the log's tail holds the `io` turn from its copy to its
    /// end: a restart waits for it, so no write of the log replaced lands
    /// in the new one's file, nor makes the new log durable.
    #[tokio::test]
    async fn a_restart_waits_for_the_write_under_way_and_starts_a_log_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path()).unwrap());
        let old_end = log.append(record(1)).unwrap();
        let write_under_way = log.io.lock().unwrap();
        let restart = std::thread::spawn({
            let log = log.clone();
            move || log.restart_at(1_000, 1)
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(
            !restart.is_finished(),
            "the restart went ahead of the write under way"
        );
        assert_eq!(log.end_lsn(), old_end);
        drop(write_under_way);
        restart.join().unwrap().unwrap();
        assert_eq!((log.end_lsn(), log.durable_lsn()), (1_000, 1_000));
        let end = log
            .append_at(&Record {
                lsn: 1_000,
                ..record(2)
            })
            .unwrap();
        assert_eq!(log.durable_lsn(), 1_000);
        log.wait_durable(end).await.unwrap();
        assert_eq!(log.durable_lsn(), end);
    }

    #[tokio::test]
    async fn appended_records_read_back_in_order_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path()).unwrap());
        let mut ends = Vec::new();
        for n in 1..=5 {
            ends.push(log.append(record(n)).unwrap());
        }
        log.wait_durable(*ends.last().unwrap()).await.unwrap();
        assert_eq!(log.durable_lsn(), log.end_lsn());
        drop(log);
        let log = Arc::new(Log::open(dir.path()).unwrap());
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
        let log = Arc::new(Log::open(dir.path()).unwrap());
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
        let log = Arc::new(Log::open(dir.path()).unwrap());
        assert_eq!(
            check(log.read_raw(decoded[1].lsn, u64::MAX).unwrap(), 1),
            3,
            "from disk"
        );
    }

    #[test]
    fn a_torn_last_record_is_cut_and_never_returned() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path()).unwrap());
        let end1 = log.append(record(1)).unwrap();
        let end2 = log.append(record(2)).unwrap();
        drop(log);
        let seg = segment_path(dir.path(), 0);
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(end2 - 10)
            .unwrap();
        let log = Arc::new(Log::open(dir.path()).unwrap());
        assert_eq!(log.end_lsn(), end1);
        assert_eq!(log.read_from(0).unwrap().len(), 1);
        assert_eq!(
            log.append(record(3)).unwrap(),
            end1 + record(3).encoded_len() as u64
        );
    }

    /// Direct I/O: records wait in memory until a write takes them to
    /// disk, so a read of the files goes on in memory where the records
    /// on disk end — at any budget, whether some, all or none are on disk.
    #[test]
    fn records_not_yet_on_disk_are_read_from_memory_where_the_files_end() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path()).unwrap());
        let mut ends: Vec<Lsn> = (1..=3).map(|i| log.append(record(i)).unwrap()).collect();
        let expected = |n: usize| (1..=n as u8).map(record).collect::<Vec<_>>();
        let stored = |log: &Log, from: Lsn, max: u64| {
            let (raw, _) = log.read_stored(from, max).unwrap();
            raw.iter()
                .map(|r| {
                    let mut rec = Record::decode(&r.bytes).unwrap().0;
                    rec.lsn = 0;
                    rec
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(log.lock().on_disk, 0, "nothing written yet");
        assert_eq!(stored(&log, 0, u64::MAX), expected(3), "none on disk");
        log.sync_blocking().unwrap();
        ends.extend((4..=6).map(|i| log.append(record(i)).unwrap()));
        assert_eq!(log.lock().disk_end(), ends[2]);
        assert_eq!(stored(&log, 0, u64::MAX), expected(6), "some on disk");
        assert_eq!(
            stored(&log, ends[1], u64::MAX),
            expected(6)[2..],
            "from the last on disk"
        );
        assert_eq!(
            stored(&log, ends[3], u64::MAX),
            expected(6)[4..],
            "from memory only"
        );
        let one = record(1).encoded_len() as u64;
        assert_eq!(
            stored(&log, ends[1], 2 * one),
            expected(6)[2..4],
            "about max_bytes across"
        );
        assert_eq!(stored(&log, ends[2], 1), expected(6)[3..4], "at least one");
        log.sync_blocking().unwrap();
        assert_eq!(stored(&log, 0, u64::MAX), expected(6), "all on disk");
    }

    /// A bulk load's records wait in memory for [`UNWRITTEN_BYTES`] at
    /// most: its appender writes them out, durably, beyond that.
    #[test]
    fn a_bulk_load_does_not_wait_in_memory_past_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path()).unwrap());
        let part = |n: u8| Record {
            pages: (1..=64u32).map(|p| (p, vec![n | 1; 4096])).collect(),
            page_size: 4096,
            ..record(n)
        };
        let one = part(1).encoded_len() as u64;
        for n in 0..=(3 * UNWRITTEN_BYTES / one) as u8 {
            log.append(part(n)).unwrap();
            let tail = log.lock();
            assert!(
                tail.len - tail.on_disk <= UNWRITTEN_BYTES,
                "{} bytes wait in memory",
                tail.len - tail.on_disk
            );
            assert!(tail.held.len as u64 <= UNWRITTEN_BYTES + BLOCK);
        }
        assert!(
            log.durable_lsn() > 2 * UNWRITTEN_BYTES,
            "written durably on the way"
        );
        log.sync_blocking().unwrap();
        assert!(
            log.lock().held.capacity() <= HELD_BYTES as usize,
            "the tail's room given back"
        );
        assert!(
            log.io.lock().unwrap().capacity() <= HELD_BYTES as usize,
            "the copy's room given back"
        );
    }

    /// The log writes its records by direct I/O where the file system
    /// allows it, and through the page cache and `fdatasync` where not (or
    /// when told so): both keep what they write.
    #[test]
    fn records_survive_reopening_written_by_direct_io_or_through_the_page_cache() {
        for buffered in [false, true] {
            FORCE_BUFFERED.with(|b| b.set(buffered));
            let dir = tempfile::tempdir().unwrap();
            let log = Arc::new(Log::open(dir.path()).unwrap());
            let direct = log.lock().file.direct;
            if buffered {
                assert!(!direct, "told to write through the page cache");
            } else if !direct {
                eprintln!(
                    "WARNING: the file system of {} refuses O_DIRECT: the direct I/O path is NOT tested here",
                    dir.path().display()
                );
            }
            let ends: Vec<Lsn> = (1..=40).map(|i| log.append(record(i)).unwrap()).collect();
            log.sync_blocking().unwrap();
            log.append(record(41)).unwrap();
            drop(log);
            let log = Log::open(dir.path()).unwrap();
            assert_eq!(log.read_from(0).unwrap().len(), 41, "buffered: {buffered}");
            assert_eq!(log.read_from(ends[38]).unwrap().len(), 2);
        }
        FORCE_BUFFERED.with(|b| b.set(false));
    }

    /// A file system may take `O_DIRECT` at open and refuse the writes
    /// themselves with `EINVAL` (blocks larger than ours): the refused
    /// write wrote nothing, so the log makes it through the page cache and
    /// goes on, and every record survives reopening.
    #[test]
    fn a_direct_write_refused_after_the_open_goes_through_the_page_cache_and_the_log_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path()).unwrap());
        let direct = log.lock().file.direct;
        if !direct {
            eprintln!(
                "WARNING: the file system of {} refuses O_DIRECT at open: a direct write refused later is NOT tested here",
                dir.path().display()
            );
        }
        for i in 1..=5 {
            log.append(record(i)).unwrap();
        }
        log.sync_blocking().expect("direct writes");
        REFUSE_DIRECT_WRITES.with(|r| r.set(true));
        // Small records, then big ones past the zeros written ahead: the
        // zeros too are written through the page cache.
        let big = |n: u8| Record {
            page_size: 1 << 16,
            pages: vec![(n as u32, vec![n; 1 << 16])],
            ..record(n)
        };
        let ends: Vec<Lsn> = (6..=32)
            .map(record)
            .chain((33..=40).map(big))
            .map(|r| log.append(r).unwrap())
            .collect();
        let synced = log.sync_blocking();
        REFUSE_DIRECT_WRITES.with(|r| r.set(false));
        synced.expect("a refused direct write is made through the page cache");
        assert_eq!(log.failure(), None, "the log did not fail");
        assert!(log.durable_lsn() >= *ends.last().unwrap());
        if direct {
            assert!(
                log.lock().file.refused.get().is_some(),
                "the segment writes through the page cache from now on"
            );
        }
        log.append(record(41)).unwrap();
        log.sync_blocking().expect("later writes");
        drop(log);
        let log = Log::open(dir.path()).unwrap();
        assert_eq!(log.read_from(0).unwrap().len(), 41);
    }

    #[test]
    fn records_read_from_memory_are_the_records_read_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path()).unwrap());
        let ends: Vec<Lsn> = (1..=20).map(|i| log.append(record(i)).unwrap()).collect();
        let one = record(1).encoded_len() as u64;
        let reads = |log: &Log| {
            [
                (0, u64::MAX),
                (ends[1], u64::MAX),
                (ends[1], 1),
                (ends[1], 2 * one),
                (0, 0),
                (ends[16], u64::MAX),
                (ends[16], 1),
            ]
            .map(|(from, max)| log.read_some(from, max).unwrap())
        };
        // In memory: among the newest few records and further back, and
        // nothing where no record starts.
        for from in [ends[1], ends[16]] {
            assert!(log.read_recent(from, 1).is_some());
            assert!(log.read_recent(from + 1, 1).is_none());
        }
        let from_memory = reads(&log);
        drop(log);
        let log = Arc::new(Log::open(dir.path()).unwrap());
        let from_disk = reads(&log);
        for (i, (m, d)) in from_memory.iter().zip(&from_disk).enumerate() {
            assert_eq!(m.len(), d.len(), "read {i}: record counts");
            assert_eq!(m, d, "read {i}");
        }
        assert_eq!(from_disk[0].len(), 20);
        assert_eq!(from_disk[2].len(), 1, "at least one record");
        assert_eq!(from_disk[3].len(), 2, "about max_bytes");
        assert_eq!(from_disk[5].len(), 3);
    }

    #[test]
    fn zeros_written_ahead_of_the_records_end_the_log_and_are_overwritten_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path()).unwrap());
        let end1 = log.append(record(1)).unwrap();
        log.sync_blocking().unwrap();
        drop(log);
        let seg = segment_path(dir.path(), 0);
        let len = fs::metadata(&seg).unwrap().len();
        assert!(len > end1, "zeros written ahead: {len} bytes for {end1}");
        let log = Arc::new(Log::open(dir.path()).unwrap());
        assert_eq!(log.end_lsn(), end1, "the zeros are no record");
        let end2 = log.append(record(2)).unwrap();
        assert_eq!(fs::metadata(&seg).unwrap().len(), len, "written in place");
        drop(log);
        let log = Arc::new(Log::open(dir.path()).unwrap());
        assert_eq!(log.end_lsn(), end2);
        assert_eq!(log.read_from(0).unwrap().len(), 2);
    }

    #[test]
    fn a_torn_last_record_followed_by_zeros_is_cut_and_never_returned() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path()).unwrap());
        let end1 = log.append(record(1)).unwrap();
        let end2 = log.append(record(2)).unwrap();
        drop(log);
        // The last block of record 2 never reached the disk: zeros, as
        // written ahead, where its end should be.
        let seg = segment_path(dir.path(), 0);
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[0; 10], end2 - 10).unwrap();
        let log = Arc::new(Log::open(dir.path()).unwrap());
        assert_eq!(log.end_lsn(), end1);
        assert_eq!(log.read_from(0).unwrap().len(), 1);
        assert_eq!(
            log.append(record(3)).unwrap(),
            end1 + record(3).encoded_len() as u64
        );
    }

    #[test]
    fn zeros_in_a_segment_before_the_last_short_of_its_end_are_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, ends) = log_of(dir.path(), 2);
        let log = Arc::new(Log::open(dir.path()).unwrap());
        // A segment full for any record: closed, a new one started.
        log.roll(u64::MAX).unwrap();
        drop(log);
        // Record 2, the last of the first segment, lost: zeros.
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        let lost = (ends[1] - ends[0]) as usize;
        std::os::unix::fs::FileExt::write_all_at(&f, &vec![0; lost], ends[0]).unwrap();
        let err = Log::open(dir.path()).err().expect("refused");
        assert!(
            matches!(err, LogError::Corrupt { lsn, .. } if lsn == ends[0]),
            "{err}"
        );
    }

    #[test]
    fn a_corrupt_record_before_the_end_is_a_must_stop_error() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path()).unwrap());
        log.append(record(1)).unwrap();
        let second = log.append(record(2)).unwrap() - record(2).encoded_len() as u64;
        drop(log);
        let seg = segment_path(dir.path(), 0);
        let mut bytes = fs::read(&seg).unwrap();
        let len = bytes.len() as u64;
        bytes[50] ^= 1;
        fs::write(&seg, bytes).unwrap();
        let err = Log::open(dir.path())
            .err()
            .expect("a corrupt log is refused");
        assert!(
            matches!(err, LogError::CorruptBeforeValid { lsn: 0, next, .. } if next == second),
            "{err}"
        );
        assert!(err
            .to_string()
            .contains("restore this database from a replica"));
        assert_eq!(fs::metadata(&seg).unwrap().len(), len, "nothing cut");
    }

    /// A log of `n` records in `dir`; the segment and each record's end.
    fn log_of(dir: &Path, n: u8) -> (PathBuf, Vec<Lsn>) {
        let log = Log::open(dir).unwrap();
        let ends = (1..=n).map(|i| log.append(record(i)).unwrap()).collect();
        log.sync_blocking().unwrap();
        (segment_path(dir, 0), ends)
    }

    /// Opens the log and checks that it holds the first `n` records of
    /// [`log_of`] and takes the next one at the right LSN.
    fn reopens_with(dir: &Path, ends: &[Lsn], n: usize) {
        let log = Log::open(dir).unwrap();
        let end = if n == 0 { 0 } else { ends[n - 1] };
        assert_eq!(log.end_lsn(), end);
        assert_eq!(log.read_from(0).unwrap().len(), n);
        assert_eq!(
            log.append(record(9)).unwrap(),
            end + record(9).encoded_len() as u64
        );
        drop(log);
        assert_eq!(Log::open(dir).unwrap().read_from(0).unwrap().len(), n + 1);
    }

    #[test]
    fn a_zero_filled_tail_is_cut_back_to_the_last_valid_record() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, ends) = log_of(dir.path(), 3);
        // The file grew (its size persisted) but the data never did.
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[0u8; 8192]).unwrap();
        drop(f);
        reopens_with(dir.path(), &ends, 3);
    }

    #[test]
    fn a_last_record_persisted_out_of_order_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, ends) = log_of(dir.path(), 3);
        // The last record's end reached the disk, a block in its middle
        // did not: it is whole in length but its checksum fails.
        let mut bytes = fs::read(&seg).unwrap();
        let start = ends[1] as usize;
        bytes[start + 20..start + 60].fill(0);
        fs::write(&seg, bytes).unwrap();
        reopens_with(dir.path(), &ends, 2);
    }

    #[test]
    fn a_record_whose_header_never_reached_the_disk_is_cut_with_what_follows() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, ends) = log_of(dir.path(), 3);
        // The second record's first block is zeroes; the third record's
        // bytes follow but its position no longer matches its LSN: it
        // landed after garbage (an append after a short write).
        let mut bytes = fs::read(&seg).unwrap();
        let third = bytes[ends[1] as usize..].to_vec();
        bytes.truncate(ends[0] as usize);
        bytes.extend_from_slice(&[0u8; 30]);
        bytes.extend_from_slice(&third);
        fs::write(&seg, bytes).unwrap();
        reopens_with(dir.path(), &ends, 1);
    }

    #[test]
    fn zeroes_followed_by_a_valid_record_are_corruption_not_a_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, ends) = log_of(dir.path(), 3);
        let mut bytes = fs::read(&seg).unwrap();
        bytes[ends[0] as usize..ends[1] as usize].fill(0);
        fs::write(&seg, &bytes).unwrap();
        let err = Log::open(dir.path()).err().expect("refused");
        assert!(
            matches!(err, LogError::CorruptBeforeValid { lsn, next, .. } if lsn == ends[0] && next == ends[1]),
            "{err}"
        );
        assert_eq!(fs::read(&seg).unwrap(), bytes, "nothing cut");
    }

    #[test]
    fn a_torn_record_in_a_segment_before_the_last_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, ends) = log_of(dir.path(), 2);
        let log = Arc::new(Log::open(dir.path()).unwrap());
        // A segment full for any record: closed, a new one started.
        log.roll(u64::MAX).unwrap();
        log.append(record(3)).unwrap();
        drop(log);
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(ends[1] - 5)
            .unwrap();
        let log = Arc::new(Log::open(dir.path()).unwrap());
        assert!(matches!(
            log.read_from(0),
            Err(LogError::Corrupt { lsn, .. }) if lsn == ends[0]
        ));
    }

    /// Direct I/O: a crash (here `abort`, as a kill -9) loses the records
    /// not yet written, never one made durable; a log closed without a
    /// crash writes what it holds first.
    #[test]
    fn a_crash_loses_only_records_not_yet_written_and_a_close_loses_none() {
        use crate::crashpoint::tests_support::{child_dir, crash_in_child};
        if let Some(dir) = child_dir() {
            let log = Log::open(&dir).unwrap();
            for i in 1..=3 {
                log.append(record(i)).unwrap();
            }
            let durable = log.sync_blocking().unwrap();
            fs::write(dir.join("durable"), durable.to_string()).unwrap();
            for i in 4..=5 {
                log.append(record(i)).unwrap();
            }
            std::process::abort();
        }
        let dir = tempfile::tempdir().unwrap();
        let out = crash_in_child(
            "log::store::tests::a_crash_loses_only_records_not_yet_written_and_a_close_loses_none",
            None,
            dir.path(),
        );
        assert!(
            out.status.code().is_none(),
            "the child was to abort:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let durable: Lsn = fs::read_to_string(dir.path().join("durable"))
            .unwrap()
            .parse()
            .unwrap();
        let log = Log::open(dir.path()).unwrap();
        assert_eq!(
            log.end_lsn(),
            durable,
            "only the records not yet written are lost"
        );
        assert_eq!(log.read_from(0).unwrap().len(), 3);
        for i in 4..=5 {
            log.append(record(i)).unwrap();
        }
        drop(log);
        let log = Log::open(dir.path()).unwrap();
        assert_eq!(log.read_from(0).unwrap().len(), 5, "closed: nothing lost");
    }

    /// A full disk (here `RLIMIT_FSIZE`) fails the append that needs room,
    /// before anything is written, and the log goes on.
    #[test]
    fn an_append_that_finds_no_room_on_disk_is_refused_and_the_log_goes_on() {
        use crate::crashpoint::tests_support::{child_dir, crash_in_child};
        // A real short write: RLIMIT_FSIZE stops the write part-way (as a
        // full disk does), in a child process since it binds the process.
        if let Some(dir) = child_dir() {
            let log = Log::open(&dir).unwrap();
            let end1 = log.append(record(1)).unwrap();
            let zeroed = log.lock().zeroed;
            // More than the zeros written ahead: its append must write more.
            let big = Record {
                pages: (1..=80u32).map(|p| (p, vec![p as u8 | 1; 4096])).collect(),
                page_size: 4096,
                ..record(2)
            };
            assert!(
                end1 + big.encoded_len() as u64 > zeroed,
                "{end1} + {} within {zeroed}",
                big.encoded_len()
            );
            let limit = zeroed + BLOCK;
            // SAFETY: plain libc calls on this (single-test) process.
            unsafe {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let lim = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: libc::RLIM_INFINITY,
                };
                assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
            }
            assert!(
                matches!(log.append(big.clone()), Err(LogError::Io { .. })),
                "the zeros it needs cross the limit: refused"
            );
            assert_eq!(log.end_lsn(), end1, "nothing appended");
            assert!(log.failure().is_none(), "the log goes on");
            unsafe {
                let lim = libc::rlimit {
                    rlim_cur: libc::RLIM_INFINITY,
                    rlim_max: libc::RLIM_INFINITY,
                };
                assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
            }
            let end2 = log.append(big.clone()).unwrap();
            assert_eq!(end2, end1 + big.encoded_len() as u64);
            log.sync_blocking().unwrap();
            drop(log);
            let log = Log::open(&dir).unwrap();
            let all = log.read_from(0).unwrap();
            assert_eq!(all.len(), 2);
            assert_eq!(all[1].pages, big.pages);
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = crash_in_child(
            "log::store::tests::an_append_that_finds_no_room_on_disk_is_refused_and_the_log_goes_on",
            None,
            dir.path(),
        );
        assert!(
            out.status.success(),
            "the child failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            Log::open(dir.path()).unwrap().read_from(0).unwrap().len(),
            2
        );
    }

    #[tokio::test]
    async fn a_failed_fsync_is_never_retried_and_the_log_refuses_writes_until_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(Log::open(dir.path()).unwrap());
        let end1 = log.append(record(1)).unwrap();
        log.wait_durable(end1).await.unwrap();
        let end2 = log.append(record(2)).unwrap();
        *log.fail_next_sync.lock().unwrap() = Some(io::Error::from_raw_os_error(libc::EIO));
        let err = log.wait_durable(end2).await.unwrap_err();
        assert!(matches!(err, LogError::Failed { .. }), "{err}");
        assert!(err.to_string().contains("restart this node"), "{err}");
        // The next fsync would succeed: it must not be taken as covering
        // the pages the failed one may have dropped.
        assert!(log.wait_durable(end2).await.is_err());
        assert!(log.sync_blocking().is_err());
        assert_eq!(log.durable_lsn(), end1);
        assert!(matches!(
            log.append(record(3)),
            Err(LogError::Failed { .. })
        ));
        assert!(log.failure().is_some());
        // Announced, so the node stops rather than stay unable to write.
        let announced = crate::failstop::watch().borrow().clone();
        let dir_name = dir.path().display().to_string();
        assert!(
            announced.iter().any(|w| w.contains(&dir_name)),
            "{announced:?}"
        );
        drop(log);
        let log = Arc::new(Log::open(dir.path()).unwrap());
        assert!(log.failure().is_none());
        log.append(record(3)).unwrap();
    }

    #[test]
    fn a_restart_killed_after_any_step_is_finished_when_the_log_opens() {
        use crate::crashpoint::tests_support::{child_dir, crash_in_child, crashed_at};
        const LSN: Lsn = 1 << 20;
        const EPOCH: u64 = 7;
        if let Some(dir) = child_dir() {
            Log::open(&dir).unwrap().restart_at(LSN, EPOCH).unwrap();
            return;
        }
        for point in [
            "log.restart.intent",
            "log.restart.new_segment",
            "log.restart.old_removed",
            "log.restart.history",
            "log.restart.checkpoint",
        ] {
            let dir = tempfile::tempdir().unwrap();
            // An old log: two segments, an epoch history, a checkpoint
            // inside it.
            let (_, ends) = log_of(dir.path(), 3);
            let log = Arc::new(Log::open(dir.path()).unwrap());
            // A segment full for any record: closed, a new one started.
            log.roll(u64::MAX).unwrap();
            log.append(record(4)).unwrap();
            log.sync_blocking().unwrap();
            drop(log);
            super::super::append_history(dir.path(), 1, 0).unwrap();
            super::super::append_history(dir.path(), 2, ends[1]).unwrap();
            super::super::write_checkpoint(dir.path(), ends[1]).unwrap();

            let out = crash_in_child(
                "log::store::tests::a_restart_killed_after_any_step_is_finished_when_the_log_opens",
                Some(point),
                dir.path(),
            );
            assert!(
                crashed_at(&out, point),
                "{point}: the child did not die there:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let log = Log::open(dir.path()).unwrap_or_else(|e| panic!("{point}: {e}"));
            assert_eq!((log.first_lsn(), log.end_lsn()), (LSN, LSN), "{point}");
            assert_eq!(list_segments(dir.path()).unwrap().len(), 1, "{point}");
            assert_eq!(
                super::super::read_history(dir.path()).unwrap(),
                [(EPOCH, LSN)],
                "{point}"
            );
            let checkpoint = super::super::read_checkpoint(dir.path()).unwrap();
            assert_eq!(checkpoint, LSN, "{point}");
            assert!(!dir.path().join(RESTART_INTENT).exists(), "{point}");
            assert_eq!(log.image_pending(), Some((LSN, EPOCH)), "{point}");
            // What recovery reads, and the image's first record.
            assert!(log.read_some(checkpoint, u64::MAX).unwrap().is_empty());
            log.append_at(&Record {
                lsn: LSN,
                epoch: EPOCH,
                ..record(5)
            })
            .unwrap();
            drop(log);
            assert_eq!(
                Log::open(dir.path()).unwrap().read_from(LSN).unwrap().len(),
                1,
                "{point}"
            );
        }
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
        replica.restart_at(records[2].lsn, 1).unwrap();
        replica.append_at(&records[2]).unwrap();
        drop(replica);
        let replica = Log::open(&dir.path().join("r")).unwrap();
        assert_eq!(replica.first_lsn(), records[2].lsn);
        assert_eq!(replica.end_lsn(), primary.end_lsn());
        assert_eq!(replica.read_from(records[2].lsn).unwrap(), records[2..]);
    }

    #[test]
    fn a_replica_log_holds_the_primary_bytes_as_they_arrived() {
        let dir = tempfile::tempdir().unwrap();
        let primary = Log::open(&dir.path().join("p")).unwrap();
        let replica = Log::open(&dir.path().join("r")).unwrap();
        for n in 1..=3 {
            primary.append(record(n)).unwrap();
        }
        let shipped = primary.read_raw(0, u64::MAX).unwrap();
        let records = primary.read_from(0).unwrap();
        assert!(
            replica
                .append_encoded(&records[1], shipped[1].bytes.clone())
                .is_err(),
            "a record past the end is refused"
        );
        for (r, raw) in records.iter().zip(&shipped) {
            replica.append_encoded(r, raw.bytes.clone()).unwrap();
        }
        assert!(
            replica
                .append_encoded(&records[2], shipped[2].bytes.clone())
                .is_err(),
            "a duplicate is refused"
        );
        assert_eq!(replica.last_record(), primary.last_record());
        // The recent records are the shipped bytes themselves, not copies.
        let kept = replica.read_recent(0, u64::MAX).unwrap();
        assert!(kept
            .iter()
            .zip(&shipped)
            .all(|(k, s)| k.bytes.as_ptr() == s.bytes.as_ptr()));
        drop(replica);
        let on_disk = Log::open(&dir.path().join("r")).unwrap();
        assert_eq!(on_disk.read_from(0).unwrap(), records);
        let disk_bytes: Vec<u8> = on_disk
            .read_raw(0, u64::MAX)
            .unwrap()
            .iter()
            .flat_map(|r| r.bytes.to_vec())
            .collect();
        let sent_bytes: Vec<u8> = shipped.iter().flat_map(|r| r.bytes.to_vec()).collect();
        assert_eq!(disk_bytes, sent_bytes);
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
