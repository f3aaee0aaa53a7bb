//! `availdb backup DATABASE --to FILE` and `availdb restore DATABASE --from
//! FILE`: BACKUP and RESTORE run on a node (the file is on that node),
//! asked `WITH STATS = 1`, with a progress bar drawn from the node's
//! "p percent processed." notices (percent, elapsed, ETA) and the bytes
//! written so far, read from the growing `FILE.partial` when the node is
//! on this host; the node's summary when they end. A backup the node
//! paces (`--backup-kib-per-s`) says so in a line above the bar.
//!
//! With `--data-dir DIR` they run offline instead, on the data directory
//! of a node that is not running (its lock is taken, so a running node
//! refuses to start meanwhile): the same backup and restore code, the bar
//! fed by it directly. Offline, a restore into a database of an
//! availability group is refused (the group's replicas would not know).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use tokio_postgres::{AsyncMessage, NoTls};

use super::cluster::{quote, Target};

/// `availdb backup` options.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The database to back up.
    pub database: String,
    /// The backup file, as the node sees it, or an `s3://bucket/key` URL.
    #[arg(long, value_name = "FILE|URL")]
    pub to: PathBuf,
    /// A log backup (BACKUP LOG) rather than a full one.
    #[arg(long)]
    pub log: bool,
    /// WITH COPY_ONLY (required for a full backup on a secondary).
    #[arg(long)]
    pub copy_only: bool,
    /// WITH COMPRESSION (zstd).
    #[arg(long)]
    pub compression: bool,
    /// WITH CHECKSUM: the node reads the file back before it answers.
    #[arg(long)]
    pub checksum: bool,
    /// Run offline on this data directory (its node stopped) instead of
    /// on a running node.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The node.
    #[command(flatten)]
    pub node: Target,
}

/// `availdb restore` options.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The database to restore into.
    pub database: String,
    /// The backup file, as the node sees it, or an `s3://bucket/key` URL
    /// (none: finish a restore left RESTORING, WITH RECOVERY).
    #[arg(long, value_name = "FILE|URL")]
    pub from: Option<PathBuf>,
    /// RESTORE LOG rather than RESTORE DATABASE.
    #[arg(long)]
    pub log: bool,
    /// WITH NORECOVERY: leave the database RESTORING for more logs.
    #[arg(long)]
    pub norecovery: bool,
    /// WITH REPLACE.
    #[arg(long)]
    pub replace: bool,
    /// STOPAT = 'time' (UTC unless a zone is given).
    #[arg(long, value_name = "TIME", conflicts_with = "stop_at_lsn")]
    pub stop_at: Option<String>,
    /// STOPATLSN = 'lsn'.
    #[arg(long, value_name = "LSN")]
    pub stop_at_lsn: Option<u64>,
    /// Run offline on this data directory (its node stopped) instead of
    /// on a running node.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The node.
    #[command(flatten)]
    pub node: Target,
}

/// The BACKUP statement `args` ask for.
pub fn backup_statement(args: &BackupArgs) -> String {
    let mut options = Vec::new();
    for (on, name) in [
        (args.copy_only, "COPY_ONLY"),
        (args.compression, "COMPRESSION"),
        (args.checksum, "CHECKSUM"),
    ] {
        if on {
            options.push(name.to_string());
        }
    }
    let to = args.to.display().to_string();
    format!(
        "BACKUP {} \"{}\" TO {} = {}{}",
        if args.log { "LOG" } else { "DATABASE" },
        args.database,
        device(&to),
        quote(&to),
        with(&options)
    )
}

/// `URL` for an `s3://…` destination, `DISK` for a file.
fn device(target: &str) -> &'static str {
    if crate::backup::remote::is_url(target) {
        "URL"
    } else {
        "DISK"
    }
}

