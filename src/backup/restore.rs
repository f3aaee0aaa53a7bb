//! Restoring: a full backup into a RESTORING copy, log backups on top of
//! it (to a point in time if asked), and RECOVERY, which brings the copy
//! online as a database of this node.
//!
//! A log backup is read twice: a first pass checks all of it (block and
//! record checksums, LSN continuity, the chain) and plans where to stop;
//! only then does the second pass write into the RESTORING copy. So a bad
//! file changes nothing, and a RESTORING copy never holds half a backup
//! unless the disk itself failed mid-write (the state then says so, and
//! only a backup that covers the interrupted one is taken next). A full
//! backup is checked and written in one pass ([`build_full`]), into a
//! temporary folder that only becomes the RESTORING copy once every check
//! passed and every page on disk matches the backup's hashes.
//!
//! Either way one thread reads the blocks in order, up to [`DECODERS`]
//! check and decompress them (blocks are independent), and the calling
//! thread consumes them in order ([`for_each_block`]); page images are
//! written a run of adjacent pages at a time.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::claim::{Claim, Claims};
use super::error::{BackupError, Result};
use super::format::{self, BlockKind, Header, Kind, Reader};
use super::take::overlay;
use crate::engine::{Engine, Fence};
use crate::log::{Lsn, Record};

/// Where a point-in-time restore stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// STOPATLSN: every transaction that ends at or before this LSN.
    Lsn(Lsn),
    /// STOPAT: every transaction committed at or before this time (µs
    /// since the Unix epoch).
    Time(i64),
}

/// What to restore.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    /// The database to create (or continue restoring).
    pub database: String,
    /// The backup file; None for `RESTORE DATABASE x WITH RECOVERY` alone.
    pub path: Option<PathBuf>,
    /// RESTORE DATABASE (full) or RESTORE LOG.
    pub kind: Kind,
    /// WITH RECOVERY (the default) rather than NORECOVERY.
    pub recovery: bool,
    /// WITH REPLACE.
    pub replace: bool,
    /// STOPAT / STOPATLSN.
    pub stop: Option<Stop>,
    /// Told (blocks done, blocks in all) as the file is checked and then
    /// written (two passes: each block counts twice).
    pub progress: Option<super::Progress>,
    /// Told the bytes of the backup file gone through so far, each time a
    /// block is: a RESTORE LOG goes through its file twice (checked, then
    /// applied) and counts both; a full restore does both in one pass.
    pub read: Option<super::rate::BytesRead>,
}

/// Counts the blocks and bytes both passes went through, for a
/// [`RestoreRequest`]'s progress and bytes read.
struct Ticks<'a> {
    progress: Option<&'a super::Progress>,
    read: Option<&'a super::rate::BytesRead>,
    done: std::cell::Cell<u64>,
    bytes: std::cell::Cell<u64>,
    total: u64,
}

impl<'a> Ticks<'a> {
    fn new(request: &'a RestoreRequest, blocks: usize) -> Ticks<'a> {
        Ticks {
            progress: request.progress.as_ref(),
            read: request.read.as_ref(),
            done: Default::default(),
            bytes: Default::default(),
            total: 2 * blocks as u64,
        }
    }

    fn none() -> Ticks<'static> {
        Ticks {
            progress: None,
            read: None,
            done: Default::default(),
            bytes: Default::default(),
            total: 0,
        }
    }

    /// A block of `stored` bytes in the file went through `passes` of the
    /// two passes.
    fn block(&self, stored: u64, passes: u64) {
        self.done.set(self.done.get() + passes);
        self.bytes.set(self.bytes.get() + stored);
        if let Some(p) = self.progress {
            (p.0)(self.done.get().min(self.total), self.total.max(1));
        }
        if let Some(read) = self.read {
            (read.0)(self.bytes.get());
        }
    }
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The LSN the copy is restored to.
    pub end_lsn: Lsn,
    /// It is online now (RECOVERY).
    pub recovered: bool,
    /// The stop point was reached: no later log applies.
    pub stopped: bool,
    /// Pages written from an image.
    pub pages: u64,
    /// Log records applied.
    pub records: u64,
}

/// A RESTORING copy's state (`DATA_DIR/restoring/<db>/state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    /// The database the backups are of.
    source: String,
    /// The copy holds everything before this LSN.
    end_lsn: Lsn,
    /// The last record applied: (LSN, CRC).
    last_record: Option<(Lsn, u32)>,
    /// Epoch of the last record applied.
    epoch: u64,
    /// Commit time of the last record applied (µs).
    last_commit_us: i64,
    /// A STOPAT point was reached.
    stopped: bool,
    /// A log restore began writing and did not finish: its end LSN.
    pending: Option<Lsn>,
}

fn restoring_root(data_dir: &Path) -> PathBuf {
    data_dir.join("restoring")
}

fn staging(data_dir: &Path, database: &str) -> PathBuf {
    restoring_root(data_dir).join(database)
}

/// True while `database` is RESTORING on this node (a RESTORE … WITH
/// NORECOVERY left it so): it refuses sessions.
pub fn is_restoring(data_dir: &Path, database: &str) -> bool {
    staging(data_dir, database).join("state.json").exists()
}

/// Drops the RESTORING copy of `database` (a seed that could not replace
/// the copy in use: the primary seeds the replica again).
pub fn discard_restoring(data_dir: &Path, database: &str) {
    let _ = fs::remove_dir_all(staging(data_dir, database));
}

static RUNNING: Claims<String> = std::sync::Mutex::new(None);

/// One RESTORE per database at a time.
fn start_restore(database: &str) -> Result<Claim<String>> {
    Claim::take(&RUNNING, database.to_string()).ok_or_else(|| BackupError::Busy {
        database: database.to_string(),
    })
}

fn io(path: &Path, what: &'static str) -> impl Fn(std::io::Error) -> BackupError {
    let path = path.to_path_buf();
    move |source| BackupError::Io {
        what,
        path: path.clone(),
        source,
    }
}

/// Opens a backup file, mapping every failure to what the user sees.
pub fn open(path: &Path) -> Result<Reader<fs::File>> {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BackupError::Missing {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(io(path, "read")(e)),
    };
    Reader::open(file).map_err(|e| read_error(path, e))
}

fn read_error(path: &Path, e: format::ReadError) -> BackupError {
    match e {
        format::ReadError::Format(error) => BackupError::Format {
            path: path.to_path_buf(),
            error,
        },
        format::ReadError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            BackupError::Format {
                path: path.to_path_buf(),
                error: format::FormatError::Truncated("the file ends inside a block".into()),
            }
        }
        format::ReadError::Io(e) => io(path, "read")(e),
    }
}

fn corrupt(path: &Path, why: String) -> BackupError {
    BackupError::Format {
        path: path.to_path_buf(),
        error: format::FormatError::Corrupt(why),
    }
}

