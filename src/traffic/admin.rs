//! The admin surface: an HTTP/JSON API on the admin port, and the client
//! the command line (`availdb traffic-manager show|add|…`) and the upgrade
//! orchestrator use.
//!
//! | request | does |
//! | --- | --- |
//! | `GET /profile` | the profile: each endpoint's status, health, last probe error, open and total connections, and the active endpoint |
//! | `POST /endpoints` (an endpoint as JSON) | adds it |
//! | `DELETE /endpoints/NAME` | removes it (its open connections stay, or drain) |
//! | `POST /endpoints/NAME/online`, `…/offline` | sets its status |
//! | `POST /endpoints/NAME/activate` (`{"also_online": [...], "force": false}`) | makes it the active endpoint (refused, 409, while it is not healthy unless `force`) |
//! | `POST /endpoints/NAME/probe` | probes it now; answers its view |
//!
//! Errors answer 400 (a rule broken), 404 (no such endpoint), 409 (not
//! healthy) or 500 (the state file could not be written: nothing changed)
//! with `{"error": "…"}` saying what to do.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::profile::{Change, EndpointDef};
use super::routing::Status;
use super::service::{EndpointView, ProfileView, TrafficManager};
use super::{Error, Result};

/// How long an admin call may take (an activation may probe first).
const ADMIN_WITHIN: Duration = Duration::from_secs(30);

/// The body of an activation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Activate {
    /// Endpoints set online in the same change.
    #[serde(default)]
    pub also_online: Vec<String>,
    /// Activate even if the endpoint is not healthy.
    #[serde(default)]
    pub force: bool,
}

#[derive(Serialize, Deserialize)]
struct Failure {
    error: String,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = match &self {
            Error::Invalid(_) => StatusCode::BAD_REQUEST,
            Error::UnknownEndpoint(_) => StatusCode::NOT_FOUND,
            Error::Unhealthy { .. } => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (
            status,
            Json(Failure {
                error: self.to_string(),
            }),
        )
            .into_response()
    }
}

/// The admin API's routes.
pub fn router(tm: Arc<TrafficManager>) -> Router {
    Router::new()
        .route("/profile", get(show))
        .route("/endpoints", post(add))
        .route("/endpoints/{name}", axum::routing::delete(remove))
        .route("/endpoints/{name}/online", post(online))
        .route("/endpoints/{name}/offline", post(offline))
        .route("/endpoints/{name}/activate", post(activate))
        .route("/endpoints/{name}/probe", post(probe))
        .with_state(tm)
}

async fn show(State(tm): State<Arc<TrafficManager>>) -> Json<ProfileView> {
    Json(tm.view())
}

async fn add(
    State(tm): State<Arc<TrafficManager>>,
    Json(endpoint): Json<EndpointDef>,
) -> Result<Json<ProfileView>> {
    tm.apply(Change::Add(endpoint)).await.map(Json)
}

async fn remove(
    State(tm): State<Arc<TrafficManager>>,
    Path(name): Path<String>,
) -> Result<Json<ProfileView>> {
    tm.apply(Change::Remove(name)).await.map(Json)
}

async fn online(
    State(tm): State<Arc<TrafficManager>>,
    Path(name): Path<String>,
) -> Result<Json<ProfileView>> {
    tm.apply(Change::SetStatus(name, Status::Online))
        .await
        .map(Json)
}

async fn offline(
    State(tm): State<Arc<TrafficManager>>,
    Path(name): Path<String>,
) -> Result<Json<ProfileView>> {
    tm.apply(Change::SetStatus(name, Status::Offline))
        .await
        .map(Json)
}

async fn activate(
    State(tm): State<Arc<TrafficManager>>,
    Path(name): Path<String>,
    body: Option<Json<Activate>>,
) -> Result<Json<ProfileView>> {
    let Activate { also_online, force } = body.map(|b| b.0).unwrap_or_default();
    let change = Change::Activate { name, also_online };
    if force {
        tm.apply_forced(change).await.map(Json)
    } else {
        tm.apply(change).await.map(Json)
    }
}

async fn probe(
    State(tm): State<Arc<TrafficManager>>,
    Path(name): Path<String>,
) -> Result<Json<EndpointView>> {
    tm.probe_now(&name).await.map(Json)
}

/// A client of a traffic manager's admin API.
#[derive(Debug, Clone)]
pub struct Client {
    /// `host:port` of the admin API.
    pub admin: String,
}

impl Client {
    /// A client for the admin API at `admin` (`host:port`).
    pub fn new(admin: &str) -> Client {
        Client {
            admin: admin.to_string(),
        }
    }

    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T> {
        let admin_error = |why: String| Error::Admin {
            addr: self.admin.clone(),
            why,
        };
        let answer = super::http::request(&self.admin, method, path, body.as_deref(), ADMIN_WITHIN)
            .await
            .map_err(admin_error)?;
        if (200..300).contains(&answer.status) {
            serde_json::from_slice(&answer.body)
                .map_err(|e| admin_error(format!("unexpected answer to {method} {path}: {e}")))
        } else {
            let why = serde_json::from_slice::<Failure>(&answer.body)
                .map(|f| f.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&answer.body).into_owned());
            Err(Error::Refused {
                status: answer.status,
                why,
            })
        }
    }

    /// The profile.
    pub async fn show(&self) -> Result<ProfileView> {
        self.call("GET", "/profile", None).await
    }

    /// Adds an endpoint.
    pub async fn add(&self, endpoint: &EndpointDef) -> Result<ProfileView> {
        self.call("POST", "/endpoints", Some(serde_json::to_vec(endpoint)?))
            .await
    }

    /// Removes an endpoint.
    pub async fn remove(&self, name: &str) -> Result<ProfileView> {
        self.call("DELETE", &format!("/endpoints/{name}"), None)
            .await
    }

    /// Sets an endpoint online or offline.
    pub async fn set_status(&self, name: &str, status: Status) -> Result<ProfileView> {
        let verb = match status {
            Status::Online => "online",
            Status::Offline => "offline",
        };
        self.call("POST", &format!("/endpoints/{name}/{verb}"), None)
            .await
    }

    /// Makes an endpoint the active one.
    pub async fn activate(&self, name: &str, how: &Activate) -> Result<ProfileView> {
        self.call(
            "POST",
            &format!("/endpoints/{name}/activate"),
            Some(serde_json::to_vec(how)?),
        )
        .await
    }

    /// Probes an endpoint now.
    pub async fn probe(&self, name: &str) -> Result<EndpointView> {
        self.call("POST", &format!("/endpoints/{name}/probe"), None)
            .await
    }
}
