//! The traffic manager's state at run time: the profile, each endpoint's
//! probe and connection counters, the probe loop that drives the probe
//! state machines, and admin changes (persisted, then applied).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use super::probe::Probe;
use super::profile::{save_state, Change, EndpointDef, ProbeDef, ProfileDef};
use super::routing::{self, Candidate, Choice, Health, Status};
use super::{Error, Result};

/// One endpoint's run-time state.
struct Runtime {
    probe: Probe,
    /// Distinguishes an endpoint from a removed one of the same name (a
    /// probe result or a connection of the old one is not counted for the
    /// new one).
    generation: u64,
    connections: Arc<AtomicU64>,
    total: Arc<AtomicU64>,
}

struct Inner {
    profile: ProfileDef,
    runtime: HashMap<String, Runtime>,
    next_generation: u64,
}

impl Inner {
    fn reconcile(&mut self, now: Instant) {
        let profile = self.profile.clone();
        self.runtime
            .retain(|name, _| profile.endpoints.iter().any(|e| &e.name == name));
        for e in &profile.endpoints {
            let settings = profile.probe_of(e).settings();
            match self.runtime.get_mut(&e.name) {
                Some(rt) if rt.probe.settings() != settings => rt.probe.reconfigure(settings, now),
                Some(_) => {}
                None => {
                    self.next_generation += 1;
                    self.runtime.insert(
                        e.name.clone(),
                        Runtime {
                            probe: Probe::new(settings, now),
                            generation: self.next_generation,
                            connections: Arc::new(AtomicU64::new(0)),
                            total: Arc::new(AtomicU64::new(0)),
                        },
                    );
                }
            }
        }
    }

    fn candidates(&self) -> impl Iterator<Item = Candidate<'_>> {
        self.profile.endpoints.iter().map(|e| Candidate {
            name: &e.name,
            priority: e.priority,
            status: e.status,
            health: self
                .runtime
                .get(&e.name)
                .map_or(Health::Unknown, |rt| rt.probe.health()),
        })
    }
}

/// Where a new connection goes, with what the proxy needs to count it.
pub(super) struct Routed {
    pub name: String,
    pub target: String,
    pub generation: u64,
    pub connections: Arc<AtomicU64>,
    pub total: Arc<AtomicU64>,
}

/// The state shared by the proxy, the probes and the admin surface.
pub struct TrafficManager {
    inner: Mutex<Inner>,
    /// Bumped on every change of what routing sees (status, health, the
    /// endpoint set): held connections and draining ones watch it.
    changed: watch::Sender<u64>,
    /// Wakes the probe loop (an endpoint added, a probe hurried).
    wake_probes: Notify,
    /// Serialises admin changes (each is persisted, then applied).
    changing: tokio::sync::Mutex<()>,
    state_path: PathBuf,
    started: Instant,
}

/// An endpoint as `show` reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointView {
    /// Name.
    pub name: String,
    /// `host:port`.
    pub target: String,
    /// 1 is the highest.
    pub priority: u32,
    /// Online or offline.
    pub status: Status,
    /// The probes' verdict.
    pub health: Health,
    /// Probes failed in a row.
    pub consecutive_failures: u32,
    /// The last failure, until a success.
    pub last_error: Option<String>,
    /// Milliseconds since the health last changed.
    pub health_since_ms: u64,
    /// Milliseconds between the last success and the health turning
    /// unhealthy (how long detection took), when it is unhealthy after
    /// having been healthy.
    pub detected_after_ms: Option<u64>,
    /// Connections open now.
    pub connections: u64,
    /// Connections forwarded since the traffic manager started.
    pub total_connections: u64,
    /// The probe it runs.
    pub probe: ProbeDef,
}

/// The profile as `show` reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProfileView {
    /// The profile's name.
    pub name: String,
    /// The endpoint new connections go to now, if any.
    pub active: Option<String>,
    /// How long new connections are held while none can take them.
    pub hold_ms: u64,
    /// Grace before connections to an endpoint taken out are closed.
    pub drain_grace_ms: Option<u64>,
    /// Every endpoint, by priority.
    pub endpoints: Vec<EndpointView>,
}

