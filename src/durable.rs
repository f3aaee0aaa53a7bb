//! Durable directory steps, shared by every part that keeps files (log,
//! engine, group definitions, cluster store), and bounded writeback for
//! long writes.
//!
//! A file's directory entry survives a power loss only once the directory
//! is fsynced; a new directory's own entry only once its *parent* is. A log
//! whose segments and folder were fsynced can still vanish whole after a
//! power loss when `DATA_DIR/log/` was never synced after `log/<database>`
//! appeared in it — and with it records this node acknowledged as
//! hardened. So folders are created with [`create_dir_all`], which fsyncs
//! the parent of every folder it creates, and synced with [`sync_dir`].
//!
//! Tests see which folders were synced (`synced_under`, in unit tests).
//!
//! Long writes (a backup, a seed, a restore) keep what they leave dirty in
//! the page cache bounded ([`FlushBehind`], [`Pacer`]): a gigabyte of dirty
//! pages makes every fsync of the node wait behind it, the cluster log's
//! that renews the primary's lease included.

use std::fs::{self, File};
use std::io;
use std::path::Path;

/// fsync of a directory: the entries made in it so far (new files, new
/// subdirectories, renames) survive a power loss.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()?;
    #[cfg(test)]
    SYNCED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(dir.to_path_buf());
    Ok(())
}

/// Creates `dir` and every missing ancestor, as `fs::create_dir_all`, and
/// makes each new folder's entry durable in its parent, outermost first.
/// A folder that already exists is left as it is.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        missing.push(path.to_path_buf());
        at = path.parent();
    }
    fs::create_dir_all(dir)?;
    for created in missing.iter().rev() {
        let parent = match created.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        sync_dir(parent)?;
    }
    Ok(())
}

/// Replaces the file at `path` with `bytes` so that a crash leaves either
/// the old content or the new, whole: written to `path.tmp`, fsynced,
/// renamed over `path`, and the folder fsynced.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = folder.join(tmp_name);
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    sync_dir(folder)
}

#[cfg(test)]
static SYNCED: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

/// The folders under `root` (or `root` itself) that [`sync_dir`] synced so
/// far in this test process, in order.
#[cfg(test)]
pub(crate) fn synced_under(root: &Path) -> Vec<std::path::PathBuf> {
    SYNCED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|p| p.starts_with(root))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flushed_behind_write_holds_every_byte_in_order_across_its_stretches() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut out = FlushBehind::new(File::create(&path).unwrap());
        let mut expected = Vec::new();
        // Odd-sized writes across three stretches of FLUSH_EVERY.
        for i in 0..(3 * FLUSH_EVERY as usize / 100_003 + 1) {
            let chunk = vec![(i % 251) as u8; 100_003];
            out.write_all(&chunk).unwrap();
            expected.extend_from_slice(&chunk);
        }
        assert!(out.previous.is_some(), "a stretch was written back");
        drop(out);
        assert_eq!(fs::read(&path).unwrap(), expected);
    }

    #[test]
    fn every_new_folder_is_synced_in_its_parent_and_existing_ones_are_left_alone() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        create_dir_all(&root.join("a/b/c")).unwrap();
        assert!(root.join("a/b/c").is_dir());
        assert_eq!(
            synced_under(root),
            [root.to_path_buf(), root.join("a"), root.join("a/b")]
        );
        create_dir_all(&root.join("a/b/c")).unwrap();
        create_dir_all(&root.join("a/d")).unwrap();
        assert_eq!(
            synced_under(root),
            [
                root.to_path_buf(),
                root.join("a"),
                root.join("a/b"),
                root.join("a")
            ]
        );
    }
}

/// Bytes a long write may leave dirty in the page cache before its
/// writeback is started ([`FlushBehind`], [`Pacer`]).
pub const FLUSH_EVERY: u64 = 8 << 20;

/// A sequential file writer that keeps its dirty page cache bounded: after
/// every [`FLUSH_EVERY`] bytes it starts the writeback of that stretch
/// (`sync_file_range`, `SYNC_FILE_RANGE_WRITE`) and waits for the stretch
/// before it. Without it a backup or a seed of a gigabyte leaves the whole
/// file dirty, and the fsync that ends it, or any other fsync of the node
/// meanwhile — the cluster's log, which renews the primary's lease — waits
/// behind all of it: a backup on a secondary cost the primary its lease.
pub struct FlushBehind {
    file: File,
    written: u64,
    started: u64,
    previous: Option<(u64, u64)>,
}

impl FlushBehind {
    /// Wraps `file`, written from its start.
    pub fn new(file: File) -> FlushBehind {
        FlushBehind {
            file,
            written: 0,
            started: 0,
            previous: None,
        }
    }

    fn pace(&mut self) {
        if self.written - self.started < FLUSH_EVERY {
            return;
        }
        let stretch = (self.started, self.written - self.started);
        if let Some((from, len)) = self.previous {
            sync_range(&self.file, from, len, true);
        }
        sync_range(&self.file, stretch.0, stretch.1, false);
        self.previous = Some(stretch);
        self.started = self.written;
    }
}

impl io::Write for FlushBehind {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        self.pace();
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// The same bound for a file written at offsets (a restore's pages): after
/// every [`FLUSH_EVERY`] bytes the file's data is made durable.
#[derive(Default)]
pub struct Pacer(std::sync::atomic::AtomicU64);

impl Pacer {
    /// Counts `n` bytes written to `file`; syncs its data past the bound.
    pub fn wrote(&self, file: &File, n: u64) -> io::Result<()> {
        use std::sync::atomic::Ordering;
        if self.0.fetch_add(n, Ordering::Relaxed) + n >= FLUSH_EVERY {
            self.0.store(0, Ordering::Relaxed);
            file.sync_data()?;
        }
        Ok(())
    }
}

/// `sync_file_range` of `[from, from + len)`: start its writeback, and with
/// `wait`, wait for it too. Advisory: an error leaves the final fsync to
/// make the data durable.
fn sync_range(file: &File, from: u64, len: u64, wait: bool) {
    use std::os::fd::AsRawFd;
    let flags = if wait {
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER
    } else {
        libc::SYNC_FILE_RANGE_WRITE
    };
    // SAFETY: the descriptor is open for the file's lifetime; the call only
    // reads its arguments.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            from as libc::off64_t,
            len as libc::off64_t,
            flags,
        );
    }
}
