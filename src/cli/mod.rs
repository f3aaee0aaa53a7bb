//! The `availdb` command line: subcommands, the TOML configuration file, and
//! starting a node.
//!
//! Every server option can come from (highest precedence first) the command
//! line, the environment (`AVAILDB_PASSWORD`), the `--config` TOML file (same
//! keys, with `_` for `-`), or the built-in default.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::ag::Manager;
use crate::cluster::Cluster;
use crate::engine::Engine;
use crate::frontend::{Frontend, FrontendConfig};
use crate::listener::{ListenerOptions, Listeners};
use crate::replication::secondary::serve_endpoint;

pub mod backup;
pub mod cert;
pub mod cluster;
pub mod listener;
pub mod status;
pub mod traffic;
pub mod up;
pub mod upgrade;

/// availdb: Always On availability groups for SQLite, over the PostgreSQL
/// wire protocol.
#[derive(Debug, Parser)]
#[command(name = "availdb", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one node: SQLite databases served over the PostgreSQL protocol.
    #[command(after_help = server_timings())]
    Server(ServerArgs),
    /// Start a local availability group: N nodes on loopback, r1 primary.
    #[command(after_help = up::layout())]
    Up(up::UpArgs),
    /// The quorum cluster manager (`availdb cluster status`).
    Cluster(cluster::ClusterArgs),
    /// Every availability group replica and its lag as a table, refreshed
    /// (`--once`: one table).
    Status(status::StatusArgs),
    /// A stand-alone availability group listener on a host with no replica.
    Listener(listener::ListenerArgs),
    /// A traffic manager: one address in front of application endpoints,
    /// priority routing with health probes (or operate a running one).
    TrafficManager(traffic::TrafficArgs),
    /// Upgrade an application from V1 to V2 with a read-only window as
    /// long as its upgrade script (`availdb upgrade PLAN.toml`).
    Upgrade(upgrade::UpgradeArgs),
    /// Back up a database of a running node (BACKUP DATABASE | LOG).
    Backup(backup::BackupArgs),
    /// Restore a database on a running node (RESTORE DATABASE | LOG).
    Restore(backup::RestoreArgs),
    /// Make a certificate authority and node TLS certificates.
    Cert(cert::CertArgs),
    /// Print the SCRAM-SHA-256 verifier of a password read from standard
    /// input (its first line), for `--password` or `password` in a config
    /// file in place of the password itself.
    Verifier,
}

/// `availdb verifier`: reads a password's first line from `input`, returns
/// its verifier with a new random salt.
pub fn verifier(input: impl std::io::BufRead) -> Result<String, String> {
    let line = input
        .lines()
        .next()
        .transpose()
        .map_err(|e| format!("cannot read the password from standard input: {e}"))?
        .unwrap_or_default();
    if line.is_empty() {
        return Err("no password on standard input: echo it, or type it and press Enter".into());
    }
    Ok(crate::auth::Verifier::new(&line).to_string())
}

