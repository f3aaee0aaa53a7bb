//! Continuous scrubbing: every replica reads every page of its availability
//! databases from disk in the background, at a bounded rate, with each
//! page's checksum verified — so a damaged page that no query reads (a cold
//! page) is found and repaired like one a query hit.
//!
//! A pass goes through a database's pages in order, [`CHUNK_PAGES`] at a
//! time on a pooled reader whose cache is dropped first, and sleeps after
//! each chunk so that the bytes read stay under the rate ([`delay_us`],
//! pure). **The rate adapts to load** ([`pace`], pure): while the node is
//! busy — the database took writes during the chunk (its applied LSN
//! moved: commits on a primary, redo on a secondary) or the node ran at
//! least [`BUSY_STATEMENTS_PER_S`] client statements and commits a second
//! since the previous chunk ([`busy_rate`]: a monitoring poll does not
//! count) — the scrub reads
//! at 1/[`BUSY_SHARE`] of its rate, and at the full rate once it is idle.
//! A busy node also answers its partners' comparisons
//! ([`ScrubStatus::pace_answer`]) no faster than that, which slows their
//! scrubs as its own (a secondary does not see the primary's reads):
//! the scrub's reads and comparisons take CPU that queries need
//! (`scripts/bench repair` measured 0.68x the commit TPS and 5x the read
//! p99 with the scrub at its full default rate under load on a 2-core
//! machine).
//! A damaged page is reported by the read (the VFS), taken up by the repair
//! task, and the pass goes on after it. A database whose file is part new,
//! part old (a secondary inside a full image) is skipped until the image is
//! whole: its pages not redone yet read as zeros.
//!
//! **Passes at once.** A statement that fails with SQLITE_CORRUPT where no
//! page failed its checksum (SQLite's B-tree found a page inconsistent that
//! is sealed but wrong) makes its file a suspect
//! ([`crate::engine::damage::suspect`]): a pass of that database starts at
//! once, unpaced, beside the scheduled ones (on a secondary it compares
//! with the primary, which finds a sealed but wrong page), even when the
//! scheduled scrub is off.
//!
//! Progress per database (`sys.dm_hadr_page_scrub_status`): pages, pages
//! verified in the current pass, passes completed, when the last one
//! ended, damaged pages found, passes started at once and why.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::service::{ask_sums, database_at, redone_to, Partners, Topology};
use super::SumsRequest;
use crate::engine::{damage, Database, Engine, Error};

/// Bytes read per second when nothing else is configured (4 MiB/s;
/// `availdb server --scrub-kib-per-s`).
pub const DEFAULT_RATE_BYTES: u64 = 4 << 20;
/// Pages read in one go.
pub const CHUNK_PAGES: u32 = 64;
/// While the node is busy, a scrub reads at this fraction of the rate
/// (1/8: 512 KiB/s at the default rate).
pub const BUSY_SHARE: u64 = 8;
/// Client statements and commits a second from which a node is busy.
pub const BUSY_STATEMENTS_PER_S: u64 = 100;

/// Whether `activity` client statements and commits in `elapsed_us` make
/// the node busy. Pure.
pub fn busy_rate(activity: u64, elapsed_us: u64) -> bool {
    u128::from(activity) * 1_000_000
        >= u128::from(BUSY_STATEMENTS_PER_S) * u128::from(elapsed_us.max(1))
}

/// Client statements and commits this node has counted.
fn activity() -> u64 {
    let telemetry = crate::telemetry::get();
    telemetry.statements.get() + telemetry.commits.get()
}
/// A database's passes start at most this often (a small database is not
/// read over and over).
const PASS_EVERY: Duration = Duration::from_secs(5);
/// Wait between rounds when there is nothing to scrub.
const IDLE: Duration = Duration::from_secs(1);

/// How long to wait before reading on, having read `bytes` in
/// `elapsed_us` since the chunk began, at `rate` bytes a second (0 for no
/// wait).
pub fn delay_us(bytes: u64, elapsed_us: u64, rate: u64) -> u64 {
    if rate == 0 {
        return 0;
    }
    let due_us = (u128::from(bytes) * 1_000_000 / u128::from(rate)).min(u128::from(u64::MAX));
    (due_us as u64).saturating_sub(elapsed_us)
}

