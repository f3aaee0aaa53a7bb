//! Physical log shipping between the replicas of an availability group.
//!
//! * [`link`]: the protocol cores of a link, without I/O — where a
//!   secondary starts (continue, seed, rewind), the check of every batch of
//!   records, the session timeout.
//! * [`sync`]: the synchronization state of each secondary as the primary
//!   sees it, and the rule that decides when a commit may be acknowledged.
//! * [`wire`]: the framed, checksummed messages between partners.
//! * [`primary`]: one sender per secondary; the commit hook.
//! * [`secondary`]: the endpoint; hardening and redo.
//! * [`seed`]: automatic seeding of a large database by a backup the
//!   primary streams to the replica (no write lock while it is read).
//! * [`geo`]: geo-replication between regions — the source's geo senders
//!   and the forwarder that takes a geo-secondary's log in.
//! * [`error`]: why a link ended or a batch was refused.
pub mod error;
pub mod geo;
pub mod link;
pub mod primary;
pub mod secondary;
pub mod seed;
pub mod sync;
pub mod wire;

pub use error::ReplicationError;
