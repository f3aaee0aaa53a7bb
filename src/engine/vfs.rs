//! The availdb VFS: a shim over SQLite's default VFS that seals and
//! verifies page checksums ([`super::checksum`]) in the files of databases
//! that reserve 8 bytes a page, and reports every page that fails.
//!
//! Registered once, as the default VFS ([`install`]), so every connection —
//! writer, readers, redo applier, backups — goes through it; a database
//! without the reserved bytes passes through untouched.
//!
//! # What it does, and why there
//! * **Reads of the database file** of a whole page at a page boundary are
//!   verified. A page that fails is reported ([`super::damage`]) with its
//!   number and the read fails with `SQLITE_IOERR_DATA`, which the
//!   engine turns into [`super::Error::CorruptPage`]. A connection can turn
//!   verification off for itself ([`set_verification`]): the redo applier
//!   and the page repair overwrite pages they never interpret.
//! * **Writes to the database file** (checkpoints) are sealed on the way:
//!   whatever the WAL held, the file gets a page with a valid checksum.
//! * **WAL frames are written as SQLite gives them.** SQLite computes each
//!   frame's checksum (which chains through the WAL) *before* it writes the
//!   page, so the page may not change on the way; its reserved bytes still
//!   hold the checksum of the page it was modified from. The page is sealed
//!   in SQLite's buffer right after the write (so the writing connection's
//!   cache holds it sealed), reads of WAL frames are sealed rather than
//!   verified, and capture seals the pages it reads from the WAL itself, so
//!   every connection sees, and the log and every replica hold, sealed
//!   pages only. WAL frames are protected by SQLite's own
//!   chained frame checksums (checked by capture at every commit and by
//!   SQLite when it rebuilds its WAL index) until a checkpoint copies them.
//! * Memory-mapped reads are refused for checksummed files (SQLite then
//!   reads), since a mapped page bypasses the check.
//!
//! # One write per WAL frame
//! SQLite writes each WAL frame it appends in two calls: its 24-byte
//! header, then the page right after it. The shim holds such a header back
//! and writes both with one system call when the page follows (one
//! `pwrite` per commit less, for a one-page commit). Rules:
//! 1. **Nothing else sees a held header.** Any other call on the file
//!    (a read, another write, truncate, sync, size, file control, close)
//!    writes it first, so SQLite never reads what it has not written.
//! 2. **Only an appended frame's header is held**: one at or past the end
//!    of what this file handle has written in the WAL's current generation
//!    (a write at offset 0, the WAL's header, starts a new one). Its page
//!    is SQLite's very next call on the file, which writes both. A header
//!    SQLite writes *again* lies below that end and is written at once:
//!    after a transaction too large for the page cache spilled frames and
//!    then changed one of them, the commit rewrites the checksums of every
//!    frame from there, the commit frame's last, and nothing may follow
//!    before capture reads the WAL through its own descriptor (with
//!    `synchronous = OFF`, no sync does). A held one would leave capture
//!    the stale header and a broken checksum chain. A frame whose page
//!    write fails loses its header too, and the transaction fails with
//!    the write.
//!
//! # What capture learns from the shim
//! Capture reads each commit's frames back from the WAL through a
//! descriptor of its own (`wal.rs`). Whether that descriptor still names
//! the WAL, and the WAL's 32-byte header (its generation), change only
//! through this shim, so the shim counts such changes per WAL path
//! ([`wal_changes_of`]) and capture re-reads them only when the count moved:
//! a `statx` and a header read per commit less. Rules:
//! 1. **Every call that may change them moves the count, before and after
//!    the lower call**: opening a WAL (it may create the file), writing at
//!    its offset 0 (the header: a new generation), truncating it, deleting
//!    it. A reader that looks while such a call runs finds the count moved
//!    again at its next look, so it never keeps what it read mid-change.
//! 2. **Commits do not move it**: appended frames are read by their own
//!    checks (salts, chained checksums, the frame count SQLite's wal_hook
//!    reports), as before.
//! 3. The count is trusted only by a reader told that every connection to
//!    its database goes through this VFS (the engine's capture); one that
//!    is not told checks the file and reads the header at every call.
//!
//! # One process per database
//! The VFS below ours is SQLite's `unix-excl`, not `unix`: the first
//! connection to a database file takes a write lock on it for the whole
//! process, and SQLite keeps the file's WAL index in heap memory instead of
//! the `-shm` file. The connections of the node (writer, readers, redo,
//! backups) share both, so taking and dropping the WAL index's locks (six
//! per commit, two per read transaction) costs no system call, where
//! `unix` made an `fcntl` for each. The price is that no other process can
//! open a database while the node has it open: another program's SQLite
//! gets "database is locked". That was already the rule (the log is the
//! source of truth, so nothing may write a database file behind it, and
//! the data directory's lock refuses a second availdb process); the lock
//! now also holds for other programs.
//!
//! Two things keep that lock held for as long as the node has the file:
//! * `unix-excl` applies to files open for writing only (a read lock cannot
//!   be made a write lock on a read-only descriptor), and a read-only
//!   connection's own locks would replace the process's write lock. So a
//!   connection that asks for a read-only database file gets it open for
//!   writing below SQLite's read-only pager: our `xOpen` reports it
//!   read-only, and SQLite refuses every write on that connection exactly
//!   as before (`SQLITE_READONLY`, which no PRAGMA turns off).
//! * Closing *any* descriptor of a file drops every POSIX lock the process
//!   holds on it, so the node never opens a database file a second time
//!   while SQLite has it: the sync after a checkpoint goes through SQLite's
//!   own handle ([`sync_database_file`]).
//!
//! The flags that say whether a file is checksummed come from the header
//! bytes SQLite itself reads and writes (page 1's byte 20), and are shared
//! between a connection's database file and its WAL.

