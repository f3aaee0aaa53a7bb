//! The plan file (`availdb upgrade PLAN.toml`): what to upgrade, where
//! the stage slot is, the commands that start and check the application,
//! and the upgrade script.
//!
//! ```toml
//! name = "shop-v2"                 # names the upgrade; its state is kept
//! state_dir = "upgrade-state"      # here (default: PLAN.toml.state/)
//!
//! [production]
//! server = "A"                     # its cluster's SERVER_NAME
//! hosts = ["127.0.0.1:5434", "127.0.0.1:5435"]   # client ports of its nodes
//! database = "app"
//! endpoint = "v1"                  # its endpoint in the traffic manager
//! stop = ["sh", "-c", "kill $(cat v1.pid)"]      # step 7: how to stop V1
//!
//! [stage]
//! server = "S"                     # the stage cluster (same region)
//! endpoint_urls = ["tcp://127.0.0.1:7101"]        # registered as a partner
//! hosts = ["127.0.0.1:6434"]       # client ports of its nodes
//! database = "app"                 # the copy's name there (default: production's)
//! address = "127.0.0.1:6434"       # where V2 reaches its database
//! endpoint = "v2"                  # the stage endpoint's name,
//! target = "127.0.0.1:8002"        # where V2 listens,
//! priority = 2                     # and its priority in the profile
//! start = ["python3", "app.py", "--port", "8002", "--dsn", "{database_url}"]
//! probe = { protocol = "http", path = "/health", interval_seconds = 1, timeout_ms = 500 }
//!
//! [upgrade]
//! script = "upgrade.sql"           # run on the stage copy in one transaction
//! # command = ["./migrate", "{database_url}"]    # or a command
//! smoke = ["curl", "-fsS", "http://127.0.0.1:8002/ready"]
//! # smoke_http = "/ready"          # or GET on the stage target, 2xx
//! remove_v1 = false                # step 7
//!
//! [traffic_manager]
//! admin = "127.0.0.1:9001"
//! ```
//!
//! Commands are argument lists (no shell unless you name one), run in the
//! plan's folder; `{database_url}`, `{db_host}`, `{db_port}` and
//! `{database}` are replaced by the stage copy's address.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Error, Result};
use crate::traffic::ProbeDef;

/// The production slot.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Production {
    /// Its cluster's server name.
    pub server: String,
    /// Client addresses (`host:port`) of its nodes; admin statements go to
    /// the one whose replica of `database` is primary.
    pub hosts: Vec<String>,
    /// The database the application uses.
    pub database: String,
    /// Its endpoint in the traffic manager's profile.
    pub endpoint: String,
    /// Step 7: the command that stops V1.
    #[serde(default)]
    pub stop: Option<Vec<String>>,
}

/// The stage slot.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// Its cluster's server name (a cluster of its own: a geo-secondary
    /// lives in another cluster than its source).
    pub server: String,
    /// Its nodes' replication endpoints, registered as a partner server of
    /// production when it is not one yet.
    #[serde(default)]
    pub endpoint_urls: Vec<String>,
    /// Client addresses of its nodes.
    pub hosts: Vec<String>,
    /// The copy's name there (default: production's).
    #[serde(default)]
    pub database: Option<String>,
    /// Where V2 reaches its database (`host:port`; default: the first of
    /// `hosts`).
    #[serde(default)]
    pub address: Option<String>,
    /// The stage endpoint's name in the profile.
    pub endpoint: String,
    /// Where the V2 application listens (`host:port`).
    pub target: String,
    /// The stage endpoint's priority (below production's).
    pub priority: u32,
    /// The command that starts V2 (it keeps running; availdb starts it in
    /// a process group of its own and stops that group on a rollback).
    pub start: Vec<String>,
    /// The stage endpoint's probe (default: the profile's).
    #[serde(default)]
    pub probe: Option<ProbeDef>,
}

/// The upgrade itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upgrade {
    /// A SQL file run on the stage copy, as one transaction.
    #[serde(default)]
    pub script: Option<PathBuf>,
    /// Or a command.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// The V2 smoke check: a command that must exit 0…
    #[serde(default)]
    pub smoke: Option<Vec<String>>,
    /// …or a path GET on the stage target must answer 2xx.
    #[serde(default)]
    pub smoke_http: Option<String>,
    /// Step 7: remove the V1 endpoint and stop V1 after the switch.
    #[serde(default)]
    pub remove_v1: bool,
}

/// The traffic manager.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficManagerRef {
    /// Its admin API (`host:port`).
    pub admin: String,
}

/// A plan.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Names the upgrade.
    pub name: String,
    /// Where its state is kept (relative to the plan's folder).
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Production.
    pub production: Production,
    /// Stage.
    pub stage: Stage,
    /// The upgrade script and checks.
    pub upgrade: Upgrade,
    /// The traffic manager.
    pub traffic_manager: TrafficManagerRef,
    /// The plan's folder (commands run there; relative paths start there).
    #[serde(skip)]
    pub folder: PathBuf,
}

