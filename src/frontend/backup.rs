//! BACKUP and RESTORE statements at the edge: who may run them here (the
//! database's role in its group), the replies, and the one place where
//! [`BackupError`]s become SQLSTATEs (the table is on `crate::backup`'s page).

use std::path::PathBuf;
use std::sync::Arc;

use rusqlite::types::Value;

use super::session::Reply;
use crate::backup::{self, BackupError, BackupRequest, Kind, RestoreRequest, Stop};
use crate::engine::{Column, Engine, Error, Result};
use crate::sql::backup::BackupStatement;
use crate::sql::types::ValueType;

/// The SQLSTATE and hint of a backup or restore failure.
pub(super) fn error(e: BackupError) -> Error {
    use crate::backup::format::FormatError;
    let hint = e.hint();
    let sqlstate = match &e {
        BackupError::Engine(_) => {
            let BackupError::Engine(inner) = e else {
                unreachable!()
            };
            return inner;
        }
        BackupError::Missing { .. } | BackupError::MissingObject { .. } => "58P01",
        BackupError::BadUrl { .. } => "22023",
        BackupError::Remote { .. } => "58030",
        BackupError::Io { .. } | BackupError::Log { .. } => "58030",
        BackupError::Format {
            error: FormatError::NotABackup | FormatError::Version(_),
            ..
        } => "22023",
        BackupError::Format { .. } | BackupError::Verify { .. } => "XX001",
        BackupError::StopOutsideRange { .. } | BackupError::BadStop(_) => "22023",
        BackupError::Exists { .. } => "42P04",
        BackupError::Busy { .. } => "55006",
        BackupError::WrongKind { .. } => "22023",
        BackupError::Chain { .. }
        | BackupError::NotSynchronizing { .. }
        | BackupError::NeedsCopyOnly { .. }
        | BackupError::InGroup { .. }
        | BackupError::NotRestoring { .. }
        | BackupError::AlreadyRestoring { .. }
        | BackupError::Stopped { .. }
        | BackupError::LogMovedOn { .. }
        | BackupError::Interrupted { .. } => "55000",
    };
    let err = Error::sql(sqlstate, e.to_string());
    match hint {
        Some(h) => err.with_hint(h),
        None => err,
    }
}

/// Why sessions may not use `database` here: it is RESTORING.
pub(super) fn restoring(engine: &Engine, database: &str) -> Option<Error> {
    backup::is_restoring(engine.data_dir(), database).then(|| {
        Error::sql(
            "55000",
            format!("database \"{database}\" is RESTORING (RESTORE … WITH NORECOVERY): it takes no sessions until it is recovered"),
        )
        .with_hint(format!(
            "connect to another database and run RESTORE LOG {database} … or RESTORE DATABASE {database} WITH RECOVERY"
        ))
    })
}

/// What a statement returns: its reply and notices for the session.
pub(super) struct Done {
    pub reply: Reply,
    pub notices: Vec<String>,
}

fn done(tag: &str, notice: String) -> Done {
    Done {
        reply: Reply::Done(tag.into()),
        notices: vec![notice],
    }
}

fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / secs.max(1e-6)
}

/// The columns of `RESTORE HEADERONLY`.
fn header_columns() -> Vec<Column> {
    [
        ("backup_type", ValueType::Text),
        ("database_name", ValueType::Text),
        ("group_name", ValueType::Text),
        ("replica_name", ValueType::Text),
        ("first_lsn", ValueType::Int8),
        ("last_lsn", ValueType::Int8),
        ("is_copy_only", ValueType::Bool),
        ("is_compressed", ValueType::Bool),
        ("backup_start_date", ValueType::Text),
        ("backup_finish_date", ValueType::Text),
        ("first_commit_time", ValueType::Text),
        ("last_commit_time", ValueType::Text),
        ("page_size", ValueType::Int8),
        ("database_pages", ValueType::Int8),
        ("backup_size", ValueType::Int8),
        ("backup_id", ValueType::Text),
        ("format_version", ValueType::Int8),
    ]
    .into_iter()
    .map(|(name, ty)| Column {
        name: name.into(),
        ty,
    })
    .collect()
}

