//! The node's HTTP server: health checks for load balancers and
//! orchestrators (Patroni's endpoints and meanings), Prometheus metrics and
//! the node's state as JSON — for HAProxy, Kubernetes probes and
//! monitoring, which speak HTTP, not SQL.
//!
//! | request | answers |
//! | --- | --- |
//! | `GET /health`, `/liveness`, `/readiness`, `/primary` (`/read-write`), `/replica[?lag=]`, `/read-only[?lag=]`, `/sync`, `/async`, `/failover-readiness?max_loss=` | 200 or 503, with `{"status", "reason", "node", "groups"}` (meanings: [`health`]); `?group=` narrows to one group |
//! | `GET /metrics` | Prometheus text format ([`metrics`]) |
//! | `GET /` from a browser (`Accept: text/html`), `GET /dashboard` | the availability group dashboard: one HTML page with its CSS and script inline (`dashboard.html`), which polls the JSON endpoints below every second |
//! | `GET /cluster` | `sys.dm_hadr_cluster`, its members and the groups, as JSON |
//! | `GET /groups/NAME` | the group's rows of every `sys` availability view, as JSON (404 for a group this node does not host) |
//! | `GET /history[?group=]` | `{"failovers": [...]}`: the rows of `sys.dm_hadr_failover_history`, newest first (time, group, kind, reason, from, to, epoch, data lost) |
//! | `POST /groups/NAME/failover` | `ALTER AVAILABILITY GROUP NAME FAILOVER` on this node: a planned failover to it |
//! | `POST /groups/NAME/force-failover` with `{"confirm": "FORCE_FAILOVER_ALLOW_DATA_LOSS"}` | `… FORCE_FAILOVER_ALLOW_DATA_LOSS` on this node |
//! | `POST /databases/NAME/suspend`, `…/resume` | `ALTER DATABASE NAME SET HADR SUSPEND` / `RESUME` on this node |
//!
//! The POST actions run the same code as the SQL statements and answer
//! `{"tag", "notices"}`, or `{"sqlstate", "error", "hint"}` with 400 (bad
//! request), 404 (no such group or database), 409 (refused in this state)
//! or 500. They change state, so they follow the client port's rule: a
//! node without a password (loopback only) takes them from anyone who can
//! reach it; a node with one wants `Authorization: Bearer PASSWORD` (401
//! otherwise).
//!
//! `OPTIONS` and `HEAD` answer like `GET` (HAProxy's `option httpchk`
//! sends `OPTIONS /` unless told otherwise). A bad parameter answers 400
//! saying how to write it. `/` is the dashboard only for a request that
//! accepts HTML (a browser); anything else there — `OPTIONS /`, a probe,
//! `curl` — gets `/health`, so load balancers and probes configured with
//! the bare address keep working.
//!
//! Every GET reads a snapshot of the `sys` views — the values a SQL client
//! sees at the same moment — so nothing here keeps state of its own, and
//! needs no authentication (like Patroni's). It listens on the client
//! address's host
//! (`--http-port`; by default the client port + 1000, given up with a
//! warning when that port is taken).

pub mod health;
pub mod metrics;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rusqlite::types::Value;
use serde_json::json;
use tokio::net::TcpListener;

use crate::ag::views::Snapshot;
use crate::ag::Manager;
use crate::sql::ag::AgStatement;
use health::Check;

/// What the handlers read.
struct Node {
    name: String,
    groups: Arc<Manager>,
    /// The verifier of the node's password: the bearer token of the POST
    /// actions is the password, checked against it.
    password: Option<crate::auth::Verifier>,
    failed: tokio::sync::watch::Receiver<Vec<String>>,
}

impl Node {
    fn snapshot(&self) -> Snapshot {
        self.groups.snapshot()
    }

    fn health(&self, snapshot: &Snapshot) -> Result<health::NodeHealth, String> {
        health::read(snapshot, self.failed.borrow().clone())
    }
}

/// Serves the HTTP API of node `name` on `listener` until the process ends.
pub async fn serve(
    listener: TcpListener,
    name: String,
    groups: Arc<Manager>,
    password: Option<String>,
) {
    let node = Arc::new(Node {
        name,
        groups,
        password: password
            .as_deref()
            .map(crate::auth::Verifier::of_configured),
        failed: crate::failstop::watch(),
    });
    let app = router(node);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("the HTTP server stopped: {e}");
    }
}

/// Binds the HTTP port: an explicit one must be free (an error names it);
/// the default one is given up with a warning when taken.
pub async fn bind(addr: SocketAddr, explicit: bool) -> Result<Option<TcpListener>, String> {
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(Some(l)),
        Err(e) if explicit => Err(format!(
            "cannot listen for HTTP on {addr}: {e}: choose another --http-port"
        )),
        Err(e) => {
            tracing::warn!(
                "no HTTP server: the default HTTP port {} is unusable ({e}); give --http-port to choose one",
                addr.port()
            );
            Ok(None)
        }
    }
}