/// The rate a pass reads at after a chunk, from the configured `rate`
/// (bytes a second, 0 for unpaced) and whether the node was busy during
/// that chunk: an eighth of it when busy, never 0 (which would mean
/// unpaced). Pure.
pub fn pace(rate: u64, busy: bool) -> u64 {
    if rate == 0 || !busy {
        rate
    } else {
        (rate / BUSY_SHARE).max(1)
    }
}

/// One database's scrub progress.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubRow {
    /// The database.
    pub database: String,
    /// Pages in its file at the last chunk.
    pub pages: u32,
    /// Pages verified in the current pass.
    pub verified: u32,
    /// Passes completed since the node started.
    pub passes: u64,
    /// When the last pass ended (µs since the Unix epoch).
    pub last_pass_end_us: Option<i64>,
    /// How long the last pass took (µs), its pauses for the rate included.
    pub last_pass_us: Option<u64>,
    /// Damaged pages the scrub found since the node started (failing
    /// their checksum, or outvoted by the other replicas' copies), by this
    /// node's passes or by a partner's comparison reading this node's
    /// pages.
    pub damaged_found: u64,
    /// Of those, pages that passed their checksum but differed, at a common
    /// LSN, from the primary's (on a secondary) or from the copies of a
    /// majority of the replicas (on the primary).
    pub mismatches_found: u64,
    /// Passes started at once, each on a SQLITE_CORRUPT that no page
    /// checksum explained.
    pub immediate_passes: u64,
    /// The error that started the last of them.
    pub last_immediate_reason: Option<String>,
    /// When the last of them ended (µs since the Unix epoch).
    pub last_immediate_end_us: Option<i64>,
}

/// Why a pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// The rate-limited background schedule.
    Scheduled,
    /// At once, unpaced: a statement found the file malformed.
    Immediate,
}

/// Every database's scrub progress on this node.
#[derive(Debug, Default)]
pub struct ScrubStatus {
    rows: Mutex<BTreeMap<String, ScrubRow>>,
    /// `(database, page)` counted as found and not repaired since: a page
    /// found twice (by this node's pass and a partner's comparison) counts
    /// once.
    counted: Mutex<std::collections::BTreeSet<(String, u32)>>,
    /// This node's scrub rate (bytes a second; 0: the default).
    rate: std::sync::atomic::AtomicU64,
    /// When the next paced answer to a partner may be read.
    next_answer: Mutex<Option<tokio::time::Instant>>,
    /// Client statements and commits counted at the last answer, and when.
    activity_seen: Mutex<Option<(u64, tokio::time::Instant)>>,
}

impl ScrubStatus {
    /// Waits before reading `bytes` of pages for a partner's comparison:
    /// while this node is busy (`busy_rate` since the previous answer),
    /// answers together read no more than `pace` allows this node's own
    /// scrub when busy; an idle node answers at once. The askers wait for
    /// their answers, so their scrubs slow down with it.
    pub async fn pace_answer(&self, bytes: u64) {
        use std::sync::atomic::Ordering;
        let now = (activity(), tokio::time::Instant::now());
        let seen = self
            .activity_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(now);
        let busy = seen.is_some_and(|(count, at)| {
            busy_rate(now.0 - count, now.1.duration_since(at).as_micros() as u64)
        });
        if !busy {
            return;
        }
        let rate = match self.rate.load(Ordering::Relaxed) {
            0 => DEFAULT_RATE_BYTES,
            rate => rate,
        };
        let cost = Duration::from_micros(delay_us(bytes, 0, pace(rate, true)));
        let at = {
            let mut next = self.next_answer.lock().unwrap_or_else(|e| e.into_inner());
            let now = tokio::time::Instant::now();
            let start = next.map_or(now, |n| n.max(now));
            *next = Some(start + cost);
            start
        };
        tokio::time::sleep_until(at).await;
    }

    fn update(&self, database: &str, f: impl FnOnce(&mut ScrubRow)) {
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        let row = rows
            .entry(database.to_string())
            .or_insert_with(|| ScrubRow {
                database: database.to_string(),
                ..ScrubRow::default()
            });
        f(row);
    }

