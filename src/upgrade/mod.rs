//! The rolling upgrade orchestrator: `availdb upgrade PLAN.toml` takes a
//! database-backed application from V1 to V2 with a read-only window as
//! long as the upgrade script (not the database's size), a rollback at any
//! step before the switch, and every step persisted so a crash of the
//! orchestrator resumes or rolls back cleanly.
//!
//! # The procedure (option 1: one region)
//! The seed's steps, over the geo-replication that exists (a geo-secondary
//! lives in another *cluster* than its source — `ADD SECONDARY ON SERVER`
//! to the source's own server is refused — so the stage slot is a **stage
//! cluster** in the same region, as Azure's option 1 uses a second logical
//! server in the same region):
//!
//! 1. `ALTER DATABASE db ADD SECONDARY ON SERVER 'S'` on production's
//!    primary (production registers S as a partner first if the plan gives
//!    its endpoints), and the plan's `stage.start` command starts V2
//!    against the stage copy (its own process group; the pid is kept).
//! 2. Wait for seeding (a progress bar over the link's
//!    `percent_complete`), then `sys.wait_for_database_copy_sync` (the
//!    copy has hardened every commit so far) and until the link's
//!    `redone_lsn` reaches that point (so the termination inside the
//!    window has no redo backlog); add the stage endpoint to
//!    the traffic manager's profile **offline**, and wait until its probe
//!    finds V2 healthy.
//! 3. `ALTER DATABASE db SET READ_ONLY` on production: V1 keeps serving
//!    reads; writes get SQLSTATE 25006 ("… is READ_ONLY …"). The
//!    read-only window opens. Production's log end `E` is recorded.
//! 4. `REMOVE SECONDARY ON SERVER 'S' WITH (TERMINATION = PLANNED)`: the
//!    copy becomes independent once it has redone `E`. Guard: the stage
//!    copy's log ends at or past `E` and it is no geo-secondary any more.
//! 5. `ALTER DATABASE db SET READ_WRITE` on the stage copy, the upgrade
//!    script (a SQL file, sent as one simple query: one transaction; or a
//!    command), then the V2 smoke check (a command, or GET on V2 expecting
//!    2xx).
//! 6. The traffic manager activates the stage endpoint (a fresh probe
//!    first; production's endpoint goes offline in the same change): new
//!    connections reach V2 at once. The window closes.
//! 7. (If planned) the V1 endpoint is removed and `production.stop` runs.
//!
//! Rollback, on any failure before the switch succeeded (or `availdb
//! upgrade rollback`): 8. production `SET READ_WRITE` and its endpoint
//! active again; 9. V2 stopped, the stage endpoint removed, the link ended
//! if it still exists (`TERMINATION = FORCED`), the stage copy removed from
//! its group and dropped. Production never lost a row: steps 1–5 change
//! nothing in it but its READ_ONLY flag.
//!
//! # Invariants
//! * The step sequencing is a state machine without I/O ([`machine`]),
//!   persisted (fsynced, renamed) *before* each step begins and after it
//!   ends; at most one step is ever begun and not ended.
//! * Every step checks what is already done before acting, so `resume`
//!   after a crash runs the interrupted step again — except step 5, whose
//!   script's effect is unknown: it rolls back.
//! * One orchestrator per plan at a time (a lock file in the state
//!   folder).
//! * No rollback once the switch succeeded (V2's writes exist only in the
//!   stage copy).
//!
//! # Known limits
//! * Option 2 (geo-redundant, with a chained stage copy in the DR region)
//!   is not automated yet.
//! * Step 7 leaves production's database in place, READ_ONLY (the last
//!   V1-format copy): dropping it is the operator's call.

pub mod machine;
pub mod plan;
mod run;

use std::path::PathBuf;

pub use machine::{Machine, Next, Phase, Report, Step};
pub use plan::Plan;
pub use run::{dry_run, rollback, start, status, Options, Outcome};

/// The orchestrator's errors; each says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The plan cannot be used.
    #[error("plan {}: {why}", path.display())]
    Plan {
        /// The plan file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The state folder cannot be used.
    #[error("upgrade state {}: {why}", path.display())]
    State {
        /// The file or folder.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// Another orchestrator runs this plan.
    #[error(
        "another `availdb upgrade` runs this plan (it holds {}): wait for it, or stop it and \
         use `availdb upgrade resume`",
        path.display()
    )]
    Busy {
        /// The lock file.
        path: PathBuf,
    },
    /// The command does not fit where the upgrade is.
    #[error("{0}")]
    Wrong(String),
    /// A step failed (the upgrade went on with its rollback, or stopped).
    #[error("{0}")]
    Step(String),
    /// The upgrade rolled back after a failure.
    #[error("the upgrade rolled back: {cause}. {slots}")]
    RolledBack {
        /// The failure.
        cause: String,
        /// What state each slot is in.
        slots: String,
    },
    /// A rollback step failed: the upgrade stopped half rolled back.
    #[error(
        "rollback step {step} failed: {why}. Fix the cause and run `availdb upgrade rollback` \
         (or resume) to finish the rollback. {slots}"
    )]
    RollbackFailed {
        /// The step's number.
        step: u8,
        /// Its error.
        why: String,
        /// What state each slot is in.
        slots: String,
    },
}

/// The orchestrator's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
