//! Physical log shipping between the replicas of an availability group.
//!
//! * [`sync`]: the synchronization state of each secondary as the primary
//!   sees it, and the rule that decides when a commit may be acknowledged.
//! * [`wire`]: the framed, checksummed messages between partners.
//! * [`primary`]: one sender per secondary; the commit hook.
//! * [`secondary`]: the endpoint; hardening and redo.
pub mod primary;
pub mod secondary;
pub mod sync;
pub mod wire;
