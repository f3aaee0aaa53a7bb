//! Why a replication link ended, or a batch was refused: one enum for both
//! ends, so callers act on the kind ([`ReplicationError::is_fork`]: the
//! primary must rewind this replica) rather than on text. The text is what
//! goes into `Refuse` messages, logs and the views' `last_error`.

use std::time::Duration;

use crate::log::Lsn;

/// Replication result alias.
pub type Result<T, E = ReplicationError> = std::result::Result<T, E>;

/// Everything a replication link can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicationError {
    /// The partner's endpoint did not accept the connection.
    #[error("cannot connect to {endpoint}: {cause}")]
    Connect {
        /// Where.
        endpoint: std::net::SocketAddr,
        /// Why.
        cause: String,
    },
    /// The partner was silent (or stopped reading) past the session timeout.
    #[error("no message from the partner within the session timeout ({0:?})")]
    SessionTimeout(Duration),
    /// The partner closed the connection.
    #[error("the partner closed the connection")]
    Closed,
    /// A geo link ended by termination: the geo-secondary is an
    /// independent database now.
    #[error("the geo link was terminated")]
    Terminated,
    /// A frame that does not decode (the stream lost its framing).
    #[error("bad message from the partner: {0}")]
    Wire(String),
    /// A message that does not belong at this point of the conversation.
    #[error("unexpected message from the partner: expected {expected}, got {got}")]
    Unexpected {
        /// What the protocol expects here.
        expected: &'static str,
        /// What came.
        got: String,
    },
    /// The partner refused or ended the connection, saying why.
    #[error("refused by the partner: {0}")]
    Refused(String),
    /// This replica did not admit the primary (another group, cluster or
    /// replica name, an older epoch…).
    #[error("the primary was not admitted: {0}")]
    NotAdmitted(String),
    /// A database the group does not have here.
    #[error("database \"{0}\" is not in this group here")]
    UnknownDatabase(String),
    /// A record that fails its checksum or whose contents are impossible;
    /// nothing of its batch was applied.
    #[error(
        "corrupt record for database \"{database}\": {cause}; nothing of this batch was applied"
    )]
    Corrupt {
        /// The database.
        database: String,
        /// What is wrong.
        cause: String,
    },
    /// A record of an older epoch than one the local log already holds.
    #[error("record at LSN {lsn} of database \"{database}\" is from epoch {epoch}, but the log here already holds epoch {newest} before it")]
    EpochRegressed {
        /// The database.
        database: String,
        /// Where the record starts.
        lsn: Lsn,
        /// Its epoch.
        epoch: u64,
        /// The newest epoch of the local log.
        newest: u64,
    },
    /// A record that does not continue the local log.
    #[error(
        "record of database \"{database}\" starts at LSN {lsn}, but the log here ends at {end}"
    )]
    NotContiguous {
        /// The database.
        database: String,
        /// Where the record starts.
        lsn: Lsn,
        /// Where the local log ends.
        end: Lsn,
    },
    /// The local log holds a different record where the primary re-sent one:
    /// the logs forked, and the primary must rewind this replica.
    #[error("database \"{database}\": the local log holds a different record at LSN {lsn} (epoch {ours:?}, the primary's is from epoch {theirs}); reconnecting so the primary rewinds this replica")]
    Forked {
        /// The database.
        database: String,
        /// Where.
        lsn: Lsn,
        /// The local record's epoch, if one starts there.
        ours: Option<u64>,
        /// The primary's record's epoch.
        theirs: u64,
    },
    /// After `Rewind`, the first record must be the announced full image.
    #[error("database \"{database}\" waits for the full image announced by Rewind, got a record at LSN {lsn}")]
    AwaitingImage {
        /// The database.
        database: String,
        /// Where the record that came starts.
        lsn: Lsn,
    },
    /// A primary of a newer epoch exists: this link's primary was deposed.
    #[error(
        "a primary of epoch {newest} exists: this replica takes nothing more from epoch {epoch}"
    )]
    Superseded {
        /// The link's epoch.
        epoch: u64,
        /// The newest epoch known here.
        newest: u64,
    },
    /// The group takes no more records here (promoted, reconfigured, dropped).
    #[error(
        "this replica no longer takes records for this group (it was reconfigured or promoted)"
    )]
    IntakeClosed,
    /// The primary stopped (its group restarted or stepped down).
    #[error("the primary stopped")]
    PrimaryStopped,
    /// The local log or database failed.
    #[error("{0}")]
    Local(String),
}

impl ReplicationError {
    /// True when the two logs forked: the replica must be rewound (the
    /// primary decides it from the positions at the next connection).
    pub fn is_fork(&self) -> bool {
        matches!(self, ReplicationError::Forked { .. })
    }

    /// An error of the local log or database.
    pub fn local(e: impl std::fmt::Display) -> ReplicationError {
        ReplicationError::Local(e.to_string())
    }
}
