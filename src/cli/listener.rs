//! `availdb listener --join HOST:PORT`: a stand-alone listener host.
//!
//! A node with no replica that follows the cluster's state without voting
//! (a Raft learner) and so runs every group's listener (`src/listener/`)
//! from the cluster's definitions: clients connect to this host, sessions
//! go to the current primary or along the read-only routing list. It is a
//! `server` in witness mode (it refuses to host replicas) that, once up,
//! asks a member (`--join`, any node's client address) to add it with
//! `ALTER CLUSTER ADD NODE … WITH (ENDPOINT_URL = …, VOTE = OFF)`; on a
//! restart it finds itself already a member and skips that.

use std::time::Duration;

use clap::Args;

use super::cluster::{connect, execute, quote, text_rows};
use super::{run_server, ServerArgs};

/// How long the node keeps trying to join (the member may be starting).
const JOIN_PATIENCE: Duration = Duration::from_secs(60);

/// `availdb listener` options.
#[derive(Debug, Args)]
pub struct ListenerArgs {
    /// The node's own settings, as for `availdb server` (`--endpoint` is
    /// required: the cluster reaches the listener there).
    #[command(flatten)]
    pub server: ServerArgs,
    /// Client address (HOST:PORT) of any node of the cluster to follow.
    #[arg(long, value_name = "HOST:PORT")]
    pub join: String,
}

/// Runs a stand-alone listener until it is stopped.
pub async fn run(args: ListenerArgs) -> Result<(), String> {
    let mut server = args.server;
    server.witness = true;
    let config = server.resolve()?;
    let endpoint = config
        .endpoint
        .ok_or("a stand-alone listener needs --endpoint HOST:PORT: the cluster reaches it there")?;
    let (host, port) = args
        .join
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| format!("--join {:?} is not HOST:PORT", args.join))?;
    let (name, password) = (config.name.clone(), config.password.clone());
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + JOIN_PATIENCE;
        loop {
            match join(&host, port, &password, &name, endpoint).await {
                Ok(joined) => {
                    tracing::info!(node = %name, via = %format!("{host}:{port}"), "{joined}");
                    return;
                }
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!("joining the cluster as a listener: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    tracing::error!("cannot join the cluster at {host}:{port} as a listener: {e}");
                    return;
                }
            }
        }
    });
    run_server(config).await
}

/// Adds this node to the cluster as a non-voting member, unless it is one.
async fn join(
    host: &str,
    port: u16,
    password: &Option<String>,
    name: &str,
    endpoint: std::net::SocketAddr,
) -> Result<&'static str, String> {
    let member = connect(host, port, password).await?;
    let sql = format!(
        "SELECT member_type_desc FROM sys.dm_hadr_cluster_members WHERE member_name = {}",
        quote(name)
    );
    let rows = member
        .simple_query(&sql)
        .await
        .map_err(|e| format!("{sql}: {e}"))?;
    if !text_rows(&rows).is_empty() {
        return Ok("already a member of the cluster: following it");
    }
    execute(
        &member,
        &format!(
            "ALTER CLUSTER ADD NODE {} WITH (ENDPOINT_URL = {}, VOTE = OFF)",
            quote(name),
            quote(&format!("tcp://{endpoint}"))
        ),
    )
    .await?;
    Ok("joined the cluster as a non-voting member: serving its groups' listeners")
}
