//! The repair task (asking partners, writing their answer) and the
//! answering side (a page at rest for a partner).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio_util::codec::Framed;

use super::history::{History, PageStatus};
use super::{PageRequest, SumsRequest};
use crate::engine::damage::{self, Status};
use crate::engine::{checksum, Database, Engine, PageRepair};
use crate::log::Lsn;
use crate::replication::wire::{Message, WireCodec};

/// How long one question to a partner may take, connection included.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a secondary redoes toward the asked LSN before it answers
/// that it is behind; also how long an asker waits for its own redo.
const REDO_WAIT: Duration = Duration::from_secs(2);
/// Rounds of asking before a page whose partners did not all say
/// "damaged" (unreachable, behind) is given up.
const ROUNDS: u32 = 5;
/// How long a page given up waits before it is tried again, the first time;
/// the wait doubles after each try up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two tries of a page given up.
const RETRY_MAX: Duration = Duration::from_secs(10);
/// How long a secondary that resumed data movement to write a page it was
/// suspended for redoes toward the copy's LSN (it may have fallen behind
/// by the whole suspension).
const RESUME_WAIT: Duration = Duration::from_secs(60);
/// The answer of a partner whose copy is damaged too starts with this.
const DAMAGED_THERE: &str = "damaged there too";

/// Who can give this replica a good copy of a database's pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partners {
    /// The database's availability group.
    pub group: String,
    /// The group's cluster (partners of another cluster refuse).
    pub cluster_id: String,
    /// This replica is the primary (it asks SYNCHRONIZED secondaries).
    pub primary_here: bool,
    /// `(replica, endpoint)` to ask, in order.
    pub replicas: Vec<(String, SocketAddr)>,
    /// On a secondary, the group's other secondaries: its scrub asks them
    /// whether the primary's copy of a page is the odd one out before it
    /// takes the primary's copy. Empty on a primary.
    pub others: Vec<(String, SocketAddr)>,
}

/// What the repair task needs to know of the availability groups.
pub trait Topology: Send + Sync + 'static {
    /// The partners of `database`, or None when it is in no availability
    /// group here.
    fn partners(&self, database: &str) -> Option<Partners>;
    /// Suspends data movement of `database` on this secondary because a
    /// page of it could not be repaired (`Some(why)`), or lifts that
    /// suspension (`None`). Nothing happens on a primary or outside any
    /// availability group.
    fn suspend_for_page(&self, database: &str, why: Option<String>);
}

/// Why a question to a partner brought no page.
#[derive(Debug, thiserror::Error)]
enum AskError {
    #[error("replica \"{replica}\" could not be reached at {endpoint}: {detail}")]
    Unreachable {
        replica: String,
        endpoint: SocketAddr,
        detail: String,
    },
    #[error("replica \"{replica}\" has no good copy: {reason}")]
    NoCopy { replica: String, reason: String },
}

