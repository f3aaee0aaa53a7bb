//! `availdb up`: a whole availability group on this machine, for trying
//! availdb and for tests — N node processes on loopback, r1 primary, the
//! others synchronous (or asynchronous) secondaries, one database `app`.
//!
//! Ports: the group's listener takes `PORT` (read-write) and `PORT + 1`
//! (read-only: read-intent sessions, routed round-robin over the readable
//! secondaries, the primary last); replica `ri` serves clients on
//! `PORT + 1 + i`, replication on `PORT + 100 + i - 1` and HTTP (health
//! checks, metrics: `crate::http`) on `PORT + 150 + i - 1`; its data lives
//! in `DIR/ri`. Every node runs the listener (the ports are shared with
//! `SO_REUSEPORT`), so it survives the loss of any node. Running `up` again
//! on the same directory resumes the same group.
//!
//! `--regions N` (2..=4) starts N such regions, each an independent cluster
//! with its own group `ag1`, named A, B, … (`SERVER_NAME`), every region a
//! registered partner of the others: region A's ports start at `PORT` as
//! above, region k's at `PORT + 200·k`, its data in `DIR/<name>/ri`. Region
//! A holds `app`; every other region holds a geo-secondary of it, also
//! named `app`, linked from A (`ADD SECONDARY ON SERVER`).
//!
//! Partner traffic is mutual TLS (`crate::net`): `up` makes a CA in
//! `DIR/partner-ca` (`availdb cert init`) and a certificate for 127.0.0.1
//! per replica in `DIR/…/ri/partner-tls` (`availdb cert issue`), once, and
//! starts every node with them; every region trusts the one CA, so geo
//! links are TLS too. `--no-partner-tls` starts the nodes without.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use tokio::process::{Child, Command};
use tokio_postgres::NoTls;

/// `availdb up` options.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Number of replicas (1 primary + N-1 secondaries; 2..=9).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(2..=9))]
    pub replicas: u16,
    /// The listener's read-write port; PORT + 1 is its read-only port,
    /// and the replicas' own ports follow.
    #[arg(long, short, default_value_t = super::DEFAULT_PORT)]
    pub port: u16,
    /// Directory for all replicas' data (a relative one is under the
    /// current directory).
    #[arg(long, value_name = "DIR", default_value = "availdb-data")]
    pub data_dir: PathBuf,
    /// Secondaries use ASYNCHRONOUS_COMMIT (default: SYNCHRONOUS_COMMIT).
    #[arg(long = "async")]
    pub asynchronous: bool,
    /// Number of regions (independent clusters, each with its own group),
    /// region A's `app` geo-replicated to every other one.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=4))]
    pub regions: u16,
    /// Partner traffic in plaintext: no CA, no node certificates (by
    /// default `up` makes both and every node uses mutual TLS).
    #[arg(long)]
    pub no_partner_tls: bool,
    /// Leave a node that exits down instead of restarting it: for failover
    /// drills and benchmarks that kill a node and restart it themselves
    /// (by default `up` restarts it after 1 s, which can be before the
    /// group has failed over).
    #[arg(long)]
    pub no_restart: bool,
}

/// One region's part of the layout.
struct Region {
    /// Its server name (A, B, …); None when `up` runs one region.
    name: Option<String>,
    /// Its listener's read-write port.
    port: u16,
    /// Where its replicas' data lives.
    dir: PathBuf,
    nodes: Vec<Node>,
}

/// `availdb up --help`'s closing lines: where each replica lives, and the
/// settings its node runs with.
pub(super) fn layout() -> String {
    format!(
        "Replica ri (i = 1..N) serves clients on 127.0.0.1:PORT+1+i and has its replication \
         endpoint on 127.0.0.1:PORT+99+i and its HTTP health checks and metrics on \
         127.0.0.1:PORT+149+i; its data and node.log are in DIR/ri. Every node is an \
         `availdb server` on 127.0.0.1 with no password, partner TLS from a CA in \
         DIR/partner-ca (unless --no-partner-tls) and the other defaults (listener \
         hold {} ms); synchronous secondaries fail over automatically. `up` restarts a node \
         that exits (after 1 s, doubling up to 30 s while it keeps failing; --no-restart \
         leaves it down) and prints a line for each restart, failover and synchronization \
         change. Running `up` again on the same DIR resumes the group.",
        crate::listener::DEFAULT_HOLD.as_millis()
    )
}

