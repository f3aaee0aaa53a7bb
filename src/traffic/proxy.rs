//! The forwarding loop: accept, choose (or hold), connect, relay bytes
//! both ways until either side closes — or, with a drain grace, until the
//! grace after its endpoint was taken out.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use super::service::TrafficManager;

/// How long one connect to an endpoint may take before the next choice.
const CONNECT_WITHIN: Duration = Duration::from_secs(2);
/// After every healthy endpoint refused this connection, how long before
/// they are tried again.
const RETRY_AFTER: Duration = Duration::from_millis(50);

/// Accepts and forwards connections for ever.
pub async fn serve(tm: Arc<TrafficManager>, listener: TcpListener) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: pause, go on.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        let tm = tm.clone();
        tokio::spawn(async move {
            forward(tm, client, peer).await;
        });
    }
}

async fn forward(tm: Arc<TrafficManager>, mut client: TcpStream, peer: std::net::SocketAddr) {
    let deadline = tokio::time::Instant::now() + tm.hold();
    let mut changes = tm.subscribe();
    let mut excluded: Vec<String> = Vec::new();
    let (routed, mut server) = loop {
        let excluded_refs: Vec<&str> = excluded.iter().map(String::as_str).collect();
        changes.borrow_and_update();
        match tm.route(&excluded_refs) {
            Ok(routed) => {
                let within = CONNECT_WITHIN.min(deadline - tokio::time::Instant::now());
                match tokio::time::timeout(within, TcpStream::connect(&routed.target)).await {
                    Ok(Ok(server)) => break (routed, server),
                    Ok(Err(e)) => {
                        tracing::debug!(endpoint = %routed.name, error = %e, "connect failed; choosing again");
                    }
                    Err(_) => {
                        tracing::debug!(endpoint = %routed.name, "connect timed out; choosing again");
                    }
                }
                tm.connect_failed(&routed.name);
                excluded.push(routed.name);
            }
            Err(reason) => {
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    tracing::warn!(%peer, "closing a held connection after the hold time: {}", reason.describe());
                    return;
                }
                if excluded.is_empty() {
                    // Wait for a change of the profile or of a probe.
                    let _ = tokio::time::timeout_at(deadline, changes.changed()).await;
                } else {
                    // Every healthy endpoint refused this one: try them
                    // again shortly (their probes are hurried meanwhile).
                    tokio::time::sleep(RETRY_AFTER.min(deadline - now)).await;
                    excluded.clear();
                }
            }
        }
    };
    let _ = server.set_nodelay(true);
    routed.connections.fetch_add(1, Ordering::Relaxed);
    routed.total.fetch_add(1, Ordering::Relaxed);
    let relay = tokio::io::copy_bidirectional(&mut client, &mut server);
    match tm.drain_grace() {
        None => {
            let _ = relay.await;
        }
        Some(grace) => {
            tokio::select! {
                _ = relay => {}
                _ = drained(&tm, &routed.name, routed.generation, grace) => {
                    tracing::info!(endpoint = %routed.name, %peer, "closing a connection: its endpoint was taken out and the drain grace is over");
                }
            }
        }
    }
    routed.connections.fetch_sub(1, Ordering::Relaxed);
}

/// Resolves once `name` has not taken connections for `grace`.
async fn drained(tm: &TrafficManager, name: &str, generation: u64, grace: Duration) {
    let mut changes = tm.subscribe();
    loop {
        changes.borrow_and_update();
        if !tm.still_online(name, generation) {
            let back = tokio::time::timeout(grace, async {
                loop {
                    if changes.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                    if tm.still_online(name, generation) {
                        return;
                    }
                }
            })
            .await;
            if back.is_err() {
                return;
            }
        } else if changes.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
