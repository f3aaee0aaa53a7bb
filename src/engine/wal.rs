//! Reading committed transactions out of SQLite's write-ahead log.
//!
//! After each COMMIT on a database's writer connection, log shipping calls
//! [`WalReader::read_committed`] to collect the page images that the commit
//! appended to the `-wal` file. Each [`WalTransaction`] it returns becomes one
//! log record: the pages, each once, and the database size after the commit.
//!
//! # The WAL format
//! From <https://sqlite.org/fileformat2.html#walformat>; all integers are
//! big-endian.
//! ```text
//! WAL header, 32 bytes
//!    0  magic                0x377f0682 or 0x377f0683 (bit 0: checksum words are big-endian)
//!    4  format version       3007000
//!    8  page size            a power of two, 512..=65536
//!   12  checkpoint sequence  see "Generations" below
//!   16  salt-1, salt-2       identify the generation; copied into every frame
//!   24  checksum-1, -2       over header bytes 0..24, seeded with (0, 0)
//! frame i (from 1) at 32 + (i - 1) * (24 + page size): a 24-byte header, then the page
//!    0  page number          never 0
//!    4  database size        in pages after the commit; non-zero only on a commit frame
//!    8  salt-1, salt-2       must equal the WAL header's
//!   16  checksum-1, -2       over frame-header bytes 0..8 and the page,
//!                            seeded with the previous frame's checksum (frame 1: the header's)
//! ```
//! The checksum reads its input as pairs of 32-bit words `(x0, x1)` in the byte
//! order the magic names and, for each pair, computes `s0 += x0 + s1;
//! s1 += x1 + s0` (wrapping).
//!
//! # What the reader returns
//! * A frame is valid only if its page number is not 0, its salts equal the
//!   header's and its checksum chains from the frame before it. The first
//!   invalid frame ends the log: what lies beyond is stale — frames of an older
//!   generation, or of a rolled-back transaction that spilled pages out of the
//!   cache before it gave up (the next commit overwrites their start, which
//!   breaks the chain after it).
//! * A transaction is the frames after one commit frame up to and including
//!   the next. Only complete transactions are returned; frames after the last
//!   commit frame are neither returned nor consumed, so the next call reads them
//!   again.
//! * Within a transaction a later frame of the same page wins (SQLite appends
//!   the commit frame even when that page already spilled earlier in the same
//!   transaction), pages come out sorted by page number, and pages above the
//!   committed size are dropped.
//! * With `synchronous=FULL` on a file system without powersafe overwrite
//!   (`psow=0`), SQLite pads each commit to a sector boundary by repeating the
//!   commit frame. A commit frame identical to the commit frame just before it
//!   (page number, size and image) is such a copy: it is counted in
//!   [`WalReader::frames_read`] but not returned as a transaction. The copies
//!   follow their commit in the same write, so they are recognised when both
//!   are read by the same call.
//!
//! # Generations
//! When a checkpoint has copied the whole WAL into the database and no reader
//! still uses the WAL, the next write *restarts* the WAL: SQLite rewrites the
//! header with salt-1 plus one and a random salt-2, and writes frames from
//! frame 1 again, over the old ones. A PASSIVE, FULL or RESTART checkpoint
//! leaves the file as it is until that write; a TRUNCATE checkpoint empties the
//! file at once (and the next write starts the new generation). A reader
//! holding a snapshot postpones the restart, and the WAL keeps growing.
//!
//! The reader follows a new header only if its salt-1 is the old one plus one:
//! exactly one restart since the last call. Any other change is
//! [`WalError::GenerationMissed`]. The checkpoint sequence is *not* checked:
//! SQLite keeps that counter per connection (`Wal.nCkpt`, loaded only when a
//! connection recovers the WAL), so it stays the same, or even goes down, when
//! another connection checkpoints or restarts. Salt-1 lives in the shared
//! wal-index, so every restart, by any connection, adds exactly one to it.
//!
//! One case cannot be followed: a connection that has never restarted the WAL
//! itself draws *random* salts when it writes the first frame after a TRUNCATE
//! checkpoint run by another connection. That looks exactly like missed
//! generations and is reported as one. Run checkpoints on the writer
//! connection.
//!
//! # What the caller must do
//! * Call [`WalReader::read_committed`] after every successful commit and
//!   before the next write or checkpoint on that connection, and compare
//!   [`WalReader::frames_read`] with the frame count `sqlite3_wal_hook`
//!   reports for the commit: they must be equal.
//! * Do not call it after a commit that failed: its frames may be in the file
//!   and would be returned although SQLite considers them not committed. Treat
//!   a failed commit as a reason to resynchronize.
//!
//! # Limits
//! * Frames of a generation that were not read before the WAL restarted cannot
//!   be recovered. The reader detects them while the new generation is still
//!   shorter than the old one was at the reader's position: then the old
//!   frames there are intact, and any committed transaction among them is
//!   reported as [`WalError::CommitsMissed`]. When the new generation has
//!   already overwritten that position, or a TRUNCATE checkpoint emptied the
//!   file, the loss is silent: a restart that follows the one-restart pattern
//!   says nothing about how much of the old generation was read. This is why
//!   the caller reads after every commit.
//! * The reader never moves past an error: as long as the file stays as it is,
//!   the next call fails the same way. After an error that is not
//!   [retryable](WalError::is_retryable), drop the reader, resynchronize, and
//!   start a new one. A new reader returns every committed transaction of the
//!   generation the file holds, from frame 1.
//! * [`WalReader::read_committed`] holds each returned transaction in memory
//!   whole. [`WalReader::read_commits`] holds only where each page's newest
//!   image lies in the file (12 bytes a page), and [`WalReader::read_pages`]
//!   reads the images of as many pages as the caller wants at a time: a
//!   transaction of any size is captured a bounded part at a time. The
//!   positions stay true until the next write on the writer connection (the
//!   only thing that overwrites frames: a WAL restart).
//! * The file stays open between calls, but every call checks (one `stat`)
//!   that the path still names it, and opens it anew when not: a WAL that
//!   SQLite deleted and created again (after the last connection closed) is
//!   seen as such. (Opening it at every commit cost an `openat` and a
//!   `close` per commit.)
//! * A reader given the VFS's count of the WAL's changes
//!   ([`WalReader::watch`], `vfs.rs`: "What capture learns from the
//!   shim") makes that check, and reads the header, only when the count
//!   moved since it last did: a commit then costs one read, of its own
//!   frames. The count moves at every open, header write, truncation and
//!   deletion of the WAL, so this holds only where every connection to the
//!   database goes through the VFS (the engine's capture). A change it
//!   missed would not pass unseen: frames of another generation fail the
//!   salt check, and the caller's comparison with `sqlite3_wal_hook`'s
//!   frame count fails.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::mem;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Length of the header at the start of the WAL file.
const WAL_HEADER_LEN: usize = 32;
/// Length of the header in front of each page image.
const FRAME_HEADER_LEN: usize = 24;
/// The magic number with bit 0 (big-endian checksum words) clear.
const WAL_MAGIC: u32 = 0x377f_0682;
/// The only WAL format version SQLite writes.
const WAL_FORMAT_VERSION: u32 = 3_007_000;
/// Frames asked for by the first read of a call. Small, because a call after
/// one commit usually finds a few frames; each further read asks for twice as
/// many, so a large transaction takes few reads.
const FIRST_READ_FRAMES: usize = 16;
/// Upper bound on the bytes asked for by one read.
const MAX_READ_BYTES: usize = 8 << 20;
/// The last read of a call is kept for [`WalReader::read_pages`] when it is
/// at most this long (a commit of up to about 120 pages of 4 KB): it holds
/// the images just checked, so capture takes them from memory instead of
/// reading them again. A longer read is dropped, and its pages are read
/// again part by part, so a large transaction still costs bounded memory.
const KEEP_READ_BYTES: usize = 512 << 10;

/// A running WAL checksum: the two 32-bit sums.
type Checksum = [u32; 2];

/// One committed transaction read from the WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalTransaction {
    /// Page images, each page once (a later frame of the same page wins),
    /// sorted by page number, pages above `db_size` dropped.
    pub pages: Vec<(u32, Vec<u8>)>,
    /// Database size in pages after the commit (the commit frame's field).
    pub db_size: u32,
}

/// One committed transaction found in the WAL, by position: for each page,
/// the file offset of its newest image in the transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalCommit {
    /// (page number, offset of the page image in the WAL file), each page
    /// once, sorted by page number, pages above `db_size` dropped.
    pub pages: Vec<(u32, u64)>,
    /// Database size in pages after the commit (the commit frame's field).
    pub db_size: u32,
}

/// Why the WAL could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// The file could not be opened or read.
    #[error("cannot read the WAL file {path}: {source}; nothing was consumed, retry once the file is readable")]
    Io {
        /// The WAL file.
        path: PathBuf,
        /// What the operating system reported.
        source: io::Error,
    },
    /// The WAL header is not one SQLite writes (or its checksum is wrong).
    #[error("invalid WAL header: {0}; the -wal file is damaged or not a SQLite WAL: stop capturing and resynchronize the replicas")]
    BadHeader(String),
    /// A whole generation was missed: the WAL header changed, but not by
    /// exactly one restart (salt-1 plus one). Transactions may have been lost;
    /// the caller must stop and resynchronize.
    #[error("WAL generation missed: the next generation's salt-1 should be {expected_salt1:#010x}, the WAL header has {found_salt1:#010x}; transactions may have been lost: stop capturing and resynchronize the replicas (and checkpoint on the writer connection, reading after every commit)")]
    GenerationMissed {
        /// Salt-1 the next generation must have: the last one read, plus one.
        expected_salt1: u32,
        /// Salt-1 of the header found.
        found_salt1: u32,
    },
    /// The WAL restarted while committed transactions of the previous
    /// generation were still unread: they were not returned and never will be.
    #[error("the WAL restarted with {transactions} committed transaction(s) after frame {frame} of the previous generation unread; they are lost to log shipping: stop capturing and resynchronize the replicas (read after every commit)")]
    CommitsMissed {
        /// Frames of the previous generation that had been read.
        frame: u32,
        /// Committed transactions found after them.
        transactions: usize,
    },
    /// The page size in the WAL header changed. SQLite cannot change it in
    /// WAL mode, so the database left WAL mode or was replaced meanwhile.
    #[error("WAL page size changed from {expected} to {found}: the database left WAL mode or was replaced under the reader; stop capturing and resynchronize the replicas")]
    PageSizeChanged {
        /// Page size of the generation read last.
        expected: u32,
        /// Page size of the header found.
        found: u32,
    },
}

