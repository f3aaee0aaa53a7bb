//! Fail-stop: failures after which this node cannot write safely again
//! until it restarts and re-reads its disk — a transaction log whose write
//! or fsync failed (fsync is never retried: the kernel may have dropped the
//! pages), a commit that could not be captured into its log. Whoever meets
//! one announces it here; the server (`cli`) then exits with what to do,
//! as PostgreSQL panics when a WAL write or fsync fails, and as the node
//! already does when its cluster member's store fails.
//!
//! Staying up helps nobody: such a database refuses writes until a
//! restart, and a primary that no replica may replace (none synchronized)
//! would stay RESOLVING until someone noticed; a synchronized secondary
//! that cannot harden would hold its primary's commits. Exited, a
//! supervisor (or the operator, told so) starts it again, and recovery
//! rebuilds every database from its log.

use std::sync::OnceLock;

use tokio::sync::watch;

static ANNOUNCED: OnceLock<watch::Sender<Vec<String>>> = OnceLock::new();

fn announced() -> &'static watch::Sender<Vec<String>> {
    ANNOUNCED.get_or_init(|| watch::channel(Vec::new()).0)
}

/// Announces a failure that needs a restart (what failed, and why).
pub fn announce(what: String) {
    announced().send_modify(|all| all.push(what));
}

/// Follows the failures announced so far in this process, oldest first.
pub fn watch() -> watch::Receiver<Vec<String>> {
    announced().subscribe()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announced_failure_is_seen_by_a_watcher_subscribed_before_or_after() {
        let before = watch();
        announce("test: the log of /nowhere failed".into());
        assert!(before
            .borrow()
            .iter()
            .any(|w| w == "test: the log of /nowhere failed"));
        assert!(watch()
            .borrow()
            .iter()
            .any(|w| w == "test: the log of /nowhere failed"));
    }
}