/// `availdb server` options.
#[derive(Debug, Args)]
pub struct ServerArgs {
    // The defaults are written into the help texts rather than given to
    // clap, because a clap default would override the --config file; the
    // test `help_shows_every_default` keeps them equal to `resolve`'s.
    /// Directory holding the node's databases (created if missing).
    /// Required, here or as `data_dir` in --config.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on. A non-loopback address requires a password
    /// [default: 127.0.0.1].
    #[arg(long)]
    pub host: Option<IpAddr>,
    /// Port to listen on for PostgreSQL clients [default: 5432].
    #[arg(long, short)]
    pub port: Option<u16>,
    /// This node's name: its replica name in availability groups
    /// [default: node-PORT].
    #[arg(long)]
    pub name: Option<String>,
    /// Replication endpoint to listen on (`127.0.0.1:7001` or
    /// `tcp://127.0.0.1:7001`): the ENDPOINT_URL primaries connect to
    /// [default: none: the node joins no cluster and receives no log].
    #[arg(long, value_name = "ADDR")]
    pub endpoint: Option<String>,
    /// Password of user `availdb` (SCRAM-SHA-256), or its SCRAM-SHA-256
    /// verifier (`SCRAM-SHA-256$4096:salt$StoredKey:ServerKey`, made by
    /// `availdb verifier` or PostgreSQL) [default: none: a loopback node
    /// lets any user in].
    #[arg(long, env = "AVAILDB_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Run as a witness: a cluster voter that hosts no replica, so that
    /// two replica hosts and a witness keep a majority when either host
    /// fails. Needs --endpoint; add it with `availdb cluster join`.
    #[arg(long)]
    pub witness: bool,
    /// How long an availability group listener on this node holds a new
    /// session while no primary answers (a failover), in milliseconds
    /// [default: 15000].
    #[arg(long, value_name = "MS")]
    pub listener_hold_ms: Option<u64>,
    /// Memory one session's buffers may hold: rows that cannot stream (a
    /// write's RETURNING rows, the rest of a suspended portal whose
    /// transaction runs another statement) and COPY FROM STDIN data, in
    /// MiB; past it the statement fails with SQLSTATE 53200 [default: 256].
    #[arg(long, value_name = "MIB")]
    pub session_memory_mb: Option<u64>,
    /// Memory all sessions' buffers together may hold, in MiB; past it
    /// the statement fails with SQLSTATE 53200 [default: 1024].
    #[arg(long, value_name = "MIB")]
    pub node_memory_mb: Option<u64>,
    /// Port of the HTTP server (health checks, Prometheus metrics, state
    /// as JSON), on the same host; 0 turns it off [default: the client
    /// port + 1000].
    #[arg(long, value_name = "PORT")]
    pub http_port: Option<u16>,
    /// PEM file of the node's TLS certificate (then any intermediates):
    /// clients may connect with TLS (sslmode=require, verify-full), on the
    /// client port and the node's listeners. Needs --tls-key [default:
    /// none: SSLRequest is refused].
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file of the private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Which clients must use TLS: none, remote (clients not on loopback,
    /// like PostgreSQL's hostssl) or all; others are refused with SQLSTATE
    /// 28000. Needs --tls-cert [default: none].
    #[arg(long, value_name = "POLICY")]
    pub require_tls: Option<crate::tls::TlsPolicy>,
    /// PEM file of the node's partner certificate (from `availdb cert
    /// issue`, with --host for every address partners reach the endpoint
    /// at): every connection to or from a partner (Raft, replication, geo,
    /// listener forwards, page repair) is then mutual TLS. Needs
    /// --partner-tls-key and --partner-ca; SIGHUP reads the files again
    /// [default: none: partner traffic is plaintext and unauthenticated].
    #[arg(long, value_name = "FILE")]
    pub partner_tls_cert: Option<PathBuf>,
    /// PEM file of the private key of --partner-tls-cert.
    #[arg(long, value_name = "FILE")]
    pub partner_tls_key: Option<PathBuf>,
    /// PEM file of a cluster CA whose certificates partners may present
    /// (`ca.pem` of `availdb cert init`); repeat it (or put several in the
    /// file) to trust an old and a new CA while certificates are rotated.
    #[arg(long, value_name = "FILE")]
    pub partner_ca: Vec<PathBuf>,
    /// PEM revocation list of a partner CA (`crl.pem` of `availdb cert
    /// init | revoke`; repeat for several): partners presenting a
    /// certificate it lists are refused. SIGHUP reads it again.
    #[arg(long, value_name = "FILE")]
    pub partner_crl: Vec<PathBuf>,
    /// Sessions this node serves at once; one more is refused with
    /// SQLSTATE 53300 [default: 100].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Default idle_in_transaction_session_timeout, in milliseconds: a
    /// session that waits this long inside a transaction is ended (25P03),
    /// its transaction rolled back and the write lock it holds freed;
    /// sessions may set their own; 0 turns it off [default: 0].
    #[arg(long, value_name = "MS")]
    pub idle_in_transaction_session_timeout_ms: Option<u64>,
    /// How fast the background scrub reads each availability database's
    /// pages to verify them (and, on a secondary, compare them with the
    /// primary's), in KiB a second, an eighth of it while the node is
    /// busy (writes, or 100 client statements a second); 0 turns the scrub
    /// off [default: 4096].
    #[arg(long, value_name = "KIB")]
    pub scrub_kib_per_s: Option<u64>,
    /// How fast the background proof of backups reads them: every backup
    /// taken on this node is restored to a scratch copy and checked
    /// (`sys.backup_history.verification_state`), in KiB a second; 0 turns
    /// the proofs off [default: 16384].
    #[arg(long, value_name = "KIB")]
    pub backup_verify_kib_per_s: Option<u64>,
    /// Most KiB a second a BACKUP on this node reads of the database (its
    /// pages and log records; writes follow, compressed or not), on
    /// either role; 0: unlimited. On a secondary the disk and cores are
    /// also those that harden the primary's synchronous commits; a limit
    /// keeps those commits' latency while the backup runs, at the cost of
    /// a longer backup [default: 0 (unlimited) on the primary, 16384 on a
    /// secondary].
    #[arg(long, value_name = "KIB", env = "AVAILDB_BACKUP_KIB_PER_S")]
    pub backup_kib_per_s: Option<u64>,
    /// Automatic seeding sends a database of at least this many MiB as a
    /// backup streamed to the replica, read without the write lock; a
    /// smaller one as a full image in the log, written under it; 0: every
    /// automatic seed is a streamed backup [default: 16].
    #[arg(long, value_name = "MIB")]
    pub seed_by_backup_from_mb: Option<u64>,
    /// A backup schedule, `database=app,kind=full|log,every=15m,to=DIR`
    /// (repeat for several): at every tick the backup is taken here if
    /// this replica is the group's preferred backup replica
    /// (`sys.fn_hadr_backup_is_preferred_replica`), so give every replica
    /// the same schedules.
    #[arg(long, value_name = "SCHEDULE")]
    pub backup_schedule: Vec<crate::backup::schedule::Schedule>,
    /// TOML file with the same settings (`data_dir`, `host`, `port`, `name`,
    /// `endpoint`, `password`, `witness`, `listener_hold_ms`,
    /// `session_memory_mb`, `node_memory_mb`, `http_port`, `tls_cert`,
    /// `tls_key`, `require_tls`, `partner_tls_cert`, `partner_tls_key`,
    /// `partner_ca` and `partner_crl` (lists), `max_connections`,
    /// `idle_in_transaction_session_timeout_ms`, `scrub_kib_per_s`,
    /// `backup_verify_kib_per_s`, `backup_kib_per_s`,
    /// `seed_by_backup_from_mb`, and
    /// `[[backup_schedule]]` tables with
    /// `database`, `kind`, `every`, `to`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The `--config` file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    data_dir: Option<PathBuf>,
    host: Option<IpAddr>,
    port: Option<u16>,
    name: Option<String>,
    endpoint: Option<String>,
    password: Option<String>,
    witness: Option<bool>,
    listener_hold_ms: Option<u64>,
    session_memory_mb: Option<u64>,
    node_memory_mb: Option<u64>,
    http_port: Option<u16>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    require_tls: Option<String>,
    partner_tls_cert: Option<PathBuf>,
    partner_tls_key: Option<PathBuf>,
    partner_ca: Option<Vec<PathBuf>>,
    partner_crl: Option<Vec<PathBuf>>,
    max_connections: Option<usize>,
    idle_in_transaction_session_timeout_ms: Option<u64>,
    scrub_kib_per_s: Option<u64>,
    backup_verify_kib_per_s: Option<u64>,
    backup_kib_per_s: Option<u64>,
    seed_by_backup_from_mb: Option<u64>,
    backup_schedule: Option<Vec<crate::backup::schedule::Schedule>>,
}

/// A node's resolved settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Listen address.
    pub listen: SocketAddr,
    /// Node name.
    pub name: String,
    /// Password of user `availdb`.
    pub password: Option<String>,
    /// Replication endpoint, if this node takes part in groups.
    pub endpoint: Option<SocketAddr>,
    /// A witness votes in the cluster and hosts no replica.
    pub witness: bool,
    /// How long a listener holds a session while no primary answers.
    pub listener_hold: std::time::Duration,
    /// Memory budget of one session's buffers, bytes.
    pub session_memory: u64,
    /// Memory budget of all sessions' buffers, bytes.
    pub node_memory: u64,
    /// The HTTP server's address, and whether it was asked for explicitly
    /// (then it must be free); `None`: no HTTP server.
    pub http: Option<(SocketAddr, bool)>,
    /// The node's TLS certificate and key files, for client connections.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Which clients must use TLS.
    pub require_tls: crate::tls::TlsPolicy,
    /// The partner TLS files (None: partner traffic in plaintext).
    pub partner_tls: Option<crate::net::PartnerTlsFiles>,
    /// Sessions served at once at most.
    pub max_connections: usize,
    /// Default `idle_in_transaction_session_timeout` (None: off).
    pub idle_in_transaction_timeout: Option<std::time::Duration>,
    /// The background scrub's rate, bytes a second (0: off).
    pub scrub_rate: u64,
    /// The background proof of backups' rate, bytes a second (0: off).
    pub backup_verify_rate: u64,
    /// BACKUP's read rate, bytes a second (0: unlimited; None: the
    /// default of each role, `backup::rate::default_rate`).
    pub backup_rate: Option<u64>,
    /// Automatic seeding of databases of at least this many bytes is by a
    /// streamed backup (`crate::replication::seed`).
    pub seed_by_backup_from: u64,
    /// Scheduled backups.
    pub backup_schedules: Vec<crate::backup::schedule::Schedule>,
}