impl WalError {
    /// True for I/O errors only: the reader has not moved, and calling
    /// [`WalReader::read_committed`] again is safe. Every other error means
    /// transactions may have been lost or the WAL cannot be followed: stop
    /// capturing and resynchronize.
    pub fn is_retryable(&self) -> bool {
        matches!(self, WalError::Io { .. })
    }
}

/// Reads a WAL file incrementally: each call returns the transactions
/// committed since the previous call.
#[derive(Debug)]
pub struct WalReader {
    path: PathBuf,
    /// The file the path named at the last call, with its (device, inode).
    file: Option<(File, (u64, u64))>,
    /// The generation being read and how far; `None` until a header is seen.
    position: Option<Position>,
    /// The last read of the last call, when short enough to keep
    /// ([`KEEP_READ_BYTES`]).
    kept: Option<Read>,
    /// The VFS's count of the WAL's changes, when the reader was given it.
    changes: Option<Arc<AtomicU64>>,
    /// What the file and its header were at the count of changes when they
    /// were last looked at: valid while the count stays there.
    looked: Option<Looked>,
}

/// The WAL as a reader given the count of changes last looked at it.
#[derive(Debug, Clone, Copy)]
struct Looked {
    /// The count of changes when the file and its header were looked at.
    at: u64,
    /// The header found (None: the file had none yet).
    header: Option<WalHeader>,
}

/// Bytes read from the WAL: where they start in the file, and the bytes.
type Read = (u64, Vec<u8>);

/// Where the reader stands.
#[derive(Debug, Clone, Copy)]
struct Position {
    header: WalHeader,
    /// Just after the last commit frame consumed.
    committed: Cursor,
}

impl WalReader {
    /// A reader for the WAL file at `path` (the database path plus `-wal`).
    /// Nothing is read until [`WalReader::read_committed`]; the file need not
    /// exist yet.
    pub fn new(path: impl Into<PathBuf>) -> WalReader {
        WalReader {
            path: path.into(),
            file: None,
            position: None,
            kept: None,
            changes: None,
            looked: None,
        }
    }

    /// From now on, looks at the file and its header only when `changes`,
    /// the VFS's count of the WAL's changes ([`super::vfs::wal_changes_of`]),
    /// moved since it last did. Only where every connection to the
    /// database goes through the VFS.
    pub fn watch(&mut self, changes: Arc<AtomicU64>) {
        self.changes = Some(changes);
        self.looked = None;
    }

    /// Whether [`WalReader::watch`] was called.
    pub fn is_watching(&self) -> bool {
        self.changes.is_some()
    }

    /// Transactions committed since the last call, in commit order.
    ///
    /// Reads only the new part of the file: from just after the last commit
    /// frame consumed, in growing chunks, up to the first invalid frame. A
    /// WAL restart (salt-1 plus one) is followed to frame 1 of the new
    /// generation; a missing file, or one emptied by a TRUNCATE checkpoint,
    /// has nothing new. Frames of an incomplete or rolled-back transaction are
    /// never returned.
    pub fn read_committed(&mut self) -> Result<Vec<WalTransaction>, WalError> {
        let commits = self.read_commits()?;
        commits
            .into_iter()
            .map(|commit| {
                Ok(WalTransaction {
                    pages: self.read_pages(&commit.pages)?,
                    db_size: commit.db_size,
                })
            })
            .collect()
    }

    /// Like [`WalReader::read_committed`], but each transaction comes as
    /// where its pages lie in the file; [`WalReader::read_pages`] reads them.
    pub fn read_commits(&mut self) -> Result<Vec<WalCommit>, WalError> {
        self.read_commits_to(None)
    }

    /// [`WalReader::read_commits`] when the caller knows how many frames
    /// the WAL holds after the last commit (`sqlite3_wal_hook` says so):
    /// reads no further than frame `frames`, so a commit costs one read of
    /// its own frames instead of a read ahead into the stale frames of
    /// earlier generations. Frames past it are not looked at; the caller
    /// still compares [`WalReader::frames_read`] with the hook's count.
    pub fn read_commits_to(&mut self, frames: Option<u32>) -> Result<Vec<WalCommit>, WalError> {
        self.kept = None;
        let Some(header) = self.look()? else {
            // No file, or no header yet: the WAL is new, or a TRUNCATE
            // checkpoint emptied it and nothing was written since.
            return Ok(Vec::new());
        };
        let io_error = |source| WalError::Io {
            path: self.path.clone(),
            source,
        };
        let file = &self.file.as_ref().expect("looked at").0;
        let from = match self.position {
            None => Cursor::start(&header),
            Some(last) if last.header == header => last.committed,
            Some(last) => {
                check_restart(&last.header, &header)?;
                let (stale, _) =
                    scan(file, &last.header, last.committed, None).map_err(io_error)?;
                if !stale.transactions.is_empty() {
                    return Err(WalError::CommitsMissed {
                        frame: last.committed.frames,
                        transactions: stale.transactions.len(),
                    });
                }
                Cursor::start(&header)
            }
        };
        let (scanner, last_read) = scan(file, &header, from, frames).map_err(io_error)?;
        self.kept = last_read.filter(|(_, bytes)| bytes.len() <= KEEP_READ_BYTES);
        self.position = Some(Position {
            header,
            committed: scanner.committed,
        });
        Ok(scanner.transactions)
    }

    /// The images of `pages`, as [`WalReader::read_commits`] located them
    /// (in that order): taken from the last call's last read where it holds
    /// them (the bytes whose checksums that call checked; a commit's own
    /// frames, usually), otherwise read from the file with one read per run
    /// of adjacent frames. Valid until the next write on the writer
    /// connection.
    pub fn read_pages(&self, pages: &[(u32, u64)]) -> Result<Vec<(u32, Vec<u8>)>, WalError> {
        let Some(position) = self.position else {
            return Ok(Vec::new());
        };
        if pages.is_empty() {
            return Ok(Vec::new());
        }
        let io_error = |source| WalError::Io {
            path: self.path.clone(),
            source,
        };
        let Some((file, _)) = &self.file else {
            return Err(io_error(io::Error::new(
                io::ErrorKind::NotFound,
                "the WAL file was not read before its pages",
            )));
        };
        let page_size = position.header.page_size as usize;
        let frame_len = position.header.frame_len() as u64;
        let mut out = Vec::with_capacity(pages.len());
        let mut run_start = 0;
        while run_start < pages.len() {
            // Pages whose frames follow each other: one read, at most
            // MAX_READ_BYTES.
            let first = pages[run_start].1;
            let mut run_end = run_start + 1;
            while run_end < pages.len()
                && pages[run_end].1 == first + (run_end - run_start) as u64 * frame_len
                && (run_end - run_start + 1) * frame_len as usize <= MAX_READ_BYTES
            {
                run_end += 1;
            }
            let len = (run_end - run_start - 1) * frame_len as usize + page_size;
            let kept = self.kept.as_ref().and_then(|(start, bytes)| {
                let from = usize::try_from(first.checked_sub(*start)?).ok()?;
                bytes.get(from..from.checked_add(len)?)
            });
            let read;
            let run = match kept {
                Some(run) => run,
                None => {
                    let mut buf = vec![0; len];
                    file.read_exact_at(&mut buf, first).map_err(io_error)?;
                    read = buf;
                    &read[..]
                }
            };
            for (i, &(pgno, _)) in pages[run_start..run_end].iter().enumerate() {
                let at = i * frame_len as usize;
                out.push((pgno, run[at..at + page_size].to_vec()));
            }
            run_start = run_end;
        }
        Ok(out)
    }

    /// The WAL's header as it stands, with the file the path names held
    /// (None: no file, or no header yet). Without a count of changes, or
    /// when it moved since the last look, the path is checked and the
    /// header read; otherwise both are as the last look found them.
    fn look(&mut self) -> Result<Option<WalHeader>, WalError> {
        let now = self.changes.as_ref().map(|c| c.load(Ordering::SeqCst));
        if let (Some(now), Some(looked)) = (now, self.looked) {
            if looked.at == now && self.file.is_some() {
                return Ok(looked.header);
            }
        }
        self.looked = None;
        match self.open_current() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(WalError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        }
        let io_error = |source| WalError::Io {
            path: self.path.clone(),
            source,
        };
        let file = &self.file.as_ref().expect("opened").0;
        let raw = read_at(file, 0, WAL_HEADER_LEN).map_err(io_error)?;
        let header = match <&[u8; WAL_HEADER_LEN]>::try_from(raw.as_slice()) {
            Ok(raw) => Some(WalHeader::parse(raw)?),
            Err(_) => None,
        };
        // Taken at the count read before the look: a change since then
        // moved it, so the next look reads again.
        self.looked = now.map(|at| Looked { at, header });
        Ok(header)
    }

    /// Holds the file the path names now: the one held if it still is,
    /// else the path opened anew. NotFound when there is none.
    fn open_current(&mut self) -> io::Result<()> {
        let id = match file_id(&self.path) {
            Ok(id) => id,
            Err(e) => {
                self.file = None;
                return Err(e);
            }
        };
        if self.file.as_ref().is_none_or(|(_, held)| *held != id) {
            self.file = Some((File::open(&self.path)?, id));
        }
        Ok(())
    }

    /// Frames consumed so far in the current generation, up to and including
    /// the last commit frame (for cross-checking with `sqlite3_wal_hook`'s
    /// frame count, which counts the same frames).
    pub fn frames_read(&self) -> u32 {
        self.position.map_or(0, |p| p.committed.frames)
    }
}

