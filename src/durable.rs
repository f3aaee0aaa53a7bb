//! Durable directory steps, shared by every part that keeps files (log,
//! engine, group definitions, cluster store).
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
