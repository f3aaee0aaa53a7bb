//! `availdb backup DATABASE --to FILE` and `availdb restore DATABASE --from
//! FILE`: BACKUP and RESTORE run on a node (the file is on that node),
//! with a progress line while they run — bytes written so far and the
//! rate, read from the growing `FILE.partial` when the node is on this
//! host — and the node's summary when they end.

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
    let mut partial = args.to.clone().into_os_string();
    partial.push(".partial");
    run(
        &args.node,
        &backup_statement(&args),
        Some(PathBuf::from(partial)),
    )
    .await
}

/// Runs `availdb restore`.
pub async fn run_restore(args: RestoreArgs) -> Result<(), String> {
    run(&args.node, &restore_statement(&args), None).await
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
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg} {bytes} written ({binary_bytes_per_sec}), {elapsed}",
        )
        .expect("a valid template"),
    );
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_message(sql.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    let statement = client.simple_query(sql);
    tokio::pin!(statement);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let outcome = loop {
        tokio::select! {
            outcome = &mut statement => break outcome,
            _ = tick.tick() => {
                if let Some(len) = growing.as_ref().and_then(|p| std::fs::metadata(p).ok()).map(|m| m.len()) {
                    bar.set_position(len);
                }
                bar.tick();
            }
        }
    };
    bar.finish_and_clear();
    while let Ok(notice) = notices.try_recv() {
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
