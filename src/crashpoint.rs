//! Crash points: named places where a test can make the process die as
//! kill -9 would, to reach the windows of a transition deterministically.
//!
//! `AVAILDB_CRASH_AT=name` aborts the process at the first hit of `name`;
//! `name:N` at the N-th. The variable is read once; unset, a hit costs one
//! atomic load.
//!
//! | point | where |
//! | --- | --- |
//! | `ag.promote.before` | a secondary taking office, before its databases are made writable |
//! | `ag.promote.one_database` | after each database was made writable (fenced) |

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

fn target() -> &'static Option<(String, u64)> {
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    TARGET.get_or_init(|| {
        let spec = std::env::var("AVAILDB_CRASH_AT").ok()?;
        Some(match spec.rsplit_once(':') {
            Some((name, n)) if n.parse::<u64>().is_ok() => {
                (name.to_string(), n.parse().unwrap_or(1))
            }
            _ => (spec, 1),
        })
    })
}

/// Aborts the process when `AVAILDB_CRASH_AT` names this point (and hit).
pub fn hit(name: &'static str) {
    static HITS: AtomicU64 = AtomicU64::new(0);
    let Some((wanted, nth)) = target() else {
        return;
    };
    if wanted == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
        eprintln!("availdb: crash point {name} reached (AVAILDB_CRASH_AT): aborting");
        std::process::abort();
    }
}
