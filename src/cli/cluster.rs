//! `availdb cluster status`: what the quorum cluster manager looks like
//! from one node — leader, term, quorum, members, and each group's primary
//! and epoch. It reads the `sys` views over the PostgreSQL protocol, so it
//! works against any node, local or remote.
//!
//! The cluster itself forms when `CREATE AVAILABILITY GROUP` runs (its
//! replicas become the voters); nodes rejoin from their own files after a
//! restart.

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
    /// Show the cluster as one node sees it.
    Status(Target),
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
        ClusterCommand::Status(target) => status(&target).await,
    }
}

async fn status(target: &Target) -> Result<(), String> {
    let mut conn = format!(
        "host={} port={} user=availdb dbname=availdb connect_timeout=5",
        target.host, target.port
    );
    if let Some(password) = &target.password {
        conn.push_str(&format!(" password='{}'", password.replace('\'', "\\'")));
    }
    let (client, connection) = tokio_postgres::connect(&conn, NoTls)
        .await
        .map_err(|e| format!("cannot connect to {}:{}: {e}", target.host, target.port))?;
    tokio::spawn(connection);
    let query = |sql: &'static str| {
        let client = &client;
        async move {
            client
                .simple_query(sql)
                .await
                .map_err(|e| format!("{sql}: {e}"))
        }
    };
    let cluster = query("SELECT cluster_name, quorum_state_desc, coalesce(leader, '(none)'), term, local_state_desc FROM sys.dm_hadr_cluster").await?;
    let rows = text_rows(&cluster);
    match rows.first() {
        None => println!("this node is not in a cluster (it joins one when an availability group with it is created)"),
        Some(r) => println!(
            "cluster {}: {}, leader {}, term {}; this node is {}",
            r[0], r[1], r[2], r[3], r[4]
        ),
    }
    let members = query("SELECT member_name, endpoint_url, is_leader, is_local FROM sys.dm_hadr_cluster_members ORDER BY member_name").await?;
    for r in text_rows(&members) {
        let mut tags = Vec::new();
        if r[2] == "t" {
            tags.push("leader");
        }
        if r[3] == "t" {
            tags.push("this node");
        }
        println!("  voter {:<12} {}  {}", r[0], r[1], tags.join(", "));
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

fn text_rows(messages: &[tokio_postgres::SimpleQueryMessage]) -> Vec<Vec<String>> {
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
