//! The replication wire format: the messages a primary and a secondary
//! exchange over their one connection, and the framing that carries them.
//!
//! Pure bytes in, bytes out: [`encode`] / [`decode`] work on slices, and
//! [`WireCodec`] plugs the same framing into `tokio_util::codec::Framed`
//! for the connection task. No sockets, files or clocks here.
//!
//! # Conversation
//! The primary opens one TCP connection per secondary and multiplexes every
//! database of the availability group over it. It sends [`Message::Hello`];
//! the secondary answers [`Message::Welcome`] (with where each database
//! stands) or [`Message::Refuse`]. Then the primary streams
//! [`Message::Records`]; the secondary hardens them (fsync), reports
//! [`Message::Progress`], redoes them and reports again. Either side sends
//! [`Message::Ping`] and answers [`Message::Pong`] for the session timeout.
//!
//! # Frame
//! ```text
//! offset  size   field
//!      0     4   length N: bytes after this field, 6 <= N <= 64 MiB
//!      4     1   protocol version ([`VERSION`])
//!      5     1   message kind (table below)
//!      6   N-6   payload
//!      N     4   crc32c over bytes 4 .. N (version, kind, payload)
//! ```
//! A frame is `4 + N` bytes. Integers are little-endian. Payload field types:
//!
//! ```text
//! u8 u16 u32 u64   fixed-width integers
//! bool             u8, 0 = false, 1 = true (anything else is rejected)
//! str              u16 byte length + UTF-8 bytes (at most 65535 bytes)
//! blob             u32 byte length + bytes
//! list<T>          u32 count + count × T
//! ```
//!
//! # Messages
//! ```text
//! kind  message        direction  payload
//!    0  (reserved: never valid, so a zeroed buffer is not a message)
//!    1  Hello          P → S      str cluster_id, str group, str from_replica,
//!                                 str to_replica, u64 epoch
//!    2  Welcome        S → P      str replica, list<position> databases
//!                                 position = str database, u64 epoch,
//!                                   u64 end_lsn, u64 redone_lsn,
//!                                   list<u64 epoch, u64 first_lsn> epoch_history,
//!                                   bool has_last, [u64 last_lsn, u32 last_crc]
//!                                   (the last record the secondary holds, when
//!                                   has_last: where it starts and its crc32c)
//!    3  Refuse         either     str reason
//!    4  Records        P → S      str database, list<blob> records
//!    5  Progress       S → P      str database, u64 hardened_lsn, u64 redone_lsn,
//!                                 u64 first_lsn (where the secondary's log
//!                                 starts: a report about a log that a full
//!                                 image has not restarted yet is told apart)
//!    6  Rewind         P → S      str database, u64 from_lsn
//!    7  Ping           either     u64 sent_us
//!    8  Pong           either     u64 echo_us
//!    9  DatabaseState  either     str database, bool suspended
//!   10  Config         P → S      u64 version, blob config
//!   11  GeoHello       P → S      str from_server, str cluster_id,
//!                                 str source_database, str database,
//!                                 u64 epoch, bool create, bool readable,
//!                                 bool read_only, str succeeds_server,
//!                                 str succeeds_database (empty: none)
//!   12  ImageRequest   S → P      str database (a geo forwarder asks its
//!                                 source for a full image in the log, to
//!                                 seed a replica of its own region)
//!   13  Terminate      P → S      str database, bool planned, u64 at_lsn,
//!                                 bool handover [u64 source_epoch, u32 n,
//!                                 n × (str server, str database, bool
//!                                 readable)] (a geo source ends the link:
//!                                 the geo-secondary becomes an independent
//!                                 database at `at_lsn`, or — not planned —
//!                                 wherever its log ends; a handover makes
//!                                 it the source of the listed links)
//!   14  Terminated     S → P      str database, u64 end_lsn (it has)
//!   15  FailoverRequest S → P     str database (a geo-secondary asks its
//!                                 source to hand the database over)
//!   16  PageRequest    either     str cluster_id, str group, str database,
//!                                 u32 pgno, u64 at_lsn (automatic page
//!                                 repair: the first and only request of a
//!                                 connection of its own; the partner
//!                                 answers with the page as its file holds it
//!                                 at an LSN at or past `at_lsn`)
//!   17  PageAnswer     either     str database, u32 pgno, u64 lsn,
//!                                 bool has_image, [blob image], str reason
//!                                 (the page at `lsn`, sealed; without an
//!                                 image, `reason` says why: damaged there
//!                                 too, not a replica, redo behind)
//!   18  PageSumsRequest either    str cluster_id, str group, str database,
//!                                 u32 from_pgno, u32 count, u64 at_lsn
//!                                 (the scrub of a secondary: the stored
//!                                 checksums of `count` pages from
//!                                 `from_pgno`, at `at_lsn` or later)
//!   19  PageSums       either     str database, u64 lsn, list<u32> sums,
//!                                 str reason (the checksums at `lsn`, one
//!                                 per page that exists; none and a reason
//!                                 when refused)
//!   20  AwaitsRestore  P → S      str database, str reason (after the
//!                                 handshake's Rewinds: this replica's
//!                                 SEEDING_MODE is MANUAL and its copy is
//!                                 missing or older than the primary's log,
//!                                 so nothing of the database is sent until
//!                                 a restore there joins it)
//!   21  Seed           P → S      str database, u64 lsn, u64 bytes
//!                                 (automatic seeding: a full backup of the
//!                                 database, consistent at `lsn`, follows in
//!                                 `SeedData` messages of `bytes` in all;
//!                                 restored there, the copy joins and the
//!                                 primary continues from `lsn`)
//!   22  SeedData       P → S      str database, blob data (the next part of
//!                                 the announced backup, at most 1 MiB)
//! ```
//! Each record in `Records` costs its length plus 4 bytes, so a sender
//! batching records keeps [`Message::encoded_len`] under the limit; a single
//! record larger than the limit (minus the message overhead) cannot be sent.
//!
//! # Checks
//! [`decode`] rejects, each with its own [`WireError`]: a length over
//! [`MAX_FRAME_LEN`] (before waiting for or allocating the bytes), a version
//! other than [`VERSION`], a CRC mismatch, an unknown kind, a payload that
//! ends inside a field or has bytes after the last one, invalid UTF-8, a bool
//! that is not 0 or 1, and a list count that the remaining bytes cannot hold.
//! The encoding is canonical: a frame that decodes re-encodes to the same
//! bytes. Nothing panics on any input.
//!
//! After any error other than `Incomplete` the byte stream has lost its
//! framing: the receiver sends `Refuse` with the error's text (best effort)
//! and closes the connection. That loses nothing: a secondary acknowledges
//! only what it hardened, and the next session resumes from its positions.
//!
//! # Evolving the protocol
//! * The first five bytes, length and version, keep their meaning in every
//!   version, so any release can read a peer's version and refuse it clearly.
//! * Within a version a kind's payload never changes: no field is added,
//!   removed, reordered or retyped. Decoders reject trailing bytes, so a
//!   changed payload would be refused, never misread. A changed message gets
//!   a new kind number; kind numbers are never reused.
//! * New kinds may be added within a version. A peer that receives a kind it
//!   does not know gets [`WireError::Kind`] and refuses with that text, so a
//!   sender uses a new kind only toward peers known to run a release that
//!   has it.
//! * Changing the framing or an existing payload, or what a message means
//!   within the conversation, means a new version. Each release still
//!   decodes every older version's `Refuse`, so it can show why an older
//!   peer turned it away.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// The protocol version this node speaks. Version 2 added the last
/// record's checksum to each position of `Welcome` (so a primary can tell
/// two logs apart that forked within one epoch). Version 3: a primary
/// answers `Ping`s while it plans a secondary's start, and a `Pong` does
/// not end its handshake (a version 2 secondary would take it as the end).
pub const VERSION: u8 = 3;