use std::collections::HashMap;
use std::ffi::{c_int, c_void, CStr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use rusqlite::ffi;

use super::checksum;

/// The VFS's name.
const NAME: &CStr = c"availdb";

/// The VFS this one wraps: SQLite's Unix VFS that holds each file's POSIX
/// lock for the whole process and keeps the WAL index in heap memory (see
/// "One process per database" above). Where it is missing (not Unix), the
/// default VFS.
const LOWER_NAME: &CStr = c"unix-excl";

/// File-control opcode of [`set_verification`] (custom opcodes start above
/// 100, per SQLite's documentation of `xFileControl`).
const FCNTL_VERIFY: c_int = 0x4156_0001;

/// What a connection's database file and its WAL share.
struct FileState {
    /// The file's pages carry checksums (header byte 20 is 8).
    checksummed: AtomicBool,
    /// Reads of the database file are verified.
    verify: AtomicBool,
    /// The database file's path, as SQLite named it.
    path: PathBuf,
}

/// One open file of ours: SQLite's header, our state, then the lower
/// VFS's file (`szOsFile` of the lower VFS) right after.
#[repr(C)]
struct ShimFile {
    base: ffi::sqlite3_file,
    /// `Arc<FileState>` leaked into the file, dropped at close.
    state: *const FileState,
    wal: bool,
    /// Where a WAL frame header held back lies (-1: none held; see "One
    /// write per WAL frame").
    held_at: i64,
    /// The end of what this handle has written in the WAL's current
    /// generation (rule 2 of "One write per WAL frame").
    written_end: i64,
    /// The header held back.
    held: [u8; FRAME_HEADER_LEN],
    /// A WAL's count of changes ([`wal_changes_of`]; `Arc` leaked into the
    /// file, dropped at close); null for a database file.
    changes: *const AtomicU64,
}

/// A WAL frame header's length.
const FRAME_HEADER_LEN: usize = 24;

thread_local! {
    /// The buffer a WAL frame's header and page are written from ("One
    /// write per WAL frame").
    static FRAME: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The default VFS this one wraps.
struct Lower(*mut ffi::sqlite3_vfs);
// SAFETY: SQLite's VFS objects are process-wide and thread-safe by contract.
unsafe impl Send for Lower {}
// SAFETY: as above.
unsafe impl Sync for Lower {}

static LOWER: OnceLock<Lower> = OnceLock::new();

/// The count of changes of each WAL path this process has opened through
/// the shim ("What capture learns from the shim"); an entry lives while a
/// file or a reader holds it.
static WAL_CHANGES: Mutex<Option<HashMap<PathBuf, Weak<AtomicU64>>>> = Mutex::new(None);

/// The count of changes of the WAL SQLite names `wal_name`: it moves
/// whenever the file the path names or the WAL's header may have changed
/// through this VFS, and at no commit. Trust it only where every
/// connection to the database goes through this VFS.
///
/// # Safety
/// `wal_name` is a NUL-terminated file name SQLite gave the VFS.
unsafe fn wal_changes(wal_name: *const std::ffi::c_char) -> Arc<AtomicU64> {
    use std::os::unix::ffi::OsStrExt;
    let wal_path = Path::new(std::ffi::OsStr::from_bytes(
        CStr::from_ptr(wal_name).to_bytes(),
    ));
    let mut map = WAL_CHANGES.lock().unwrap_or_else(|e| e.into_inner());
    let map = map.get_or_insert_with(HashMap::new);
    if let Some(count) = map.get(wal_path).and_then(Weak::upgrade) {
        return count;
    }
    map.retain(|_, count| count.strong_count() > 0);
    let count = Arc::new(AtomicU64::new(0));
    map.insert(wal_path.to_path_buf(), Arc::downgrade(&count));
    count
}

/// The count of changes of `conn`'s WAL, keyed by the name SQLite itself
/// gives the WAL (so no spelling of the path can miss it); None when the
/// connection's database file is not open through this VFS, or has no
/// file (in memory).
pub fn wal_changes_of(conn: &rusqlite::Connection) -> Option<Arc<AtomicU64>> {
    // SAFETY: the handle is `conn`'s, used on its thread; the file pointer
    // lives as long as the connection, and SQLite's filename pointers as
    // long as the database is attached.
    unsafe {
        let file = main_file_of(conn).ok()?;
        if !std::ptr::eq((*file).pMethods, &METHODS) {
            return None;
        }
        let db = ffi::sqlite3_db_filename(conn.handle(), c"main".as_ptr());
        if db.is_null() || *db == 0 {
            return None;
        }
        let wal = ffi::sqlite3_filename_wal(db);
        if wal.is_null() || *wal == 0 {
            return None;
        }
        Some(wal_changes(wal))
    }
}

/// Moves a WAL's count of changes (rule 1 of "What capture learns from the
/// shim": once before the call that may change it, once after).
fn note_change(changes: &AtomicU64) {
    changes.fetch_add(1, Ordering::SeqCst);
}

/// Registers the VFS as SQLite's default, once per process. Connections
/// opened before the first call do not use it.
pub fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: sqlite3_vfs_find returns a registered VFS (or NULL), which
        // lives as long as the process; the copy we register is leaked, so
        // it does too. Every method but xOpen stays the lower VFS's, with
        // the lower's pAppData, so they behave as for the lower VFS.
        unsafe {
            let mut lower = ffi::sqlite3_vfs_find(LOWER_NAME.as_ptr());
            if lower.is_null() {
                lower = ffi::sqlite3_vfs_find(std::ptr::null());
            }
            assert!(!lower.is_null(), "SQLite has no default VFS");
            let _ = LOWER.set(Lower(lower));
            let mut ours = *lower;
            ours.zName = NAME.as_ptr();
            ours.pNext = std::ptr::null_mut();
            ours.szOsFile = (*lower).szOsFile + std::mem::size_of::<ShimFile>() as c_int;
            ours.xOpen = Some(open);
            ours.xDelete = Some(delete);
            let ours = Box::leak(Box::new(ours));
            let rc = ffi::sqlite3_vfs_register(ours, 1);
            assert_eq!(rc, ffi::SQLITE_OK, "cannot register the availdb VFS");
        }
    });
}

