//! Restoring: a full backup into a RESTORING copy, log backups on top of
//! it (to a point in time if asked), and RECOVERY, which brings the copy
//! online as a database of this node.
//!
//! Every backup file is read twice: a first pass checks all of it (block
//! and record checksums, LSN continuity, the chain, the page hashes) and
//! plans where to stop; only then does the second pass write. So a bad
//! file changes nothing, and a RESTORING copy never holds half a backup
//! unless the disk itself failed mid-write (the state then says so, and
//! only a backup that covers the interrupted one is taken next).

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
}

/// Counts the blocks both passes went through, for a [`RestoreRequest`]'s
/// progress.
struct Ticks<'a> {
    progress: Option<&'a super::Progress>,
    done: std::cell::Cell<u64>,
    total: u64,
}

impl<'a> Ticks<'a> {
    fn new(progress: Option<&'a super::Progress>, blocks: usize) -> Ticks<'a> {
        Ticks {
            progress,
            done: Default::default(),
            total: 2 * blocks as u64,
        }
    }

    fn none() -> Ticks<'static> {
        Ticks::new(None, 0)
    }

    fn block(&self) {
        self.done.set(self.done.get() + 1);
        if let Some(p) = self.progress {
            (p.0)(self.done.get().min(self.total), self.total.max(1));
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

/// Pass one. `continues`: where the RESTORING copy stands (end LSN and
/// last record) for a log backup; `stop`: where to stop.
fn scan<R: std::io::Read + std::io::Seek>(
    path: &Path,
    reader: &mut Reader<R>,
    continues: Option<(Lsn, Option<(Lsn, u32)>)>,
    stop: Option<Stop>,
    ticks: &Ticks,
) -> Result<Scan> {
    let header = reader.header.clone();
    let mut out = Scan {
        apply_end: continues.map_or(header.first_lsn, |(end, _)| end),
        epoch: header.epoch,
        ..Scan::default()
    };
    let mut next = header.first_lsn;
    let mut unit_start = header.first_lsn;
    let mut unit_included = true;
    let mut stopped = false;
    let mut image_open = false;
    let mut overlap_checked = continues.is_none_or(|(end, _)| end == header.first_lsn);
    for i in 0..reader.blocks() {
        let block = reader.block(i).map_err(|e| read_error(path, e))?;
        ticks.block();
        match block.kind {
            BlockKind::Pages => {
                if header.kind != Kind::Full || header.page_size == 0 {
                    return Err(corrupt(path, "pages in a log backup".into()));
                }
                if block.image_start == image_open {
                    return Err(corrupt(path, "the image's blocks are out of order".into()));
                }
                image_open = block.image_more;
                let pages = format::pages_of(&block, header.page_size).map_err(|error| {
                    BackupError::Format {
                        path: path.to_path_buf(),
                        error,
                    }
                })?;
                let part = Record {
                    lsn: 0,
                    epoch: header.epoch,
                    commit_time_us: 0,
                    db_size: block.db_size,
                    page_size: header.page_size,
                    pages,
                    flags: if block.image_more {
                        Record::IMAGE_MORE
                    } else {
                        0
                    },
                };
                part.check_contents()
                    .map_err(|e| corrupt(path, format!("an image block: {e}")))?;
                overlay(&mut out.hashes, &part);
            }
            BlockKind::Log => {
                if image_open {
                    return Err(corrupt(path, "the image ends early".into()));
                }
                for (record, crc) in records_of(path, &block)? {
                    if record.lsn != next {
                        return Err(corrupt(
                            path,
                            format!(
                                "a record at LSN {} where LSN {next} was expected",
                                record.lsn
                            ),
                        ));
                    }
                    next = record.end_lsn();
                    if header.kind == Kind::Full {
                        overlay(&mut out.hashes, &record);
                    }
                    if let Some((end, last)) = continues {
                        if record.lsn < end {
                            if record.end_lsn() > end {
                                return Err(chain_error(&header, end, format!("its record at LSN {} runs past LSN {end}: it is not the same log", record.lsn)));
                            }
                            if record.end_lsn() == end {
                                if last.is_some_and(|l| l != (record.lsn, crc)) {
                                    return Err(chain_error(&header, end, format!("its record at LSN {} is not the one restored: it is the log of another database or of a diverged branch", record.lsn)));
                                }
                                overlap_checked = true;
                            }
                            unit_start = record.end_lsn();
                            continue;
                        }
                    }
                    if stopped {
                        continue;
                    }
                    if unit_start == record.lsn {
                        // A unit is in when its commit time (the same in
                        // all its parts) is not past STOPAT.
                        unit_included = match stop {
                            Some(Stop::Time(t)) => record.commit_time_us <= t,
                            _ => true,
                        };
                    }
                    if ends_unit(&record) {
                        let included = unit_included
                            && !matches!(stop, Some(Stop::Lsn(l)) if record.end_lsn() > l);
                        if included {
                            out.apply_end = record.end_lsn();
                            out.last_record = Some((record.lsn, crc));
                            out.epoch = record.epoch;
                            out.last_commit_us = record.commit_time_us;
                        } else {
                            stopped = true;
                        }
                        unit_start = record.end_lsn();
                    }
                }
            }
        }
    }
    if image_open {
        return Err(corrupt(path, "the image ends early".into()));
    }
    if next != header.end_lsn {
        return Err(corrupt(
            path,
            format!(
                "its records end at LSN {next}, its header says {}",
                header.end_lsn
            ),
        ));
    }
    if reader.manifest.last_record != out.last_record && !stopped && continues.is_none() {
        return Err(corrupt(
            path,
            "the manifest's last record does not match the records".into(),
        ));
    }
    if header.kind == Kind::Full && out.hashes != reader.manifest.page_hashes {
        let page = out
            .hashes
            .iter()
            .zip(&reader.manifest.page_hashes)
            .position(|(a, b)| a != b)
            .unwrap_or(out.hashes.len().min(reader.manifest.page_hashes.len()));
        return Err(corrupt(
            path,
            format!(
                "its pages and log do not give the page hashes it recorded (first at page {})",
                page + 1
            ),
        ));
    }
    if let Some((end, _)) = continues {
        if !overlap_checked {
            return Err(chain_error(
                &header,
                end,
                "no record of it ends where the restore stands".into(),
            ));
        }
    }
    out.stopped = stopped;
    Ok(out)
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
pub fn check_file<R: std::io::Read + std::io::Seek>(path: &Path, input: R) -> Result<()> {
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

impl PageFile {
    fn write(&self, record: &Record) -> Result<()> {
        let ps = u64::from(record.page_size);
        for (pgno, image) in &record.pages {
            self.file
                .write_all_at(image, (u64::from(*pgno) - 1) * ps)
                .map_err(io(&self.path, "write"))?;
            self.pacer
                .wrote(&self.file, image.len() as u64)
                .map_err(io(&self.path, "write"))?;
        }
        if ends_unit(record) {
            self.file
                .set_len(u64::from(record.db_size) * ps)
                .map_err(io(&self.path, "write"))?;
        }
        Ok(())
    }
}

/// Pass two: writes the backup's pages and its records `[from, to)`.
fn apply<R: std::io::Read + std::io::Seek>(
    path: &Path,
    reader: &mut Reader<R>,
    out: &PageFile,
    from: Lsn,
    to: Lsn,
    ticks: &Ticks,
) -> Result<(u64, u64)> {
    let (mut pages, mut records) = (0, 0);
    let header = reader.header.clone();
    for i in 0..reader.blocks() {
        let block = reader.block(i).map_err(|e| read_error(path, e))?;
        ticks.block();
        match block.kind {
            BlockKind::Pages => {
                let part = Record {
                    lsn: 0,
                    epoch: header.epoch,
                    commit_time_us: 0,
                    db_size: block.db_size,
                    page_size: header.page_size,
                    pages: format::pages_of(&block, header.page_size).map_err(|error| {
                        BackupError::Format {
                            path: path.to_path_buf(),
                            error,
                        }
                    })?,
                    flags: if block.image_more {
                        Record::IMAGE_MORE
                    } else {
                        0
                    },
                };
                pages += part.pages.len() as u64;
                out.write(&part)?;
            }
            BlockKind::Log => {
                for (record, _) in records_of(path, &block)? {
                    if record.lsn >= from && record.lsn < to {
                        out.write(&record)?;
                        records += 1;
                    }
                }
            }
        }
    }
    out.file.sync_all().map_err(io(&out.path, "write"))?;
    Ok((pages, records))
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
    let ticks = Ticks::new(request.progress.as_ref(), reader.blocks());
    let scanned = scan(path, &mut reader, None, None, &ticks)?;
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
        let first = reader.header.first_lsn;
        let counts = apply(path, &mut reader, &out, first, end, &ticks)?;
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
/// the backup recorded for its end LSN.
fn check_pages(file: &Path, database: &str, page_size: u32, hashes: &[u32]) -> Result<()> {
    let f = fs::File::open(file).map_err(io(file, "read"))?;
    let len = f.metadata().map_err(io(file, "read"))?.len();
    let ps = u64::from(page_size);
    if len != hashes.len() as u64 * ps {
        return Err(BackupError::Verify {
            database: database.to_string(),
            page: (len / ps.max(1)).min(hashes.len() as u64) as u32 + 1,
        });
    }
    let mut page = vec![0u8; page_size as usize];
    for (i, want) in hashes.iter().enumerate() {
        f.read_exact_at(&mut page, i as u64 * ps)
            .map_err(io(file, "read"))?;
        if crc32c::crc32c(&page) != *want {
            return Err(BackupError::Verify {
                database: database.to_string(),
                page: i as u32 + 1,
            });
        }
    }
    Ok(())
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
    let ticks = Ticks::new(request.progress.as_ref(), reader.blocks());
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
pub fn prove<R: std::io::Read + std::io::Seek>(
    chain: &[PathBuf],
    scratch: &Path,
    open: &dyn Fn(&Path) -> std::io::Result<R>,
) -> Result<Proven> {
    let _ = fs::remove_dir_all(scratch);
    let proven = prove_in(chain, scratch, open);
    let _ = fs::remove_dir_all(scratch);
    proven
}

fn prove_in<R: std::io::Read + std::io::Seek>(
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
    let scanned = scan(full, &mut r, None, None, &Ticks::none())?;
    let out = PageFile {
        file: fs::File::create(&file_path).map_err(io(&file_path, "create"))?,
        path: file_path.clone(),
        pacer: Default::default(),
    };
    let (first, mut end) = (r.header.first_lsn, r.header.end_lsn);
    let (pages, mut records) = apply(full, &mut r, &out, first, end, &Ticks::none())?;
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