impl TrafficManager {
    /// A traffic manager for `profile`, persisting changes to
    /// `state_path`.
    pub fn new(profile: ProfileDef, state_path: PathBuf) -> Arc<TrafficManager> {
        let now = Instant::now();
        let mut inner = Inner {
            profile,
            runtime: HashMap::new(),
            next_generation: 0,
        };
        inner.reconcile(now);
        Arc::new(TrafficManager {
            inner: Mutex::new(inner),
            changed: watch::Sender::new(0),
            wake_probes: Notify::new(),
            changing: tokio::sync::Mutex::new(()),
            state_path,
            started: now,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Watches changes of what routing sees.
    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// How long a new connection may be held.
    pub(super) fn hold(&self) -> Duration {
        Duration::from_millis(self.lock().profile.hold_ms)
    }

    /// The drain grace, if connections are drained.
    pub(super) fn drain_grace(&self) -> Option<Duration> {
        self.lock()
            .profile
            .drain_grace_ms
            .map(Duration::from_millis)
    }

    /// The routing decision for a new connection.
    pub(super) fn route(
        &self,
        excluded: &[&str],
    ) -> std::result::Result<Routed, routing::HoldReason> {
        let inner = self.lock();
        match routing::choose(inner.candidates(), excluded) {
            Choice::Endpoint(name) => {
                let e = inner
                    .profile
                    .endpoints
                    .iter()
                    .find(|e| e.name == name)
                    .expect("chosen from the profile");
                let rt = &inner.runtime[name];
                Ok(Routed {
                    name: name.to_string(),
                    target: e.target.clone(),
                    generation: rt.generation,
                    connections: rt.connections.clone(),
                    total: rt.total.clone(),
                })
            }
            Choice::Hold(reason) => Err(reason),
        }
    }

    /// Whether the endpoint a connection went to still takes connections
    /// (online, not removed).
    pub(super) fn still_online(&self, name: &str, generation: u64) -> bool {
        let inner = self.lock();
        inner
            .runtime
            .get(name)
            .is_some_and(|rt| rt.generation == generation)
            && inner
                .profile
                .endpoints
                .iter()
                .any(|e| e.name == name && e.status == Status::Online)
    }

    /// A connect to `name` failed: its next probe runs now.
    pub(super) fn connect_failed(&self, name: &str) {
        if let Some(rt) = self.lock().runtime.get_mut(name) {
            rt.probe.hurry(Instant::now());
        }
        self.wake_probes.notify_one();
    }

    /// Runs the probes for ever: each endpoint's scheduled probe when its
    /// state machine says it is due.
    pub async fn run_probes(self: Arc<Self>) {
        loop {
            let now = Instant::now();
            let mut next_wake = now + Duration::from_secs(1);
            {
                let mut inner = self.lock();
                let profile = inner.profile.clone();
                for e in &profile.endpoints {
                    let Some(rt) = inner.runtime.get_mut(&e.name) else {
                        continue;
                    };
                    if rt.probe.begin(now).is_some() {
                        let (me, endpoint, probe, generation) = (
                            self.clone(),
                            e.clone(),
                            profile.probe_of(e).clone(),
                            rt.generation,
                        );
                        tokio::spawn(async move {
                            let result = super::check::check(&endpoint.target, &probe).await;
                            me.record(&endpoint, generation, result, true);
                        });
                    }
                    if let Some(due) = rt.probe.next_due() {
                        next_wake = next_wake.min(due);
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep_until(next_wake.max(now).into()) => {}
                _ = self.wake_probes.notified() => {}
            }
        }
    }

    fn record(
        &self,
        endpoint: &EndpointDef,
        generation: u64,
        result: std::result::Result<(), String>,
        scheduled: bool,
    ) {
        let transition = {
            let mut inner = self.lock();
            let Some(rt) = inner.runtime.get_mut(&endpoint.name) else {
                return;
            };
            if rt.generation != generation {
                return;
            }
            rt.probe.record(result, scheduled, Instant::now())
        };
        if let Some(t) = transition {
            let why = self
                .lock()
                .runtime
                .get(&endpoint.name)
                .and_then(|rt| rt.probe.last_error().map(str::to_string));
            tracing::info!(
                endpoint = %endpoint.name,
                target = %endpoint.target,
                from = ?t.from,
                to = ?t.to,
                why = why.as_deref().unwrap_or("probe succeeded"),
                "endpoint health changed"
            );
            self.bump();
        }
    }

    /// Probes `name` now (outside its schedule) and returns its view.
    pub async fn probe_now(&self, name: &str) -> Result<EndpointView> {
        let (endpoint, probe, generation) = {
            let inner = self.lock();
            let e = inner.profile.endpoint(name)?.clone();
            let probe = inner.profile.probe_of(&e).clone();
            (e, probe, inner.runtime[name].generation)
        };
        let result = super::check::check(&endpoint.target, &probe).await;
        self.record(&endpoint, generation, result, false);
        self.endpoint_view(name)
    }

    /// Applies an admin change: validated, written to the state file, then
    /// in effect for the next connection.
    pub async fn apply(&self, change: Change) -> Result<ProfileView> {
        let _one_at_a_time = self.changing.lock().await;
        if let Change::Activate { name, .. } = &change {
            // A fresh probe, not the last verdict: the endpoint may have
            // died since (at worst an interval × tolerated failures ago).
            let view = self.probe_now(name).await?;
            if view.health != Health::Healthy || view.consecutive_failures > 0 {
                return Err(Error::Unhealthy {
                    name: name.clone(),
                    why: view.last_error.unwrap_or_else(|| "not probed yet".into()),
                });
            }
        }
        let next = self.lock().profile.changed(&change)?;
        save_state(&self.state_path, &next)?;
        {
            let mut inner = self.lock();
            inner.profile = next;
            inner.reconcile(Instant::now());
        }
        tracing::info!(change = ?change, "profile changed");
        self.bump();
        self.wake_probes.notify_one();
        Ok(self.view())
    }

    /// Applies `change` without the health check of an activation (the
    /// admin's `--force`).
    pub async fn apply_forced(&self, change: Change) -> Result<ProfileView> {
        let _one_at_a_time = self.changing.lock().await;
        let next = self.lock().profile.changed(&change)?;
        save_state(&self.state_path, &next)?;
        {
            let mut inner = self.lock();
            inner.profile = next;
            inner.reconcile(Instant::now());
        }
        tracing::info!(change = ?change, "profile changed (forced)");
        self.bump();
        self.wake_probes.notify_one();
        Ok(self.view())
    }

    fn endpoint_view(&self, name: &str) -> Result<EndpointView> {
        self.view()
            .endpoints
            .into_iter()
            .find(|e| e.name == name)
            .ok_or_else(|| Error::UnknownEndpoint(name.to_string()))
    }

    /// The profile with each endpoint's health and connections.
    pub fn view(&self) -> ProfileView {
        let inner = self.lock();
        let now = Instant::now();
        let mut endpoints: Vec<EndpointView> = inner
            .profile
            .endpoints
            .iter()
            .map(|e| {
                let rt = &inner.runtime[&e.name];
                let health = rt.probe.health();
                let since = rt.probe.changed_at();
                EndpointView {
                    name: e.name.clone(),
                    target: e.target.clone(),
                    priority: e.priority,
                    status: e.status,
                    health,
                    consecutive_failures: rt.probe.consecutive_failures(),
                    last_error: rt.probe.last_error().map(str::to_string),
                    health_since_ms: now.saturating_duration_since(since).as_millis() as u64,
                    detected_after_ms: match (health, rt.probe.last_success()) {
                        (Health::Unhealthy, Some(ok)) => {
                            Some(since.saturating_duration_since(ok).as_millis() as u64)
                        }
                        _ => None,
                    },
                    connections: rt.connections.load(Ordering::Relaxed),
                    total_connections: rt.total.load(Ordering::Relaxed),
                    probe: inner.profile.probe_of(e).clone(),
                }
            })
            .collect();
        endpoints.sort_by_key(|e| e.priority);
        ProfileView {
            name: inner.profile.name.clone(),
            active: routing::active(inner.candidates()).map(str::to_string),
            hold_ms: inner.profile.hold_ms,
            drain_grace_ms: inner.profile.drain_grace_ms,
            endpoints,
        }
    }

    /// How long this traffic manager has run.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}
