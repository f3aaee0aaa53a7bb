//! Damaged pages: every page of a database file that failed its checksum
//! on this node ([`super::vfs`] reports them), from the read that found it
//! until it is repaired ([`clear`]) or given up ([`Status::Irreparable`]).
//!
//! The registry is process-wide, keyed by the file's canonical path, because
//! the VFS that finds a bad page knows only the file. Whoever repairs pages
//! follows [`changes`]; a session whose statement hit a bad page waits for
//! its repair ([`wait_repaired`], bounded) and then runs the statement again.
//!
//! A page already known stays as it is when it is reported again: one
//! repair runs per page, and a page given up is not retried by the reads
//! that keep finding it (no loop).
//!
//! A file can also be *suspected* ([`suspect`]): a statement failed with
//! SQLITE_CORRUPT that no page checksum explains (a page that is sealed
//! but wrong, found inconsistent by SQLite's B-tree). Nobody knows which
//! page; the scrubber takes suspects ([`take_suspects`]) and reads the
//! whole file at once.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Where a damaged page stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Found, not taken up yet.
    Pending,
    /// A repair is fetching or writing it.
    Repairing,
    /// No partner had a good copy: it stays damaged (the reads that need it
    /// fail with XX001; the rest of the database is served).
    Irreparable,
}

/// How a damaged page was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// It failed its checksum (a read, or the scrub).
    BadChecksum,
    /// It passes its checksum but the scrub found it differs from the
    /// copies of the replicas that agree against it (a lost or misdirected
    /// write).
    Mismatch,
}

struct Damage {
    path: PathBuf,
    pgno: u32,
    status: Status,
    cause: Cause,
}

static DAMAGE: Mutex<Vec<Damage>> = Mutex::new(Vec::new());

/// Files suspected of damage no checksum found, and the error that made
/// them suspect; at most one entry per file.
static SUSPECTS: Mutex<Vec<(PathBuf, String)>> = Mutex::new(Vec::new());

/// Counts changes of the registry, so waiters learn of them.
fn counter() -> &'static tokio::sync::watch::Sender<u64> {
    static COUNTER: OnceLock<tokio::sync::watch::Sender<u64>> = OnceLock::new();
    COUNTER.get_or_init(|| tokio::sync::watch::channel(0).0)
}