/// The columns a BACKUP or RESTORE statement answers with (the extended
/// protocol describes them before it runs): only HEADERONLY has rows.
pub(super) fn columns(sql: &str) -> Vec<Column> {
    match crate::sql::backup::parse(sql) {
        Ok(BackupStatement::HeaderOnly { .. }) => header_columns(),
        _ => Vec::new(),
    }
}

/// `STATS = n`: a "p percent processed." notice at every n percent
/// reached, each once, as SQL Server prints them.
#[derive(Clone)]
struct Stats {
    step: Option<u64>,
    next: Arc<std::sync::atomic::AtomicU64>,
    live: tokio::sync::mpsc::UnboundedSender<String>,
}

impl Stats {
    fn new(step: Option<u8>, live: tokio::sync::mpsc::UnboundedSender<String>) -> Stats {
        let step = step.map(u64::from).filter(|s| *s > 0);
        Stats {
            next: Arc::new(std::sync::atomic::AtomicU64::new(step.unwrap_or(0))),
            step,
            live,
        }
    }

    /// Done: every step left, and 100 percent (as SQL Server ends).
    fn finished(&self) {
        self.reached(100);
        if self.step.is_some_and(|s| 100 % s != 0) {
            let _ = self.live.send("100 percent processed.".to_string());
        }
    }

    /// `percent` is done: tells every step reached since the last call.
    fn reached(&self, percent: u64) {
        let Some(step) = self.step else { return };
        use std::sync::atomic::Ordering::SeqCst;
        let mut at = self.next.load(SeqCst);
        while at <= percent.min(100) {
            if self
                .next
                .compare_exchange(at, at + step, SeqCst, SeqCst)
                .is_ok()
            {
                // The session may be gone: nothing to tell then.
                let _ = self.live.send(format!("{at} percent processed."));
            }
            at = self.next.load(SeqCst);
        }
    }
}

/// The column of `SELECT sys.fn_hadr_backup_is_preferred_replica('db')`.
pub(super) fn preferred_column() -> Column {
    Column {
        name: "fn_hadr_backup_is_preferred_replica".into(),
        ty: ValueType::Int4,
    }
}

/// A BACKUP or RESTORE as a long operation (`sys.dm_operation_status`):
/// its id, its `STATS` notices, and the progress callback that moves both.
fn tracked(
    ag: &Arc<crate::ag::Manager>,
    what: &str,
    database: &str,
    stats: Option<u8>,
    live: &tokio::sync::mpsc::UnboundedSender<String>,
) -> (u64, Stats, backup::Progress) {
    let id = ag
        .operations()
        .start(what, database, "", crate::ag::views::wall_us());
    let stats = Stats::new(stats, live.clone());
    let progress = {
        let (ag, stats) = (ag.clone(), stats.clone());
        backup::Progress(Arc::new(move |done, total| {
            let percent = done.saturating_mul(100) / total.max(1);
            ag.operations()
                .progress(id, percent as f64, crate::ag::views::wall_us());
            stats.reached(percent);
        }))
    };
    (id, stats, progress)
}

/// Tells operation `id` (a BACKUP or RESTORE) the bytes it has read so far.
fn bytes_read(ag: &Arc<crate::ag::Manager>, id: u64) -> backup::rate::BytesRead {
    let ag = ag.clone();
    backup::rate::BytesRead(Arc::new(move |bytes| {
        ag.operations().read(id, bytes, crate::ag::views::wall_us())
    }))
}

/// The local file a RESTORE reads `path` from: the path itself, or for a
/// URL a staging copy downloaded first (removed when the guard drops).
async fn fetched(
    engine: &Engine,
    path: &str,
) -> Result<(PathBuf, Option<backup::remote::Staging>)> {
    backup::remote::fetch(engine.data_dir(), path)
        .await
        .map_err(error)
}