/// The first pass over a backup: everything checked, the stop planned.
#[derive(Debug, Default)]
struct Scan {
    /// Records are applied up to here (a unit boundary).
    apply_end: Lsn,
    /// The stop point cut the backup short.
    stopped: bool,
    /// The last record applied (LSN, CRC), epoch and commit time.
    last_record: Option<(Lsn, u32)>,
    epoch: u64,
    last_commit_us: i64,
    /// Every page's hash at the backup's end (full backups).
    hashes: Vec<u32>,
}

fn chain_error(header: &Header, restored: Lsn, why: String) -> BackupError {
    BackupError::Chain {
        database: header.database.clone(),
        first: header.first_lsn,
        end: header.end_lsn,
        restored,
        why,
    }
}

/// Decodes the records of a log block, checking each one's checksum.
fn records_of(path: &Path, block: &format::Block) -> Result<Vec<(Record, u32)>> {
    let mut out = Vec::with_capacity(block.count as usize);
    let mut at = 0;
    while at < block.payload.len() {
        let (record, n) = Record::decode(&block.payload[at..])
            .map_err(|e| corrupt(path, format!("a log record in the backup: {e}")))?;
        record
            .check_contents()
            .map_err(|e| corrupt(path, format!("the log record at LSN {}: {e}", record.lsn)))?;
        let crc = u32::from_le_bytes(
            block.payload[at + n - 4..at + n]
                .try_into()
                .expect("4 bytes"),
        );
        out.push((record, crc));
        at += n;
    }
    if out.len() != block.count as usize {
        return Err(corrupt(
            path,
            "a log block's record count does not match".into(),
        ));
    }
    Ok(out)
}

/// A unit redo applies whole: a transaction (its parts) or a full image.
fn ends_unit(r: &Record) -> bool {
    !r.continues_transaction() && !r.image_continues()
}

/// Most threads that check and decompress a backup's blocks at once.
const DECODERS: usize = 4;

fn decoders() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, DECODERS)
}

/// A block checked and decoded on a worker thread.
enum Decoded {
    /// A part of the full image.
    Pages {
        /// It starts the image.
        start: bool,
        /// More pages blocks follow.
        more: bool,
        /// The image's database size in pages.
        db_size: u32,
        /// (page number, crc32c of its image), ascending.
        hashes: Vec<(u32, u32)>,
        /// Runs of adjacent pages: (first page number, their images).
        runs: Vec<(u32, Vec<u8>)>,
    },
    /// Log records, each with its CRC.
    Log(Vec<(Record, u32)>),
}

/// Checks and decodes one block as [`format::Reader::raw_block`] read it
/// (pure: any thread). A pages block's pages are listed once each, in
/// ascending order, at the header's page size.
fn decode(
    path: &Path,
    header: &Header,
    bytes: &[u8],
    pool: &super::pages::Pool,
    decompressor: &mut zstd::bulk::Decompressor<'static>,
) -> Result<Decoded> {
    let len = format::BLOCK_HEADER_LEN;
    if bytes.len() < len {
        return Err(corrupt(path, "a block header is damaged".into()));
    }
    let block = format::decode_block_into(&bytes[..len], &bytes[len..], pool.take(0), decompressor)
        .map_err(|error| BackupError::Format {
            path: path.to_path_buf(),
            error,
        })?;
    let decoded = decode_block(path, header, &block, pool);
    pool.give(block.payload);
    decoded
}

fn decode_block(
    path: &Path,
    header: &Header,
    block: &format::Block,
    pool: &super::pages::Pool,
) -> Result<Decoded> {
    if block.kind == BlockKind::Log {
        return Ok(Decoded::Log(records_of(path, block)?));
    }
    if header.kind != Kind::Full || header.page_size == 0 {
        return Err(corrupt(path, "pages in a log backup".into()));
    }
    let ps = header.page_size as usize;
    let each = 4 + ps;
    if block.payload.len() != block.count as usize * each {
        return Err(BackupError::Format {
            path: path.to_path_buf(),
            error: format::FormatError::Corrupt(format!(
                "a pages block of {} bytes cannot hold {} pages of {ps} bytes",
                block.payload.len(),
                block.count
            )),
        });
    }
    if !(512..=65536).contains(&ps) || !ps.is_power_of_two() {
        return Err(corrupt(
            path,
            format!("an image block: page size {ps} is not a power of two from 512 to 65536"),
        ));
    }
    if block.db_size == 0 {
        return Err(corrupt(
            path,
            "an image block: a database of 0 pages".into(),
        ));
    }
    let mut hashes = Vec::with_capacity(block.count as usize);
    let mut runs: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut previous = 0u32;
    for entry in block.payload.chunks_exact(each) {
        let pgno = u32::from_le_bytes(entry[..4].try_into().expect("4 bytes"));
        let image = &entry[4..];
        if pgno <= previous {
            return Err(corrupt(path, format!("an image block: page {pgno} follows page {previous}: pages must be listed once, in ascending order from 1")));
        }
        hashes.push((pgno, crc32c::crc32c(image)));
        match runs.last_mut() {
            Some((first, bytes))
                if pgno == previous + 1 && *first + (bytes.len() / ps) as u32 == pgno =>
            {
                bytes.extend_from_slice(image)
            }
            _ => {
                let mut bytes = pool.take(0);
                bytes.reserve(block.payload.len() / each * ps);
                bytes.extend_from_slice(image);
                runs.push((pgno, bytes));
            }
        }
        previous = pgno;
    }
    Ok(Decoded::Pages {
        start: block.image_start,
        more: block.image_more,
        db_size: block.db_size,
        hashes,
        runs,
    })
}