struct Node {
    name: String,
    port: u16,
    endpoint: SocketAddr,
    /// Its HTTP server (health checks, metrics).
    http_port: u16,
    /// Its data directory (node.log inside).
    dir: PathBuf,
    /// The CA its partner TLS trusts (its certificate is in
    /// `dir/partner-tls`); None: plaintext.
    partner_ca: Option<PathBuf>,
    child: Child,
    /// When the running process started.
    started: Instant,
    /// Restarts in a row that ran less than [`STEADY`].
    failures: u32,
    /// When a node that exited is due to start again.
    restart_at: Option<Instant>,
    /// It exited and `--no-restart` leaves it down (reported once).
    left_down: bool,
}

/// A restarted node that runs this long counts as recovered: the next exit
/// waits [`FIRST_BACKOFF`] again.
const STEADY: Duration = Duration::from_secs(60);
/// The wait before the first restart; each failure in a row doubles it.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Runs the group (or the regions) until Ctrl-C or SIGTERM, then stops
/// every node.
pub async fn run(args: UpArgs) -> Result<(), String> {
    let last_port = args.port as u32 + 200 * (args.regions as u32 - 1) + 150 + args.replicas as u32;
    if last_port > u16::MAX as u32 {
        return Err(format!(
            "--port {} leaves no room for {} regions of {} replicas",
            args.port, args.regions, args.replicas
        ));
    }
    let mut regions: Vec<Region> = Vec::new();
    for k in 0..args.regions {
        let name = (args.regions > 1).then(|| ((b'A' + k as u8) as char).to_string());
        let dir = match &name {
            Some(n) => args.data_dir.join(n),
            None => args.data_dir.clone(),
        };
        let port = args.port + 200 * k;
        let started = start_nodes(&args, port, &dir).await;
        let nodes = match started {
            Ok(nodes) => nodes,
            Err(e) => {
                for r in &mut regions {
                    stop_all(&mut r.nodes).await;
                }
                return Err(e);
            }
        };
        regions.push(Region {
            name,
            port,
            dir,
            nodes,
        });
    }
    let mut result = Ok(());
    for (k, region) in regions.iter_mut().enumerate() {
        result = set_up(&args, region, k == 0).await;
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() && regions.len() > 1 {
        result = link_regions(&regions).await;
    }
    if let Err(e) = result {
        for r in &mut regions {
            stop_all(&mut r.nodes).await;
        }
        return Err(e);
    }
    for region in &regions {
        print_urls(region);
    }
    println!(
        "  data and logs: {}   (Ctrl-C stops {})",
        args.data_dir.display(),
        if regions.len() > 1 {
            "every region"
        } else {
            "the group"
        }
    );
    supervise(&mut regions, !args.no_restart).await;
    eprintln!("stopping…");
    for r in &mut regions {
        stop_all(&mut r.nodes).await;
    }
    Ok(())
}

/// Starts one region's node processes.
async fn start_nodes(
    args: &UpArgs,
    base: u16,
    region_dir: &std::path::Path,
) -> Result<Vec<Node>, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the availdb binary: {e}"))?;
    let partner_ca = match args.no_partner_tls {
        true => None,
        false => Some(partner_ca(&args.data_dir)?),
    };
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..args.replicas {
        let name = format!("r{}", i + 1);
        let port = base + 2 + i;
        let endpoint = SocketAddr::from(([127, 0, 0, 1], base + 100 + i));
        let dir = region_dir.join(&name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let http_port = base + 150 + i;
        if let Some(ca) = &partner_ca {
            partner_certificate(ca, &dir, &name)?;
        }
        let spawned = spawn_node(
            &exe,
            &name,
            &dir,
            port,
            endpoint,
            http_port,
            partner_ca.as_deref(),
            true,
        );
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                stop_all(&mut nodes).await;
                return Err(e);
            }
        };
        nodes.push(Node {
            name,
            port,
            endpoint,
            http_port,
            dir,
            partner_ca: partner_ca.clone(),
            child,
            started: Instant::now(),
            failures: 0,
            restart_at: None,
            left_down: false,
        });
    }
    Ok(nodes)
}

