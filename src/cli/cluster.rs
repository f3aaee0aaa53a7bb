//! `availdb cluster init | join | leave | status`: the quorum cluster
//! manager's voters, managed from the command line. Every subcommand is a
//! PostgreSQL client of the nodes, so it works against local and remote
//! nodes alike:
//!
//! * `init` runs `CREATE CLUSTER` on a node: a cluster of that node alone.
//! * `join` reads a node's name and endpoint from its `sys.dm_hadr_cluster`
//!   and runs `ALTER CLUSTER ADD NODE` on a member (`--via`); the leader
//!   adds it as a learner, lets it catch up, then makes it a voter.
//! * `leave` runs `ALTER CLUSTER REMOVE NODE` for a node on the node itself
//!   (forwarded to the leader); refused while it hosts a replica.
//! * `status` shows leader, term, quorum, members, and each group's
//!   primary and epoch.
//!
//! Without `init`, the cluster forms when `CREATE AVAILABILITY GROUP` runs
//! (its replicas become the voters); nodes rejoin from their own files
//! after a restart.

use clap::{Args, Subcommand};
use tokio_postgres::NoTls;

/// `availdb cluster …`.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ClusterCommand,
}

/// Cluster subcommands.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Start a cluster whose only voter is the given node.
    Init(Target),
    /// Make the given node (a witness, or a future replica host) a voter of
    /// the cluster that the node at --via belongs to.
    Join(JoinArgs),
    /// Take the given node out of its cluster's voters.
    Leave(Target),
    /// Show the cluster as one node sees it.
    Status(Target),
}

/// `availdb cluster join`.
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// The node that joins.
    #[command(flatten)]
    pub node: Target,
    /// Client address (HOST:PORT) of any node of the cluster to join.
    #[arg(long, value_name = "HOST:PORT")]
    pub via: String,
    /// The URL the cluster reaches the joining node at, when it differs
    /// from the endpoint it listens on (NAT, a wildcard address).
    #[arg(long, value_name = "tcp://HOST:PORT")]
    pub endpoint_url: Option<String>,
}

/// Which node to ask.
#[derive(Debug, Args)]
pub struct Target {
    /// The node's host.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The node's client port.
    #[arg(long, short, default_value_t = super::DEFAULT_PORT)]
    pub port: u16,
    /// Password of user `availdb`, if the node has one.
    #[arg(long, env = "AVAILDB_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
}

/// Runs a cluster subcommand.
pub async fn run(args: ClusterArgs) -> Result<(), String> {
    match args.command {
        ClusterCommand::Init(target) => {
            let client = connect(&target.host, target.port, &target.password).await?;
            execute(&client, "CREATE CLUSTER").await?;
            let (name, url) = identity(&client).await?;
            println!("cluster started with node {name} ({url}) as its only voter; add nodes with: availdb cluster join --port <their port> --via {}:{}", target.host, target.port);
            Ok(())
        }
        ClusterCommand::Join(args) => join(&args).await,
        ClusterCommand::Leave(target) => {
            let client = connect(&target.host, target.port, &target.password).await?;
            let (name, _) = identity(&client).await?;
            execute(
                &client,
                &format!("ALTER CLUSTER REMOVE NODE {}", quote(&name)),
            )
            .await?;
            println!("node {name} left the cluster");
            Ok(())
        }
        ClusterCommand::Status(target) => status(&target).await,
    }
}

async fn join(args: &JoinArgs) -> Result<(), String> {
    let node = connect(&args.node.host, args.node.port, &args.node.password).await?;
    let (name, listen_url) = identity(&node).await?;
    let url = args.endpoint_url.clone().unwrap_or(listen_url);
    let (host, port) = args
        .via
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .ok_or_else(|| format!("--via {:?} is not HOST:PORT", args.via))?;
    let member = connect(host, port, &args.node.password).await?;
    execute(
        &member,
        &format!(
            "ALTER CLUSTER ADD NODE {} WITH (ENDPOINT_URL = {})",
            quote(&name),
            quote(&url)
        ),
    )
    .await?;
    println!(
        "node {name} ({url}) is a voter of the cluster of {}",
        args.via
    );
    Ok(())
}