/// Reads every block of `reader` in order on one thread, checks and
/// decodes them on up to [`DECODERS`] (blocks are independent) and hands
/// them to `each` in order, on the calling thread. The first error — of
/// the earliest block, as a sequential read would meet it — ends it.
fn for_each_block<R: std::io::Read + std::io::Seek + Send>(
    path: &Path,
    reader: &mut Reader<R>,
    mut each: impl FnMut(&Decoded, u64) -> Result<()>,
) -> Result<()> {
    use std::sync::mpsc::sync_channel;
    let header = reader.header.clone();
    let blocks = reader.blocks();
    let workers = decoders();
    let pool = super::pages::Pool::default();
    let pool = &pool;
    std::thread::scope(|scope| {
        let (raw_tx, raw_rx) = sync_channel::<(usize, Vec<u8>)>(workers);
        let raw_rx = std::sync::Arc::new(std::sync::Mutex::new(raw_rx));
        // (block, its stored bytes, the block checked and decoded)
        let (done_tx, done_rx) = sync_channel::<(usize, u64, Result<Decoded>)>(workers);
        for _ in 0..workers {
            let (rx, tx, header) = (raw_rx.clone(), done_tx.clone(), &header);
            scope.spawn(move || {
                let mut decompressor = match zstd::bulk::Decompressor::new() {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = tx.send((usize::MAX, 0, Err(io(path, "read")(e))));
                        return;
                    }
                };
                loop {
                    let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok((i, bytes)) = next else { break };
                    let decoded = decode(path, header, &bytes, pool, &mut decompressor);
                    let stored = bytes.len() as u64;
                    pool.give(bytes);
                    if tx.send((i, stored, decoded)).is_err() {
                        break;
                    }
                }
            });
        }
        drop((raw_rx, done_tx));
        let read = scope.spawn(move || -> Result<()> {
            for i in 0..blocks {
                let mut bytes = pool.take(0);
                reader
                    .raw_block_into(i, &mut bytes)
                    .map_err(|e| read_error(path, e))?;
                if raw_tx.send((i, bytes)).is_err() {
                    break;
                }
            }
            Ok(())
        });
        let mut waiting = std::collections::BTreeMap::new();
        let mut next = 0usize;
        let mut outcome = Ok(());
        'blocks: for (i, stored, decoded) in done_rx.iter() {
            if i == usize::MAX {
                outcome = decoded.map(|_| ());
                break;
            }
            waiting.insert(i, (stored, decoded));
            while let Some((stored, decoded)) = waiting.remove(&next) {
                next += 1;
                let done = decoded.and_then(|block| {
                    let done = each(&block, stored);
                    if let Decoded::Pages { runs, .. } = block {
                        runs.into_iter().for_each(|(_, bytes)| pool.give(bytes));
                    }
                    done
                });
                if let Err(e) = done {
                    outcome = Err(e);
                    break 'blocks;
                }
            }
        }
        // Stops the workers (their sends fail), then the reading thread.
        drop(done_rx);
        let read = read.join().unwrap_or_else(|_| {
            Err(io(path, "read")(std::io::Error::other(
                "the restore's reading thread panicked",
            )))
        });
        outcome?;
        read?;
        if next != blocks {
            return Err(io(path, "read")(std::io::Error::other(
                "a block was not decoded",
            )));
        }
        Ok(())
    })
}

/// The checks of pass one, fed the decoded blocks in order.
/// `continues`: where the RESTORING copy stands (end LSN and last record)
/// for a log backup; `stop`: where to stop.
struct Scanning<'a> {
    path: &'a Path,
    header: Header,
    continues: Option<(Lsn, Option<(Lsn, u32)>)>,
    stop: Option<Stop>,
    out: Scan,
    next: Lsn,
    unit_start: Lsn,
    unit_included: bool,
    stopped: bool,
    image_open: bool,
    overlap_checked: bool,
}

impl<'a> Scanning<'a> {
    fn new(
        path: &'a Path,
        header: &Header,
        continues: Option<(Lsn, Option<(Lsn, u32)>)>,
        stop: Option<Stop>,
    ) -> Scanning<'a> {
        Scanning {
            path,
            header: header.clone(),
            continues,
            stop,
            out: Scan {
                apply_end: continues.map_or(header.first_lsn, |(end, _)| end),
                epoch: header.epoch,
                ..Scan::default()
            },
            next: header.first_lsn,
            unit_start: header.first_lsn,
            unit_included: true,
            stopped: false,
            image_open: false,
            overlap_checked: continues.is_none_or(|(end, _)| end == header.first_lsn),
        }
    }

    fn feed(&mut self, block: &Decoded) -> Result<()> {
        let (path, header) = (self.path, &self.header);
        match block {
            Decoded::Pages {
                start,
                more,
                db_size,
                hashes,
                ..
            } => {
                if *start == self.image_open {
                    return Err(corrupt(path, "the image's blocks are out of order".into()));
                }
                self.image_open = *more;
                let h = &mut self.out.hashes;
                for &(pgno, hash) in hashes {
                    let i = pgno as usize - 1;
                    if h.len() <= i {
                        h.resize(i + 1, 0);
                    }
                    h[i] = hash;
                }
                if !*more {
                    h.resize(*db_size as usize, 0);
                }
            }
            Decoded::Log(records) => {
                if self.image_open {
                    return Err(corrupt(path, "the image ends early".into()));
                }
                for (record, crc) in records {
                    let crc = *crc;
                    if record.lsn != self.next {
                        return Err(corrupt(
                            path,
                            format!(
                                "a record at LSN {} where LSN {} was expected",
                                record.lsn, self.next
                            ),
                        ));
                    }
                    self.next = record.end_lsn();
                    if header.kind == Kind::Full {
                        overlay(&mut self.out.hashes, record);
                    }
                    if let Some((end, last)) = self.continues {
                        if record.lsn < end {
                            if record.end_lsn() > end {
                                return Err(chain_error(header, end, format!("its record at LSN {} runs past LSN {end}: it is not the same log", record.lsn)));
                            }
                            if record.end_lsn() == end {
                                if last.is_some_and(|l| l != (record.lsn, crc)) {
                                    return Err(chain_error(header, end, format!("its record at LSN {} is not the one restored: it is the log of another database or of a diverged branch", record.lsn)));
                                }
                                self.overlap_checked = true;
                            }
                            self.unit_start = record.end_lsn();
                            continue;
                        }
                    }
                    if self.stopped {
                        continue;
                    }
                    if self.unit_start == record.lsn {
                        // A unit is in when its commit time (the same in
                        // all its parts) is not past STOPAT.
                        self.unit_included = match self.stop {
                            Some(Stop::Time(t)) => record.commit_time_us <= t,
                            _ => true,
                        };
                    }
                    if ends_unit(record) {
                        let included = self.unit_included
                            && !matches!(self.stop, Some(Stop::Lsn(l)) if record.end_lsn() > l);
                        if included {
                            self.out.apply_end = record.end_lsn();
                            self.out.last_record = Some((record.lsn, crc));
                            self.out.epoch = record.epoch;
                            self.out.last_commit_us = record.commit_time_us;
                        } else {
                            self.stopped = true;
                        }
                        self.unit_start = record.end_lsn();
                    }
                }
            }
        }
        Ok(())
    }

    fn finish(self, manifest: &format::Manifest) -> Result<Scan> {
        let (path, header, mut out) = (self.path, &self.header, self.out);
        if self.image_open {
            return Err(corrupt(path, "the image ends early".into()));
        }
        if self.next != header.end_lsn {
            return Err(corrupt(
                path,
                format!(
                    "its records end at LSN {}, its header says {}",
                    self.next, header.end_lsn
                ),
            ));
        }
        if manifest.last_record != out.last_record && !self.stopped && self.continues.is_none() {
            return Err(corrupt(
                path,
                "the manifest's last record does not match the records".into(),
            ));
        }
        if header.kind == Kind::Full && out.hashes != manifest.page_hashes {
            let page = out
                .hashes
                .iter()
                .zip(&manifest.page_hashes)
                .position(|(a, b)| a != b)
                .unwrap_or(out.hashes.len().min(manifest.page_hashes.len()));
            return Err(corrupt(
                path,
                format!(
                    "its pages and log do not give the page hashes it recorded (first at page {})",
                    page + 1
                ),
            ));
        }
        if let Some((end, _)) = self.continues {
            if !self.overlap_checked {
                return Err(chain_error(
                    header,
                    end,
                    "no record of it ends where the restore stands".into(),
                ));
            }
        }
        out.stopped = self.stopped;
        Ok(out)
    }
}

