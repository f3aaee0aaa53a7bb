//! The profile: its endpoints and settings, the configuration file it
//! starts from, the state file that keeps admin changes, and the changes
//! themselves as pure functions (validated before anything is written).
//!
//! # Files
//! * The **configuration** (`--config tm.toml`, TOML) names the profile,
//!   its hold and drain times, its default probe, and its first endpoints
//!   (`[[endpoint]]`).
//! * The **state file** (`state_file` in the configuration, default
//!   `<config>.state.json` beside it) holds the endpoints as the admin
//!   left them. It is written (to a temporary file, fsynced, renamed, its
//!   folder fsynced) **before** a change takes effect, so a change that was
//!   answered survives a crash; at start the state file, when present,
//!   wins over the configuration's endpoints.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::probe::ProbeSettings;
use super::routing::Status;
use super::{Error, Result};

/// Default time between two probes (Azure's is 30 s; the fastest is 1 s).
pub const DEFAULT_INTERVAL_SECONDS: u64 = 10;
/// Default probe timeout.
pub const DEFAULT_TIMEOUT_MS: u64 = 2_000;
/// Default consecutive failures tolerated (Azure's is 3).
pub const DEFAULT_TOLERATED_FAILURES: u32 = 2;
/// Default time a new connection is held while no endpoint can take it.
pub const DEFAULT_HOLD_MS: u64 = 15_000;

/// How an endpoint is probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// A TCP connect succeeds.
    #[default]
    Tcp,
    /// `GET path` answers 2xx.
    Http,
    /// A PostgreSQL session opens and `SELECT 1` answers (optionally: the
    /// session is read-write).
    Postgres,
}

/// The probe of an endpoint (every field has a default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeDef {
    /// TCP, HTTP or PostgreSQL.
    #[serde(default)]
    pub protocol: Protocol,
    /// HTTP: the path to GET (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// PostgreSQL: the database (default `availdb`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// PostgreSQL: the user (default `availdb`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// PostgreSQL: the password, if the server asks for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// PostgreSQL: healthy only if the session is read-write
    /// (`transaction_read_only` is off).
    #[serde(default)]
    pub read_write: bool,
    /// Seconds between probes, 1 or more.
    #[serde(default = "default_interval")]
    pub interval_seconds: u64,
    /// Milliseconds a probe may take, less than the interval.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Consecutive failures that still leave the endpoint healthy (0–9).
    #[serde(default = "default_tolerated")]
    pub tolerated_failures: u32,
}

fn default_interval() -> u64 {
    DEFAULT_INTERVAL_SECONDS
}
fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_MS
}
fn default_tolerated() -> u32 {
    DEFAULT_TOLERATED_FAILURES
}
fn default_hold() -> u64 {
    DEFAULT_HOLD_MS
}

impl Default for ProbeDef {
    fn default() -> ProbeDef {
        ProbeDef {
            protocol: Protocol::Tcp,
            path: None,
            database: None,
            user: None,
            password: None,
            read_write: false,
            interval_seconds: DEFAULT_INTERVAL_SECONDS,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            tolerated_failures: DEFAULT_TOLERATED_FAILURES,
        }
    }
}

impl ProbeDef {
    /// The knobs the probe state machine runs with.
    pub fn settings(&self) -> ProbeSettings {
        ProbeSettings {
            interval: Duration::from_secs(self.interval_seconds),
            timeout: Duration::from_millis(self.timeout_ms),
            tolerated_failures: self.tolerated_failures,
        }
    }

    fn validate(&self, whose: &str) -> Result<()> {
        let bad = |why: String| Err(Error::Invalid(format!("{whose}: {why}")));
        if self.interval_seconds == 0 {
            return bad("interval_seconds must be 1 or more".into());
        }
        if self.timeout_ms == 0 || self.timeout_ms >= self.interval_seconds * 1000 {
            return bad(format!(
                "timeout_ms must be above 0 and below the interval ({} ms)",
                self.interval_seconds * 1000
            ));
        }
        if self.tolerated_failures > 9 {
            return bad("tolerated_failures must be 0 to 9".into());
        }
        if let Some(path) = &self.path {
            if !path.starts_with('/') || path.contains(char::is_whitespace) {
                return bad(format!(
                    "path {path:?} must start with / and hold no spaces"
                ));
            }
        }
        Ok(())
    }
}