/// Largest allowed value of a frame's length field (64 MiB).
pub const MAX_FRAME_LEN: usize = 64 << 20;

/// Bytes of the length field that starts every frame.
const LEN_FIELD: usize = 4;
/// Version and kind.
const HEADER: usize = 2;
const CRC_LEN: usize = 4;
/// Smallest length field: a frame with an empty payload.
const MIN_FRAME_LEN: usize = HEADER + CRC_LEN;

/// One message of the replication protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// First message on a connection, primary → secondary.
    Hello {
        /// Cluster the primary belongs to; a secondary of another cluster refuses.
        cluster_id: String,
        /// Availability group the connection serves.
        group: String,
        /// Replica name of the sender (the primary).
        from_replica: String,
        /// Replica name the primary believes it is talking to.
        to_replica: String,
        /// The primary's epoch (failover generation).
        epoch: u64,
    },
    /// Secondary → primary: accepted; where each database of the group
    /// stands on the secondary.
    Welcome {
        /// Replica name of the secondary.
        replica: String,
        /// One entry per database of the group the secondary holds.
        databases: Vec<DatabasePosition>,
    },
    /// Either side: the connection is refused or closed, with the reason.
    Refuse {
        /// Human-readable, e.g. "peer belongs to cluster X, not Y".
        reason: String,
    },
    /// First message of a geo-replication link, the source region's primary
    /// → the geo-secondary region's primary (its forwarder): one database.
    GeoHello {
        /// The source region's server name.
        from_server: String,
        /// The source region's cluster id; a forwarder of another cluster
        /// pairing refuses.
        cluster_id: String,
        /// The database's name in the source region.
        source_database: String,
        /// The database's name in the geo-secondary region.
        database: String,
        /// The source primary's epoch for this database: a forwarder takes
        /// nothing from a source older than one it has seen.
        epoch: u64,
        /// Create the geo-secondary (ADD SECONDARY), rather than attach to
        /// one that exists.
        create: bool,
        /// Sessions may read the geo-secondary (ALLOW_CONNECTIONS = ALL).
        readable: bool,
        /// The source took the database over from this server's database
        /// (a geo-failover): the old source — or a geo-secondary of it —
        /// takes the new source in its place.
        succeeds: Option<(String, String)>,
        /// The database is READ_ONLY in the source region.
        read_only: bool,
    },
    /// Geo forwarder → its source: append a full image of the database to
    /// the log (it flows down the link like any record), so a replica of
    /// the forwarder's region can be seeded from it.
    ImageRequest {
        /// The database's name in the source region.
        database: String,
    },
    /// Geo source → geo-secondary: the link ends and the copy becomes an
    /// independent database of its region — planned: once it has redone
    /// exactly up to `at_lsn` (the source's log end, the source's writes
    /// held); forced: wherever its log ends.
    Terminate {
        /// The database's name in the source region.
        database: String,
        /// Planned termination (else forced).
        planned: bool,
        /// Where the source's log ends (planned termination).
        at_lsn: u64,
        /// A planned geo-failover: the geo-secondary becomes the source.
        handover: Option<Handover>,
    },
    /// Geo-secondary → its source: hand the database over (`ALTER DATABASE
    /// … FAILOVER` on the geo-secondary).
    FailoverRequest {
        /// The database's name in the source region.
        database: String,
    },
    /// Geo-secondary → source: it is independent now, its log ending at
    /// `end_lsn`.
    Terminated {
        /// The database's name in the source region.
        database: String,
        /// Where its log ends.
        end_lsn: u64,
    },
    /// A replica that found a damaged page asks a partner for it (see
    /// [`crate::repair`]): a secondary asks the primary, the primary its
    /// synchronized secondaries.
    PageRequest {
        /// The asking replica's cluster; another cluster's request is refused.
        cluster_id: String,
        /// The availability group of the database.
        group: String,
        /// The database.
        database: String,
        /// The damaged page.
        pgno: u32,
        /// The partner answers with its file at this LSN or later (a
        /// secondary redoes up to it first).
        at_lsn: u64,
    },
    /// The answer to `PageRequest`.
    PageAnswer {
        /// The database.
        database: String,
        /// The page asked for.
        pgno: u32,
        /// The page is the one the partner's file holds at this LSN.
        lsn: u64,
        /// The page's bytes (sealed), or None.
        image: Option<Vec<u8>>,
        /// Why there is no image (empty with one).
        reason: String,
    },
    /// A secondary's scrub asks the primary for the stored checksums of a
    /// run of pages, to compare them with its own (see [`crate::repair`]).
    PageSumsRequest {
        /// The asking replica's cluster.
        cluster_id: String,
        /// The availability group of the database.
        group: String,
        /// The database.
        database: String,
        /// First page of the run.
        from_pgno: u32,
        /// Pages in the run.
        count: u32,
        /// The partner answers with its file at this LSN or later.
        at_lsn: u64,
    },
    /// The answer to `PageSumsRequest`.
    PageSums {
        /// The database.
        database: String,
        /// The checksums are those of the file at this LSN.
        lsn: u64,
        /// One per page of the run that exists, in page order.
        sums: Vec<u32>,
        /// Why there are none (empty with them).
        reason: String,
    },
    /// Primary → secondary: log records of one database, in LSN order.
    Records {
        /// Database the records belong to.
        database: String,
        /// Each the exact bytes of one log record (opaque here; shared with
        /// the log that keeps them, not copied).
        records: Vec<Bytes>,
    },
    /// Secondary → primary: progress of one database.
    Progress {
        /// Database the positions belong to.
        database: String,
        /// Everything before this LSN is fsynced in the secondary's log.
        hardened_lsn: u64,
        /// Everything before this LSN is applied to the secondary's file.
        redone_lsn: u64,
        /// First LSN of the secondary's log (after a seed or rewind, the
        /// full image's): the primary counts a report only once it is about
        /// the log it sent.
        first_lsn: u64,
    },
    /// Primary → secondary: expect records of a database from this LSN on
    /// (e.g. after a gap); the secondary truncates nothing.
    Rewind {
        /// Database to restart.
        database: String,
        /// LSN of the next record the primary sends.
        from_lsn: u64,
    },
    /// Either side, periodically: liveness for the session timeout.
    Ping {
        /// The sender's monotonic clock, microseconds; echoed in `Pong`.
        sent_us: u64,
    },
    /// Answer to `Ping`.
    Pong {
        /// The `sent_us` of the ping answered, so its sender measures the RTT.
        echo_us: u64,
    },
    /// Data movement for a database is suspended or resumed: from the
    /// primary (for every secondary), or from a secondary (`SET HADR
    /// SUSPEND` run there, for itself alone).
    DatabaseState {
        /// Database concerned.
        database: String,
        /// True when suspended, false when resumed.
        suspended: bool,
    },
    /// Primary → secondary: the database is not sent to this replica
    /// (SEEDING_MODE = MANUAL, and its copy is missing or too old), and why.
    AwaitsRestore {
        /// Database concerned.
        database: String,
        /// What the admin must restore there, with the LSNs involved.
        reason: String,
    },
    /// Primary → secondary (automatic seeding): a full backup of the
    /// database, consistent at `lsn`, follows in [`Message::SeedData`]
    /// parts of `bytes` in all. The secondary restores it and starts again
    /// with that copy; the primary continues from `lsn`.
    Seed {
        /// Database concerned.
        database: String,
        /// The backup's end LSN: where the copy's log starts.
        lsn: u64,
        /// Size of the backup file.
        bytes: u64,
    },
    /// Primary → secondary: the next part of an announced [`Message::Seed`].
    SeedData {
        /// Database concerned.
        database: String,
        /// The bytes, in order.
        data: Vec<u8>,
    },
    /// Primary → secondary: the group's definition changed.
    Config {
        /// Version of the definition, increasing.
        version: u64,
        /// Opaque versioned blob; the caller encodes it.
        config: Vec<u8>,
    },
}