/// Pass one: checks the whole backup and plans the stop (see
/// [`Scanning`]).
fn scan<R: std::io::Read + std::io::Seek + Send>(
    path: &Path,
    reader: &mut Reader<R>,
    continues: Option<(Lsn, Option<(Lsn, u32)>)>,
    stop: Option<Stop>,
    ticks: &Ticks,
) -> Result<Scan> {
    let mut scanning = Scanning::new(path, &reader.header, continues, stop);
    for_each_block(path, reader, |block, stored| {
        ticks.block(stored, 1);
        scanning.feed(block)
    })?;
    scanning.finish(&reader.manifest)
}

/// `RESTORE VERIFYONLY`: reads and checks the whole backup; returns its
/// header.
pub fn verify(path: &Path) -> Result<Header> {
    let mut reader = open(path)?;
    scan(path, &mut reader, None, None, &Ticks::none())?;
    Ok(reader.header)
}

/// Reads a whole backup from `input` (a file at `path`) and checks it, as
/// [`verify`] does.
pub fn check_file<R: std::io::Read + std::io::Seek + Send>(path: &Path, input: R) -> Result<()> {
    let mut reader = Reader::open(input).map_err(|e| read_error(path, e))?;
    scan(path, &mut reader, None, None, &Ticks::none())?;
    Ok(())
}

/// `RESTORE HEADERONLY`: the header and manifest, checked.
pub fn header_only(path: &Path) -> Result<(Header, format::Manifest, u64)> {
    let reader = open(path)?;
    Ok((reader.header, reader.manifest, reader.size))
}

/// Writes page images into a file at their offsets; the file takes a
/// unit's size at its end (the pages a shrinking transaction spilled are
/// cut).
struct PageFile {
    file: fs::File,
    path: PathBuf,
    /// Keeps the pages written but not yet synced bounded.
    pacer: crate::durable::Pacer,
}

/// The net effect on a file of log records applied in order: the last
/// image of each page, the smallest size a unit cut the file to, and the
/// size the last unit left. Written as cut, then size, then the pages in
/// runs of adjacent ones ([`PageFile::write_net`]), it leaves the file as
/// writing each record's pages and each unit's size in turn does:
/// * a page is kept only while no unit end after its write cut the file
///   below it, so every page written is the last image after the last cut
///   under it, and any other page past the cut is zeros (or past the end);
/// * pages of a unit that goes on past the records (a transaction's parts
///   continuing in the next block) are after the last size, so they may
///   extend the file, as they would one at a time.
#[derive(Default)]
struct Net<'a> {
    pages: std::collections::BTreeMap<u32, &'a [u8]>,
    /// (cut, size) once a unit ended.
    sizes: Option<(u32, u32)>,
    page_size: u32,
}

impl<'a> Net<'a> {
    fn add(&mut self, record: &'a Record) {
        self.page_size = record.page_size;
        for (pgno, image) in &record.pages {
            self.pages.insert(*pgno, image);
        }
        if ends_unit(record) {
            if let Some(past) = record.db_size.checked_add(1) {
                self.pages.split_off(&past);
            }
            let cut = self
                .sizes
                .map_or(record.db_size, |(cut, _)| cut.min(record.db_size));
            self.sizes = Some((cut, record.db_size));
        }
    }

    /// The pages in runs of adjacent page numbers: (first page, images).
    fn runs(&self) -> Vec<(u32, Vec<u8>)> {
        let mut runs: Vec<(u32, Vec<u8>)> = Vec::new();
        let ps = self.page_size as usize;
        for (&pgno, image) in &self.pages {
            match runs.last_mut() {
                Some((first, images))
                    if (*first as usize) + images.len() / ps.max(1) == pgno as usize =>
                {
                    images.extend_from_slice(image)
                }
                _ => runs.push((pgno, image.to_vec())),
            }
        }
        runs
    }
}

impl PageFile {
    /// Writes the net effect of records (see [`Net`]).
    fn write_net(&self, net: &Net) -> Result<()> {
        let ps = u64::from(net.page_size);
        if let Some((cut, size)) = net.sizes {
            self.set_size(cut, ps)?;
            self.set_size(size, ps)?;
        }
        for (first, images) in net.runs() {
            self.write_run(first, &images, ps)?;
        }
        Ok(())
    }

    /// Writes the images of adjacent pages from `first` on, at once.
    fn write_run(&self, first: u32, images: &[u8], page_size: u64) -> Result<()> {
        self.file
            .write_all_at(images, (u64::from(first) - 1) * page_size)
            .map_err(io(&self.path, "write"))?;
        self.pacer
            .wrote(&self.file, images.len() as u64)
            .map_err(io(&self.path, "write"))
    }

    fn set_size(&self, db_size: u32, page_size: u64) -> Result<()> {
        self.file
            .set_len(u64::from(db_size) * page_size)
            .map_err(io(&self.path, "write"))
    }

    /// Writes a decoded block: an image part's pages, or the records
    /// `[from, to)`. Returns (pages, records) written.
    fn write_block(
        &self,
        block: &Decoded,
        page_size: u32,
        from: Lsn,
        to: Lsn,
    ) -> Result<(u64, u64)> {
        match block {
            Decoded::Pages {
                more,
                db_size,
                runs,
                hashes,
                ..
            } => {
                for (first, images) in runs {
                    self.write_run(*first, images, u64::from(page_size))?;
                }
                if !*more {
                    self.set_size(*db_size, u64::from(page_size))?;
                }
                Ok((hashes.len() as u64, 0))
            }
            Decoded::Log(records) => {
                // The block's records at once, in runs of adjacent pages.
                let mut net = Net::default();
                let mut n = 0;
                for (record, _) in records {
                    if record.lsn >= from && record.lsn < to {
                        net.add(record);
                        n += 1;
                    }
                }
                self.write_net(&net)?;
                Ok((0, n))
            }
        }
    }
}

/// Pass two: writes the backup's pages and its records `[from, to)`.
fn apply<R: std::io::Read + std::io::Seek + Send>(
    path: &Path,
    reader: &mut Reader<R>,
    out: &PageFile,
    from: Lsn,
    to: Lsn,
    ticks: &Ticks,
) -> Result<(u64, u64)> {
    let (mut pages, mut records) = (0, 0);
    let page_size = reader.header.page_size;
    for_each_block(path, reader, |block, stored| {
        ticks.block(stored, 1);
        let (p, r) = out.write_block(block, page_size, from, to)?;
        pages += p;
        records += r;
        Ok(())
    })?;
    out.file.sync_all().map_err(io(&out.path, "write"))?;
    Ok((pages, records))
}