/// Turns checksum verification of `conn`'s database file on or off; returns
/// whether it was on. Checksums are still written while it is off.
pub fn set_verification(conn: &rusqlite::Connection, on: bool) -> bool {
    let mut arg: c_int = c_int::from(on);
    // SAFETY: the handle belongs to `conn`; our xFileControl reads and
    // writes the int behind the pointer, other VFSes return NOTFOUND.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            FCNTL_VERIFY,
            (&raw mut arg).cast(),
        )
    };
    rc == ffi::SQLITE_OK && arg != 0
}

/// The main database file `conn` has open, below this VFS's checks when it
/// is ours: the lower VFS's file.
///
/// # Safety
/// The result lives as long as `conn` and is used on the thread that owns
/// `conn`.
unsafe fn main_file(conn: &rusqlite::Connection) -> std::io::Result<*mut ffi::sqlite3_file> {
    let file = main_file_of(conn)?;
    if std::ptr::eq((*file).pMethods, &METHODS) {
        Ok(lower(file))
    } else {
        Ok(file)
    }
}

/// The main database file `conn` has open, as SQLite holds it (ours when
/// the connection goes through this VFS).
///
/// # Safety
/// As [`main_file`].
unsafe fn main_file_of(conn: &rusqlite::Connection) -> std::io::Result<*mut ffi::sqlite3_file> {
    let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
    let rc = ffi::sqlite3_file_control(
        conn.handle(),
        c"main".as_ptr(),
        ffi::SQLITE_FCNTL_FILE_POINTER,
        (&raw mut file).cast(),
    );
    if rc != ffi::SQLITE_OK || file.is_null() || (*file).pMethods.is_null() {
        return Err(std::io::Error::other(format!(
            "the connection has no database file open (SQLite code {rc})"
        )));
    }
    Ok(file)
}

/// Reads `buf.len()` bytes of `conn`'s database file at `offset` through
/// SQLite's own file handle (a second descriptor of the file, once closed,
/// would drop the POSIX locks SQLite holds on it), without this VFS's
/// page checks: the caller checks what it reads ([`checksum::verify`]).
/// Bytes past the end of the file read as zeros. Returns the file's size
/// after the read, so the caller knows which bytes were there.
///
/// Call it on the thread that owns `conn`: a backup reads the database
/// file in large chunks this way while its read transaction keeps
/// checkpoints from writing the pages it needs (`backup/image.rs`).
pub fn read_database_file(
    conn: &rusqlite::Connection,
    buf: &mut [u8],
    offset: u64,
) -> std::io::Result<u64> {
    let amount = c_int::try_from(buf.len())
        .map_err(|_| std::io::Error::other("a read of more than 2 GiB"))?;
    // SAFETY: `main_file` gives the connection's open main database file,
    // alive while `conn` is; its methods are called with a buffer of
    // `amount` writable bytes, on the caller's (the owning) thread.
    unsafe {
        let file = main_file(conn)?;
        let m = methods(file);
        let (Some(read), Some(size_of)) = (m.xRead, m.xFileSize) else {
            return Err(std::io::Error::other("the VFS cannot read files"));
        };
        let rc = read(file, buf.as_mut_ptr().cast(), amount, offset as i64);
        if rc != ffi::SQLITE_OK && rc != ffi::SQLITE_IOERR_SHORT_READ {
            return Err(std::io::Error::other(format!(
                "SQLite's read of the database file failed with code {rc}"
            )));
        }
        let mut size: i64 = 0;
        let rc = size_of(file, &mut size);
        if rc != ffi::SQLITE_OK {
            return Err(std::io::Error::other(format!(
                "SQLite could not size the database file (code {rc})"
            )));
        }
        Ok(size.max(0) as u64)
    }
}

/// Syncs `conn`'s main database file through SQLite's own handle, as the
/// node does after a checkpoint. A second descriptor of the file would
/// drop SQLite's locks when closed (see "One process per database"). On
/// Linux this is an `fsync`, timestamps included: the bundled SQLite is
/// built without `fdatasync` (`HAVE_FDATASYNC`).
///
/// Call it on the thread that owns `conn`.
pub fn sync_database_file(conn: &rusqlite::Connection) -> std::io::Result<()> {
    // SAFETY: `main_file` gives the connection's open main database file,
    // alive while `conn` is; its xSync takes only the file and the flags,
    // called on the caller's (the owning) thread.
    unsafe {
        let file = main_file(conn)?;
        let Some(sync) = methods(file).xSync else {
            return Err(std::io::Error::other("the VFS cannot sync files"));
        };
        match sync(file, ffi::SQLITE_SYNC_NORMAL | ffi::SQLITE_SYNC_DATAONLY) {
            ffi::SQLITE_OK => Ok(()),
            rc => Err(std::io::Error::other(format!(
                "SQLite's sync of the database file failed with code {rc}"
            ))),
        }
    }
}

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: Some(shm_map),
    xShmLock: Some(shm_lock),
    xShmBarrier: Some(shm_barrier),
    xShmUnmap: Some(shm_unmap),
    xFetch: Some(fetch),
    xUnfetch: Some(unfetch),
};