/// One endpoint of the profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointDef {
    /// Unique in the profile.
    pub name: String,
    /// `host:port` connections are forwarded to (resolved at each
    /// connection: no DNS caching).
    pub target: String,
    /// 1 is the highest; unique in the profile.
    pub priority: u32,
    /// Online or offline.
    pub status: Status,
    /// This endpoint's probe; the profile's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeDef>,
}

/// The profile as configured and changed by the admin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileDef {
    /// The profile's name.
    pub name: String,
    /// How long a new connection is held while no endpoint can take it.
    #[serde(default = "default_hold")]
    pub hold_ms: u64,
    /// When set, a connection to an endpoint that goes offline or is
    /// removed is closed this long after that; otherwise it stays until
    /// either side closes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_grace_ms: Option<u64>,
    /// The probe of endpoints that name none.
    #[serde(default)]
    pub probe: ProbeDef,
    /// The endpoints.
    #[serde(default, rename = "endpoint")]
    pub endpoints: Vec<EndpointDef>,
}

impl ProfileDef {
    /// The probe an endpoint runs.
    pub fn probe_of<'a>(&'a self, endpoint: &'a EndpointDef) -> &'a ProbeDef {
        endpoint.probe.as_ref().unwrap_or(&self.probe)
    }

    /// The endpoint named `name`.
    pub fn endpoint(&self, name: &str) -> Result<&EndpointDef> {
        self.endpoints
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| Error::UnknownEndpoint(name.to_string()))
    }

    /// Checks every rule of a profile.
    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty() {
            return Err(Error::Invalid("the profile needs a name".into()));
        }
        self.probe.validate("the profile's probe")?;
        for (i, e) in self.endpoints.iter().enumerate() {
            if e.name.is_empty()
                || !e
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(Error::Invalid(format!(
                    "endpoint name {:?}: use letters, digits, '-', '_' or '.'",
                    e.name
                )));
            }
            if split_target(&e.target).is_none() {
                return Err(Error::Invalid(format!(
                    "endpoint {}: target {:?} is not host:port",
                    e.name, e.target
                )));
            }
            if e.priority == 0 {
                return Err(Error::Invalid(format!(
                    "endpoint {}: priority must be 1 or more (1 is the highest)",
                    e.name
                )));
            }
            if let Some(probe) = &e.probe {
                probe.validate(&format!("endpoint {}'s probe", e.name))?;
            }
            for other in &self.endpoints[..i] {
                if other.name == e.name {
                    return Err(Error::Invalid(format!(
                        "two endpoints are named {}: names are unique",
                        e.name
                    )));
                }
                if other.priority == e.priority {
                    return Err(Error::Invalid(format!(
                        "endpoints {} and {} both have priority {}: priorities are unique \
                         (1 is the highest); choose another",
                        other.name, e.name, e.priority
                    )));
                }
            }
        }
        Ok(())
    }

    /// The profile after `change`, validated (the profile itself is left
    /// as it was).
    pub fn changed(&self, change: &Change) -> Result<ProfileDef> {
        let mut next = self.clone();
        match change {
            Change::Add(endpoint) => {
                if self.endpoints.iter().any(|e| e.name == endpoint.name) {
                    return Err(Error::Invalid(format!(
                        "endpoint {} exists: remove it first, or choose another name",
                        endpoint.name
                    )));
                }
                next.endpoints.push(endpoint.clone());
            }
            Change::Remove(name) => {
                self.endpoint(name)?;
                next.endpoints.retain(|e| &e.name != name);
            }
            Change::SetStatus(name, status) => {
                self.endpoint(name)?;
                for e in &mut next.endpoints {
                    if &e.name == name {
                        e.status = *status;
                    }
                }
            }
            Change::Activate { name, also_online } => {
                let priority = self.endpoint(name)?.priority;
                for other in also_online {
                    self.endpoint(other)?;
                }
                for e in &mut next.endpoints {
                    if &e.name == name || also_online.contains(&e.name) {
                        e.status = Status::Online;
                    } else if e.priority < priority {
                        e.status = Status::Offline;
                    }
                }
            }
        }
        next.validate()?;
        Ok(next)
    }
}