/// Starts the node's repair task: it takes up every damaged page the VFS
/// reports, once, and records each step in `history`.
pub fn spawn(engine: Arc<Engine>, topology: Arc<dyn Topology>, history: Arc<History>) {
    tokio::spawn(async move {
        let mut changes = damage::changes();
        loop {
            for (path, pgno, cause) in damage::pending() {
                let Some(db) = database_at(&engine, &path) else {
                    continue;
                };
                damage::set_status(&path, pgno, Status::Repairing);
                let found = match cause {
                    damage::Cause::BadChecksum => "the page failed its checksum (BAD_CHECKSUM)",
                    damage::Cause::Mismatch => "the scrub found the page differs from the copies of the replicas that agree against it (a lost or misdirected write)",
                };
                history.record(
                    db.name(),
                    pgno,
                    PageStatus::QueuedForRequest,
                    None,
                    &format!("{found}; asking a partner replica"),
                    now_us(),
                );
                tokio::spawn(repair(db, pgno, topology.clone(), history.clone()));
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    });
}

/// The open database whose file is `path`.
pub(super) fn database_at(engine: &Engine, path: &Path) -> Option<Arc<Database>> {
    engine.names().into_iter().find_map(|name| {
        let db = engine.database(&name).ok()?;
        let same = std::fs::canonicalize(db.path()).ok()? == path;
        same.then_some(db)
    })
}

/// Repairs page `pgno` of `db`; a page it cannot repair now is given up
/// (irreparable, and on a secondary data movement is suspended) and tried
/// again at a slow pace until it is repaired, its copy here verifies again,
/// or the page is forgotten (its database dropped or replaced).
async fn repair(db: Arc<Database>, pgno: u32, topology: Arc<dyn Topology>, history: Arc<History>) {
    let why = match attempt(&db, pgno, &*topology, &history, false).await {
        Ok(()) => return,
        Err(why) => why,
    };
    give_up(&db, pgno, &history, &why);
    settle_suspension(&db, &*topology);
    let mut wait = RETRY_FIRST;
    loop {
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_MAX);
        let still_given_up = damage::pages(db.path())
            .iter()
            .any(|(p, status)| *p == pgno && *status == Status::Irreparable);
        if !still_given_up {
            settle_suspension(&db, &*topology);
            return;
        }
        if let Ok((lsn, Ok(_))) = db.page_at_rest(pgno).await {
            // Rewritten by redo, or put right underneath this node.
            damage::clear(db.path(), pgno);
            history.record(
                db.name(),
                pgno,
                PageStatus::Repaired,
                None,
                &format!("the page verifies again here at LSN {lsn}"),
                now_us(),
            );
            settle_suspension(&db, &*topology);
            return;
        }
        let outcome = attempt(&db, pgno, &*topology, &history, true).await;
        settle_suspension(&db, &*topology);
        if outcome.is_ok() {
            return;
        }
    }
}

/// Asks the partners for page `pgno` (a few rounds) and writes the first
/// good copy; the reasons it could not when it could not. `retrying`: the
/// page was given up before, so nothing is recorded until a copy arrives,
/// and a secondary suspended for want of a page resumes data movement
/// before it writes the copy (redo must reach the copy's LSN first).
async fn attempt(
    db: &Arc<Database>,
    pgno: u32,
    topology: &dyn Topology,
    history: &History,
    retrying: bool,
) -> Result<(), String> {
    let mut reasons = Vec::new();
    for round in 0..ROUNDS {
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(200 * u64::from(round))).await;
        }
        let Some(partners) = topology.partners(db.name()) else {
            return Err("the database is in no availability group here: no replica holds a copy; restore it from a backup".into());
        };
        if partners.replicas.is_empty() {
            reasons.push(if partners.primary_here {
                "no secondary is SYNCHRONIZED".to_string()
            } else {
                "the primary is not known".to_string()
            });
            continue;
        }
        reasons.clear();
        let mut damaged_everywhere = true;
        for (replica, endpoint) in &partners.replicas {
            let request = PageRequest {
                cluster_id: partners.cluster_id.clone(),
                group: partners.group.clone(),
                database: db.name().to_string(),
                pgno,
                at_lsn: db.applied_lsn(),
            };
            let (lsn, image) = match ask(replica, *endpoint, &request).await {
                Ok(answer) => answer,
                Err(e) => {
                    damaged_everywhere &= matches!(&e, AskError::NoCopy { reason, .. } if reason.starts_with(DAMAGED_THERE));
                    reasons.push(e.to_string());
                    continue;
                }
            };
            damaged_everywhere = false;
            if retrying {
                damage::set_status(db.path(), pgno, Status::Repairing);
                topology.suspend_for_page(db.name(), None);
            }
            history.record(
                db.name(),
                pgno,
                PageStatus::QueuedForRepair,
                Some(replica),
                &format!("replica \"{replica}\" sent its copy at LSN {lsn}"),
                now_us(),
            );
            let redo_wait = if retrying { RESUME_WAIT } else { REDO_WAIT };
            match write(db, pgno, image, lsn, redo_wait).await {
                Ok(how) => {
                    damage::clear(db.path(), pgno);
                    history.record(
                        db.name(),
                        pgno,
                        PageStatus::Repaired,
                        Some(replica),
                        &how,
                        now_us(),
                    );
                    tracing::info!(database = db.name(), pgno, partner = %replica, "page repaired: {how}");
                    return Ok(());
                }
                Err(e) => {
                    reasons.push(format!("replica \"{replica}\"'s copy: {e}"));
                    if retrying {
                        give_up(db, pgno, history, &reasons.join("; "));
                        return Err(reasons.join("; "));
                    }
                }
            }
        }
        if damaged_everywhere {
            break;
        }
    }
    Err(reasons.join("; "))
}