fn lower_vfs() -> *mut ffi::sqlite3_vfs {
    LOWER.get().expect("installed before use").0
}

/// The lower VFS's file behind ours.
///
/// # Safety
/// `file` is a `ShimFile` opened by [`open`].
unsafe fn lower(file: *mut ffi::sqlite3_file) -> *mut ffi::sqlite3_file {
    file.cast::<u8>()
        .add(std::mem::size_of::<ShimFile>())
        .cast()
}

/// # Safety
/// `file` is a `ShimFile` opened by [`open`] and not closed.
unsafe fn state<'a>(file: *mut ffi::sqlite3_file) -> &'a FileState {
    &*(*file.cast::<ShimFile>()).state
}

/// # Safety
/// `file` is an open file of the lower VFS.
unsafe fn methods<'a>(file: *mut ffi::sqlite3_file) -> &'a ffi::sqlite3_io_methods {
    &*(*file).pMethods
}

/// Deletes a file through the lower VFS; a WAL's count of changes moves
/// around it (rule 1 of "What capture learns from the shim").
unsafe extern "C" fn delete(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const std::ffi::c_char,
    sync_dir: c_int,
) -> c_int {
    let lower_vfs = lower_vfs();
    let Some(lower_delete) = (*lower_vfs).xDelete else {
        return ffi::SQLITE_IOERR_DELETE;
    };
    let changes = (!name.is_null() && CStr::from_ptr(name).to_bytes().ends_with(b"-wal"))
        .then(|| wal_changes(name));
    if let Some(changes) = &changes {
        note_change(changes);
    }
    let rc = lower_delete(lower_vfs, name, sync_dir);
    if let Some(changes) = &changes {
        note_change(changes);
    }
    rc
}

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let lower_vfs = lower_vfs();
    let Some(lower_open) = (*lower_vfs).xOpen else {
        return ffi::SQLITE_CANTOPEN;
    };
    let main = flags & ffi::SQLITE_OPEN_MAIN_DB != 0;
    let wal = flags & ffi::SQLITE_OPEN_WAL != 0;
    if !(main || wal) || name.is_null() {
        return lower_open(lower_vfs, name, file, flags, out_flags);
    }
    let shim = file.cast::<ShimFile>();
    (*shim).base.pMethods = std::ptr::null();
    (*shim).held_at = -1;
    (*shim).written_end = 0;
    (*shim).changes = std::ptr::null();
    let changes = wal.then(|| wal_changes(name));
    if let Some(changes) = &changes {
        note_change(changes);
    }
    let inner = lower(file);
    let read_only = flags & ffi::SQLITE_OPEN_READONLY != 0;
    let rc = if main && read_only && !out_flags.is_null() {
        // See "One process per database": a read-only connection's file is
        // opened for writing below SQLite's read-only pager, so that it takes
        // the process's lock like every other connection instead of a lock
        // of its own. A file we may not write is opened as asked.
        let writable = (flags & !ffi::SQLITE_OPEN_READONLY & !ffi::SQLITE_OPEN_CREATE)
            | ffi::SQLITE_OPEN_READWRITE;
        match lower_open(lower_vfs, name, inner, writable, out_flags) {
            ffi::SQLITE_OK => {
                *out_flags = (*out_flags & !ffi::SQLITE_OPEN_READWRITE) | ffi::SQLITE_OPEN_READONLY;
                ffi::SQLITE_OK
            }
            _ => lower_open(lower_vfs, name, inner, flags, out_flags),
        }
    } else {
        lower_open(lower_vfs, name, inner, flags, out_flags)
    };
    if let Some(changes) = &changes {
        note_change(changes);
    }
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    let state = if wal {
        // The connection's database file, opened by us before its WAL.
        let db = ffi::sqlite3_database_file_object(name);
        if !db.is_null() && std::ptr::eq((*db).pMethods, &METHODS) {
            let shared = (*db.cast::<ShimFile>()).state;
            Arc::increment_strong_count(shared);
            shared
        } else {
            Arc::into_raw(Arc::new(FileState {
                checksummed: AtomicBool::new(false),
                verify: AtomicBool::new(false),
                path: PathBuf::new(),
            }))
        }
    } else {
        let path = PathBuf::from(CStr::from_ptr(name).to_string_lossy().into_owned());
        let mut header = [0u8; 100];
        let checksummed = match methods(inner).xRead {
            Some(read) => {
                read(inner, header.as_mut_ptr().cast(), 100, 0) == ffi::SQLITE_OK
                    && checksum::header_says_checksummed(&header)
            }
            None => false,
        };
        Arc::into_raw(Arc::new(FileState {
            checksummed: AtomicBool::new(checksummed),
            verify: AtomicBool::new(true),
            path,
        }))
    };
    (*shim).state = state;
    (*shim).wal = wal;
    (*shim).changes = changes.map_or(std::ptr::null(), Arc::into_raw);
    (*shim).base.pMethods = &METHODS;
    ffi::SQLITE_OK
}

