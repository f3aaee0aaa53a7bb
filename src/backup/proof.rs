//! Continuous proof: every backup taken on this node is restored in the
//! background, and whether it restores is recorded — so a backup that
//! would not restore is known the day it is taken, not the day it is
//! needed.
//!
//! # What a proof does
//! One worker per node takes the backups in the order they were taken.
//! For each it builds the chain that restores to its end from this node's
//! backup history — a full backup alone, or for a log backup the newest
//! full backup before it and every log backup between them — and, when
//! the chain's LSNs join up, restores it into `DATA_DIR/backup/proof/`
//! with the same code as RESTORE (`restore::prove`): each file
//! checked whole, the full backup's pages compared with the hashes the
//! source had at its LSN, each log backup checked to continue the one
//! before, then SQLite's `integrity_check` on the result. The scratch copy
//! is removed afterwards.
//!
//! # Outcomes (`sys.backup_history.verification_state`)
//! * `VERIFIED` — the chain restored and checked; `restorable_lsn` and
//!   `restorable_time` are the point it restores to.
//! * `FILE_VERIFIED` — the chain is not all on this node (a log backup in
//!   between was taken on another replica of the group): the file alone
//!   was read and checked (block and record checksums, LSN continuity).
//! * `FAILED` — with what is wrong in `verification_desc` (a missing or
//!   damaged file, a page that does not match, a gap).
//! * `PENDING` — not proven yet; `NOT_VERIFIED` — proofs are off
//!   (`--backup-verify-kib-per-s 0`), or the scratch copy could not be
//!   written (a full disk: the backup is not judged; proven again at the
//!   next start).
//!
//! Outcomes are appended to `DATA_DIR/backup/proofs.jsonl`. After a
//! restart, backups without a judgement (no outcome, or NOT_VERIFIED) are
//! proven again.
//!
//! # Cost
//! The worker reads backup files at most at the configured rate (default
//! 16 MiB/s; each file is read twice and the copy written once), on one
//! blocking thread, one proof at a time: it takes disk bandwidth, never a
//! lock of a live database.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::history::{self, Entry};
use super::restore;

/// The default rate of the proofs' reads, bytes a second.
pub const DEFAULT_RATE_BYTES: u64 = 16 << 20;

/// One backup's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The backup's id.
    pub id: String,
    /// `VERIFIED`, `FILE_VERIFIED`, `FAILED` or `NOT_VERIFIED`.
    pub state: String,
    /// What was checked, or what is wrong.
    pub detail: String,
    /// The ids of the chain restored (VERIFIED), full backup first.
    pub chain: Vec<String>,
    /// The LSN it restored to (VERIFIED).
    pub restorable_lsn: Option<u64>,
    /// That point's last commit, µs since the Unix epoch (VERIFIED).
    pub restorable_us: Option<i64>,
    /// When the proof ended, µs since the Unix epoch.
    pub verified_us: i64,
    /// How long it took, milliseconds.
    pub duration_ms: u64,
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("backup").join("proofs.jsonl")
}

/// Every outcome recorded on this node, oldest first (a torn last line,
/// from a crash while appending, is skipped).
pub fn read(data_dir: &Path) -> Vec<Outcome> {
    fs::read_to_string(path(data_dir))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn append(data_dir: &Path, outcome: &Outcome) -> std::io::Result<()> {
    let file = path(data_dir);
    if let Some(dir) = file.parent() {
        crate::durable::create_dir_all(dir)?;
    }
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)?;
    let mut line = serde_json::to_string(outcome).map_err(std::io::Error::other)?;
    line.push('\n');
    f.write_all(line.as_bytes())?;
    f.sync_data()
}

/// The node's proof worker: [`Prover::submit`] queues a backup.
#[derive(Clone)]
pub struct Prover {
    queue: Option<tokio::sync::mpsc::UnboundedSender<String>>,
}