impl Plan {
    /// Reads and checks a plan.
    pub fn load(path: &Path) -> Result<Plan> {
        let bad = |why: String| Error::Plan {
            path: path.to_path_buf(),
            why,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let mut plan: Plan = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        plan.folder = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        plan.check().map_err(bad)?;
        Ok(plan)
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "name {:?}: use letters, digits, '-', '_' or '.'",
                self.name
            ));
        }
        if self.production.hosts.is_empty() || self.stage.hosts.is_empty() {
            return Err("production.hosts and stage.hosts each need at least one host:port".into());
        }
        if self
            .production
            .server
            .eq_ignore_ascii_case(&self.stage.server)
        {
            return Err(format!(
                "stage.server is production's server '{}': the stage copy is a geo-secondary, \
                 which lives in another cluster (start a stage cluster in the same region)",
                self.stage.server
            ));
        }
        for name in [&self.production.database, self.stage_database()] {
            if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "database name {name:?}: use letters, digits and '_'"
                ));
            }
        }
        if self.production.endpoint == self.stage.endpoint {
            return Err("production.endpoint and stage.endpoint must differ".into());
        }
        match (&self.upgrade.script, &self.upgrade.command) {
            (Some(_), None) | (None, Some(_)) => {}
            _ => {
                return Err("[upgrade] needs exactly one of script (a SQL file) or command".into())
            }
        }
        if self.upgrade.smoke.is_some() && self.upgrade.smoke_http.is_some() {
            return Err("[upgrade] takes smoke or smoke_http, not both".into());
        }
        if self.stage.start.is_empty() {
            return Err("stage.start needs the command that starts V2".into());
        }
        if self.upgrade.remove_v1 && self.production.stop.is_none() {
            return Err(
                "upgrade.remove_v1 needs production.stop, the command that stops V1".into(),
            );
        }
        Ok(())
    }

    /// The stage copy's database name.
    pub fn stage_database(&self) -> &str {
        self.stage
            .database
            .as_deref()
            .unwrap_or(&self.production.database)
    }

    /// Where V2 reaches its database.
    pub fn stage_address(&self) -> &str {
        self.stage
            .address
            .as_deref()
            .unwrap_or(&self.stage.hosts[0])
    }

    /// Where the upgrade's state is kept.
    pub fn state_dir(&self, plan_path: &Path) -> PathBuf {
        match &self.state_dir {
            Some(dir) => self.folder.join(dir),
            None => {
                let mut name = plan_path.file_name().unwrap_or_default().to_os_string();
                name.push(".state");
                self.folder.join(name)
            }
        }
    }

    /// `command` with the stage copy's address filled in.
    pub fn expand(&self, command: &[String]) -> Vec<String> {
        let address = self.stage_address();
        let (host, port) = address.rsplit_once(':').unwrap_or((address, "5432"));
        let url = format!("postgresql://availdb@{address}/{}", self.stage_database());
        command
            .iter()
            .map(|arg| {
                arg.replace("{database_url}", &url)
                    .replace("{db_host}", host)
                    .replace("{db_port}", port)
                    .replace("{database}", self.stage_database())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: &str = r#"
name = "shop-v2"
[production]
server = "A"
hosts = ["127.0.0.1:5434"]
database = "app"
endpoint = "v1"
[stage]
server = "S"
hosts = ["127.0.0.1:6434"]
endpoint = "v2"
target = "127.0.0.1:8002"
priority = 2
start = ["app", "--dsn", "{database_url}", "--port={db_port}"]
[upgrade]
script = "upgrade.sql"
[traffic_manager]
admin = "127.0.0.1:9001"
"#;

    fn load(text: &str) -> std::result::Result<Plan, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.toml");
        std::fs::write(&path, text).unwrap();
        Plan::load(&path).map_err(|e| e.to_string())
    }

    #[test]
    fn a_plan_fills_in_the_stage_address_and_defaults() {
        let plan = load(PLAN).unwrap();
        assert_eq!(plan.stage_database(), "app");
        assert_eq!(
            plan.expand(&plan.stage.start),
            [
                "app",
                "--dsn",
                "postgresql://availdb@127.0.0.1:6434/app",
                "--port=6434"
            ]
        );
        assert!(plan
            .state_dir(Path::new("x/plan.toml"))
            .ends_with("plan.toml.state"));
    }

    #[test]
    fn plans_that_cannot_work_are_refused_saying_why() {
        let table = [
            (
                PLAN.replace("server = \"S\"", "server = \"a\""),
                "another cluster",
            ),
            (
                PLAN.replace("endpoint = \"v2\"", "endpoint = \"v1\""),
                "must differ",
            ),
            (
                PLAN.replace("script = \"upgrade.sql\"", ""),
                "exactly one of script",
            ),
            (
                PLAN.replace("[upgrade]", "[upgrade]\nremove_v1 = true"),
                "production.stop",
            ),
            (
                PLAN.replace("name = \"shop-v2\"", "name = \"a b\""),
                "letters",
            ),
            (
                PLAN.replace("priority = 2", "priority = 2\nprioirty = 3"),
                "prioirty",
            ),
        ];
        for (text, expected) in table {
            let err = load(&text).unwrap_err();
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }
}