fn router(node: Arc<Node>) -> Router {
    let check = |name: &'static str| {
        get(move |state, query| health_answer(state, query, name))
            .options(move |state, query| health_answer(state, query, name))
    };
    Router::new()
        .route(
            "/",
            get(root_answer).options(|state, query| health_answer(state, query, "health")),
        )
        .route("/health", check("health"))
        .route("/liveness", check("liveness"))
        .route("/readiness", check("readiness"))
        .route("/primary", check("primary"))
        .route("/read-write", check("primary"))
        .route("/replica", check("replica"))
        .route("/read-only", check("read-only"))
        .route("/sync", check("sync"))
        .route("/async", check("async"))
        .route("/failover-readiness", check("failover-readiness"))
        .route("/metrics", get(metrics_answer))
        .route("/dashboard", get(dashboard_answer))
        .route("/cluster", get(cluster_answer))
        .route("/groups/{name}", get(group_answer))
        .route("/history", get(history_answer))
        .route("/groups/{name}/failover", post(failover_action))
        .route("/groups/{name}/force-failover", post(force_failover_action))
        .route("/databases/{name}/suspend", post(suspend_action))
        .route("/databases/{name}/resume", post(resume_action))
        .with_state(node)
}

/// The check an endpoint asks, from its query parameters.
fn parse_check(endpoint: &str, query: &HashMap<String, String>) -> Result<Check, String> {
    let lag = query.get("lag").map(|v| health::parse_lag(v)).transpose()?;
    Ok(match endpoint {
        "liveness" => Check::Liveness,
        "readiness" => Check::Readiness,
        "primary" => Check::Primary,
        "replica" => Check::Replica(lag),
        "read-only" => Check::ReadOnly(lag),
        "sync" => Check::Commit {
            synchronous: true,
            lag,
        },
        "async" => Check::Commit {
            synchronous: false,
            lag,
        },
        "failover-readiness" => {
            let max = query.get("max_loss").ok_or(
                "give the loss a failover may cost: /failover-readiness?max_loss=5s (0s: none)",
            )?;
            Check::FailoverReadiness(health::parse_duration(max)?)
        }
        _ => Check::Health,
    })
}

async fn health_answer(
    State(node): State<Arc<Node>>,
    Query(query): Query<HashMap<String, String>>,
    endpoint: &'static str,
) -> Response {
    let check = match parse_check(endpoint, &query) {
        Ok(c) => c,
        Err(e) => return (StatusCode::BAD_REQUEST, Json(json!({ "error": e }))).into_response(),
    };
    let view = {
        let node = node.clone();
        tokio::task::spawn_blocking(move || node.health(&node.snapshot())).await
    };
    let view = match view {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return internal(e),
        Err(e) => return internal(e.to_string()),
    };
    let verdict = health::answer(check, &view, query.get("group").map(String::as_str));
    let (status, word) = match &verdict {
        Ok(()) => (StatusCode::OK, "ok"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    let body = json!({
        "status": word,
        "reason": verdict.err(),
        "node": node.name,
        "failed": view.failed,
        "groups": view.groups,
    });
    (status, Json(body)).into_response()
}

/// The dashboard page, compiled in: the node serves it with no file or
/// network access.
const DASHBOARD: &str = include_str!("dashboard.html");

/// `GET /`: the dashboard for a browser, `/health` for anything else.
async fn root_answer(
    state: State<Arc<Node>>,
    query: Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let wants_html = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/html"));
    if wants_html {
        dashboard_answer().await
    } else {
        health_answer(state, query, "health").await
    }
}

async fn dashboard_answer() -> Response {
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::response::Html(DASHBOARD),
    )
        .into_response()
}

async fn metrics_answer(State(node): State<Arc<Node>>) -> Response {
    let rendered = tokio::task::spawn_blocking(move || {
        let snapshot = node.snapshot();
        let view = node.health(&snapshot)?;
        metrics::render(&node.name, &snapshot, &view)
    })
    .await;
    match rendered {
        Ok(Ok(text)) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e.to_string()),
    }
}

async fn cluster_answer(State(node): State<Arc<Node>>) -> Response {
    let tables = [
        ("cluster", "SELECT * FROM sys.dm_hadr_cluster"),
        ("members", "SELECT * FROM sys.dm_hadr_cluster_members"),
        ("groups", "SELECT * FROM sys.availability_groups"),
        (
            "replica_states",
            "SELECT * FROM sys.dm_hadr_availability_replica_states",
        ),
    ];
    json_of(node, tables.map(|(k, q)| (k, q.to_string())).to_vec(), None).await
}

async fn group_answer(State(node): State<Arc<Node>>, Path(name): Path<String>) -> Response {
    let quoted = name.replace('\'', "''");
    let tables = [
        ("group", "sys.availability_groups"),
        ("replicas", "sys.availability_replicas"),
        ("replica_states", "sys.dm_hadr_availability_replica_states"),
        (
            "database_replica_states",
            "sys.dm_hadr_database_replica_states",
        ),
        ("listeners", "sys.availability_group_listeners"),
        (
            "read_only_routing",
            "sys.availability_read_only_routing_lists",
        ),
    ]
    .map(|(k, t)| {
        (
            k,
            format!("SELECT * FROM {t} WHERE group_id = '{quoted}' COLLATE NOCASE"),
        )
    })
    .to_vec();
    json_of(node, tables, Some(name)).await
}