fn changed() {
    counter().send_modify(|n| *n = n.wrapping_add(1));
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

fn registry() -> std::sync::MutexGuard<'static, Vec<Damage>> {
    DAMAGE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Follows every change of the registry (a report, a status, a repair).
pub fn changes() -> tokio::sync::watch::Receiver<u64> {
    counter().subscribe()
}

/// Records that page `pgno` of the file at `path` failed its checksum (a
/// page known already keeps its status).
pub fn report(path: &Path, pgno: u32) {
    report_as(path, pgno, Cause::BadChecksum);
}

/// Records that page `pgno` of the file at `path` is damaged, found as
/// `cause` says (a page known already keeps its status).
pub fn report_as(path: &Path, pgno: u32, cause: Cause) {
    let path = canonical(path);
    {
        let mut damage = registry();
        if damage.iter().any(|d| d.path == path && d.pgno == pgno) {
            return;
        }
        damage.push(Damage {
            path,
            pgno,
            status: Status::Pending,
            cause,
        });
    }
    changed();
}

/// The damaged pages of the file at `path` and where each stands, oldest
/// first.
pub fn pages(path: &Path) -> Vec<(u32, Status)> {
    let path = canonical(path);
    registry()
        .iter()
        .filter(|d| d.path == path)
        .map(|d| (d.pgno, d.status))
        .collect()
}

/// Every page found and not taken up yet: `(file, page, how it was
/// found)`, oldest first.
pub fn pending() -> Vec<(PathBuf, u32, Cause)> {
    registry()
        .iter()
        .filter(|d| d.status == Status::Pending)
        .map(|d| (d.path.clone(), d.pgno, d.cause))
        .collect()
}

/// Sets where page `pgno` of the file at `path` stands (no-op when the
/// page is not in the registry).
pub fn set_status(path: &Path, pgno: u32, status: Status) {
    let path = canonical(path);
    if let Some(d) = registry()
        .iter_mut()
        .find(|d| d.path == path && d.pgno == pgno)
    {
        d.status = status;
    }
    changed();
}

/// Forgets page `pgno` of the file at `path`: it was repaired.
pub fn clear(path: &Path, pgno: u32) {
    let path = canonical(path);
    registry().retain(|d| !(d.path == path && d.pgno == pgno));
    changed();
}

/// Forgets every page of the file at `path` (its database was dropped, or
/// its file replaced whole by seeding or a restore).
pub fn forget_file(path: &Path) {
    let path = canonical(path);
    registry().retain(|d| d.path != path);
    changed();
}

/// Records that a statement on the file at `path` failed with SQLITE_CORRUPT
/// and no page failed its checksum (`error`: SQLite's message). A file
/// suspected already keeps its first error until it is taken.
pub fn suspect(path: &Path, error: &str) {
    let path = canonical(path);
    {
        let mut suspects = SUSPECTS.lock().unwrap_or_else(|e| e.into_inner());
        if suspects.iter().any(|(p, _)| *p == path) {
            return;
        }
        suspects.push((path, error.to_string()));
    }
    changed();
}

/// Takes every suspected file and its error, oldest first.
pub fn take_suspects() -> Vec<(PathBuf, String)> {
    std::mem::take(&mut *SUSPECTS.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Waits until none of the pages of the file at `path` that are damaged
/// now is still pending or being repaired, at most `within`. True when
/// none is left damaged (all repaired); false when one is irreparable or
/// the time ran out.
pub async fn wait_repaired(path: &Path, within: Duration) -> bool {
    let path = canonical(path);
    let waited: Vec<u32> = pages(&path).into_iter().map(|(p, _)| p).collect();
    let mut changes = changes();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left: Vec<Status> = pages(&path)
            .into_iter()
            .filter(|(p, _)| waited.contains(p))
            .map(|(_, s)| s)
            .collect();
        if left.is_empty() {
            return true;
        }
        if left.contains(&Status::Irreparable) {
            return false;
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_page_is_known_once_and_waiters_learn_of_its_repair() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.db");
        std::fs::write(&file, b"").unwrap();
        report(&file, 7);
        report(&file, 7);
        assert_eq!(pages(&file), vec![(7, Status::Pending)]);
        assert!(pending().contains(&(canonical(&file), 7, Cause::BadChecksum)));
        set_status(&file, 7, Status::Repairing);
        assert!(!pending().contains(&(canonical(&file), 7, Cause::BadChecksum)));
        let waiter = tokio::spawn({
            let file = file.clone();
            async move { wait_repaired(&file, Duration::from_secs(30)).await }
        });
        tokio::task::yield_now().await;
        clear(&file, 7);
        assert!(waiter.await.unwrap(), "the repair ends the wait");
        assert!(pages(&file).is_empty());
    }

    #[tokio::test]
    async fn a_file_is_suspected_once_until_taken_and_followers_learn_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.db");
        std::fs::write(&file, b"").unwrap();
        let mut follow = changes();
        follow.borrow_and_update();
        suspect(&file, "database disk image is malformed");
        suspect(&file, "a later error");
        assert!(follow.has_changed().unwrap(), "the scrubber is woken");
        let mine: Vec<_> = take_suspects()
            .into_iter()
            .filter(|(p, _)| *p == canonical(&file))
            .collect();
        assert_eq!(
            mine,
            vec![(
                canonical(&file),
                "database disk image is malformed".to_string()
            )]
        );
        assert!(!take_suspects().iter().any(|(p, _)| *p == canonical(&file)));
    }

    #[tokio::test]
    async fn an_irreparable_page_ends_the_wait_and_is_not_taken_up_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b.db");
        std::fs::write(&file, b"").unwrap();
        report(&file, 3);
        set_status(&file, 3, Status::Irreparable);
        report(&file, 3);
        assert_eq!(pages(&file), vec![(3, Status::Irreparable)]);
        assert!(!pending().iter().any(|(p, _, _)| *p == canonical(&file)));
        assert!(!wait_repaired(&file, Duration::from_secs(30)).await);
        forget_file(&file);
        assert!(pages(&file).is_empty());
    }
}