/// The device and inode of the file `path` names, asking the kernel for
/// nothing else: this runs after every commit, and it must not read the
/// file's times.
///
/// Recent Linux kernels (6.18 where this was measured) give ext4, XFS and
/// btrfs *multigrain* timestamps: a file whose change time was read
/// (`stat`, or `std::fs::metadata`, which asks for every field) gets a
/// fine-grained timestamp at its next write, so its inode is dirtied by
/// every write, not once per clock tick. The WAL is written by every
/// commit and its inode may lie in the same inode table block as the log
/// segment's, which the log's `fdatasync` then writes and waits for:
/// measured, 40–55 µs more per sync, about a quarter of a standalone
/// commit at `-c 1` (BENCHMARKS.md, "the sixth step"). Where `statx` is
/// missing, falls back to `std::fs::metadata`.
fn file_id(path: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut stx = mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `c_path` is a NUL-terminated string that outlives the call
    // and `stx` is a writable, properly aligned `statx` buffer.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            0,
            libc::STATX_INO,
            stx.as_mut_ptr(),
        )
    };
    if rc == 0 {
        // SAFETY: statx returned 0, so it filled the buffer (which was
        // zeroed before, so every field is initialised either way).
        let stx = unsafe { stx.assume_init() };
        return Ok((
            libc::makedev(stx.stx_dev_major, stx.stx_dev_minor),
            stx.stx_ino,
        ));
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() != Some(libc::ENOSYS) {
        return Err(error);
    }
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

/// Every page number in a valid frame of the WAL at `path`'s current
/// generation, committed or not (a superset of what any reader's snapshot
/// takes from the WAL), sorted and each once; empty when there is no WAL
/// or no header yet.
///
/// A full backup reads the database file directly and takes these pages
/// through its read snapshot instead (`backup/pages.rs`): while a reader
/// holds a snapshot, the WAL is not restarted (its frames stay) and a
/// checkpoint writes into the file only frames the snapshot holds, so a
/// page in none of these frames is the snapshot's in the file.
pub fn pages_in(path: &std::path::Path) -> Result<Vec<u32>, WalError> {
    let io_error = |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(e)),
    };
    let raw = read_at(&file, 0, WAL_HEADER_LEN).map_err(io_error)?;
    let Ok(raw) = <&[u8; WAL_HEADER_LEN]>::try_from(raw.as_slice()) else {
        return Ok(Vec::new());
    };
    let header = WalHeader::parse(raw)?;
    let frame_len = header.frame_len();
    let per_read = (MAX_READ_BYTES / frame_len).max(1) * frame_len;
    let mut at = Cursor::start(&header);
    let mut pages = std::collections::BTreeSet::new();
    loop {
        let chunk = read_at(&file, at.offset, per_read).map_err(io_error)?;
        for frame in chunk.chunks_exact(frame_len) {
            let Some((head, checksum)) = decode_frame(&header, at.checksum, frame) else {
                return Ok(pages.into_iter().collect());
            };
            pages.insert(head.page_number);
            at.offset += frame_len as u64;
            at.checksum = checksum;
        }
        if chunk.len() < per_read {
            return Ok(pages.into_iter().collect());
        }
    }
}

/// Reads frames of the generation `header` describes from `from` on, in
/// growing chunks, until the first invalid frame, the end of the file, or
/// frame `until` when given. Returns the scanner and the last chunk read
/// (where it starts, and its bytes), if any.
fn scan<'h>(
    file: &File,
    header: &'h WalHeader,
    from: Cursor,
    until: Option<u32>,
) -> io::Result<(FrameScanner<'h>, Option<Read>)> {
    let frame_len = header.frame_len();
    let max_frames = (MAX_READ_BYTES / frame_len).max(1);
    let mut scanner = FrameScanner::new(header, from);
    let mut frames = FIRST_READ_FRAMES.min(max_frames);
    let mut last = None;
    loop {
        if let Some(until) = until {
            let left = until.saturating_sub(scanner.next.frames) as usize;
            if left == 0 {
                return Ok((scanner, last));
            }
            frames = frames.min(left);
        }
        let wanted = frames * frame_len;
        let at = scanner.next.offset;
        // Only the last read is returned: the one before goes first, so a
        // large transaction holds one read's bytes at a time, as before.
        if let Some((at, bytes)) = last.take() {
            scanner.keep_commit_image(at, &bytes);
        }
        let chunk = read_at(file, at, wanted)?;
        let whole = chunk
            .chunks_exact(frame_len)
            .all(|frame| scanner.feed(frame, at, &chunk));
        let ended = !whole || chunk.len() < wanted;
        last = Some((at, chunk));
        if ended {
            // An invalid frame, or the end of the file (a torn last frame
            // is left for a later call).
            return Ok((scanner, last));
        }
        frames = (frames * 2).min(max_frames);
    }
}

/// Up to `len` bytes of `file` from `offset`; fewer only at the end of the
/// file. Positioned reads (`pread`): one system call when the bytes are
/// there.
fn read_at(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0; len];
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// The parsed WAL header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WalHeader {
    /// Bit 0 of the magic: checksum words are big-endian.
    big_endian: bool,
    page_size: u32,
    salt1: u32,
    salt2: u32,
    /// The header's checksum: the seed of frame 1's.
    checksum: Checksum,
}

impl WalHeader {
    /// Parses and checks a WAL header.
    fn parse(raw: &[u8; WAL_HEADER_LEN]) -> Result<WalHeader, WalError> {
        let magic = be_u32(raw, 0);
        if magic & !1 != WAL_MAGIC {
            return Err(WalError::BadHeader(format!("magic number {magic:#010x}")));
        }
        let version = be_u32(raw, 4);
        if version != WAL_FORMAT_VERSION {
            return Err(WalError::BadHeader(format!("format version {version}")));
        }
        let page_size = be_u32(raw, 8);
        if !page_size.is_power_of_two() || !(512..=65536).contains(&page_size) {
            return Err(WalError::BadHeader(format!("page size {page_size}")));
        }
        let big_endian = magic & 1 == 1;
        let checksum = [be_u32(raw, 24), be_u32(raw, 28)];
        if wal_checksum(big_endian, [0, 0], &raw[..24]) != checksum {
            return Err(WalError::BadHeader("header checksum mismatch".to_string()));
        }
        Ok(WalHeader {
            big_endian,
            page_size,
            salt1: be_u32(raw, 16),
            salt2: be_u32(raw, 20),
            checksum,
        })
    }

    /// Bytes per frame: header and page.
    fn frame_len(&self) -> usize {
        FRAME_HEADER_LEN + self.page_size as usize
    }
}

/// Checks that `found` follows `last` by exactly one WAL restart.
fn check_restart(last: &WalHeader, found: &WalHeader) -> Result<(), WalError> {
    if found.page_size != last.page_size {
        return Err(WalError::PageSizeChanged {
            expected: last.page_size,
            found: found.page_size,
        });
    }
    let expected_salt1 = last.salt1.wrapping_add(1);
    if found.salt1 != expected_salt1 {
        return Err(WalError::GenerationMissed {
            expected_salt1,
            found_salt1: found.salt1,
        });
    }
    Ok(())
}

/// The WAL checksum of `data` (a multiple of 8 bytes), continuing from `seed`.
fn wal_checksum(big_endian: bool, seed: Checksum, data: &[u8]) -> Checksum {
    if big_endian {
        sum_pairs(seed, data, u32::from_be_bytes)
    } else {
        sum_pairs(seed, data, u32::from_le_bytes)
    }
}

fn sum_pairs(seed: Checksum, data: &[u8], word: impl Fn([u8; 4]) -> u32) -> Checksum {
    let (pairs, rest) = data.as_chunks::<8>();
    debug_assert!(rest.is_empty(), "WAL checksums cover whole 8-byte pairs");
    let [mut s0, mut s1] = seed;
    for &[a0, a1, a2, a3, b0, b1, b2, b3] in pairs {
        s0 = s0.wrapping_add(word([a0, a1, a2, a3])).wrapping_add(s1);
        s1 = s1.wrapping_add(word([b0, b1, b2, b3])).wrapping_add(s0);
    }
    [s0, s1]
}

/// The fields of a frame header that matter once the frame is known valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameHeader {
    page_number: u32,
    /// Database size after the commit; 0 unless this is a commit frame.
    db_size: u32,
}

/// Checks one frame (`header.frame_len()` bytes) against the WAL header and
/// the checksum of the frame before it. Returns its header and its checksum,
/// or `None` if it is not valid, which ends the log.
fn decode_frame(
    header: &WalHeader,
    seed: Checksum,
    frame: &[u8],
) -> Option<(FrameHeader, Checksum)> {
    let (head, page) = frame.split_at(FRAME_HEADER_LEN);
    let page_number = be_u32(head, 0);
    if page_number == 0 || be_u32(head, 8) != header.salt1 || be_u32(head, 12) != header.salt2 {
        return None;
    }
    let checksum = wal_checksum(header.big_endian, seed, &head[..8]);
    let checksum = wal_checksum(header.big_endian, checksum, page);
    if checksum != [be_u32(head, 16), be_u32(head, 20)] {
        return None;
    }
    let db_size = be_u32(head, 4);
    Some((
        FrameHeader {
            page_number,
            db_size,
        },
        checksum,
    ))
}

/// A position at a frame boundary of one generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    /// File offset of the next frame.
    offset: u64,
    /// Checksum of the frame before `offset` (the header's at frame 1): the
    /// seed of the next frame's.
    checksum: Checksum,
    /// Frames before `offset`.
    frames: u32,
}

impl Cursor {
    /// Frame 1 of the generation `header` starts.
    fn start(header: &WalHeader) -> Cursor {
        Cursor {
            offset: WAL_HEADER_LEN as u64,
            checksum: header.checksum,
            frames: 0,
        }
    }
}