/// Where one database stands on a secondary, sent in `Welcome`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabasePosition {
    /// Database name.
    pub database: String,
    /// Epoch of the last record in the secondary's log.
    pub epoch: u64,
    /// LSN just past the last hardened record.
    pub end_lsn: u64,
    /// LSN just past the last redone record.
    pub redone_lsn: u64,
    /// `(epoch, first_lsn)` pairs, oldest first, to find a fork point.
    pub epoch_history: Vec<(u64, u64)>,
    /// The last record the secondary holds: where it starts and its stored
    /// crc32c. Two logs that end at the same LSN in the same epoch can still
    /// differ (a primary that lost its unsynced tail wrote on in the same
    /// epoch); the primary compares its own record there.
    pub last_record: Option<(u64, u32)>,
}

/// Why bytes are not a valid frame, or a message cannot be sent.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// [`decode`] needs at least `needed` bytes from the start of the
    /// buffer; not an error of the stream. [`WireCodec`] never returns it.
    #[error("incomplete frame: {needed} bytes needed")]
    Incomplete {
        /// Total bytes, from the start of the frame, needed to go on.
        needed: usize,
    },
    /// A frame's length field is over the limit.
    #[error(
        "frame of {len} bytes exceeds the {max}-byte limit; a sender must \
         split record batches below it, a receiver treats it as a corrupt stream"
    )]
    TooLarge {
        /// Value of the length field (bytes after it).
        len: usize,
        /// [`MAX_FRAME_LEN`].
        max: usize,
    },
    /// The peer speaks another protocol version.
    #[error(
        "peer speaks replication protocol version {got}, this node supports \
         version {supported} only; run the same availdb release on every replica"
    )]
    Version {
        /// Version byte of the frame.
        got: u8,
        /// [`VERSION`].
        supported: u8,
    },
    /// The kind byte names no message this node knows.
    #[error(
        "unknown message kind {0}; the peer runs a newer availdb release, \
         upgrade this node"
    )]
    Kind(u8),
    /// The frame's bytes were damaged.
    #[error(
        "frame checksum mismatch (stored {stored:08x}, computed {computed:08x}): \
         the connection corrupted data; reconnect"
    )]
    Checksum {
        /// CRC carried by the frame.
        stored: u32,
        /// CRC of the bytes received.
        computed: u32,
    },
    /// The payload does not match its kind's layout.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A string field is longer than a `u16` length can say.
    #[error("string field of {len} bytes cannot be sent: the limit is 65535 bytes")]
    StringTooLong {
        /// Byte length of the string.
        len: usize,
    },
    /// Reading or writing the connection failed.
    #[error("replication connection I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// What a planned geo-failover hands to the new source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    /// The newest epoch of the old source's log: the new source's epochs
    /// start above it.
    pub source_epoch: u64,
    /// The geo links the new source takes on: the old source itself first,
    /// then its other geo-secondaries.
    pub links: Vec<HandedLink>,
}

/// One geo link a handover moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandedLink {
    /// The geo-secondary's server.
    pub server: String,
    /// Its database name there.
    pub database: String,
    /// Sessions may read it there.
    pub readable: bool,
}

/// Message kinds as numbered on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    GeoHello = 11,
    ImageRequest = 12,
    Terminate = 13,
    Terminated = 14,
    FailoverRequest = 15,
    PageRequest = 16,
    PageAnswer = 17,
    PageSumsRequest = 18,
    PageSums = 19,
    AwaitsRestore = 20,
    Seed = 21,
    SeedData = 22,
    Hello = 1,
    Welcome = 2,
    Refuse = 3,
    Records = 4,
    Progress = 5,
    Rewind = 6,
    Ping = 7,
    Pong = 8,
    DatabaseState = 9,
    Config = 10,
}

impl TryFrom<u8> for Kind {
    type Error = WireError;

    fn try_from(byte: u8) -> Result<Kind, WireError> {
        Ok(match byte {
            1 => Kind::Hello,
            2 => Kind::Welcome,
            3 => Kind::Refuse,
            4 => Kind::Records,
            5 => Kind::Progress,
            6 => Kind::Rewind,
            7 => Kind::Ping,
            8 => Kind::Pong,
            9 => Kind::DatabaseState,
            10 => Kind::Config,
            11 => Kind::GeoHello,
            12 => Kind::ImageRequest,
            13 => Kind::Terminate,
            14 => Kind::Terminated,
            15 => Kind::FailoverRequest,
            16 => Kind::PageRequest,
            17 => Kind::PageAnswer,
            18 => Kind::PageSumsRequest,
            19 => Kind::PageSums,
            20 => Kind::AwaitsRestore,
            21 => Kind::Seed,
            22 => Kind::SeedData,
            _ => return Err(WireError::Kind(byte)),
        })
    }
}

impl Message {
    fn kind(&self) -> Kind {
        match self {
            Message::Hello { .. } => Kind::Hello,
            Message::Welcome { .. } => Kind::Welcome,
            Message::Refuse { .. } => Kind::Refuse,
            Message::Records { .. } => Kind::Records,
            Message::Progress { .. } => Kind::Progress,
            Message::Rewind { .. } => Kind::Rewind,
            Message::Ping { .. } => Kind::Ping,
            Message::Pong { .. } => Kind::Pong,
            Message::DatabaseState { .. } => Kind::DatabaseState,
            Message::Config { .. } => Kind::Config,
            Message::GeoHello { .. } => Kind::GeoHello,
            Message::ImageRequest { .. } => Kind::ImageRequest,
            Message::Terminate { .. } => Kind::Terminate,
            Message::Terminated { .. } => Kind::Terminated,
            Message::FailoverRequest { .. } => Kind::FailoverRequest,
            Message::PageRequest { .. } => Kind::PageRequest,
            Message::PageAnswer { .. } => Kind::PageAnswer,
            Message::PageSumsRequest { .. } => Kind::PageSumsRequest,
            Message::PageSums { .. } => Kind::PageSums,
            Message::AwaitsRestore { .. } => Kind::AwaitsRestore,
            Message::Seed { .. } => Kind::Seed,
            Message::SeedData { .. } => Kind::SeedData,
        }
    }