/// The CA of the group's partner TLS, `DIR/partner-ca/ca.pem`, made on the
/// first `up`.
fn partner_ca(data_dir: &Path) -> Result<PathBuf, String> {
    let dir = data_dir.join("partner-ca");
    let ca = dir.join("ca.pem");
    if !ca.exists() {
        super::cert::init(&dir)?;
    }
    Ok(ca)
}

/// Replica `name`'s partner certificate, `DIR/partner-tls/NAME.pem` (and
/// `.key`), issued by `ca` for 127.0.0.1 on the first `up`.
fn partner_certificate(ca: &Path, dir: &Path, name: &str) -> Result<(), String> {
    let out = dir.join("partner-tls");
    if !out.join(format!("{name}.pem")).exists() {
        let ca_dir = ca.parent().unwrap_or(Path::new("."));
        super::cert::issue_to(
            ca_dir,
            &out,
            name,
            &["127.0.0.1".into(), "localhost".into()],
            super::cert::Validity::default(),
        )?;
    }
    Ok(())
}

/// Starts one node process, its stderr appended to (or, `fresh`, starting)
/// `DIR/node.log`; with `partner_ca`, its partner TLS files.
#[allow(clippy::too_many_arguments)]
fn spawn_node(
    exe: &Path,
    name: &str,
    dir: &Path,
    port: u16,
    endpoint: SocketAddr,
    http_port: u16,
    partner_ca: Option<&Path>,
    fresh: bool,
) -> Result<Child, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(!fresh)
        .truncate(fresh)
        .open(dir.join("node.log"))
        .map_err(|e| format!("cannot open the log file in {}: {e}", dir.display()))?;
    let mut command = Command::new(exe);
    command.arg("server");
    if let Some(ca) = partner_ca {
        let files = dir.join("partner-tls");
        command
            .arg("--partner-tls-cert")
            .arg(files.join(format!("{name}.pem")))
            .arg("--partner-tls-key")
            .arg(files.join(format!("{name}.key")))
            .arg("--partner-ca")
            .arg(ca);
    }
    command
        .args(["--data-dir", &dir.display().to_string()])
        .args(["--port", &port.to_string()])
        .args(["--host", "127.0.0.1"])
        .args(["--name", name])
        .args(["--endpoint", &endpoint.to_string()])
        .args(["--http-port", &http_port.to_string()])
        .env_remove("AVAILDB_PASSWORD")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}"))
}

/// Prints one event line, with the time.
fn event(line: String) {
    println!("{} {line}", chrono::Local::now().format("%H:%M:%S"));
}

/// Keeps the nodes running until Ctrl-C or SIGTERM: restarts a node that
/// exits (with back-off; unless `restart` is false) and reports exits,
/// restarts, failovers and changes of the secondaries' synchronization
/// states, one line each.
async fn supervise(regions: &mut [Region], restart: bool) {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            event(format!(
                "cannot find the availdb binary to restart nodes with: {e}"
            ));
            super::shutdown_signal().await;
            return;
        }
    };
    let shutdown = super::shutdown_signal();
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut watched: Vec<Watched> = regions.iter().map(|_| Watched::default()).collect();
    let mut last_look = Instant::now();
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        for region in regions.iter_mut() {
            for node in &mut region.nodes {
                keep_running(&exe, node, restart);
            }
        }
        if last_look.elapsed() >= Duration::from_secs(1) {
            last_look = Instant::now();
            for (region, seen) in regions.iter().zip(&mut watched) {
                look(region, seen).await;
            }
        }
    }
}

