//! Where a node keeps the groups it belongs to: `DATA_DIR/ag/<group>.json`
//! (the definition, or a `JOIN` still waiting for its first primary) and
//! `DATA_DIR/ag/<group>.suspended` (databases whose data movement this node,
//! as primary, keeps suspended). Every file is written durably (temp file,
//! fsync, rename, fsync of the directory).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::{Error, Result};
use crate::group::GroupConfig;

/// Where a node keeps the groups it belongs to.
#[derive(Debug, Clone)]
pub struct ConfigStore {
    dir: PathBuf,
}

/// What a node knows of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Membership {
    /// `ALTER AVAILABILITY GROUP g JOIN` ran here; no definition received yet.
    Joined {
        /// Group name.
        name: String,
        /// Cluster id learned from the first primary that connected.
        cluster_id: Option<String>,
    },
    /// The full definition (created here, or received from the primary).
    Defined(Box<GroupConfig>),
}

impl Membership {
    /// The group's name.
    pub fn name(&self) -> &str {
        match self {
            Membership::Joined { name, .. } => name,
            Membership::Defined(g) => &g.name,
        }
    }
}

impl ConfigStore {
    /// The store under `data_dir/ag`.
    pub fn new(data_dir: &Path) -> ConfigStore {
        ConfigStore {
            dir: data_dir.join("ag"),
        }
    }

    /// All groups this node belongs to.
    pub fn load_all(&self) -> Result<Vec<Membership>> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(source) => return Err(io(&self.dir, source)),
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
            let membership: Membership = serde_json::from_slice(&bytes).map_err(|e| {
                Error::sql(
                    "XX000",
                    format!("{} is not a valid group file: {e}", path.display()),
                )
            })?;
            out.push(membership);
        }
        out.sort_by(|a, b| a.name().cmp(b.name()));
        Ok(out)
    }

    /// Writes a group's membership durably (temp file, fsync, rename).
    pub fn save(&self, membership: &Membership) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(membership).expect("membership serializes");
        self.write_durably(&self.path(membership.name()), &bytes)
    }

    /// The databases of `group` whose data movement this node, as primary,
    /// keeps suspended (`ALTER DATABASE … SET HADR SUSPEND`, or a forced
    /// failover), so a restart or a definition change does not resume it.
    pub fn load_suspended(&self, group: &str) -> Result<std::collections::BTreeSet<String>> {
        let path = self.suspended_path(group);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::sql(
                    "XX000",
                    format!("{} is not a valid list of databases: {e}", path.display()),
                )
                .with_hint("delete the file to resume data movement of every database of the group")
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
            Err(e) => Err(io(&path, e)),
        }
    }

    /// Records which databases of `group` are suspended (none: the file goes).
    pub fn save_suspended(
        &self,
        group: &str,
        databases: &std::collections::BTreeSet<String>,
    ) -> Result<()> {
        let path = self.suspended_path(group);
        if databases.is_empty() {
            return match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io(&path, e)),
            };
        }
        let bytes = serde_json::to_vec(databases).expect("a list of names serializes");
        self.write_durably(&path, &bytes)
    }

    /// Temp file, fsync, rename, fsync of the directory.
    fn write_durably(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        crate::durable::create_dir_all(&self.dir).map_err(|e| io(&self.dir, e))?;
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            crate::durable::sync_dir(&self.dir)
        };
        write().map_err(|e| io(path, e))
    }

    fn suspended_path(&self, group: &str) -> PathBuf {
        self.dir
            .join(format!("{}.suspended", group.to_ascii_lowercase()))
    }

    /// Forgets a group.
    pub fn remove(&self, name: &str) -> Result<()> {
        self.save_suspended(name, &Default::default())?;
        let path = self.path(name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path, e)),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{}.json", name.to_ascii_lowercase()))
    }
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        context: format!("availability group file {}", path.display()),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::fixtures;

    fn group() -> GroupConfig {
        fixtures::group(&["r1", "r2"])
    }

    #[test]
    fn memberships_persist_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConfigStore::new(dir.path());
        store.save(&Membership::Defined(Box::new(group()))).unwrap();
        store
            .save(&Membership::Joined {
                name: "ag2".into(),
                cluster_id: None,
            })
            .unwrap();
        let all = store.load_all().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0], Membership::Defined(Box::new(group())));
        store.remove("ag2").unwrap();
        assert_eq!(store.load_all().unwrap().len(), 1);
    }
}