/// Writes the WAL frame header held back, if any (rule 1 of "One write per
/// WAL frame"); SQLITE_OK or the write's error.
///
/// # Safety
/// `file` is a `ShimFile` opened by [`open`] and not closed.
unsafe fn write_held(file: *mut ffi::sqlite3_file) -> c_int {
    let shim = file.cast::<ShimFile>();
    let at = (*shim).held_at;
    if at < 0 {
        return ffi::SQLITE_OK;
    }
    (*shim).held_at = -1;
    let inner = lower(file);
    let Some(lower_write) = methods(inner).xWrite else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    let held = (*shim).held;
    count_wal_write((*shim).wal);
    lower_write(inner, held.as_ptr().cast(), FRAME_HEADER_LEN as c_int, at)
}

#[cfg(test)]
thread_local! {
    /// Writes this thread made to WAL files below the shim (tests).
    static WAL_WRITES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Counts a write below the shim to a WAL file, for the tests.
#[inline]
fn count_wal_write(wal: bool) {
    #[cfg(test)]
    if wal {
        WAL_WRITES.with(|n| n.set(n.get() + 1));
    }
    #[cfg(not(test))]
    let _ = wal;
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    let held = write_held(file);
    let inner = lower(file);
    let rc = match methods(inner).xClose {
        Some(close) => close(inner),
        None => ffi::SQLITE_OK,
    };
    let shim = file.cast::<ShimFile>();
    drop(Arc::from_raw((*shim).state));
    (*shim).state = std::ptr::null();
    if !(*shim).changes.is_null() {
        drop(Arc::from_raw((*shim).changes));
        (*shim).changes = std::ptr::null();
    }
    if held != ffi::SQLITE_OK {
        return held;
    }
    rc
}

/// Follows page 1's byte 20 in what SQLite reads or writes.
fn note_header(state: &FileState, page: &[u8]) {
    if page.len() >= 100 && page.starts_with(b"SQLite format 3\0") {
        state
            .checksummed
            .store(checksum::header_says_checksummed(page), Ordering::SeqCst);
    }
}

unsafe extern "C" fn read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    if write_held(file) != ffi::SQLITE_OK {
        return ffi::SQLITE_IOERR_READ;
    }
    let inner = lower(file);
    let Some(lower_read) = methods(inner).xRead else {
        return ffi::SQLITE_IOERR_READ;
    };
    let rc = lower_read(inner, buf, amount, offset);
    if rc != ffi::SQLITE_OK || amount <= 0 {
        return rc;
    }
    let state = state(file);
    let bytes = std::slice::from_raw_parts_mut(buf.cast::<u8>(), amount as usize);
    let wal = (*file.cast::<ShimFile>()).wal;
    if (!wal && offset == 0) || (wal && checksum::is_page_size(bytes.len())) {
        note_header(state, bytes);
    }
    if !state.checksummed.load(Ordering::SeqCst) || !checksum::is_page_size(bytes.len()) {
        return rc;
    }
    if wal {
        checksum::seal(bytes);
        return rc;
    }
    let size = bytes.len() as i64;
    if offset % size == 0 && state.verify.load(Ordering::SeqCst) && !checksum::verify(bytes) {
        super::damage::report(&state.path, (offset / size + 1) as u32);
        return ffi::SQLITE_IOERR_DATA;
    }
    rc
}

/// The WAL's count of changes, for a WAL file.
///
/// # Safety
/// `file` is a `ShimFile` opened by [`open`] and not closed.
unsafe fn changes<'a>(file: *mut ffi::sqlite3_file) -> Option<&'a AtomicU64> {
    (*file.cast::<ShimFile>()).changes.as_ref()
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // A write at a WAL's offset 0 is its header: a new generation (rule 1
    // of "What capture learns from the shim").
    let header = changes(file).filter(|_| offset == 0);
    if let Some(changes) = header {
        note_change(changes);
    }
    let rc = write_through(file, buf, amount, offset);
    if let Some(changes) = header {
        note_change(changes);
    }
    rc
}

