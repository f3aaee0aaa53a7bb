//! The storage engine: SQLite databases, one file each, under the node's data
//! directory.
//!
//! # Layout
//! ```text
//! DIR/databases/<name>.db      the SQLite file (WAL mode), with its -wal
//!                              (the WAL index is in memory: `vfs`, no -shm)
//! ```
//! A database named `availdb` is created on first start, so that libpq's
//! default (dbname = user name) connects.
//!
//! # Connections and the write path
//! Each [`Database`] has exactly **one writer connection**, behind a fair
//! async mutex: every write of a database — autocommit statements and whole
//! explicit transactions — runs on it, in the order sessions queued. This is
//! what lets the log-shipping layer capture each transaction's committed
//! pages from SQLite's WAL right after COMMIT and before the next write
//! ([`Writer::after_commit`] is that point), and it means SQLITE_BUSY never
//! reaches a client: contention is a queue with a `lock_timeout`.
//!
//! Reads run on a pool of `SQLITE_OPEN_READ_ONLY` connections, concurrently
//! with the writer and with each other; WAL mode gives each read transaction
//! a consistent snapshot.
//!
//! # Invariants
//! * Nothing but the writer (on a secondary: the redo applier, which the
//!   database owns) writes a database file (readers are opened read-only;
//!   an authorizer refuses ATTACH, DETACH and the PRAGMAs that change
//!   journaling, syncing or checkpointing).
//! * A commit acknowledged to a client is durable: in the availdb log,
//!   fsynced, and through the write fence's commit hook on the synchronous
//!   secondaries ([`fence`]).
//! * Whether a database may be written is one value, its [`Fence`], checked
//!   at the write lock, by SQLite's commit hook at every COMMIT, and at
//!   every acknowledgement.
//! * `commit_seq` counts commits; a read snapshot taken at `n` is the newest
//!   state as long as `commit_seq` is still `n` under the write lock. Sessions
//!   use this to upgrade a read transaction to a write transaction without
//!   breaking serializability.
//!
//! # The PostgreSQL catalog
//! Every connection also gets `pg_catalog` and `information_schema` as
//! TEMP views over SQLite's schema, and the SQL functions PostgreSQL
//! clients call ([`catalog`]); nothing of them is written to the file.
//!
//! # Session-scoped objects
//! A session's TEMP tables, views and triggers live in a private in-memory
//! database attached as `pg_temp` to whichever connection the session
//! borrows, never in the file, so never replicated ([`temp`]).
//!
//! # Memory
//! A read statement's rows stream to the client as SQLite produces them
//! ([`cursor`]); what availdb must hold whole is charged to the session's
//! and the node's budget and refused with 53200 past it ([`memory`]).
//!
//! # Known limits
//! * SQLite's automatic checkpoints are still on; log shipping takes them over.

mod capture;
pub mod catalog;
pub mod checksum;
pub mod cursor;
pub mod damage;
mod database;
mod error;
mod exec;
pub mod fence;
pub mod image;
pub mod memory;
mod recover;
pub mod redo;
pub mod sequence;
pub mod temp;
mod threads;
pub mod vfs;
pub mod wal;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use capture::{checkpoint_passive, wal_path};
pub use database::{
    monotonic_us, CommitHook, Conn, Database, PageRepair, Reader, Redone, Role, WriteGate, Writer,
    WriterGuard, PG_VERSION,
};
pub use error::{Error, Result};
pub use exec::{
    describe, is_readonly, run, run_briefly, run_charged, run_control, until, Brief, Column,
    Described, Outcome,
};
pub use fence::{Closed, Fence, PrimaryFence, Refusal, Writes};
pub use image::is_base_image;
pub use recover::{redo as redo_records, whole_transactions};
pub use sequence::SessionSequences;
pub use temp::TempSpace;

/// The database a fresh node creates, named after the default user.
pub const DEFAULT_DATABASE: &str = "availdb";

/// All databases of a node.
pub struct Engine {
    dir: PathBuf,
    log_root: PathBuf,
    databases: Mutex<HashMap<String, Arc<Database>>>,
    memory: Arc<memory::NodeMemory>,
}