/// Turns the frames of one generation, fed in file order from a commit
/// boundary, into transactions. Pure: the caller does the reading.
struct FrameScanner<'h> {
    header: &'h WalHeader,
    /// Just after the last valid frame fed.
    next: Cursor,
    /// Just after the last commit frame fed: where the next call resumes.
    committed: Cursor,
    /// Where the pages of the transaction in progress lie (offset of the
    /// image); a later frame replaces an earlier.
    pending: BTreeMap<u32, u64>,
    transactions: Vec<WalCommit>,
    /// The last frame fed if it was a commit frame (or a copy of one): its
    /// header and image.
    last_commit: Option<(FrameHeader, CommitImage)>,
}

/// Where the image of the last commit frame fed is: compared with the next
/// frame (a sector-padding copy repeats it), and copied only when the read
/// that holds it is let go before the next one — not at every commit.
#[derive(Debug)]
enum CommitImage {
    /// In the current read, at this file offset.
    InRead(u64),
    /// Copied out of an earlier read.
    Copied(Vec<u8>),
}

impl<'h> FrameScanner<'h> {
    fn new(header: &'h WalHeader, from: Cursor) -> FrameScanner<'h> {
        FrameScanner {
            header,
            next: from,
            committed: from,
            pending: BTreeMap::new(),
            transactions: Vec::new(),
            last_commit: None,
        }
    }

    /// Feeds the frame at `self.next`, which lies in `read` (the bytes of
    /// the file from offset `read_at`). Returns false if it is not valid:
    /// the log ends before it, and nothing more may be fed.
    fn feed(&mut self, frame: &[u8], read_at: u64, read: &[u8]) -> bool {
        let Some((head, checksum)) = decode_frame(self.header, self.next.checksum, frame) else {
            return false;
        };
        let image_at = self.next.offset + FRAME_HEADER_LEN as u64;
        self.next = Cursor {
            offset: self.next.offset + frame.len() as u64,
            checksum,
            frames: self.next.frames + 1,
        };
        let page = &frame[FRAME_HEADER_LEN..];
        if head.db_size == 0 {
            self.pending.insert(head.page_number, image_at);
            self.last_commit = None;
            return true;
        }
        if !self.repeats_last_commit(head, page, read_at, read) {
            self.pending.insert(head.page_number, image_at);
            let pages = mem::take(&mut self.pending)
                .into_iter()
                .filter(|&(page_number, _)| page_number <= head.db_size)
                .collect();
            self.transactions.push(WalCommit {
                pages,
                db_size: head.db_size,
            });
        }
        self.committed = self.next;
        self.last_commit = Some((head, CommitImage::InRead(image_at)));
        true
    }

    /// Whether a commit frame is a sector-padding copy of the commit frame
    /// fed just before it (in this call).
    fn repeats_last_commit(
        &self,
        head: FrameHeader,
        page: &[u8],
        read_at: u64,
        read: &[u8],
    ) -> bool {
        if self.transactions.is_empty() {
            return false;
        }
        match &self.last_commit {
            Some((last, _)) if *last != head => false,
            Some((_, CommitImage::Copied(image))) => image == page,
            Some((_, CommitImage::InRead(image_at))) => {
                image_in(read, read_at, *image_at, page.len()) == page
            }
            None => false,
        }
    }

    /// `read` (from file offset `read_at`) is let go: the last commit
    /// frame's image, if it lies there, is copied out of it.
    fn keep_commit_image(&mut self, read_at: u64, read: &[u8]) {
        let page_len = self.header.page_size as usize;
        if let Some((_, image)) = &mut self.last_commit {
            if let CommitImage::InRead(image_at) = *image {
                *image = CommitImage::Copied(image_in(read, read_at, image_at, page_len).to_vec());
            }
        }
    }
}

/// The `len` bytes at file offset `image_at` of `read`, the bytes of the
/// file from offset `read_at`.
fn image_in(read: &[u8], read_at: u64, image_at: u64, len: usize) -> &[u8] {
    let from = (image_at - read_at) as usize;
    &read[from..from + len]
}

/// The big-endian `u32` at `at`.
fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;
    use std::fs::{self, OpenOptions};
    use std::io::{Seek, SeekFrom, Write};
    use std::sync::atomic::{AtomicI32, Ordering};
    use std::sync::Arc;