/// A node's name and endpoint URL, from its `sys.dm_hadr_cluster`.
async fn identity(client: &tokio_postgres::Client) -> Result<(String, String), String> {
    let sql = "SELECT local_member_name, local_endpoint_url FROM sys.dm_hadr_cluster";
    let rows = client
        .simple_query(sql)
        .await
        .map_err(|e| format!("{sql}: {}", describe(&e)))?;
    text_rows(&rows)
        .into_iter()
        .next()
        .map(|r| (r[0].clone(), r[1].clone()))
        .ok_or_else(|| {
            "the node takes no part in a cluster: start it with --endpoint HOST:PORT".into()
        })
}

pub(super) async fn execute(client: &tokio_postgres::Client, sql: &str) -> Result<(), String> {
    client
        .batch_execute(sql)
        .await
        .map_err(|e| format!("{sql}: {}", describe(&e)))
}

/// The server's message, SQLSTATE and hint, when the error has them.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = format!("{} ({})", db.message(), db.code().code());
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; hint: {hint}"));
            }
            text
        }
        None => e.to_string(),
    }
}

/// A SQL string literal.
pub(super) fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

pub(super) async fn connect(
    host: &str,
    port: u16,
    password: &Option<String>,
) -> Result<tokio_postgres::Client, String> {
    let mut conn = format!("host={host} port={port} user=availdb dbname=availdb connect_timeout=5");
    if let Some(password) = password {
        conn.push_str(&format!(" password='{}'", password.replace('\'', "\\'")));
    }
    let (client, connection) = tokio_postgres::connect(&conn, NoTls)
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    tokio::spawn(connection);
    Ok(client)
}

async fn status(target: &Target) -> Result<(), String> {
    let client = connect(&target.host, target.port, &target.password).await?;
    let query = |sql: &'static str| {
        let client = &client;
        async move {
            client
                .simple_query(sql)
                .await
                .map_err(|e| format!("{sql}: {e}"))
        }
    };
    let cluster = query("SELECT cluster_name, quorum_state_desc, coalesce(leader, '(none)'), term, local_state_desc, coalesce(cluster_id, '(none yet)') FROM sys.dm_hadr_cluster").await?;
    let rows = text_rows(&cluster);
    match rows.first() {
        None => println!("this node is not in a cluster (it joins one when an availability group with it is created)"),
        Some(r) => println!(
            "cluster {} (id {}): {}, leader {}, term {}; this node is {}",
            r[0], r[5], r[1], r[2], r[3], r[4]
        ),
    }
    let members = query("SELECT member_name, endpoint_url, is_leader, is_local, member_type_desc FROM sys.dm_hadr_cluster_members ORDER BY member_name").await?;
    for r in text_rows(&members) {
        let mut tags = Vec::new();
        if r[2] == "t" {
            tags.push("leader");
        }
        if r[3] == "t" {
            tags.push("this node");
        }
        let kind = if r[4] == "VOTER" {
            "voter"
        } else {
            "non-voter"
        };
        println!("  {kind} {:<12} {}  {}", r[0], r[1], tags.join(", "));
    }
    let groups = query("SELECT name, primary_replica, epoch, cluster_type_desc FROM sys.availability_groups ORDER BY name").await?;
    for r in text_rows(&groups) {
        println!(
            "group {}: primary {} at epoch {} ({})",
            r[0], r[1], r[2], r[3]
        );
    }
    let states = query("SELECT group_id, replica, role_desc, connected_state_desc, synchronization_health_desc FROM sys.dm_hadr_availability_replica_states ORDER BY group_id, replica").await?;
    for r in text_rows(&states) {
        println!("  {} {:<12} {:<10} {:<13} {}", r[0], r[1], r[2], r[3], r[4]);
    }
    Ok(())
}

pub(super) fn text_rows(messages: &[tokio_postgres::SimpleQueryMessage]) -> Vec<Vec<String>> {
    messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or("").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}