/// Default PostgreSQL-protocol port.
pub const DEFAULT_PORT: u16 = 5432;

/// The default HTTP port is the client port plus this.
pub const HTTP_PORT_OFFSET: u16 = 1000;

/// `availdb server --help`'s closing lines: the timings that are not options.
fn server_timings() -> String {
    use crate::ag::clustered::{LEASE, MARGIN, RENEW_EVERY};
    format!(
        "Fixed timings: in a cluster, a primary's lease lasts {} ms and is renewed every \
         {} ms; a primary whose lease runs out stops taking writes, and a new one is named \
         once {} ms pass without a renewal. How long a primary waits for a silent \
         secondary is each replica's SESSION_TIMEOUT (CREATE or ALTER AVAILABILITY GROUP).",
        LEASE.as_millis(),
        RENEW_EVERY.as_millis(),
        (LEASE + MARGIN).as_millis()
    )
}

impl ServerArgs {
    /// Merges the command line, environment and config file.
    pub fn resolve(self) -> Result<ServerConfig, String> {
        let file = match &self.config {
            Some(path) => load_config(path)?,
            None => ConfigFile::default(),
        };
        let data_dir = self
            .data_dir
            .or(file.data_dir)
            .ok_or("no data directory: pass --data-dir DIR (or data_dir in --config)")?;
        let host = self
            .host
            .or(file.host)
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let port = self.port.or(file.port).unwrap_or(DEFAULT_PORT);
        let password = self.password.or(file.password).filter(|p| !p.is_empty());
        if let Some(text) = password
            .as_deref()
            .filter(|p| crate::auth::Verifier::is_verifier_text(p))
        {
            crate::auth::Verifier::parse(text).map_err(|e| format!("the password: {e}"))?;
        }
        if !host.is_loopback() && password.is_none() {
            return Err(format!(
                "refusing to listen on {host} without a password: anyone on the network could connect. \
                 Set --password or AVAILDB_PASSWORD, or listen on 127.0.0.1"
            ));
        }
        let endpoint = match self.endpoint.or(file.endpoint) {
            Some(text) => Some(parse_endpoint(&text)?),
            None => None,
        };
        let http = match self.http_port.or(file.http_port) {
            Some(0) => None,
            Some(p) => Some((SocketAddr::new(host, p), true)),
            None => port
                .checked_add(HTTP_PORT_OFFSET)
                .map(|p| (SocketAddr::new(host, p), false)),
        };
        let tls = match (self.tls_cert.or(file.tls_cert), self.tls_key.or(file.tls_key)) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err("TLS needs both a certificate and its key: set --tls-cert and --tls-key (tls_cert and tls_key in --config)".into()),
        };
        let require_tls = match (self.require_tls, file.require_tls) {
            (Some(policy), _) => policy,
            (None, Some(text)) => text.parse()?,
            (None, None) => crate::tls::TlsPolicy::None,
        };
        if require_tls != crate::tls::TlsPolicy::None && tls.is_none() {
            return Err(format!(
                "--require-tls {require_tls} needs a certificate: set --tls-cert and --tls-key"
            ));
        }
        let partner_ca = if self.partner_ca.is_empty() {
            file.partner_ca.unwrap_or_default()
        } else {
            self.partner_ca.clone()
        };
        let crls = if self.partner_crl.is_empty() {
            file.partner_crl.unwrap_or_default()
        } else {
            self.partner_crl.clone()
        };
        let partner_tls = match (
            self.partner_tls_cert.or(file.partner_tls_cert),
            self.partner_tls_key.or(file.partner_tls_key),
            partner_ca,
        ) {
            (None, None, cas) if cas.is_empty() && crls.is_empty() => None,
            (Some(cert), Some(key), cas) if !cas.is_empty() => Some(crate::net::PartnerTlsFiles {
                cert,
                key,
                cas,
                crls,
            }),
            _ => {
                return Err(
                    "partner TLS needs all three of --partner-tls-cert, --partner-tls-key and \
                 --partner-ca (partner_tls_cert, partner_tls_key and partner_ca in --config); \
                 make them with availdb cert init and availdb cert issue"
                        .into(),
                )
            }
        };
        if partner_tls.is_some() && endpoint.is_none() {
            return Err(
                "--partner-tls-cert secures the replication endpoint: give the node --endpoint \
                 HOST:PORT too"
                    .into(),
            );
        }
        let witness = self.witness || file.witness.unwrap_or(false);
        if witness && endpoint.is_none() {
            return Err(
                "a witness needs --endpoint HOST:PORT: it takes part in the cluster through it"
                    .into(),
            );
        }
        Ok(ServerConfig {
            data_dir,
            listen: SocketAddr::new(host, port),
            name: self
                .name
                .or(file.name)
                .unwrap_or_else(|| format!("node-{port}")),
            password,
            endpoint,
            witness,
            listener_hold: self.listener_hold_ms.or(file.listener_hold_ms).map_or(
                crate::listener::DEFAULT_HOLD,
                std::time::Duration::from_millis,
            ),
            session_memory: self
                .session_memory_mb
                .or(file.session_memory_mb)
                .unwrap_or(crate::engine::memory::DEFAULT_SESSION_MB)
                << 20,
            node_memory: self
                .node_memory_mb
                .or(file.node_memory_mb)
                .unwrap_or(crate::engine::memory::DEFAULT_NODE_MB)
                << 20,
            http,
            tls,
            require_tls,
            partner_tls,
            max_connections: match self.max_connections.or(file.max_connections) {
                Some(0) => return Err("--max-connections must be at least 1".into()),
                Some(n) => n,
                None => crate::frontend::limits::DEFAULT_MAX_CONNECTIONS,
            },
            idle_in_transaction_timeout: self
                .idle_in_transaction_session_timeout_ms
                .or(file.idle_in_transaction_session_timeout_ms)
                .filter(|ms| *ms > 0)
                .map(std::time::Duration::from_millis),
            scrub_rate: self
                .scrub_kib_per_s
                .or(file.scrub_kib_per_s)
                .map_or(crate::repair::DEFAULT_RATE_BYTES, |kib| kib << 10),
            backup_verify_rate: self
                .backup_verify_kib_per_s
                .or(file.backup_verify_kib_per_s)
                .map_or(crate::backup::proof::DEFAULT_RATE_BYTES, |kib| kib << 10),
            backup_rate: self
                .backup_kib_per_s
                .or(file.backup_kib_per_s)
                .map(|kib| kib << 10),
            seed_by_backup_from: self
                .seed_by_backup_from_mb
                .or(file.seed_by_backup_from_mb)
                .map_or(
                    crate::replication::seed::DEFAULT_SEED_BY_BACKUP_FROM,
                    |mib| mib << 20,
                ),
            backup_schedules: if self.backup_schedule.is_empty() {
                file.backup_schedule.unwrap_or_default()
            } else {
                self.backup_schedule.clone()
            },
        })
    }
}

