//! What backups and restores fail with. The front end chooses the SQLSTATE
//! of each (`frontend/backup.rs`); every message says what to do next.

use std::path::PathBuf;

use super::format::FormatError;
use crate::log::Lsn;

/// Result alias of the backup layer.
pub type Result<T, E = BackupError> = std::result::Result<T, E>;

/// Everything a backup or restore can fail with.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The backup file does not exist.
    #[error("backup file {} does not exist", path.display())]
    Missing {
        /// The path given.
        path: PathBuf,
    },
    /// Reading or writing a file failed.
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        /// What we were doing ("write the backup to", "read").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a good backup (not one, truncated, corrupt, newer).
    #[error("{}: {error}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with its bytes.
        error: FormatError,
    },
    /// The database could not be read, or the restored one opened.
    #[error("{0}")]
    Engine(#[from] crate::engine::Error),
    /// The database's log could not be read.
    #[error("cannot read the log of database \"{database}\": {message}")]
    Log {
        /// The database.
        database: String,
        /// The log's error.
        message: String,
    },
    /// A replica that is not synchronizing has no consistent state to back up.
    #[error("database \"{database}\" is NOT SYNCHRONIZING on this replica: {why}")]
    NotSynchronizing {
        /// The database.
        database: String,
        /// Why (disconnected, suspended, being seeded).
        why: String,
    },
    /// A full backup on a secondary must be copy-only.
    #[error("a secondary replica takes only copy-only full backups of database \"{database}\"")]
    NeedsCopyOnly {
        /// The database.
        database: String,
    },
    /// RESTORE DATABASE over an existing database without REPLACE.
    #[error("database \"{database}\" already exists on this node")]
    Exists {
        /// The database.
        database: String,
    },
    /// The database belongs to an availability group here.
    #[error("database \"{database}\" belongs to availability group \"{group}\" on this node")]
    InGroup {
        /// The database.
        database: String,
        /// Its group.
        group: String,
    },
    /// A restore that needs the database in RESTORING found none.
    #[error("database \"{database}\" is not being restored here (no RESTORE … WITH NORECOVERY left it RESTORING)")]
    NotRestoring {
        /// The database.
        database: String,
    },
    /// RESTORE DATABASE … FROM while one is already RESTORING.
    #[error(
        "database \"{database}\" is already RESTORING (from an earlier RESTORE … WITH NORECOVERY)"
    )]
    AlreadyRestoring {
        /// The database.
        database: String,
    },
    /// Another RESTORE of the same database is running.
    #[error("another RESTORE of database \"{database}\" is running on this node")]
    Busy {
        /// The database.
        database: String,
    },
    /// The backup is of the other kind (a log backup given to RESTORE DATABASE …).
    #[error("{} is a {found} backup, and RESTORE {wanted} needs a {wanted_kind} backup", path.display())]
    WrongKind {
        /// The file.
        path: PathBuf,
        /// What it is.
        found: &'static str,
        /// The statement.
        wanted: &'static str,
        /// What the statement needs.
        wanted_kind: &'static str,
    },
    /// A log backup that does not continue the restored database's log.
    #[error("the log backup covers LSN {first}..{end}, but database \"{database}\" is restored up to LSN {restored}: {why}")]
    Chain {
        /// The database being restored.
        database: String,
        /// The log backup's first LSN.
        first: Lsn,
        /// Its end.
        end: Lsn,
        /// Where the restore stands.
        restored: Lsn,
        /// What is wrong (a gap, too early, another database's log).
        why: String,
    },
    /// STOPAT / STOPATLSN outside what the backups can reach.
    #[error("{what} is outside what this backup can restore to: {range}")]
    StopOutsideRange {
        /// The stop point as given.
        what: String,
        /// What the backup covers.
        range: String,
    },
    /// A STOPAT / STOPATLSN value that does not parse.
    #[error("{0}")]
    BadStop(String),
    /// The restore already stopped at its STOPAT point.
    #[error("the restore of database \"{database}\" already stopped at LSN {at} (STOPAT / STOPATLSN): no later log applies")]
    Stopped {
        /// The database.
        database: String,
        /// Where it stopped.
        at: Lsn,
    },
    /// The restored pages do not hash to what the backup recorded.
    #[error("the restored copy of database \"{database}\" differs from the backup at page {page}")]
    Verify {
        /// The database.
        database: String,
        /// The first page that differs.
        page: u32,
    },
    /// The log moved on (or was cut) under a backup that was reading it.
    #[error("the log of database \"{database}\" no longer holds LSN {wanted} (it starts at {first}): it moved on while the backup ran")]
    LogMovedOn {
        /// The database.
        database: String,
        /// The LSN the backup needed.
        wanted: Lsn,
        /// Where the log starts now.
        first: Lsn,
    },
    /// A backup URL that names no object of a supported store.
    #[error("backup URL '{url}' is not usable: {why}")]
    BadUrl {
        /// The URL as written.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// The object a URL names does not exist.
    #[error("backup object {url} does not exist")]
    MissingObject {
        /// The URL.
        url: String,
    },
    /// The object store refused or failed a request.
    #[error("cannot {what} {url}: {why}")]
    Remote {
        /// What we were doing ("upload to", "download from", "reach").
        what: &'static str,
        /// The URL.
        url: String,
        /// The store's error.
        why: String,
    },
    /// A promotion of this replica needed the backup's read snapshot ended.
    #[error("the backup of database \"{database}\" was interrupted: this replica is becoming primary and its readers had to end")]
    Interrupted {
        /// The database.
        database: String,
    },
}

