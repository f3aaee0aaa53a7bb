//! The probes' I/O: one check of an endpoint, by TCP connect, HTTP GET or
//! a PostgreSQL session, bounded by the probe's timeout. The verdict is
//! the probe state machine's ([`super::probe`]).

use std::time::Duration;

use super::profile::{split_target, ProbeDef, Protocol};

/// Checks `target` once as `probe` says; `Err` says why it failed.
pub async fn check(target: &str, probe: &ProbeDef) -> Result<(), String> {
    let within = Duration::from_millis(probe.timeout_ms);
    match tokio::time::timeout(within, check_unbounded(target, probe)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {} ms", probe.timeout_ms)),
    }
}

async fn check_unbounded(target: &str, probe: &ProbeDef) -> Result<(), String> {
    match probe.protocol {
        Protocol::Tcp => tokio::net::TcpStream::connect(target)
            .await
            .map(drop)
            .map_err(|e| format!("TCP connect: {e}")),
        Protocol::Http => {
            let path = probe.path.as_deref().unwrap_or("/");
            let answer = super::http::request(
                target,
                "GET",
                path,
                None,
                Duration::from_millis(probe.timeout_ms),
            )
            .await?;
            if (200..300).contains(&answer.status) {
                Ok(())
            } else {
                Err(format!("GET {path} answered {}", answer.status))
            }
        }
        Protocol::Postgres => postgres(target, probe).await,
    }
}

async fn postgres(target: &str, probe: &ProbeDef) -> Result<(), String> {
    let (host, port) =
        split_target(target).ok_or_else(|| format!("target {target:?} is not host:port"))?;
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(port)
        .user(probe.user.as_deref().unwrap_or("availdb"))
        .dbname(probe.database.as_deref().unwrap_or("availdb"))
        .application_name("availdb-traffic-manager-probe");
    if let Some(password) = &probe.password {
        config.password(password);
    }
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("PostgreSQL session: {}", pg_text(&e)))?;
    let task = tokio::spawn(connection);
    let result = async {
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| format!("SELECT 1: {}", pg_text(&e)))?;
        if probe.read_write {
            let rows = client
                .simple_query("SHOW transaction_read_only")
                .await
                .map_err(|e| format!("SHOW transaction_read_only: {}", pg_text(&e)))?;
            let read_only = rows.iter().any(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0) == Some("on"),
                _ => false,
            });
            if read_only {
                return Err("the session is read-only (the probe requires read-write)".into());
            }
        }
        Ok(())
    }
    .await;
    drop(client);
    task.abort();
    result
}

fn pg_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}
