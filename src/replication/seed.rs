//! Automatic seeding by a streamed backup: how a replica that has no copy
//! of a database, or one older than the primary's log, gets one without
//! the primary holding its write lock while the pages are read.
//!
//! # Why not a full image in the log
//! A full image appended to the primary's log is written under the write
//! lock (its parts must not interleave with commits: redo, recovery and the
//! link take the image as whole only at its last part), so writers wait
//! while every page is read, and the image goes to every replica that reads
//! the log, seeded or not. That stays the way for small databases (below
//! [`seed_by_backup_from`], default 16 MiB: a few milliseconds of lock) and
//! for a rewind, a geo-secondary database (whose log is its source's) and
//! the geo paths.
//!
//! # The protocol
//! 1. The primary's handshake plans `Start::Seed` for the database
//!    (`link::plan_start`), the replica's SEEDING_MODE is AUTOMATIC, this
//!    region writes the database and it is at least
//!    [`seed_by_backup_from`] bytes: the replica leaves the synchronized
//!    set as [`LeaveReason::Seeding`](super::sync::LeaveReason), whose old
//!    position holds no log, and the primary holds its log from the
//!    database's applied LSN instead ([`SeedHolds`]).
//! 2. It takes a copy-only full backup into a staging file
//!    (`crate::backup::take`: a read snapshot, no write lock, consistent at
//!    its end LSN `L`, checksummed per block), pinging the replica while it
//!    runs, then moves the hold to `L`.
//! 3. It sends `Seed { database, lsn: L, bytes }` and the file in
//!    `SeedData` parts of at most [`SEED_PART`] bytes: memory stays bounded
//!    whatever the size. The staging file is removed once sent.
//! 4. The replica writes the parts to a staging file of its own
//!    ([`SeedIntake`]); with the last byte, it restores the backup `WITH
//!    NORECOVERY` (every block and page hash checked) and starts its
//!    secondary again: a RESTORING copy of a database of the group replaces
//!    the old one as it starts (`ag::Manager::ensure_database`), its log
//!    starting at `L`.
//! 5. The primary reconnects, finds the copy ending at `L`, which its log
//!    still holds, and streams from there; the hold ends at that handshake
//!    (the replica's position holds the log from then on), or after
//!    [`SEED_HOLD_FOR`] when the replica never comes back.
//!
//! A link that breaks mid-transfer leaves nothing: the replica's partial
//! staging file is dropped, its old copy stays as it was, and the next
//! handshake seeds it again. A replica killed while restoring starts with
//! its old copy (a RESTORING copy exists only once whole).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use super::error::ReplicationError;
use super::wire::Message;
use crate::engine::Database;
use crate::log::Lsn;

/// Largest `SeedData` part.
pub const SEED_PART: usize = 1 << 20;

/// How long a seed's log hold outlives its transfer when the replica does
/// not come back to take the log from there.
pub const SEED_HOLD_FOR: Duration = Duration::from_secs(15 * 60);

/// Default of [`seed_by_backup_from`]: 16 MiB.
pub const DEFAULT_SEED_BY_BACKUP_FROM: u64 = 16 << 20;

static SEED_BY_BACKUP_FROM: AtomicU64 = AtomicU64::new(DEFAULT_SEED_BY_BACKUP_FROM);

/// Databases of at least this many bytes are seeded automatically by a
/// streamed backup; smaller ones by a full image in the log.
pub fn seed_by_backup_from() -> u64 {
    SEED_BY_BACKUP_FROM.load(Ordering::Relaxed)
}

/// Sets [`seed_by_backup_from`] for this process (`--seed-by-backup-from-mb`;
/// 0: every automatic seed is a streamed backup).
pub fn set_seed_by_backup_from(bytes: u64) {
    SEED_BY_BACKUP_FROM.store(bytes, Ordering::Relaxed);
}

/// The log a primary keeps for replicas being seeded, by (database,
/// replica): from where, and until when at the latest.
#[derive(Default)]
pub struct SeedHolds(Mutex<HashMap<(String, String), (Lsn, Instant)>>);

impl SeedHolds {
    /// Holds the log of `database` from `lsn` for `replica`.
    pub fn hold(&self, database: &str, replica: &str, lsn: Lsn) {
        self.lock().insert(
            (database.to_string(), replica.to_ascii_lowercase()),
            (lsn, Instant::now() + SEED_HOLD_FOR),
        );
    }

    /// Ends the hold for `replica` (its position holds the log now).
    pub fn release(&self, database: &str, replica: &str) {
        self.lock()
            .remove(&(database.to_string(), replica.to_ascii_lowercase()));
    }