/// Runs one BACKUP or RESTORE statement; `live` takes the notices sent
/// while it runs (`STATS = n`: "n percent processed.").
pub(super) async fn execute(
    engine: &Arc<Engine>,
    ag: &Arc<crate::ag::Manager>,
    statement: BackupStatement,
    live: &tokio::sync::mpsc::UnboundedSender<String>,
) -> Result<Done> {
    match statement {
        BackupStatement::Backup {
            log,
            database,
            path,
            copy_only,
            compression,
            checksum,
            stats,
        } => {
            let db = engine.database(&database)?;
            if backup::is_restoring(engine.data_dir(), &database) {
                return Err(restoring(engine, &database).expect("restoring"));
            }
            let (group, primary, not_synchronizing) = ag
                .backup_role(&database)
                .map_or((String::new(), true, None), |(g, p, why)| (g, p, why));
            if let Some(why) = not_synchronizing {
                return Err(error(BackupError::NotSynchronizing { database, why }));
            }
            if !primary && !log && !copy_only {
                return Err(error(BackupError::NeedsCopyOnly { database }));
            }
            // TO URL: written to a staging file, uploaded, then removed. A
            // destination that cannot be used fails before the operation is
            // recorded, so none is left IN_PROGRESS.
            let (local, staging, upload) =
                backup::remote::destination(engine.data_dir(), &path).map_err(error)?;
            let what = if log { "BACKUP LOG" } else { "BACKUP DATABASE" };
            let operations = ag.operations();
            let rate = ag.backup_rate(primary);
            if stats.is_some() {
                // Said once, before the first step, so a slow backup is
                // seen to be paced on purpose.
                if let Some(notice) =
                    backup::rate::pacing_notice(rate, primary, ag.backup_rate_is_set())
                {
                    let _ = live.send(notice);
                }
            }
            let (id, stats, progress) = tracked(ag, what, &database, stats, live);
            operations.reads(id, rate);
            let read = bytes_read(ag, id);
            let request = BackupRequest {
                record: true,
                upload,
                kind: if log { Kind::Log } else { Kind::Full },
                path: local,
                copy_only,
                compression,
                checksum,
                group: group.clone(),
                replica: ag.node().to_string(),
                progress: Some(progress),
                gentle: !primary,
                rate,
                read: Some(read),
            };
            let taken = backup::take(db, engine.data_dir(), request).await;
            drop(staging);
            operations.finish(
                id,
                taken.as_ref().err().map(|e| e.to_string()),
                crate::ag::views::wall_us(),
            );
            let taken = taken.map_err(error)?;
            stats.finished();
            ag.prove_backup(&taken.header.id_hex());
            if !copy_only && !group.is_empty() {
                // The chain continues from here on whichever replica backs
                // up next: every replica keeps its log from this point.
                if let Err(e) = ag
                    .share_backup_hold(&group, &database, taken.next_from)
                    .await
                {
                    let _ = live.send(format!(
                        "the backup is complete, but the other replicas were not told to keep their log from LSN {} for the next log backup ({e}): after a failover, take a full backup to start a new chain",
                        taken.next_from
                    ));
                }
            }
            let secs = taken.duration.as_secs_f64();
            Ok(done(
                if log { "BACKUP LOG" } else { "BACKUP DATABASE" },
                format!(
                    "{what} successfully processed {} pages and {} log records (LSN {}..{}) into {} bytes in {secs:.3} s ({:.1} MB/s)",
                    taken.pages,
                    taken.records,
                    taken.header.first_lsn,
                    taken.header.end_lsn,
                    taken.size,
                    mb_per_s(taken.size, secs)
                ),
            ))
        }
        BackupStatement::Restore {
            log,
            database,
            path,
            recovery,
            replace,
            stop_at,
            stop_at_lsn,
            stats,
        } => {
            if let Some((group, _)) = ag.local_role(&database) {
                // A MANUAL-seeding secondary restores the group's database
                // WITH NORECOVERY, then joins it (SET HADR AVAILABILITY GROUP).
                if !ag.awaits_restore(&database) {
                    return Err(error(BackupError::InGroup { database, group }));
                }
                if recovery {
                    return Err(Error::sql(
                        "55000",
                        format!("database \"{database}\" of availability group \"{group}\" is seeded manually on this replica: it is restored WITH NORECOVERY and then joined, never recovered on its own"),
                    )
                    .with_hint(format!(
                        "run the RESTORE again WITH NORECOVERY, then ALTER DATABASE {database} SET HADR AVAILABILITY GROUP = {group}"
                    )));
                }
            }
            let stop = match (stop_at, stop_at_lsn) {
                (Some(t), _) => Some(Stop::Time(
                    crate::sql::backup::parse_stop_time(&t)
                        .map_err(|m| error(BackupError::BadStop(m)))?,
                )),
                (None, Some(l)) => Some(Stop::Lsn(l)),
                (None, None) => None,
            };
            let what = if log {
                "RESTORE LOG"
            } else {
                "RESTORE DATABASE"
            };
            let operations = ag.operations();
            let (id, stats, progress) = tracked(ag, what, &database, stats, live);
            // A restore is not paced: it counts the backup file's bytes.
            operations.reads(id, 0);
            let read = bytes_read(ag, id);
            // The download is part of the operation: whichever fails, the
            // download or the restore, ends it FAILED.
            let restored = async {
                let (local, _staging) = match &path {
                    Some(p) => {
                        let (local, staging) = fetched(engine, p).await?;
                        (Some(local), staging)
                    }
                    None => (None, None),
                };
                let request = RestoreRequest {
                    database: database.clone(),
                    path: local,
                    kind: if log { Kind::Log } else { Kind::Full },
                    recovery,
                    replace,
                    stop,
                    progress: Some(progress),
                    read: Some(read),
                };
                let engine = engine.clone();
                let started = std::time::Instant::now();
                tokio::task::spawn_blocking(move || {
                    backup::restore(&engine, engine.data_dir(), &request)
                })
                .await
                .map_err(|e| Error::sql("XX000", e.to_string()))
                .and_then(|r| r.map_err(error))
                .map(|restored| (restored, started.elapsed()))
            }
            .await;
            operations.finish(
                id,
                restored.as_ref().err().map(|e| e.to_string()),
                crate::ag::views::wall_us(),
            );
            let (restored, took) = restored?;
            stats.finished();
            let state = if restored.recovered {
                "online"
            } else {
                "RESTORING"
            };
            let stopped = if restored.stopped {
                " (stopped at the STOPAT point)"
            } else {
                ""
            };
            Ok(done(
                if log { "RESTORE LOG" } else { "RESTORE DATABASE" },
                format!(
                    "RESTORE {} successfully processed {} pages and {} log records in {:.3} s: database \"{database}\" is {state} at LSN {}{stopped}",
                    if log { "LOG" } else { "DATABASE" },
                    restored.pages,
                    restored.records,
                    took.as_secs_f64(),
                    restored.end_lsn
                ),
            ))
        }
        BackupStatement::VerifyOnly { path } => {
            let (p, _staging) = fetched(engine, &path).await?;
            let header = tokio::task::spawn_blocking(move || backup::verify(&p))
                .await
                .map_err(|e| Error::sql("XX000", e.to_string()))?
                .map_err(error)?;
            Ok(done(
                "RESTORE VERIFYONLY",
                format!(
                    "the backup set on file '{path}' is valid: database \"{}\", LSN {}..{}",
                    header.database, header.first_lsn, header.end_lsn
                ),
            ))
        }
        BackupStatement::HeaderOnly { path } => {
            let (p, _staging) = fetched(engine, &path).await?;
            let (h, m, size) = tokio::task::spawn_blocking(move || backup::header_only(&p))
                .await
                .map_err(|e| Error::sql("XX000", e.to_string()))?
                .map_err(error)?;
            let time = |us: i64| {
                if us == 0 {
                    Value::Null
                } else {
                    Value::Text(backup::time_text(us))
                }
            };
            let row = vec![
                Value::Text(
                    match h.kind {
                        Kind::Full => "DATABASE",
                        Kind::Log => "LOG",
                    }
                    .into(),
                ),
                Value::Text(h.database.clone()),
                Value::Text(h.group.clone()),
                Value::Text(h.replica.clone()),
                Value::Integer(h.first_lsn as i64),
                Value::Integer(h.end_lsn as i64),
                Value::Integer(h.copy_only as i64),
                Value::Integer(h.compressed as i64),
                time(h.started_us),
                time(m.finished_us),
                time(m.first_commit_us),
                time(m.last_commit_us),
                Value::Integer(i64::from(h.page_size)),
                Value::Integer(i64::from(m.db_size)),
                Value::Integer(size as i64),
                Value::Text(h.id_hex()),
                Value::Integer(i64::from(backup::format::VERSION)),
            ];
            Ok(Done {
                reply: Reply::Rows {
                    columns: header_columns(),
                    rows: vec![row],
                    tag: "SELECT 1".into(),
                },
                notices: Vec::new(),
            })
        }
    }
}

