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
//!
//! # Option 2 (geo-redundant): production's DR slot, already serving as
//! # the profile's backup, and a stage-DR slot the upgrade creates.
//! [production_dr]
//! server = "B"                     # the DR cluster holding production's geo-secondary
//! endpoint = "v1-dr"               # V1 in the DR region, an online backup
//! hosts = ["127.0.0.1:7234"]       # its nodes: a rollback without production fails over here
//! stop = ["sh", "-c", "kill $(cat v1-dr.pid)"]   # step 7 (optional)
//!
//! [stage_dr]
//! server = "SB"                    # the stage-DR cluster (DR region)
//! endpoint_urls = ["tcp://127.0.0.1:7201"]        # registered as the stage's partner
//! hosts = ["127.0.0.1:6534"]
//! database = "app"                 # default: the stage copy's name
//! endpoint = "v2-dr"
//! target = "127.0.0.1:8004"
//! priority = 4                     # below the stage endpoint's
//! start = ["python3", "app.py", "--port", "8004", "--dsn", "{database_url}"]
//! ```
//!
//! Commands are argument lists (no shell unless you name one), run in the
//! plan's folder; `{database_url}`, `{db_host}`, `{db_port}` and
//! `{database}` are replaced by the stage copy's address (in
//! `stage_dr.start`: the stage-DR copy's).
//!
//! With `[stage_dr]` the plan is option 2; `[production_dr]` is optional
//! there (and refused without `[stage_dr]`).

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

/// A stage slot: the stage itself, or (option 2) stage-DR, a geo-secondary
/// of the stage copy in the DR region (chained: production → stage →
/// stage-DR) with a standby V2. Its *source* is production for the stage,
/// the stage copy for stage-DR.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// Its cluster's server name (a cluster of its own: a geo-secondary
    /// lives in another cluster than its source).
    pub server: String,
    /// Its nodes' replication endpoints, registered as a partner server of
    /// its source's cluster when it is not one yet.
    #[serde(default)]
    pub endpoint_urls: Vec<String>,
    /// Client addresses of its nodes.
    pub hosts: Vec<String>,
    /// The copy's name there (default: its source's).
    #[serde(default)]
    pub database: Option<String>,
    /// Where its V2 reaches its database (`host:port`; default: the first
    /// of `hosts`).
    #[serde(default)]
    pub address: Option<String>,
    /// Its endpoint's name in the profile.
    pub endpoint: String,
    /// Where its V2 application listens (`host:port`).
    pub target: String,
    /// Its endpoint's priority (below its source slot's).
    pub priority: u32,
    /// The command that starts its V2 (it keeps running; availdb starts it
    /// in a process group of its own and stops that group on a rollback).
    pub start: Vec<String>,
    /// Its endpoint's probe (default: the profile's).
    #[serde(default)]
    pub probe: Option<ProbeDef>,
}

/// Production's DR slot (option 2): a geo-secondary of production in the
/// DR region with V1 running against it, in the profile as an online
/// backup of production's endpoint. The upgrade does not create it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductionDr {
    /// The DR cluster's server name (production's geo-link partner).
    pub server: String,
    /// Its endpoint in the profile (V1 in the DR region).
    pub endpoint: String,
    /// Client addresses of the DR cluster's nodes. With them, a rollback
    /// that cannot reach production after step 3 rolls back to the DR
    /// slot (see the `upgrade` module page); without them it stops.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Step 7: the command that stops V1 in the DR region.
    #[serde(default)]
    pub stop: Option<Vec<String>>,
}