/// A full backup in one pass: every block checked as pass one checks it
/// ([`Scanning`]) and written into `out` (a file nobody uses until this
/// returns: a failure leaves it to be removed), then synced. Returns the
/// scan and (pages, records) written; the caller compares the file with
/// the scan's page hashes ([`check_pages`]) before it uses it.
fn build_full<R: std::io::Read + std::io::Seek + Send>(
    path: &Path,
    reader: &mut Reader<R>,
    out: &PageFile,
    ticks: &Ticks,
) -> Result<(Scan, u64, u64)> {
    let (mut pages, mut records) = (0, 0);
    let header = reader.header.clone();
    let mut scanning = Scanning::new(path, &header, None, None);
    for_each_block(path, reader, |block, stored| {
        // One pass stands for the two of a log restore.
        ticks.block(stored, 2);
        scanning.feed(block)?;
        let (p, r) = out.write_block(block, header.page_size, header.first_lsn, header.end_lsn)?;
        pages += p;
        records += r;
        Ok(())
    })?;
    let scanned = scanning.finish(&reader.manifest)?;
    out.file.sync_all().map_err(io(&out.path, "write"))?;
    Ok((scanned, pages, records))
}

fn write_state(dir: &Path, state: &State) -> Result<()> {
    let path = dir.join("state.json");
    let tmp = dir.join("state.json.tmp");
    let bytes =
        serde_json::to_vec(state).map_err(|e| io(&path, "write")(std::io::Error::other(e)))?;
    let write = || -> std::io::Result<()> {
        fs::write(&tmp, &bytes)?;
        fs::File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, &path)?;
        fs::File::open(dir)?.sync_all()
    };
    write().map_err(io(&path, "write"))
}

fn read_state(dir: &Path, database: &str) -> Result<State> {
    let path = dir.join("state.json");
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BackupError::NotRestoring {
                database: database.to_string(),
            })
        }
        Err(e) => return Err(io(&path, "read")(e)),
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| io(&path, "read")(std::io::Error::other(e.to_string())))
}

fn stop_text(stop: Stop) -> String {
    match stop {
        Stop::Lsn(l) => format!("STOPATLSN = '{l}'"),
        Stop::Time(t) => format!("STOPAT = '{}'", time_text(t)),
    }
}

/// A time (µs since the Unix epoch) as `YYYY-MM-DD HH:MM:SS.ffffff+00`.
pub fn time_text(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string())
        .unwrap_or_else(|| us.to_string())
}

/// Runs one RESTORE (blocking: call from a blocking task).
pub fn restore(engine: &Engine, data_dir: &Path, request: &RestoreRequest) -> Result<Restored> {
    // The name becomes a path under the data directory: check it first.
    crate::engine::validate_database_name(&request.database)?;
    let _running = start_restore(&request.database)?;
    let dir = staging(data_dir, &request.database);
    match (&request.path, request.kind) {
        (None, _) => {
            let state = read_state(&dir, &request.database)?;
            recover(engine, &dir, &request.database, &state)?;
            Ok(Restored {
                end_lsn: state.end_lsn,
                recovered: true,
                stopped: state.stopped,
                pages: 0,
                records: 0,
            })
        }
        (Some(path), Kind::Full) => restore_full(engine, data_dir, &dir, path, request),
        (Some(path), Kind::Log) => restore_log(engine, &dir, path, request),
    }
}

fn restore_full(
    engine: &Engine,
    data_dir: &Path,
    dir: &Path,
    path: &Path,
    request: &RestoreRequest,
) -> Result<Restored> {
    let database = &request.database;
    if !request.replace {
        if engine.database(database).is_ok() {
            return Err(BackupError::Exists {
                database: database.clone(),
            });
        }
        if dir.join("state.json").exists() {
            return Err(BackupError::AlreadyRestoring {
                database: database.clone(),
            });
        }
    }
    let mut reader = open(path)?;
    if reader.header.kind != Kind::Full {
        return Err(BackupError::WrongKind {
            path: path.to_path_buf(),
            found: "log",
            wanted: "DATABASE",
            wanted_kind: "full",
        });
    }
    let end = reader.header.end_lsn;
    if let Some(stop) = request.stop {
        // A full backup is consistent only at its end: it can stop there
        // or, restoring logs after it, later.
        let before = match stop {
            Stop::Lsn(l) => l < end,
            Stop::Time(t) => t < reader.manifest.last_commit_us,
        };
        let after = match stop {
            Stop::Lsn(l) => l > end,
            Stop::Time(t) => t > reader.header.started_us,
        };
        if before || (after && request.recovery) {
            return Err(BackupError::StopOutsideRange {
                what: stop_text(stop),
                range: format!(
                    "the full backup restores to LSN {end} (last commit {}); a later point needs RESTORE … WITH NORECOVERY and the log backups after it",
                    time_text(reader.manifest.last_commit_us)
                ),
            });
        }
    }
    let ticks = Ticks::new(request, reader.blocks());
    let tmp = restoring_root(data_dir).join(format!(".{database}.tmp"));
    let _ = fs::remove_dir_all(&tmp);
    let built = (|| -> Result<(u64, u64)> {
        crate::durable::create_dir_all(&tmp).map_err(io(&tmp, "create"))?;
        let file_path = tmp.join("database.db");
        let file = fs::File::create(&file_path).map_err(io(&file_path, "create"))?;
        let out = PageFile {
            file,
            path: file_path.clone(),
            pacer: Default::default(),
        };
        // Checked and written in one pass: the copy is in the temporary
        // folder, removed below if anything fails, and only takes its name
        // once every check passed and every page on disk matches.
        let (scanned, pages, records) = build_full(path, &mut reader, &out, &ticks)?;
        let counts = (pages, records);
        check_pages(
            &file_path,
            database,
            reader.header.page_size,
            &scanned.hashes,
        )?;
        write_state(
            &tmp,
            &State {
                source: reader.header.database.clone(),
                end_lsn: end,
                last_record: scanned.last_record,
                epoch: scanned.epoch,
                last_commit_us: reader.manifest.last_commit_us,
                stopped: false,
                pending: None,
            },
        )?;
        crate::crashpoint::hit("restore.built");
        if dir.exists() {
            fs::remove_dir_all(dir).map_err(io(dir, "replace"))?;
        }
        fs::rename(&tmp, dir).map_err(io(dir, "create"))?;
        fs::File::open(restoring_root(data_dir))
            .and_then(|d| d.sync_all())
            .map_err(io(dir, "create"))?;
        Ok(counts)
    })();
    let (pages, records) = match built {
        Ok(c) => c,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    let state = read_state(dir, database)?;
    if request.recovery {
        recover(engine, dir, database, &state)?;
    }
    Ok(Restored {
        end_lsn: end,
        recovered: request.recovery,
        stopped: false,
        pages,
        records,
    })
}

/// Reads the built file back and compares every page with the hashes
/// the backup recorded for its end LSN: in chunks of 8 MiB, on up to
/// [`DECODERS`] threads; the first bad page is the one reported.
fn check_pages(file: &Path, database: &str, page_size: u32, hashes: &[u32]) -> Result<()> {
    let f = fs::File::open(file).map_err(io(file, "read"))?;
    let len = f.metadata().map_err(io(file, "read"))?.len();
    let ps = u64::from(page_size);
    let bad = |page: u32| BackupError::Verify {
        database: database.to_string(),
        page,
    };
    if len != hashes.len() as u64 * ps {
        return Err(bad((len / ps.max(1)).min(hashes.len() as u64) as u32 + 1));
    }
    let per_chunk = (super::pages::BLOCK_BYTES / page_size.max(1) as usize).max(1);
    let chunks: Vec<&[u32]> = hashes.chunks(per_chunk).collect();
    let threads = decoders().min(chunks.len()).max(1);
    let outcome: std::result::Result<Option<u32>, std::io::Error> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (f, chunks) = (&f, &chunks);
                scope.spawn(
                    move || -> std::result::Result<Option<u32>, std::io::Error> {
                        let mut buf = Vec::new();
                        for c in (t..chunks.len()).step_by(threads) {
                            let want = chunks[c];
                            buf.resize(want.len() * page_size as usize, 0);
                            let first = (c * per_chunk) as u64;
                            f.read_exact_at(&mut buf, first * ps)?;
                            for (i, page) in buf.chunks_exact(page_size as usize).enumerate() {
                                if crc32c::crc32c(page) != want[i] {
                                    // Chunks are in order per thread: the
                                    // first bad page of this thread.
                                    return Ok(Some((first + i as u64) as u32 + 1));
                                }
                            }
                        }
                        Ok(None)
                    },
                )
            })
            .collect();
        let mut first_bad: Option<u32> = None;
        for h in handles {
            match h.join() {
                Ok(Ok(Some(p))) => first_bad = Some(first_bad.map_or(p, |b| b.min(p))),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(std::io::Error::other("a page check thread panicked")),
            }
        }
        Ok(first_bad)
    });
    match outcome.map_err(io(file, "read"))? {
        Some(page) => Err(bad(page)),
        None => Ok(()),
    }
}

