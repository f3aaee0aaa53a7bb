//! Automatic page repair: a page that fails its checksum on one replica is
//! replaced by a good copy from a partner replica, as SQL Server's
//! availability groups do — for every page type, page 1 included, since the
//! repair works by page number below SQLite's B-tree.
//!
//! # Protocol
//! 1. **Detection.** Every read of a database file is verified
//!    ([`crate::engine::vfs`], format in [`crate::engine::checksum`]); a
//!    page that fails is reported to [`crate::engine::damage`] with its
//!    number, and the statement that read it fails with
//!    `Error::CorruptPage` (XX001). Outside a transaction block the session
//!    waits for the repair (2 s at most) and runs the statement again.
//! 2. **Asking.** The repair task ([`spawn`]) takes each damaged page up
//!    once. A secondary asks the primary; the primary asks its
//!    SYNCHRONIZED secondaries one after the other and takes the first
//!    good answer. The question is a `PageRequest` (page number, the
//!    asker's applied LSN) on a connection of its own to the partner's
//!    replication endpoint, answered by one `PageAnswer`
//!    ([`crate::replication::wire`]).
//! 3. **Answering.** The partner — a secondary first redoes up to the
//!    asked LSN (2 s at most) — reads the page at rest (no commit or redo
//!    batch in between) with its checksum verified, and answers it with the
//!    LSN its file holds it at; a partner whose copy is damaged too says so.
//! 4. **Writing.** The asker writes the page through the path every page
//!    change of that replica takes (`Database::write_repaired_page`): a
//!    secondary through its redo applier, the primary through its writer —
//!    the commit is captured into the log, so every secondary redoes the
//!    page as well and the replicas stay page-identical. The copy is this
//!    replica's page only if no record between the partner's LSN and the
//!    file's wrote the page; if one did, that record replaced the damaged
//!    copy already (redo overwrites pages without reading them). A file
//!    behind the partner's LSN redoes first.
//! 5. **Giving up.** A page that every partner reports damaged too is
//!    *irreparable*: it stays in the registry as such, the statements that
//!    need it fail with XX001 saying so, the others run — no crash, no
//!    retry loop. A database outside any availability group has no partner:
//!    its damaged pages are irreparable at once.
//!
//! Every step is recorded in `sys.dm_hadr_auto_page_repair` ([`History`]:
//! at most 100 rows per database, as SQL Server keeps).
//!
//! **Scrubbing** ([`spawn_scrubber`]): every replica also reads all pages of
//! its availability databases in the background, at a bounded rate
//! ([`DEFAULT_RATE_BYTES`]), so a damaged page nobody reads is found (and
//! repaired) too; a secondary also compares each run of pages with the
//! primary's at a common LSN (`PageSumsRequest`: the primary's stored
//! checksums; pages a later record rewrote left out), so a page that is
//! sealed but wrong — a lost or misdirected write — is found as well and
//! repaired from the primary. Progress in `sys.dm_hadr_page_scrub_status`.
//!
//! # Known limits
//! * Only pages in the database file are verified; WAL frames are covered
//!   by SQLite's chained frame checksums until a checkpoint copies them.
//! * Only secondaries compare their pages with another replica's (the
//!   primary's); a primary whose page is sealed but wrong is not found.
//! * A flip in page 1's first 100 bytes that SQLite needs to open the file
//!   (magic, page size) stops the repair's own write transaction too.

mod history;
mod scrub;
mod service;

pub use history::{History, PageStatus, RepairRow, MAX_ROWS_PER_DATABASE};
pub use scrub::{delay_us, spawn_scrubber, ScrubRow, ScrubStatus, CHUNK_PAGES, DEFAULT_RATE_BYTES};
pub use service::{answer, answer_sums, spawn, Partners, Topology};

/// A partner's question for one page (the payload of `PageRequest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// The asking replica's cluster.
    pub cluster_id: String,
    /// The availability group.
    pub group: String,
    /// The database.
    pub database: String,
    /// The damaged page.
    pub pgno: u32,
    /// The answer must be the page at this LSN or later.
    pub at_lsn: u64,
}

/// A secondary's scrub asks the primary for the stored checksums of a run
/// of pages (the payload of `PageSumsRequest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SumsRequest {
    /// The asking replica's cluster.
    pub cluster_id: String,
    /// The availability group.
    pub group: String,
    /// The database.
    pub database: String,
    /// First page of the run.
    pub from_pgno: u32,
    /// Pages in the run.
    pub count: u32,
    /// The answer must be the file at this LSN or later.
    pub at_lsn: u64,
}