    /// Counts page `pgno` of `db` found damaged by a scrub — this node's,
    /// or a partner's comparison reading this node's pages — once until it
    /// is repaired; `mismatch`: it passed its checksum but was outvoted.
    pub fn found_damaged(&self, db: &Database, pgno: u32, mismatch: bool) {
        let still_damaged: Vec<u32> = damage::pages(db.path())
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        let first = {
            let mut counted = self.counted.lock().unwrap_or_else(|e| e.into_inner());
            counted.retain(|(name, p)| name != db.name() || still_damaged.contains(p));
            counted.insert((db.name().to_string(), pgno))
        };
        if first {
            self.update(db.name(), |r| {
                r.damaged_found += 1;
                r.mismatches_found += u64::from(mismatch);
            });
        }
    }

    /// Every database's row.
    pub fn rows(&self) -> Vec<ScrubRow> {
        let rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        rows.values().cloned().collect()
    }
}

/// Starts the node's scrubber: scheduled passes at `rate` bytes a second
/// (none when `rate` is 0), and a pass at once of every database a
/// statement found malformed where no checksum failed.
pub fn spawn_scrubber(
    engine: Arc<Engine>,
    topology: Arc<dyn Topology>,
    status: Arc<ScrubStatus>,
    rate: u64,
) {
    status
        .rate
        .store(rate, std::sync::atomic::Ordering::Relaxed);
    tokio::spawn(immediate_passes(
        engine.clone(),
        topology.clone(),
        status.clone(),
    ));
    if rate == 0 {
        return;
    }
    tokio::spawn(async move {
        let mut last_pass: BTreeMap<String, tokio::time::Instant> = BTreeMap::new();
        loop {
            let mut scrubbed = false;
            for name in engine.names() {
                let Some(partners) = topology.partners(&name) else {
                    continue;
                };
                let due = last_pass
                    .get(&name)
                    .is_none_or(|at| at.elapsed() >= PASS_EVERY);
                let Ok(db) = engine.database(&name) else {
                    continue;
                };
                if !due || db.inside_image() || replaced(&engine, &name) {
                    continue;
                }
                last_pass.insert(name.clone(), tokio::time::Instant::now());
                scrub(
                    &engine,
                    &db,
                    Some(&partners),
                    &status,
                    rate,
                    Pass::Scheduled,
                )
                .await;
                scrubbed = true;
            }
            if !scrubbed {
                tokio::time::sleep(IDLE).await;
            }
        }
    });
}

