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
//! | `capture.part_appended` | after each record of a commit is appended, before it is durable |
//! | `log.restart.intent` | a log restart (seeding, rewind) made its intent durable |
//! | `log.restart.new_segment` | … created the image's empty segment |
//! | `log.restart.old_removed` | … removed the old segments |
//! | `log.restart.history` | … replaced the epoch history |
//! | `log.restart.checkpoint` | … wrote the checkpoint, before removing the intent |
//! | `backup.pages_written` | a full backup wrote its pages, not yet its log or manifest (the file is still `.partial`) |
//! | `restore.built` | a RESTORE DATABASE built and checked its copy, before it becomes RESTORING |
//! | `restore.log_written` | a RESTORE LOG wrote its records, before the restore's state records it |
//! | `upgrade.read_only` | `availdb upgrade` step 3: production is READ_ONLY, the step not recorded as done |
//! | `upgrade.terminated` | step 4: the planned termination returned, its guards not checked |
//! | `upgrade.script_ran` | step 5: the upgrade script ran, the smoke check not yet |
//! | `upgrade.switched` | step 6: the traffic manager switched, the step not recorded as done |
//! | `upgrade.dr_synced` | option 2, step 3: production's DR copy seen holding production's end, the step not recorded as done |
//! | `upgrade.stage_dr_linked` | option 2, step 10: the chained ADD SECONDARY returned, V2-DR not started |
//! | `upgrade.stage_dr_seeded` | option 2, step 11: the chained copy seeded and V2-DR's endpoint added offline, the step not recorded as done |
//!
//! Unit tests reach a point in a child process (`tests_support::crash_in_child`, in unit tests):
//! the test binary runs itself again, for one test, with the variable set.

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

/// Running part of a unit test in a child process that a crash point kills.
#[cfg(test)]
pub mod tests_support {
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output};

    /// Set in the child: the folder the parent gave it.
    const CHILD_DIR: &str = "AVAILDB_TEST_CHILD_DIR";

    /// In the child run by [`crash_in_child`]: the folder to work in.
    pub fn child_dir() -> Option<PathBuf> {
        std::env::var_os(CHILD_DIR).map(PathBuf::from)
    }

    /// Runs the test `test` (its full path, `log::store::tests::name`)
    /// again in a child process with `AVAILDB_CRASH_AT=point` (None: no
    /// crash point) and [`child_dir`] = `dir`; returns how it ended.
    pub fn crash_in_child(test: &str, point: Option<&str>, dir: &Path) -> Output {
        let mut cmd = Command::new(std::env::current_exe().expect("the test binary"));
        cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, dir)
            .env_remove("AVAILDB_CRASH_AT");
        if let Some(point) = point {
            cmd.env("AVAILDB_CRASH_AT", point);
        }
        cmd.output().expect("run the test binary again")
    }

    /// True when the child died at `point` (it said so, and did not exit).
    pub fn crashed_at(out: &Output, point: &str) -> bool {
        let stderr = String::from_utf8_lossy(&out.stderr);
        out.status.code().is_none() && stderr.contains(&format!("crash point {point} reached"))
    }
}
