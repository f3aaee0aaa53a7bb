//! The traffic manager: one address in front of several application
//! endpoints, in the role of Azure Traffic Manager with the *priority*
//! (failover) routing method — but as a TCP proxy, not DNS, so a switch
//! takes effect for the very next connection (no TTL, no client cache).
//!
//! # Protocol
//! * A **profile** ([`profile`]) has endpoints: a name, a target
//!   `host:port`, a unique priority (1 is the highest) and a status,
//!   **online** or **offline**. Each endpoint is probed ([`probe`],
//!   [`check`]): TCP connect, HTTP `GET path` expecting 2xx, or a
//!   PostgreSQL session running `SELECT 1` (optionally requiring a
//!   read-write session), every `interval_seconds` (default 10, down to
//!   1), each bounded by `timeout_ms`, turning the endpoint unhealthy at
//!   the first failure past `tolerated_failures` in a row.
//! * A **new connection** goes to the online, healthy endpoint with the
//!   best priority ([`routing`]). When there is none — everything down,
//!   or a switch under way — it is **held** (accepted, nothing relayed)
//!   until one is, for at most the profile's `hold_ms`, then closed. A
//!   failed connect to the chosen endpoint moves the connection to the
//!   next choice and hurries that endpoint's probe.
//! * The proxy relays bytes only (`proxy.rs`): any TCP protocol works (an
//!   HTTP application, a PostgreSQL listener). `availdb traffic-manager`
//!   runs on a current-thread runtime: a relay's wake-ups never hop to
//!   another worker (pgbench -S through it: 0.84–0.94× of direct against
//!   0.80–0.83× on the multi-thread runtime). A connection stays on its
//!   endpoint until either side closes it — unless the profile sets
//!   `drain_grace_ms`: then it is closed that long after its endpoint goes
//!   offline or is removed.
//! * The **admin surface** ([`admin`]: HTTP/JSON on the admin port, and
//!   `availdb traffic-manager show|add|remove|online|offline|activate`)
//!   shows each endpoint's health and connection counts and changes the
//!   profile. *Activate* makes an endpoint the active one in a single
//!   change (it goes online, every better-priority endpoint offline), and
//!   is refused unless a probe run right then succeeds.
//!
//! # Invariants
//! * A change is written to the state file (fsynced, renamed) before it
//!   takes effect, so every answered change survives a restart; a change
//!   that cannot be written is not made.
//! * Routing and probing are pure state machines with the time passed in
//!   ([`routing::choose`], [`probe::Probe`]); the I/O around them is thin.
//! * The proxy never reads or changes the bytes it relays.
//!
//! # Known limits
//! * One routing method (priority); no weighted or geographic routing.
//! * No TLS on the admin API; it listens on loopback unless told
//!   otherwise, and has no authentication.
//! * A held connection that times out is closed without a protocol-level
//!   error (the proxy does not speak the application's protocol).

pub mod admin;
pub mod check;
pub mod http;
pub mod probe;
pub mod profile;
mod proxy;
pub mod routing;
mod service;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use admin::{Activate, Client};
pub use profile::{Change, Config, EndpointDef, ProbeDef, ProfileDef, Protocol};
pub use routing::{Health, Status};
pub use service::{EndpointView, ProfileView, TrafficManager};

/// The traffic manager's errors; each says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file cannot be used.
    #[error("configuration file {}: {why}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The state file cannot be read or written.
    #[error("state file {}: {why}", path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// A change or a profile breaks a rule.
    #[error("{0}")]
    Invalid(String),
    /// No endpoint has this name.
    #[error("no endpoint named {0}: `availdb traffic-manager show` lists the profile's endpoints")]
    UnknownEndpoint(String),
    /// An activation of an endpoint that is not healthy.
    #[error(
        "endpoint {name} is not healthy ({why}): start it or fix its probe and try again, \
         or activate it with --force"
    )]
    Unhealthy {
        /// The endpoint.
        name: String,
        /// Its probe's last error.
        why: String,
    },
    /// A port cannot be bound.
    #[error("cannot listen on {addr}: {why}: choose another port")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The reason.
        why: String,
    },
    /// The admin API cannot be reached.
    #[error(
        "traffic manager admin at {addr}: {why} (is `availdb traffic-manager` running \
         with this admin port?)"
    )]
    Admin {
        /// The admin address.
        addr: String,
        /// What failed.
        why: String,
    },
    /// The admin API refused a change.
    #[error("the traffic manager refused ({status}): {why}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// Its message.
        why: String,
    },
    /// A JSON document could not be written.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// The traffic manager's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs a traffic manager: probes, the proxy on `listen`, the admin API
/// on `admin`, until `stop` resolves.
pub async fn run(
    config_path: &std::path::Path,
    listen: SocketAddr,
    admin_listen: SocketAddr,
    stop: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let (config, state_path) = Config::load(config_path)?;
    let profile = match profile::load_state(&state_path)? {
        Some(saved) => {
            tracing::info!(state = %state_path.display(), "profile resumed from the state file");
            saved
        }
        None => {
            profile::save_state(&state_path, &config.profile)?;
            config.profile
        }
    };
    let bind = |addr: SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Bind {
                addr,
                why: e.to_string(),
            })
    };
    let proxy_listener = bind(listen).await?;
    let admin_listener = bind(admin_listen).await?;
    let tm = TrafficManager::new(profile, state_path);
    tokio::spawn(tm.clone().run_probes());
    tokio::spawn(proxy::serve(tm.clone(), proxy_listener));
    let app = admin::router(tm.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(admin_listener, app).await {
            tracing::error!(error = %e, "the admin API stopped");
        }
    });
    tracing::info!(
        profile = %tm.view().name,
        %listen,
        admin = %admin_listen,
        "traffic manager ready"
    );
    stop.await;
    Ok(())
}
