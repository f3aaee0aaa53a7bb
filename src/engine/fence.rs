//! The write fence of a database: the one value that says whether this node
//! may write the database now, in which epoch, and what a commit waits for
//! before it is acknowledged.
//!
//! # Why one value
//! Role, epoch, lease and commit hook used to live in separate atomics set
//! from many places; a promotion that had set the role but not yet the lease
//! or the hook left a database writable, unleased and unreplicated. A fence
//! is replaced whole ([`super::Database::set_fence`]), so every reader sees
//! one consistent answer, and only two narrow updates exist besides:
//! renewing the lease of the current epoch and closing the current epoch's
//! writes ([`super::Database::renew_lease`], [`super::Database::close_writes`]).
//!
//! # Who checks it
//! * Every write: taking the write lock ([`super::Database::writer`]) and,
//!   decisively, SQLite's commit hook on the writer connection, which turns a
//!   COMMIT into a rollback when the fence is closed at that instant — no
//!   transaction commits into the file of a fenced database.
//! * Every acknowledgement: [`super::Database::commit_durable`] waits for the
//!   local fsync and the fence's commit hook (synchronous secondaries), then
//!   acknowledges only if the fence is still open: a commit made durable
//!   after the lease ran out is reported in doubt (40003), never confirmed.
//!
//! # States
//! ```text
//!  Standalone ──(joins a group)──► Secondary ──(take office)──► Primary{Closed(TakingOffice)}
//!                                      ▲                            │ links + commit hook ready
//!                                      │                            ▼
//!                       (step down)    │                      Primary{Closed(AwaitingLease)} ◄─┐
//!   Primary{Closed(SteppingDown)} ─────┘                            │ lease granted       │ lease lost
//!                                                                   ▼                     │
//!                                                             Primary{Until(t)} ──────────┘
//! ```
//! A primary outside a cluster (CLUSTER_TYPE = NONE, or no cluster) needs no
//! lease: its writes are [`Writes::Unleased`].

use std::sync::Arc;

use super::database::CommitHook;

/// Where a database stands, for writes.
#[derive(Clone, Default)]
pub enum Fence {
    /// In no availability group: writes need no lease and no partner.
    #[default]
    Standalone,
    /// This node holds the primary role of `group` for the database.
    Primary(PrimaryFence),
    /// A secondary of `group`: read-only, written by redo alone.
    Secondary {
        /// The availability group.
        group: String,
        /// The primary replica's name, for error messages.
        primary: String,
    },
    /// A geo-secondary: this region's copy of a database that another
    /// region writes (`server`'s `database`); read-only here, written by
    /// redo of that region's log, and forwarded to this region's
    /// secondaries.
    GeoSecondary {
        /// The source region's server name.
        server: String,
        /// The database's name there.
        database: String,
    },
}

/// The primary role's part of a fence.
#[derive(Clone)]
pub struct PrimaryFence {
    /// The availability group.
    pub group: String,
    /// The group's epoch: the primary's term, whose lease opens writes.
    pub epoch: u64,
    /// The epoch new records carry: the group's epoch, raised by the
    /// database's epoch offset when the database was written in another
    /// region before (a geo-secondary that became independent), so that its
    /// records' epochs keep rising above the other region's (see
    /// `GroupConfig::log_epoch`).
    pub log_epoch: u64,
    /// Whether writes are open, and until when.
    pub writes: Writes,
    /// What a commit waits for after the local fsync (synchronous
    /// secondaries); None: nothing.
    pub hook: Option<Arc<dyn CommitHook>>,
}

/// Whether a primary's writes are open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    /// Open, with no lease needed (no quorum cluster manages the group).
    Unleased,
    /// Open until this time on [`super::monotonic_us`]'s clock (the
    /// cluster's lease, counted from when its renewal was sent).
    Until(u64),
    /// Closed, and why.
    Closed(Closed),
}

/// Why a primary's writes are closed (the role users see is RESOLVING).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Becoming primary: the file is being made writable; the replication
    /// links and the commit hook are not in place yet.
    TakingOffice,
    /// Ready, waiting for the cluster to grant the first lease of the epoch.
    AwaitingLease,
    /// The lease ran out or the cluster refused to renew it.
    LeaseLost,
    /// Leaving the primary role (a new definition, another primary, a drop).
    SteppingDown,
}