fn parse_endpoint(text: &str) -> Result<SocketAddr, String> {
    let bare = text.strip_prefix("tcp://").unwrap_or(text);
    bare.parse().map_err(|_| {
        format!("--endpoint {text:?} is not an address: use IP:PORT, e.g. 127.0.0.1:7001")
    })
}

fn load_config(path: &Path) -> Result<ConfigFile, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("config file {} is not valid: {e}", path.display()))
}

/// Runs a node until SIGTERM or Ctrl-C.
pub async fn run_server(config: ServerConfig) -> Result<(), String> {
    crate::durable::create_dir_all(&config.data_dir).map_err(|e| {
        format!(
            "data directory {} is unusable: {e}",
            config.data_dir.display()
        )
    })?;
    let _lock = lock_data_dir(&config.data_dir)?;
    stop_if_this_node_fails();
    let engine = Arc::new(Engine::open(&config.data_dir).map_err(|e| {
        format!(
            "data directory {} is unusable: {e}",
            config.data_dir.display()
        )
    })?);
    engine
        .memory()
        .set_limits(config.session_memory, config.node_memory);
    // A backup chain in use keeps each database's log for its next log backup.
    crate::backup::hold_logs(&engine);
    crate::replication::seed::set_seed_by_backup_from(config.seed_by_backup_from);
    crate::backup::remote::clear_staging(&config.data_dir);
    if let Some(endpoint) = config.endpoint {
        crate::net::set_source(endpoint);
        if let Some(files) = &config.partner_tls {
            crate::net::set_tls(Some(crate::net::PartnerTls::load(files)?));
            reload_partner_tls_on_sighup(files.clone());
        }
        crate::net::log_security(endpoint);
    }
    let cluster = match config.endpoint {
        Some(endpoint) => Some(start_cluster(&config, endpoint).await?),
        None => None,
    };
    let groups = Manager::start(
        &config.name,
        engine.clone(),
        &config.data_dir,
        cluster.clone(),
        config.witness,
    )
    .await
    .map_err(|e| format!("cannot resume availability groups: {e}"))?;
    let tls = match &config.tls {
        Some((cert, key)) => Some(crate::tls::acceptor(cert, key)?),
        None => None,
    };
    let tls_cert_pem = match &config.tls {
        Some((cert, _)) => Some(
            std::fs::read(cert)
                .map_err(|e| format!("cannot read the TLS certificate {}: {e}", cert.display()))?,
        ),
        None => None,
    };
    groups.start_page_repair(config.scrub_rate);
    groups.start_backup_proofs(config.backup_verify_rate);
    if let Some(rate) = config.backup_rate {
        groups.set_backup_rate(rate);
    }
    crate::frontend::spawn_schedules(
        engine.clone(),
        groups.clone(),
        config.backup_schedules.clone(),
    );
    let frontend = Frontend::new(
        engine,
        groups.clone(),
        &FrontendConfig {
            password: config.password.clone(),
            tls: tls.clone(),
            tls_cert_pem,
            require_tls: config.require_tls,
            max_connections: config.max_connections,
            idle_in_transaction_timeout: config.idle_in_transaction_timeout,
        },
    );
    // Sessions a listener hands over through the endpoint (or, routed to
    // this node, in-process) are authenticated like direct ones; without a
    // password that means none, which only a loopback endpoint may offer.
    let takes_listener_sessions = config.password.is_some()
        || config
            .endpoint
            .is_some_and(|endpoint| endpoint.ip().is_loopback());
    if let Some(endpoint) = config.endpoint {
        let listener = TcpListener::bind(endpoint).await.map_err(|e| {
            format!("cannot listen for replication on {endpoint}: {e}: choose another --endpoint")
        })?;
        let sessions = takes_listener_sessions.then(|| {
            let frontend = frontend.clone();
            Arc::new(move |socket, peer| frontend.clone().serve_forwarded(socket, peer))
                as crate::replication::secondary::SessionHandoff
        });
        tokio::spawn(serve_endpoint(
            listener,
            groups.clone(),
            cluster.as_ref().map(|c| c.rpc_server()),
            sessions,
        ));
        if takes_listener_sessions {
            let local = frontend.clone() as Arc<dyn crate::listener::LocalSessions>;
            if let Err(e) = crate::listener::handoff::receive(endpoint, local) {
                tracing::warn!(%endpoint, error = %e, "cannot take sessions that other nodes' listeners on this host pass over; they relay them instead");
            }
        }
    }
    if let Some(cluster) = &cluster {
        crate::ag::clustered::spawn_follower(cluster.clone(), Arc::downgrade(&groups));
        crate::ag::clustered::spawn_failover_decider(cluster.clone());
    }
    let client_listener = TcpListener::bind(config.listen).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            format!(
                "port {} on {} is already in use: choose another --port",
                config.listen.port(),
                config.listen.ip()
            )
        } else {
            format!("cannot listen on {}: {e}", config.listen)
        }
    })?;
    if let Some((addr, explicit)) = config.http {
        if let Some(listener) = crate::http::bind(addr, explicit).await? {
            tracing::info!(node = %config.name, "HTTP health checks and metrics on http://{addr}/");
            tokio::spawn(crate::http::serve(
                listener,
                config.name.clone(),
                groups.clone(),
                config.password.clone(),
            ));
        }
    }
    let _listeners = Listeners::spawn(
        groups,
        ListenerOptions {
            host: config.listen.ip(),
            hold: config.listener_hold,
            tls,
        },
        takes_listener_sessions
            .then(|| frontend.clone() as Arc<dyn crate::listener::LocalSessions>),
    );
    tracing::info!(
        node = %config.name,
        listen = %config.listen,
        endpoint = ?config.endpoint,
        data_dir = %config.data_dir.display(),
        auth = if config.password.is_some() { "scram-sha-256" } else { "trust (loopback)" },
        tls = if config.tls.is_some() { "offered" } else { "off" },
        require_tls = %config.require_tls,
        "availdb node ready; connect with: psql \"host={} port={} user=availdb dbname=availdb\"",
        config.listen.ip(),
        config.listen.port()
    );
    frontend.serve(client_listener, shutdown_signal()).await;
    tracing::info!(node = %config.name, "shut down");
    Ok(())
}