/// [`write`], below the count of changes.
unsafe fn write_through(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    let inner = lower(file);
    let Some(lower_write) = methods(inner).xWrite else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    let shim = file.cast::<ShimFile>();
    let wal = (*shim).wal;
    let page_after_header =
        wal && (*shim).held_at >= 0 && offset == (*shim).held_at + FRAME_HEADER_LEN as i64;
    if !page_after_header {
        let rc = write_held(file);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    if amount <= 0 {
        count_wal_write(wal);
        return lower_write(inner, buf, amount, offset);
    }
    let appended_header = wal && {
        // Rule 2: the end of what this handle wrote, from the WAL header on.
        let end_before = if offset == 0 { 0 } else { (*shim).written_end };
        (*shim).written_end = end_before.max(offset + i64::from(amount));
        amount as usize == FRAME_HEADER_LEN && offset > 0 && offset >= end_before
    };
    if appended_header {
        // An appended frame's header: held until its page follows.
        (*shim).held.copy_from_slice(std::slice::from_raw_parts(
            buf.cast::<u8>(),
            FRAME_HEADER_LEN,
        ));
        (*shim).held_at = offset;
        return ffi::SQLITE_OK;
    }
    let state = state(file);
    // SQLite hands over its own page buffer (the pager's copy of the page);
    // sealing it in place, as SQLite's cksumvfs does, keeps that copy
    // sealed for the connection's later reads of it.
    let bytes = std::slice::from_raw_parts_mut(buf.cast::<u8>().cast_mut(), amount as usize);
    if (!wal && offset == 0) || (wal && checksum::is_page_size(bytes.len())) {
        note_header(state, bytes);
    }
    let seal = state.checksummed.load(Ordering::SeqCst) && checksum::is_page_size(bytes.len());
    if seal && !wal {
        checksum::seal(bytes);
    }
    // A WAL frame's checksum, in its header, covers the page as it is now:
    // the page goes to the WAL unchanged, and is sealed only afterwards,
    // in SQLite's buffer.
    count_wal_write(wal);
    let rc = if page_after_header {
        (*shim).held_at = -1;
        // Header and page side by side in a buffer of the thread's, kept
        // between frames (no allocation per frame; at most a frame of the
        // largest page size, 64 KiB, per thread).
        FRAME.with_borrow_mut(|frame| {
            frame.clear();
            frame.extend_from_slice(&(*shim).held);
            frame.extend_from_slice(bytes);
            match c_int::try_from(frame.len()) {
                Ok(len) => lower_write(
                    inner,
                    frame.as_ptr().cast(),
                    len,
                    offset - FRAME_HEADER_LEN as i64,
                ),
                Err(_) => ffi::SQLITE_IOERR_WRITE,
            }
        })
    } else {
        lower_write(inner, buf, amount, offset)
    };
    if seal && wal {
        checksum::seal(bytes);
    }
    rc
}

unsafe extern "C" fn file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    if op == FCNTL_VERIFY {
        let state = state(file);
        let arg = arg.cast::<c_int>();
        let was = state.verify.swap(*arg != 0, Ordering::SeqCst);
        *arg = c_int::from(was);
        return ffi::SQLITE_OK;
    }
    let held = write_held(file);
    if held != ffi::SQLITE_OK {
        return held;
    }
    let inner = lower(file);
    match methods(inner).xFileControl {
        Some(f) => f(inner, op, arg),
        None => ffi::SQLITE_NOTFOUND,
    }
}

unsafe extern "C" fn fetch(
    file: *mut ffi::sqlite3_file,
    offset: ffi::sqlite3_int64,
    amount: c_int,
    out: *mut *mut c_void,
) -> c_int {
    if write_held(file) != ffi::SQLITE_OK {
        *out = std::ptr::null_mut();
        return ffi::SQLITE_IOERR_MMAP;
    }
    if state(file).checksummed.load(Ordering::SeqCst) {
        *out = std::ptr::null_mut();
        return ffi::SQLITE_OK;
    }
    let inner = lower(file);
    match methods(inner).xFetch {
        Some(f) => f(inner, offset, amount, out),
        None => {
            *out = std::ptr::null_mut();
            ffi::SQLITE_OK
        }
    }
}

/// Pass-through methods: the lower file's, or what SQLite assumes when a
/// VFS lacks one.
///
/// Those marked `held first` write a held WAL frame header first (rule 1
/// of "One write per WAL frame"), failing as the method would.
macro_rules! forward {
    ($name:ident, $method:ident, ($($arg:ident: $ty:ty),*), $missing:expr) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> c_int {
            let inner = lower(file);
            match methods(inner).$method {
                Some(f) => f(inner $(, $arg)*),
                None => $missing,
            }
        }
    };
    (held first, $name:ident, $method:ident, ($($arg:ident: $ty:ty),*), $missing:expr) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> c_int {
            if write_held(file) != ffi::SQLITE_OK {
                return $missing;
            }
            let inner = lower(file);
            match methods(inner).$method {
                Some(f) => f(inner $(, $arg)*),
                None => $missing,
            }
        }
    };
}

forward!(held first, truncate_through, xTruncate, (size: ffi::sqlite3_int64), ffi::SQLITE_IOERR_TRUNCATE);
forward!(held first, sync, xSync, (flags: c_int), ffi::SQLITE_IOERR_FSYNC);
forward!(held first, file_size, xFileSize, (size: *mut ffi::sqlite3_int64), ffi::SQLITE_IOERR_FSTAT);
forward!(lock, xLock, (level: c_int), ffi::SQLITE_IOERR_LOCK);
forward!(unlock, xUnlock, (level: c_int), ffi::SQLITE_IOERR_UNLOCK);
forward!(check_reserved_lock, xCheckReservedLock, (out: *mut c_int), ffi::SQLITE_IOERR_CHECKRESERVEDLOCK);
forward!(sector_size, xSectorSize, (), 4096);
forward!(device_characteristics, xDeviceCharacteristics, (), 0);
forward!(shm_map, xShmMap, (page: c_int, size: c_int, extend: c_int, out: *mut *mut c_void), ffi::SQLITE_IOERR_SHMMAP);
forward!(shm_lock, xShmLock, (offset: c_int, n: c_int, flags: c_int), ffi::SQLITE_IOERR_SHMLOCK);
forward!(shm_unmap, xShmUnmap, (delete: c_int), ffi::SQLITE_OK);
forward!(unfetch, xUnfetch, (offset: ffi::sqlite3_int64, page: *mut c_void), ffi::SQLITE_OK);

/// Truncates the file; a WAL's count of changes moves around it (a
/// TRUNCATE checkpoint empties the WAL, header and all).
unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    let changes = changes(file);
    if let Some(changes) = changes {
        note_change(changes);
    }
    let rc = truncate_through(file, size);
    if let Some(changes) = changes {
        note_change(changes);
    }
    rc
}