    /// The lowest LSN held for `database` (`u64::MAX`: none); expired
    /// holds are dropped.
    pub fn lowest(&self, database: &str) -> Lsn {
        let now = Instant::now();
        let mut holds = self.lock();
        holds.retain(|_, (_, until)| *until > now);
        holds
            .iter()
            .filter(|((d, _), _)| d == database)
            .map(|(_, (lsn, _))| *lsn)
            .min()
            .unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), (Lsn, Instant)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where one seed stands, for `sys.dm_hadr_physical_seeding_stats`.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedingStats {
    /// The database.
    pub database: String,
    /// The partner: the replica seeded (on the primary) or the primary
    /// (on the replica).
    pub remote: String,
    /// `Primary` or `Secondary`: which end this is.
    pub role: &'static str,
    /// `BACKING_UP`, `TRANSFERRING`, `RESTORING`, `COMPLETED` or `FAILED`.
    pub state: &'static str,
    /// The database's size (pages × page size; the backup's on the replica).
    pub database_bytes: u64,
    /// Pages in the database, and read into the backup so far (primary).
    pub pages: u64,
    /// See `pages`.
    pub pages_read: u64,
    /// Bytes of the backup sent or received so far.
    pub transferred_bytes: u64,
    /// The backup's size, once known.
    pub backup_bytes: u64,
    /// Where the copy's log starts (the backup's end LSN), once known.
    pub lsn: Lsn,
    /// When it started and ended (µs since the epoch; 0: not yet).
    pub started_us: i64,
    /// See `started_us`.
    pub finished_us: i64,
    /// Why it failed.
    pub failure: Option<String>,
}

/// The seeds this node took part in, newest last, bounded.
#[derive(Default)]
pub struct SeedingBoard(Mutex<Vec<SeedingStats>>);

/// Seeds kept on the board.
const BOARD_ROWS: usize = 64;

impl SeedingBoard {
    /// Starts a row; returns its handle.
    pub fn start(self: &Arc<Self>, database: &str, remote: &str, role: &'static str) -> SeedRow {
        let mut rows = self.lock();
        if rows.len() >= BOARD_ROWS {
            rows.remove(0);
        }
        rows.push(SeedingStats {
            database: database.to_string(),
            remote: remote.to_string(),
            role,
            state: if role == "PRIMARY" {
                "BACKING_UP"
            } else {
                "TRANSFERRING"
            },
            database_bytes: 0,
            pages: 0,
            pages_read: 0,
            transferred_bytes: 0,
            backup_bytes: 0,
            lsn: 0,
            started_us: now_us(),
            finished_us: 0,
            failure: None,
        });
        SeedRow {
            board: self.clone(),
            started_us: rows.last().map_or(0, |r| r.started_us),
            database: database.to_string(),
            remote: remote.to_string(),
        }
    }

    /// Every row, oldest first.
    pub fn rows(&self) -> Vec<SeedingStats> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<SeedingStats>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One row of a [`SeedingBoard`], updated as its seed goes.
#[derive(Clone)]
pub struct SeedRow {
    board: Arc<SeedingBoard>,
    started_us: i64,
    database: String,
    remote: String,
}

impl SeedRow {
    /// Changes the row.
    pub fn update(&self, change: impl FnOnce(&mut SeedingStats)) {
        let mut rows = self.board.lock();
        if let Some(row) = rows.iter_mut().rev().find(|r| {
            r.started_us == self.started_us
                && r.database == self.database
                && r.remote == self.remote
        }) {
            change(row);
        }
    }

    /// Ends the row as FAILED with why, unless it ended already.
    pub fn finish_if_open(&self, why: &str) {
        self.update(|r| {
            if r.finished_us == 0 {
                r.finished_us = now_us();
                r.state = "FAILED";
                r.failure = Some(why.to_string());
            }
        });
    }

