//! Backups and restores: `BACKUP DATABASE | LOG`, `RESTORE DATABASE | LOG
//! | VERIFYONLY | HEADERONLY`, on the primary or a synchronizing secondary.
//!
//! # What a backup is
//! A **full backup** is every page of the database as one read snapshot
//! sees it, plus the log records `[first LSN, end LSN)` around that
//! snapshot; restored, it is the database at exactly its end LSN. A **log
//! backup** is the records of an LSN range. Both are one file in the
//! format of `format.rs` (`docs/backup-format.md`): a header (what, which
//! database, which LSNs), zstd-compressible blocks each with its own
//! crc32c, and a manifest at the end that lists the blocks and the crc32c
//! of every page at the end LSN. A file without its trailer is truncated,
//! so a backup that stopped half-way can never be taken for a whole one.
//!
//! # Consistent at one LSN without holding the write lock
//! The log's records are full page images, and redoing page images is
//! idempotent: applying records `[a, e)` to any state between `a` and `e`
//! gives the state at `e` (recovery relies on the same property). So a full
//! backup needs no snapshot *at* a known LSN, only one *between* two:
//! 1. `floor` = the applied LSN, read first: every transaction before it
//!    committed in SQLite already, so the snapshot begun next holds it.
//! 2. A read transaction begins on a pooled read-only connection (SQLite's
//!    WAL snapshot: writers and redo go on).
//! 3. [`crate::engine::Database::commits_settled`] takes the write lock for
//!    an instant, so no commit sits between SQLite and the log; then `end`
//!    = the newest transaction boundary of the log. On a secondary records
//!    are in the log before redo applies them, on the primary after the
//!    settle: either way the snapshot holds nothing past `end`.
//! 4. The snapshot's pages are copied (schema first, as a full image:
//!    `engine::image`), then the log `[from, end)`, where `from` is one
//!    transaction before `floor` (see *Chains*). The pages are read from
//!    the database file itself, in 8 MiB positioned reads, and the pages
//!    the WAL holds through the snapshot (`pages.rs`: while the snapshot
//!    is held, SQLite neither restarts the WAL nor checkpoints a frame past
//!    it into the file, so every other page is the snapshot's in the file).
//!    Several threads check each page's checksum, hash it and compress the
//!    blocks; one writes them in order, starting the writeback as it goes
//!    (`durable::FlushBehind`).
//!
//! The copy holds no lock: the only cost to the source is a read snapshot,
//! which keeps SQLite's WAL from being checkpointed past it while it runs.
//! On a secondary, whose CPU and disk also harden the primary's
//! synchronous commits, the backup's threads run at nice +10 and in the
//! idle I/O class ([`BackupRequest::gentle`]), and its reads are paced
//! ([`rate`], `--backup-kib-per-s`, by default
//! [`rate::DEFAULT_SECONDARY_RATE_BYTES`] there and unlimited on the
//! primary): the reader charges each block, and each batch of log
//! records, to a token bucket and sleeps as it says, checking for a
//! promotion meanwhile; a paced backup's blocks are a sixteenth of a
//! second of reading (at least 256 KiB) rather than 8 MiB, so it reads,
//! compresses and writes in small steps instead of bursts.
//! On a secondary that is being promoted, the promotion ends readers; the
//! backup then fails with "run it again" rather than holding the failover.
//! The backup computes the page hashes at `end` (the image's, overlaid
//! with the records'), and every restore checks the file it builds
//! against them.
//!
//! # Chains
//! Each backup's log portion starts one transaction *before* where the
//! previous one of the chain ended — the group's log hold (a backup that
//! is not COPY_ONLY records in the cluster's state where the next log
//! backup starts, and every replica of the group keeps its log from
//! there), else this node's history — so consecutive
//! backups overlap by at least one record, and a restore checks that the
//! overlapping record has the restored one's checksum: the chain is proven
//! to be the same log, not merely adjacent LSNs. A node that knows of no
//! earlier backup (a new primary after a failover) starts at the first
//! record its log holds; the overlap is skipped on restore. A log backup
//! that starts after the restored LSN is a gap, refused with both LSNs.
//!
//! # Restoring
//! `RESTORE DATABASE x FROM …` builds the copy in
//! `DATA_DIR/restoring/.x.tmp/` in one pass over the file: each block is
//! checked (block and record checksums, LSN continuity) and its page
//! images written at their offsets (no SQLite connection); at the end the
//! pages and log must give the backup's page hashes, and every page of the
//! built file is read back and compared with them. Only then is the copy
//! renamed to `DATA_DIR/restoring/x/`: RESTORING; any failure removes the
//! temporary folder.
//! A RESTORING database refuses sessions. `RESTORE LOG` checks the chain
//! and the whole file, then writes records up to the stop point
//! (`STOPAT` = last commit at or before a time, `STOPATLSN` = last
//! transaction ending at or before an LSN). `WITH RECOVERY` starts the
//! database's log at the restored LSN (epoch of its last record) and moves
//! the file into the node's databases. A failed restore leaves the
//! previous state: nothing half-restored is ever online, and running the
//! statement again works.
//!
//! # Errors
//! [`BackupError`]; the front end (`frontend/backup.rs`) picks SQLSTATEs:
//! missing file 58P01, I/O 58030, not a backup or a newer format 22023,
//! truncated or corrupt XX001, a chain gap or another database's log
//! 55000, STOPAT outside the backups 22023, database exists 42P04, not
//! RESTORING / already RESTORING / secondary NOT SYNCHRONIZING / full
//! backup on a secondary without COPY_ONLY 55000, another restore of it
//! running 55006, a database name that is not one (it becomes a path) 42602.
//! Sessions to a RESTORING database: 55000 at connect.
//!
//! # Manual seeding
//! A replica can start from a backup instead of the primary's log or a
//! full image: restore the database there `WITH NORECOVERY` (full, then
//! logs), then `ALTER AVAILABILITY GROUP … JOIN`. When the primary's
//! definition arrives, the RESTORING copy becomes the secondary's
//! database, fenced from its first moment, with its log starting at the
//! restored LSN ([`adopt_restoring`]); the primary continues from there
//! (`replication::link::plan_start`), so nothing before it crosses the
//! network. `ALTER DATABASE … SET HADR AVAILABILITY GROUP` then has nothing
//! left to do.
//!
//! Automatic seeding of a large database is the same, run by the primary:
//! it streams a copy-only backup to the replica, which restores it
//! `WITH NORECOVERY` and starts again with it (`crate::replication::seed`;
//! such backups are not recorded in the history: [`BackupRequest::record`]).
//!
//! A replica with `SEEDING_MODE = MANUAL` is never sent a full image. A
//! database it has no copy of is not created there; the primary sends it
//! nothing of that database (`AwaitsRestore`, with what to restore and the
//! LSN its log starts at: the views' `last_error`), and holds no log for
//! it. A copy the primary refused as too old is replaced the same way:
//! `RESTORE … WITH NORECOVERY, REPLACE` of a newer backup, then `SET HADR
//! AVAILABILITY GROUP`, which starts the secondary again with it in place
//! of the old one. RESTORE … WITH NORECOVERY may then write the group's database there
//! (RECOVERY is refused: the copy is joined, never recovered on its own),
//! and `SET HADR AVAILABILITY GROUP` starts the secondary again with the
//! copy and waits for the primary's verdict: streaming from the restored
//! LSN, or a refusal with both LSNs when the copy ends before the
//! primary's log starts (`MODIFY REPLICA … SEEDING_MODE = AUTOMATIC` then
//! lets the primary seed it).
//!
//! # Where backups run
//! `sys.fn_hadr_backup_is_preferred_replica('db')` answers whether this
//! replica is the one a backup job should use, from the group's
//! AUTOMATED_BACKUP_PREFERENCE and each replica's BACKUP_PRIORITY
//! ([`preferred`]). The primary knows which secondaries are connected; a
//! secondary knows only itself and its primary, and takes the other
//! secondaries as available. BACKUP itself runs wherever it is asked.
//!
//! # Schedules
//! `--backup-schedule` runs BACKUP on a timer on the group's preferred
//! backup replica only ([`schedule`]).
//!
//! # History and proof
//! Every backup taken on a node is appended to
//! `DATA_DIR/backup/history.jsonl` and shown by `sys.backup_history`,
//! with the outcome of its background restore ([`proof`]).
//!
//! # Known limits
//! Pages are read on one thread (the snapshot's), checked, hashed and
//! compressed on up to four and written in order by one; restores read on
//! one thread, check and decompress on up to four and write on one.
//! `BACKUP … WITH STATS = n` sends "p percent processed." notices while
//! it copies pages, and `RESTORE … WITH STATS = n` while it checks and
//! writes blocks (the connection forwards them at once); every BACKUP and
//! RESTORE is a row of `sys.dm_operation_status` / `sys.dm_exec_requests`
//! with its `percent_complete`; while it runs, `sys.dm_exec_requests` also
//! shows its `estimated_completion_time` and, for a BACKUP, the bytes read
//! so far, their rate and the read rate in force (`rate.rs`,
//! `crate::ag::operations`). A paced BACKUP `WITH STATS` says so once.
//! The log hold of a chain (`log_reuse_wait_desc = LOG_BACKUP`) is shared
//! by the replicas of a cluster-managed group through the cluster's state;
//! in a group with CLUSTER_TYPE = NONE, or when the cluster did not answer
//! (the BACKUP then says so in a notice), each node holds only its own log
//! for its own backups, and a failover can leave a gap that RESTORE
//! refuses with both LSNs (take a full backup to start a new chain). Of object stores, only S3-compatible ones (`s3://`); a proof
//! restores only chains whose backups were all taken on its node;
//! `availdb backup` / `availdb restore` (`src/cli/backup.rs`) run the
//! statements on a live node, or this code offline on a stopped node's
//! data directory (`--data-dir`).

mod claim;
mod error;
pub mod format;
mod history;
mod pages;
mod preferred;
pub mod proof;
pub mod rate;
pub mod remote;
mod restore;
pub mod schedule;
mod take;

pub use error::{BackupError, Result};
pub use format::{Header, Kind, Manifest};
pub use history::{read as read_history, Entry as HistoryEntry};
pub use preferred::{preferred, Candidate};
pub use proof::Prover;
pub use restore::{
    adopt_restoring, discard_restoring, header_only, is_restoring, restore, time_text, verify,
    RestoreRequest, Restored, Stop,
};
pub use take::{hold_logs, take, BackupRequest, Progress, Taken};