/// The stage-DR slot (option 2): a stage slot whose source is the stage
/// copy.
pub type StageDr = Stage;

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
    /// Production's DR slot (option 2).
    #[serde(default)]
    pub production_dr: Option<ProductionDr>,
    /// The stage-DR slot: with it the plan is option 2.
    #[serde(default)]
    pub stage_dr: Option<StageDr>,
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
        if self.production_dr.is_some() && self.stage_dr.is_none() {
            return Err(
                "[production_dr] belongs to option 2: add [stage_dr] (or leave it out)".into(),
            );
        }
        if let Some(dr) = &self.stage_dr {
            if dr.hosts.is_empty() {
                return Err("stage_dr.hosts needs at least one host:port".into());
            }
            let mut servers = vec![&self.production.server, &self.stage.server];
            if let Some(pdr) = &self.production_dr {
                servers.push(&pdr.server);
            }
            if let Some(same) = servers.iter().find(|s| s.eq_ignore_ascii_case(&dr.server)) {
                return Err(format!(
                    "stage_dr.server is '{same}', a slot's server already: the stage-DR copy is \
                     a geo-secondary of the stage copy, in a cluster of its own (the DR region)"
                ));
            }
            if !self
                .stage_dr_database()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err(format!(
                    "database name {:?}: use letters, digits and '_'",
                    self.stage_dr_database()
                ));
            }
            let mut names = vec![&self.production.endpoint, &self.stage.endpoint];
            if let Some(pdr) = &self.production_dr {
                names.push(&pdr.endpoint);
            }
            if names.contains(&&dr.endpoint)
                || self.production_dr.as_ref().is_some_and(|p| {
                    p.endpoint == self.production.endpoint || p.endpoint == self.stage.endpoint
                })
            {
                return Err("the endpoints of production, production_dr, stage and stage_dr must all differ".into());
            }
            if dr.priority <= self.stage.priority {
                return Err(format!(
                    "stage_dr.priority {} must be below the stage endpoint's (a larger number than {}): \
                     stage-DR is the stage's backup",
                    dr.priority, self.stage.priority
                ));
            }
            if dr.start.is_empty() {
                return Err("stage_dr.start needs the command that starts V2-DR".into());
            }
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

    /// The stage-DR copy's database name (option 2).
    pub fn stage_dr_database(&self) -> &str {
        self.stage_dr
            .as_ref()
            .and_then(|d| d.database.as_deref())
            .unwrap_or(self.stage_database())
    }

    /// Where V2-DR reaches its database (option 2).
    pub fn stage_dr_address(&self) -> Option<&str> {
        let dr = self.stage_dr.as_ref()?;
        Some(dr.address.as_deref().unwrap_or(&dr.hosts[0]))
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
        expand_with(command, self.stage_address(), self.stage_database())
    }

    /// `command` with the stage-DR copy's address filled in (option 2).
    pub fn expand_dr(&self, command: &[String]) -> Vec<String> {
        let address = self.stage_dr_address().unwrap_or(self.stage_address());
        expand_with(command, address, self.stage_dr_database())
    }
}

fn expand_with(command: &[String], address: &str, database: &str) -> Vec<String> {
    let (host, port) = address.rsplit_once(':').unwrap_or((address, "5432"));
    let url = format!("postgresql://availdb@{address}/{database}");
    command
        .iter()
        .map(|arg| {
            arg.replace("{database_url}", &url)
                .replace("{db_host}", host)
                .replace("{db_port}", port)
                .replace("{database}", database)
        })
        .collect()
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

    const OPTION_2: &str = r#"
[production_dr]
server = "B"
endpoint = "v1-dr"
[stage_dr]
server = "SB"
hosts = ["127.0.0.1:6534"]
endpoint = "v2-dr"
target = "127.0.0.1:8004"
priority = 4
start = ["app", "--dsn", "{database_url}"]
"#;

    #[test]
    fn a_plan_with_stage_dr_is_option_2_and_fills_in_the_stage_dr_address() {
        let plan = load(&format!("{PLAN}{OPTION_2}")).unwrap();
        let dr = plan.stage_dr.as_ref().unwrap();
        assert_eq!(plan.stage_dr_database(), "app");
        assert_eq!(
            plan.expand_dr(&dr.start),
            ["app", "--dsn", "postgresql://availdb@127.0.0.1:6534/app"]
        );
        assert_eq!(plan.production_dr.as_ref().unwrap().endpoint, "v1-dr");
        assert!(load(PLAN).unwrap().stage_dr.is_none());
    }

    #[test]
    fn option_2_plans_that_cannot_work_are_refused_saying_why() {
        let two = format!("{PLAN}{OPTION_2}");
        let table = [
            (
                two.replace("server = \"SB\"", "server = \"s\""),
                "cluster of its own",
            ),
            (
                two.replace("server = \"SB\"", "server = \"b\""),
                "cluster of its own",
            ),
            (
                two.replace("endpoint = \"v2-dr\"", "endpoint = \"v1-dr\""),
                "must all differ",
            ),
            (
                two.replace("priority = 4", "priority = 1"),
                "below the stage endpoint",
            ),
            (
                format!("{PLAN}[production_dr]\nserver = \"B\"\nendpoint = \"v1-dr\"\n"),
                "add [stage_dr]",
            ),
        ];
        for (text, expected) in table {
            let err = load(&text).unwrap_err();
            assert!(err.contains(expected), "{expected}: {err}");
        }
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