/// Runs a pass at once, unpaced, of every suspected database (one at a
/// time per database: a suspect reported while its pass runs is taken by
/// the next).
async fn immediate_passes(
    engine: Arc<Engine>,
    topology: Arc<dyn Topology>,
    status: Arc<ScrubStatus>,
) {
    let running: Arc<Mutex<std::collections::BTreeSet<String>>> = Arc::default();
    let mut changes = damage::changes();
    loop {
        for (path, error) in damage::take_suspects() {
            let Some(db) = database_at(&engine, &path) else {
                continue;
            };
            let name = db.name().to_string();
            if !running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.clone())
            {
                continue;
            }
            status.update(&name, |r| {
                r.immediate_passes += 1;
                r.last_immediate_reason = Some(error.clone());
            });
            tracing::warn!(database = %name, "scrubbing at once: {error}");
            let (engine, topology, status, running) = (
                engine.clone(),
                topology.clone(),
                status.clone(),
                running.clone(),
            );
            tokio::spawn(async move {
                let partners = topology.partners(&name);
                scrub(&engine, &db, partners.as_ref(), &status, 0, Pass::Immediate).await;
                status.update(&name, |r| r.last_immediate_end_us = Some(now_us()));
                running
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&name);
            });
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// A copy restored here waits to replace `name` (a seed, or a manual
/// restore over a refused copy): the scrub lets go of the old one, which
/// cannot be replaced while anything holds it (a pass also stops at once
/// when the old copy is retired, and its comparisons stop waiting).
fn replaced(engine: &Engine, name: &str) -> bool {
    crate::backup::is_restoring(engine.data_dir(), name)
}

/// One pass over `db`, comparing with the primary on a secondary (when
/// `partners` are known), at `rate` bytes a second (0: unpaced). Only a
/// scheduled pass shows its progress; both count what they find.
async fn scrub(
    engine: &Engine,
    db: &Arc<Database>,
    partners: Option<&Partners>,
    status: &ScrubStatus,
    rate: u64,
    pass: Pass,
) {
    let scheduled = pass == Pass::Scheduled;
    let started = tokio::time::Instant::now();
    let mut pgno = 1u32;
    let mut page_size = 4096u64;
    if scheduled {
        status.update(db.name(), |r| r.verified = 0);
    }
    // What the node did since the previous chunk began (its sleep included).
    let mut window = (db.applied_lsn(), activity(), tokio::time::Instant::now());
    let mut retire = db.subscribe_retire();
    loop {
        if db.inside_image() || replaced(engine, db.name()) || db.is_retiring() {
            return;
        }
        let chunk_started = tokio::time::Instant::now();
        let chunk = {
            let db = db.clone();
            tokio::task::spawn_blocking(move || db.scrub_pages(pgno, CHUNK_PAGES)).await
        };
        let next = match chunk {
            Ok(Ok((pages, size))) => {
                page_size = u64::from(size);
                let read = CHUNK_PAGES.min(pages.saturating_sub(pgno - 1));
                match partners {
                    Some(p) if p.primary_here => {
                        compare_with_secondaries(db, p, pgno, read, status).await
                    }
                    Some(p) => compare_with_primary(db, p, pgno, read, status).await,
                    None => {}
                }
                status.update(db.name(), |r| {
                    r.pages = pages;
                    if scheduled {
                        r.verified += read;
                    }
                });
                if pgno.saturating_add(CHUNK_PAGES) > pages {
                    if scheduled {
                        status.update(db.name(), |r| {
                            r.passes += 1;
                            r.last_pass_end_us = Some(now_us());
                            r.last_pass_us = Some(started.elapsed().as_micros() as u64);
                        });
                    }
                    return;
                }
                pgno + CHUNK_PAGES
            }
            Ok(Err(Error::CorruptPage {
                pgno: Some(bad), ..
            })) => {
                tracing::warn!(
                    database = db.name(),
                    pgno = bad,
                    "the scrub found a damaged page"
                );
                status.found_damaged(db, bad, false);
                if scheduled {
                    status.update(db.name(), |r| r.verified += bad.saturating_sub(pgno));
                }
                bad + 1
            }
            Ok(Err(e)) => {
                tracing::debug!(database = db.name(), "scrub pass stopped: {e}");
                return;
            }
            Err(e) => {
                tracing::warn!(database = db.name(), "scrub chunk failed: {e}");
                return;
            }
        };
        let bytes = u64::from(next - pgno) * page_size;
        pgno = next;
        let elapsed = chunk_started.elapsed().as_micros() as u64;
        let (lsn_before, activity_before, since) = window;
        window = (db.applied_lsn(), activity(), tokio::time::Instant::now());
        let busy = window.0 != lsn_before
            || busy_rate(
                window.1 - activity_before,
                window.2.duration_since(since).as_micros() as u64,
            );
        let pause = Duration::from_micros(delay_us(bytes, elapsed, pace(rate, busy)));
        // A copy to be replaced is let go at once, not after the pause.
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = retire.changed() => return,
        }
    }
}

/// Whether the primary's copy of a page is the odd one out: a strict
/// majority of all the copies compared (the primary's, with stored checksum
/// `primary`, and the secondaries' `secondaries`) agree on another checksum.
/// Pure.
pub fn primary_outvoted(primary: u32, secondaries: &[u32]) -> bool {
    let copies = secondaries.len() + 1;
    secondaries
        .iter()
        .filter(|s| **s != primary)
        .any(|s| 2 * secondaries.iter().filter(|t| *t == s).count() > copies)
}

