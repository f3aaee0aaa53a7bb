//! The node's backup history (`sys.backup_history`): one JSON line per
//! backup taken here, in `DATA_DIR/backup/history.jsonl`, appended and
//! fsynced after the backup file is complete.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::format::Kind;
use super::take::Taken;

/// One backup taken on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The backup's id (32 hex digits).
    pub id: String,
    /// The database.
    pub database: String,
    /// `DATABASE` (full) or `LOG`.
    pub kind: String,
    /// Taken WITH COPY_ONLY.
    pub copy_only: bool,
    /// Compressed.
    pub compressed: bool,
    /// Where it was written.
    pub path: String,
    /// First LSN of the log it carries.
    pub first_lsn: u64,
    /// The LSN it restores to.
    pub end_lsn: u64,
    /// Size of the file in bytes.
    pub size: u64,
    /// Start, µs since the Unix epoch.
    pub started_us: i64,
    /// Duration in milliseconds.
    pub duration_ms: u64,
    /// The availability group ("" outside one).
    pub group: String,
    /// The replica that took it.
    pub replica: String,
    /// Where the next log backup starts (one transaction before this
    /// one's end); None in entries written before it was recorded.
    #[serde(default)]
    pub next_from: Option<u64>,
}

impl Entry {
    /// The history entry of a finished backup.
    pub fn of(taken: &Taken, path: &Path, duration: Duration) -> Entry {
        Entry {
            id: taken.header.id_hex(),
            database: taken.header.database.clone(),
            kind: match taken.header.kind {
                Kind::Full => "DATABASE".into(),
                Kind::Log => "LOG".into(),
            },
            copy_only: taken.header.copy_only,
            compressed: taken.header.compressed,
            path: path.display().to_string(),
            first_lsn: taken.header.first_lsn,
            end_lsn: taken.header.end_lsn,
            size: taken.size,
            started_us: taken.header.started_us,
            duration_ms: duration.as_millis() as u64,
            group: taken.header.group.clone(),
            replica: taken.header.replica.clone(),
            next_from: Some(taken.next_from),
        }
    }
}

/// The history file under `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("backup").join("history.jsonl")
}

/// Appends `entry` durably.
pub fn append(data_dir: &Path, entry: &Entry) -> std::io::Result<()> {
    let file = path(data_dir);
    if let Some(dir) = file.parent() {
        crate::durable::create_dir_all(dir)?;
    }
    let mut line = serde_json::to_string(entry).map_err(std::io::Error::other)?;
    line.push('\n');
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)?;
    f.write_all(line.as_bytes())?;
    f.sync_data()
}

/// Every backup taken on this node, oldest first. A line that does not
/// parse (a torn last append) is skipped.
pub fn read(data_dir: &Path) -> std::io::Result<Vec<Entry>> {
    match fs::read_to_string(path(data_dir)) {
        Ok(text) => Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}
