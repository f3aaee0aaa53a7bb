//! Durable Raft storage: the log, the vote and the committed and purged
//! markers in one append-only file; the state machine's snapshot in another.
//!
//! # Files (in the cluster directory, e.g. `DATA_DIR/cluster/`)
//! ```text
//! log        "AVRAFTL1" then records, each a frame (frame.rs) whose body is
//!            one JSON LogRecord: Entry(entry) | Vote(vote) |
//!            Committed(log id) | Truncate(first index removed) |
//!            Purge(last log id removed)
//! log.tmp    a rewrite of `log` in progress (ignored and replaced on open)
//! snapshot   "AVRAFTS1" then one frame: {meta, state} (the ClusterState)
//! ```
//! Opening replays `log` from the start: the last `Vote` and `Committed`
//! win, `Truncate` and `Purge` remove entries, so the file's meaning is
//! the sequence of operations openraft asked for, in order.
//!
//! # Durability (fsync points)
//! * Every operation appends its record(s) and `fdatasync`s `log` before it
//!   returns; `append` reports the entries flushed to openraft only after
//!   that sync. Writes are serialized (openraft calls with `&mut self`, and
//!   the call awaits its sync), so the file order is the order of calls.
//! * New files are synced, then their directory.
//! * When purged records make up most of `log`, it is rewritten: the live
//!   state goes to `log.tmp`, which is synced, renamed over `log`, and the
//!   directory synced. A crash leaves either the old or the new file whole.
//! * The snapshot is written the same way (`snapshot.tmp`, sync, rename,
//!   directory sync) before openraft is told it exists, so a purge that
//!   follows it never loses state.
//! * The state machine itself is in memory: on start it is the snapshot,
//!   and openraft re-applies the log from there up to the committed marker.
//!
//! # Damage
//! Only the last write can be torn by a crash, and it was never reported
//! durable. On open, a damaged record (short, bad checksum) after which no
//! intact record follows is such a torn tail: it is cut (and the cut
//! synced). A damaged record followed by an intact one, an intact record
//! that does not parse, or a damaged snapshot is corruption: the node
//! refuses to start rather than forget a vote or an entry it acknowledged.
//! (A crash that kept a later part of the last write but lost an earlier
//! part looks the same: refusing is safe, though the operator must act.)

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Cursor, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::frame;
use super::lease::LeaseBook;
use super::state::{ClusterState, CommandResult};
use super::{NodeId, NodeInfo, TypeConfig};

const LOG_FILE: &str = "log";
const SNAPSHOT_FILE: &str = "snapshot";
const LOG_MAGIC: &[u8; 8] = b"AVRAFTL1";
const SNAPSHOT_MAGIC: &[u8; 8] = b"AVRAFTS1";
/// `log` is rewritten at a purge once it is at least this large and twice
/// its size after the last rewrite.
const COMPACT_MIN_BYTES: u64 = 1 << 20;