impl BackupError {
    /// What the user can do next.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            BackupError::Missing { .. } => "check the path: it is read on the node that runs the statement".into(),
            BackupError::Io { .. } => "check the path, its permissions and the free space, then run the statement again".into(),
            BackupError::Format { error: FormatError::NotABackup, .. } => "name a file written by BACKUP DATABASE or BACKUP LOG".into(),
            BackupError::Format { error: FormatError::Version(_), .. } => "restore it with the availdb version that wrote it, or a newer one".into(),
            BackupError::Format { .. } => "the file is damaged: restore from another copy or another backup (RESTORE VERIFYONLY checks a file)".into(),
            BackupError::NotSynchronizing { .. } => "back up on the primary or a SYNCHRONIZED or SYNCHRONIZING secondary (sys.dm_hadr_database_replica_states)".into(),
            BackupError::NeedsCopyOnly { .. } => "add WITH COPY_ONLY, or take the full backup on the primary".into(),
            BackupError::Exists { database } => format!("add WITH REPLACE to overwrite it, or restore under another name (RESTORE DATABASE other_name FROM …); DROP DATABASE {database} works too"),
            BackupError::InGroup { database, group } => format!("remove it from the group first (ALTER AVAILABILITY GROUP {group} REMOVE DATABASE {database}), or restore under another name"),
            BackupError::NotRestoring { .. } => "start with RESTORE DATABASE … FROM DISK = '…' WITH NORECOVERY".into(),
            BackupError::AlreadyRestoring { database } => format!("continue with RESTORE LOG {database} …, finish with RESTORE DATABASE {database} WITH RECOVERY, or start over WITH REPLACE"),
            BackupError::Busy { .. } => "wait for it to finish, then run the statement again".into(),
            BackupError::WrongKind { wanted, .. } if *wanted == "LOG" => "restore a full backup with RESTORE DATABASE first".into(),
            BackupError::WrongKind { .. } => "restore log backups with RESTORE LOG".into(),
            BackupError::Chain { .. } => "restore the log backups in order, each starting at or before where the last one ended (RESTORE HEADERONLY shows their LSNs)".into(),
            BackupError::StopOutsideRange { .. } => "choose a point the backups cover (RESTORE HEADERONLY shows the first and last commit times and LSNs)".into(),
            BackupError::BadStop(_) => "write STOPAT = 'YYYY-MM-DD HH:MM:SS[.ffffff][+zone]' (UTC when no zone) or STOPATLSN = '<lsn>'".into(),
            BackupError::Stopped { database, .. } => format!("finish with RESTORE DATABASE {database} WITH RECOVERY"),
            BackupError::Verify { .. } => "the backup does not restore what it recorded: take a new backup; nothing was restored".into(),
            BackupError::LogMovedOn { .. } | BackupError::Interrupted { .. } => "run the backup again".into(),
            BackupError::BadUrl { .. } => "write TO URL = 's3://bucket/key' (or TO DISK = '/path/file.bak')".into(),
            BackupError::MissingObject { .. } => "check the bucket and key (the node's AWS_ENDPOINT and credentials choose the store)".into(),
            BackupError::Remote { .. } => "check the node's AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and AWS_ENDPOINT, that the bucket exists and the store is reachable, then run the statement again".into(),
            BackupError::Engine(e) => return e.hint(),
            BackupError::Log { .. } => return None,
        })
    }
}