/// Starts this node's member of the quorum cluster manager; its RPCs share
/// the replication endpoint.
async fn start_cluster(
    config: &ServerConfig,
    endpoint: SocketAddr,
) -> Result<Arc<Cluster>, String> {
    use crate::cluster::{node_id, NodeInfo, TcpTransport, PREAMBLE};
    let info = NodeInfo {
        name: config.name.clone(),
        endpoint,
    };
    let transport = || TcpTransport::with_preamble(PREAMBLE.to_vec());
    let cluster = Cluster::start_with(
        node_id(&config.name),
        info,
        &config.data_dir.join("cluster"),
        transport(),
        Cluster::raft_config(),
    )
    .await
    .map_err(|e| format!("cannot start the cluster manager: {e}"))?;
    stop_if_the_cluster_member_fails(cluster.raft().metrics());
    Ok(Arc::new(cluster.with_forwarding(transport())))
}

/// Fail-stop: a cluster member whose store failed (a full disk, an I/O
/// error) has quit for good — it no longer votes, and a primary here could
/// not renew its lease. The node exits rather than linger half alive; a
/// restart (once the disk is fixed) rejoins from its files.
fn stop_if_the_cluster_member_fails(
    mut metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, crate::cluster::NodeInfo>>,
) {
    let failed = |m: &openraft::RaftMetrics<u64, crate::cluster::NodeInfo>| match &m.running_state {
        Err(openraft::error::Fatal::Stopped) | Ok(()) => None,
        Err(fatal) => Some(fatal.to_string()),
    };
    tokio::spawn(async move {
        loop {
            let closed = metrics.changed().await.is_err();
            if let Some(why) = failed(&metrics.borrow()) {
                tracing::error!(
                    "the cluster manager stopped on an error ({why}): this node exits; \
                     free the disk or fix the error, then start it again (it rejoins from its files)"
                );
                eprintln!("availdb: the cluster manager failed ({why}); exiting");
                std::process::exit(70);
            }
            if closed {
                return;
            }
        }
    });
}