impl Engine {
    /// Opens every database under `data_dir`, creating the directory and the
    /// default database on first start.
    pub fn open(data_dir: &Path) -> Result<Engine> {
        let dir = data_dir.join("databases");
        crate::durable::create_dir_all(&dir).map_err(|source| Error::Io {
            context: format!("cannot create data directory {}", dir.display()),
            source,
        })?;
        let engine = Engine {
            dir,
            log_root: data_dir.join("log"),
            databases: Mutex::new(HashMap::new()),
            memory: Arc::new(memory::NodeMemory::default()),
        };
        let entries = fs::read_dir(&engine.dir).map_err(|source| Error::Io {
            context: format!("cannot read data directory {}", engine.dir.display()),
            source,
        })?;
        let mut databases = engine.lock();
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = database_name_of(&path) else {
                continue;
            };
            let db = Database::open(&name, &path, &engine.log_of(&name))?;
            db.set_read_only(engine.read_only_marker(&name).exists());
            databases.insert(name.clone(), Arc::new(db));
        }
        if !databases.contains_key(DEFAULT_DATABASE) {
            let path = engine.path_of(DEFAULT_DATABASE);
            databases.insert(
                DEFAULT_DATABASE.to_string(),
                Arc::new(Database::open(
                    DEFAULT_DATABASE,
                    &path,
                    &engine.log_of(DEFAULT_DATABASE),
                )?),
            );
            sync_dir(&engine.dir)?;
        }
        drop(databases);
        Ok(engine)
    }

    /// The node's memory budget for availdb's own buffers.
    pub fn memory(&self) -> &Arc<memory::NodeMemory> {
        &self.memory
    }

    /// The database called `name`.
    pub fn database(&self, name: &str) -> Result<Arc<Database>> {
        self.lock()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NoSuchDatabase(name.to_string()))
    }

    /// Whether anything but the engine itself holds database `name` (a
    /// session, a replica's redo): it cannot be replaced or dropped then.
    pub fn in_use(&self, name: &str) -> bool {
        self.lock()
            .get(name)
            .is_some_and(|db| Arc::strong_count(db) > 1)
    }

    /// Names of all databases, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lock().keys().cloned().collect();
        names.sort();
        names
    }

    /// Makes a database outside any availability group READ_ONLY (or
    /// writable again), durably: `DATA_DIR/databases/<name>.read_only`
    /// exists while it is. (A database of a group keeps the property in the
    /// group's definition instead.)
    pub fn set_read_only(&self, name: &str, read_only: bool) -> Result<()> {
        let db = self.database(name)?;
        let marker = self.read_only_marker(name);
        let io = |source| Error::Io {
            context: format!("cannot record READ_ONLY in {}", marker.display()),
            source,
        };
        if read_only {
            fs::File::create(&marker)
                .and_then(|f| f.sync_all())
                .map_err(io)?;
        } else {
            match fs::remove_file(&marker) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
        }
        sync_dir(&self.dir)?;
        db.set_read_only(read_only);
        Ok(())
    }

    fn read_only_marker(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.read_only"))
    }

    /// `CREATE DATABASE name`.
    pub fn create_database(&self, name: &str) -> Result<()> {
        self.create_database_fenced(name, Fence::Standalone)
    }

    /// Creates a database whose write fence is `fence` from the moment it
    /// exists (a secondary's copy: nothing but redo may write it).
    pub fn create_database_fenced(&self, name: &str, fence: Fence) -> Result<()> {
        validate_name(name)?;
        let mut databases = self.lock();
        if databases.contains_key(name) {
            return Err(Error::DatabaseExists(name.to_string()));
        }
        // A log left by an earlier database of the same name is not this one's.
        remove_dir_if_present(&self.log_of(name))?;
        let db = Database::open(name, &self.path_of(name), &self.log_of(name))?;
        db.set_fence(fence)?;
        databases.insert(name.to_string(), Arc::new(db));
        sync_dir(&self.dir)
    }

    /// Makes the file at `file` (a restored copy, page images only) the
    /// database `name`, its log starting at `lsn` in `epoch` (the restore's
    /// end), with write fence `fence` from its first moment (a secondary's
    /// copy when a replica is seeded manually): the log is set up first,
    /// then the file moved in, then it is opened. An existing database of
    /// that name is replaced (refused while a session uses it); the caller
    /// decides whether it may be.
    pub fn install_database(
        &self,
        name: &str,
        file: &Path,
        lsn: crate::log::Lsn,
        epoch: u64,
        fence: Fence,
    ) -> Result<()> {
        validate_name(name)?;
        let mut databases = self.lock();
        if let Some(db) = databases.get(name) {
            if Arc::strong_count(db) > 1 {
                return Err(Error::DatabaseInUse(name.to_string()));
            }
            databases.remove(name);
            remove_files(&self.path_of(name))?;
        }
        let log_dir = self.log_of(name);
        remove_dir_if_present(&log_dir)?;
        let log_error = |e: crate::log::LogError| Error::Io {
            context: format!("cannot start the log of restored database \"{name}\""),
            source: std::io::Error::other(e.to_string()),
        };
        {
            let log = crate::log::Log::open(&log_dir).map_err(log_error)?;
            log.restart_at(lsn, epoch).map_err(log_error)?;
            log.image_done().map_err(log_error)?;
        }
        let path = self.path_of(name);
        fs::rename(file, &path).map_err(|source| Error::Io {
            context: format!("cannot move the restored database into {}", path.display()),
            source,
        })?;
        sync_dir(&self.dir)?;
        let db = Database::open(name, &path, &log_dir)?;
        db.set_fence(fence)?;
        databases.insert(name.to_string(), Arc::new(db));
        Ok(())
    }

    /// The node's data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.parent().unwrap_or(&self.dir)
    }

    /// `DROP DATABASE name`: refused while any session uses it.
    pub fn drop_database(&self, name: &str) -> Result<()> {
        let mut databases = self.lock();
        let db = databases
            .get(name)
            .ok_or_else(|| Error::NoSuchDatabase(name.to_string()))?;
        // The catalog holds one reference; every session holds another.
        if Arc::strong_count(db) > 1 {
            return Err(Error::DatabaseInUse(name.to_string()));
        }
        databases.remove(name);
        remove_files(&self.path_of(name))?;
        remove_dir_if_present(&self.log_of(name))
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.db"))
    }

    fn log_of(&self, name: &str) -> PathBuf {
        self.log_root.join(name)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Database>>> {
        self.databases.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Removes a database file and SQLite's companions (`-wal`, `-shm`).
fn remove_files(path: &Path) -> Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", path.display()));
        match fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io {
                    context: format!("cannot remove {}", file.display()),
                    source,
                })
            }
        }
    }
    Ok(())
}