/// Why the cluster store cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file system failed.
    #[error("cluster store I/O error in {path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// A file is damaged before its end, or is not ours.
    #[error(
        "cluster store file {path} is corrupt at byte {offset} ({cause}); this node's Raft \
         state cannot be trusted: remove the node from the cluster, delete its cluster \
         directory and add it back as a new node"
    )]
    Corrupt {
        /// File.
        path: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong.
        cause: String,
    },
    /// Raft state without a cluster id: a data directory from before
    /// cluster ids (`identity.rs`).
    #[error(
        "the cluster directory {} holds the Raft state of a cluster formed before availdb gave \
         clusters an id, and no id: give that cluster one id — e.g. the output of `uuidgen` \
         (1 to 64 ASCII letters, digits, '-', '_' or '.') — and write it, the same on every \
         node of the cluster, to {} (e.g. `echo ID > {}`), then start the node again",
        dir.display(),
        dir.join(super::identity::ID_FILE).display(),
        dir.join(super::identity::ID_FILE).display()
    )]
    NoClusterId {
        /// The cluster directory.
        dir: PathBuf,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One operation on the log, as stored.
#[derive(Debug, Serialize, Deserialize)]
enum LogRecord {
    Entry(Entry<TypeConfig>),
    Vote(Vote<NodeId>),
    Committed(Option<LogId<NodeId>>),
    /// Removes the entries from this index on.
    Truncate(u64),
    /// Removes the entries up to this log id, inclusive.
    Purge(LogId<NodeId>),
}

/// The log as openraft sees it, in memory; rebuilt from `log` on open.
#[derive(Debug, Default)]
struct LogMem {
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    purged: Option<LogId<NodeId>>,
}

impl LogMem {
    fn apply(&mut self, record: LogRecord) {
        match record {
            LogRecord::Entry(entry) => {
                self.entries.insert(entry.log_id.index, entry);
            }
            LogRecord::Vote(vote) => self.vote = Some(vote),
            LogRecord::Committed(committed) => self.committed = committed,
            LogRecord::Truncate(since) => {
                self.entries.split_off(&since);
            }
            LogRecord::Purge(upto) => {
                self.entries = self.entries.split_off(&(upto.index + 1));
                self.purged = Some(upto);
            }
        }
    }

    /// Records that rebuild this state from nothing.
    fn records(&self) -> Vec<LogRecord> {
        let mut out = Vec::with_capacity(self.entries.len() + 3);
        out.extend(self.vote.map(LogRecord::Vote));
        out.extend(self.purged.map(LogRecord::Purge));
        out.extend(self.entries.values().cloned().map(LogRecord::Entry));
        out.push(LogRecord::Committed(self.committed));
        out
    }
}

/// The open `log` file.
struct LogFile {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    len: u64,
    /// Length right after the last rewrite; 0 after open, whose file may
    /// be mostly dead already.
    base_len: u64,
    compact_min: u64,
}

impl LogFile {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.file.sync_data()?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn wants_rewrite(&self) -> bool {
        self.len >= self.compact_min.max(2 * self.base_len)
    }

    /// Replaces the file by `records` (temp file, sync, rename, dir sync).
    fn rewrite(&mut self, records: &[LogRecord]) -> io::Result<()> {
        let mut bytes = LOG_MAGIC.to_vec();
        for r in records {
            frame::encode_into(&mut bytes, r);
        }
        let tmp = self.path.with_extension("tmp");
        replace_file(&self.dir, &tmp, &self.path, &bytes)?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.len = bytes.len() as u64;
        self.base_len = self.len;
        Ok(())
    }
}

/// Writes `bytes` to `tmp`, syncs it, renames it to `path`, syncs `dir`.
fn replace_file(dir: &Path, tmp: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = File::create(tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(tmp, path)?;
    File::open(dir)?.sync_all()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a record decodes to.
enum Decoded {
    Record(LogRecord, usize),
    /// Short or failing its checksum: torn, or damaged.
    Damaged(String),
}

fn decode_record(bytes: &[u8]) -> Result<Decoded, String> {
    match frame::split(bytes) {
        Ok(Some((body, len))) if !body.is_empty() => serde_json::from_slice(body)
            .map(|r| Decoded::Record(r, len))
            .map_err(|e| format!("unreadable record: {e}")),
        // An empty body with a zero checksum is what a zero-filled tail
        // looks like: damage, not a record.
        Ok(Some(_)) => Ok(Decoded::Damaged("empty record".into())),
        Ok(None) => Ok(Decoded::Damaged("record cut short".into())),
        Err(e) => Ok(Decoded::Damaged(e.to_string())),
    }
}

/// Opens (creating if needed) `dir/log` and replays it.
fn open_log(dir: &Path) -> Result<(LogFile, LogMem), StoreError> {
    let path = dir.join(LOG_FILE);
    let mut bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io_err(&path)(e)),
    };
    if bytes.len() < LOG_MAGIC.len() && LOG_MAGIC.starts_with(&bytes) {
        // New, or its creation was torn: start it afresh.
        replace_file(dir, &path.with_extension("tmp"), &path, LOG_MAGIC).map_err(io_err(&path))?;
        bytes = LOG_MAGIC.to_vec();
    }
    if !bytes.starts_with(LOG_MAGIC) {
        return Err(StoreError::Corrupt {
            path,
            offset: 0,
            cause: "not an availdb cluster log".into(),
        });
    }
    let corrupt = |offset: usize, cause: String| StoreError::Corrupt {
        path: path.clone(),
        offset: offset as u64,
        cause,
    };
    let mut mem = LogMem::default();
    let mut at = LOG_MAGIC.len();
    while at < bytes.len() {
        match decode_record(&bytes[at..]).map_err(|cause| corrupt(at, cause))? {
            Decoded::Record(record, len) => {
                mem.apply(record);
                at += len;
            }
            Decoded::Damaged(cause) => {
                let intact_after = (at + 1..bytes.len())
                    .any(|y| matches!(decode_record(&bytes[y..]), Ok(Decoded::Record(..))));
                if intact_after {
                    return Err(corrupt(at, cause));
                }
                tracing::warn!(log = %path.display(), at, %cause, "cutting a torn record at the end of the cluster log");
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                f.set_len(at as u64).map_err(io_err(&path))?;
                f.sync_all().map_err(io_err(&path))?;
                break;
            }
        }
    }
    let file = OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(io_err(&path))?;
    let len = at as u64;
    Ok((
        LogFile {
            dir: dir.to_path_buf(),
            path,
            file,
            len,
            base_len: 0,
            compact_min: COMPACT_MIN_BYTES,
        },
        mem,
    ))
}

/// A snapshot as kept on disk and in memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, NodeInfo>,
    state: ClusterState,
}