/// Reads the partner TLS files again on every SIGHUP (a certificate
/// rotation): new partner connections use them; a reload that fails is
/// logged and the node keeps what it had.
fn reload_partner_tls_on_sighup(files: crate::net::PartnerTlsFiles) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGHUP: partner TLS files are read at start only");
                return;
            }
        };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                match crate::net::PartnerTls::load(&files) {
                    Ok(tls) => {
                        tracing::info!(
                            trusted_cas = tls.trusted_cas,
                            "SIGHUP: partner TLS files read again; new partner connections use them"
                        );
                        crate::net::set_tls(Some(tls));
                    }
                    Err(e) => tracing::error!(
                        "SIGHUP: partner TLS files not reloaded, the node keeps the ones it had: {e}"
                    ),
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = files;
}

/// Fail-stop ([`crate::failstop`]): a failure that only a restart repairs
/// (a transaction log that could not write or fsync, a full disk) makes
/// the node exit rather than linger unable to write.
fn stop_if_this_node_fails() {
    let mut failures = crate::failstop::watch();
    tokio::spawn(async move {
        let Ok(failures) = failures.wait_for(|f| !f.is_empty()).await else {
            return;
        };
        let why = failures[0].clone();
        tracing::error!(
            "{why}: this node exits; free the disk or fix the error, then start it again \
             (recovery rebuilds every database from its log)"
        );
        eprintln!("availdb: {why}; exiting");
        std::process::exit(70);
    });
}