fn restore_log(
    engine: &Engine,
    dir: &Path,
    path: &Path,
    request: &RestoreRequest,
) -> Result<Restored> {
    let database = &request.database;
    let mut state = read_state(dir, database)?;
    if state.stopped {
        return Err(BackupError::Stopped {
            database: database.clone(),
            at: state.end_lsn,
        });
    }
    let mut reader = open(path)?;
    let header = reader.header.clone();
    if header.kind != Kind::Log {
        return Err(BackupError::WrongKind {
            path: path.to_path_buf(),
            found: "full",
            wanted: "LOG",
            wanted_kind: "log",
        });
    }
    let chain = |why: String| BackupError::Chain {
        database: database.clone(),
        first: header.first_lsn,
        end: header.end_lsn,
        restored: state.end_lsn,
        why,
    };
    if header.database != state.source {
        return Err(chain(format!(
            "it is a log backup of database \"{}\", the restore is of \"{}\"",
            header.database, state.source
        )));
    }
    if header.first_lsn > state.end_lsn {
        return Err(chain(format!(
            "LSN {}..{} is missing between them (a log backup in between was skipped or lost)",
            state.end_lsn, header.first_lsn
        )));
    }
    if header.end_lsn <= state.end_lsn {
        return Err(chain("everything in it is restored already".into()));
    }
    if let Some(pending) = state.pending {
        if header.end_lsn < pending {
            return Err(chain(format!(
                "an earlier RESTORE LOG up to LSN {pending} was interrupted while writing: restore that log backup (or a later one that covers it) again"
            )));
        }
    }
    if let Some(stop) = request.stop {
        let before = match stop {
            Stop::Lsn(l) => l < state.end_lsn,
            Stop::Time(t) => t < state.last_commit_us,
        };
        let after = match stop {
            Stop::Lsn(l) => l > header.end_lsn,
            Stop::Time(t) => t > header.started_us,
        };
        if before || (after && request.recovery) {
            return Err(BackupError::StopOutsideRange {
                what: stop_text(stop),
                range: format!(
                    "the restore stands at LSN {} (last commit {}) and this log backup reaches LSN {} (taken {})",
                    state.end_lsn,
                    time_text(state.last_commit_us),
                    header.end_lsn,
                    time_text(header.started_us)
                ),
            });
        }
    }
    let ticks = Ticks::new(request, reader.blocks());
    let scanned = scan(
        path,
        &mut reader,
        Some((state.end_lsn, state.last_record)),
        request.stop,
        &ticks,
    )?;
    let from = state.end_lsn;
    state.pending = Some(header.end_lsn);
    write_state(dir, &state)?;
    let file_path = dir.join("database.db");
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&file_path)
        .map_err(io(&file_path, "open"))?;
    let out = PageFile {
        file,
        path: file_path,
        pacer: Default::default(),
    };
    let (_, records) = apply(path, &mut reader, &out, from, scanned.apply_end, &ticks)?;
    crate::crashpoint::hit("restore.log_written");
    if scanned.apply_end > from {
        state.end_lsn = scanned.apply_end;
        state.last_record = scanned.last_record;
        state.epoch = scanned.epoch;
        state.last_commit_us = scanned.last_commit_us;
    }
    state.stopped = scanned.stopped;
    state.pending = None;
    write_state(dir, &state)?;
    if request.recovery {
        recover(engine, dir, database, &state)?;
    }
    Ok(Restored {
        end_lsn: state.end_lsn,
        recovered: request.recovery,
        stopped: state.stopped,
        pages: 0,
        records,
    })
}

/// What a proof restored ([`prove`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proven {
    /// The LSN the chain restored to.
    pub end_lsn: Lsn,
    /// Its last commit's time (µs since the Unix epoch).
    pub last_commit_us: i64,
    /// Pages of the full backup, all matching their hashes.
    pub pages: u64,
    /// Log records applied on top of it.
    pub records: u64,
}

/// The background proof of a chain ([`super::proof`]): restores `chain`
/// (a full backup, then log backups in order) into `scratch` as RESTORE
/// would — every file checked whole first, the full backup's pages
/// compared with the hashes the source had at its LSN, each log backup
/// checked to continue the one before (its overlapping record the same) —
/// then has SQLite check the restored file (`PRAGMA integrity_check`).
/// `open` opens each file (a rate-limited reader in the background).
/// Nothing outside `scratch` is touched; `scratch` is removed at the end.
pub fn prove<R: std::io::Read + std::io::Seek + Send>(
    chain: &[PathBuf],
    scratch: &Path,
    open: &dyn Fn(&Path) -> std::io::Result<R>,
) -> Result<Proven> {
    let _ = fs::remove_dir_all(scratch);
    let proven = prove_in(chain, scratch, open);
    let _ = fs::remove_dir_all(scratch);
    proven
}