/// A secondary compares pages `from..from + count` with the primary's at
/// a common LSN: a page whose stored checksum differs (and that no record
/// since the primary's LSN rewrote here) is reported damaged, so the repair
/// task replaces it with the primary's copy — unless the group's other
/// secondaries side with this one, which makes the primary's copy the odd
/// one out: that page is left to the primary's scrub (it repairs its own
/// copy from the majority). Nothing is compared when the primary cannot be
/// asked or this replica's redo stays behind.
async fn compare_with_primary(
    db: &Arc<Database>,
    partners: &Partners,
    from: u32,
    count: u32,
    status: &ScrubStatus,
) {
    let Some((replica, endpoint)) = partners.replicas.first() else {
        return;
    };
    let request = SumsRequest {
        cluster_id: partners.cluster_id.clone(),
        group: partners.group.clone(),
        database: db.name().to_string(),
        from_pgno: from,
        count,
        at_lsn: db.applied_lsn(),
    };
    let (lsn, sums) = match ask_sums(replica, *endpoint, &request).await {
        Ok(answer) => answer,
        Err(e) => {
            tracing::debug!(database = db.name(), from, "scrub comparison skipped: {e}");
            return;
        }
    };
    if !redone_to(db, lsn).await {
        return;
    }
    let Ok(Some(differ)) = db.differing_pages_at_rest(from, sums.clone(), lsn).await else {
        return;
    };
    for pgno in differ {
        let primary = sums[(pgno - from) as usize];
        if let Some(ours) = outvoting_copies(db, partners, pgno, lsn).await {
            if primary_outvoted(primary, &ours) {
                tracing::warn!(
                    database = db.name(),
                    pgno,
                    lsn,
                    "the primary's copy of a page differs from the secondaries': left to the primary's scrub"
                );
                continue;
            }
        }
        tracing::warn!(
            database = db.name(),
            pgno,
            lsn,
            "the scrub found a page that differs from the primary's"
        );
        damage::report_as(db.path(), pgno, damage::Cause::Mismatch);
        status.found_damaged(db, pgno, true);
    }
}

/// This secondary's stored checksum of `pgno`, then the group's other
/// secondaries' (those that answer) at `lsn` or later; None when this
/// replica's own cannot be read.
async fn outvoting_copies(
    db: &Arc<Database>,
    partners: &Partners,
    pgno: u32,
    lsn: crate::log::Lsn,
) -> Option<Vec<u32>> {
    let (_, ours) = db.page_sums_at_rest(pgno, 1).await.ok()?;
    let mut copies = vec![*ours.first()?];
    for (replica, endpoint) in &partners.others {
        let request = SumsRequest {
            cluster_id: partners.cluster_id.clone(),
            group: partners.group.clone(),
            database: db.name().to_string(),
            from_pgno: pgno,
            count: 1,
            at_lsn: lsn,
        };
        if let Ok((_, sums)) = ask_sums(replica, *endpoint, &request).await {
            copies.extend(sums.first());
        }
    }
    Some(copies)
}

