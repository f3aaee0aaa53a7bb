//! The vocabulary of availability groups that every layer shares: a
//! group's definition ([`GroupConfig`]: its replicas and their settings,
//! its databases, the primary and the epoch), the settings' enums as SQL
//! Server names them, and a node's [`LocalRole`] in a group.
//!
//! This module is a leaf: it depends on nothing else in the crate, so the
//! layers that act on a definition — replication (`replication`), the
//! quorum cluster manager (`cluster`), the listener (`listener`), the DDL
//! parser (`sql::ag`) and the orchestrator that changes roles (`ag`) — all
//! use the same types without importing each other.
//!
//! # Invariants of a definition
//! * `epoch` (the failover generation) only grows; every log record carries
//!   the epoch it was written in, and a definition with an older epoch than
//!   one already seen is refused everywhere.
//! * `version` grows at every change of the definition within an epoch; a
//!   replica keeps the highest it has seen.
//! * Replica names are case-insensitive; `primary` names one of `replicas`.
//! * `cluster_id` is fixed when the group is created: partners of another
//!   cluster are refused.

mod definition;

#[cfg(test)]
pub(crate) use definition::fixtures;
pub use definition::{
    AvailabilityMode, BackupPreference, ClusterType, DatabaseOptions, DefinitionError,
    FailoverMode, FailoverRecord, GeoPartner, GroupConfig, ListenerConfig, PrimaryConnections,
    ReplicaConfig, SecondaryConnections, SeedingMode, DEFAULT_SESSION_TIMEOUT_S,
    MAX_GEO_SECONDARIES,
};

/// This node's role in the group of a session's database, with the
/// connection settings that apply in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalRole {
    /// The primary replica.
    Primary {
        /// Its `PRIMARY_ROLE (ALLOW_CONNECTIONS)`.
        allow: PrimaryConnections,
    },
    /// A secondary replica.
    Secondary {
        /// Its `SECONDARY_ROLE (ALLOW_CONNECTIONS)`.
        allow: SecondaryConnections,
    },
}