/// Restarts `node` if its process exited (once its back-off passed), or
/// reports once that it is left down when `restart` is false.
fn keep_running(exe: &std::path::Path, node: &mut Node, restart: bool) {
    if node.left_down {
        return;
    }
    if let Some(at) = node.restart_at {
        if Instant::now() < at {
            return;
        }
        node.restart_at = None;
        match spawn_node(
            exe,
            &node.name,
            &node.dir,
            node.port,
            node.endpoint,
            node.http_port,
            node.partner_ca.as_deref(),
            false,
        ) {
            Ok(child) => {
                node.child = child;
                node.started = Instant::now();
                event(format!(
                    "{} restarted (pid {})",
                    node.name,
                    node.child.id().unwrap_or(0)
                ));
            }
            Err(e) => {
                node.failures += 1;
                let wait = backoff(node.failures);
                event(format!("{e}; trying again in {} s", wait.as_secs()));
                node.restart_at = Some(Instant::now() + wait);
            }
        }
        return;
    }
    let Ok(Some(status)) = node.child.try_wait() else {
        return;
    };
    if !restart {
        node.left_down = true;
        event(format!(
            "{} exited ({status}); left down (--no-restart; its log: {})",
            node.name,
            node.dir.join("node.log").display()
        ));
        return;
    }
    if node.started.elapsed() >= STEADY {
        node.failures = 0;
    }
    node.failures += 1;
    let wait = backoff(node.failures);
    event(format!(
        "{} exited unexpectedly ({status}); restarting it in {} s (its log: {})",
        node.name,
        wait.as_secs(),
        node.dir.join("node.log").display()
    ));
    node.restart_at = Some(Instant::now() + wait);
}

/// The wait before restart number `failures` in a row.
fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << failures.saturating_sub(1).min(5))
        .min(MAX_BACKOFF)
}

/// What `up` last reported of a region.
#[derive(Default)]
struct Watched {
    primary: Option<String>,
    states: std::collections::BTreeMap<String, String>,
}

/// Asks a region's nodes who is primary and how its secondaries stand,
/// and reports what changed.
async fn look(region: &Region, seen: &mut Watched) {
    let label = region
        .name
        .as_ref()
        .map_or(String::new(), |n| format!("region {n}: "));
    for node in &region.nodes {
        let Ok(Ok(client)) =
            tokio::time::timeout(Duration::from_secs(2), connect(node.port, "availdb")).await
        else {
            continue;
        };
        let asked = tokio::time::timeout(
            Duration::from_secs(2),
            client.simple_query(
                "SELECT primary_replica FROM sys.availability_groups WHERE name = 'ag1'",
            ),
        )
        .await;
        let Some(primary) = first_text(asked) else {
            continue;
        };
        if seen.primary.as_ref() != Some(&primary) {
            if let Some(old) = &seen.primary {
                event(format!(
                    "{label}failover: {primary} is now the primary of ag1 (was {old})"
                ));
            }
            seen.primary = Some(primary.clone());
        }
        let Some(p) = region.nodes.iter().find(|n| n.name == primary) else {
            return;
        };
        let Ok(Ok(client)) =
            tokio::time::timeout(Duration::from_secs(2), connect(p.port, "availdb")).await
        else {
            return;
        };
        let Ok(Ok(rows)) = tokio::time::timeout(
            Duration::from_secs(2),
            client.simple_query(
                "SELECT replica, synchronization_state_desc FROM sys.dm_hadr_database_replica_states \
                 WHERE NOT is_local AND database_name = 'app'",
            ),
        )
        .await
        else {
            return;
        };
        for row in rows {
            let tokio_postgres::SimpleQueryMessage::Row(row) = row else {
                continue;
            };
            let (Some(replica), Some(state)) = (row.get(0), row.get(1)) else {
                continue;
            };
            let before = seen.states.insert(replica.to_string(), state.to_string());
            if let Some(before) = before.filter(|b| b != state) {
                event(format!("{label}{replica}: {before} → {state}"));
            }
        }
        return;
    }
}

fn first_text(
    answer: Result<
        Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error>,
        tokio::time::error::Elapsed,
    >,
) -> Option<String> {
    answer.ok()?.ok()?.into_iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
        _ => None,
    })
}