/// The RESTORE statement `args` ask for.
pub fn restore_statement(args: &RestoreArgs) -> String {
    let mut options = vec![if args.norecovery {
        "NORECOVERY".to_string()
    } else {
        "RECOVERY".to_string()
    }];
    if args.replace {
        options.push("REPLACE".into());
    }
    if let Some(t) = &args.stop_at {
        options.push(format!("STOPAT = {}", quote(t)));
    }
    if let Some(l) = args.stop_at_lsn {
        options.push(format!("STOPATLSN = '{l}'"));
    }
    let from = args
        .from
        .as_ref()
        .map(|f| {
            let from = f.display().to_string();
            format!(" FROM {} = {}", device(&from), quote(&from))
        })
        .unwrap_or_default();
    format!(
        "RESTORE {} \"{}\"{from}{}",
        if args.log { "LOG" } else { "DATABASE" },
        args.database,
        with(&options)
    )
}

fn with(options: &[String]) -> String {
    if options.is_empty() {
        String::new()
    } else {
        format!(" WITH {}", options.join(", "))
    }
}

/// Runs `availdb backup`.
pub async fn run_backup(args: BackupArgs) -> Result<(), String> {
    if let Some(dir) = &args.data_dir {
        return offline::backup(&args, dir).await;
    }
    let mut partial = args.to.clone().into_os_string();
    partial.push(".partial");
    run(
        &args.node,
        &with_stats(backup_statement(&args)),
        Some(PathBuf::from(partial)),
    )
    .await
}

/// Runs `availdb restore`.
pub async fn run_restore(args: RestoreArgs) -> Result<(), String> {
    if let Some(dir) = &args.data_dir {
        return offline::restore(&args, dir).await;
    }
    run(&args.node, &with_stats(restore_statement(&args)), None).await
}

/// `sql` asking for a notice at every percent (the progress bar's).
fn with_stats(sql: String) -> String {
    if sql.contains(" WITH ") {
        format!("{sql}, STATS = 1")
    } else {
        format!("{sql} WITH STATS = 1")
    }
}

/// A progress bar of percent done (hidden when stderr is not a terminal).
fn percent_bar(what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(100);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos:>3}% {elapsed} (ETA {eta}){prefix}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_message(what.to_string());
    bar
}

/// The percent of a "p percent processed." notice.
fn percent_of(notice: &str) -> Option<u64> {
    notice.strip_suffix(" percent processed.")?.parse().ok()
}

/// Runs `sql` on the node, showing progress until it answers; prints the
/// node's notices (the summary).
async fn run(node: &Target, sql: &str, growing: Option<PathBuf>) -> Result<(), String> {
    let mut conn = format!(
        "host={} port={} user=availdb dbname=availdb connect_timeout=5",
        node.host, node.port
    );
    if let Some(password) = &node.password {
        conn.push_str(&format!(" password='{}'", password.replace('\'', "\\'")));
    }
    let (client, mut connection) = tokio_postgres::connect(&conn, NoTls)
        .await
        .map_err(|e| format!("cannot connect to {}:{}: {e}", node.host, node.port))?;
    let (tx, mut notices) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notice(n) = message {
                let _ = tx.send(n.message().to_string());
            }
        }
    });
    let bar = percent_bar(&sql.split_whitespace().take(2).collect::<Vec<_>>().join(" "));
    let statement = client.simple_query(sql);
    tokio::pin!(statement);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut said = Vec::new();
    let mut take = |notice: String, bar: &indicatif::ProgressBar| match percent_of(&notice) {
        Some(p) => bar.set_position(p),
        // A paced backup says so once, as it starts: shown at once, above
        // the bar.
        None if notice.starts_with(crate::backup::rate::PACING_PREFIX) => {
            bar.suspend(|| eprintln!("{notice}"))
        }
        None => said.push(notice),
    };
    let outcome = loop {
        tokio::select! {
            outcome = &mut statement => break outcome,
            Some(notice) = notices.recv() => take(notice, &bar),
            _ = tick.tick() => {
                if let Some(len) = growing.as_ref().and_then(|p| std::fs::metadata(p).ok()).map(|m| m.len()) {
                    bar.set_prefix(format!(", {} written", indicatif::HumanBytes(len)));
                }
                bar.tick();
            }
        }
    };
    // The notices sent before the answer are all queued by now.
    while let Ok(notice) = notices.try_recv() {
        take(notice, &bar);
    }
    bar.finish_and_clear();
    for notice in said {
        println!("{notice}");
    }
    outcome.map(|_| ()).map_err(|e| match e.as_db_error() {
        Some(db) => match db.hint() {
            Some(hint) => format!("{} ({})\nhint: {hint}", db.message(), db.code().code()),
            None => format!("{} ({})", db.message(), db.code().code()),
        },
        None => e.to_string(),
    })
}