impl StoredSnapshot {
    fn to_snapshot(&self) -> Snapshot<TypeConfig> {
        Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(
                serde_json::to_vec(&self.state).expect("the cluster state serializes"),
            )),
        }
    }
}

fn load_snapshot(dir: &Path) -> Result<Option<StoredSnapshot>, StoreError> {
    let path = dir.join(SNAPSHOT_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let corrupt = |cause: String| StoreError::Corrupt {
        path: path.clone(),
        offset: 0,
        cause,
    };
    let Some(body) = bytes.strip_prefix(SNAPSHOT_MAGIC) else {
        return Err(corrupt("not an availdb cluster snapshot".into()));
    };
    match frame::split(body) {
        Ok(Some((json, len))) if len == body.len() => serde_json::from_slice(json)
            .map(Some)
            .map_err(|e| corrupt(e.to_string())),
        Ok(_) => Err(corrupt("snapshot length does not match the file".into())),
        Err(e) => Err(corrupt(e.to_string())),
    }
}

/// Saves `snapshot` durably and makes it the current one, unless `only_if_newer`
/// and the current one is newer.
fn save_snapshot(
    dir: &Path,
    slot: &Mutex<Option<StoredSnapshot>>,
    snapshot: StoredSnapshot,
    only_if_newer: bool,
) -> io::Result<()> {
    let mut current = lock(slot);
    if only_if_newer
        && current
            .as_ref()
            .is_some_and(|c| c.meta.last_log_id > snapshot.meta.last_log_id)
    {
        return Ok(());
    }
    let mut bytes = SNAPSHOT_MAGIC.to_vec();
    frame::encode_into(&mut bytes, &snapshot);
    let path = dir.join(SNAPSHOT_FILE);
    replace_file(dir, &path.with_extension("tmp"), &path, &bytes)?;
    *current = Some(snapshot);
    Ok(())
}

/// Runs blocking file work off the async worker threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e.to_string())))
}