/// Holds an exclusive lock on `DIR/availdb.lock` for the life of the node,
/// so two nodes never write the same databases.
pub(crate) fn lock_data_dir(dir: &Path) -> Result<std::fs::File, String> {
    let path = dir.join("availdb.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("data directory {} is unusable: {e}", dir.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "data directory {} is in use by another availdb process",
            dir.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch SIGTERM; stop with Ctrl-C");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(host: Option<&str>, password: Option<&str>) -> ServerArgs {
        ServerArgs {
            data_dir: Some("d".into()),
            host: host.map(|h| h.parse().unwrap()),
            port: None,
            name: None,
            endpoint: None,
            password: password.map(Into::into),
            witness: false,
            listener_hold_ms: None,
            session_memory_mb: None,
            node_memory_mb: None,
            http_port: None,
            tls_cert: None,
            tls_key: None,
            require_tls: None,
            partner_tls_cert: None,
            partner_tls_key: None,
            partner_ca: Vec::new(),
            partner_crl: Vec::new(),
            max_connections: None,
            idle_in_transaction_session_timeout_ms: None,
            scrub_kib_per_s: None,
            backup_verify_kib_per_s: None,
            backup_kib_per_s: None,
            seed_by_backup_from_mb: None,
            backup_schedule: Vec::new(),
            config: None,
        }
    }

    #[test]
    fn backup_schedules_come_from_the_command_line_or_else_the_config_file() {
        let file: ConfigFile = toml::from_str(
            "[[backup_schedule]]\ndatabase = \"app\"\nkind = \"log\"\nevery = \"15m\"\nto = \"/b\"\n",
        )
        .unwrap();
        let from_file = file.backup_schedule.clone().unwrap();
        assert_eq!(from_file[0].every, std::time::Duration::from_secs(900));
        let bad: Result<ConfigFile, _> = toml::from_str(
            "[[backup_schedule]]\ndatabase = \"app\"\nkind = \"log\"\nevery = \"soon\"\nto = \"/b\"\n",
        );
        assert!(bad.unwrap_err().to_string().contains("30s, 15m"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[[backup_schedule]]\ndatabase = \"app\"\nkind = \"full\"\nevery = \"1h\"\nto = \"/b\"\n",
        )
        .unwrap();
        let mut a = args(None, None);
        a.config = Some(path.clone());
        let c = a.resolve().unwrap();
        assert_eq!(c.backup_schedules.len(), 1, "from the file");
        let mut a = args(None, None);
        a.config = Some(path);
        a.backup_schedule = vec!["database=x,kind=log,every=1m,to=/c".parse().unwrap()];
        let c = a.resolve().unwrap();
        assert_eq!(c.backup_schedules[0].database, "x", "the command line wins");
    }

    #[test]
    fn the_backup_rate_comes_from_the_command_line_or_else_the_config_file_else_each_roles_default()
    {
        assert_eq!(args(None, None).resolve().unwrap().backup_rate, None);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "backup_kib_per_s = 1024\n").unwrap();
        let mut a = args(None, None);
        a.config = Some(path.clone());
        assert_eq!(
            a.resolve().unwrap().backup_rate,
            Some(1 << 20),
            "from the file"
        );
        let mut a = args(None, None);
        a.config = Some(path);
        a.backup_kib_per_s = Some(0);
        assert_eq!(
            a.resolve().unwrap().backup_rate,
            Some(0),
            "the command line wins: 0 is unlimited, not the default"
        );
    }

    #[test]
    fn requiring_tls_needs_a_certificate_and_a_key() {
        let mut a = args(None, None);
        a.require_tls = Some(crate::tls::TlsPolicy::Remote);
        let err = a.resolve().unwrap_err();
        assert!(err.contains("--tls-cert"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.toml");
        std::fs::write(&path, "data_dir = \"/x\"\ntls_cert = \"c.pem\"\n").unwrap();
        let mut a = args(None, None);
        a.config = Some(path.clone());
        let err = a.resolve().unwrap_err();
        assert!(err.contains("--tls-key"), "{err}");
        std::fs::write(
            &path,
            "data_dir = \"/x\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\nrequire_tls = \"all\"\n",
        )
        .unwrap();
        let mut a = args(None, None);
        a.config = Some(path);
        let c = a.resolve().unwrap();
        assert_eq!(c.require_tls, crate::tls::TlsPolicy::All);
        assert_eq!(c.tls, Some(("c.pem".into(), "k.pem".into())));
    }

    #[test]
    fn partner_tls_needs_its_three_files_and_an_endpoint() {
        let mut a = args(None, None);
        a.endpoint = Some("127.0.0.1:7010".into());
        a.partner_tls_cert = Some("n.pem".into());
        let err = a.resolve().unwrap_err();
        assert!(
            err.contains("all three") && err.contains("availdb cert"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.toml");
        std::fs::write(
            &path,
            "partner_tls_cert = \"n.pem\"\npartner_tls_key = \"n.key\"\npartner_ca = [\"old.pem\", \"new.pem\"]\n",
        )
        .unwrap();
        let mut a = args(None, None);
        a.config = Some(path.clone());
        let err = a.resolve().unwrap_err();
        assert!(err.contains("--endpoint"), "{err}");
        let mut a = args(None, None);
        a.config = Some(path);
        a.endpoint = Some("127.0.0.1:7010".into());
        let files = a.resolve().unwrap().partner_tls.unwrap();
        assert_eq!(
            files.cas,
            [PathBuf::from("old.pem"), PathBuf::from("new.pem")]
        );
        assert!(args(None, None).resolve().unwrap().partner_tls.is_none());
    }

    #[test]
    fn a_witness_needs_an_endpoint() {
        let err = ServerArgs {
            witness: true,
            ..args(None, None)
        }
        .resolve()
        .unwrap_err();
        assert!(err.contains("--endpoint"), "{err}");
        let ok = ServerArgs {
            witness: true,
            endpoint: Some("127.0.0.1:7010".into()),
            ..args(None, None)
        }
        .resolve()
        .unwrap();
        assert!(ok.witness);
    }

    #[test]
    fn non_loopback_host_requires_a_password() {
        let err = args(Some("0.0.0.0"), None).resolve().unwrap_err();
        assert!(err.contains("password"), "{err}");
        assert!(args(Some("0.0.0.0"), Some("pw")).resolve().is_ok());
        assert!(args(None, None).resolve().is_ok());
    }

    #[test]
    fn command_line_wins_over_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.toml");
        std::fs::write(&path, "data_dir = \"/x\"\nport = 7000\nname = \"r9\"\n").unwrap();
        let mut a = args(None, None);
        a.data_dir = None;
        a.port = Some(7001);
        a.config = Some(path);
        let c = a.resolve().unwrap();
        assert_eq!(
            (c.data_dir, c.listen.port(), c.name.as_str()),
            (PathBuf::from("/x"), 7001, "r9")
        );
    }

    #[test]
    fn help_shows_every_default() {
        use clap::CommandFactory;
        let mut cli = Cli::command();
        let help = |cli: &mut clap::Command, sub: &str| {
            cli.find_subcommand_mut(sub)
                .unwrap()
                .render_help()
                .to_string()
        };
        let server = help(&mut cli, "server");
        let c = args(None, None).resolve().unwrap();
        for default in [
            c.listen.ip().to_string(),
            c.listen.port().to_string(),
            c.name.replace(&c.listen.port().to_string(), "PORT"),
            c.listener_hold.as_millis().to_string(),
            (c.session_memory >> 20).to_string(),
            (c.node_memory >> 20).to_string(),
            c.max_connections.to_string(),
            format!("the client port + {HTTP_PORT_OFFSET}"),
            (c.scrub_rate >> 10).to_string(),
            (c.backup_verify_rate >> 10).to_string(),
            (c.seed_by_backup_from >> 20).to_string(),
        ] {
            assert!(
                server.contains(&format!("[default: {default}]")),
                "{default} in {server}"
            );
        }
        let backup_rate = format!(
            "[default: 0 (unlimited) on the primary, {} on a secondary]",
            crate::backup::rate::DEFAULT_SECONDARY_RATE_BYTES >> 10
        );
        assert!(server.contains(&backup_rate), "{backup_rate} in {server}");
        assert!(server.contains("Required"), "{server}");
        assert!(
            server.contains(&format!(
                "lease lasts {} ms",
                crate::ag::clustered::LEASE.as_millis()
            )),
            "{server}"
        );
        let up = help(&mut cli, "up");
        for default in ["3", &DEFAULT_PORT.to_string(), "availdb-data"] {
            assert!(
                up.contains(&format!("[default: {default}]")),
                "{default} in {up}"
            );
        }
    }

    #[test]
    fn unknown_config_keys_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.toml");
        std::fs::write(&path, "prot = 1\n").unwrap();
        assert!(load_config(&path).unwrap_err().contains("prot"));
    }
}