unsafe extern "C" fn shm_barrier(file: *mut ffi::sqlite3_file) {
    let inner = lower(file);
    if let Some(f) = methods(inner).xShmBarrier {
        f(inner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::damage;
    use rusqlite::{Connection, FileControl};
    use std::os::unix::fs::FileExt;

    /// "What capture learns from the shim", rules 1 and 2: the count moves
    /// at every call that may change the WAL's file or header (a new
    /// generation's header, a truncation, an open, a deletion), and at no
    /// commit.
    #[test]
    fn the_wal_count_of_changes_moves_at_every_new_generation_and_at_no_commit() {
        install();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t(a)")
            .unwrap();
        let changes = wal_changes_of(&conn).expect("a file opened through the VFS");
        let count = || changes.load(Ordering::SeqCst);
        let checkpoint = |mode: &str| {
            conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()))
                .unwrap()
        };

        let at = count();
        for i in 0..20 {
            conn.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
        }
        assert_eq!(count(), at, "a commit moved the count");

        // A RESTART checkpoint leaves the file; the next write restarts the
        // WAL with a new header.
        checkpoint("RESTART");
        let at = count();
        conn.execute("INSERT INTO t VALUES (20)", []).unwrap();
        assert!(
            count() > at,
            "a new generation's header did not move the count"
        );
        let at = count();
        conn.execute("INSERT INTO t VALUES (21)", []).unwrap();
        assert_eq!(count(), at, "a commit moved the count");

        // A TRUNCATE checkpoint empties the file.
        let at = count();
        checkpoint("TRUNCATE");
        assert!(count() > at, "a truncation did not move the count");

        // Another connection opens the WAL; the last one to close deletes it.
        let at = count();
        let other = Connection::open(&path).unwrap();
        let rows: i64 = other
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 22);
        assert!(count() > at, "opening the WAL did not move the count");
        drop(other);
        let at = count();
        drop(conn);
        assert!(
            !path.with_file_name("a.db-wal").exists(),
            "SQLite kept the WAL at the last close"
        );
        assert!(count() > at, "deleting the WAL did not move the count");
    }

    /// A checksummed database in WAL mode with `rows` rows, checkpointed
    /// into its file.
    fn checksummed(path: &std::path::Path, rows: u32) -> Connection {
        install();
        let conn = Connection::open(path).unwrap();
        let mut reserve = checksum::RESERVED as i32;
        conn.file_control(Some("main"), FileControl::ReserveBytes(&mut reserve))
            .unwrap();
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE t(x INTEGER PRIMARY KEY, pad);
             CREATE INDEX t_pad ON t(pad);
             WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {rows})
             INSERT INTO t SELECT i, randomblob(300) FROM s;
             PRAGMA wal_checkpoint(TRUNCATE);"
        ))
        .unwrap();
        conn
    }

    /// The frame count SQLite's wal hook reports after each commit on
    /// `conn`, and a WAL reader on `path`'s WAL, as capture reads it.
    fn followed(
        conn: &mut Connection,
        path: &std::path::Path,
    ) -> (
        Arc<std::sync::atomic::AtomicI32>,
        super::super::wal::WalReader,
    ) {
        let frames = Arc::new(std::sync::atomic::AtomicI32::new(0));
        let seen = frames.clone();
        conn.wal_hook(Some(
            move |_: &mut rusqlite::hooks::Wal, n: std::ffi::c_int| {
                seen.store(n, Ordering::SeqCst);
                Ok(())
            },
        ))
        .unwrap();
        let reader = super::super::wal::WalReader::new(super::super::capture::wal_path(path));
        (frames, reader)
    }

    /// Checkpoints `conn`'s WAL whole into its file, which must then pass
    /// SQLite's integrity check.
    fn assert_intact(conn: &Connection) {
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }

    fn flip(path: &std::path::Path, pgno: u32, byte: u64) {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let at = u64::from(pgno - 1) * 4096 + byte;
        let mut b = [0u8];
        file.read_exact_at(&mut b, at).unwrap();
        file.write_all_at(&[b[0] ^ 0x10], at).unwrap();
    }

    /// "One write per WAL frame": each frame a commit appends reaches the
    /// WAL in one write below the shim, header and page together, and the
    /// WAL stays valid (capture reads the commits back whole, their pages
    /// as SQLite sees them); a held header is written before a checkpoint
    /// or a read needs the file.
    #[test]
    fn each_wal_frame_is_one_write_and_the_wal_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("frames.db");
        let mut conn = checksummed(&path, 200);
        let (frames, mut reader) = followed(&mut conn, &path);
        let mut read_back = 0;
        for i in 0..20 {
            let before = WAL_WRITES.with(|n| n.get());
            let frames_before = frames.load(Ordering::SeqCst);
            conn.execute("INSERT INTO t VALUES (?1, randomblob(300))", [1000 + i])
                .unwrap();
            let writes = WAL_WRITES.with(|n| n.get()) - before;
            let appended = (frames.load(Ordering::SeqCst) - frames_before) as u64;
            // The first commit after the checkpoint writes the WAL's header too.
            let header = u64::from(i == 0);
            assert!(appended >= 1);
            assert_eq!(writes, appended + header, "commit {i}: one write per frame");
            read_back += reader.read_committed().unwrap().len();
        }
        assert_eq!(read_back, 20, "every commit is read back from the WAL");
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM t WHERE length(pad) = 300", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(rows, 220);
        assert_intact(&conn);
    }

    /// A transaction larger than the page cache spills frames into the WAL
    /// before its commit; at the commit SQLite overwrites the spilled
    /// frames of pages written again and rewrites the checksums of every
    /// frame after the first one overwritten (reading each frame, then
    /// writing its header alone). The WAL must still read back whole.
    #[test]
    fn a_spilled_transaction_with_rewritten_checksums_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spill.db");
        let mut conn = checksummed(&path, 10);
        let (frames, mut reader) = followed(&mut conn, &path);
        // As the node's writer runs: no sync after a commit writes a held
        // header for it.
        conn.execute_batch(
            "PRAGMA cache_size = 50; PRAGMA synchronous = OFF;
             CREATE INDEX t_pad_x ON t(pad, x);",
        )
        .unwrap();
        reader.read_committed().unwrap();
        for round in 0..3 {
            conn.execute_batch(&format!(
                "BEGIN;
                 WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 300)
                 INSERT INTO t SELECT 1000 * ({round} + 1) + i, randomblob(3000) FROM s;
                 UPDATE t SET pad = randomblob(300) WHERE x < 10;
                 COMMIT;"
            ))
            .unwrap();
            let read = reader.read_committed().unwrap();
            assert_eq!(read.len(), 1, "round {round}: the commit is read back");
            assert_eq!(
                reader.frames_read() as i32,
                frames.load(Ordering::SeqCst),
                "round {round}: every frame SQLite reports is valid"
            );
        }
    }

    #[test]
    fn every_page_a_connection_sees_is_sealed_and_the_file_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let conn = checksummed(&path, 500);
        conn.execute_batch("UPDATE t SET pad = randomblob(200) WHERE x % 3 = 0")
            .unwrap();
        // The writer's own cache, the WAL and the file: all sealed.
        let mut pages = conn.prepare("SELECT data FROM sqlite_dbpage").unwrap();
        let all: Vec<Vec<u8>> = pages
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(all.len() > 20);
        assert!(
            all.iter().all(|p| checksum::verify(p)),
            "a page is not sealed"
        );
        assert_intact(&conn);
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            bytes.chunks(4096).all(checksum::verify),
            "the file is sealed"
        );
    }

    #[test]
    fn a_bit_flip_in_the_file_fails_the_read_and_names_its_page() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        drop(checksummed(&path, 500));
        let root: u32 = Connection::open(&path)
            .unwrap()
            .query_row(
                "SELECT rootpage FROM sqlite_schema WHERE name = 't_pad'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        flip(&path, root, 2000);
        let reader = Connection::open(&path).unwrap();
        let err = reader
            .query_row(
                "SELECT count(*) FROM t INDEXED BY t_pad WHERE pad > x''",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap_err();
        let engine = crate::engine::Error::from(err);
        assert!(
            matches!(engine, crate::engine::Error::CorruptPage { .. }),
            "{engine}"
        );
        assert_eq!(damage::pages(&path), vec![(root, damage::Status::Pending)]);
        // Without verification the damaged bytes are read as they are.
        assert!(set_verification(&reader, false), "verification was on");
        let rows: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 500, "the table itself is intact");
        damage::forget_file(&path);
    }

    #[test]
    fn page_one_damaged_is_named_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        drop(checksummed(&path, 10));
        flip(&path, 1, 3000);
        let reader = Connection::open(&path).unwrap();
        let err = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
            .unwrap_err();
        assert!(matches!(
            crate::engine::Error::from(err),
            crate::engine::Error::CorruptPage { .. }
        ));
        assert_eq!(damage::pages(&path), vec![(1, damage::Status::Pending)]);
        damage::forget_file(&path);
    }

    /// The POSIX locks this process holds on `path`'s inode, from
    /// `/proc/locks`: ("READ" | "WRITE", first byte, last byte).
    fn process_locks(path: &std::path::Path) -> Vec<(String, String, String)> {
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(path).unwrap().ino();
        let pid = std::process::id().to_string();
        std::fs::read_to_string("/proc/locks")
            .unwrap()
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let mine = f.get(1) == Some(&"POSIX")
                    && f.get(4) == Some(&pid.as_str())
                    && f.get(5).is_some_and(|d| d.ends_with(&format!(":{ino}")));
                mine.then(|| (f[3].to_string(), f[6].to_string(), f[7].to_string()))
            })
            .collect()
    }

    /// Rule: no other process opens a database the node has open ("One
    /// process per database"): a read-only connection and the sync after a
    /// checkpoint leave the process's write lock in place, the read-only
    /// connection still refuses writes, and no `-shm` file is made.
    #[test]
    fn the_process_keeps_its_write_lock_through_readers_and_checkpoint_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        drop(checksummed(&path, 50));
        assert_eq!(process_locks(&path), []);

        // A read-only connection first: the lock it takes is the process's.
        let reader = Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .unwrap();
        let n: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 50);
        let held = process_locks(&path);
        assert_eq!(held.len(), 1, "{held:?}");
        assert_eq!(held[0].0, "WRITE", "{held:?}");
        let writer = Connection::open(&path).unwrap();
        match reader.execute("INSERT INTO t VALUES (1000, 'x')", []) {
            Err(rusqlite::Error::SqliteFailure(e, _)) => {
                assert_eq!(e.code, rusqlite::ErrorCode::ReadOnly, "{e}")
            }
            other => panic!("a read-only connection wrote: {other:?}"),
        }
        assert_eq!(
            process_locks(&path),
            held,
            "after the reader's refused write"
        );

        writer
            .execute("INSERT INTO t VALUES (1000, 'x')", [])
            .unwrap();
        writer
            .execute_batch("PRAGMA wal_checkpoint(PASSIVE);")
            .unwrap();
        sync_database_file(&writer).unwrap();
        drop(reader);
        assert_eq!(process_locks(&path), held, "after a checkpoint's sync");
        assert!(!path.with_extension("db-shm").exists());
    }
}