/// Names the regions, registers each as a partner of the others, and
/// links region A's `app` to a geo-secondary in every other region.
async fn link_regions(regions: &[Region]) -> Result<(), String> {
    let mut primaries = Vec::new();
    for region in regions {
        let name = region.name.clone().unwrap_or_default();
        let client = connect(region.nodes[0].port, "availdb")
            .await
            .map_err(|e| format!("region {name}: {e}"))?;
        run_sql(
            &client,
            &name,
            &format!("ALTER CLUSTER SET (SERVER_NAME = '{name}')"),
        )
        .await?;
        primaries.push((name, client));
    }
    for (name, client) in &primaries {
        for other in regions {
            let other_name = other.name.clone().unwrap_or_default();
            if &other_name == name {
                continue;
            }
            let urls: Vec<String> = other
                .nodes
                .iter()
                .map(|n| format!("tcp://{}", n.endpoint))
                .collect();
            run_sql(
                client,
                name,
                &format!(
                    "ALTER CLUSTER ADD PARTNER SERVER '{other_name}' WITH (ENDPOINT_URL = '{}')",
                    urls.join(", ")
                ),
            )
            .await?;
        }
    }
    let (a_name, a) = &primaries[0];
    let linked = a
        .query("SELECT partner_server FROM sys.geo_replication_links", &[])
        .await
        .map_err(|e| format!("region {a_name}: {}", error_text(&e)))?;
    for (name, _) in &primaries[1..] {
        let done = linked
            .iter()
            .any(|row| row.get::<_, String>(0).eq_ignore_ascii_case(name));
        if !done {
            run_sql(
                a,
                a_name,
                &format!("ALTER DATABASE app ADD SECONDARY ON SERVER '{name}' WITH (DATABASE_NAME = 'app')"),
            )
            .await?;
        }
    }
    // Ready when every region's listener serves its copy of `app` (the
    // URLs printed next must work at once).
    for region in &regions[1..] {
        wait_for_listener(region.port, Duration::from_secs(60))
            .await
            .map_err(|e| {
                format!(
                    "region {}: the geo-secondary app is not served: {e} (see sys.dm_geo_replication_link_status on region {a_name})",
                    region.name.clone().unwrap_or_default()
                )
            })?;
    }
    Ok(())
}

async fn run_sql(client: &tokio_postgres::Client, region: &str, sql: &str) -> Result<(), String> {
    client
        .batch_execute(sql)
        .await
        .map_err(|e| format!("region {region}: {sql}: {}", error_text(&e)))
}

async fn connect(port: u16, db: &str) -> Result<tokio_postgres::Client, String> {
    let conn_str = format!("host=127.0.0.1 port={port} user=availdb dbname={db} connect_timeout=2");
    let (client, connection) = tokio_postgres::connect(&conn_str, NoTls)
        .await
        .map_err(|e| error_text(&e))?;
    tokio::spawn(connection);
    Ok(client)
}

/// Creates (or resumes) one region's group; only the first region's group
/// holds a database of its own (the others get geo-secondaries).
async fn set_up(args: &UpArgs, region: &mut Region, holds_app: bool) -> Result<(), String> {
    let nodes = &mut region.nodes;
    let mut clients = Vec::new();
    for node in nodes.iter_mut() {
        clients.push(connect_when_ready(node, &region.dir).await?);
    }
    let primary = &clients[0];
    let existing = primary
        .query(
            "SELECT name FROM sys.availability_groups WHERE name = 'ag1'",
            &[],
        )
        .await
        .map_err(|e| format!("r1: {e}"))?;
    if !existing.is_empty() {
        return Ok(());
    }
    for (node, client) in nodes.iter().zip(&clients).skip(1) {
        client
            .batch_execute("ALTER AVAILABILITY GROUP ag1 JOIN")
            .await
            .map_err(|e| format!("{}: {}", node.name, error_text(&e)))?;
    }
    if holds_app {
        match primary.batch_execute("CREATE DATABASE app").await {
            Ok(()) => {}
            Err(e) if e.code().is_some_and(|c| c.code() == "42P04") => {}
            Err(e) => return Err(format!("r1: {}", error_text(&e))),
        }
    }
    // Automatic failover needs synchronous commit (as in SQL Server).
    let (mode, failover) = if args.asynchronous {
        ("ASYNCHRONOUS_COMMIT", "MANUAL")
    } else {
        ("SYNCHRONOUS_COMMIT", "AUTOMATIC")
    };
    // As primary, each replica routes read intent round-robin over the
    // others, and takes it itself when none of them is available.
    let replicas: Vec<String> = nodes
        .iter()
        .map(|n| {
            let others: Vec<String> = nodes
                .iter()
                .filter(|o| o.name != n.name)
                .map(|o| format!("'{}'", o.name))
                .collect();
            format!(
                "'{}' WITH (ENDPOINT_URL = 'tcp://{}', AVAILABILITY_MODE = {mode}, FAILOVER_MODE = {failover}, \
                 SECONDARY_ROLE (ALLOW_CONNECTIONS = ALL, READ_ONLY_ROUTING_URL = 'tcp://127.0.0.1:{}'), \
                 PRIMARY_ROLE (READ_ONLY_ROUTING_LIST = (({}), '{}')))",
                n.name,
                n.endpoint,
                n.port,
                others.join(", "),
                n.name
            )
        })
        .collect();
    let create = format!(
        "CREATE AVAILABILITY GROUP ag1 FOR {} REPLICA ON {} \
         LISTENER 'ag1-listener' (PORT = {}, READ_ONLY_PORT = {})",
        if holds_app { "DATABASE app" } else { "" },
        replicas.join(", "),
        region.port,
        region.port + 1
    );
    primary
        .batch_execute(&create)
        .await
        .map_err(|e| format!("r1: {}", error_text(&e)))?;
    if holds_app {
        wait_for_listener(region.port, Duration::from_secs(30)).await
    } else {
        Ok(())
    }
}