/// Runs `schedules` on this node for as long as it lives
/// ([`crate::backup::schedule`]): at every tick, the backup is taken here
/// if this replica is the preferred one, through `execute`, as the
/// BACKUP statement would be.
pub fn spawn_schedules(
    engine: Arc<Engine>,
    ag: Arc<crate::ag::Manager>,
    schedules: Vec<crate::backup::schedule::Schedule>,
) {
    for schedule in schedules {
        let (engine, ag) = (engine.clone(), ag.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(schedule.every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            // The first tick is at once: the first backup one interval on.
            tick.tick().await;
            loop {
                tick.tick().await;
                run_scheduled(&engine, &ag, &schedule).await;
            }
        });
    }
}

async fn run_scheduled(
    engine: &Arc<Engine>,
    ag: &Arc<crate::ag::Manager>,
    schedule: &crate::backup::schedule::Schedule,
) {
    use crate::backup::schedule::{decide, Decision, ScheduleKind};
    let database = &schedule.database;
    if engine.database(database).is_err() {
        tracing::debug!(%database, "scheduled backup skipped: no such database here");
        return;
    }
    let primary = ag.backup_role(database).is_none_or(|(_, p, _)| p);
    let decision = decide(
        schedule,
        ag.node(),
        ag.is_preferred_backup_replica(database),
        primary,
        crate::ag::views::wall_us(),
    );
    let Decision::Take { path, copy_only } = decision else {
        return;
    };
    if let Err(e) = crate::durable::create_dir_all(&schedule.to) {
        tracing::warn!(%database, dir = %schedule.to.display(), error = %e, "scheduled backup skipped: cannot create its directory");
        return;
    }
    let (live, mut notices) = tokio::sync::mpsc::unbounded_channel();
    let statement = BackupStatement::Backup {
        log: schedule.kind == ScheduleKind::Log,
        database: database.clone(),
        path: path.to_string_lossy().into_owned(),
        copy_only,
        compression: true,
        checksum: false,
        stats: None,
    };
    match execute(engine, ag, statement, &live).await {
        Ok(_) => tracing::info!(%database, path = %path.display(), "scheduled backup taken"),
        Err(e) => {
            tracing::warn!(%database, path = %path.display(), error = %e, "scheduled backup failed; the next tick tries again")
        }
    }
    while let Ok(notice) = notices.try_recv() {
        tracing::warn!(%database, "{notice}");
    }
}