/// The primary compares pages `from..from + count` with its SYNCHRONIZED
/// secondaries' at a common LSN (each secondary first redoes up to the
/// primary's LSN): a page whose copies on a strict majority of the
/// replicas agree against the primary's ([`primary_outvoted`]) is sealed
/// but wrong here — a lost or misdirected write on the primary — and is
/// reported damaged, so the repair task replaces it from a secondary. A
/// secondary whose copy differs alone is left to its own scrub; pages a
/// record rewrote since a secondary's LSN count as agreeing with the
/// primary. Nothing is decided with fewer than two secondaries answering.
async fn compare_with_secondaries(
    db: &Arc<Database>,
    partners: &Partners,
    from: u32,
    count: u32,
    status: &ScrubStatus,
) {
    let at_lsn = db.applied_lsn();
    let mut answers = Vec::new();
    for (replica, endpoint) in &partners.replicas {
        let request = SumsRequest {
            cluster_id: partners.cluster_id.clone(),
            group: partners.group.clone(),
            database: db.name().to_string(),
            from_pgno: from,
            count,
            at_lsn,
        };
        match ask_sums(replica, *endpoint, &request).await {
            Ok((lsn, sums)) => answers.push((lsn, sums)),
            Err(e) => {
                tracing::debug!(database = db.name(), from, replica = %replica, "scrub comparison skipped: {e}")
            }
        }
    }
    if answers.len() < 2 {
        return;
    }
    let Ok((_, ours)) = db.page_sums_at_rest(from, count).await else {
        return;
    };
    // For each secondary, the checksum it holds of each page, or ours where
    // it agrees (or a record since its LSN rewrote the page).
    let mut theirs: Vec<Vec<u32>> = Vec::new();
    for (lsn, sums) in answers {
        let Ok(Some(differ)) = db.differing_pages_at_rest(from, sums.clone(), lsn).await else {
            return;
        };
        theirs.push(
            ours.iter()
                .enumerate()
                .map(|(i, mine)| {
                    let pgno = from + i as u32;
                    match sums.get(i) {
                        Some(s) if differ.contains(&pgno) => *s,
                        _ => *mine,
                    }
                })
                .collect(),
        );
    }
    for (i, mine) in ours.iter().enumerate() {
        let copies: Vec<u32> = theirs.iter().map(|t| t[i]).collect();
        if !primary_outvoted(*mine, &copies) {
            continue;
        }
        let pgno = from + i as u32;
        tracing::warn!(
            database = db.name(),
            pgno,
            "the scrub found a page of the primary that differs from the copies of a majority of the replicas"
        );
        damage::report_as(db.path(), pgno, damage::Cause::Mismatch);
        status.found_damaged(db, pgno, true);
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

    #[test]
    fn the_primary_is_repaired_only_when_a_strict_majority_of_all_copies_agree_against_it() {
        let table: [(u32, &[u32], bool); 9] = [
            // (primary, secondaries, outvoted)
            (1, &[2, 2], true),
            (1, &[1, 1], false),
            (1, &[2, 1], false),
            (1, &[2, 3], false),
            // One secondary against the primary: no majority either way.
            (1, &[2], false),
            // Two of four copies is no majority.
            (1, &[2, 2, 1], false),
            (1, &[2, 2, 2], true),
            (1, &[2, 2, 3, 3], false),
            (1, &[2, 2, 2, 1], true),
        ];
        for (primary, secondaries, want) in table {
            assert_eq!(
                primary_outvoted(primary, secondaries),
                want,
                "primary {primary}, secondaries {secondaries:?}"
            );
        }
    }

    #[test]
    fn the_scrub_slows_to_an_eighth_of_its_rate_while_the_node_is_busy() {
        let table = [
            // (rate, busy, expected rate)
            (4 << 20, false, 4 << 20),
            (4 << 20, true, 512 << 10),
            (0, true, 0),
            (0, false, 0),
            (7, true, 1),
        ];
        for (rate, busy, want) in table {
            assert_eq!(pace(rate, busy), want, "{rate} B/s, busy {busy}");
        }
    }

    #[test]
    fn a_node_is_busy_from_a_hundred_client_statements_a_second() {
        let table = [
            // (statements and commits, elapsed µs, busy)
            (0, 1_000_000, false),
            (2, 1_000_000, false),
            (99, 1_000_000, false),
            (100, 1_000_000, true),
            (1, 5_000, true),
            (1, 20_000, false),
            (0, 0, false),
            (1, 0, true),
        ];
        for (activity, elapsed, want) in table {
            assert_eq!(
                busy_rate(activity, elapsed),
                want,
                "{activity} in {elapsed} µs"
            );
        }
    }

    #[tokio::test]
    async fn a_busy_node_answers_its_partners_comparisons_at_its_busy_pace() {
        let status = ScrubStatus::default();
        status
            .rate
            .store(8 << 20, std::sync::atomic::Ordering::Relaxed);
        let busy = || {
            for _ in 0..1000 {
                crate::telemetry::get().statements.inc();
            }
        };
        // The first answer only starts the count; the next is busy and
        // read at once.
        status.pace_answer(64 << 10).await;
        busy();
        status.pace_answer(64 << 10).await;
        let first = tokio::time::Instant::now();
        busy();
        status.pace_answer(64 << 10).await;
        busy();
        status.pace_answer(64 << 10).await;
        // Two more answers of 64 KiB at an eighth of 8 MiB/s: 62.5 ms each
        // (a lower bound: the clock only goes forward).
        assert!(
            first.elapsed() >= Duration::from_millis(120),
            "{:?}",
            first.elapsed()
        );
    }

    #[test]
    fn the_pace_keeps_the_bytes_read_under_the_rate() {
        let table = [
            // (bytes, elapsed µs, rate, expected delay µs)
            (0, 0, 1 << 20, 0),
            (1 << 20, 0, 1 << 20, 1_000_000),
            (1 << 20, 400_000, 1 << 20, 600_000),
            (1 << 20, 2_000_000, 1 << 20, 0),
            (4 << 20, 0, 4 << 20, 1_000_000),
            (4096, 0, 0, 0),
            (u64::MAX, 0, 1, u64::MAX),
        ];
        for (bytes, elapsed, rate, want) in table {
            assert_eq!(
                delay_us(bytes, elapsed, rate),
                want,
                "{bytes} B after {elapsed} µs at {rate} B/s"
            );
        }
    }
}