mod offline {
    //! `--data-dir`: BACKUP and RESTORE on a stopped node's data directory.

    use std::path::Path;
    use std::sync::Arc;

    use super::{percent_bar, BackupArgs, RestoreArgs};
    use crate::backup::{self, remote, BackupRequest, Kind, Progress};

    fn engine(dir: &Path) -> Result<(std::fs::File, crate::engine::Engine), String> {
        let lock = crate::cli::lock_data_dir(dir)?;
        let engine = crate::engine::Engine::open(dir)
            .map_err(|e| format!("data directory {} is unusable: {e}", dir.display()))?;
        Ok((lock, engine))
    }

    /// The group `database` belongs to on this data directory, if any.
    fn group_of(dir: &Path, database: &str) -> Result<Option<String>, String> {
        let all = crate::ag::store::ConfigStore::new(dir)
            .load_all()
            .map_err(|e| e.to_string())?;
        Ok(all.into_iter().find_map(|m| match m {
            crate::ag::store::Membership::Defined(g) if g.has_database(database) => {
                Some(g.name.clone())
            }
            _ => None,
        }))
    }

    fn progress(bar: &indicatif::ProgressBar) -> Progress {
        let bar = bar.clone();
        Progress(Arc::new(move |done, total| {
            bar.set_position(done.saturating_mul(100) / total.max(1))
        }))
    }

    fn failed(e: backup::BackupError) -> String {
        match e.hint() {
            Some(hint) => format!("{e}\nhint: {hint}"),
            None => e.to_string(),
        }
    }

    pub(super) async fn backup(args: &BackupArgs, dir: &Path) -> Result<(), String> {
        let (_lock, engine) = engine(dir)?;
        let db = engine.database(&args.database).map_err(|e| e.to_string())?;
        let (path, _staging, upload) =
            remote::destination(dir, &args.to.display().to_string()).map_err(failed)?;
        let bar = percent_bar(if args.log {
            "BACKUP LOG"
        } else {
            "BACKUP DATABASE"
        });
        let request = BackupRequest {
            record: true,
            kind: if args.log { Kind::Log } else { Kind::Full },
            path,
            copy_only: args.copy_only,
            compression: args.compression,
            checksum: args.checksum,
            group: group_of(dir, &args.database)?.unwrap_or_default(),
            replica: "offline".into(),
            progress: Some(progress(&bar)),
            upload,
            gentle: false,
            // Offline, on a stopped node: nothing to yield to.
            rate: 0,
            read: None,
        };
        let taken = backup::take(db, dir, request).await;
        bar.finish_and_clear();
        let taken = taken.map_err(failed)?;
        println!(
            "{} of \"{}\" (offline) processed {} pages and {} log records (LSN {}..{}) into {} bytes in {:.3} s",
            if args.log { "BACKUP LOG" } else { "BACKUP DATABASE" },
            args.database,
            taken.pages,
            taken.records,
            taken.header.first_lsn,
            taken.header.end_lsn,
            taken.size,
            taken.duration.as_secs_f64()
        );
        Ok(())
    }