    /// Size of the whole frame [`encode`] writes for this message, length
    /// field included; an error when the message cannot be sent (a frame over
    /// [`MAX_FRAME_LEN`] or a string over 65535 bytes).
    pub fn encoded_len(&self) -> Result<usize, WireError> {
        let payload = match self {
            Message::Hello {
                cluster_id,
                group,
                from_replica,
                to_replica,
                epoch: _,
            } => {
                str_len(cluster_id)?
                    + str_len(group)?
                    + str_len(from_replica)?
                    + str_len(to_replica)?
                    + 8
            }
            Message::GeoHello {
                from_server,
                cluster_id,
                source_database,
                database,
                succeeds,
                ..
            } => {
                let (server, db) = succeeds.as_ref().map_or(("", ""), |(s, d)| (s, d));
                str_len(from_server)?
                    + str_len(cluster_id)?
                    + str_len(source_database)?
                    + str_len(database)?
                    + 8
                    + 3
                    + str_len(server)?
                    + str_len(db)?
            }
            Message::Welcome { replica, databases } => {
                let mut len = str_len(replica)? + 4;
                for p in databases {
                    len += str_len(&p.database)?
                        + 3 * 8
                        + 4
                        + 16 * p.epoch_history.len()
                        + 1
                        + p.last_record.map_or(0, |_| 12);
                }
                len
            }
            Message::Refuse { reason } => str_len(reason)?,
            Message::Records { database, records } => {
                str_len(database)? + 4 + records.iter().map(|r| 4 + r.len()).sum::<usize>()
            }
            Message::Progress { database, .. } => str_len(database)? + 24,
            Message::Rewind { database, .. } => str_len(database)? + 8,
            Message::ImageRequest { database } => str_len(database)?,
            Message::Terminate {
                database, handover, ..
            } => {
                let mut len = str_len(database)? + 1 + 8 + 1;
                if let Some(h) = handover {
                    len += 8 + 4;
                    for link in &h.links {
                        len += str_len(&link.server)? + str_len(&link.database)? + 1;
                    }
                }
                len
            }
            Message::FailoverRequest { database } => str_len(database)?,
            Message::PageRequest {
                cluster_id,
                group,
                database,
                ..
            } => str_len(cluster_id)? + str_len(group)? + str_len(database)? + 4 + 8,
            Message::PageAnswer {
                database,
                image,
                reason,
                ..
            } => {
                str_len(database)?
                    + 4
                    + 8
                    + 1
                    + image.as_ref().map_or(0, |i| 4 + i.len())
                    + str_len(reason)?
            }
            Message::PageSumsRequest {
                cluster_id,
                group,
                database,
                ..
            } => str_len(cluster_id)? + str_len(group)? + str_len(database)? + 4 + 4 + 8,
            Message::PageSums {
                database,
                sums,
                reason,
                ..
            } => str_len(database)? + 8 + 4 + 4 * sums.len() + str_len(reason)?,
            Message::Terminated { database, .. } => str_len(database)? + 8,
            Message::Ping { .. } | Message::Pong { .. } => 8,
            Message::DatabaseState { database, .. } => str_len(database)? + 1,
            Message::AwaitsRestore { database, reason } => str_len(database)? + str_len(reason)?,
            Message::Seed { database, .. } => str_len(database)? + 8 + 8,
            Message::SeedData { database, data } => str_len(database)? + 4 + data.len(),
            Message::Config { config, .. } => 8 + 4 + config.len(),
        };
        let len = HEADER + payload + CRC_LEN;
        if len > MAX_FRAME_LEN {
            return Err(WireError::TooLarge {
                len,
                max: MAX_FRAME_LEN,
            });
        }
        Ok(LEN_FIELD + len)
    }
}

fn str_len(s: &str) -> Result<usize, WireError> {
    if s.len() > usize::from(u16::MAX) {
        return Err(WireError::StringTooLong { len: s.len() });
    }
    Ok(2 + s.len())
}

/// Appends the whole frame of `msg` to `out`. On error `out` is unchanged.
pub fn encode(msg: &Message, out: &mut Vec<u8>) -> Result<(), WireError> {
    let len = msg.encoded_len()?;
    out.reserve(len);
    write_frame(msg, len, out);
    Ok(())
}

/// Writes a frame of `frame_len` bytes, as computed (and validated) by
/// [`Message::encoded_len`].
fn write_frame<B: BufMut>(msg: &Message, frame_len: usize, out: &mut B) {
    // encoded_len bounded the frame by MAX_FRAME_LEN, so the length field and
    // every count or blob length below fit a u32, and strings fit a u16.
    out.put_u32_le((frame_len - LEN_FIELD) as u32);
    let mut w = Writer {
        out: &mut *out,
        crc: 0,
        written: 0,
    };
    w.u8(VERSION);
    w.u8(msg.kind() as u8);
    match msg {
        Message::Hello {
            cluster_id,
            group,
            from_replica,
            to_replica,
            epoch,
        } => {
            w.str(cluster_id);
            w.str(group);
            w.str(from_replica);
            w.str(to_replica);
            w.u64(*epoch);
        }
        Message::GeoHello {
            from_server,
            cluster_id,
            source_database,
            database,
            epoch,
            create,
            readable,
            read_only,
            succeeds,
        } => {
            w.str(from_server);
            w.str(cluster_id);
            w.str(source_database);
            w.str(database);
            w.u64(*epoch);
            w.u8(u8::from(*create));
            w.u8(u8::from(*readable));
            w.u8(u8::from(*read_only));
            let (server, db) = succeeds.as_ref().map_or(("", ""), |(s, d)| (s, d));
            w.str(server);
            w.str(db);
        }
        Message::Welcome { replica, databases } => {
            w.str(replica);
            w.u32(databases.len() as u32);
            for p in databases {
                w.str(&p.database);
                w.u64(p.epoch);
                w.u64(p.end_lsn);
                w.u64(p.redone_lsn);
                w.u32(p.epoch_history.len() as u32);
                for &(epoch, first_lsn) in &p.epoch_history {
                    w.u64(epoch);
                    w.u64(first_lsn);
                }
                w.u8(u8::from(p.last_record.is_some()));
                if let Some((lsn, crc)) = p.last_record {
                    w.u64(lsn);
                    w.u32(crc);
                }
            }
        }
        Message::Refuse { reason } => w.str(reason),
        Message::Records { database, records } => {
            w.str(database);
            w.u32(records.len() as u32);
            for record in records {
                w.blob(record);
            }
        }
        Message::Progress {
            database,
            hardened_lsn,
            redone_lsn,
            first_lsn,
        } => {
            w.str(database);
            w.u64(*hardened_lsn);
            w.u64(*redone_lsn);
            w.u64(*first_lsn);
        }
        Message::Rewind { database, from_lsn } => {
            w.str(database);
            w.u64(*from_lsn);
        }
        Message::ImageRequest { database } => w.str(database),
        Message::Terminate {
            database,
            planned,
            at_lsn,
            handover,
        } => {
            w.str(database);
            w.u8(u8::from(*planned));
            w.u64(*at_lsn);
            w.u8(u8::from(handover.is_some()));
            if let Some(h) = handover {
                w.u64(h.source_epoch);
                w.u32(h.links.len() as u32);
                for link in &h.links {
                    w.str(&link.server);
                    w.str(&link.database);
                    w.u8(u8::from(link.readable));
                }
            }
        }
        Message::FailoverRequest { database } => w.str(database),
        Message::PageRequest {
            cluster_id,
            group,
            database,
            pgno,
            at_lsn,
        } => {
            w.str(cluster_id);
            w.str(group);
            w.str(database);
            w.u32(*pgno);
            w.u64(*at_lsn);
        }
        Message::PageAnswer {
            database,
            pgno,
            lsn,
            image,
            reason,
        } => {
            w.str(database);
            w.u32(*pgno);
            w.u64(*lsn);
            w.u8(u8::from(image.is_some()));
            if let Some(image) = image {
                w.blob(image);
            }
            w.str(reason);
        }
        Message::PageSumsRequest {
            cluster_id,
            group,
            database,
            from_pgno,
            count,
            at_lsn,
        } => {
            w.str(cluster_id);
            w.str(group);
            w.str(database);
            w.u32(*from_pgno);
            w.u32(*count);
            w.u64(*at_lsn);
        }
        Message::PageSums {
            database,
            lsn,
            sums,
            reason,
        } => {
            w.str(database);
            w.u64(*lsn);
            w.u32(sums.len() as u32);
            for sum in sums {
                w.u32(*sum);
            }
            w.str(reason);
        }
        Message::Terminated { database, end_lsn } => {
            w.str(database);
            w.u64(*end_lsn);
        }
        Message::Ping { sent_us } => w.u64(*sent_us),
        Message::Pong { echo_us } => w.u64(*echo_us),
        Message::DatabaseState {
            database,
            suspended,
        } => {
            w.str(database);
            w.u8(u8::from(*suspended));
        }
        Message::AwaitsRestore { database, reason } => {
            w.str(database);
            w.str(reason);
        }
        Message::Seed {
            database,
            lsn,
            bytes,
        } => {
            w.str(database);
            w.u64(*lsn);
            w.u64(*bytes);
        }
        Message::SeedData { database, data } => {
            w.str(database);
            w.blob(data);
        }
        Message::Config { version, config } => {
            w.u64(*version);
            w.blob(config);
        }
    }
    let crc = w.crc;
    debug_assert_eq!(
        LEN_FIELD + w.written + CRC_LEN,
        frame_len,
        "encoded_len disagrees with write_frame for {:?}",
        msg.kind()
    );
    out.put_u32_le(crc);
}

