//! Client helpers that never panic and never wait unbounded: the campaign
//! talks to nodes that may be killed, paused or cut off at any moment, so
//! every connection and statement is bounded and every failure is a value
//! the caller records.

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use crate::common::group::{error_text, rows_of};
use crate::common::USER;

/// Rows of a simple-protocol answer, as text.
pub type Rows = Vec<Vec<Option<String>>>;

/// Where a client reaches node `i` (its client port, not its endpoint).
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub password: Option<String>,
}

impl Endpoint {
    /// A libpq-style connection string for `db`, whole start-up bounded by
    /// `connect_timeout` (seconds), plus `extra` key=value pairs.
    pub fn conn(&self, db: &str, connect_timeout_s: u64, extra: &str) -> String {
        let mut s = format!(
            "host={} port={} user={USER} dbname={db} connect_timeout={connect_timeout_s} {extra}",
            self.host, self.port
        );
        if let Some(password) = &self.password {
            s.push_str(&format!(" password={password}"));
        }
        s
    }
}

/// Connects within `bound` (TCP, start-up, authentication and, with
/// `target_session_attrs=read-write`, the check of the session).
pub async fn connect(conn: &str, bound: Duration) -> Result<Client, String> {
    match tokio::time::timeout(bound, tokio_postgres::connect(conn, NoTls)).await {
        Ok(Ok((client, connection))) => {
            tokio::spawn(async move {
                // Errors surface on the client's next call.
                let _ = connection.await;
            });
            Ok(client)
        }
        Ok(Err(e)) => Err(error_text(&e)),
        Err(_) => Err(format!("no session within {bound:?}")),
    }
}

/// Runs `sql` (simple protocol) within `bound`.
pub async fn query(client: &Client, sql: &str, bound: Duration) -> Result<Rows, String> {
    match tokio::time::timeout(bound, client.simple_query(sql)).await {
        Ok(Ok(messages)) => Ok(rows_of(messages)),
        Ok(Err(e)) => Err(error_text(&e)),
        Err(_) => Err(format!("no answer within {bound:?}")),
    }
}

/// Connects to `db` on `ep` and runs `sql`, all within `bound`.
pub async fn query_at(ep: &Endpoint, db: &str, sql: &str, bound: Duration) -> Result<Rows, String> {
    let client = connect(&ep.conn(db, bound.as_secs().max(1), ""), bound).await?;
    query(&client, sql, bound).await
}

/// The first column of the first row, if any.
pub fn first(rows: &Rows) -> Option<String> {
    rows.first().and_then(|r| r.first().cloned().flatten())
}

/// A session on the writable primary: tries `prefer` first, then every
/// other node in order, each host bounded by `per_host` (libpq's
/// `connect_timeout` behaviour with `target_session_attrs=read-write`).
/// Returns the session and the node it reached.
pub async fn connect_primary(
    nodes: &[Endpoint],
    db: &str,
    prefer: usize,
    per_host: Duration,
) -> Result<(Client, usize), String> {
    let mut errors = Vec::new();
    for k in 0..nodes.len() {
        let i = (prefer + k) % nodes.len();
        let conn = nodes[i].conn(
            db,
            per_host.as_secs().max(1),
            "target_session_attrs=read-write",
        );
        match connect(&conn, per_host).await {
            Ok(client) => return Ok((client, i)),
            Err(e) => errors.push(format!("r{}: {e}", i + 1)),
        }
    }
    Err(errors.join("; "))
}