async fn history_answer(
    State(node): State<Arc<Node>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let filter = query.get("group").map_or(String::new(), |g| {
        format!(
            "WHERE group_id = '{}' COLLATE NOCASE",
            g.replace('\'', "''")
        )
    });
    let sql = format!(
        "SELECT * FROM sys.dm_hadr_failover_history {filter} ORDER BY failover_time DESC, epoch DESC"
    );
    json_of(node, vec![("failovers", sql)], None).await
}

/// Answers the rows of `queries` as `{key: [{column: value}]}`; with
/// `group`, 404 when the first query has no row.
async fn json_of(
    node: Arc<Node>,
    queries: Vec<(&'static str, String)>,
    group: Option<String>,
) -> Response {
    let answered = tokio::task::spawn_blocking(move || {
        let snapshot = node.snapshot();
        let mut out = serde_json::Map::new();
        out.insert("node".to_string(), json!(node.name));
        for (key, sql) in &queries {
            let outcome = snapshot
                .query(sql, &[])
                .map_err(|e| format!("cannot read the node's state: {e}"))?;
            let rows: Vec<serde_json::Value> = outcome
                .rows
                .iter()
                .map(|row| {
                    let object: serde_json::Map<String, serde_json::Value> = outcome
                        .columns
                        .iter()
                        .zip(row)
                        .map(|(c, v)| (c.name.clone(), json_value(v)))
                        .collect();
                    serde_json::Value::Object(object)
                })
                .collect();
            out.insert(key.to_string(), serde_json::Value::Array(rows));
        }
        Ok::<_, String>(out)
    })
    .await;
    match answered {
        Ok(Ok(out)) => {
            if let Some(g) = group {
                if out
                    .get("group")
                    .and_then(|v| v.as_array())
                    .is_some_and(Vec::is_empty)
                {
                    return (
                        StatusCode::NOT_FOUND,
                        Json(
                            json!({ "error": format!("this node hosts no replica of group {g}") }),
                        ),
                    )
                        .into_response();
                }
            }
            Json(serde_json::Value::Object(out)).into_response()
        }
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e.to_string()),
    }
}

/// The confirmation a forced failover needs in its body.
const FORCE_CONFIRMATION: &str = "FORCE_FAILOVER_ALLOW_DATA_LOSS";

async fn failover_action(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Path(group): Path<String>,
) -> Response {
    act(&node, &headers, AgStatement::Failover { group }).await
}

async fn force_failover_action(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Path(group): Path<String>,
    body: Option<Json<serde_json::Value>>,
) -> Response {
    let confirmed = body
        .as_ref()
        .and_then(|b| b.get("confirm"))
        .and_then(|c| c.as_str())
        == Some(FORCE_CONFIRMATION);
    if !confirmed {
        return refusal(
            StatusCode::BAD_REQUEST,
            "22023",
            format!("a forced failover may lose committed data: send {{\"confirm\": \"{FORCE_CONFIRMATION}\"}} to confirm"),
            None,
        );
    }
    act(&node, &headers, AgStatement::ForceFailover { group }).await
}

async fn suspend_action(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Path(database): Path<String>,
) -> Response {
    act(&node, &headers, AgStatement::SuspendDatabase { database }).await
}

async fn resume_action(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Path(database): Path<String>,
) -> Response {
    act(&node, &headers, AgStatement::ResumeDatabase { database }).await
}

/// Runs `statement` as its SQL form would, once the caller may.
async fn act(node: &Node, headers: &HeaderMap, statement: AgStatement) -> Response {
    if let Some(password) = &node.password {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|given| password.matches(given)) {
            return refusal(
                StatusCode::UNAUTHORIZED,
                "28P01",
                "this node has a password: send it as `Authorization: Bearer PASSWORD`".to_string(),
                None,
            );
        }
    }
    match node.groups.execute(statement).await {
        Ok(done) => Json(json!({ "tag": done.tag, "notices": done.notices })).into_response(),
        Err(e) => {
            let sqlstate = e.sqlstate();
            let status = match &sqlstate[..2] {
                "42" if sqlstate == "42704" => StatusCode::NOT_FOUND,
                "3D" => StatusCode::NOT_FOUND,
                "22" | "42" => StatusCode::BAD_REQUEST,
                "25" | "40" | "55" | "57" => StatusCode::CONFLICT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            refusal(status, sqlstate, e.to_string(), e.hint())
        }
    }
}

fn refusal(status: StatusCode, sqlstate: &str, error: String, hint: Option<String>) -> Response {
    (
        status,
        Json(json!({ "sqlstate": sqlstate, "error": error, "hint": hint })),
    )
        .into_response()
}

fn json_value(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Integer(n) => json!(n),
        Value::Real(r) => json!(r),
        Value::Text(s) => json!(s),
        Value::Blob(b) => json!(b),
    }
}

fn internal(e: String) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({ "error": e })),
    )
        .into_response()
}