/// Waits (bounded) until a session through the listener answers.
async fn wait_for_listener(port: u16, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let conn_str = format!("host=127.0.0.1 port={port} user=availdb dbname=app connect_timeout=2");
    loop {
        let last = match tokio_postgres::connect(&conn_str, NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                match client.simple_query("SELECT 1").await {
                    Ok(_) => return Ok(()),
                    Err(e) => error_text(&e),
                }
            }
            Err(e) => error_text(&e),
        };
        if Instant::now() > deadline {
            return Err(format!(
                "the listener on port {port} did not answer within {} s: {last}",
                within.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// Connects to a node, waiting (bounded) for it to start.
async fn connect_when_ready(
    node: &mut Node,
    dir: &std::path::Path,
) -> Result<tokio_postgres::Client, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let conn_str = format!(
        "host=127.0.0.1 port={} user=availdb dbname=availdb connect_timeout=2",
        node.port
    );
    loop {
        if let Ok(Some(status)) = node.child.try_wait() {
            return Err(format!(
                "{} exited ({status}); see {}",
                node.name,
                dir.join(&node.name).join("node.log").display()
            ));
        }
        if let Ok((client, connection)) = tokio_postgres::connect(&conn_str, NoTls).await {
            tokio::spawn(connection);
            return Ok(client);
        }
        if Instant::now() > deadline {
            return Err(format!("{} did not start within 30 s", node.name));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn print_urls(region: &Region) {
    let nodes = &region.nodes;
    match &region.name {
        None => println!(
            "availability group ag1 is up ({} replicas, database app):",
            nodes.len()
        ),
        Some(name) if name == "A" => println!(
            "region A (server 'A'): availability group ag1, {} replicas, database app (the geo-replication source):",
            nodes.len()
        ),
        Some(name) => println!(
            "region {name} (server '{name}'): availability group ag1, {} replicas, database app (a read-only geo-secondary of A's app):",
            nodes.len()
        ),
    }
    println!(
        "  listener (read-write): postgresql://availdb@127.0.0.1:{}/app",
        region.port
    );
    println!(
        "  listener (read-only):  postgresql://availdb@127.0.0.1:{}/app",
        region.port + 1
    );
    for (i, n) in nodes.iter().enumerate() {
        let role = if i == 0 { "primary" } else { "secondary" };
        println!(
            "  {} ({role}): postgresql://availdb@127.0.0.1:{}/app   endpoint tcp://{}   dashboard, health and metrics http://127.0.0.1:{}/",
            n.name, n.port, n.endpoint, n.http_port
        );
    }
    let hosts: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    println!(
        "  without the listener: postgresql://availdb@{}/app?target_session_attrs=read-write",
        hosts.join(",")
    );
    println!(
        "  replicas and lag, live: availdb status --port {}",
        region.port
    );
}

async fn stop_all(nodes: &mut [Node]) {
    for node in nodes.iter() {
        if let Some(pid) = node.child.id() {
            // SAFETY: kill(2) with a pid we spawned and a valid signal.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
    }
    for node in nodes.iter_mut() {
        if tokio::time::timeout(Duration::from_secs(10), node.child.wait())
            .await
            .is_err()
        {
            let _ = node.child.kill().await;
        }
    }
}
