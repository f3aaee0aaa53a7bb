//! The checks after the nemesis stopped, each a safety rule of
//! docs/ARCHITECTURE.md: exactly one primary within seconds (rule 2, and
//! liveness); on every replica every acknowledged id exactly once and
//! nothing never sent (rule 1), the bank's total and every balance
//! agreeing with the transfers, every large transaction whole (rule 4),
//! `PRAGMA integrity_check` ok; every replica page-identical to the
//! primary at the same LSN, and its log holding the same records at the
//! same LSNs (rule 3). A failed check is a [`Violation`], never a panic,
//! so the report always gets written.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::net::{connect, first, query, query_at, Endpoint, Rows};
use super::workload::{Op, WriterReport, ACCOUNTS, BIG_ROWS, OPENING};
use crate::common::group::{compare_pages, error_text, name, Group, APP, GROUP};
use crate::common::DEFAULT_DB;

/// One broken rule.
#[derive(Clone, Debug)]
pub struct Violation {
    /// Which check: `one_primary`, `acknowledged`, `bank`, `torn`,
    /// `integrity`, `pages`, `log`, `catch_up`, `read_your_writes`, …
    pub check: &'static str,
    pub node: Option<String>,
    pub detail: String,
}

impl Violation {
    fn new(check: &'static str, node: Option<usize>, detail: String) -> Violation {
        Violation {
            check,
            node: node.map(name),
            detail,
        }
    }
}

const BIG_QUERY: Duration = Duration::from_secs(120);