impl Closed {
    /// Says why, for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            Closed::TakingOffice => "it is becoming the primary and does not take writes yet",
            Closed::AwaitingLease => {
                "it is the primary but the cluster has not granted it a lease yet"
            }
            Closed::LeaseLost => {
                "its lease as primary ran out, so another replica may be primary now"
            }
            Closed::SteppingDown => "it is leaving the primary role",
        }
    }
}

/// Why a write or an acknowledgement is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The database is a secondary here.
    Secondary {
        /// The availability group.
        group: String,
        /// The primary replica, as this node knows it.
        primary: String,
    },
    /// The primary role is here but writes are closed (RESOLVING).
    Resolving(Closed),
    /// The database is READ_ONLY (`ALTER DATABASE … SET READ_ONLY`): no
    /// replica takes writes, whatever its role.
    ReadOnly,
    /// A geo-secondary: written in another region.
    GeoSecondary {
        /// The source region's server name.
        server: String,
        /// The database's name there.
        database: String,
    },
}

impl Fence {
    /// Writes allowed at `now_us` (monotonic), or why not.
    pub fn check(&self, now_us: u64) -> Result<(), Refusal> {
        match self {
            Fence::Standalone => Ok(()),
            Fence::Secondary { group, primary } => Err(Refusal::Secondary {
                group: group.clone(),
                primary: primary.clone(),
            }),
            Fence::GeoSecondary { server, database } => Err(Refusal::GeoSecondary {
                server: server.clone(),
                database: database.clone(),
            }),
            Fence::Primary(p) => match p.writes {
                Writes::Unleased => Ok(()),
                Writes::Until(deadline) if now_us < deadline => Ok(()),
                Writes::Until(_) => Err(Refusal::Resolving(Closed::LeaseLost)),
                Writes::Closed(why) => Err(Refusal::Resolving(why)),
            },
        }
    }

    /// The epoch new records carry (None on a secondary or a standalone
    /// database, whose writer keeps the epoch it had).
    pub fn epoch(&self) -> Option<u64> {
        match self {
            Fence::Primary(p) => Some(p.log_epoch),
            _ => None,
        }
    }

    /// True for a secondary (of this region's group or of another region):
    /// the copy is read-only and in recovery.
    pub fn is_secondary(&self) -> bool {
        matches!(self, Fence::Secondary { .. } | Fence::GeoSecondary { .. })
    }

    /// The commit hook, if any.
    pub fn hook(&self) -> Option<Arc<dyn CommitHook>> {
        match self {
            Fence::Primary(p) => p.hook.clone(),
            _ => None,
        }
    }
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fence::Standalone => f.write_str("Standalone"),
            Fence::Secondary { group, primary } => {
                write!(f, "Secondary {{ group: {group}, primary: {primary} }}")
            }
            Fence::GeoSecondary { server, database } => {
                write!(
                    f,
                    "GeoSecondary {{ server: {server}, database: {database} }}"
                )
            }
            Fence::Primary(p) => write!(
                f,
                "Primary {{ group: {}, epoch: {}, log epoch: {}, writes: {:?}, hook: {} }}",
                p.group,
                p.epoch,
                p.log_epoch,
                p.writes,
                p.hook.is_some()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn primary(writes: Writes) -> Fence {
        Fence::Primary(PrimaryFence {
            group: "ag1".into(),
            epoch: 3,
            log_epoch: 3,
            writes,
            hook: None,
        })
    }

    #[test]
    fn writes_are_open_only_standalone_unleased_or_within_the_lease() {
        assert_eq!(Fence::Standalone.check(5), Ok(()));
        assert_eq!(primary(Writes::Unleased).check(5), Ok(()));
        assert_eq!(primary(Writes::Until(10)).check(9), Ok(()));
        assert_eq!(
            primary(Writes::Until(10)).check(10),
            Err(Refusal::Resolving(Closed::LeaseLost))
        );
        for why in [
            Closed::TakingOffice,
            Closed::AwaitingLease,
            Closed::LeaseLost,
            Closed::SteppingDown,
        ] {
            assert_eq!(
                primary(Writes::Closed(why)).check(0),
                Err(Refusal::Resolving(why))
            );
        }
        let secondary = Fence::Secondary {
            group: "ag1".into(),
            primary: "r1".into(),
        };
        assert!(matches!(secondary.check(0), Err(Refusal::Secondary { .. })));
        assert_eq!(secondary.epoch(), None);
        assert_eq!(primary(Writes::Unleased).epoch(), Some(3));
    }
}
