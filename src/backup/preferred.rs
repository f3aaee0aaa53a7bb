//! Which replica should take the group's backups
//! (`sys.fn_hadr_backup_is_preferred_replica`): a pure decision over the
//! group's AUTOMATED_BACKUP_PREFERENCE and each replica's BACKUP_PRIORITY.
//!
//! * `PRIMARY`: the primary, whatever the priorities.
//! * `SECONDARY_ONLY`: the available secondary with the highest priority
//!   above 0; none → no replica (the job runs nowhere).
//! * `SECONDARY`: as `SECONDARY_ONLY`, else the primary.
//! * `NONE`: the available replica, primary included, with the highest
//!   priority above 0.
//!
//! Ties go to the first name in alphabetical order, so every replica that
//! sees the same candidates names the same one.

use crate::group::BackupPreference;

/// A replica as the decision sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Replica name.
    pub name: String,
    /// BACKUP_PRIORITY (0: never chosen, except as the primary under
    /// `PRIMARY` or the fallback of `SECONDARY`).
    pub priority: u8,
    /// It is the primary.
    pub primary: bool,
    /// It is up and connected (as far as the asking node knows).
    pub available: bool,
}

/// The preferred replica's name, if any.
pub fn preferred(preference: BackupPreference, candidates: &[Candidate]) -> Option<&str> {
    let primary = candidates
        .iter()
        .find(|c| c.primary)
        .map(|c| c.name.as_str());
    let best = |secondaries_only: bool| {
        candidates
            .iter()
            .filter(|c| c.available && c.priority > 0 && !(secondaries_only && c.primary))
            .max_by(|a, b| a.priority.cmp(&b.priority).then(b.name.cmp(&a.name)))
            .map(|c| c.name.as_str())
    };
    match preference {
        BackupPreference::Primary => primary,
        BackupPreference::SecondaryOnly => best(true),
        BackupPreference::Secondary => best(true).or(primary),
        BackupPreference::None => best(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, priority: u8, primary: bool, available: bool) -> Candidate {
        Candidate {
            name: name.into(),
            priority,
            primary,
            available,
        }
    }

    #[test]
    fn the_preference_and_the_priorities_pick_one_replica() {
        use BackupPreference::*;
        let group = [
            c("r1", 90, true, true),
            c("r2", 50, false, true),
            c("r3", 70, false, true),
        ];
        let r3_down = [
            c("r1", 90, true, true),
            c("r2", 50, false, true),
            c("r3", 70, false, false),
        ];
        let no_secondary = [c("r1", 90, true, true), c("r2", 0, false, true)];
        let tie = [
            c("r1", 10, true, true),
            c("r3", 60, false, true),
            c("r2", 60, false, true),
        ];
        for (preference, candidates, expected) in [
            (Primary, &group[..], Some("r1")),
            (SecondaryOnly, &group[..], Some("r3")),
            (Secondary, &group[..], Some("r3")),
            (None, &group[..], Some("r1")),
            (SecondaryOnly, &r3_down[..], Some("r2")),
            (SecondaryOnly, &no_secondary[..], Option::None),
            (Secondary, &no_secondary[..], Some("r1")),
            (Secondary, &tie[..], Some("r2")),
            (Primary, &no_secondary[..], Some("r1")),
        ] {
            assert_eq!(
                preferred(preference, candidates),
                expected,
                "{preference:?} over {candidates:?}"
            );
        }
    }
}