    pub(super) async fn restore(args: &RestoreArgs, dir: &Path) -> Result<(), String> {
        if let Some(group) = group_of(dir, &args.database)? {
            return Err(format!(
                "database \"{}\" is in availability group \"{group}\" on this data directory: offline, a restore would change it behind the group's back\nhint: restore under another name, or start the node and remove the database from the group first",
                args.database
            ));
        }
        let (_lock, engine) = engine(dir)?;
        let (path, staging) = match &args.from {
            Some(from) => {
                let (path, staging) = remote::fetch(dir, &from.display().to_string())
                    .await
                    .map_err(failed)?;
                (Some(path), staging)
            }
            None => (None, None),
        };
        let stop = match (&args.stop_at, args.stop_at_lsn) {
            (Some(t), _) => Some(backup::Stop::Time(
                crate::sql::backup::parse_stop_time(t).map_err(|m| format!("STOPAT: {m}"))?,
            )),
            (None, Some(l)) => Some(backup::Stop::Lsn(l)),
            (None, None) => None,
        };
        let bar = percent_bar(if args.log {
            "RESTORE LOG"
        } else {
            "RESTORE DATABASE"
        });
        let request = backup::RestoreRequest {
            database: args.database.clone(),
            path,
            kind: if args.log { Kind::Log } else { Kind::Full },
            recovery: !args.norecovery,
            replace: args.replace,
            stop,
            progress: Some(progress(&bar)),
            read: None,
        };
        let dir = dir.to_path_buf();
        let restored =
            tokio::task::spawn_blocking(move || backup::restore(&engine, &dir, &request))
                .await
                .map_err(|e| e.to_string())?;
        bar.finish_and_clear();
        drop(staging);
        let restored = restored.map_err(failed)?;
        println!(
            "RESTORE of \"{}\" (offline) processed {} pages and {} log records: it is {} at LSN {}",
            args.database,
            restored.pages,
            restored.records,
            if restored.recovered {
                "online"
            } else {
                "RESTORING"
            },
            restored.end_lsn
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(clap::Subcommand)]
    enum Sub {
        Backup(BackupArgs),
        Restore(RestoreArgs),
    }

    #[test]
    fn the_progress_bar_asks_for_every_percent_and_reads_the_notices() {
        assert_eq!(
            with_stats("BACKUP LOG \"a\" TO DISK = 'f'".into()),
            "BACKUP LOG \"a\" TO DISK = 'f' WITH STATS = 1"
        );
        let with = with_stats("RESTORE DATABASE \"a\" FROM DISK = 'f' WITH RECOVERY".into());
        assert_eq!(
            with,
            "RESTORE DATABASE \"a\" FROM DISK = 'f' WITH RECOVERY, STATS = 1"
        );
        assert!(crate::sql::backup::parse(&with).is_ok());
        assert_eq!(percent_of("42 percent processed."), Some(42));
        assert_eq!(
            percent_of("BACKUP DATABASE successfully processed 3 pages"),
            None
        );
    }

    #[test]
    fn the_command_line_becomes_the_statement_a_user_would_type() {
        let Sub::Backup(b) = Cli::parse_from([
            "availdb",
            "backup",
            "app",
            "--to",
            "/b/it's.bak",
            "--copy-only",
            "--compression",
        ])
        .command
        else {
            panic!("not a backup")
        };
        assert_eq!(
            backup_statement(&b),
            "BACKUP DATABASE \"app\" TO DISK = '/b/it''s.bak' WITH COPY_ONLY, COMPRESSION"
        );
        let Sub::Restore(r) = Cli::parse_from([
            "availdb",
            "restore",
            "x",
            "--from",
            "/b/l.bak",
            "--log",
            "--stop-at",
            "2026-01-02 03:04:05",
        ])
        .command
        else {
            panic!("not a restore")
        };
        assert_eq!(
            restore_statement(&r),
            "RESTORE LOG \"x\" FROM DISK = '/b/l.bak' WITH RECOVERY, STOPAT = '2026-01-02 03:04:05'"
        );
        assert!(crate::sql::backup::parse(&restore_statement(&r)).is_ok());
        assert!(crate::sql::backup::parse(&backup_statement(&b)).is_ok());
        let Sub::Backup(b) =
            Cli::parse_from(["availdb", "backup", "app", "--to", "s3://b/app/f.bak"]).command
        else {
            panic!("not a backup")
        };
        assert_eq!(
            backup_statement(&b),
            "BACKUP DATABASE \"app\" TO URL = 's3://b/app/f.bak'"
        );
    }
}