impl Prover {
    /// Starts the worker for `data_dir`, reading at most `rate` bytes a
    /// second (0: proofs are off). Backups of the history without an
    /// outcome are queued at once.
    pub fn start(data_dir: &Path, rate: u64) -> Prover {
        if rate == 0 {
            return Prover { queue: None };
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        // Judged backups (the newest outcome of each is the one that counts).
        let mut newest = std::collections::BTreeMap::new();
        for o in read(data_dir) {
            newest.insert(o.id, o.state);
        }
        let proven: BTreeSet<String> = newest
            .into_iter()
            .filter(|(_, state)| state != "NOT_VERIFIED")
            .map(|(id, _)| id)
            .collect();
        for e in history::read(data_dir).unwrap_or_default() {
            if !proven.contains(&e.id) {
                let _ = tx.send(e.id);
            }
        }
        let data_dir = data_dir.to_path_buf();
        tokio::spawn(async move {
            while let Some(id) = rx.recv().await {
                let dir = data_dir.clone();
                let done = tokio::task::spawn_blocking(move || prove_one(&dir, &id, rate)).await;
                match done {
                    Ok(Some(outcome)) => {
                        if outcome.state == "FAILED" {
                            tracing::error!(backup = %outcome.id, detail = %outcome.detail, "a backup does not restore");
                        } else {
                            tracing::info!(backup = %outcome.id, state = %outcome.state, "backup proven");
                        }
                        if let Err(e) = append(&data_dir, &outcome) {
                            tracing::warn!(error = %e, "cannot record a backup's proof");
                        }
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "a backup's proof did not finish"),
                }
            }
        });
        Prover { queue: Some(tx) }
    }

    /// Whether proofs run on this node.
    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Queues the proof of backup `id` (of this node's history).
    pub fn submit(&self, id: &str) {
        if let Some(q) = &self.queue {
            let _ = q.send(id.to_string());
        }
    }
}

/// The chain restoring to `target`'s end from `entries`: the newest full
/// backup of the database taken before it, then its log backups in order.
/// None when the LSNs do not join up (a backup in between was taken
/// elsewhere) or there is no full backup.
pub fn chain_of<'a>(entries: &'a [Entry], target: &'a Entry) -> Option<Vec<&'a Entry>> {
    if target.kind != "LOG" {
        return Some(vec![target]);
    }
    let same = |e: &&Entry| e.database == target.database;
    let full = entries
        .iter()
        .filter(same)
        .filter(|e| {
            e.kind != "LOG" && e.started_us <= target.started_us && e.end_lsn <= target.end_lsn
        })
        .max_by_key(|e| (e.end_lsn, e.started_us))?;
    let mut logs: Vec<&Entry> = entries
        .iter()
        .filter(same)
        .filter(|e| {
            e.kind == "LOG"
                && e.end_lsn > full.end_lsn
                && e.end_lsn <= target.end_lsn
                && e.id != target.id
        })
        .collect();
    logs.sort_by_key(|e| e.end_lsn);
    logs.push(target);
    // Keep the log backups that move the chain on; every one must start
    // where the chain stands or before.
    let mut chain = vec![full];
    let mut end = full.end_lsn;
    for log in logs {
        if log.end_lsn <= end {
            continue;
        }
        if log.first_lsn > end {
            return None;
        }
        end = log.end_lsn;
        chain.push(log);
    }
    Some(chain)
}

fn prove_one(data_dir: &Path, id: &str, rate: u64) -> Option<Outcome> {
    let entries = history::read(data_dir).unwrap_or_default();
    let target = entries.iter().find(|e| e.id == id)?;
    let started = Instant::now();
    let pace = Pace::new(rate);
    let open = |p: &Path| {
        fs::File::open(p).map(|f| Paced {
            file: f,
            pace: &pace,
        })
    };
    let outcome =
        |state: &str, detail: String, chain: Vec<String>, at: Option<(u64, i64)>| Outcome {
            id: id.to_string(),
            state: state.to_string(),
            detail,
            chain,
            restorable_lsn: at.map(|a| a.0),
            restorable_us: at.map(|a| a.1),
            verified_us: super::take::now_us(),
            duration_ms: started.elapsed().as_millis() as u64,
        };
    let Some(chain) = chain_of(&entries, target) else {
        // The file alone: its blocks, records and LSN continuity.
        let checked = local_copy(data_dir, &target.path)
            .map_err(|e| e.to_string())
            .and_then(|(path, _staging)| {
                open(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|f| restore::check_file(&path, f).map_err(|e| e.to_string()))
            });
        return Some(match checked {
            Ok(()) => outcome(
                "FILE_VERIFIED",
                "the file reads back whole; the chain before it is not all on this node (a log backup in between was taken on another replica), so it was not restored here".into(),
                Vec::new(),
                None,
            ),
            Err(e) => outcome("FAILED", e, Vec::new(), None),
        });
    };
    let ids: Vec<String> = chain.iter().map(|e| e.id.clone()).collect();
    let mut paths = Vec::new();
    let mut _staged = Vec::new();
    for e in &chain {
        match local_copy(data_dir, &e.path) {
            Ok((path, staging)) => {
                paths.push(path);
                _staged.push(staging);
            }
            Err(err) => return Some(outcome("FAILED", err.to_string(), ids, None)),
        }
    }
    let scratch = data_dir.join("backup").join("proof");
    Some(match restore::prove(&paths, &scratch, &open) {
        Ok(p) => outcome(
            "VERIFIED",
            format!(
                "restored from {} backup file(s): {} pages matched the source's hashes, {} log records applied, SQLite's integrity check passed",
                paths.len(),
                p.pages,
                p.records
            ),
            ids,
            Some((p.end_lsn, p.last_commit_us)),
        ),
        // The scratch copy could not be written (a full disk, say): that
        // says nothing of the backup.
        Err(super::BackupError::Io { path, source, .. }) if path.starts_with(&scratch) => outcome(
            "NOT_VERIFIED",
            format!(
                "the scratch copy could not be written ({}: {source}); the backup was not judged: free space under the data directory, then restart the node to prove it again",
                path.display()
            ),
            ids,
            None,
        ),
        Err(e) => {
            let detail = match e.hint() {
                Some(hint) => format!("{e} ({hint})"),
                None => e.to_string(),
            };
            outcome("FAILED", detail, ids, None)
        }
    })
}

/// A backup's file on this node: its path, or for a URL (`TO URL`) a
/// staging copy downloaded first, removed when the guard drops.
fn local_copy(
    data_dir: &Path,
    path: &str,
) -> Result<(PathBuf, Option<super::remote::Staging>), super::BackupError> {
    if !super::remote::is_url(path) {
        return Ok((PathBuf::from(path), None));
    }
    // On a blocking thread of the runtime: wait for the download here.
    tokio::runtime::Handle::current().block_on(super::remote::fetch(data_dir, path))
}

/// A budget of bytes a second, shared by the files of one proof.
struct Pace {
    rate: u64,
    started: Instant,
    bytes: std::sync::atomic::AtomicU64,
}

impl Pace {
    fn new(rate: u64) -> Pace {
        Pace {
            rate: rate.max(1),
            started: Instant::now(),
            bytes: Default::default(),
        }
    }

    /// Counts `n` bytes read and sleeps while ahead of the rate.
    fn took(&self, n: usize) {
        let total = self
            .bytes
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed)
            + n as u64;
        let due = Duration::from_secs_f64(total as f64 / self.rate as f64);
        if let Some(ahead) = due.checked_sub(self.started.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
}

/// A file read at the pace's rate.
struct Paced<'a> {
    file: fs::File,
    pace: &'a Pace,
}

impl Read for Paced<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        self.pace.took(n);
        Ok(n)
    }
}