    /// The reader tells a replaced WAL from the one it holds by device and
    /// inode, read without the file's times (see `file_id`): the pair must
    /// be the one `stat` gives, change when the file is replaced, and a
    /// missing file must say NotFound (the reader then has nothing to read).
    #[test]
    fn the_wal_is_told_apart_by_the_device_and_inode_stat_gives() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db-wal");
        assert_eq!(file_id(&path).unwrap_err().kind(), io::ErrorKind::NotFound);
        fs::write(&path, b"first").unwrap();
        let meta = fs::metadata(&path).unwrap();
        let first = file_id(&path).unwrap();
        assert_eq!(first, (meta.dev(), meta.ino()));
        let kept = File::open(&path).unwrap();
        fs::remove_file(&path).unwrap();
        fs::write(&path, b"second").unwrap();
        let second = file_id(&path).unwrap();
        assert_ne!(first, second, "a replaced file has another inode");
        drop(kept);
    }

    // ---- Synthetic WALs, for the pure parts ----

    const SYNTH_PAGE_SIZE: u32 = 512;
    const SYNTH_SALTS: [u32; 2] = [0x0102_0304, 0x0a0b_0c0d];

    /// A WAL header with a correct checksum.
    fn header_bytes(
        magic: u32,
        version: u32,
        page_size: u32,
        salts: [u32; 2],
    ) -> [u8; WAL_HEADER_LEN] {
        let mut raw = [0u8; WAL_HEADER_LEN];
        for (i, value) in [magic, version, page_size, 0, salts[0], salts[1]]
            .into_iter()
            .enumerate()
        {
            raw[i * 4..i * 4 + 4].copy_from_slice(&value.to_be_bytes());
        }
        let [c1, c2] = wal_checksum(magic & 1 == 1, [0, 0], &raw[..24]);
        raw[24..28].copy_from_slice(&c1.to_be_bytes());
        raw[28..32].copy_from_slice(&c2.to_be_bytes());
        raw
    }

    /// A synthetic frame: page number, db size, byte filling the page.
    type SynthFrame = (u32, u32, u8);

    /// A WAL of `frames` with chained checksums.
    fn synthetic_wal(big_endian: bool, frames: &[SynthFrame]) -> Vec<u8> {
        let magic = WAL_MAGIC | u32::from(big_endian);
        let header = header_bytes(magic, WAL_FORMAT_VERSION, SYNTH_PAGE_SIZE, SYNTH_SALTS);
        let mut checksum = [be_u32(&header, 24), be_u32(&header, 28)];
        let mut wal = header.to_vec();
        for &(page_number, db_size, fill) in frames {
            let head: Vec<u8> = [page_number, db_size, SYNTH_SALTS[0], SYNTH_SALTS[1]]
                .iter()
                .flat_map(|v| v.to_be_bytes())
                .collect();
            let page = vec![fill; SYNTH_PAGE_SIZE as usize];
            checksum = wal_checksum(big_endian, checksum, &head[..8]);
            checksum = wal_checksum(big_endian, checksum, &page);
            wal.extend(head);
            wal.extend(checksum[0].to_be_bytes());
            wal.extend(checksum[1].to_be_bytes());
            wal.extend(page);
        }
        wal
    }

    /// `bytes` as a WAL file in a new temporary directory, and a reader on it.
    fn reader_on(bytes: &[u8]) -> (tempfile::TempDir, PathBuf, WalReader) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db-wal");
        fs::write(&path, bytes).unwrap();
        let reader = WalReader::new(&path);
        (dir, path, reader)
    }

    /// Transactions of a synthetic WAL as `(db size, [(page, fill byte)])`.
    fn summary(transactions: &[WalTransaction]) -> Vec<(u32, Vec<(u32, u8)>)> {
        transactions
            .iter()
            .map(|t| {
                (
                    t.db_size,
                    t.pages.iter().map(|(n, page)| (*n, page[0])).collect(),
                )
            })
            .collect()
    }

    /// The valid frames of a WAL image, in order.
    fn valid_frames(wal: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
        let header = WalHeader::parse(wal[..WAL_HEADER_LEN].try_into().unwrap()).unwrap();
        let mut checksum = header.checksum;
        let mut frames = Vec::new();
        for frame in wal[WAL_HEADER_LEN..].chunks_exact(header.frame_len()) {
            let Some((head, next)) = decode_frame(&header, checksum, frame) else {
                break;
            };
            checksum = next;
            frames.push((head, frame[FRAME_HEADER_LEN..].to_vec()));
        }
        frames
    }

    /// Valid frames split into transactions, each ending at a commit frame.
    fn frame_groups(wal: &[u8]) -> Vec<Vec<(FrameHeader, Vec<u8>)>> {
        valid_frames(wal)
            .split_inclusive(|(head, _)| head.db_size != 0)
            .filter(|group| group.last().is_some_and(|(head, _)| head.db_size != 0))
            .map(<[_]>::to_vec)
            .collect()
    }

    #[test]
    fn checksum_words_follow_the_magic_byte_order() {
        let one_two = [1, 0, 0, 0, 2, 0, 0, 0];
        let cases: [(bool, Checksum, &[u8], Checksum); 5] = [
            (false, [0, 0], &one_two, [1, 3]),
            (true, [0, 0], &one_two, [0x0100_0000, 0x0300_0000]),
            (false, [5, 7], &one_two, [13, 22]),
            (false, [u32::MAX, 0], &[1, 0, 0, 0, 0, 0, 0, 0], [0, 0]),
            (
                false,
                [0, 0],
                &[1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0],
                [7, 14],
            ),
        ];
        for (big_endian, seed, data, expected) in cases {
            assert_eq!(
                wal_checksum(big_endian, seed, data),
                expected,
                "{big_endian} {seed:?} {data:?}"
            );
        }
    }

    #[test]
    fn wal_header_is_checked_before_use() {
        let ok = header_bytes(WAL_MAGIC, WAL_FORMAT_VERSION, 4096, SYNTH_SALTS);
        let header = WalHeader::parse(&ok).unwrap();
        assert_eq!((header.big_endian, header.page_size), (false, 4096));
        assert_eq!(
            (header.salt1, header.salt2),
            (SYNTH_SALTS[0], SYNTH_SALTS[1])
        );
        let big_endian = header_bytes(WAL_MAGIC | 1, WAL_FORMAT_VERSION, 65536, SYNTH_SALTS);
        assert!(WalHeader::parse(&big_endian).unwrap().big_endian);

        let mut bad_checksum = ok;
        bad_checksum[31] ^= 1;
        let cases = [
            (
                "magic",
                header_bytes(0x377f_0684, WAL_FORMAT_VERSION, 4096, SYNTH_SALTS),
            ),
            (
                "version",
                header_bytes(WAL_MAGIC, 3_007_001, 4096, SYNTH_SALTS),
            ),
            (
                "page size 1000",
                header_bytes(WAL_MAGIC, WAL_FORMAT_VERSION, 1000, SYNTH_SALTS),
            ),
            (
                "page size 256",
                header_bytes(WAL_MAGIC, WAL_FORMAT_VERSION, 256, SYNTH_SALTS),
            ),
            (
                "page size 128 KiB",
                header_bytes(WAL_MAGIC, WAL_FORMAT_VERSION, 131_072, SYNTH_SALTS),
            ),
            ("checksum", bad_checksum),
        ];
        for (name, raw) in cases {
            assert!(
                matches!(WalHeader::parse(&raw), Err(WalError::BadHeader(_))),
                "{name}"
            );
        }
    }

    #[test]
    fn frame_is_valid_only_with_header_salts_and_chained_checksum() {
        let wal = synthetic_wal(false, &[(3, 0, 0xaa), (4, 5, 0xbb)]);
        let header = WalHeader::parse(wal[..WAL_HEADER_LEN].try_into().unwrap()).unwrap();
        let len = header.frame_len();
        let (first, second) = wal[WAL_HEADER_LEN..].split_at(len);
        let (head, after_first) = decode_frame(&header, header.checksum, first).unwrap();
        assert_eq!(
            head,
            FrameHeader {
                page_number: 3,
                db_size: 0
            }
        );
        let (head, _) = decode_frame(&header, after_first, second).unwrap();
        assert_eq!(
            head,
            FrameHeader {
                page_number: 4,
                db_size: 5
            }
        );

        assert!(
            decode_frame(&header, header.checksum, second).is_none(),
            "checksum not chained"
        );
        for (name, byte) in [
            ("db size", 4),
            ("salt-1", 8),
            ("salt-2", 12),
            ("checksum", 16),
            ("page", 300),
        ] {
            let mut frame = second.to_vec();
            frame[byte] ^= 1;
            assert!(
                decode_frame(&header, after_first, &frame).is_none(),
                "{name} changed"
            );
        }
        let page_zero = synthetic_wal(false, &[(0, 1, 0)]);
        assert!(decode_frame(&header, header.checksum, &page_zero[WAL_HEADER_LEN..]).is_none());
    }

    #[test]
    fn new_header_is_followed_only_after_exactly_one_restart() {
        let last = WalHeader {
            big_endian: false,
            page_size: 4096,
            salt1: 10,
            salt2: 20,
            checksum: [1, 2],
        };
        let with = |page_size, salt1| WalHeader {
            page_size,
            salt1,
            salt2: 0x5eed,
            checksum: [3, 4],
            ..last
        };
        let cases = [
            (with(4096, 11), "Ok(())"),
            (
                with(4096, 12),
                "Err(GenerationMissed { expected_salt1: 11, found_salt1: 12 })",
            ),
            (
                with(4096, 10),
                "Err(GenerationMissed { expected_salt1: 11, found_salt1: 10 })",
            ),
            (
                with(4096, 0x9e37_79b9),
                "Err(GenerationMissed { expected_salt1: 11, found_salt1: 2654435769 })",
            ),
            (
                with(1024, 11),
                "Err(PageSizeChanged { expected: 4096, found: 1024 })",
            ),
        ];
        for (found, expected) in cases {
            assert_eq!(format!("{:?}", check_restart(&last, &found)), expected);
        }
        let wrapping = WalHeader {
            salt1: u32::MAX,
            ..last
        };
        assert!(check_restart(&wrapping, &with(4096, 0)).is_ok());
    }

    #[test]
    fn later_frame_of_a_page_wins_and_pages_come_sorted() {
        let wal = synthetic_wal(false, &[(5, 0, 1), (3, 0, 2), (5, 0, 3), (4, 6, 4)]);
        let (_dir, _path, mut reader) = reader_on(&wal);
        let read = reader.read_committed().unwrap();
        assert_eq!(summary(&read), [(6, vec![(3, 2), (4, 4), (5, 3)])]);
    }

    #[test]
    fn a_read_told_the_frame_count_stops_there_and_the_next_goes_on() {
        // Capture passes the count sqlite3_wal_hook reported: the commits
        // up to it, nothing after (what follows is read by the next call).
        let wal = synthetic_wal(false, &[(1, 0, 1), (2, 2, 2), (3, 0, 3), (4, 4, 4)]);
        let (_dir, _path, mut reader) = reader_on(&wal);
        let first = reader.read_commits_to(Some(2)).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(reader.frames_read(), 2);
        assert!(reader.read_commits_to(Some(2)).unwrap().is_empty());
        let second = reader.read_commits_to(Some(4)).unwrap();
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].db_size, 4);
        assert_eq!(reader.frames_read(), 4);
    }

    #[test]
    fn pages_above_the_committed_size_are_dropped() {
        let wal = synthetic_wal(false, &[(2, 0, 1), (9, 0, 2), (3, 3, 3)]);
        let (_dir, _path, mut reader) = reader_on(&wal);
        let read = reader.read_committed().unwrap();
        assert_eq!(summary(&read), [(3, vec![(2, 1), (3, 3)])]);
    }

    #[test]
    fn frames_after_the_last_commit_are_neither_returned_nor_consumed() {
        let frames = [(1, 0, 1), (2, 2, 2), (3, 0, 3), (4, 4, 4)];
        let (_dir, path, mut reader) = reader_on(&synthetic_wal(false, &frames[..3]));
        assert_eq!(
            summary(&reader.read_committed().unwrap()),
            [(2, vec![(1, 1), (2, 2)])]
        );
        assert_eq!(reader.frames_read(), 2);
        assert!(reader.read_committed().unwrap().is_empty());

        fs::write(&path, synthetic_wal(false, &frames)).unwrap();
        assert_eq!(
            summary(&reader.read_committed().unwrap()),
            [(4, vec![(3, 3), (4, 4)])]
        );
        assert_eq!(reader.frames_read(), 4);
    }

    #[test]
    fn sector_padding_copies_of_a_commit_frame_are_not_transactions() {
        let cases: [(&[SynthFrame], usize); 4] = [
            (&[(1, 0, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)], 1),
            (&[(2, 2, 2), (2, 2, 7)], 2),
            (&[(2, 2, 2), (2, 3, 2)], 2),
            (&[(2, 2, 2), (1, 0, 1), (2, 2, 2)], 2),
        ];
        for (frames, transactions) in cases {
            let (_dir, _path, mut reader) = reader_on(&synthetic_wal(false, frames));
            assert_eq!(
                reader.read_committed().unwrap().len(),
                transactions,
                "{frames:?}"
            );
            assert_eq!(reader.frames_read() as usize, frames.len(), "{frames:?}");
        }
    }

    /// The commit frame is the last of the first read and its copy the
    /// first of the next: the image kept from the first read still tells a
    /// copy (one transaction) from a new commit with another image (two).
    #[test]
    fn a_padding_copy_in_the_read_after_its_commit_frame_is_still_recognised() {
        for (copy_image, transactions) in [(2u8, 1usize), (9, 2)] {
            let mut frames: Vec<SynthFrame> = (1..FIRST_READ_FRAMES as u32)
                .map(|n| (n, 0, n as u8))
                .collect();
            frames.push((16, 16, 2));
            frames.push((16, 16, copy_image));
            let (_dir, _path, mut reader) = reader_on(&synthetic_wal(false, &frames));
            assert_eq!(reader.read_committed().unwrap().len(), transactions);
            assert_eq!(reader.frames_read() as usize, frames.len());
        }
    }

    #[test]
    fn big_endian_checksums_are_followed() {
        let wal = synthetic_wal(true, &[(1, 0, 1), (2, 2, 2)]);
        let (_dir, _path, mut reader) = reader_on(&wal);
        assert_eq!(
            summary(&reader.read_committed().unwrap()),
            [(2, vec![(1, 1), (2, 2)])]
        );
    }

    #[test]
    fn a_transaction_larger_than_one_read_is_read_whole() {
        let mut frames: Vec<SynthFrame> = (1..=300).map(|n| (n, 0, n as u8)).collect();
        frames.push((301, 301, 1));
        let mut wal = synthetic_wal(false, &frames);
        // A stale frame after the commit must not be taken for the next one.
        let stale = wal
            [WAL_HEADER_LEN..WAL_HEADER_LEN + SYNTH_PAGE_SIZE as usize + FRAME_HEADER_LEN]
            .to_vec();
        wal.extend(stale);
        let (_dir, _path, mut reader) = reader_on(&wal);
        let read = reader.read_committed().unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].pages.len(), 301);
        assert_eq!(reader.frames_read(), 301);
    }

    /// A commit's pages are the bytes whose checksums the same call checked,
    /// taken from that read: capture does not read them from the file a
    /// second time (one `pread` per commit less). Bytes changed in the file
    /// after the check are not what the record carries.
    #[test]
    fn a_commits_pages_come_from_the_read_that_checked_them_not_a_second_read() {
        let wal = synthetic_wal(false, &[(1, 0, 0x11), (2, 2, 0x22)]);
        let (_dir, path, mut reader) = reader_on(&wal);
        let commits = reader.read_commits().unwrap();
        assert_eq!(commits.len(), 1);
        let mut file = OpenOptions::new().write(true).open(&path).unwrap();
        file.seek(SeekFrom::Start(commits[0].pages[0].1)).unwrap();
        file.write_all(&[0xee; SYNTH_PAGE_SIZE as usize]).unwrap();
        drop(file);
        let pages = reader.read_pages(&commits[0].pages).unwrap();
        assert_eq!(
            pages,
            [
                (1, vec![0x11; SYNTH_PAGE_SIZE as usize]),
                (2, vec![0x22; SYNTH_PAGE_SIZE as usize])
            ]
        );
    }

    /// A transaction read in several reads gets every page right: pages in
    /// the last read come from memory, the others from the file, each page
    /// with its own image.
    #[test]
    fn a_transaction_read_in_several_reads_gets_each_page_from_its_own_frame() {
        let frame_len = (SYNTH_PAGE_SIZE as usize + FRAME_HEADER_LEN) as u64;
        let count = 2 * KEEP_READ_BYTES as u32 / frame_len as u32;
        let mut frames: Vec<SynthFrame> = (1..count).map(|n| (n, 0, n as u8)).collect();
        frames.push((count, count, count as u8));
        let (_dir, _path, mut reader) = reader_on(&synthetic_wal(false, &frames));
        let commits = reader.read_commits().unwrap();
        assert_eq!(commits.len(), 1);
        let (kept_from, kept) = reader.kept.as_ref().expect("the last read is kept");
        assert!(kept.len() <= KEEP_READ_BYTES);
        assert!(
            *kept_from > WAL_HEADER_LEN as u64 + frame_len,
            "the first pages lie outside the kept read"
        );
        let pages = reader.read_pages(&commits[0].pages).unwrap();
        assert_eq!(pages.len(), count as usize);
        for (n, page) in &pages {
            assert_eq!(page, &vec![*n as u8; SYNTH_PAGE_SIZE as usize], "page {n}");
        }
    }

    #[test]
    fn missing_or_headerless_wal_has_nothing_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db-wal");
        let mut reader = WalReader::new(&path);
        assert!(reader.read_committed().unwrap().is_empty());
        fs::write(&path, [0x37, 0x7f, 0x06]).unwrap();
        assert!(reader.read_committed().unwrap().is_empty());
        assert_eq!(reader.frames_read(), 0);
    }

    // ---- Fixtures: WAL files written by SQLite ----

    /// Page size of the fixtures and of the live tests' databases.
    const PAGE_SIZE: u32 = 1024;
    /// Text that only the rolled-back transaction writes.
    const SPILL_MARK: &[u8] = b"SPILLSPILL";

    /// Each fixture and the line describing it in the fixtures' README.
    const FIXTURES: [(&str, &str); 8] = [
        ("ok.wal", "three committed transactions: the first touches several pages, the second spilled a page and wrote it again (the page appears twice), the third updates one row"),
        ("frame-checksum-mismatch.wal", "`ok.wal` with one byte flipped in the page of the second transaction's first frame"),
        ("salt-mismatch.wal", "`ok.wal` with salt-1 of the third transaction's first frame changed"),
        ("torn-last-frame.wal", "`ok.wal` without the second half of its last frame, as a torn write leaves it"),
        ("restart-1.wal", "a WAL with two committed transactions, before a checkpoint"),
        ("restart-2.wal", "`restart-1.wal` after a PASSIVE checkpoint and one more write: the WAL restarted (salt-1 + 1), one new frame, stale frames of the old generation after it"),
        ("rolled-back-spill-1.wal", "one committed transaction, then frames spilled by a transaction (tiny cache_size) that rolled back"),
        ("rolled-back-spill-2.wal", "`rolled-back-spill-1.wal` after one more committed transaction, written over the start of the spilled frames"),
    ];

    fn fixture_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wal")
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = fixture_dir().join(name);
        fs::read(&path).unwrap_or_else(|e| {
            panic!("{}: {e}; regenerate with AVAILDB_REGEN_FIXTURES=1 cargo test regenerate_wal_fixtures", path.display())
        })
    }

    /// The frame length of the fixtures.
    fn fixture_frame_len() -> usize {
        FRAME_HEADER_LEN + PAGE_SIZE as usize
    }

    /// What the reader must return for `groups` of frames.
    fn expected_transactions(groups: &[Vec<(FrameHeader, Vec<u8>)>]) -> Vec<WalTransaction> {
        groups
            .iter()
            .map(|group| {
                let db_size = group.last().unwrap().0.db_size;
                let pages: BTreeMap<u32, Vec<u8>> = group
                    .iter()
                    .map(|(head, page)| (head.page_number, page.clone()))
                    .collect();
                WalTransaction {
                    pages: pages.into_iter().filter(|(n, _)| *n <= db_size).collect(),
                    db_size,
                }
            })
            .collect()
    }

    /// A database in a temporary directory for writing fixtures: 1 KiB pages,
    /// WAL mode, no automatic checkpoints.
    fn fixture_database() -> (tempfile::TempDir, Connection, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("fixture.db")).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA page_size={PAGE_SIZE}; PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;"
        ))
        .unwrap();
        let wal = dir.path().join("fixture.db-wal");
        (dir, conn, wal)
    }

    fn checkpoint(conn: &Connection, mode: &str) {
        let busy: i64 = conn
            .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
                row.get(0)
            })
            .unwrap();
        assert_eq!(busy, 0, "{mode} checkpoint blocked");
    }

    /// Writes the fixtures; a no-op unless AVAILDB_REGEN_FIXTURES=1.
    #[test]
    fn regenerate_wal_fixtures() {
        if std::env::var_os("AVAILDB_REGEN_FIXTURES").is_none_or(|v| v != "1") {
            return;
        }
        let dir = fixture_dir();
        fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, bytes: &[u8]| fs::write(dir.join(name), bytes).unwrap();
        let frame_len = fixture_frame_len();

        let (_tmp, conn, wal) = fixture_database();
        conn.execute_batch(
            "PRAGMA cache_size=1;
             BEGIN;
             CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
             CREATE TABLE pad(v BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 6)
               INSERT INTO pad SELECT randomblob(900) FROM n;
             COMMIT;
             BEGIN;
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 8)
               INSERT INTO t(v) SELECT 'row ' || i FROM n;
             SELECT count(*) FROM pad WHERE v LIKE 'x';
             UPDATE t SET v = 'updated' WHERE id = 1;
             COMMIT;
             UPDATE t SET v = 'again' WHERE id = 2;",
        )
        .unwrap();
        let ok = fs::read(&wal).unwrap();
        let groups = frame_groups(&ok);
        assert_eq!(groups.len(), 3);
        write("ok.wal", &ok);

        let second = WAL_HEADER_LEN + groups[0].len() * frame_len;
        let mut flipped = ok.clone();
        flipped[second + FRAME_HEADER_LEN + 100] ^= 0x01;
        write("frame-checksum-mismatch.wal", &flipped);

        let third = second + groups[1].len() * frame_len;
        let mut salted = ok.clone();
        let salt1 = be_u32(&ok, third + 8).wrapping_add(1);
        salted[third + 8..third + 12].copy_from_slice(&salt1.to_be_bytes());
        write("salt-mismatch.wal", &salted);

        write("torn-last-frame.wal", &ok[..ok.len() - frame_len / 2]);

        let (_tmp, conn, wal) = fixture_database();
        conn.execute_batch(
            "BEGIN; CREATE TABLE t(v); INSERT INTO t VALUES ('a'); COMMIT;
             INSERT INTO t VALUES ('b');",
        )
        .unwrap();
        write("restart-1.wal", &fs::read(&wal).unwrap());
        checkpoint(&conn, "PASSIVE");
        conn.execute_batch("INSERT INTO t VALUES ('c');").unwrap();
        write("restart-2.wal", &fs::read(&wal).unwrap());

        let (_tmp, conn, wal) = fixture_database();
        conn.execute_batch("BEGIN; CREATE TABLE t(v); INSERT INTO t VALUES ('a'); COMMIT;")
            .unwrap();
        conn.execute_batch(
            "PRAGMA cache_size=1;
             BEGIN;
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 24)
               INSERT INTO t SELECT replace(hex(zeroblob(40)), '00', 'SPILL') FROM n;",
        )
        .unwrap();
        conn.execute_batch("ROLLBACK").unwrap();
        write("rolled-back-spill-1.wal", &fs::read(&wal).unwrap());
        conn.execute_batch("INSERT INTO t VALUES ('c');").unwrap();
        write("rolled-back-spill-2.wal", &fs::read(&wal).unwrap());

        let mut readme = String::from(
            "# WAL reader fixtures\n\nSQLite WAL files (page size 1024) read by the tests in \
             `src/engine/wal.rs`. Regenerate with\n`AVAILDB_REGEN_FIXTURES=1 cargo test regenerate_wal_fixtures`.\n\n",
        );
        for (name, description) in FIXTURES {
            readme.push_str(&format!("* `{name}`: {description}\n"));
        }
        write("README.md", readme.as_bytes());
    }

    #[test]
    fn fixture_ok_returns_each_transaction_once_with_the_last_frame_of_a_page() {
        let ok = fixture("ok.wal");
        let groups = frame_groups(&ok);
        assert_eq!(groups.len(), 3);
        let pages_of = |i: usize| {
            groups[i]
                .iter()
                .map(|(head, _)| head.page_number)
                .collect::<Vec<_>>()
        };
        let first = pages_of(0);
        let distinct: std::collections::BTreeSet<_> = first.iter().collect();
        assert!(
            distinct.len() >= 3,
            "the first touches several pages: {first:?}"
        );
        let second = pages_of(1);
        let twice = *second
            .iter()
            .find(|n| second.iter().filter(|m| m == n).count() == 2)
            .unwrap();
        let images: Vec<&Vec<u8>> = groups[1]
            .iter()
            .filter(|(head, _)| head.page_number == twice)
            .map(|(_, page)| page)
            .collect();
        assert_ne!(
            images[0], images[1],
            "page {twice} was written again with new content"
        );

        let (_dir, _path, mut reader) = reader_on(&ok);
        let read = reader.read_committed().unwrap();
        assert_eq!(read, expected_transactions(&groups));
        let (_, image) = read[1].pages.iter().find(|(n, _)| *n == twice).unwrap();
        assert_eq!(image, images[1]);
        assert_eq!(
            reader.frames_read() as usize,
            groups.iter().map(Vec::len).sum::<usize>()
        );
        assert!(reader.read_committed().unwrap().is_empty());
    }

    #[test]
    fn fixture_frame_checksum_mismatch_ends_the_log() {
        let expected = expected_transactions(&frame_groups(&fixture("ok.wal")));
        let (_dir, _path, mut reader) = reader_on(&fixture("frame-checksum-mismatch.wal"));
        assert_eq!(reader.read_committed().unwrap(), expected[..1]);
    }

    #[test]
    fn fixture_salt_mismatch_ends_the_log() {
        let expected = expected_transactions(&frame_groups(&fixture("ok.wal")));
        let (_dir, _path, mut reader) = reader_on(&fixture("salt-mismatch.wal"));
        assert_eq!(reader.read_committed().unwrap(), expected[..2]);
    }

    #[test]
    fn fixture_torn_last_frame_is_ignored_until_complete() {
        let ok = fixture("ok.wal");
        let expected = expected_transactions(&frame_groups(&ok));
        let (_dir, path, mut reader) = reader_on(&fixture("torn-last-frame.wal"));
        assert_eq!(reader.read_committed().unwrap(), expected[..2]);
        fs::write(&path, &ok).unwrap();
        assert_eq!(reader.read_committed().unwrap(), expected[2..]);
    }

    #[test]
    fn fixture_restart_returns_every_transaction_once() {
        let before = fixture("restart-1.wal");
        let after = fixture("restart-2.wal");
        assert_eq!(
            be_u32(&after, 16),
            be_u32(&before, 16).wrapping_add(1),
            "salt-1 + 1"
        );
        assert_eq!(
            after.len(),
            before.len(),
            "the old generation's frames are still in the file"
        );

        let (_dir, path, mut reader) = reader_on(&before);
        assert_eq!(
            reader.read_committed().unwrap(),
            expected_transactions(&frame_groups(&before))
        );
        fs::write(&path, &after).unwrap();
        let new_generation = expected_transactions(&frame_groups(&after));
        assert_eq!(new_generation.len(), 1);
        assert_eq!(reader.read_committed().unwrap(), new_generation);
        assert_eq!(reader.frames_read(), 1);
        assert!(reader.read_committed().unwrap().is_empty());

        let (_dir, _path, mut fresh) = reader_on(&after);
        assert_eq!(fresh.read_committed().unwrap(), new_generation);
    }

    #[test]
    fn fixture_restart_with_unread_commits_is_reported() {
        let before = fixture("restart-1.wal");
        let groups = frame_groups(&before);
        assert_eq!(groups.len(), 2);
        let first_only = &before[..WAL_HEADER_LEN + groups[0].len() * fixture_frame_len()];
        let (_dir, path, mut reader) = reader_on(first_only);
        assert_eq!(reader.read_committed().unwrap().len(), 1);

        fs::write(&path, fixture("restart-2.wal")).unwrap();
        for _ in 0..2 {
            let err = reader.read_committed().unwrap_err();
            assert!(
                matches!(err, WalError::CommitsMissed { frame, transactions: 1 } if frame as usize == groups[0].len()),
                "{err:?}"
            );
            assert!(!err.is_retryable());
        }
    }

    #[test]
    fn fixture_rolled_back_spill_is_never_returned() {
        let rolled_back = fixture("rolled-back-spill-1.wal");
        let then_committed = fixture("rolled-back-spill-2.wal");
        let contains_mark = |bytes: &[u8]| bytes.windows(SPILL_MARK.len()).any(|w| w == SPILL_MARK);
        assert!(
            contains_mark(&then_committed),
            "the spilled frames are in the file"
        );
        let committed = frame_groups(&rolled_back);
        assert_eq!(committed.len(), 1);
        let committed_frames = committed[0].len();
        assert!(
            valid_frames(&rolled_back).len() > committed_frames,
            "spilled frames chain after the commit"
        );

        let (_dir, path, mut reader) = reader_on(&rolled_back);
        let first = reader.read_committed().unwrap();
        assert_eq!(first, expected_transactions(&committed));
        assert_eq!(reader.frames_read() as usize, committed_frames);

        fs::write(&path, &then_committed).unwrap();
        let second = reader.read_committed().unwrap();
        assert_eq!(second.len(), 1);
        let mut fresh = WalReader::new(&path);
        let all = fresh.read_committed().unwrap();
        assert_eq!(all, [first, second].concat());
        for (_, page) in all.iter().flat_map(|t| &t.pages) {
            assert!(!contains_mark(page), "a spilled page was returned");
        }
    }

    // ---- Live: a replica built only from the pages read must equal the primary ----

    /// A primary database in WAL mode, a reader on its WAL, and a replica file
    /// built only from the pages the reader returns.
    struct Shipping {
        dir: tempfile::TempDir,
        primary: Connection,
        reader: WalReader,
    }

    impl Shipping {
        /// `uri` is appended to the primary's file URI; `setup` runs before
        /// anything is written.
        fn start(uri: &str, setup: &str) -> Shipping {
            let dir = tempfile::tempdir().unwrap();
            let db = dir.path().join("primary.db");
            let primary = Connection::open(format!("file:{}{uri}", db.display())).unwrap();
            primary
                .execute_batch(&format!(
                    "PRAGMA page_size={PAGE_SIZE}; {setup} PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;"
                ))
                .unwrap();
            let shipping = Shipping {
                reader: WalReader::new(dir.path().join("primary.db-wal")),
                dir,
                primary,
            };
            assert!(
                fs::metadata(shipping.wal()).map_or(true, |m| m.len() == 0),
                "nothing to ship yet"
            );
            fs::copy(shipping.db(), shipping.replica()).unwrap();
            shipping
        }

        fn db(&self) -> PathBuf {
            self.dir.path().join("primary.db")
        }

        fn wal(&self) -> PathBuf {
            self.dir.path().join("primary.db-wal")
        }

        fn replica(&self) -> PathBuf {
            self.dir.path().join("replica.db")
        }

        /// Salt-1 of the WAL header.
        fn salt1(&self) -> u32 {
            be_u32(&fs::read(self.wal()).unwrap(), 16)
        }

        /// Runs `sql` as one write transaction on the primary, ships it and
        /// checks the replica.
        fn commit(&mut self, sql: &str) -> WalTransaction {
            self.primary.execute_batch(sql).unwrap();
            let mut read = self.ship();
            assert_eq!(read.len(), 1, "one transaction per commit: {sql}");
            read.pop().unwrap()
        }

        /// Reads what was committed, applies it to the replica and checks that
        /// the replica equals the primary.
        fn ship(&mut self) -> Vec<WalTransaction> {
            let read = self.reader.read_committed().unwrap();
            self.apply(&read);
            assert_eq!(dump(&self.primary), dump(&self.open_replica()));
            read
        }

        /// Writes page images at their offsets and cuts the file to the
        /// committed size, as redo does.
        fn apply(&self, transactions: &[WalTransaction]) {
            let mut file = OpenOptions::new().write(true).open(self.replica()).unwrap();
            let page_size = u64::from(PAGE_SIZE);
            for transaction in transactions {
                for (page_number, page) in &transaction.pages {
                    file.seek(SeekFrom::Start(u64::from(page_number - 1) * page_size))
                        .unwrap();
                    file.write_all(page).unwrap();
                }
                file.set_len(u64::from(transaction.db_size) * page_size)
                    .unwrap();
            }
        }

        fn open_replica(&self) -> Connection {
            let uri = format!("file:{}?immutable=1", self.replica().display());
            let replica = Connection::open_with_flags(
                uri,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
            )
            .unwrap();
            let check: String = replica
                .query_row("PRAGMA quick_check", [], |row| row.get(0))
                .unwrap();
            assert_eq!(check, "ok");
            replica
        }

        /// After a TRUNCATE checkpoint the primary's file holds everything, and
        /// must equal the replica byte for byte.
        fn assert_files_equal(&self) {
            checkpoint(&self.primary, "TRUNCATE");
            assert!(fs::read(self.db()).unwrap() == fs::read(self.replica()).unwrap());
        }

        /// Counts the frames `sqlite3_wal_hook` reports after each commit.
        fn hook_frames(&mut self) -> Arc<AtomicI32> {
            let frames = Arc::new(AtomicI32::new(0));
            let hooked = Arc::clone(&frames);
            let hook = move |_: &mut rusqlite::hooks::Wal, n: std::ffi::c_int| {
                hooked.store(n, Ordering::SeqCst);
                Ok(())
            };
            self.primary.wal_hook(Some(hook)).unwrap();
            frames
        }
    }

    /// Schema, page count and every row, for comparing databases.
    fn dump(conn: &Connection) -> Vec<String> {
        let page_count: i64 = conn
            .query_row("PRAGMA page_count", [], |row| row.get(0))
            .unwrap();
        let mut out = vec![format!("page_count {page_count}")];
        let mut schema = conn
            .prepare("SELECT type, name, sql FROM sqlite_schema ORDER BY name")
            .unwrap();
        let objects: Vec<(String, String, Option<String>)> = schema
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for (kind, name, sql) in objects {
            out.push(format!("{kind} {name}: {sql:?}"));
            if kind != "table" {
                continue;
            }
            let mut rows = conn
                .prepare(&format!("SELECT * FROM \"{name}\" ORDER BY rowid"))
                .unwrap();
            let columns = rows.column_count();
            let mut query = rows.query([]).unwrap();
            while let Some(row) = query.next().unwrap() {
                let values: Vec<String> = (0..columns)
                    .map(|i| format!("{:?}", row.get_ref(i).unwrap()))
                    .collect();
                out.push(values.join("|"));
            }
        }
        out
    }

    /// Inserts `n` rows of `size`-byte blobs into `table`.
    fn insert_blobs(table: &str, n: u32, size: u32) -> String {
        format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n})
               INSERT INTO {table} SELECT randomblob({size}) FROM n"
        )
    }

    #[test]
    fn live_replica_matches_primary_across_checkpoints_and_restarts() {
        let mut s = Shipping::start("", "");
        s.commit("CREATE TABLE acct(id INTEGER PRIMARY KEY, owner TEXT, balance INTEGER)");
        let many = s.commit(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
               INSERT INTO acct(owner, balance) SELECT 'owner ' || i, i * 10 FROM n",
        );
        assert!(many.pages.len() > 5);
        s.commit("CREATE INDEX acct_owner ON acct(owner)");
        s.commit(
            "BEGIN; UPDATE acct SET balance = balance - 5 WHERE id = 7;
             UPDATE acct SET balance = balance + 5 WHERE id = 250; COMMIT",
        );
        s.commit("DELETE FROM acct WHERE id % 3 = 0");
        for mode in ["PASSIVE", "FULL", "RESTART", "TRUNCATE"] {
            let frames = s.reader.frames_read();
            let salt1 = s.salt1();
            checkpoint(&s.primary, mode);
            s.commit(&format!(
                "INSERT INTO acct(owner, balance) VALUES ('after {mode}', 1)"
            ));
            assert_eq!(
                s.salt1(),
                salt1.wrapping_add(1),
                "the write after a {mode} checkpoint restarts the WAL"
            );
            assert!(s.reader.frames_read() < frames);
            s.commit("UPDATE acct SET balance = balance + 1 WHERE id = 1");
        }
        s.assert_files_equal();

        // A transaction that spills pages into the WAL and rolls back ships nothing.
        let wal_len = fs::metadata(s.wal()).unwrap().len();
        s.primary
            .execute_batch("PRAGMA cache_size=2; BEGIN")
            .unwrap();
        s.primary
            .execute_batch(&insert_blobs("acct(owner)", 200, 300))
            .unwrap();
        assert!(
            fs::metadata(s.wal()).unwrap().len() > wal_len,
            "the transaction spilled"
        );
        assert!(s.reader.read_committed().unwrap().is_empty());
        s.primary.execute_batch("ROLLBACK").unwrap();
        assert!(s.ship().is_empty());
        s.commit("UPDATE acct SET owner = 'after the rollback' WHERE id = 2");
        s.assert_files_equal();
    }

    #[test]
    fn live_replica_follows_drop_table_and_vacuum_shrinking_the_database() {
        for auto_vacuum in ["NONE", "FULL"] {
            let mut s = Shipping::start("", &format!("PRAGMA auto_vacuum={auto_vacuum};"));
            s.commit("BEGIN; CREATE TABLE keep(v TEXT); CREATE TABLE big(v BLOB); INSERT INTO keep VALUES ('kept'); COMMIT");
            let grown = s.commit(&insert_blobs("big", 200, 600)).db_size;
            let dropped = s.commit("DROP TABLE big").db_size;
            let vacuumed = s.commit("VACUUM").db_size;
            if auto_vacuum == "FULL" {
                assert!(
                    dropped < grown,
                    "auto_vacuum shrinks at DROP TABLE: {dropped} < {grown}"
                );
            } else {
                assert_eq!(
                    dropped, grown,
                    "without auto_vacuum the pages go to the freelist"
                );
                assert!(vacuumed < grown, "VACUUM shrinks: {vacuumed} < {grown}");
            }
            let replica_len = fs::metadata(s.replica()).unwrap().len();
            assert_eq!(replica_len, u64::from(vacuumed) * u64::from(PAGE_SIZE));
            s.assert_files_equal();
        }
    }

    #[test]
    fn live_frames_read_matches_the_wal_hook_frame_count() {
        let mut s = Shipping::start("", "");
        let hooked = s.hook_frames();
        let check = |s: &mut Shipping, sql: &str| {
            s.commit(sql);
            assert_eq!(
                i64::from(s.reader.frames_read()),
                i64::from(hooked.load(Ordering::SeqCst)),
                "{sql}"
            );
        };
        check(&mut s, "CREATE TABLE t(v BLOB)");
        check(&mut s, &insert_blobs("t", 50, 500));
        checkpoint(&s.primary, "PASSIVE");
        check(&mut s, "UPDATE t SET v = zeroblob(10) WHERE rowid = 3");
        s.primary
            .execute_batch("PRAGMA cache_size=2; BEGIN")
            .unwrap();
        s.primary
            .execute_batch(&insert_blobs("t", 100, 500))
            .unwrap();
        s.primary.execute_batch("ROLLBACK").unwrap();
        check(&mut s, "DELETE FROM t WHERE rowid < 10");
        checkpoint(&s.primary, "TRUNCATE");
        check(&mut s, "INSERT INTO t VALUES (NULL)");
    }

    #[test]
    fn live_sector_padding_is_not_shipped_as_extra_transactions() {
        // Without powersafe overwrite, synchronous=FULL pads every commit to a
        // sector boundary with copies of its commit frame.
        let mut s = Shipping::start("?psow=0", "PRAGMA synchronous=FULL;");
        let hooked = s.hook_frames();
        s.commit("CREATE TABLE t(v TEXT)");
        for i in 0..5 {
            s.commit(&format!("INSERT INTO t VALUES ('row {i}')"));
            assert_eq!(
                i64::from(s.reader.frames_read()),
                i64::from(hooked.load(Ordering::SeqCst))
            );
        }
        let frames = valid_frames(&fs::read(s.wal()).unwrap());
        let copies = frames
            .windows(2)
            .filter(|w| w[0].0.db_size != 0 && w[0] == w[1])
            .count();
        assert!(copies > 0, "SQLite padded the commits");
    }

    #[test]
    fn live_skipped_generation_is_reported() {
        let mut s = Shipping::start("", "");
        s.commit("CREATE TABLE t(v)");
        let salt1 = s.salt1();
        for v in 1..=2 {
            checkpoint(&s.primary, "PASSIVE");
            s.primary.execute("INSERT INTO t VALUES (?1)", [v]).unwrap();
        }
        for _ in 0..2 {
            let err = s.reader.read_committed().unwrap_err();
            assert!(
                matches!(err, WalError::GenerationMissed { expected_salt1, found_salt1 }
                    if expected_salt1 == salt1.wrapping_add(1) && found_salt1 == salt1.wrapping_add(2)),
                "{err:?}"
            );
            assert!(!err.is_retryable());
        }
    }

    #[test]
    fn live_restarts_by_other_connections_are_followed_whatever_the_checkpoint_sequence() {
        let mut s = Shipping::start("", "");
        s.commit("CREATE TABLE t(v)");
        // The writer restarts the WAL once itself, so that it keeps salt-1
        // from then on.
        checkpoint(&s.primary, "PASSIVE");
        s.commit("INSERT INTO t VALUES ('writer restarted')");
        let other = Connection::open(s.db()).unwrap();
        let sequence = |s: &Shipping| be_u32(&fs::read(s.wal()).unwrap(), 12);
        let mut sequences = vec![sequence(&s)];
        checkpoint(&other, "TRUNCATE");
        s.commit("INSERT INTO t VALUES ('after the other truncated')");
        sequences.push(sequence(&s));
        checkpoint(&other, "PASSIVE");
        other
            .execute_batch("INSERT INTO t VALUES ('written by the other')")
            .unwrap();
        assert_eq!(s.ship().len(), 1);
        sequences.push(sequence(&s));
        checkpoint(&s.primary, "RESTART");
        s.commit("INSERT INTO t VALUES ('writer again')");
        sequences.push(sequence(&s));
        assert!(
            sequences.windows(2).any(|w| w[1] != w[0].wrapping_add(1)),
            "the checkpoint sequence is per connection: {sequences:?}"
        );
    }

    #[test]
    fn live_rerolled_salts_after_another_connections_truncate_are_reported() {
        // The writer has never restarted the WAL, so after another
        // connection's TRUNCATE checkpoint it draws new random salts.
        let mut s = Shipping::start("", "");
        s.commit("CREATE TABLE t(v)");
        let other = Connection::open(s.db()).unwrap();
        checkpoint(&other, "TRUNCATE");
        s.primary.execute_batch("INSERT INTO t VALUES (1)").unwrap();
        let err = s.reader.read_committed().unwrap_err();
        assert!(matches!(err, WalError::GenerationMissed { .. }), "{err:?}");
    }

    #[test]
    fn live_unread_commits_before_a_restart_are_reported() {
        let mut s = Shipping::start("", "");
        s.commit("CREATE TABLE t(v BLOB)");
        s.commit(&insert_blobs("t", 20, 500));
        s.primary
            .execute_batch("INSERT INTO t VALUES ('never read')")
            .unwrap();
        checkpoint(&s.primary, "PASSIVE");
        s.primary
            .execute_batch("INSERT INTO t VALUES ('next generation')")
            .unwrap();
        let err = s.reader.read_committed().unwrap_err();
        assert!(
            matches!(
                err,
                WalError::CommitsMissed {
                    transactions: 1,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn live_limit_unread_commits_before_a_truncate_checkpoint_are_lost_silently() {
        // The trap the caller avoids by reading after every commit: the
        // emptied file leaves nothing to detect, and the next generation
        // follows the one-restart pattern.
        let mut s = Shipping::start("", "");
        s.commit("BEGIN; CREATE TABLE t(v); CREATE TABLE lost(v); COMMIT");
        s.primary
            .execute_batch("INSERT INTO lost VALUES ('never shipped')")
            .unwrap();
        checkpoint(&s.primary, "TRUNCATE");
        s.primary
            .execute_batch("INSERT INTO t VALUES ('next generation')")
            .unwrap();
        let read = s.reader.read_committed().unwrap();
        assert_eq!(read.len(), 1);
        s.apply(&read);
        assert_ne!(dump(&s.primary), dump(&s.open_replica()));
    }
}