/// An admin change of the profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Add an endpoint.
    Add(EndpointDef),
    /// Remove an endpoint (its open connections stay, or drain).
    Remove(String),
    /// Set an endpoint online or offline.
    SetStatus(String, Status),
    /// Make `name` the active endpoint: it goes online and every endpoint
    /// of a higher priority (a lower number) goes offline, in one change,
    /// so new connections move to it at once; `also_online` are set online
    /// in the same change (backups of the new active one).
    Activate {
        /// The endpoint to activate.
        name: String,
        /// Endpoints set online with it.
        also_online: Vec<String>,
    },
}

/// `host:port` split, the port a number.
pub fn split_target(target: &str) -> Option<(&str, u16)> {
    let (host, port) = target.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then_some(())?;
    Some((host, port.parse().ok()?))
}

/// The configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The profile (`name`, `hold_ms`, `probe`, `[[endpoint]]`).
    #[serde(flatten)]
    pub profile: ProfileDef,
    /// Where the state file is (relative to the configuration's folder).
    pub state_file: Option<PathBuf>,
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<(Config, PathBuf)> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
        let config: Config = toml::from_str(&text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
        config.profile.validate().map_err(|e| Error::Config {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
        let folder = path.parent().unwrap_or(Path::new("."));
        let state = match &config.state_file {
            Some(p) => folder.join(p),
            None => {
                let mut name = path.file_name().unwrap_or_default().to_os_string();
                name.push(".state.json");
                folder.join(name)
            }
        };
        Ok((config, state))
    }
}

/// Reads the state file, if there is one.
pub fn load_state(path: &Path) -> Result<Option<ProfileDef>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::State {
                path: path.to_path_buf(),
                why: e.to_string(),
            })
        }
    };
    let profile: ProfileDef = serde_json::from_str(&text).map_err(|e| Error::State {
        path: path.to_path_buf(),
        why: format!("{e} (move the file away to start from the configuration's endpoints)"),
    })?;
    profile.validate().map_err(|e| Error::State {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    Ok(Some(profile))
}

/// Writes the state file durably (temporary file, fsync, rename, folder
/// fsync).
pub fn save_state(path: &Path, profile: &ProfileDef) -> Result<()> {
    crate::durable::write_atomically(path, serde_json::to_string_pretty(profile)?.as_bytes())
        .map_err(|e| Error::State {
            path: path.to_path_buf(),
            why: format!("{e} (the change was not made)"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(name: &str, priority: u32, status: Status) -> EndpointDef {
        EndpointDef {
            name: name.into(),
            target: "127.0.0.1:1".into(),
            priority,
            status,
            probe: None,
        }
    }

    fn profile(endpoints: Vec<EndpointDef>) -> ProfileDef {
        ProfileDef {
            name: "p".into(),
            hold_ms: 1000,
            drain_grace_ms: None,
            probe: ProbeDef::default(),
            endpoints,
        }
    }

    fn statuses(p: &ProfileDef) -> Vec<(&str, Status)> {
        p.endpoints
            .iter()
            .map(|e| (e.name.as_str(), e.status))
            .collect()
    }

    #[test]
    fn activate_puts_the_endpoint_online_and_every_better_one_offline_in_one_change() {
        use Status::*;
        let p = profile(vec![
            endpoint("prod", 1, Online),
            endpoint("prod-dr", 2, Online),
            endpoint("stage", 3, Offline),
            endpoint("stage-dr", 4, Offline),
        ]);
        let next = p
            .changed(&Change::Activate {
                name: "stage".into(),
                also_online: vec!["stage-dr".into()],
            })
            .unwrap();
        assert_eq!(
            statuses(&next),
            [
                ("prod", Offline),
                ("prod-dr", Offline),
                ("stage", Online),
                ("stage-dr", Online)
            ]
        );
        // The original is untouched (a change that fails to persist is not
        // made).
        assert_eq!(statuses(&p)[0], ("prod", Online));
    }

    #[test]
    fn changes_that_break_a_rule_are_refused_with_what_to_do() {
        use Status::*;
        let p = profile(vec![endpoint("v1", 1, Online)]);
        let table: Vec<(Change, &str)> = vec![
            (Change::Add(endpoint("v1", 2, Offline)), "exists"),
            (
                Change::Add(endpoint("v2", 1, Offline)),
                "priorities are unique",
            ),
            (Change::Add(endpoint("v 2", 2, Offline)), "use letters"),
            (Change::Add(endpoint("v2", 0, Offline)), "1 or more"),
            (
                Change::Add(EndpointDef {
                    target: "nowhere".into(),
                    ..endpoint("v2", 2, Offline)
                }),
                "host:port",
            ),
            (Change::Remove("v9".into()), "no endpoint named v9"),
            (
                Change::SetStatus("v9".into(), Online),
                "no endpoint named v9",
            ),
            (
                Change::Activate {
                    name: "v1".into(),
                    also_online: vec!["v9".into()],
                },
                "no endpoint named v9",
            ),
        ];
        for (change, expected) in table {
            let err = p.changed(&change).unwrap_err().to_string();
            assert!(err.contains(expected), "{change:?}: {err}");
        }
    }

    #[test]
    fn probe_knobs_are_bounded_as_azures_are() {
        let mut p = profile(vec![]);
        for (interval, timeout, tolerated, ok) in [
            (1, 500, 0, true),
            (10, 2000, 9, true),
            (0, 500, 0, false),
            (1, 1000, 0, false),
            (1, 500, 10, false),
        ] {
            p.probe = ProbeDef {
                interval_seconds: interval,
                timeout_ms: timeout,
                tolerated_failures: tolerated,
                ..ProbeDef::default()
            };
            assert_eq!(p.validate().is_ok(), ok, "{:?}", p.probe);
        }
    }

    #[test]
    fn the_configuration_file_gives_defaults_and_the_state_file_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("tm.toml");
        std::fs::write(
            &config,
            "name = \"shop\"\n[probe]\nprotocol = \"http\"\npath = \"/health\"\ninterval_seconds = 1\ntimeout_ms = 500\n\
             [[endpoint]]\nname = \"v1\"\ntarget = \"127.0.0.1:8001\"\npriority = 1\nstatus = \"online\"\n",
        )
        .unwrap();
        let (loaded, state) = Config::load(&config).unwrap();
        assert_eq!(state, dir.path().join("tm.toml.state.json"));
        assert_eq!(loaded.profile.hold_ms, DEFAULT_HOLD_MS);
        assert_eq!(
            loaded.profile.probe.tolerated_failures,
            DEFAULT_TOLERATED_FAILURES
        );
        assert_eq!(load_state(&state).unwrap(), None);
        let next = loaded
            .profile
            .changed(&Change::Add(endpoint("v2", 2, Status::Offline)))
            .unwrap();
        save_state(&state, &next).unwrap();
        assert_eq!(load_state(&state).unwrap(), Some(next));
        std::fs::write(&config, "name = \"shop\"\nprot = 1\n").unwrap();
        assert!(Config::load(&config)
            .unwrap_err()
            .to_string()
            .contains("prot"));
    }
}