impl Seek for Paced<'_> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.file.seek(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, kind: &str, first: u64, end: u64, at: i64) -> Entry {
        Entry {
            id: id.into(),
            database: "app".into(),
            kind: kind.into(),
            copy_only: false,
            compressed: false,
            path: format!("{id}.bak"),
            first_lsn: first,
            end_lsn: end,
            size: 0,
            started_us: at,
            duration_ms: 0,
            group: String::new(),
            replica: "r1".into(),
            next_from: None,
        }
    }

    fn ids(chain: Option<Vec<&Entry>>) -> Option<Vec<String>> {
        chain.map(|c| c.iter().map(|e| e.id.clone()).collect())
    }

    #[test]
    fn a_log_backup_is_proven_with_the_newest_full_backup_before_it_and_the_logs_between() {
        let entries = vec![
            entry("f1", "DATABASE", 0, 100, 1),
            entry("l1", "LOG", 90, 200, 2),
            entry("f2", "DATABASE", 150, 250, 3),
            entry("l2", "LOG", 190, 300, 4),
            entry("l3", "LOG", 290, 400, 5),
        ];
        let chain = |id: &str| {
            ids(chain_of(
                &entries,
                entries.iter().find(|e| e.id == id).unwrap(),
            ))
        };
        assert_eq!(chain("f1"), Some(vec!["f1".into()]));
        assert_eq!(chain("l1"), Some(vec!["f1".into(), "l1".into()]));
        assert_eq!(
            chain("l3"),
            Some(vec!["f2".into(), "l2".into(), "l3".into()]),
            "the newest full backup, and only the logs that move past it"
        );
    }

    #[test]
    fn a_chain_with_a_gap_on_this_node_is_not_restored() {
        // l2 (LSN 200..300) was taken on another replica.
        let entries = vec![
            entry("f1", "DATABASE", 0, 100, 1),
            entry("l1", "LOG", 90, 200, 2),
            entry("l3", "LOG", 290, 400, 5),
        ];
        assert_eq!(ids(chain_of(&entries, &entries[2])), None);
        let no_full = vec![entry("l1", "LOG", 90, 200, 2)];
        assert_eq!(ids(chain_of(&no_full, &no_full[0])), None);
    }

    #[test]
    fn a_scratch_copy_that_cannot_be_written_judges_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let full = entry("f1", "DATABASE", 0, 100, 1);
        history::append(dir.path(), &full).unwrap();
        // The scratch directory cannot be made: a file is in its place.
        std::fs::write(dir.path().join("backup").join("proof"), b"x").unwrap();
        let outcome = prove_one(dir.path(), "f1", 1 << 30).unwrap();
        assert_eq!(outcome.state, "NOT_VERIFIED", "{}", outcome.detail);
        assert!(
            outcome.detail.contains("scratch copy"),
            "{}",
            outcome.detail
        );
    }

    #[test]
    fn the_pace_holds_reads_to_the_rate() {
        let pace = Pace::new(1 << 20);
        let started = Instant::now();
        for _ in 0..4 {
            pace.took(128 << 10);
        }
        assert!(
            started.elapsed() >= Duration::from_millis(450),
            "512 KiB at 1 MiB/s took {:?}",
            started.elapsed()
        );
    }
}