/// Appends fields to a frame and keeps the running CRC.
struct Writer<'a, B> {
    out: &'a mut B,
    crc: u32,
    written: usize,
}

impl<B: BufMut> Writer<'_, B> {
    fn bytes(&mut self, bytes: &[u8]) {
        self.out.put_slice(bytes);
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.written += bytes.len();
    }

    fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }

    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }

    fn str(&mut self, s: &str) {
        self.bytes(&(s.len() as u16).to_le_bytes());
        self.bytes(s.as_bytes());
    }

    fn blob(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.bytes(b);
    }
}

/// Decodes the frame at the start of `buf`; returns the message and the
/// frame's length. `Err(Incomplete { needed })` when `buf` holds less than
/// the frame; any other error means the stream is unusable.
pub fn decode(buf: &[u8]) -> Result<(Message, usize), WireError> {
    let Some(len_field) = buf.first_chunk::<LEN_FIELD>() else {
        return Err(WireError::Incomplete { needed: LEN_FIELD });
    };
    let len = u32::from_le_bytes(*len_field) as usize;
    if len > MAX_FRAME_LEN {
        return Err(WireError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    if len < MIN_FRAME_LEN {
        return Err(WireError::Malformed(format!(
            "frame length {len} is below the minimum of {MIN_FRAME_LEN} \
             (version, kind, checksum)"
        )));
    }
    // The version is checked before the rest arrives and before the CRC: a
    // peer of another version may frame its checksum differently.
    if let Some(&version) = buf.get(LEN_FIELD) {
        // Every older version framed `Refuse` as this one does: an older
        // peer can still say why it turned this one away.
        let older_refusal = (1..VERSION).contains(&version)
            && buf.get(LEN_FIELD + 1) == Some(&(Kind::Refuse as u8));
        if version != VERSION && !older_refusal {
            return Err(WireError::Version {
                got: version,
                supported: VERSION,
            });
        }
    }
    let total = LEN_FIELD + len;
    let Some(frame) = buf.get(LEN_FIELD..total) else {
        return Err(WireError::Incomplete { needed: total });
    };
    // len >= MIN_FRAME_LEN, so the frame holds version, kind and CRC.
    let (body, stored) = frame.split_at(len - CRC_LEN);
    let stored = u32::from_le_bytes([stored[0], stored[1], stored[2], stored[3]]);
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(WireError::Checksum { stored, computed });
    }
    let kind = Kind::try_from(body[1])?;
    let mut r = Reader {
        kind,
        rest: &body[HEADER..],
    };
    let msg = r.message()?;
    r.finish()?;
    Ok((msg, total))
}

/// Takes fields off a payload; every error names the message and field.
struct Reader<'a> {
    kind: Kind,
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn message(&mut self) -> Result<Message, WireError> {
        Ok(match self.kind {
            Kind::Hello => Message::Hello {
                cluster_id: self.str("cluster_id")?,
                group: self.str("group")?,
                from_replica: self.str("from_replica")?,
                to_replica: self.str("to_replica")?,
                epoch: self.u64("epoch")?,
            },
            Kind::GeoHello => Message::GeoHello {
                from_server: self.str("from_server")?,
                cluster_id: self.str("cluster_id")?,
                source_database: self.str("source_database")?,
                database: self.str("database")?,
                epoch: self.u64("epoch")?,
                create: self.bool("create")?,
                readable: self.bool("readable")?,
                read_only: self.bool("read_only")?,
                succeeds: {
                    let server = self.str("succeeds_server")?;
                    let database = self.str("succeeds_database")?;
                    (!server.is_empty()).then_some((server, database))
                },
            },
            Kind::Welcome => {
                let replica = self.str("replica")?;
                // Smallest position: empty name, three u64s, empty history.
                let count = self.count("databases", 2 + 3 * 8 + 4)?;
                let mut databases = Vec::with_capacity(count);
                for _ in 0..count {
                    databases.push(self.position()?);
                }
                Message::Welcome { replica, databases }
            }
            Kind::Refuse => Message::Refuse {
                reason: self.str("reason")?,
            },
            Kind::Records => {
                let database = self.str("database")?;
                let count = self.count("records", 4)?;
                let mut records = Vec::with_capacity(count);
                for _ in 0..count {
                    records.push(Bytes::from(self.blob("records[]")?));
                }
                Message::Records { database, records }
            }
            Kind::Progress => Message::Progress {
                database: self.str("database")?,
                hardened_lsn: self.u64("hardened_lsn")?,
                redone_lsn: self.u64("redone_lsn")?,
                first_lsn: self.u64("first_lsn")?,
            },
            Kind::Rewind => Message::Rewind {
                database: self.str("database")?,
                from_lsn: self.u64("from_lsn")?,
            },
            Kind::ImageRequest => Message::ImageRequest {
                database: self.str("database")?,
            },
            Kind::Terminate => Message::Terminate {
                database: self.str("database")?,
                planned: self.bool("planned")?,
                at_lsn: self.u64("at_lsn")?,
                handover: if self.bool("handover")? {
                    let source_epoch = self.u64("source_epoch")?;
                    let n = self.u32("links")?;
                    let mut links = Vec::new();
                    for _ in 0..n {
                        links.push(HandedLink {
                            server: self.str("server")?,
                            database: self.str("database")?,
                            readable: self.bool("readable")?,
                        });
                    }
                    Some(Handover {
                        source_epoch,
                        links,
                    })
                } else {
                    None
                },
            },
            Kind::FailoverRequest => Message::FailoverRequest {
                database: self.str("database")?,
            },
            Kind::PageRequest => Message::PageRequest {
                cluster_id: self.str("cluster_id")?,
                group: self.str("group")?,
                database: self.str("database")?,
                pgno: self.u32("pgno")?,
                at_lsn: self.u64("at_lsn")?,
            },
            Kind::PageAnswer => {
                let database = self.str("database")?;
                let pgno = self.u32("pgno")?;
                let lsn = self.u64("lsn")?;
                let image = if self.bool("has_image")? {
                    Some(self.blob("image")?)
                } else {
                    None
                };
                Message::PageAnswer {
                    database,
                    pgno,
                    lsn,
                    image,
                    reason: self.str("reason")?,
                }
            }
            Kind::PageSumsRequest => Message::PageSumsRequest {
                cluster_id: self.str("cluster_id")?,
                group: self.str("group")?,
                database: self.str("database")?,
                from_pgno: self.u32("from_pgno")?,
                count: self.u32("count")?,
                at_lsn: self.u64("at_lsn")?,
            },
            Kind::PageSums => {
                let database = self.str("database")?;
                let lsn = self.u64("lsn")?;
                let n = self.count("sums", 4)?;
                let mut sums = Vec::with_capacity(n);
                for _ in 0..n {
                    sums.push(self.u32("sums[]")?);
                }
                Message::PageSums {
                    database,
                    lsn,
                    sums,
                    reason: self.str("reason")?,
                }
            }
            Kind::Terminated => Message::Terminated {
                database: self.str("database")?,
                end_lsn: self.u64("end_lsn")?,
            },
            Kind::Ping => Message::Ping {
                sent_us: self.u64("sent_us")?,
            },
            Kind::Pong => Message::Pong {
                echo_us: self.u64("echo_us")?,
            },
            Kind::DatabaseState => Message::DatabaseState {
                database: self.str("database")?,
                suspended: self.bool("suspended")?,
            },
            Kind::AwaitsRestore => Message::AwaitsRestore {
                database: self.str("database")?,
                reason: self.str("reason")?,
            },
            Kind::Seed => Message::Seed {
                database: self.str("database")?,
                lsn: self.u64("lsn")?,
                bytes: self.u64("bytes")?,
            },
            Kind::SeedData => Message::SeedData {
                database: self.str("database")?,
                data: self.blob("data")?,
            },
            Kind::Config => Message::Config {
                version: self.u64("version")?,
                config: self.blob("config")?,
            },
        })
    }

    fn position(&mut self) -> Result<DatabasePosition, WireError> {
        let database = self.str("databases[].database")?;
        let epoch = self.u64("databases[].epoch")?;
        let end_lsn = self.u64("databases[].end_lsn")?;
        let redone_lsn = self.u64("databases[].redone_lsn")?;
        let count = self.count("databases[].epoch_history", 16)?;
        let mut epoch_history = Vec::with_capacity(count);
        for _ in 0..count {
            let epoch = self.u64("databases[].epoch_history[].epoch")?;
            let first_lsn = self.u64("databases[].epoch_history[].first_lsn")?;
            epoch_history.push((epoch, first_lsn));
        }
        let last_record = if self.bool("databases[].has_last")? {
            Some((
                self.u64("databases[].last_lsn")?,
                self.u32("databases[].last_crc")?,
            ))
        } else {
            None
        };
        Ok(DatabasePosition {
            database,
            epoch,
            end_lsn,
            redone_lsn,
            epoch_history,
            last_record,
        })
    }

    fn malformed(&self, detail: String) -> WireError {
        WireError::Malformed(format!("{:?} message: {detail}", self.kind))
    }

    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], WireError> {
        if n > self.rest.len() {
            return Err(self.malformed(format!(
                "field `{field}` needs {n} bytes but only {} remain",
                self.rest.len()
            )));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], WireError> {
        let bytes = self.take(N, field)?;
        let mut out = [0; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u64(&mut self, field: &str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn bool(&mut self, field: &str) -> Result<bool, WireError> {
        match self.array::<1>(field)? {
            [0] => Ok(false),
            [1] => Ok(true),
            [v] => Err(self.malformed(format!("field `{field}` is {v}, not a bool (0 or 1)"))),
        }
    }

    fn str(&mut self, field: &str) -> Result<String, WireError> {
        let len = u16::from_le_bytes(self.array(field)?);
        let bytes = self.take(usize::from(len), field)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(self.malformed(format!("field `{field}` is not UTF-8: {e}"))),
        }
    }

    fn blob(&mut self, field: &str) -> Result<Vec<u8>, WireError> {
        let len = self.u32(field)? as usize;
        Ok(self.take(len, field)?.to_vec())
    }

    /// Reads a list count, refusing one the remaining bytes cannot hold at
    /// `min_entry` bytes per entry, so a forged count allocates nothing.
    fn count(&mut self, field: &str, min_entry: usize) -> Result<usize, WireError> {
        let count = self.u32(field)? as usize;
        if count > self.rest.len() / min_entry {
            return Err(self.malformed(format!(
                "field `{field}` claims {count} entries of at least {min_entry} bytes \
                 but only {} bytes remain",
                self.rest.len()
            )));
        }
        Ok(count)
    }

    fn finish(&self) -> Result<(), WireError> {
        if !self.rest.is_empty() {
            return Err(self.malformed(format!("{} bytes after the last field", self.rest.len())));
        }
        Ok(())
    }
}

/// The framing as a `tokio_util` codec, for `Framed<TcpStream, WireCodec>`.
/// After it returns an error the stream has lost its framing: close it.
#[derive(Debug, Default, Clone, Copy)]
pub struct WireCodec;

impl Decoder for WireCodec {
    type Item = Message;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, WireError> {
        match decode(src) {
            Ok((msg, len)) => {
                src.advance(len);
                Ok(Some(msg))
            }
            Err(WireError::Incomplete { needed }) => {
                // `needed` is bounded by MAX_FRAME_LEN; reserving it once
                // avoids regrowing the buffer while a large frame arrives.
                src.reserve(needed.saturating_sub(src.len()));
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, WireError> {
        match self.decode(src)? {
            Some(msg) => Ok(Some(msg)),
            None if src.is_empty() => Ok(None),
            None => Err(WireError::Malformed(format!(
                "connection closed inside a frame, {} bytes into it",
                src.len()
            ))),
        }
    }
}

impl Encoder<&Message> for WireCodec {
    type Error = WireError;

    fn encode(&mut self, msg: &Message, dst: &mut BytesMut) -> Result<(), WireError> {
        let len = msg.encoded_len()?;
        dst.reserve(len);
        write_frame(msg, len, dst);
        Ok(())
    }
}

impl Encoder<Message> for WireCodec {
    type Error = WireError;

    fn encode(&mut self, msg: Message, dst: &mut BytesMut) -> Result<(), WireError> {
        Encoder::<&Message>::encode(self, &msg, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_of(msg: &Message) -> Vec<u8> {
        let mut out = Vec::new();
        encode(msg, &mut out).unwrap();
        out
    }

    /// A frame with the given version, kind and payload and a correct CRC.
    fn raw_frame(version: u8, kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut body = vec![version, kind];
        body.extend_from_slice(payload);
        let mut out = ((body.len() + CRC_LEN) as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        out
    }

    /// The payload of an encoded frame.
    fn payload_of(frame: &[u8]) -> &[u8] {
        &frame[LEN_FIELD + HEADER..frame.len() - CRC_LEN]
    }

    fn samples() -> Vec<Message> {
        vec![
            Message::Hello {
                cluster_id: "c-7f3a".into(),
                group: "ag1".into(),
                from_replica: "node-a".into(),
                to_replica: "node-b".into(),
                epoch: 5,
            },
            Message::Hello {
                cluster_id: String::new(),
                group: "grüppe ✓".into(),
                from_replica: "東京".into(),
                to_replica: "🦀".into(),
                epoch: u64::MAX,
            },
            Message::Welcome {
                replica: "node-b".into(),
                databases: vec![],
            },
            Message::Welcome {
                replica: "node-b".into(),
                databases: vec![
                    DatabasePosition {
                        database: "shop".into(),
                        epoch: 3,
                        end_lsn: 81_920,
                        redone_lsn: 40_960,
                        epoch_history: vec![(1, 0), (2, 4_096), (3, 65_536)],
                        last_record: Some((77_000, 0xdead_beef)),
                    },
                    DatabasePosition {
                        database: "empty".into(),
                        epoch: 0,
                        end_lsn: 0,
                        redone_lsn: 0,
                        epoch_history: vec![],
                        last_record: None,
                    },
                ],
            },
            Message::Refuse {
                reason: "peer belongs to cluster X, not Y".into(),
            },
            Message::Refuse {
                reason: String::new(),
            },
            Message::Records {
                database: "shop".into(),
                records: vec![
                    b"AVLR one".to_vec().into(),
                    Bytes::new(),
                    vec![0xff; 300].into(),
                ],
            },
            Message::Records {
                database: "shop".into(),
                records: vec![],
            },
            Message::Progress {
                database: "shop".into(),
                hardened_lsn: 81_920,
                redone_lsn: 40_960,
                first_lsn: 4_096,
            },
            Message::Rewind {
                database: "shop".into(),
                from_lsn: 4_096,
            },
            Message::Ping { sent_us: 0 },
            Message::Pong {
                echo_us: 123_456_789,
            },
            Message::DatabaseState {
                database: "shop".into(),
                suspended: true,
            },
            Message::DatabaseState {
                database: "shop".into(),
                suspended: false,
            },
            Message::Config {
                version: 9,
                config: b"{\"replicas\":3}".to_vec(),
            },
            Message::Config {
                version: 0,
                config: vec![],
            },
            Message::GeoHello {
                from_server: "A".into(),
                cluster_id: "c-1".into(),
                source_database: "app".into(),
                database: "app_b".into(),
                epoch: 7,
                create: true,
                readable: false,
                read_only: true,
                succeeds: Some(("B".into(), "app_b".into())),
            },
            Message::ImageRequest {
                database: "shop".into(),
            },
            Message::Terminate {
                database: "app".into(),
                planned: true,
                at_lsn: 4096,
                handover: None,
            },
            Message::Terminate {
                database: "app".into(),
                planned: true,
                at_lsn: 4096,
                handover: Some(Handover {
                    source_epoch: 9,
                    links: vec![
                        HandedLink {
                            server: "A".into(),
                            database: "app".into(),
                            readable: true,
                        },
                        HandedLink {
                            server: "C".into(),
                            database: "app_c".into(),
                            readable: false,
                        },
                    ],
                }),
            },
            Message::Terminated {
                database: "app".into(),
                end_lsn: 4096,
            },
            Message::FailoverRequest {
                database: "app".into(),
            },
            Message::PageRequest {
                cluster_id: "c1".into(),
                group: "ag1".into(),
                database: "app".into(),
                pgno: 7,
                at_lsn: 8192,
            },
            Message::PageAnswer {
                database: "app".into(),
                pgno: 7,
                lsn: 8192,
                image: Some(vec![0xAB; 512]),
                reason: String::new(),
            },
            Message::PageAnswer {
                database: "app".into(),
                pgno: 1,
                lsn: 0,
                image: None,
                reason: "damaged here too".into(),
            },
            Message::PageSumsRequest {
                cluster_id: "c1".into(),
                group: "ag1".into(),
                database: "app".into(),
                from_pgno: 65,
                count: 64,
                at_lsn: 4096,
            },
            Message::PageSums {
                database: "app".into(),
                lsn: 4096,
                sums: vec![1, 0xFFFF_FFFF, 7],
                reason: String::new(),
            },
            Message::AwaitsRestore {
                database: "shop".into(),
                reason: "restore it WITH NORECOVERY".into(),
            },
            Message::Seed {
                database: "app".into(),
                lsn: 8192,
                bytes: 3 << 20,
            },
            Message::SeedData {
                database: "app".into(),
                data: vec![0x5A; 4096],
            },
        ]
    }

    /// Deterministic xorshift64, so failures reproduce.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn byte(&mut self) -> u8 {
            self.next() as u8
        }
    }

    #[test]
    fn every_message_round_trips() {
        let big = Message::Records {
            database: "big".into(),
            records: vec![vec![0x5a; 4 << 20].into(), vec![1, 2, 3].into()],
        };
        for msg in samples().into_iter().chain([big]) {
            let frame = frame_of(&msg);
            assert_eq!(frame.len(), msg.encoded_len().unwrap(), "{msg:?}");
            let (back, len) = decode(&frame).unwrap();
            assert_eq!(len, frame.len());
            assert_eq!(back, msg);
        }
    }

    #[test]
    fn the_samples_cover_every_kind() {
        let mut kinds: Vec<u8> = samples().iter().map(|m| m.kind() as u8).collect();
        kinds.dedup();
        assert_eq!(kinds, (1..=22).collect::<Vec<u8>>());
        for byte in 1..=22u8 {
            assert_eq!(Kind::try_from(byte).unwrap() as u8, byte);
        }
    }

    #[test]
    fn frames_match_the_documented_byte_layout() {
        let ping = Message::Ping {
            sent_us: 0x0102_0304_0506_0708,
        };
        #[rustfmt::skip]
        let ping_frame = [
            0x0e, 0x00, 0x00, 0x00,                          // length 14
            0x03, 0x07,                                      // version 3, kind Ping
            0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,  // sent_us
            0xf9, 0x74, 0x7a, 0xd6,                          // crc32c
        ];
        let progress = Message::Progress {
            database: "db".into(),
            hardened_lsn: 5,
            redone_lsn: 3,
            first_lsn: 1,
        };
        #[rustfmt::skip]
        let progress_frame = [
            0x22, 0x00, 0x00, 0x00,                          // length 34
            0x03, 0x05,                                      // version 3, kind Progress
            0x02, 0x00, b'd', b'b',                          // database
            0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // hardened_lsn
            0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // redone_lsn
            0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // first_lsn
            0x9b, 0xca, 0xe3, 0xcc,                          // crc32c
        ];
        assert_eq!(frame_of(&ping), ping_frame);
        assert_eq!(frame_of(&progress), progress_frame);
        assert_eq!(decode(&ping_frame).unwrap(), (ping, ping_frame.len()));
        assert_eq!(
            decode(&progress_frame).unwrap(),
            (progress, progress_frame.len())
        );
    }

    #[test]
    fn a_stream_split_at_every_byte_boundary_yields_exactly_the_messages() {
        let messages = samples();
        let mut stream = Vec::new();
        for msg in &messages {
            stream.extend_from_slice(&frame_of(msg));
        }
        let mut codec = WireCodec;
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &byte in &stream {
            buf.put_u8(byte);
            while let Some(msg) = codec.decode(&mut buf).unwrap() {
                got.push(msg);
            }
        }
        assert_eq!(got, messages);
        assert!(buf.is_empty());
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);

        let mut whole = BytesMut::from(&stream[..]);
        let mut got = Vec::new();
        while let Some(msg) = codec.decode_eof(&mut whole).unwrap() {
            got.push(msg);
        }
        assert_eq!(got, messages);
    }

    #[test]
    fn the_codec_writes_the_same_frames_as_encode() {
        let mut codec = WireCodec;
        for msg in samples() {
            let mut by_ref = BytesMut::new();
            codec.encode(&msg, &mut by_ref).unwrap();
            let mut by_value = BytesMut::new();
            codec.encode(msg.clone(), &mut by_value).unwrap();
            assert_eq!(by_ref, frame_of(&msg));
            assert_eq!(by_value, by_ref);
        }
    }

    #[test]
    fn incomplete_says_how_many_bytes_are_needed() {
        let frame = frame_of(&Message::Ping { sent_us: 1 });
        for cut in 0..frame.len() {
            let needed = if cut < LEN_FIELD {
                LEN_FIELD
            } else {
                frame.len()
            };
            assert!(
                matches!(decode(&frame[..cut]), Err(WireError::Incomplete { needed: n }) if n == needed),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn an_unknown_version_is_rejected_naming_the_supported_one() {
        let newer = VERSION + 1;
        let frame = raw_frame(newer, Kind::Ping as u8, &[0; 8]);
        // Refused as soon as the version byte arrives, whatever follows.
        for cut in [LEN_FIELD + 1, frame.len()] {
            let err = decode(&frame[..cut]).unwrap_err();
            assert!(
                matches!(
                    err,
                    WireError::Version { got, supported } if got == newer && supported == VERSION
                ),
                "{err:?}"
            );
            assert!(
                err.to_string()
                    .contains(&format!("supports version {VERSION}")),
                "{err}"
            );
        }
        // Every older peer can still say why it refused this one; it can
        // say nothing else.
        let mut payload = Vec::new();
        payload.extend_from_slice(&(4u16).to_le_bytes());
        payload.extend_from_slice(b"nope");
        for older in 1..VERSION {
            let refusal = raw_frame(older, Kind::Refuse as u8, &payload);
            assert_eq!(
                decode(&refusal).unwrap().0,
                Message::Refuse {
                    reason: "nope".into()
                }
            );
            assert!(decode(&raw_frame(older, Kind::Ping as u8, &[0; 8])).is_err());
        }
    }

    #[test]
    fn an_unknown_kind_is_rejected_with_advice() {
        for kind in [0, 23, 255] {
            let err = decode(&raw_frame(VERSION, kind, &[])).unwrap_err();
            assert!(matches!(err, WireError::Kind(k) if k == kind), "{err:?}");
            assert!(err.to_string().contains("upgrade"), "{err}");
        }
    }

    #[test]
    fn a_bad_checksum_is_rejected() {
        let frame = frame_of(&Message::Pong { echo_us: 77 });
        for at in [LEN_FIELD + 1, LEN_FIELD + 2, frame.len() - 1] {
            let mut bad = frame.clone();
            bad[at] ^= 0x10;
            match decode(&bad) {
                Err(WireError::Checksum { stored, computed }) => assert_ne!(stored, computed),
                other => panic!("flip at {at}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_payload_shorter_than_its_fields_is_rejected() {
        for msg in samples() {
            let frame = frame_of(&msg);
            let payload = payload_of(&frame);
            let short = raw_frame(VERSION, msg.kind() as u8, &payload[..payload.len() - 1]);
            let err = decode(&short).unwrap_err();
            assert!(
                matches!(&err, WireError::Malformed(m) if m.contains("needs")),
                "{msg:?}: {err:?}"
            );
        }
    }

    #[test]
    fn a_payload_longer_than_its_fields_is_rejected() {
        for msg in samples() {
            let frame = frame_of(&msg);
            let mut long = payload_of(&frame).to_vec();
            long.push(0);
            let err = decode(&raw_frame(VERSION, msg.kind() as u8, &long)).unwrap_err();
            assert!(
                matches!(&err, WireError::Malformed(m) if m.contains("1 bytes after the last field")),
                "{msg:?}: {err:?}"
            );
        }
    }

    #[test]
    fn invalid_utf8_is_rejected() {
        let err = decode(&raw_frame(VERSION, Kind::Refuse as u8, &[2, 0, 0xc3, 0x28])).unwrap_err();
        assert!(
            matches!(&err, WireError::Malformed(m) if m.contains("`reason` is not UTF-8")),
            "{err:?}"
        );
    }

    #[test]
    fn a_bool_other_than_0_or_1_is_rejected() {
        let payload = [1, 0, b'd', 2];
        let err = decode(&raw_frame(VERSION, Kind::DatabaseState as u8, &payload)).unwrap_err();
        assert!(
            matches!(&err, WireError::Malformed(m) if m.contains("`suspended` is 2")),
            "{err:?}"
        );
    }

    #[test]
    fn a_forged_list_count_is_rejected_without_allocating() {
        let mut payload = vec![1, 0, b'd'];
        payload.extend_from_slice(&u32::MAX.to_le_bytes());
        let err = decode(&raw_frame(VERSION, Kind::Records as u8, &payload)).unwrap_err();
        assert!(
            matches!(&err, WireError::Malformed(m) if m.contains("claims 4294967295 entries")),
            "{err:?}"
        );
    }

    #[test]
    fn a_frame_over_the_limit_is_rejected_from_its_length_alone() {
        for len in [MAX_FRAME_LEN + 1, u32::MAX as usize] {
            let err = decode(&(len as u32).to_le_bytes()).unwrap_err();
            assert!(
                matches!(err, WireError::TooLarge { len: l, max: MAX_FRAME_LEN } if l == len),
                "{err:?}"
            );
        }
        let at_limit = (MAX_FRAME_LEN as u32).to_le_bytes();
        assert!(matches!(
            decode(&at_limit),
            Err(WireError::Incomplete { needed }) if needed == LEN_FIELD + MAX_FRAME_LEN
        ));
    }

    #[test]
    fn a_length_below_the_minimum_is_rejected() {
        for len in 0..MIN_FRAME_LEN as u32 {
            let err = decode(&len.to_le_bytes()).unwrap_err();
            assert!(
                matches!(&err, WireError::Malformed(m) if m.contains("below the minimum")),
                "{err:?}"
            );
        }
    }

    #[test]
    fn a_message_too_large_to_send_is_refused_and_writes_nothing() {
        let overhead = Message::Records {
            database: "db".into(),
            records: vec![Bytes::new()],
        }
        .encoded_len()
        .unwrap()
            - LEN_FIELD;
        let fits = Message::Records {
            database: "db".into(),
            records: vec![vec![0; MAX_FRAME_LEN - overhead].into()],
        };
        assert_eq!(fits.encoded_len().unwrap(), LEN_FIELD + MAX_FRAME_LEN);
        let too_big = Message::Records {
            database: "db".into(),
            records: vec![vec![0; MAX_FRAME_LEN - overhead + 1].into()],
        };
        let long_name = Message::Rewind {
            database: "x".repeat(65_536),
            from_lsn: 0,
        };
        let mut out = vec![7];
        let err = encode(&too_big, &mut out).unwrap_err();
        assert!(
            matches!(err, WireError::TooLarge { len, max: MAX_FRAME_LEN } if len == MAX_FRAME_LEN + 1),
            "{err:?}"
        );
        let err = encode(&long_name, &mut out).unwrap_err();
        assert!(
            matches!(err, WireError::StringTooLong { len: 65_536 }),
            "{err:?}"
        );
        assert_eq!(out, [7]);
        let mut dst = BytesMut::new();
        assert!(WireCodec.encode(&too_big, &mut dst).is_err());
        assert!(WireCodec.encode(long_name, &mut dst).is_err());
        assert!(dst.is_empty());
    }

    #[test]
    fn eof_inside_a_frame_is_an_error() {
        let frame = frame_of(&Message::Ping { sent_us: 1 });
        let mut buf = BytesMut::from(&frame[..frame.len() - 1]);
        let err = WireCodec.decode_eof(&mut buf).unwrap_err();
        assert!(
            matches!(&err, WireError::Malformed(m) if m.contains("closed inside a frame")),
            "{err:?}"
        );
    }

    /// Decodes `bytes` both ways; a success must re-encode to the bytes it
    /// consumed. Returns whether a message came out.
    fn decode_checked(bytes: &[u8]) -> bool {
        let mut buf = BytesMut::from(bytes);
        let by_codec = WireCodec.decode_eof(&mut buf);
        match decode(bytes) {
            Ok((msg, len)) => {
                assert_eq!(frame_of(&msg), &bytes[..len], "not canonical: {bytes:02x?}");
                assert_eq!(by_codec.unwrap(), Some(msg));
                true
            }
            Err(_) => {
                assert!(by_codec.is_err() || bytes.is_empty(), "{bytes:02x?}");
                false
            }
        }
    }

    #[test]
    fn safety_rule_6_random_bytes_never_panic() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let mut bytes: Vec<u8> = (0..rng.below(64)).map(|_| rng.byte()).collect();
            // Mostly plausible lengths and the right version, to get past
            // the first checks.
            if bytes.len() >= 5 && rng.below(4) != 0 {
                let len = rng.below(bytes.len() + 4) as u32;
                bytes[..4].copy_from_slice(&len.to_le_bytes());
                bytes[4] = VERSION;
            }
            decode_checked(&bytes);
        }
    }

    #[test]
    fn safety_rule_6_random_payloads_with_valid_checksums_never_panic_and_decode_canonically() {
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        let mut decoded = 0;
        for _ in 0..20_000 {
            // Small byte values make string lengths and counts that fit.
            let payload: Vec<u8> = (0..rng.below(48))
                .map(|_| match rng.below(3) {
                    0 => rng.byte(),
                    _ => rng.below(3) as u8,
                })
                .collect();
            let kind = rng.below(12) as u8;
            if decode_checked(&raw_frame(VERSION, kind, &payload)) {
                decoded += 1;
            }
        }
        assert!(decoded > 50, "only {decoded} random payloads decoded");
    }

    #[test]
    fn safety_rule_6_any_single_byte_corruption_is_an_error() {
        let frames: Vec<Vec<u8>> = samples().iter().map(frame_of).collect();
        let mut rng = XorShift(0xd1b5_4a32_d192_ed03);
        for _ in 0..20_000 {
            let frame = &frames[rng.below(frames.len())];
            let at = rng.below(frame.len());
            let mut bad = frame.clone();
            bad[at] ^= 1 + rng.below(255) as u8;
            assert!(
                !decode_checked(&bad),
                "corruption at {at} accepted: {bad:02x?}"
            );
        }
    }
}
