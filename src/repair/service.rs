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
}

/// What the repair task needs to know of the availability groups.
pub trait Topology: Send + Sync + 'static {
    /// The partners of `database`, or None when it is in no availability
    /// group here.
    fn partners(&self, database: &str) -> Option<Partners>;
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
            for (path, pgno) in damage::pending() {
                let Some(db) = database_at(&engine, &path) else {
                    continue;
                };
                damage::set_status(&path, pgno, Status::Repairing);
                history.record(
                    db.name(),
                    pgno,
                    PageStatus::QueuedForRequest,
                    None,
                    "the page failed its checksum (BAD_CHECKSUM); asking a partner replica",
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
fn database_at(engine: &Engine, path: &Path) -> Option<Arc<Database>> {
    engine.names().into_iter().find_map(|name| {
        let db = engine.database(&name).ok()?;
        let same = std::fs::canonicalize(db.path()).ok()? == path;
        same.then_some(db)
    })
}

/// Repairs page `pgno` of `db`, or gives it up.
async fn repair(db: Arc<Database>, pgno: u32, topology: Arc<dyn Topology>, history: Arc<History>) {
    let mut reasons = Vec::new();
    for round in 0..ROUNDS {
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(200 * u64::from(round))).await;
        }
        let Some(partners) = topology.partners(db.name()) else {
            give_up(&db, pgno, &history, "the database is in no availability group here: no replica holds a copy; restore it from a backup");
            return;
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
            history.record(
                db.name(),
                pgno,
                PageStatus::QueuedForRepair,
                Some(replica),
                &format!("replica \"{replica}\" sent its copy at LSN {lsn}"),
                now_us(),
            );
            match write(&db, pgno, image, lsn).await {
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
                    return;
                }
                Err(e) => reasons.push(format!("replica \"{replica}\"'s copy: {e}")),
            }
        }
        if damaged_everywhere {
            break;
        }
    }
    give_up(&db, pgno, &history, &reasons.join("; "));
}

/// Writes a partner's copy, redoing up to it first on a secondary behind it.
async fn write(db: &Arc<Database>, pgno: u32, image: Vec<u8>, lsn: Lsn) -> Result<String, String> {
    let deadline = tokio::time::Instant::now() + REDO_WAIT;
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

/// Waits, at most [`REDO_WAIT`], until `db`'s file is at `lsn` or past it.
pub(super) async fn redone_to(db: &Database, lsn: Lsn) -> bool {
    let deadline = tokio::time::Instant::now() + REDO_WAIT;
    while db.applied_lsn() < lsn {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// Answers a partner's `PageSumsRequest` for `db` (the caller checked the
/// cluster and the group).
pub async fn answer_sums(
    db: &Arc<Database>,
    request: &SumsRequest,
) -> Result<(Lsn, Vec<u32>), String> {
    if db.fence().is_secondary() && !redone_to(db, request.at_lsn).await {
        return Err(format!(
            "this replica has redone database \"{}\" up to LSN {} only, not {}",
            db.name(),
            db.applied_lsn(),
            request.at_lsn
        ));
    }
    db.page_sums_at_rest(request.from_pgno, request.count.min(1024))
        .await
        .map_err(|e| format!("cannot read the pages' checksums: {e}"))
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