/// Waits until the group has exactly one primary: every node runs and
/// answers, every node's definition names the same primary at the same
/// epoch, that node takes writes and says PRIMARY, every other says
/// SECONDARY and refuses writes. (primary, epoch, time it took).
pub async fn one_primary(
    group: &mut Group,
    nodes: &[Endpoint],
    within: Duration,
) -> Result<(usize, u64, Duration), String> {
    let start = Instant::now();
    loop {
        let mut views = Vec::new();
        let mut problems = Vec::new();
        for (i, ep) in nodes.iter().enumerate() {
            if !group.nodes[i].is_running() {
                problems.push(format!("{} is not running", name(i)));
                continue;
            }
            let sql = format!(
                "SELECT g.primary_replica, g.epoch, (SELECT role_desc FROM \
                 sys.dm_hadr_availability_replica_states WHERE is_local) \
                 FROM sys.availability_groups g WHERE g.name = '{GROUP}'"
            );
            let row = query_at(ep, DEFAULT_DB, &sql, Duration::from_secs(3)).await;
            let ro = query_at(
                ep,
                APP,
                "SHOW transaction_read_only",
                Duration::from_secs(3),
            )
            .await;
            match (row, ro) {
                (Ok(row), Ok(ro)) if !row.is_empty() => views.push((
                    i,
                    row[0][0].clone().unwrap_or_default(),
                    row[0][1].clone().unwrap_or_default(),
                    row[0][2].clone().unwrap_or_default(),
                    first(&ro).as_deref() == Some("off"),
                )),
                (row, ro) => problems.push(format!("{}: {row:?} {ro:?}", name(i))),
            }
        }
        if problems.is_empty() {
            let writable: Vec<usize> = views.iter().filter(|v| v.4).map(|v| v.0).collect();
            let agreed: BTreeSet<(String, String)> =
                views.iter().map(|v| (v.1.clone(), v.2.clone())).collect();
            if let ([p], 1) = (writable.as_slice(), agreed.len()) {
                let roles_ok = views.iter().all(|v| {
                    let want = if v.0 == *p { "PRIMARY" } else { "SECONDARY" };
                    v.3 == want && v.1 == name(*p)
                });
                if roles_ok {
                    let epoch = views[0].2.parse().unwrap_or(0);
                    return Ok((*p, epoch, start.elapsed()));
                }
            }
            problems.push(format!(
                "(node, names primary, epoch, role, writable): {views:?}"
            ));
        }
        if start.elapsed() > within {
            return Err(format!(
                "not exactly one primary within {within:?}: {}",
                problems.join("; ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every id set the checks need, from the writers' reports.
pub struct Expected {
    pub acked: BTreeMap<Op, BTreeSet<i64>>,
    pub attempted: BTreeMap<Op, BTreeSet<i64>>,
}

impl Expected {
    pub fn of(reports: &[WriterReport]) -> Expected {
        let mut acked: BTreeMap<Op, BTreeSet<i64>> = BTreeMap::new();
        let mut attempted: BTreeMap<Op, BTreeSet<i64>> = BTreeMap::new();
        for r in reports {
            acked.entry(r.op).or_default().extend(&r.acked);
            attempted.entry(r.op).or_default().extend(&r.attempted);
        }
        Expected { acked, attempted }
    }
}

/// What one round of checks covered.
#[derive(Clone, Debug, Default)]
pub struct Coverage {
    /// Acknowledged commits looked up, summed over replicas.
    pub acked_checked: usize,
    /// Pages compared with the primary's, summed over secondaries.
    pub pages_compared: usize,
    /// Log records compared with the primary's, summed over secondaries.
    pub records_compared: usize,
    /// The LSN every replica was compared at.
    pub lsn: u64,
}

/// One round of checks with node `primary` as the primary.
pub async fn check_round(
    group: &Group,
    nodes: &[Endpoint],
    primary: usize,
    expected: &Expected,
    violations: &mut Vec<Violation>,
) -> Coverage {
    let mut coverage = Coverage::default();
    let secondaries: Vec<usize> = (0..nodes.len()).filter(|&i| i != primary).collect();
    match caught_up(nodes, primary, &secondaries, Duration::from_secs(180)).await {
        Ok(lsn) => coverage.lsn = lsn,
        Err(e) => violations.push(Violation::new("catch_up", None, e)),
    }
    for (i, ep) in nodes.iter().enumerate() {
        let client = match connect(&ep.conn(APP, 10, ""), Duration::from_secs(10)).await {
            Ok(c) => c,
            Err(e) => {
                violations.push(Violation::new("connect", Some(i), e));
                continue;
            }
        };
        coverage.acked_checked += check_data(&client, i, expected, violations).await;
    }
    let expected_pages = match pages(&nodes[primary]).await {
        Ok(p) => p,
        Err(e) => {
            violations.push(Violation::new("pages", Some(primary), e));
            return coverage;
        }
    };
    let expected_log = read_log(&group.nodes[primary].data_dir());
    for &i in &secondaries {
        match pages(&nodes[i]).await {
            Ok(actual) => match compare_pages(&expected_pages, &actual) {
                Ok(()) => coverage.pages_compared += actual.len(),
                Err(diff) => violations.push(Violation::new(
                    "pages",
                    Some(i),
                    format!(
                        "not page-identical to {} at LSN {}: {diff}",
                        name(primary),
                        coverage.lsn
                    ),
                )),
            },
            Err(e) => violations.push(Violation::new("pages", Some(i), e)),
        }
        let actual_log = read_log(&group.nodes[i].data_dir());
        match compare_logs(&expected_log, &actual_log) {
            Ok(n) => coverage.records_compared += n,
            Err(diff) => violations.push(Violation::new(
                "log",
                Some(i),
                format!("log differs from {}'s: {diff}", name(primary)),
            )),
        }
    }
    coverage
}

/// Waits until every secondary has hardened and redone the primary's log
/// end, in its own row and in the primary's row for it; the LSN.
async fn caught_up(
    nodes: &[Endpoint],
    primary: usize,
    secondaries: &[usize],
    within: Duration,
) -> Result<u64, String> {
    let deadline = Instant::now() + within;
    let rows_sql = format!(
        "SELECT replica, is_local, last_hardened_lsn, last_redone_lsn \
         FROM sys.dm_hadr_database_replica_states WHERE database_name = '{APP}'"
    );
    let end_sql = format!("SELECT log_end_lsn FROM sys.databases WHERE name = '{APP}'");
    let bound = Duration::from_secs(5);
    let mut last = String::new();
    loop {
        let end: Option<u64> = query_at(&nodes[primary], DEFAULT_DB, &end_sql, bound)
            .await
            .ok()
            .and_then(|r| first(&r))
            .and_then(|v| v.parse().ok());
        if let Some(end) = end {
            let seen = query_at(&nodes[primary], DEFAULT_DB, &rows_sql, bound)
                .await
                .unwrap_or_default();
            let mut behind = Vec::new();
            for &i in secondaries {
                let by_primary = lsns(&seen, &name(i), false);
                let own = query_at(&nodes[i], DEFAULT_DB, &rows_sql, bound)
                    .await
                    .ok()
                    .and_then(|rows| lsns(&rows, &name(i), true));
                let done = |l: Option<(u64, u64)>| l.is_some_and(|(h, r)| h >= end && r >= end);
                if !(done(by_primary) && done(own)) {
                    behind.push(format!(
                        "{}: primary's row {by_primary:?}, own row {own:?}",
                        name(i)
                    ));
                }
            }
            if behind.is_empty() {
                return Ok(end);
            }
            last = format!("log end {end}; (hardened, redone): {}", behind.join("; "));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "secondaries did not harden and redo {}'s log end within {within:?}: {last}",
                name(primary)
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn lsns(rows: &Rows, replica: &str, local: bool) -> Option<(u64, u64)> {
    rows.iter()
        .find(|r| {
            r[0].as_deref() == Some(replica)
                && matches!(r[1].as_deref(), Some("t" | "true" | "1")) == local
        })
        .map(|r| {
            let n = |v: &Option<String>| v.as_deref().and_then(|s| s.parse().ok()).unwrap_or(0);
            (n(&r[2]), n(&r[3]))
        })
}

/// The data checks on node `i`; returns the acknowledged ids looked up.
async fn check_data(
    client: &Client,
    i: usize,
    expected: &Expected,
    violations: &mut Vec<Violation>,
) -> usize {
    let mut checked = 0;
    for op in Op::ALL {
        let sql = format!("SELECT id, count(*) FROM {} GROUP BY id", op.table());
        match query(client, &sql, BIG_QUERY).await {
            Ok(rows) => {
                let counts: BTreeMap<i64, i64> = rows
                    .iter()
                    .filter_map(|r| {
                        Some((
                            r[0].as_deref()?.parse().ok()?,
                            r[1].as_deref()?.parse().ok()?,
                        ))
                    })
                    .collect();
                let empty = BTreeSet::new();
                let acked = expected.acked.get(&op).unwrap_or(&empty);
                let attempted = expected.attempted.get(&op).unwrap_or(&empty);
                checked += acked.len();
                if let Err(e) = check_ids(&counts, acked, attempted) {
                    violations.push(Violation::new(
                        "acknowledged",
                        Some(i),
                        format!("{}: {e}", op.table()),
                    ));
                }
            }
            Err(e) => violations.push(Violation::new("query", Some(i), format!("{sql}: {e}"))),
        }
    }
    let bank = format!(
        "SELECT (SELECT sum(balance) FROM accounts), \
                (SELECT count(*) FROM accounts a WHERE a.balance <> {OPENING} \
                   + (SELECT coalesce(sum(amount), 0) FROM transfers WHERE dst = a.id) \
                   - (SELECT coalesce(sum(amount), 0) FROM transfers WHERE src = a.id))"
    );
    match query(client, &bank, BIG_QUERY).await {
        Ok(rows) => {
            let total = rows[0][0].clone().unwrap_or_default();
            let off = rows[0][1].clone().unwrap_or_default();
            if total != (ACCOUNTS as i64 * OPENING).to_string() || off != "0" {
                violations.push(Violation::new(
                    "bank",
                    Some(i),
                    format!(
                        "total {total} (expected {}), {off} accounts disagree with the transfers",
                        ACCOUNTS as i64 * OPENING
                    ),
                ));
            }
        }
        Err(e) => violations.push(Violation::new("query", Some(i), format!("bank: {e}"))),
    }
    let torn = format!(
        "SELECT tx, count(*) FROM big GROUP BY tx HAVING count(*) <> {BIG_ROWS} \
         UNION ALL SELECT tx, -1 FROM big WHERE tx NOT IN (SELECT id FROM big_tx) GROUP BY tx"
    );
    match query(client, &torn, BIG_QUERY).await {
        Ok(rows) if rows.is_empty() => {}
        Ok(rows) => violations.push(Violation::new(
            "torn",
            Some(i),
            format!("large transactions present in part, or without their big_tx row (tx, rows; -1: no big_tx row): {rows:?}"),
        )),
        Err(e) => violations.push(Violation::new("query", Some(i), format!("big: {e}"))),
    }
    match query(client, "PRAGMA integrity_check", BIG_QUERY).await {
        Ok(rows) if first(&rows).as_deref() == Some("ok") => {}
        Ok(rows) => violations.push(Violation::new(
            "integrity",
            Some(i),
            format!("PRAGMA integrity_check: {:?}", &rows[..rows.len().min(10)]),
        )),
        Err(e) => violations.push(Violation::new("integrity", Some(i), e)),
    }
    checked
}

/// Every acknowledged id exactly once, no id twice, nothing never sent.
pub fn check_ids(
    counts: &BTreeMap<i64, i64>,
    acked: &BTreeSet<i64>,
    attempted: &BTreeSet<i64>,
) -> Result<(), String> {
    let missing: Vec<i64> = acked
        .iter()
        .copied()
        .filter(|id| !counts.contains_key(id))
        .collect();
    let twice: Vec<(i64, i64)> = counts
        .iter()
        .filter(|(_, &n)| n != 1)
        .map(|(&id, &n)| (id, n))
        .collect();
    let phantom: Vec<i64> = counts
        .keys()
        .copied()
        .filter(|id| !attempted.contains(id))
        .collect();
    if missing.is_empty() && twice.is_empty() && phantom.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{} of {} acknowledged ids missing {:?}; ids present more than once (id, count) {:?}; \
         ids never sent {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(30)],
        &twice[..twice.len().min(30)],
        &phantom[..phantom.len().min(30)]
    ))
}

/// Every page of `app` on `ep`, `(pgno, image)` in page order.
async fn pages(ep: &Endpoint) -> Result<Vec<(i64, Vec<u8>)>, String> {
    let client = connect(&ep.conn(APP, 10, ""), Duration::from_secs(10)).await?;
    let sql = "SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno";
    match tokio::time::timeout(BIG_QUERY, client.query(sql, &[])).await {
        Ok(Ok(rows)) => Ok(rows
            .iter()
            .map(|row| (crate::common::int(row, 0), row.get::<_, Vec<u8>>(1)))
            .collect()),
        Ok(Err(e)) => Err(format!("{sql}: {}", error_text(&e))),
        Err(_) => Err(format!("{sql}: no answer within {BIG_QUERY:?}")),
    }
}

/// A node's log of `app` read from its segment files: each record's LSN
/// and stored checksum, its end, and what could not be read.
#[derive(Debug, Default)]
pub struct LogImage {
    pub records: BTreeMap<u64, u32>,
    pub first: Option<u64>,
    pub end: u64,
    /// Bytes after the last readable record of each segment (a torn tail
    /// or garbage), as (segment's first LSN, offset, bytes, why).
    pub unreadable: Vec<(u64, u64, u64, String)>,
}

/// Reads `data_dir/log/app/*.avlog` with the crate's own record decoder.
/// The node may be running: the files are only read.
pub fn read_log(data_dir: &Path) -> LogImage {
    let mut image = LogImage::default();
    let dir = data_dir.join("log").join(APP);
    let mut segments: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let path = e.path();
                    let stem = path.file_stem()?.to_str()?.to_string();
                    (path.extension()? == "avlog")
                        .then(|| u64::from_str_radix(&stem, 16).ok().map(|lsn| (lsn, path)))
                        .flatten()
                })
                .collect()
        })
        .unwrap_or_default();
    segments.sort();
    for (first_lsn, path) in segments {
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        image.first.get_or_insert(first_lsn);
        let mut offset = 0usize;
        while offset < bytes.len() {
            match availdb::log::Record::decode(&bytes[offset..]) {
                Ok((record, used)) if record.lsn == first_lsn + offset as u64 => {
                    let crc = u32::from_le_bytes(
                        bytes[offset + used - 4..offset + used]
                            .try_into()
                            .expect("4 bytes"),
                    );
                    image.records.insert(record.lsn, crc);
                    offset += used;
                    image.end = first_lsn + offset as u64;
                }
                Ok((record, _)) => {
                    image.unreadable.push((
                        first_lsn,
                        offset as u64,
                        (bytes.len() - offset) as u64,
                        format!("record says LSN {}", record.lsn),
                    ));
                    break;
                }
                Err(e) => {
                    if bytes[offset..].iter().any(|&b| b != 0) {
                        image.unreadable.push((
                            first_lsn,
                            offset as u64,
                            (bytes.len() - offset) as u64,
                            format!("{e:?}"),
                        ));
                    }
                    break;
                }
            }
        }
    }
    image
}

/// Compares two logs over the LSNs both hold: the same records (LSN and
/// checksum), the same end, nothing unreadable. The records compared.
pub fn compare_logs(expected: &LogImage, actual: &LogImage) -> Result<usize, String> {
    let mut problems = Vec::new();
    if expected.end != actual.end {
        problems.push(format!(
            "log ends at {} (expected {})",
            actual.end, expected.end
        ));
    }
    if !actual.unreadable.is_empty() {
        problems.push(format!(
            "unreadable bytes (segment, offset, bytes, why): {:?}",
            actual.unreadable
        ));
    }
    let from = expected.first.unwrap_or(0).max(actual.first.unwrap_or(0));
    let mut compared = 0;
    let mut differing = Vec::new();
    for (lsn, crc) in expected.records.range(from..) {
        match actual.records.get(lsn) {
            Some(c) if c == crc => compared += 1,
            other => differing.push((*lsn, *crc, other.copied())),
        }
    }
    let extra: Vec<u64> = actual
        .records
        .range(from..)
        .map(|(lsn, _)| *lsn)
        .filter(|lsn| !expected.records.contains_key(lsn))
        .collect();
    if !differing.is_empty() {
        problems.push(format!(
            "{} records differ or are missing from {from} on (lsn, expected crc, crc): {:?}",
            differing.len(),
            &differing[..differing.len().min(10)]
        ));
    }
    if !extra.is_empty() {
        problems.push(format!(
            "{} records the primary does not have at these LSNs: {:?}",
            extra.len(),
            &extra[..extra.len().min(10)]
        ));
    }
    if problems.is_empty() {
        Ok(compared)
    } else {
        Err(problems.join("; "))
    }
}
