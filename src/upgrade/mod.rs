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
//! # Option 2: geo-redundant
//! A plan with `[stage_dr]` keeps the application protected from the loss
//! of a region throughout. Before the upgrade, production already has its
//! DR slot (`[production_dr]`: a geo-secondary of production on the DR
//! server, V1 running against it, its endpoint an **online** backup of
//! production's in the profile); the upgrade adds a stage-DR slot, so the
//! profile holds one active and three backup endpoints by priority:
//! production, production-DR, stage, stage-DR. Steps, with option 1's:
//!
//! * 1 also checks the DR slot (production's link to the DR server, its
//!   endpoint online) before anything is made.
//! * 10 (after 2): `ALTER DATABASE db ADD SECONDARY ON SERVER 'SDR'` on the
//!   stage copy's primary — a *chained* geo-secondary (production → stage
//!   → stage-DR; the stage cluster registers SDR as a partner first) — and
//!   `stage_dr.start` starts V2-DR against it.
//! * 11: seeding of the chained copy (a progress bar), its copy-sync and
//!   redo guards, and the stage-DR endpoint added **offline**; wait until
//!   its probe finds V2-DR healthy.
//! * 3 also waits (`sys.wait_for_database_copy_sync` on the DR server)
//!   until production's DR copy holds production's log end: from the
//!   window on, a loss of production's region loses nothing acknowledged.
//!   A DR copy that cannot get there (its region down while production
//!   committed more) fails the step within the copy sync's 60 s, and the
//!   upgrade rolls back rather than open the window unprotected; so does
//!   step 5 if stage-DR does not harden the script.
//! * 4 ends production → stage only: the stage copy keeps feeding
//!   stage-DR (guard: the chained link still exists), so both regions are
//!   upgraded in parallel — the script in step 5 reaches stage-DR through
//!   the link, and step 5 ends once stage-DR has hardened it.
//! * 6 activates the stage endpoint with stage-DR set online in the same
//!   change: stage active, stage-DR its backup; production and
//!   production-DR (better priorities) offline.
//! * 7 (if planned) also removes production-DR's endpoint and runs
//!   `production_dr.stop`.
//! * 12 (rollback, between 8 and 9): V2-DR stopped, the stage-DR endpoint
//!   removed, the chained link ended (`TERMINATION = FORCED`, on the stage
//!   copy's primary, while that copy exists), the stage-DR copy removed
//!   from its group and dropped; then 9 removes the stage as in option 1.
//!
//! **A region lost during the upgrade.** The traffic manager, not the
//! orchestrator, fails over: its probes take a dead endpoint out within
//! interval × tolerated failures, and new connections go to the best
//! online backup. What users then see, by when production's region is
//! lost:
//! * after step 4 ended (the stage copy is independent and holds every
//!   commit): V1-DR serves reads (writes get SQLSTATE 25006: its copy is
//!   a geo-secondary) until the orchestrator, which needs production no
//!   more, finishes steps 5 and 6; then V2 serves, with V2-DR as backup.
//!   Nothing acknowledged is lost (`tests/upgrade.rs` does this).
//! * in steps 3–4, once step 3's guard passed: V1-DR serves every
//!   acknowledged row read-only at once; the orchestrator's next step
//!   cannot reach production, and its rollback **rolls back to the DR
//!   slot** (when the plan gives `production_dr.hosts`): step 8, finding
//!   no primary of production within 30 s, forces a geo-failover of
//!   production's DR copy (`FORCE_FAILOVER_ALLOW_DATA_LOSS`, which loses
//!   nothing here: production has been READ_ONLY since its end `E` and
//!   the DR copy had hardened `E`, so nothing can have diverged), sets it
//!   READ_WRITE and activates its endpoint; steps 12 and 9 remove the
//!   stage slots (not ending production's link to the stage: production
//!   is gone, or a deposed geo-secondary of its DR copy once back). V1
//!   then takes writes again in the DR region.
//! * in step 3 before its guard passed, or without `production_dr.hosts`:
//!   V1-DR serves reads, and the rollback stops at step 8 saying so (see
//!   Known limits).
//! * before step 3: as without an upgrade — V1-DR serves reads of what the
//!   asynchronous link had shipped (bounded by `GEO_MAX_LAG` if set).
//! * a loss of the stage region after the switch: the profile fails over
//!   to V2-DR, which serves every row V2 had shipped, read-only until the
//!   operator's forced geo-failover of the stage-DR copy.
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
//!   stage copy, and in option 2 the stage-DR copy that follows it).
//! * Option 2: a chained copy is removed before the copy it hangs from
//!   (step 12 before step 9); the production → stage termination never
//!   ends the stage → stage-DR link.
//!
//! # Known limits
//! * Option 2: production's DR slot is the operator's (the upgrade checks
//!   it, does not create it), and no geo-failover is automated — after a
//!   regional loss the backup endpoint serves read-only until the
//!   operator runs `FORCE_FAILOVER_ALLOW_DATA_LOSS` on the DR copy.
//! * Option 2: if production's region is lost in step 3 before its guard
//!   passed (or the plan lacks `production_dr.hosts`), the upgrade stops
//!   half rolled back (step 8 cannot reach production and a failover to
//!   the DR copy could lose writes): the profile serves V1-DR read-only,
//!   the stage and stage-DR slots stay until production is back
//!   (`availdb upgrade rollback` then finishes) or are removed by hand.
//! * Option 2: the rollback to the DR slot takes production's
//!   unreachability for 30 s as its loss. Production is READ_ONLY then,
//!   so nothing diverges even if it was only cut off from the
//!   orchestrator; once back it is a deposed geo-secondary of the DR
//!   copy, and V1 serves from the DR region until the operator moves it
//!   back (a planned geo-failover).
//! * The stage slots must be reachable for the rollback to remove them: a
//!   lost stage region leaves steps 12/9 to retry (`availdb upgrade
//!   rollback`) or to do by hand.
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