    /// Ends the row: COMPLETED, or FAILED with why.
    pub fn finish(&self, outcome: std::result::Result<(), String>) {
        self.update(|r| {
            r.finished_us = now_us();
            match outcome {
                Ok(()) => r.state = "COMPLETED",
                Err(why) => {
                    r.state = "FAILED";
                    r.failure = Some(why);
                }
            }
        });
    }
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// What the primary side needs to prepare one seed.
pub struct SeedSource {
    /// The database.
    pub db: Arc<Database>,
    /// The node's data directory (the staging file goes under it).
    pub data_dir: PathBuf,
    /// The availability group.
    pub group: String,
    /// This node's replica name.
    pub node: String,
    /// The replica seeded.
    pub replica: String,
    /// Holds the log from an LSN for this seed.
    pub hold: Arc<dyn Fn(Lsn) + Send + Sync>,
    /// Where progress is shown.
    pub board: Arc<SeedingBoard>,
}

/// A seed's backup, taken and ready to send part by part.
pub struct Prepared {
    database: String,
    lsn: Lsn,
    size: u64,
    sent: u64,
    file: Option<tokio::fs::File>,
    row: SeedRow,
    /// Removes the file once the seed is dropped (sent or not).
    _staging: crate::backup::remote::Staging,
}

/// Takes the backup of a seed (module page, step 2) on its own task, while
/// the link goes on; the row on the board says how far it got.
pub async fn prepare(source: SeedSource) -> std::result::Result<Prepared, ReplicationError> {
    let database = source.db.name().to_string();
    let row = source.board.start(&database, &source.replica, "PRIMARY");
    // A link that ends while the backup is taken drops this future.
    let _open = OpenRow(row.clone());
    match take_backup(&source, &row).await {
        Ok((staging, lsn, size)) => Ok(Prepared {
            database,
            lsn,
            size,
            sent: 0,
            file: None,
            row,
            _staging: staging,
        }),
        Err(e) => {
            row.finish(Err(e.to_string()));
            Err(e)
        }
    }
}

async fn take_backup(
    source: &SeedSource,
    row: &SeedRow,
) -> std::result::Result<(crate::backup::remote::Staging, Lsn, u64), ReplicationError> {
    let db = &source.db;
    let database = db.name().to_string();
    let staging =
        crate::backup::remote::Staging::new(&source.data_dir).map_err(ReplicationError::local)?;
    // The snapshot the backup reads holds at least everything applied now.
    (source.hold)(db.applied_lsn());
    let progress = {
        let row = row.clone();
        crate::backup::Progress(Arc::new(move |done, total| {
            row.update(|r| {
                r.pages_read = done;
                r.pages = total;
            })
        }))
    };
    let request = crate::backup::BackupRequest {
        kind: crate::backup::Kind::Full,
        path: staging.path().to_path_buf(),
        copy_only: true,
        compression: true,
        checksum: false,
        group: source.group.clone(),
        replica: source.node.clone(),
        progress: Some(progress),
        upload: None,
        record: false,
        gentle: false,
        // The primary streams it to a replica waiting for it.
        rate: 0,
        read: None,
    };
    tracing::info!(database = %database, replica = %source.replica, "seeding the replica from a streamed backup (no write lock is held while it is read)");
    let taken = crate::backup::take(db.clone(), &source.data_dir, request)
        .await
        .map_err(|e| {
            ReplicationError::Local(format!(
                "cannot back up {database} to seed the replica: {e}"
            ))
        })?;
    let lsn = taken.header.end_lsn;
    (source.hold)(lsn);
    row.update(|r| {
        r.state = "TRANSFERRING";
        r.database_bytes = u64::from(taken.header.page_size) * taken.pages;
        r.pages = taken.pages;
        r.pages_read = taken.pages;
        r.backup_bytes = taken.size;
        r.lsn = lsn;
    });
    Ok((staging, lsn, taken.size))
}

/// Marks its row FAILED when dropped while the backup is still taken.
struct OpenRow(SeedRow);

impl Drop for OpenRow {
    fn drop(&mut self) {
        self.0.update(|r| {
            if r.state == "BACKING_UP" {
                r.finished_us = now_us();
                r.state = "FAILED";
                r.failure =
                    Some("the replication link ended while the seed's backup was taken".into());
            }
        });
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        self.row
            .finish_if_open("the replication link ended before the seed was sent");
    }
}

impl Prepared {
    /// The database seeded.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The next message to send (module page, step 3): `Seed` first, then
    /// `SeedData` parts; None once every byte is sent.
    pub async fn next_message(&mut self) -> std::result::Result<Option<Message>, ReplicationError> {
        let Some(file) = self.file.as_mut() else {
            let file = tokio::fs::File::open(self._staging.path())
                .await
                .map_err(ReplicationError::local)?;
            self.file = Some(file);
            return Ok(Some(Message::Seed {
                database: self.database.clone(),
                lsn: self.lsn,
                bytes: self.size,
            }));
        };
        if self.sent >= self.size {
            return Ok(None);
        }
        let want = (self.size - self.sent).min(SEED_PART as u64) as usize;
        let mut part = vec![0u8; want];
        file.read_exact(&mut part).await.map_err(|e| {
            ReplicationError::Local(format!(
                "cannot read the seed backup of {} at byte {}: {e}",
                self.database, self.sent
            ))
        })?;
        self.sent += want as u64;
        let sent = self.sent;
        self.row.update(|r| r.transferred_bytes = sent);
        if self.sent == self.size {
            tracing::info!(database = %self.database, lsn = self.lsn, bytes = self.size, "seed backup sent; the replica restores it and starts again with it");
            self.row.finish(Ok(()));
        }
        Ok(Some(Message::SeedData {
            database: self.database.clone(),
            data: part,
        }))
    }