/// Opens the cluster store in `dir`: the log store and the state machine.
pub(crate) fn open(
    dir: &Path,
    leases: Arc<Mutex<LeaseBook>>,
) -> Result<(LogStore, StateMachineStore), StoreError> {
    crate::durable::create_dir_all(dir).map_err(io_err(dir))?;
    let (file, mem) = open_log(dir)?;
    let snapshot = load_snapshot(dir)?;
    let state = snapshot
        .as_ref()
        .map(|s| s.state.clone())
        .unwrap_or_default();
    Ok((
        LogStore {
            mem: Arc::new(Mutex::new(mem)),
            file: Arc::new(Mutex::new(file)),
        },
        StateMachineStore {
            dir: dir.to_path_buf(),
            state: watch::Sender::new(state),
            snapshot: Arc::new(Mutex::new(snapshot)),
            snapshot_seq: 0,
            leases,
        },
    ))
}

/// The Raft log, vote and markers ([`RaftLogStorage`]).
pub(crate) struct LogStore {
    mem: Arc<Mutex<LogMem>>,
    file: Arc<Mutex<LogFile>>,
}

/// A reader of the log for openraft's replication tasks.
pub(crate) struct LogReader {
    mem: Arc<Mutex<LogMem>>,
}

fn read_entries<RB: RangeBounds<u64>>(mem: &Mutex<LogMem>, range: RB) -> Vec<Entry<TypeConfig>> {
    lock(mem)
        .entries
        .range(range)
        .map(|(_, e)| e.clone())
        .collect()
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        Ok(read_entries(&self.mem, range))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        Ok(read_entries(&self.mem, range))
    }
}

/// Stalls a node's log writes in tests, as a disk that does not answer
/// would: [`Staller::stall`] holds the log file from another thread until
/// the returned [`Stall`] is dropped, so every write (an append, a vote)
/// waits for it.
#[cfg(test)]
#[derive(Clone)]
pub(crate) struct Staller(Arc<Mutex<LogFile>>);

/// Log writes wait while this lives (see [`Staller`]).
#[cfg(test)]
pub(crate) struct Stall {
    release: Option<std::sync::mpsc::Sender<()>>,
    holder: Option<std::thread::JoinHandle<()>>,
}

#[cfg(test)]
impl Staller {
    /// Takes the log file once it is free; returns when it is held.
    pub(crate) fn stall(&self) -> Stall {
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let file = self.0.clone();
        let holder = std::thread::spawn(move || {
            let _held = lock(&file);
            let _ = held_tx.send(());
            let _ = released.recv();
        });
        held_rx
            .recv()
            .expect("the stalling thread took the log file");
        Stall {
            release: Some(release),
            holder: Some(holder),
        }
    }
}

#[cfg(test)]
impl Drop for Stall {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(holder) = self.holder.take() {
            let _ = holder.join();
        }
    }
}

impl LogStore {
    /// A handle to stall this log's writes (tests).
    #[cfg(test)]
    pub(crate) fn staller(&self) -> Staller {
        Staller(self.file.clone())
    }

    /// True when the log holds anything Raft wrote: a vote, entries, or a
    /// purge (a node that never joined a cluster has none of these).
    pub(crate) fn holds_state(&self) -> bool {
        let mem = lock(&self.mem);
        mem.vote.is_some() || !mem.entries.is_empty() || mem.purged.is_some()
    }

    /// Appends `records` durably, then applies them to the in-memory log.
    async fn write(&mut self, records: Vec<LogRecord>) -> io::Result<()> {
        let mut bytes = Vec::new();
        for r in &records {
            frame::encode_into(&mut bytes, r);
        }
        let file = self.file.clone();
        blocking(move || lock(&file).append(&bytes)).await?;
        let mut mem = lock(&self.mem);
        for r in records {
            mem.apply(r);
        }
        Ok(())
    }

    /// Rewrites `log` with only the live state when purges left it mostly dead.
    async fn maybe_rewrite(&mut self) -> io::Result<()> {
        if !lock(&self.file).wants_rewrite() {
            return Ok(());
        }
        let records = lock(&self.mem).records();
        let file = self.file.clone();
        blocking(move || lock(&file).rewrite(&records)).await
    }
}