fn prove_in<R: std::io::Read + std::io::Seek + Send>(
    chain: &[PathBuf],
    scratch: &Path,
    open: &dyn Fn(&Path) -> std::io::Result<R>,
) -> Result<Proven> {
    let reader = |path: &Path| -> Result<Reader<R>> {
        let input = open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => BackupError::Missing {
                path: path.to_path_buf(),
            },
            _ => io(path, "read")(e),
        })?;
        Reader::open(input).map_err(|e| read_error(path, e))
    };
    let (full, logs) = chain.split_first().ok_or_else(|| BackupError::Format {
        path: scratch.to_path_buf(),
        error: format::FormatError::Corrupt("an empty chain".into()),
    })?;
    crate::durable::create_dir_all(scratch).map_err(io(scratch, "create"))?;
    let file_path = scratch.join("database.db");
    let mut r = reader(full)?;
    if r.header.kind != Kind::Full {
        return Err(BackupError::WrongKind {
            path: full.clone(),
            found: "log",
            wanted: "DATABASE",
            wanted_kind: "full",
        });
    }
    let database = r.header.database.clone();
    let out = PageFile {
        file: fs::File::create(&file_path).map_err(io(&file_path, "create"))?,
        path: file_path.clone(),
        pacer: Default::default(),
    };
    let mut end = r.header.end_lsn;
    let (scanned, pages, mut records) = build_full(full, &mut r, &out, &Ticks::none())?;
    check_pages(&file_path, &database, r.header.page_size, &scanned.hashes)?;
    let (mut last_record, mut last_commit_us) = (scanned.last_record, r.manifest.last_commit_us);
    for log in logs {
        let mut r = reader(log)?;
        let header = r.header.clone();
        if header.kind != Kind::Log || header.database != database || header.first_lsn > end {
            return Err(BackupError::Chain {
                database: database.clone(),
                first: header.first_lsn,
                end: header.end_lsn,
                restored: end,
                why: "it does not continue the chain before it".into(),
            });
        }
        let scanned = scan(log, &mut r, Some((end, last_record)), None, &Ticks::none())?;
        let (_, n) = apply(log, &mut r, &out, end, scanned.apply_end, &Ticks::none())?;
        records += n;
        if scanned.apply_end > end {
            end = scanned.apply_end;
            last_record = scanned.last_record;
            last_commit_us = scanned.last_commit_us;
        }
    }
    drop(out);
    let check = (|| -> rusqlite::Result<String> {
        // immutable: no WAL or lock files next to the copy; the functions
        // availdb provides, for any index or constraint that uses them.
        let uri = format!(
            "file:{}?immutable=1",
            file_path
                .display()
                .to_string()
                .replace('%', "%25")
                .replace('?', "%3f")
                .replace('#', "%23")
        );
        let conn = rusqlite::Connection::open_with_flags(
            uri,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                | rusqlite::OpenFlags::SQLITE_OPEN_URI
                | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        crate::engine::catalog::install(&conn, scratch, 0)?;
        let problems: Vec<String> = conn
            .prepare("PRAGMA integrity_check(10)")?
            .query_map([], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(problems.join("; "))
    })();
    match check {
        Ok(text) if text == "ok" => Ok(Proven {
            end_lsn: end,
            last_commit_us,
            pages,
            records,
        }),
        Ok(text) => Err(corrupt(
            &file_path,
            format!("SQLite's integrity check of the restored copy at LSN {end} says: {text}"),
        )),
        Err(e) => Err(corrupt(
            &file_path,
            format!("SQLite could not check the restored copy at LSN {end}: {e}"),
        )),
    }
}

/// RECOVERY: the RESTORING copy becomes a database of this node, its log
/// starting at the restored LSN.
fn recover(engine: &Engine, dir: &Path, database: &str, state: &State) -> Result<()> {
    recover_fenced(engine, dir, database, state, Fence::Standalone)
}

/// Manual seeding: a replica joining a group whose database is RESTORING
/// here takes the restored copy as its secondary database (fenced from its
/// first moment) instead of an empty one the primary would seed with a
/// full image; its log starts at the restored LSN, where the primary
/// continues. Returns false when `database` is not RESTORING here.
pub fn adopt_restoring(engine: &Engine, database: &str, fence: Fence) -> Result<bool> {
    let dir = staging(engine.data_dir(), database);
    if !dir.join("state.json").exists() {
        return Ok(false);
    }
    let _running = start_restore(database)?;
    let state = read_state(&dir, database)?;
    recover_fenced(engine, &dir, database, &state, fence)?;
    tracing::info!(
        database,
        lsn = state.end_lsn,
        "a restored copy joins its group: seeded manually"
    );
    Ok(true)
}

fn recover_fenced(
    engine: &Engine,
    dir: &Path,
    database: &str,
    state: &State,
    fence: Fence,
) -> Result<()> {
    if let Some(pending) = state.pending {
        return Err(BackupError::Chain {
            database: database.to_string(),
            first: state.end_lsn,
            end: pending,
            restored: state.end_lsn,
            why: "an earlier RESTORE LOG was interrupted while writing: restore that log backup again first".into(),
        });
    }
    engine.install_database(
        database,
        &dir.join("database.db"),
        state.end_lsn,
        state.epoch.max(1),
        fence,
    )?;
    fs::remove_dir_all(dir).map_err(io(dir, "remove"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use format::{Block, Manifest, Writer};

    /// A full backup of `blocks` pages blocks of 3 pages of 512 bytes (and
    /// an empty log), as bytes; and the pages.
    fn backup(blocks: u32, compressed: bool) -> (Vec<u8>, Vec<Vec<u8>>) {
        let db_size = blocks * 3;
        let header = Header {
            kind: Kind::Full,
            copy_only: true,
            compressed,
            id: [1; 16],
            first_lsn: 100,
            end_lsn: 100,
            previous: None,
            page_size: 512,
            epoch: 1,
            started_us: 1,
            database: "app".into(),
            group: String::new(),
            replica: "r1".into(),
        };
        let images: Vec<Vec<u8>> = (1..=db_size)
            .map(|p| (0..512).map(|i| (i as u32 * 7 + p * 13) as u8).collect())
            .collect();
        let mut w = Writer::new(Vec::new(), &header).unwrap();
        for b in 0..blocks {
            let pages: Vec<(u32, Vec<u8>)> = (b * 3 + 1..=b * 3 + 3)
                .map(|p| (p, images[p as usize - 1].clone()))
                .collect();
            w.block(&Block {
                kind: BlockKind::Pages,
                image_start: b == 0,
                image_more: b + 1 < blocks,
                count: 3,
                db_size,
                payload: format::pages_payload(&pages),
            })
            .unwrap();
        }
        w.block(&Block::log(0, Vec::new())).unwrap();
        let manifest = Manifest {
            db_size,
            page_hashes: images.iter().map(|i| crc32c::crc32c(i)).collect(),
            ..Manifest::default()
        };
        (w.finish(manifest).unwrap().0, images)
    }

    #[test]
    fn a_backup_checked_and_written_in_one_pass_on_many_threads_is_its_pages_in_order() {
        let dir = tempfile::tempdir().unwrap();
        for compressed in [false, true] {
            let (bytes, images) = backup(12, compressed);
            let path = dir.path().join("full.bak");
            fs::write(&path, &bytes).unwrap();
            verify(&path).unwrap();
            let mut reader = open(&path).unwrap();
            let file_path = dir.path().join("copy.db");
            let out = PageFile {
                file: fs::File::create(&file_path).unwrap(),
                path: file_path.clone(),
                pacer: Default::default(),
            };
            let (scanned, pages, records) =
                build_full(&path, &mut reader, &out, &Ticks::none()).unwrap();
            assert_eq!((pages, records), (36, 0));
            check_pages(&file_path, "app", 512, &scanned.hashes).unwrap();
            assert_eq!(fs::read(&file_path).unwrap(), images.concat());
        }
    }

    #[test]
    fn a_restore_counts_every_byte_of_the_file_it_goes_through_once_per_pass() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, _) = backup(12, true);
        let path = dir.path().join("full.bak");
        fs::write(&path, &bytes).unwrap();
        let mut reader = open(&path).unwrap();
        let mut stored = 0u64;
        let mut raw = Vec::new();
        for i in 0..reader.blocks() {
            reader.raw_block_into(i, &mut raw).unwrap();
            stored += raw.len() as u64;
        }
        assert!(stored > 0);
        let told = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let request = RestoreRequest {
            database: "app".into(),
            path: Some(path.clone()),
            kind: Kind::Full,
            recovery: false,
            replace: false,
            stop: None,
            progress: None,
            read: Some(crate::backup::rate::BytesRead(std::sync::Arc::new({
                let told = told.clone();
                move |b| told.lock().unwrap().push(b)
            }))),
        };
        let out = PageFile {
            file: fs::File::create(dir.path().join("copy.db")).unwrap(),
            path: dir.path().join("copy.db"),
            pacer: Default::default(),
        };
        // A full restore: one pass, each block once, told after each.
        let ticks = Ticks::new(&request, reader.blocks());
        build_full(&path, &mut reader, &out, &ticks).unwrap();
        let seen = told.lock().unwrap().clone();
        assert_eq!(seen.len(), reader.blocks());
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        assert_eq!(seen.last(), Some(&stored));
        // A log restore's two passes (check, then apply) count the file twice.
        told.lock().unwrap().clear();
        let ticks = Ticks::new(&request, reader.blocks());
        scan(&path, &mut reader, None, None, &ticks).unwrap();
        apply(&path, &mut reader, &out, 0, 0, &ticks).unwrap();
        assert_eq!(told.lock().unwrap().last(), Some(&(2 * stored)));
    }

    #[test]
    fn a_corrupt_block_anywhere_is_found_by_verifyonly_and_by_restore_and_named_first() {
        let dir = tempfile::tempdir().unwrap();
        let (good, _) = backup(12, true);
        let offsets: Vec<u64> = Reader::open(std::io::Cursor::new(good.clone()))
            .unwrap()
            .manifest
            .blocks
            .iter()
            .map(|b| b.offset)
            .collect();
        for bad_block in [0usize, 5, 11] {
            let mut bad = good.clone();
            bad[offsets[bad_block] as usize + 32 + 3] ^= 0x08;
            let path = dir.path().join(format!("bad{bad_block}.bak"));
            fs::write(&path, &bad).unwrap();
            let e = verify(&path).unwrap_err().to_string();
            assert!(
                e.contains("checksum does not match"),
                "block {bad_block}: {e}"
            );
            let mut reader = open(&path).unwrap();
            let file_path = dir.path().join("copy.db");
            let out = PageFile {
                file: fs::File::create(&file_path).unwrap(),
                path: file_path,
                pacer: Default::default(),
            };
            let e = build_full(&path, &mut reader, &out, &Ticks::none())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                e.contains("checksum does not match"),
                "block {bad_block}: {e}"
            );
        }
    }

    #[test]
    fn a_page_changed_on_disk_after_it_was_written_fails_the_page_check_with_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let file_path = dir.path().join("copy.db");
        let pages: Vec<Vec<u8>> = (0..5000u32).map(|p| vec![(p % 251) as u8; 512]).collect();
        fs::write(&file_path, pages.concat()).unwrap();
        let hashes: Vec<u32> = pages.iter().map(|p| crc32c::crc32c(p)).collect();
        check_pages(&file_path, "app", 512, &hashes).unwrap();
        for bad in [4321u32, 17] {
            let f = fs::OpenOptions::new().write(true).open(&file_path).unwrap();
            f.write_all_at(&[0xAA], u64::from(bad - 1) * 512 + 9)
                .unwrap();
        }
        match check_pages(&file_path, "app", 512, &hashes) {
            Err(BackupError::Verify { page, .. }) => assert_eq!(page, 17, "the first bad page"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn log_records_written_at_once_in_runs_leave_the_file_as_writing_them_one_at_a_time() {
        // Records that grow and shrink the database, carry pages past their
        // size, and run on (TX_MORE) across the blocks the net is taken of.
        let dir = tempfile::tempdir().unwrap();
        let ps = 512u32;
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for round in 0..300u32 {
            let records: Vec<Record> = (0..2 + next(10))
                .map(|i| {
                    let db_size = 1 + next(24) as u32;
                    let mut pgnos: Vec<u32> = (0..next(8)).map(|_| 1 + next(28) as u32).collect();
                    pgnos.sort_unstable();
                    pgnos.dedup();
                    Record {
                        lsn: 100 + i,
                        epoch: 1,
                        commit_time_us: 1,
                        db_size,
                        page_size: ps,
                        pages: pgnos
                            .into_iter()
                            .map(|p| (p, vec![(round + p * 3 + i as u32 * 7) as u8; ps as usize]))
                            .collect(),
                        flags: if next(3) == 0 { Record::TX_MORE } else { 0 },
                    }
                })
                .collect();
            let start: Vec<u8> = (0..16 * ps).map(|b| (b / ps) as u8 ^ 0x5a).collect();
            let one_at_a_time = dir.path().join("one.db");
            fs::write(&one_at_a_time, &start).unwrap();
            let file = fs::OpenOptions::new()
                .write(true)
                .open(&one_at_a_time)
                .unwrap();
            for record in &records {
                for (pgno, image) in &record.pages {
                    file.write_all_at(image, u64::from(pgno - 1) * u64::from(ps))
                        .unwrap();
                }
                if ends_unit(record) {
                    file.set_len(u64::from(record.db_size) * u64::from(ps))
                        .unwrap();
                }
            }
            let at_once = dir.path().join("net.db");
            fs::write(&at_once, &start).unwrap();
            let out = PageFile {
                file: fs::OpenOptions::new().write(true).open(&at_once).unwrap(),
                path: at_once.clone(),
                pacer: Default::default(),
            };
            let split = next(records.len() as u64 + 1) as usize;
            for block in [&records[..split], &records[split..]] {
                let mut net = Net::default();
                for record in block {
                    net.add(record);
                }
                out.write_net(&net).unwrap();
            }
            assert_eq!(
                fs::read(&at_once).unwrap(),
                fs::read(&one_at_a_time).unwrap(),
                "round {round}: {:?}",
                records
                    .iter()
                    .map(|r| (
                        r.db_size,
                        r.flags,
                        r.pages.iter().map(|p| p.0).collect::<Vec<_>>()
                    ))
                    .collect::<Vec<_>>()
            );
        }
    }
}
