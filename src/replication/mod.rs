//! Physical log shipping between the replicas of an availability group.
//!
//! * [`sync`]: the synchronization state of each secondary as the primary
//!   sees it, and the rule that decides when a commit may be acknowledged.
pub mod sync;