/// Writes a partner's copy, redoing up to it first (at most `redo_wait`)
/// on a secondary behind it.
async fn write(
    db: &Arc<Database>,
    pgno: u32,
    image: Vec<u8>,
    lsn: Lsn,
    redo_wait: Duration,
) -> Result<String, String> {
    let deadline = tokio::time::Instant::now() + redo_wait;
    loop {
        match db.write_repaired_page(pgno, image.clone(), lsn).await {
            Ok(PageRepair::Written { at }) => return Ok(format!("written at LSN {at}")),
            Ok(PageRepair::Replaced) => {
                return Ok("a record after the partner's copy rewrote the page".into())
            }
            Ok(PageRepair::Behind { at }) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(
                    database = db.name(),
                    pgno,
                    at,
                    lsn,
                    "waiting for redo before the repair"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(PageRepair::Behind { at }) => {
                return Err(format!(
                    "this replica's redo stayed at LSN {at}, behind the copy's LSN {lsn}"
                ))
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn give_up(db: &Database, pgno: u32, history: &History, why: &str) {
    damage::set_status(db.path(), pgno, Status::Irreparable);
    history.record(
        db.name(),
        pgno,
        PageStatus::Irreparable,
        None,
        why,
        now_us(),
    );
    tracing::error!(database = db.name(), pgno, "page is irreparable: {why}");
}

/// Suspends data movement of `db` (on a secondary) while any of its pages
/// is given up, naming the first; lifts it when none is left.
fn settle_suspension(db: &Database, topology: &dyn Topology) {
    let given_up = damage::pages(db.path())
        .into_iter()
        .find(|(_, status)| *status == Status::Irreparable);
    topology.suspend_for_page(
        db.name(),
        given_up.map(|(pgno, _)| suspension_reason(db.name(), pgno)),
    );
}

/// What a secondary suspended for want of page `pgno` shows as its error.
fn suspension_reason(database: &str, pgno: u32) -> String {
    format!(
        "page {pgno} of database \"{database}\" is damaged here and no partner replica gave a good copy of it \
         (sys.dm_hadr_auto_page_repair says why); data movement resumes on its own once the page is repaired — \
         repair the primary's copy or restore the database from a backup if it is damaged everywhere"
    )
}

/// One question to one partner, on a connection of its own, and its one
/// answer.
async fn exchange(
    replica: &str,
    endpoint: SocketAddr,
    question: Message,
) -> Result<Message, AskError> {
    let unreachable = |detail: String| AskError::Unreachable {
        replica: replica.to_string(),
        endpoint,
        detail,
    };
    let talk = async {
        let socket = crate::net::connect(endpoint)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let mut conn = Framed::new(socket, WireCodec);
        conn.send(question)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        match conn.next().await {
            Some(Ok(Message::Refuse { reason })) => Err(AskError::NoCopy {
                replica: replica.to_string(),
                reason,
            }),
            Some(Ok(answer)) => Ok(answer),
            Some(Err(e)) => Err(unreachable(e.to_string())),
            None => Err(unreachable("the connection closed".into())),
        }
    };
    tokio::time::timeout(ASK_TIMEOUT, talk)
        .await
        .unwrap_or_else(|_| Err(unreachable(format!("no answer within {ASK_TIMEOUT:?}"))))
}

/// Asks one partner for one page.
async fn ask(
    replica: &str,
    endpoint: SocketAddr,
    request: &PageRequest,
) -> Result<(Lsn, Vec<u8>), AskError> {
    let question = Message::PageRequest {
        cluster_id: request.cluster_id.clone(),
        group: request.group.clone(),
        database: request.database.clone(),
        pgno: request.pgno,
        at_lsn: request.at_lsn,
    };
    let no_copy = |reason: String| AskError::NoCopy {
        replica: replica.to_string(),
        reason,
    };
    match exchange(replica, endpoint, question).await? {
        Message::PageAnswer {
            image: Some(image),
            lsn,
            pgno,
            ..
        } if pgno == request.pgno && checksum::verify(&image) => Ok((lsn, image)),
        Message::PageAnswer { image: Some(_), .. } => {
            Err(no_copy("its answer did not verify".into()))
        }
        Message::PageAnswer { reason, .. } => Err(no_copy(reason)),
        other => Err(no_copy(format!("it answered {other:?}"))),
    }
}

/// Asks the primary for the stored checksums of a run of pages.
pub(super) async fn ask_sums(
    replica: &str,
    endpoint: SocketAddr,
    request: &SumsRequest,
) -> Result<(Lsn, Vec<u32>), String> {
    let question = Message::PageSumsRequest {
        cluster_id: request.cluster_id.clone(),
        group: request.group.clone(),
        database: request.database.clone(),
        from_pgno: request.from_pgno,
        count: request.count,
        at_lsn: request.at_lsn,
    };
    match exchange(replica, endpoint, question).await {
        Ok(Message::PageSums {
            lsn, sums, reason, ..
        }) if reason.is_empty() => Ok((lsn, sums)),
        Ok(Message::PageSums { reason, .. }) => Err(reason),
        Ok(other) => Err(format!("replica \"{replica}\" answered {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Waits, at most [`REDO_WAIT`], until `db`'s file is at `lsn` or past it;
/// not at all once a seeded copy is to replace `db` (`Database::retire`:
/// it never gets there, and the wait would hold the copy back).
pub(super) async fn redone_to(db: &Database, lsn: Lsn) -> bool {
    let deadline = tokio::time::Instant::now() + REDO_WAIT;
    while db.applied_lsn() < lsn {
        if tokio::time::Instant::now() >= deadline || db.is_retiring() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// Answers a partner's `PageSumsRequest` for `db` (the caller checked the
/// cluster and the group). A damaged page the read finds is reported like
/// any (the repair task takes it up) and counted in `status`: a partner's
/// scrub found it here.
pub async fn answer_sums(
    db: &Arc<Database>,
    request: &SumsRequest,
    status: &super::ScrubStatus,
) -> Result<(Lsn, Vec<u32>), String> {
    if db.fence().is_secondary() && !redone_to(db, request.at_lsn).await {
        return Err(format!(
            "this replica has redone database \"{}\" up to LSN {} only, not {}",
            db.name(),
            db.applied_lsn(),
            request.at_lsn
        ));
    }
    let count = request.count.min(1024);
    // Paced in pages of SQLite's default size, which availdb's databases
    // keep (a pace, not an account).
    status.pace_answer(u64::from(count) * 4096).await;
    match db.page_sums_at_rest(request.from_pgno, count).await {
        Ok(answer) => Ok(answer),
        Err(e) => {
            let e = db.name_damage(e);
            if let crate::engine::Error::CorruptPage {
                pgno: Some(pgno), ..
            } = e
            {
                status.found_damaged(db, pgno, false);
            }
            Err(format!("cannot read the pages' checksums: {e}"))
        }
    }
}

/// Answers a partner's `PageRequest` for `db` (the caller checked the
/// cluster and the group): on a secondary after redoing up to the asked
/// LSN, the page as the file holds it at rest, and that LSN.
pub async fn answer(db: &Arc<Database>, request: &PageRequest) -> Result<(Lsn, Vec<u8>), String> {
    if db.fence().is_secondary() && !redone_to(db, request.at_lsn).await {
        return Err(format!(
            "this replica has redone database \"{}\" up to LSN {} only, not {}",
            db.name(),
            db.applied_lsn(),
            request.at_lsn
        ));
    }
    match db.page_at_rest(request.pgno).await {
        Ok((lsn, Ok(image))) => Ok((lsn, image)),
        Ok((_, Err(e))) => Err(format!("{DAMAGED_THERE}: {e}")),
        Err(e) => Err(format!("cannot read the page: {e}")),
    }
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy that a seeded one is to replace never reaches the primary's
    /// LSN: a comparison waiting for it gives up at once instead of
    /// holding the copy for up to `REDO_WAIT` (which held a seeded
    /// replica back 1.2–1.4 s). Virtual time: only the waiting counts.
    #[tokio::test(start_paused = true)]
    async fn a_retired_copy_is_not_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let db =
            Database::open("app", &dir.path().join("app.db"), &dir.path().join("log")).unwrap();
        let waited = tokio::time::Instant::now();
        assert!(!redone_to(&db, u64::MAX).await, "never redone that far");
        assert!(waited.elapsed() >= REDO_WAIT, "a live copy is waited for");
        db.retire();
        let waited = tokio::time::Instant::now();
        assert!(!redone_to(&db, u64::MAX).await);
        assert_eq!(
            waited.elapsed(),
            Duration::ZERO,
            "a retired copy is not waited for"
        );
    }
}