    /// The link ended before every byte was sent.
    pub fn abandon(&self, why: &str) {
        self.row.finish_if_open(why);
    }
}

/// A replica's side of one seed: the staging file the parts go to.
pub struct SeedIntake {
    /// The database.
    pub database: String,
    /// Where the copy's log will start.
    pub lsn: Lsn,
    /// Bytes announced.
    pub bytes: u64,
    /// Bytes written.
    pub received: u64,
    path: PathBuf,
    file: crate::durable::FlushBehind,
    kept: bool,
}

impl SeedIntake {
    /// Starts taking a seed announced by `Seed`, in a staging file under
    /// `staging_dir`.
    pub fn begin(
        staging_dir: &Path,
        database: &str,
        lsn: Lsn,
        bytes: u64,
    ) -> std::result::Result<SeedIntake, ReplicationError> {
        crate::durable::create_dir_all(staging_dir).map_err(ReplicationError::local)?;
        let path = staging_dir.join(format!("seed-{database}.bak"));
        let file = crate::durable::FlushBehind::new(
            std::fs::File::create(&path).map_err(ReplicationError::local)?,
        );
        Ok(SeedIntake {
            database: database.to_string(),
            lsn,
            bytes,
            received: 0,
            path,
            file,
            kept: false,
        })
    }

    /// Writes the next part; true once every announced byte is here.
    pub fn take(&mut self, data: &[u8]) -> std::result::Result<bool, ReplicationError> {
        use std::io::Write;
        if self.received + data.len() as u64 > self.bytes {
            return Err(ReplicationError::Wire(format!(
                "the seed of {} goes past the {} bytes announced",
                self.database, self.bytes
            )));
        }
        self.file.write_all(data).map_err(ReplicationError::local)?;
        self.received += data.len() as u64;
        if self.received == self.bytes {
            std::fs::File::open(&self.path)
                .and_then(|f| f.sync_all())
                .map_err(ReplicationError::local)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// The finished file, handed over (no longer removed on drop).
    pub fn into_path(mut self) -> PathBuf {
        self.kept = true;
        self.path.clone()
    }
}

impl Drop for SeedIntake {
    fn drop(&mut self) {
        // A seed cut off mid-transfer leaves nothing.
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_hold_keeps_the_lowest_lsn_until_released_and_only_for_its_database() {
        let holds = SeedHolds::default();
        assert_eq!(holds.lowest("app"), u64::MAX);
        holds.hold("app", "R2", 500);
        holds.hold("app", "r3", 300);
        holds.hold("shop", "r2", 100);
        assert_eq!(holds.lowest("app"), 300);
        holds.release("app", "R3");
        assert_eq!(holds.lowest("app"), 500);
        holds.hold("app", "r2", 900);
        assert_eq!(holds.lowest("app"), 900, "a hold moves with its seed");
        holds.release("app", "r2");
        assert_eq!(holds.lowest("app"), u64::MAX);
        assert_eq!(holds.lowest("shop"), 100);
    }

    #[test]
    fn a_seed_cut_off_mid_transfer_leaves_no_file_and_one_past_its_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut intake = SeedIntake::begin(dir.path(), "app", 4096, 10).unwrap();
        assert!(!intake.take(&[1; 6]).unwrap());
        let path = dir.path().join("seed-app.bak");
        assert!(path.exists());
        assert!(intake.take(&[1; 5]).is_err(), "11 bytes of 10");
        drop(intake);
        assert!(!path.exists(), "a partial seed is removed");

        let mut intake = SeedIntake::begin(dir.path(), "app", 4096, 10).unwrap();
        assert!(!intake.take(&[1; 6]).unwrap());
        assert!(intake.take(&[2; 4]).unwrap(), "whole at the announced size");
        let kept = intake.into_path();
        assert_eq!(
            std::fs::read(&kept).unwrap(),
            [1, 1, 1, 1, 1, 1, 2, 2, 2, 2]
        );
    }
}
