//! `availdb traffic-manager`: run a traffic manager (`--config tm.toml
//! --port P`), or operate a running one through its admin API (`show`,
//! `add`, `remove`, `online`, `offline`, `activate`, `probe`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::traffic::{
    self, Activate, Client, EndpointDef, ProbeDef, ProfileView, Protocol, Status,
};

/// `availdb traffic-manager` options.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct TrafficArgs {
    /// Operate a running traffic manager instead of starting one.
    #[command(subcommand)]
    pub command: Option<TrafficCommand>,
    /// The profile's configuration (TOML: `name`, `hold_ms`,
    /// `drain_grace_ms`, `[probe]`, `[[endpoint]]`, `state_file`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on (proxy and admin API).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port clients connect to.
    #[arg(long, short)]
    pub port: Option<u16>,
    /// Port of the admin API [default: PORT + 1].
    #[arg(long, value_name = "PORT")]
    pub admin_port: Option<u16>,
}

/// Operations on a running traffic manager.
#[derive(Debug, Subcommand)]
pub enum TrafficCommand {
    /// The profile: each endpoint's status, health and connections.
    Show(AdminAddr),
    /// Add an endpoint.
    Add(AddArgs),
    /// Remove an endpoint (its open connections stay, or drain).
    Remove(Named),
    /// Set an endpoint online.
    Online(Named),
    /// Set an endpoint offline.
    Offline(Named),
    /// Make an endpoint the active one: online, and every endpoint of a
    /// higher priority offline, in one change.
    Activate(ActivateArgs),
    /// Probe an endpoint now.
    Probe(Named),
}

/// Where the admin API is.
#[derive(Debug, Args)]
pub struct AdminAddr {
    /// The admin API's address (HOST:PORT).
    #[arg(long, value_name = "HOST:PORT")]
    pub admin: String,
}

/// An endpoint by name.
#[derive(Debug, Args)]
pub struct Named {
    /// The endpoint.
    pub name: String,
    #[command(flatten)]
    admin: AdminAddr,
}

/// `activate` options.
#[derive(Debug, Args)]
pub struct ActivateArgs {
    /// The endpoint.
    pub name: String,
    /// Endpoints set online in the same change (backups).
    #[arg(long, value_name = "NAME")]
    pub also_online: Vec<String>,
    /// Activate it even if it is not healthy.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    admin: AdminAddr,
}

/// `add` options.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// The endpoint's name.
    pub name: String,
    /// Where its connections go (HOST:PORT).
    #[arg(long)]
    pub target: String,
    /// Its priority (1 is the highest; unique).
    #[arg(long)]
    pub priority: u32,
    /// Add it offline (it is probed, and takes no connection until it is
    /// set online or activated).
    #[arg(long)]
    pub offline: bool,
    /// Its own probe: tcp, http or postgres [default: the profile's].
    #[arg(long, value_name = "PROTOCOL")]
    pub probe: Option<String>,
    /// The HTTP probe's path.
    #[arg(long)]
    pub path: Option<String>,
    /// Probe interval in seconds (1 or more).
    #[arg(long)]
    pub interval: Option<u64>,
    #[command(flatten)]
    admin: AdminAddr,
}

/// Runs the subcommand.
pub async fn run(args: TrafficArgs) -> Result<(), String> {
    let Some(command) = args.command else {
        let config = args
            .config
            .ok_or("no profile: pass --config tm.toml (see `availdb traffic-manager --help`)")?;
        let port = args
            .port
            .ok_or("no port: pass --port P, the port clients connect to")?;
        let admin_port = match args.admin_port {
            Some(p) => p,
            None => port
                .checked_add(1)
                .ok_or("--port 65535 leaves no admin port: pass --admin-port")?,
        };
        return traffic::run(
            &config,
            SocketAddr::new(args.host, port),
            SocketAddr::new(args.host, admin_port),
            super::shutdown_signal(),
        )
        .await
        .map_err(|e| e.to_string());
    };
    let view = match command {
        TrafficCommand::Show(a) => Client::new(&a.admin).show().await,
        TrafficCommand::Add(a) => {
            let probe = match &a.probe {
                None => None,
                Some(p) => Some(ProbeDef {
                    protocol: match p.as_str() {
                        "tcp" => Protocol::Tcp,
                        "http" => Protocol::Http,
                        "postgres" => Protocol::Postgres,
                        other => {
                            return Err(format!("--probe {other:?}: use tcp, http or postgres"))
                        }
                    },
                    path: a.path.clone(),
                    interval_seconds: a
                        .interval
                        .unwrap_or(traffic::profile::DEFAULT_INTERVAL_SECONDS),
                    ..ProbeDef::default()
                }),
            };
            let endpoint = EndpointDef {
                name: a.name,
                target: a.target,
                priority: a.priority,
                status: if a.offline {
                    Status::Offline
                } else {
                    Status::Online
                },
                probe,
            };
            Client::new(&a.admin.admin).add(&endpoint).await
        }
        TrafficCommand::Remove(n) => Client::new(&n.admin.admin).remove(&n.name).await,
        TrafficCommand::Online(n) => {
            Client::new(&n.admin.admin)
                .set_status(&n.name, Status::Online)
                .await
        }
        TrafficCommand::Offline(n) => {
            Client::new(&n.admin.admin)
                .set_status(&n.name, Status::Offline)
                .await
        }
        TrafficCommand::Activate(a) => {
            Client::new(&a.admin.admin)
                .activate(
                    &a.name,
                    &Activate {
                        also_online: a.also_online,
                        force: a.force,
                    },
                )
                .await
        }
        TrafficCommand::Probe(n) => {
            let client = Client::new(&n.admin.admin);
            client.probe(&n.name).await.map_err(|e| e.to_string())?;
            client.show().await
        }
    };
    print!("{}", render(&view.map_err(|e| e.to_string())?));
    Ok(())
}

/// The profile as a table.
pub fn render(view: &ProfileView) -> String {
    let mut out = format!(
        "profile {}: active endpoint {}; new connections held up to {} ms{}\n",
        view.name,
        view.active
            .as_deref()
            .unwrap_or("NONE (new connections are held)"),
        view.hold_ms,
        view.drain_grace_ms
            .map(|g| format!(", drained {g} ms after their endpoint is taken out"))
            .unwrap_or_default()
    );
    out.push_str(&format!(
        "{:<12} {:<22} {:>4} {:<8} {:<10} {:>6} {:>8}  {}\n",
        "ENDPOINT", "TARGET", "PRIO", "STATUS", "HEALTH", "CONNS", "TOTAL", "PROBE / LAST ERROR"
    ));
    for e in &view.endpoints {
        let probe = format!(
            "{:?}{} every {} s, timeout {} ms, {} tolerated",
            e.probe.protocol,
            e.probe
                .path
                .as_deref()
                .map(|p| format!(" {p}"))
                .unwrap_or_default(),
            e.probe.interval_seconds,
            e.probe.timeout_ms,
            e.probe.tolerated_failures
        )
        .to_lowercase();
        out.push_str(&format!(
            "{:<12} {:<22} {:>4} {:<8} {:<10} {:>6} {:>8}  {}{}\n",
            e.name,
            e.target,
            e.priority,
            format!("{:?}", e.status).to_lowercase(),
            format!("{:?}", e.health).to_lowercase(),
            e.connections,
            e.total_connections,
            probe,
            e.last_error
                .as_deref()
                .map(|w| format!(" / {w}"))
                .unwrap_or_default()
        ));
    }
    out
}