fn write_logs_err(e: &io::Error) -> StorageError<NodeId> {
    StorageIOError::write_logs(AnyError::new(e)).into()
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let mem = lock(&self.mem);
        let last = mem.entries.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: mem.purged,
            last_log_id: last.or(mem.purged),
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader {
            mem: self.mem.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.write(vec![LogRecord::Vote(*vote)])
            .await
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(lock(&self.mem).vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.write(vec![LogRecord::Committed(committed)])
            .await
            .map_err(|e| write_logs_err(&e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(lock(&self.mem).committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let records = entries.into_iter().map(LogRecord::Entry).collect();
        match self.write(records).await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(write_logs_err(&e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.write(vec![LogRecord::Truncate(log_id.index)])
            .await
            .map_err(|e| write_logs_err(&e))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.write(vec![LogRecord::Purge(log_id)])
            .await
            .map_err(|e| write_logs_err(&e))?;
        self.maybe_rewrite().await.map_err(|e| write_logs_err(&e))
    }
}

/// The state machine ([`RaftStateMachine`]): a [`ClusterState`] in memory,
/// published to readers through a watch channel, and its snapshot on disk.
pub(crate) struct StateMachineStore {
    dir: PathBuf,
    state: watch::Sender<ClusterState>,
    snapshot: Arc<Mutex<Option<StoredSnapshot>>>,
    /// Makes snapshot ids unique within this process.
    snapshot_seq: u64,
    leases: Arc<Mutex<LeaseBook>>,
}

impl StateMachineStore {
    /// A receiver that sees every applied change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<ClusterState> {
        self.state.subscribe()
    }

    /// True when a snapshot was saved here.
    pub(crate) fn has_snapshot(&self) -> bool {
        lock(&self.snapshot).is_some()
    }
}

/// Builds a snapshot from a copy of the state taken when it was asked for.
pub(crate) struct SnapshotBuilder {
    dir: PathBuf,
    state: ClusterState,
    snapshot_id: String,
    slot: Arc<Mutex<Option<StoredSnapshot>>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let stored = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: self.state.last_applied,
                last_membership: self.state.membership.clone(),
                snapshot_id: self.snapshot_id.clone(),
            },
            state: self.state.clone(),
        };
        let snapshot = stored.to_snapshot();
        let (dir, slot) = (self.dir.clone(), self.slot.clone());
        let signature = snapshot.meta.signature();
        blocking(move || save_snapshot(&dir, &slot, stored, true))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(signature), AnyError::new(&e)))?;
        Ok(snapshot)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, NodeInfo>), StorageError<NodeId>>
    {
        let state = self.state.borrow();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let now = std::time::Instant::now();
        let mut results = Vec::new();
        let mut leases = lock(&self.leases);
        self.state.send_modify(|state| {
            for entry in entries {
                state.last_applied = Some(entry.log_id);
                let result = match entry.payload {
                    EntryPayload::Blank => CommandResult::Ok,
                    EntryPayload::Normal(command) => {
                        let result = state.apply(&command);
                        if result == CommandResult::Ok {
                            leases.applied(&command, now);
                        }
                        result
                    }
                    EntryPayload::Membership(membership) => {
                        state.membership = StoredMembership::new(Some(entry.log_id), membership);
                        CommandResult::Ok
                    }
                };
                results.push(result);
            }
        });
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        self.snapshot_seq += 1;
        let state = self.state.borrow().clone();
        let at = state.last_applied.map_or("none".to_string(), |id| {
            format!("{}-{}", id.leader_id, id.index)
        });
        SnapshotBuilder {
            dir: self.dir.clone(),
            snapshot_id: format!("{at}-{}", self.snapshot_seq),
            state,
            slot: self.snapshot.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let signature = meta.signature();
        let mut state: ClusterState = serde_json::from_slice(snapshot.get_ref()).map_err(|e| {
            StorageIOError::read_snapshot(Some(signature.clone()), AnyError::new(&e))
        })?;
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            state: state.clone(),
        };
        let (dir, slot) = (self.dir.clone(), self.snapshot.clone());
        blocking(move || save_snapshot(&dir, &slot, stored, false))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(signature), AnyError::new(&e)))?;
        self.state.send_replace(state);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(lock(&self.snapshot)
            .as_ref()
            .map(StoredSnapshot::to_snapshot))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use openraft::storage::RaftLogStorageExt;
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::{CommittedLeaderId, Membership};
    use tempfile::TempDir;

    use super::*;
    use crate::cluster::state::Command;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
            let dir = tempfile::tempdir().expect("a temp dir");
            let (log, sm) = open(dir.path(), Default::default()).expect("a fresh store opens");
            Ok((dir, log, sm))
        }
    }

    #[test]
    fn openraft_storage_conformance_suite() {
        // The suite runs each case on its own runtime: not inside #[tokio::test].
        Suite::test_all(Builder).unwrap();
    }

    fn log_id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Normal(Command::RemoveGroup(format!("g{index}"))),
        }
    }

    async fn indexes(log: &mut LogStore) -> Vec<u64> {
        log.try_get_log_entries(..)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect()
    }

    fn reopen(dir: &Path) -> LogStore {
        open(dir, Default::default()).unwrap().0
    }

    #[tokio::test]
    async fn the_log_vote_and_markers_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = reopen(dir.path());
        log.blocking_append((1..=6).map(|i| entry(1, i)))
            .await
            .unwrap();
        log.save_vote(&Vote::new(2, 3)).await.unwrap();
        log.truncate(log_id(1, 5)).await.unwrap();
        log.blocking_append([entry(2, 5)]).await.unwrap();
        log.save_committed(Some(log_id(2, 5))).await.unwrap();
        log.purge(log_id(1, 2)).await.unwrap();
        drop(log);

        let mut log = reopen(dir.path());
        assert_eq!(indexes(&mut log).await, [3, 4, 5]);
        let e5 = log.try_get_log_entries(5..6).await.unwrap();
        assert_eq!(
            e5[0].log_id,
            log_id(2, 5),
            "the truncated entry was replaced"
        );
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, 3)));
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2, 5)));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
        assert_eq!(state.last_log_id, Some(log_id(2, 5)));
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_and_the_log_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        let mut log = reopen(dir.path());
        log.blocking_append([entry(1, 1), entry(1, 2)])
            .await
            .unwrap();
        drop(log);
        let whole = fs::read(&path).unwrap();
        // Every possible tear of the last record, and a zero-filled tail.
        let first_record_end = whole.len() - frame::encode(&LogRecord::Entry(entry(1, 2))).len();
        let mut tails: Vec<Vec<u8>> = (first_record_end + 1..whole.len())
            .map(|cut| whole[..cut].to_vec())
            .collect();
        tails.push([&whole[..], &[0u8; 100][..]].concat());
        for bytes in tails {
            fs::write(&path, &bytes).unwrap();
            let mut log = reopen(dir.path());
            let expect: &[u64] = if bytes.len() > whole.len() {
                &[1, 2]
            } else {
                &[1]
            };
            assert_eq!(
                indexes(&mut log).await,
                expect,
                "file of {} bytes",
                bytes.len()
            );
            log.blocking_append([entry(1, 9)]).await.unwrap();
            drop(log);
            let mut log = reopen(dir.path());
            assert_eq!(indexes(&mut log).await.last(), Some(&9));
        }
    }

    #[tokio::test]
    async fn damage_before_the_end_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        let mut log = reopen(dir.path());
        log.blocking_append([entry(1, 1), entry(1, 2)])
            .await
            .unwrap();
        log.save_vote(&Vote::new(1, 1)).await.unwrap();
        drop(log);
        let good = fs::read(&path).unwrap();
        let cases: Vec<(Vec<u8>, u64)> = vec![
            // A flipped bit in the first record: a vote follows, intact.
            (
                {
                    let mut b = good.clone();
                    b[20] ^= 1;
                    b
                },
                8,
            ),
            // A length that points past the end, with intact records after it.
            (
                {
                    let mut b = good.clone();
                    b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
                    b
                },
                8,
            ),
            // Not our file at all.
            (b"PGDMP...".to_vec(), 0),
        ];
        for (bytes, at) in cases {
            fs::write(&path, &bytes).unwrap();
            match open(dir.path(), Default::default()) {
                Err(StoreError::Corrupt { offset, .. }) => assert_eq!(offset, at),
                Err(e) => panic!("unexpected error: {e}"),
                Ok(_) => panic!("a damaged log opened"),
            }
        }
    }

    #[tokio::test]
    async fn purges_rewrite_a_log_that_is_mostly_dead() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        let mut log = reopen(dir.path());
        lock(&log.file).compact_min = 0;
        log.save_vote(&Vote::new(4, 1)).await.unwrap();
        log.blocking_append((1..=50).map(|i| entry(4, i)))
            .await
            .unwrap();
        log.save_committed(Some(log_id(4, 50))).await.unwrap();
        let before = fs::metadata(&path).unwrap().len();
        log.purge(log_id(4, 45)).await.unwrap();
        let after = fs::metadata(&path).unwrap().len();
        assert!(
            after < before / 4,
            "{after} bytes after purge, {before} before"
        );
        log.blocking_append([entry(4, 51)]).await.unwrap();
        drop(log);

        let mut log = reopen(dir.path());
        assert_eq!(indexes(&mut log).await, [46, 47, 48, 49, 50, 51]);
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(4, 1)));
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(4, 50)));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(4, 45)));
    }

    #[tokio::test]
    async fn a_snapshot_survives_a_restart_and_damage_to_it_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm) = open(dir.path(), Default::default()).unwrap();
        let membership = Membership::new(vec![BTreeSet::from([1])], None);
        let entries = [
            Entry {
                log_id: log_id(1, 1),
                payload: EntryPayload::Membership(membership),
            },
            entry(1, 2),
        ];
        let results = sm.apply(entries).await.unwrap();
        assert_eq!(results[0], CommandResult::Ok);
        assert!(
            matches!(results[1], CommandResult::Rejected(_)),
            "no group g2"
        );
        let built = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(built.meta.last_log_id, Some(log_id(1, 2)));
        let state = sm.subscribe().borrow().clone();
        drop(sm);

        let (_log, mut sm) = open(dir.path(), Default::default()).unwrap();
        assert_eq!(*sm.subscribe().borrow(), state);
        assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 2)));
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, built.meta);
        assert_eq!(current.snapshot.get_ref(), built.snapshot.get_ref());
        drop(sm);

        let path = dir.path().join(SNAPSHOT_FILE);
        let mut bytes = fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 10] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            open(dir.path(), Default::default()),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn the_log_format_is_pinned() {
        // A change here breaks every existing cluster log (e.g. an openraft
        // upgrade that renames a serde field): it needs a format version.
        let records = [
            (
                LogRecord::Entry(Entry {
                    log_id: log_id(2, 7),
                    payload: EntryPayload::Normal(Command::RemoveGroup("ag1".into())),
                }),
                r#"{"Entry":{"log_id":{"leader_id":{"term":2,"node_id":1},"index":7},"payload":{"Normal":{"RemoveGroup":"ag1"}}}}"#,
            ),
            (
                LogRecord::Vote(Vote::new_committed(2, 1)),
                r#"{"Vote":{"leader_id":{"term":2,"node_id":1},"committed":true}}"#,
            ),
            (
                LogRecord::Committed(Some(log_id(2, 7))),
                r#"{"Committed":{"leader_id":{"term":2,"node_id":1},"index":7}}"#,
            ),
            (LogRecord::Truncate(8), r#"{"Truncate":8}"#),
            (
                LogRecord::Purge(log_id(2, 7)),
                r#"{"Purge":{"leader_id":{"term":2,"node_id":1},"index":7}}"#,
            ),
        ];
        for (record, json) in records {
            let bytes = frame::encode(&record);
            let len = json.len();
            assert_eq!(&bytes[..4], &(len as u32).to_le_bytes());
            assert_eq!(&bytes[4..4 + len], json.as_bytes());
            assert_eq!(
                &bytes[4 + len..],
                &crc32c::crc32c(json.as_bytes()).to_le_bytes()
            );
        }
    }
}
