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
//! 5. **Giving up.** A page that every partner reports damaged too, or
//!    that no partner gave in five rounds, is *irreparable*: it stays in
//!    the registry as such, the statements that need it fail with XX001
//!    saying so, the others run — no crash, no tight loop. It is tried
//!    again at a slow pace (1 s doubling to 10 s), without a new row while
//!    nothing changes: a copy here that verifies again (redo rewrote it, or
//!    it was put right underneath) or a partner's good copy ends it. A
//!    database outside any availability group has no partner: its damaged
//!    pages are irreparable at once.
//! 6. **Suspending.** A secondary with a page given up suspends data
//!    movement of that database itself, as SQL Server does
//!    (`is_suspended`, `suspend_reason_desc` = `SUSPEND_FROM_REDO`, the page
//!    and what to do in `last_error`; the primary shows
//!    `SUSPEND_FROM_PARTNER`): the primary takes it out of the
//!    synchronized set first, so it is no failover target and commits do
//!    not wait for it. When a retry gets a good copy, the secondary resumes
//!    data movement, redoes up to the copy's LSN (60 s at most) and writes
//!    it; with no page given up left, it stays resumed. `SET HADR RESUME`
//!    lifts the suspension too; a page still damaged suspends it again at
//!    the next retry.
//!
//! Every step is recorded in `sys.dm_hadr_auto_page_repair` ([`History`]:
//! at most 100 rows per database, as SQL Server keeps).
//!
//! **Scrubbing** ([`spawn_scrubber`]): every replica also reads all pages of
//! its availability databases in the background, at a bounded rate
//! ([`DEFAULT_RATE_BYTES`]), so a damaged page nobody reads is found (and
//! repaired) too. The scrub also compares the replicas' copies at a common
//! LSN (`PageSumsRequest`: a partner's stored checksums of a run of pages,
//! after it redid up to the asker's LSN; pages a later record rewrote left
//! out), which finds a page that is sealed but wrong — a lost or
//! misdirected write:
//! * a secondary compares with the primary; a page that differs is
//!   repaired from the primary, unless the group's other secondaries side
//!   with this one's copy (then the primary's is the odd one out, and left
//!   to the primary's scrub);
//! * the primary compares with its SYNCHRONIZED secondaries; a page whose
//!   copies on a strict majority of all replicas agree against the
//!   primary's ([`primary_outvoted`]) is repaired from a secondary.
//!
//! A statement that fails with SQLITE_CORRUPT where no page failed its
//! checksum (SQLite's B-tree found a sealed but wrong page) starts a pass of
//! its database at once, unpaced, even with the scheduled scrub off.
//! Progress in `sys.dm_hadr_page_scrub_status`.
//!
//! # Known limits
//! * Only pages in the database file are verified; WAL frames are covered
//!   by SQLite's chained frame checksums until a checkpoint copies them.
//! * A sealed but wrong page is decided by a majority: with one secondary
//!   (two replicas) nothing outvotes the primary, so the secondary takes the
//!   primary's copy, right or wrong; with an even split nothing is decided
//!   on the primary. Pages a record rewrote during a comparison count as
//!   agreeing with the primary.
//! * A pass at once on a primary, or on a database outside any group, finds
//!   only pages that fail their checksum or that the replicas outvote; a
//!   page SQLite finds inconsistent but that every replica holds alike
//!   (a bug that wrote it so) is not located: the statement's XX001 stays.
//!   The pass at once is unpaced: on a large database it competes with the
//!   workload for reads.
//! * Data movement of a suspended secondary stops: a damaged page that a
//!   later record would have rewritten (and so repaired) stays damaged
//!   until a retry gets a copy or someone resumes it.
//! * A flip in page 1's first 100 bytes that SQLite needs to open the file
//!   (magic, page size) stops the repair's own write transaction too.

mod history;
mod scrub;
mod service;

pub use history::{History, PageStatus, RepairRow, MAX_ROWS_PER_DATABASE};
pub use scrub::{
    delay_us, primary_outvoted, spawn_scrubber, ScrubRow, ScrubStatus, CHUNK_PAGES,
    DEFAULT_RATE_BYTES,
};
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