/// fsync of a directory: its entries (a new file, a new subdirectory) survive
/// a power loss.
fn sync_dir(dir: &Path) -> Result<()> {
    crate::durable::sync_dir(dir).map_err(|source| Error::Io {
        context: format!("cannot sync directory {}", dir.display()),
        source,
    })
}

fn remove_dir_if_present(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            context: format!("cannot remove {}", dir.display()),
            source,
        }),
    }
}

fn database_name_of(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let name = file.strip_suffix(".db")?;
    validate_name(name).ok()?;
    Some(name.to_string())
}

/// Database names become file names: keep them to identifiers.
/// Refuses a database name that cannot be a file name (42602): 1-63
/// letters, digits or underscores, starting with a letter or underscore.
pub fn validate_database_name(name: &str) -> Result<()> {
    validate_name(name)
}

fn validate_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if first_ok && rest_ok && name.len() <= 63 {
        Ok(())
    } else {
        Err(Error::InvalidDatabaseName(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_database_exists_on_first_start_and_databases_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        assert_eq!(engine.names(), ["availdb"]);
        engine.create_database("app").unwrap();
        assert_eq!(
            engine.create_database("app").unwrap_err().sqlstate(),
            "42P04"
        );
        drop(engine);
        let engine = Engine::open(dir.path()).unwrap();
        assert_eq!(engine.names(), ["app", "availdb"]);
    }

    #[test]
    fn the_folders_and_files_of_a_new_node_and_database_are_synced_in_their_parents() {
        // Without these syncs a power loss can take a whole database (its
        // file's entry, or its log folder's) that this node had already
        // acknowledged writes or hardened records for.
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let data = root.join("data");
        let engine = Engine::open(&data).unwrap();
        let synced = crate::durable::synced_under(root);
        for (folder, holds) in [
            (root.to_path_buf(), "data/"),
            (data.clone(), "databases/ and log/"),
            (data.join("log"), "log/availdb/"),
            (data.join("databases"), "availdb.db"),
        ] {
            assert!(
                synced.contains(&folder),
                "{} (holding {holds}) was never synced: {synced:?}",
                folder.display()
            );
        }
        let before = synced.len();
        engine.create_database("app").unwrap();
        let synced = &crate::durable::synced_under(root)[before..];
        for folder in [data.join("log"), data.join("databases")] {
            assert!(
                synced.contains(&folder),
                "{} was not synced for database app: {synced:?}",
                folder.display()
            );
        }
    }

    #[test]
    fn drop_database_is_refused_while_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        engine.create_database("app").unwrap();
        let session = engine.database("app").unwrap();
        assert_eq!(engine.drop_database("app").unwrap_err().sqlstate(), "55006");
        drop(session);
        engine.drop_database("app").unwrap();
        assert_eq!(engine.database("app").err().unwrap().sqlstate(), "3D000");
    }

    #[test]
    fn database_names_are_identifiers() {
        for bad in ["", "1abc", "a-b", "../x", "a b", &"x".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        for good in ["a", "_x", "App_2"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
    }
}
