//! Where a node in no cluster keeps its roles: `DATA_DIR/roles.json`.
//!
//! A node in a cluster keeps its roles in the cluster's replicated state
//! ([`crate::cluster::ClusterState::roles`]). A node that runs on its own
//! (`availdb server` without an endpoint, or with one but before `CREATE
//! CLUSTER` or a join) keeps them here instead, with the same statements,
//! the same checks and the same rules of change: a change is the cluster
//! command a cluster node would propose ([`crate::cluster::Command`]'s
//! `CreateRole`, `AlterRole`, `DropRole`, `SetPrivileges`), applied by the
//! same code ([`crate::cluster::ClusterState::apply`]), so the two homes
//! cannot disagree on what a statement does.
//!
//! # Invariants
//! * **Verifiers only.** The file holds [`RoleRecord`]s as the cluster
//!   would: names, LOGIN, privileges and SCRAM-SHA-256 verifiers; a
//!   password never reaches it (the statement's password became a verifier
//!   before the command was made).
//! * **Durable before visible.** A change is written to `roles.json.tmp`,
//!   fsynced, renamed over `roles.json`, and the directory fsynced
//!   ([`crate::durable::write_atomically`]) before sessions see it; a
//!   change that cannot be written is refused and changes nothing.
//! * **One home at a time.** Once the node is in a cluster, the cluster's
//!   roles are the ones that count. `CREATE CLUSTER` (and `CREATE
//!   AVAILABILITY GROUP`, which forms the cluster) carries these roles
//!   into the new cluster's state and then removes the file; a node that
//!   keeps roles here refuses to be added to an existing cluster
//!   ([`crate::cluster::Refusal::KeepsOwnRoles`]), saying what to do.
//! * A file that cannot be read or parsed stops the node at start, naming
//!   the file: starting without its roles would lock their users out, or
//!   let a later `CREATE ROLE` reuse a name with other privileges.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::RoleRecord;

/// The file's name in the data directory.
pub const FILE: &str = "roles.json";

/// The file's content.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    roles: Vec<RoleRecord>,
}

/// The roles of a node in no cluster, as `DATA_DIR/roles.json` has them.
#[derive(Debug)]
pub struct LocalRoles {
    path: PathBuf,
    roles: Mutex<BTreeMap<String, RoleRecord>>,
}

impl LocalRoles {
    /// Reads `data_dir/roles.json` (none yet: no roles). An unreadable or
    /// malformed file is an error naming it.
    pub fn load(data_dir: &Path) -> Result<LocalRoles, String> {
        let path = data_dir.join(FILE);
        let roles = match std::fs::read(&path) {
            Ok(bytes) => {
                let stored: Stored = serde_json::from_slice(&bytes).map_err(|e| {
                    format!(
                        "{} is not a roles file ({e}): restore it from a backup of the data \
                         directory, or move it away to start without the node's roles",
                        path.display()
                    )
                })?;
                stored
                    .roles
                    .into_iter()
                    .map(|r| (r.name.clone(), r))
                    .collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        Ok(LocalRoles {
            path,
            roles: Mutex::new(roles),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, RoleRecord>> {
        self.roles.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The role called `name`.
    pub fn role(&self, name: &str) -> Option<RoleRecord> {
        self.lock().get(name).cloned()
    }

    /// Every role, by name.
    pub fn roles(&self) -> Vec<RoleRecord> {
        self.lock().values().cloned().collect()
    }

    /// How many roles there are.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Applies a role command as the cluster would, and makes the result
    /// durable before anyone sees it. `Err`: why it was refused (the rule
    /// it breaks, or the write that failed); nothing changed then.
    pub fn apply(&self, command: &crate::cluster::Command) -> Result<(), String> {
        let mut roles = self.lock();
        let mut state = crate::cluster::ClusterState {
            roles: roles.clone(),
            ..Default::default()
        };
        if let crate::cluster::CommandResult::Rejected(why) = state.apply(command) {
            return Err(why);
        }
        self.write(&state.roles)?;
        *roles = state.roles;
        Ok(())
    }

    /// Forgets every role and removes the file (once they were carried
    /// into a cluster).
    pub fn clear(&self) -> Result<(), String> {
        let mut roles = self.lock();
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove {}: {e}", self.path.display())),
        }
        if let Some(dir) = self.path.parent() {
            crate::durable::sync_dir(dir)
                .map_err(|e| format!("cannot sync {}: {e}", dir.display()))?;
        }
        roles.clear();
        Ok(())
    }

    fn write(&self, roles: &BTreeMap<String, RoleRecord>) -> Result<(), String> {
        let stored = Stored {
            roles: roles.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&stored).map_err(|e| e.to_string())?;
        crate::durable::write_atomically(&self.path, &bytes).map_err(|e| {
            format!(
                "cannot write {}: {e}; the change was not made",
                self.path.display()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Privilege;
    use crate::cluster::Command;

    fn role(name: &str, verifier: &str) -> RoleRecord {
        RoleRecord {
            name: name.into(),
            login: true,
            verifier: Some(verifier.into()),
            privileges: Default::default(),
            connection_limit: None,
        }
    }

    #[test]
    fn roles_survive_a_reload_and_changes_follow_the_clusters_rules() {
        let dir = tempfile::tempdir().unwrap();
        let verifier = crate::auth::Verifier::new("pw-not-on-disk").to_string();
        let local = LocalRoles::load(dir.path()).unwrap();
        assert!(local.is_empty());
        local
            .apply(&Command::CreateRole(role("u", &verifier)))
            .unwrap();
        local
            .apply(&Command::SetPrivileges {
                role: "u".into(),
                privileges: vec![Privilege::Read("app".into())],
                granted: true,
            })
            .unwrap();
        // The cluster's rules: no second role of a name, none called availdb.
        assert!(local
            .apply(&Command::CreateRole(role("u", &verifier)))
            .unwrap_err()
            .contains("already exists"));
        assert!(local
            .apply(&Command::CreateRole(role("availdb", &verifier)))
            .is_err());
        assert!(local.apply(&Command::DropRole("nobody".into())).is_err());

        let again = LocalRoles::load(dir.path()).unwrap();
        let u = again.role("u").expect("u after a reload");
        assert_eq!(u.verifier.as_deref(), Some(verifier.as_str()));
        assert!(crate::auth::has(&u, &Privilege::Read("app".into())));
        let bytes = std::fs::read(dir.path().join(FILE)).unwrap();
        assert!(!bytes.windows(14).any(|w| w == b"pw-not-on-disk"));

        again.clear().unwrap();
        assert!(again.is_empty());
        assert!(!dir.path().join(FILE).exists());
        assert!(LocalRoles::load(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn a_malformed_roles_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        let err = LocalRoles::load(dir.path()).unwrap_err();
        assert!(err.contains(FILE) && err.contains("backup"), "{err}");
    }
}
