//! The PostgreSQL front end: the wire protocol (through the `pgwire` crate),
//! authentication, sessions and cancel requests.
//!
//! # One connection, from start-up to Terminate
//! 1. `pgwire` negotiates SSL (TLS with the node's certificate when it has
//!    one, [`crate::tls`]; refused otherwise) and reads the start-up
//!    packet; [`Connection`]'s start-up handler first applies the TLS
//!    policy (`--require-tls`: FATAL 28000 for a plaintext client that must
//!    use TLS; for a session a listener forwarded, by the client address and
//!    TLS the listener reports), then checks the connection
//!    settings (`ALLOW_CONNECTIONS` against the session's read intent, and
//!    for a session a listener forwarded, that this node still has the role
//!    it was chosen for: [`crate::listener`]), then authenticates — SCRAM-SHA-256
//!    against a stored verifier, the administrator `availdb`'s or a role's
//!    from the cluster state ([`crate::auth`]), when the node has a
//!    password, with SCRAM-SHA-256-PLUS (channel binding to the node's
//!    certificate) offered as well on TLS this node ends — not on a
//!    session a listener forwarded, whose TLS ended at the listener; none
//!    on a loopback node without one — then opens the
//!    requested database (FATAL 3D000 if there is none; FATAL 42501 for a
//!    role without CONNECT on it), builds the [`Session`] with its
//!    principal (each statement is checked against the role's privileges,
//!    [`Session::authorize`]), and reports ParameterStatus
//!    (`server_version` ≥ 14, `in_hot_standby`, `default_transaction_read_only`,
//!    …) and BackendKeyData, which a cancel request quotes later.
//! 2. A simple Query is split into statements ([`crate::sql::split`]), each
//!    classified ([`crate::sql::command`]) and run by the session in order,
//!    stopping at the first error. Each statement's response is sent before
//!    the next one runs, its rows as SQLite produces them
//!    ([`crate::engine::cursor`]): `feed` waits while the socket's buffer is
//!    full, so a slow client holds back its own statement only.
//! 3. Extended protocol: Parse classifies the statement, checks that the
//!    session's role has the privilege it needs (the same check as at
//!    Execute, [`Session::authorize`]: 42501 before anything about the
//!    statement's tables is said), and *describes* it on
//!    the connection its transaction would use (parameter and column types
//!    are inferred then, because drivers ask before they bind); Bind decodes
//!    parameters by those types; Execute runs it and sends its rows as they
//!    come, at most its row limit: then PortalSuspended, and the next
//!    Execute of that portal goes on (fetch sizes, `query_portal`). Portals
//!    end with their transaction (at Sync outside a block), as in
//!    PostgreSQL, and with them the cursor and its snapshot. A cursor
//!    opened with `DECLARE` answers a Describe of a portal of its name, and
//!    a `MOVE` in a simple Query moves a portal of the extended protocol
//!    (asyncpg's `Cursor.forward`), as in PostgreSQL, where both are
//!    portals (psycopg's named cursors and asyncpg ask so).
//! 4. The transaction status in every ReadyForQuery comes from the session's
//!    own state machine, never from guesses about the statements.
//! 5. A session whose database was read-write when it began ends (FATAL
//!    57P01, "reconnect") at its next message once this replica has been
//!    demoted to secondary. Every commit reports its end LSN as
//!    ParameterStatus `availdb.commit_lsn`; `availdb.read_after_lsn` makes
//!    statements on a secondary wait until that LSN is redone. Without it,
//!    a read on a secondary that is cut off from its primary, suspended,
//!    or more than `availdb.lag_notice_after` (1 s) behind gets a NOTICE
//!    saying so and what to do (`ag::Staleness`). When this
//!    replica is promoted, every read transaction on the database ends
//!    (`Database::promote` asks, [`Frontend`] follows: an idle session's
//!    transaction fails with 25P02 saying why, a running statement is
//!    cancelled), since a held snapshot would stop the promotion.
//!
//! 6. `COPY … FROM STDIN` answers CopyInResponse and collects the CopyData
//!    messages, charged to the session's memory budget (53200 at CopyDone
//!    past it); at CopyDone their rows (text or CSV, [`crate::sql::pg::copy`])
//!    are inserted in one transaction ([`Session::run_many`]). `COPY … TO
//!    STDOUT` streams its query's rows, one CopyData per row.
//! 7. A FATAL during start-up is sent and the connection closed at once:
//!    PostgreSQL never sends ReadyForQuery after it, and clients (asyncpg)
//!    break if it comes. `postgres` and `template1`, where libpq tools
//!    connect first, reach the default database.
//!
//! # Limits
//! The message loop is pgwire's, driven by `drive.rs` so that a session idle
//! in a transaction past `idle_in_transaction_session_timeout` can be ended
//! (FATAL 25P03; dropping the session rolls its transaction back and frees
//! the write lock). At start-up, before authentication: `--max-connections`
//! (FATAL 53300) and the per-address throttle of failed authentications
//! (FATAL 28000), both in [`limits`].
//!
//! # Cancel requests
//! A CancelRequest arrives on a new connection with the pid and secret key of
//! the target. The registry maps them to the target session's
//! [`CancelSlot`], which interrupts the SQLite statement it is running (or
//! its wait for the write lock); the statement fails with 57014 and the
//! session goes on.

mod backup;
mod drive;
pub(crate) mod encode;
pub mod limits;
mod placement;
mod roles;
mod session;
mod settings;

use std::collections::HashMap;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{stream, Sink, SinkExt, StreamExt};
use pgwire::api::auth::mechanism::AuthMechanismFactory;
use pgwire::api::auth::sasl::scram::{ScramAuth, ScramSecret};
use pgwire::api::auth::sasl::SaslMechanisms;
use pgwire::api::auth::{
    protocol_negotiation, save_startup_parameters_to_metadata, AuthDriver, AuthOutcome, AuthSource,
    LoginInfo, Password, ServerParameterProvider, StartupHandler,
};
use pgwire::api::cancel::CancelHandler;
use pgwire::api::copy::{send_copy_in_response, send_copy_out_response, CopyHandler};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{
    send_execution_response, send_ready_for_query, ExtendedQueryHandler, SimpleQueryHandler,
};
use pgwire::api::results::{
    CopyResponse, DescribePortalResponse, DescribeResponse, DescribeStatementResponse, FieldInfo,
    QueryResponse, Response, Tag,
};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::{Entry, PortalStore};
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireConnectionState, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::copy::{CopyData, CopyDone, CopyFail};
use pgwire::messages::data::{NoData, ParameterDescription, RowDescription};
use pgwire::messages::extendedquery::{
    Bind, BindComplete, Describe, Execute, Parse, ParseComplete, Sync as PgSync,
};
use pgwire::messages::response::{
    EmptyQueryResponse, NoticeResponse, ReadyForQuery, TransactionStatus,
};
use pgwire::messages::simplequery::Query;
use pgwire::messages::startup::ParameterStatus;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tokio::net::TcpListener;

use crate::engine::{Column, Described, Engine, Error};
use crate::sql::command::{classify, Command};
use crate::sql::pg::CopySpec;
use crate::sql::split::split_statements;
use crate::sql::types::ValueType;

pub use backup::spawn_schedules;
pub use session::{Aside, CancelSlot, Reply, Session, TxStatus};
pub use settings::{parse_options, Settings};

/// The one user name of a password-protected node.
pub const USER: &str = "availdb";

/// What the front end needs to know about its node.
#[derive(Clone)]
pub struct FrontendConfig {
    /// Password of user `availdb`; None accepts any user without one (only
    /// allowed on loopback, checked by the caller).
    pub password: Option<String>,
    /// TLS for clients that ask for it (SSLRequest); None refuses it.
    pub tls: Option<crate::tls::TlsAcceptor>,
    /// The node's certificate chain (PEM) `tls` serves, for SCRAM channel
    /// binding (SCRAM-SHA-256-PLUS, `tls-server-end-point`).
    pub tls_cert_pem: Option<Vec<u8>>,
    /// Which clients must use TLS ([`crate::tls`]).
    pub require_tls: crate::tls::TlsPolicy,
    /// Sessions open at most at once; past it FATAL 53300.
    pub max_connections: usize,
    /// The node's default `idle_in_transaction_session_timeout` (None: no
    /// limit).
    pub idle_in_transaction_timeout: Option<std::time::Duration>,
}

/// State shared by all connections of a node.
pub struct Frontend {
    engine: Arc<Engine>,
    ag: Arc<crate::ag::Manager>,
    driver: AuthDriver<StartupParameters>,
    /// SCRAM-SHA-256 without channel binding: plaintext sessions, those a
    /// listener forwarded (its TLS is not ours to bind to), and nodes
    /// without a certificate.
    scram: Option<Arc<SaslMechanisms>>,
    /// SCRAM-SHA-256 and SCRAM-SHA-256-PLUS (`tls-server-end-point`
    /// channel binding to the node's certificate), for sessions whose TLS
    /// this node ends.
    scram_plus: Option<Arc<SaslMechanisms>>,
    tls: Option<crate::tls::TlsAcceptor>,
    require_tls: crate::tls::TlsPolicy,
    sessions: limits::SessionCount,
    /// Each role's sessions here, against its `CONNECTION LIMIT`.
    role_sessions: limits::RoleSessions,
    auth_failures: Mutex<limits::AuthThrottle>,
    idle_in_transaction_timeout: Option<std::time::Duration>,
    cancels: Mutex<HashMap<(i32, Bytes), Weak<CancelSlot>>>,
    /// Every connection, for ending read transactions at a promotion.
    connections: Mutex<Vec<Weak<ConnState>>>,
    /// Databases whose promotions' read-end requests and retirements are
    /// followed, each the copy followed (a copy that replaced another of
    /// the same name is followed anew).
    followed: Mutex<HashMap<String, Weak<crate::engine::Database>>>,
}

impl Frontend {
    /// A front end serving `engine`.
    pub fn new(
        engine: Arc<Engine>,
        ag: Arc<crate::ag::Manager>,
        config: &FrontendConfig,
    ) -> Arc<Frontend> {
        let secrets = config.password.as_ref().map(|password| {
            Arc::new(Secrets {
                admin: crate::auth::Verifier::of_configured(password),
                ag: ag.clone(),
                mock_key: rand_key(),
            })
        });
        let mechanisms = |cert: Option<&[u8]>| {
            let mut auth = ScramAuth::new(secrets.clone()?);
            auth.set_iterations(crate::auth::scram::ITERATIONS as usize);
            if let Some(pem) = cert {
                if let Err(e) = auth.configure_certificate(pem) {
                    tracing::warn!(
                        "SCRAM channel binding is off: the TLS certificate cannot be bound to ({e}); \
                         clients with channel_binding=require cannot connect"
                    );
                    return None;
                }
            }
            Some(Arc::new(SaslMechanisms::new(vec![Arc::new(auth)])))
        };
        let scram = mechanisms(None);
        let scram_plus = config
            .tls_cert_pem
            .as_deref()
            .and_then(|pem| mechanisms(Some(pem)));
        Arc::new(Frontend {
            driver: AuthDriver::new(StartupParameters {
                engine: engine.clone(),
            }),
            engine,
            ag,
            scram,
            scram_plus,
            tls: config.tls.clone(),
            require_tls: config.require_tls,
            sessions: limits::SessionCount::new(config.max_connections),
            role_sessions: limits::RoleSessions::default(),
            auth_failures: Mutex::new(limits::AuthThrottle::default()),
            idle_in_transaction_timeout: config.idle_in_transaction_timeout,
            cancels: Mutex::new(HashMap::new()),
            connections: Mutex::new(Vec::new()),
            followed: Mutex::new(HashMap::new()),
        })
    }

    /// Follows `db`'s requests to end its read transactions (a promotion
    /// of this replica; see `Database::promote`) and to end its sessions
    /// (`Database::retire`), once per copy of a database.
    fn follow_read_ends(self: &Arc<Self>, db: &Arc<crate::engine::Database>) {
        let name = db.name().to_string();
        {
            let mut followed = self.followed.lock().unwrap_or_else(|e| e.into_inner());
            // A live copy only: a new one may sit where a dropped one was.
            if followed
                .get(&name)
                .and_then(Weak::upgrade)
                .is_some_and(|f| Arc::ptr_eq(&f, db))
            {
                return;
            }
            followed.insert(name.clone(), Arc::downgrade(db));
        }
        let mut requests = db.subscribe_read_ends();
        let frontend = Arc::downgrade(self);
        let database = name.clone();
        tokio::spawn(async move {
            while requests.changed().await.is_ok() {
                let Some(frontend) = frontend.upgrade() else {
                    return;
                };
                frontend.end_read_transactions(&database);
            }
        });
        let mut retirements = db.subscribe_retire();
        let frontend = Arc::downgrade(self);
        // Not the copy itself: the follower must not keep it in use.
        let copy = Arc::downgrade(db);
        tokio::spawn(async move {
            while retirements.changed().await.is_ok() {
                let Some(frontend) = frontend.upgrade() else {
                    return;
                };
                frontend.end_sessions_of(&name, &copy);
            }
        });
    }

    /// Ends every session on `copy` of `database` (it is being replaced
    /// by a copy the primary seeded): an idle session is dropped at once,
    /// which lets go of the copy, and its client gets FATAL 57P01 at its
    /// next message; a session running a statement has the statement
    /// cancelled and ends at its next message.
    fn end_sessions_of(&self, database: &str, copy: &Weak<crate::engine::Database>) {
        // Gone: no session holds it. (Held only while the sessions are
        // walked, so a new copy at its address is never taken for it.)
        let Some(copy) = copy.upgrade() else {
            return;
        };
        let (ended, cancelled) = self.on_sessions_of(database, |state, session| {
            let on_copy = session
                .as_ref()
                .is_some_and(|s| Arc::ptr_eq(s.database(), &copy));
            if on_copy {
                let _ = state.ended.set(self.ag.node().to_string());
                drop(session.take());
            }
            on_copy
        });
        if ended + cancelled > 0 {
            tracing::warn!(
                database,
                ended,
                cancelled,
                "ended the sessions on this replica's copy of the database: a copy the primary seeded replaces it"
            );
        }
    }

    /// Ends every read transaction on `database`: idle sessions' at once;
    /// a session running a statement on it has the statement cancelled,
    /// and its transaction is ended at the promotion's next request.
    fn end_read_transactions(&self, database: &str) {
        let why = format!(
            "this replica is becoming the primary of database \"{database}\", which ends every read transaction on it"
        );
        let (ended, cancelled) = self.on_sessions_of(database, |_, session| {
            session
                .as_mut()
                .is_some_and(|s| s.end_read_transaction(&why))
        });
        if ended + cancelled > 0 {
            tracing::warn!(
                database,
                ended,
                cancelled,
                "ended the read transactions of sessions: this replica is becoming the primary"
            );
        }
    }

    /// Acts on every connection whose session is on `database`: `idle`
    /// gets each one whose session is free (between statements; true when
    /// it acted), and a session running a statement has the statement
    /// cancelled. Returns how many `idle` acted on and how many were
    /// cancelled.
    fn on_sessions_of(
        &self,
        database: &str,
        mut idle: impl FnMut(&ConnState, &mut Option<Session>) -> bool,
    ) -> (usize, usize) {
        let connections: Vec<Arc<ConnState>> = self
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        let (mut acted, mut cancelled) = (0, 0);
        for state in connections {
            if state.database.get().map(String::as_str) != Some(database) {
                continue;
            }
            match state.session.try_lock() {
                Ok(mut session) => {
                    if idle(&state, &mut session) {
                        acted += 1;
                    }
                }
                Err(_) => {
                    let key = state
                        .cancel_key
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone();
                    if let Some(slot) =
                        key.and_then(|k| self.lock_cancels().get(&k).and_then(Weak::upgrade))
                    {
                        slot.cancel();
                        cancelled += 1;
                    }
                }
            }
        }
        (acted, cancelled)
    }

    /// Accepts connections until `shutdown` resolves.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((socket, peer)) => self.clone().serve_socket(socket, peer),
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
                _ = &mut shutdown => break,
            }
        }
    }

    /// Serves one client connection on its own task.
    pub fn serve_socket(self: Arc<Self>, socket: tokio::net::TcpStream, peer: SocketAddr) {
        let _ = socket.set_nodelay(true);
        let tls = self.tls.clone();
        let handlers = Connection::new(self, peer, false);
        tokio::spawn(async move {
            if let Err(e) = drive::run(socket, tls, handlers).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }

    /// Serves a session an availability group listener hands over through
    /// the replication endpoint: the listener ended the client's TLS and
    /// says in the start-up packet where the client is and whether it used
    /// TLS ([`crate::listener::CLIENT_ADDR_PARAM`],
    /// [`crate::listener::CLIENT_TLS_PARAM`]), which the TLS policy judges.
    pub fn serve_forwarded(self: Arc<Self>, socket: crate::net::PartnerStream, peer: SocketAddr) {
        let handlers = Connection::new(self, peer, true);
        tokio::spawn(async move {
            if let Err(e) = drive::run_forwarded(socket, peer, handlers).await {
                tracing::debug!(%peer, error = %e, "forwarded session ended with an error");
            }
        });
    }

    /// Serves a session this node's own listener routed here and handed
    /// over in-process ([`crate::listener::LocalSessions`]): as one
    /// forwarded through the endpoint, with the client's real address as
    /// its peer.
    fn serve_handed_over(self: Arc<Self>, session: crate::listener::HandedOver, peer: SocketAddr) {
        let handlers = Connection::new(self, peer, true);
        tokio::spawn(async move {
            if let Err(e) = drive::run_forwarded(session, peer, handlers).await {
                tracing::debug!(%peer, error = %e, "handed-over session ended with an error");
            }
        });
    }

    /// The TLS policy ([`crate::tls::TlsPolicy`]) for a session: the
    /// client's address and TLS as the connection shows them, or, for a
    /// session a listener forwarded, as the listener reports them.
    fn admit_transport(
        &self,
        peer: SocketAddr,
        forwarded: bool,
        secure: bool,
        params: &HashMap<String, String>,
    ) -> Result<(), Error> {
        use crate::listener::{CLIENT_ADDR_PARAM, CLIENT_TLS_PARAM};
        let (client, secure) = if forwarded {
            let client = params
                .get(CLIENT_ADDR_PARAM)
                .and_then(|a| a.parse().ok())
                .unwrap_or(peer.ip());
            (
                client,
                params.get(CLIENT_TLS_PARAM).map(String::as_str) == Some("on"),
            )
        } else {
            (peer.ip(), secure)
        };
        self.require_tls
            .admit(client, secure)
            .map_err(|why| Error::sql("28000", why).with_hint(crate::tls::REFUSAL_HINT))
    }

    /// The connection settings, checked from the start-up packet before
    /// authentication: the session's read intent against this replica's
    /// `ALLOW_CONNECTIONS` for the database's group, and, for a session a
    /// listener sent here, that this node still has the role the listener
    /// chose it for (57P03 tells the listener to choose again).
    fn admit(&self, params: &HashMap<String, String>) -> Result<(), Error> {
        use crate::listener::{intent_of, GROUP_PARAM, INTENT_PARAM, ROUTE_PARAM};
        let intent = intent_of(
            params.get(INTENT_PARAM).map(String::as_str),
            params.get("options").map(String::as_str),
        )
        .map_err(|message| Error::sql("22023", message))?;
        if let Some(group) = params.get(GROUP_PARAM) {
            let as_primary = params.get(ROUTE_PARAM).map(String::as_str) != Some("secondary");
            if let Some(why) = self.ag.cannot_serve(group, as_primary) {
                return Err(Error::sql("57P03", why)
                    .with_hint("connect through the listener again; it chooses the replica anew"));
            }
        }
        let database = params
            .get("database")
            .or_else(|| params.get("user"))
            .map_or(USER, String::as_str);
        if let Some(refusal) = backup::restoring(&self.engine, database) {
            return Err(refusal);
        }
        if let Some(why) = self.ag.geo_closed(database) {
            return Err(Error::sql("08004", why).with_hint(
                "connect to the source region; to read it here, add the geo-secondary WITH (ALLOW_CONNECTIONS = ALL)",
            ));
        }
        if let Some((group, role)) = self.ag.local_role(database) {
            crate::listener::admit(&role, intent, database, &group, self.ag.node())
                .map_err(|r| Error::sql(r.sqlstate, r.message).with_hint(r.hint))?;
        }
        Ok(())
    }

    /// Who an authenticated user is ([`crate::auth`]): on a node with a
    /// password, `availdb` is the administrator and any other user a role
    /// (SCRAM found its verifier); on a node without one, a user name that
    /// is a role is that role and any other the administrator.
    fn principal_of(&self, user: &str) -> crate::auth::Principal {
        let role = if self.scram.is_some() {
            user != USER
        } else {
            self.ag.role(user).is_some()
        };
        if role {
            crate::auth::Principal::Role(user.to_string())
        } else {
            crate::auth::Principal::Administrator
        }
    }

    fn lock_auth_failures(&self) -> std::sync::MutexGuard<'_, limits::AuthThrottle> {
        self.auth_failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuses (28000) an address that failed to authenticate too often
    /// lately ([`limits::AuthThrottle`]).
    fn may_authenticate(&self, client: std::net::IpAddr) -> Result<(), Error> {
        self.lock_auth_failures()
            .check(client, std::time::Instant::now())
            .map_err(|wait| {
                tracing::warn!(%client, "refused a session: too many failed authentications from its address");
                Error::sql(
                    "28000",
                    format!(
                        "too many failed authentications from {client}: {} within {} s; \
                         try again in {} s",
                        limits::AUTH_FAILURES_ALLOWED,
                        limits::AUTH_WINDOW.as_secs(),
                        wait.as_secs().max(1)
                    ),
                )
                .with_hint("check the user name and password before trying again")
            })
    }

    fn lock_cancels(&self) -> std::sync::MutexGuard<'_, HashMap<(i32, Bytes), Weak<CancelSlot>>> {
        self.cancels.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn rand_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
        .expect("the operating system's random source failed");
    key
}

/// What SCRAM checks a login against: the administrator's verifier, or a
/// role's from the cluster state. A user name that is no role (or a role
/// without a password) gets a mock verifier, so that the exchange runs to
/// its end and fails as a wrong password does (28P01), as PostgreSQL's
/// does: a client cannot tell which roles exist.
struct Secrets {
    admin: crate::auth::Verifier,
    ag: Arc<crate::ag::Manager>,
    /// Random per process: mock verifiers' salts are stable within it.
    mock_key: [u8; 32],
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets").finish_non_exhaustive()
    }
}

#[async_trait]
impl AuthSource for Secrets {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        // Only SCRAM is offered, which asks `get_scram_secret`.
        Err(PgWireError::InvalidPassword(
            login.user().unwrap_or_default().to_string(),
        ))
    }

    async fn get_scram_secret(&self, login: &LoginInfo) -> PgWireResult<(ScramSecret, Option<()>)> {
        let user = login.user().unwrap_or_default();
        if user == USER {
            return Ok((self.admin.secret(), None));
        }
        let stored = self
            .ag
            .role(user)
            .and_then(|role| role.verifier)
            .and_then(|text| crate::auth::Verifier::parse(&text).ok());
        let verifier = stored.unwrap_or_else(|| crate::auth::Verifier::mock(&self.mock_key, user));
        Ok((verifier.secret(), None))
    }
}

/// ParameterStatus values at start-up, from the client's start-up packet
/// and the role of the database it connects to (`in_hot_standby` on a
/// secondary, which libpq's `target_session_attrs` reads).
struct StartupParameters {
    engine: Arc<Engine>,
}

impl ServerParameterProvider for StartupParameters {
    fn server_parameters<C: ClientInfo>(&self, client: &C) -> Option<HashMap<String, String>> {
        let meta = client.metadata();
        let settings = Settings::from_startup(meta).unwrap_or_default();
        let db_name = meta
            .get("database")
            .or_else(|| meta.get("user"))
            .map(String::as_str)
            .unwrap_or(USER);
        let hot_standby = self
            .engine
            .database(db_name)
            .is_ok_and(|db| matches!(db.role(), crate::engine::Role::Secondary { .. }));
        Some(settings.reported(hot_standby).into_iter().collect())
    }
}

/// Per-connection state shared by the handlers of one connection.
pub struct ConnState {
    frontend: Arc<Frontend>,
    peer: SocketAddr,
    /// Handed over by a listener through the replication endpoint.
    forwarded: bool,
    /// The session's place in `--max-connections`, from its start-up packet.
    slot: std::sync::OnceLock<limits::SessionSlot>,
    /// Its place in its role's `CONNECTION LIMIT`, once authenticated.
    role_slot: std::sync::OnceLock<limits::RoleSlot>,
    session: tokio::sync::Mutex<Option<Session>>,
    /// A `COPY … FROM STDIN` in progress: what it loads and the data so far.
    copy_in: tokio::sync::Mutex<Option<CopyIn>>,
    cancel_key: Mutex<Option<(i32, Bytes)>>,
    /// The session's database, once it has one.
    database: std::sync::OnceLock<String>,
    /// Set when the front end ended the session because its database was
    /// being replaced (`Frontend::end_sessions_of`): the replica's name,
    /// for the FATAL its client gets at its next message.
    ended: std::sync::OnceLock<String>,
}

impl Drop for ConnState {
    fn drop(&mut self) {
        if let Some(key) = self
            .cancel_key
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            self.frontend.lock_cancels().remove(&key);
        }
    }
}

/// The handlers `pgwire` dispatches one connection's messages to
/// (`drive.rs`).
pub struct Connection {
    state: Arc<ConnState>,
    extended: Arc<Extended>,
}

impl Connection {
    fn new(frontend: Arc<Frontend>, peer: SocketAddr, forwarded: bool) -> Connection {
        let state = Arc::new(ConnState {
            frontend,
            peer,
            forwarded,
            slot: std::sync::OnceLock::new(),
            role_slot: std::sync::OnceLock::new(),
            session: tokio::sync::Mutex::new(None),
            copy_in: tokio::sync::Mutex::new(None),
            cancel_key: Mutex::new(None),
            database: std::sync::OnceLock::new(),
            ended: std::sync::OnceLock::new(),
        });
        {
            let mut all = state
                .frontend
                .connections
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            all.retain(|c| c.strong_count() > 0);
            all.push(Arc::downgrade(&state));
        }
        let extended = Arc::new(Extended {
            state: state.clone(),
            parser: Arc::new(Parser {
                state: state.clone(),
            }),
        });
        Connection { state, extended }
    }
}

/// A `COPY … FROM STDIN` between its start and CopyDone. The data is kept
/// until CopyDone and then loaded in one transaction (see the module's
/// known limits), charged to the session's memory budget: past it the
/// rest is dropped and CopyDone answers 53200.
struct CopyIn {
    spec: CopySpec,
    columns: Vec<Column>,
    data: Vec<u8>,
    charge: crate::engine::memory::Charge,
    failed: Option<Error>,
}

#[async_trait]
impl CopyHandler for ConnState {
    async fn on_copy_data<C>(&self, _client: &mut C, copy_data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let Some(copy) = self.copy_in.lock().await.as_mut() {
            if copy.failed.is_none() {
                match copy
                    .charge
                    .grow(copy_data.data.len() as u64, "COPY FROM STDIN data")
                {
                    Ok(()) => copy.data.extend_from_slice(&copy_data.data),
                    Err(e) => {
                        copy.failed = Some(e);
                        copy.data = Vec::new();
                    }
                }
            }
        }
        Ok(())
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let Some(copy) = self.copy_in.lock().await.take() else {
            return Err(user_error(&Error::sql("08P01", "CopyDone without COPY")));
        };
        let mut guard = self.session.lock().await;
        let session = guard.as_mut().ok_or(PgWireError::NotReadyForQuery)?;
        let result = match copy.failed {
            Some(e) => Err(e),
            None => load_copy(session, copy).await,
        };
        client.set_transaction_status(status_of(session));
        match result {
            Ok(n) => {
                client
                    .send(PgWireBackendMessage::CommandComplete(
                        Tag::new("COPY").with_rows(n as usize).into(),
                    ))
                    .await?;
                Ok(())
            }
            Err(err) => {
                session.note_error(&err);
                client.set_transaction_status(status_of(session));
                Err(user_error(&err))
            }
        }
    }

    async fn on_copy_fail<C>(&self, client: &mut C, fail: CopyFail) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.copy_in.lock().await.take();
        let err = Error::sql("57014", format!("COPY from stdin failed: {}", fail.message));
        if let Some(session) = self.session.lock().await.as_mut() {
            session.note_error(&err);
            client.set_transaction_status(status_of(session));
        }
        user_error(&err)
    }
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Parses the rows of a finished COPY FROM STDIN and inserts them in one
/// transaction (a savepoint inside a transaction block).
async fn load_copy(session: &mut Session, mut copy: CopyIn) -> Result<u64, Error> {
    let types: Vec<Type> = copy.columns.iter().map(|c| encode::pg_type(c.ty)).collect();
    if copy.spec.format == crate::sql::pg::CopyFormat::Binary {
        let values = binary_copy_rows(&copy, &types)?;
        return insert_copied(session, &copy, values).await;
    }
    let text = String::from_utf8(std::mem::take(&mut copy.data))
        .map_err(|_| Error::sql("22021", "COPY data is not valid UTF-8"))?;
    let rows = copy
        .spec
        .parse_rows(&text)
        .map_err(|why| Error::sql("22P04", why))?;
    let mut values = Vec::with_capacity(rows.len());
    for (line, row) in rows.into_iter().enumerate() {
        if row.len() != copy.columns.len() {
            return Err(Error::sql(
                "22P04",
                format!(
                    "COPY line {}: {} fields, expected {}",
                    line + 1,
                    row.len(),
                    copy.columns.len()
                ),
            ));
        }
        let mut out = Vec::with_capacity(row.len());
        for ((field, ty), col) in row.into_iter().zip(&types).zip(&copy.columns) {
            out.push(match field {
                None => rusqlite::types::Value::Null,
                Some(text) => encode::decode_text(ty, &text).ok_or_else(|| {
                    Error::sql(
                        "22P02",
                        format!(
                            "COPY line {}, column {}: invalid input for type {}: \"{text}\"",
                            line + 1,
                            col.name,
                            col.ty.pg_name()
                        ),
                    )
                })?,
            });
        }
        values.push(out);
    }
    insert_copied(session, &copy, values).await
}

/// The rows of a binary COPY, each field decoded by its column's type.
fn binary_copy_rows(
    copy: &CopyIn,
    types: &[Type],
) -> Result<Vec<Vec<rusqlite::types::Value>>, Error> {
    let rows =
        crate::sql::pg::copy::parse_binary(&copy.data).map_err(|why| Error::sql("22P04", why))?;
    rows.into_iter()
        .enumerate()
        .map(|(line, row)| {
            if row.len() != copy.columns.len() {
                return Err(Error::sql(
                    "22P04",
                    format!(
                        "COPY row {}: {} fields, expected {}",
                        line + 1,
                        row.len(),
                        copy.columns.len()
                    ),
                ));
            }
            row.into_iter()
                .zip(types)
                .zip(&copy.columns)
                .map(|((field, ty), col)| match field {
                    None => Ok(rusqlite::types::Value::Null),
                    Some(raw) => encode::decode_binary_field(ty, &raw).map_err(|why| {
                        Error::sql(
                            "22P03",
                            format!(
                                "COPY row {}, column {}: invalid binary {}: {why}",
                                line + 1,
                                col.name,
                                col.ty.pg_name()
                            ),
                        )
                    }),
                })
                .collect()
        })
        .collect()
}

/// Inserts COPY's rows in one transaction (a savepoint in a block).
async fn insert_copied(
    session: &mut Session,
    copy: &CopyIn,
    values: Vec<Vec<rusqlite::types::Value>>,
) -> Result<u64, Error> {
    let table = copy.spec.table.clone().unwrap_or_default();
    let names: Vec<String> = copy.columns.iter().map(|c| quote(&c.name)).collect();
    let params: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "INSERT INTO {} ({}) VALUES ({})",
        quote(&table),
        names.join(", "),
        params.join(", ")
    );
    session.run_many(vec![(sql, values)]).await
}

/// Starts a COPY: FROM STDIN answers CopyInResponse (and remembers what to
/// load); TO STDOUT runs the query and answers with all its rows.
async fn start_copy(
    state: &ConnState,
    session: &mut Session,
    spec: CopySpec,
) -> Result<Response, Error> {
    // COPY does not pass through `Session::execute` (FROM loads with
    // `run_many`): its privilege is checked here.
    session.authorize(&Command::Copy(spec.clone())).await?;
    if spec.from_stdin {
        let columns = session.copy_columns(&spec).await?;
        let n = columns.len();
        let format = i8::from(spec.format == crate::sql::pg::CopyFormat::Binary);
        let charge = session.memory().charge(0, "COPY FROM STDIN data")?;
        *state.copy_in.lock().await = Some(CopyIn {
            spec,
            columns,
            data: Vec::new(),
            charge,
            failed: None,
        });
        return Ok(Response::CopyIn(CopyResponse::new(
            format,
            n,
            stream::empty(),
        )));
    }
    let query = match &spec.query {
        Some(q) => q.clone(),
        None => {
            let columns = session.copy_columns(&spec).await?;
            let names: Vec<String> = columns.iter().map(|c| quote(&c.name)).collect();
            format!(
                "SELECT {} FROM {}",
                names.join(", "),
                quote(spec.table.as_deref().unwrap_or_default())
            )
        }
    };
    let (columns, source) = match session.execute(Command::Sql(query), Vec::new()).await? {
        Reply::Stream { columns, rows, .. } => (columns, Some(rows)),
        Reply::Rows { columns, rows, .. } => {
            let charge = session.memory().charge(0, "COPY rows")?;
            (
                columns,
                Some(crate::engine::cursor::RowSource::buffered(rows, charge)),
            )
        }
        _ => (Vec::new(), None),
    };
    let names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
    let ncols = columns.len();
    // pgwire counts CopyData messages for the tag: the header rides with
    // the first row (or goes alone when there is none).
    let header = spec.header_line(&names);
    let data = stream::unfold(
        (source, header, spec, columns),
        |(source, header, spec, columns)| async move {
            let mut source = source?;
            let (chunks, header) = match source.next_batch().await {
                Some(Ok(batch)) => {
                    let mut chunks: Vec<String> = batch
                        .iter()
                        .map(|row| {
                            let fields: Vec<Option<String>> = row
                                .iter()
                                .zip(&columns)
                                .map(|(v, c)| encode::value_text(c.ty, v))
                                .collect();
                            spec.format_row(&fields)
                        })
                        .collect();
                    let header = match (header, chunks.first_mut()) {
                        (Some(h), Some(first)) => {
                            first.insert_str(0, &h);
                            None
                        }
                        (h, _) => h,
                    };
                    (
                        chunks
                            .into_iter()
                            .map(|c| Ok(CopyData::new(Bytes::from(c))))
                            .collect(),
                        header,
                    )
                }
                Some(Err(e)) => {
                    return Some((vec![Err(user_error(&e))], (None, None, spec, columns)))
                }
                None => {
                    let last = header.map(|h| Ok(CopyData::new(Bytes::from(h))));
                    return last.map(|l| (vec![l], (None, None, spec, columns)));
                }
            };
            Some((chunks, (Some(source), header, spec, columns)))
        },
    )
    .flat_map(|chunks: Vec<PgWireResult<CopyData>>| stream::iter(chunks));
    Ok(Response::CopyOut(CopyResponse::new(0, ncols, data)))
}

#[async_trait]
impl CancelHandler for Frontend {
    async fn on_cancel_request(&self, request: CancelRequest) {
        let key = (request.pid, request.secret_key.to_bytes());
        let slot = self.lock_cancels().get(&key).and_then(Weak::upgrade);
        match slot {
            Some(slot) => slot.cancel(),
            None => tracing::debug!(pid = request.pid, "cancel request for no known session"),
        }
    }
}

fn fatal(err: &Error) -> PgWireError {
    let mut info = encode::to_user_error(err);
    info.severity = "FATAL".into();
    PgWireError::UserError(Box::new(info))
}

fn user_error(err: &Error) -> PgWireError {
    PgWireError::UserError(Box::new(encode::to_user_error(err)))
}

impl ConnState {
    /// The client's address: the connection's peer, or for a session a
    /// listener forwarded, the client's address as the listener reports it.
    fn client_ip(&self, params: &HashMap<String, String>) -> std::net::IpAddr {
        let reported = self
            .forwarded
            .then(|| params.get(crate::listener::CLIENT_ADDR_PARAM))
            .flatten()
            .and_then(|a| a.parse().ok());
        reported.unwrap_or(self.peer.ip())
    }

    /// Counts the session against `--max-connections` (53300 past it).
    fn take_slot(&self) -> Result<(), Error> {
        if self.slot.get().is_some() {
            return Ok(());
        }
        let sessions = &self.frontend.sessions;
        let slot = sessions.take().ok_or_else(|| {
            tracing::warn!(peer = %self.peer, max = sessions.max(), "refused a session: too many clients");
            Error::sql("53300", "sorry, too many clients already").with_hint(format!(
                "this node serves at most {} sessions (--max-connections); close idle sessions or raise it",
                sessions.max()
            ))
        })?;
        let _ = self.slot.set(slot);
        Ok(())
    }

    /// Counts the session against its role's `CONNECTION LIMIT` (53300
    /// past it, as PostgreSQL).
    fn take_role_slot(&self, role: &str, limit: Option<u32>) -> Result<(), Error> {
        let slot = self.frontend.role_sessions.take(role, limit).map_err(|held| {
            tracing::warn!(peer = %self.peer, role, held, "refused a session: the role's connection limit");
            Error::sql("53300", format!("too many connections for role \"{role}\"")).with_hint(
                format!(
                    "the role may hold {} sessions at once on this node and holds {held}; close some, or raise it with ALTER ROLE {role} CONNECTION LIMIT n (-1: none)",
                    limit.unwrap_or_default()
                ),
            )
        })?;
        let _ = self.role_slot.set(slot);
        Ok(())
    }

    /// How long the session may still wait for its client before
    /// `idle_in_transaction_session_timeout` ends it: None outside a
    /// transaction block or without a limit.
    async fn idle_in_transaction_limit(&self) -> Option<std::time::Duration> {
        let session = self.session.lock().await;
        let session = session.as_ref()?;
        match session.status() {
            TxStatus::Idle => None,
            TxStatus::InBlock | TxStatus::Failed => session.settings.idle_in_transaction_timeout,
        }
    }

    /// Ends a session idle in a transaction past `limit`: drops it (its
    /// transaction rolls back and the write lock it holds is freed) and
    /// returns the FATAL for the client.
    async fn end_idle_transaction(&self, limit: std::time::Duration) -> ErrorInfo {
        let session = self.session.lock().await.take();
        drop(session);
        tracing::info!(
            peer = %self.peer,
            database = self.database.get().map(String::as_str).unwrap_or_default(),
            limit_ms = limit.as_millis() as u64,
            "ended a session idle in a transaction (idle_in_transaction_session_timeout)"
        );
        drive::idle_fatal(limit)
    }

    /// Ends the session (FATAL) when its replica was demoted since it
    /// began, or its database is being replaced by a copy the primary
    /// seeded (then an idle session was already dropped: `ended`).
    async fn end_if_demoted(&self) -> PgWireResult<()> {
        let why = match self.session.lock().await.as_ref() {
            Some(session) => session.demoted().or_else(|| session.retired()),
            None => self.ended.get().map(|node| {
                session::retired_error(self.database.get().map_or("", String::as_str), node)
            }),
        };
        match why {
            Some(err) => Err(fatal(&err)),
            None => Ok(()),
        }
    }

    /// After authentication: open the database, build the session, finish
    /// the start-up protocol, and register for cancel requests.
    async fn open_session<C>(
        &self,
        client: &mut C,
        final_message: Option<pgwire::messages::startup::Authentication>,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let params = client.metadata().clone();
        let user = params
            .get("user")
            .cloned()
            .unwrap_or_else(|| USER.to_string());
        let db_name = params
            .get("database")
            .cloned()
            .unwrap_or_else(|| user.clone());
        let frontend = &self.frontend;
        let db = match frontend.engine.database(&db_name) {
            // libpq tools (psql -l, pgcli, createdb) connect to `postgres`
            // or `template1` first: they reach the default database.
            Err(Error::NoSuchDatabase(_))
                if matches!(db_name.as_str(), "postgres" | "template1") =>
            {
                frontend.engine.database(crate::engine::DEFAULT_DATABASE)
            }
            other => other,
        }
        .map_err(|e| fatal(&e))?;
        if db.is_retiring() {
            // A new session would hold the copy that is being replaced.
            return Err(fatal(&session::replacing_error(
                db.name(),
                frontend.ag.node(),
            )));
        }
        let principal = frontend.principal_of(&user);
        if let crate::auth::Principal::Role(name) = &principal {
            let role = frontend.ag.role(name);
            crate::auth::check_connect(name, role.as_ref(), db.name())
                .map_err(|e| fatal(&roles::denied(e)))?;
            self.take_role_slot(name, role.and_then(|r| r.connection_limit))
                .map_err(|e| fatal(&e))?;
        }
        let settings = Settings::from_startup(&params)
            .map_err(|e| fatal(&e))?
            .with_idle_in_transaction_default(frontend.idle_in_transaction_timeout);
        frontend.follow_read_ends(&db);
        let _ = self.database.set(db.name().to_string());
        let session = Session::new(
            frontend.engine.clone(),
            frontend.ag.clone(),
            db,
            settings,
            principal,
        );
        let slot = session.cancel_slot();
        *self.session.lock().await = Some(session);
        frontend
            .driver
            .complete_authentication(client, final_message)
            .await?;
        let (pid, secret) = client.pid_and_secret_key();
        let key = (pid, secret.to_bytes());
        frontend
            .lock_cancels()
            .insert(key.clone(), Arc::downgrade(&slot));
        *self.cancel_key.lock().unwrap_or_else(|e| e.into_inner()) = Some(key);
        tracing::debug!(peer = %self.peer, %user, database = %db_name, pid, "session started");
        Ok(())
    }
}

#[async_trait]
impl StartupHandler for ConnState {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match self.startup(client, message).await {
            Err(e) if e.is_fatal() => {
                // PostgreSQL closes the connection after a FATAL during
                // start-up and never sends ReadyForQuery: send the error,
                // close, and let pgwire's own error path (which would add
                // ReadyForQuery) fail on the closed socket.
                let info: ErrorInfo = e.into();
                let code = info.code.clone();
                let message = info.message.clone();
                let _ = client
                    .send(PgWireBackendMessage::ErrorResponse(info.into()))
                    .await;
                let _ = client.close().await;
                let mut again = ErrorInfo::new("FATAL".into(), code, message);
                again.hint = None;
                Err(PgWireError::UserError(Box::new(again)))
            }
            other => other,
        }
    }
}

impl crate::listener::LocalSessions for Frontend {
    fn refusal(&self, params: &HashMap<String, String>) -> Option<String> {
        match self.admit(params) {
            Err(e) if e.sqlstate() == "57P03" => Some(e.to_string()),
            _ => None,
        }
    }

    fn serve(self: Arc<Self>, session: crate::listener::HandedOver, peer: SocketAddr) {
        self.serve_handed_over(session, peer)
    }
}

impl ConnState {
    async fn startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let driver = &self.frontend.driver;
        let outcome = match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                self.frontend
                    .admit_transport(
                        self.peer,
                        self.forwarded,
                        client.is_secure(),
                        client.metadata(),
                    )
                    .map_err(|e| fatal(&e))?;
                self.frontend
                    .admit(client.metadata())
                    .map_err(|e| fatal(&e))?;
                self.take_slot().map_err(|e| fatal(&e))?;
                // Channel binding binds to the TLS this node ends: never to
                // a listener's, which forwards the session in plaintext.
                let bound = client.is_secure() && !self.forwarded;
                let offered = match (&self.frontend.scram_plus, bound) {
                    (Some(plus), true) => Some(plus),
                    _ => self.frontend.scram.as_ref(),
                };
                match offered {
                    Some(scram) => {
                        self.frontend
                            .may_authenticate(self.client_ip(client.metadata()))
                            .map_err(|e| fatal(&e))?;
                        driver.begin_authentication(client, scram.create()).await?
                    }
                    None => AuthOutcome::Authenticated {
                        identity: None,
                        final_message: None,
                    },
                }
            }
            PgWireFrontendMessage::PasswordMessageFamily(message) => {
                let ip = self.client_ip(client.metadata());
                match driver.advance_authentication(client, message).await {
                    Ok(outcome) => {
                        if matches!(outcome, AuthOutcome::Authenticated { .. }) {
                            self.frontend.lock_auth_failures().succeeded(ip);
                        }
                        outcome
                    }
                    Err(e) => {
                        self.frontend
                            .lock_auth_failures()
                            .failed(ip, std::time::Instant::now());
                        return Err(e);
                    }
                }
            }
            _ => return Ok(()),
        };
        match outcome {
            AuthOutcome::InProgress => Ok(()),
            AuthOutcome::Authenticated { final_message, .. } => {
                self.open_session(client, final_message).await
            }
        }
    }
}

fn status_of(session: &Session) -> TransactionStatus {
    match session.status() {
        TxStatus::Idle => TransactionStatus::Idle,
        TxStatus::InBlock => TransactionStatus::Transaction,
        TxStatus::Failed => TransactionStatus::Error,
    }
}

async fn send_asides<C>(client: &mut C, session: &mut Session) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    for aside in session.take_asides() {
        let message = match aside {
            Aside::Notice {
                severity,
                code,
                message,
            } => PgWireBackendMessage::NoticeResponse(NoticeResponse::from(ErrorInfo::new(
                severity.into(),
                code.into(),
                message,
            ))),
            Aside::ParameterStatus(name, value) => {
                PgWireBackendMessage::ParameterStatus(ParameterStatus::new(name, value))
            }
        };
        client.feed(message).await?;
    }
    Ok(())
}

/// Runs `command`; a BACKUP's notices sent while it runs (`STATS = n`)
/// reach the client at once, not with the reply. Any other statement runs
/// as is.
async fn execute_live<C>(
    client: &mut C,
    session: &mut Session,
    command: Command,
    params: Vec<rusqlite::types::Value>,
) -> PgWireResult<Result<Reply, Error>>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let live = matches!(command, Command::Backup(_))
        .then(|| session.take_live())
        .flatten();
    let Some(mut live) = live else {
        return Ok(session.execute(command, params).await);
    };
    let notice = |message: String| {
        PgWireBackendMessage::NoticeResponse(NoticeResponse::from(ErrorInfo::new(
            "NOTICE".into(),
            "00000".into(),
            message,
        )))
    };
    let result = {
        let run = session.execute(command, params);
        tokio::pin!(run);
        loop {
            tokio::select! {
                result = &mut run => break result,
                Some(message) = live.recv() => client.send(notice(message)).await?,
            }
        }
    };
    while let Ok(message) = live.try_recv() {
        client.feed(notice(message)).await?;
    }
    session.give_back_live(live);
    Ok(result)
}

/// Turns a session reply into a `pgwire` response in the given formats.
/// `announced` are the columns described earlier (extended protocol); rows
/// are encoded by those types so they match the RowDescription sent then.
fn to_response(
    reply: Reply,
    format: &Format,
    announced: Option<&[Column]>,
) -> PgWireResult<Response> {
    Ok(match reply {
        Reply::Rows { columns, rows, tag } => {
            let columns = match announced {
                Some(a) if a.len() == columns.len() => a.to_vec(),
                _ => columns,
            };
            let schema = Arc::new(encode::fields(&columns, format));
            let data = encode::encode_rows(&schema, rows)?;
            let mut response = QueryResponse::new(schema, stream::iter(data.into_iter().map(Ok)));
            // pgwire appends the row count it sent.
            let verb = tag.rsplit_once(' ').map_or(tag.as_str(), |(verb, _)| verb);
            response.set_command_tag(verb);
            Response::Query(response)
        }
        Reply::Stream { columns, rows, tag } => {
            let columns = match announced {
                Some(a) if a.len() == columns.len() => a.to_vec(),
                _ => columns,
            };
            let schema = Arc::new(encode::fields(&columns, format));
            let mut response = QueryResponse::new(schema.clone(), row_stream(schema, rows));
            let verb = tag.rsplit_once(' ').map_or(tag.as_str(), |(verb, _)| verb);
            response.set_command_tag(verb);
            Response::Query(response)
        }
        Reply::Done(tag) => Response::Execution(Tag::new(&tag)),
        Reply::TxStart(tag) => Response::TransactionStart(Tag::new(&tag)),
        Reply::TxEnd(tag) => Response::TransactionEnd(Tag::new(&tag)),
    })
}

/// A cursor's rows as DataRows, encoded a batch at a time as the client
/// takes them (nothing is read ahead beyond the cursor's window).
fn row_stream(
    schema: Arc<Vec<FieldInfo>>,
    rows: crate::engine::cursor::RowSource,
) -> impl futures::Stream<Item = PgWireResult<pgwire::messages::data::DataRow>> + Send {
    use futures::StreamExt;
    stream::unfold(Some(rows), move |source| {
        let schema = schema.clone();
        async move {
            let mut source = source?;
            match source.next_batch().await {
                None => None,
                Some(Ok(batch)) => match encode::encode_rows(&schema, batch) {
                    Ok(encoded) => Some((encoded.into_iter().map(Ok).collect(), Some(source))),
                    Err(e) => Some((vec![Err(e)], None)),
                },
                Some(Err(e)) => Some((vec![Err(user_error(&e))], None)),
            }
        }
    })
    .flat_map(|rows: Vec<PgWireResult<pgwire::messages::data::DataRow>>| stream::iter(rows))
}

/// How sending a result's rows ended.
enum Sent {
    /// Every row sent and CommandComplete with their count.
    Complete,
    /// `max_rows` rows sent and PortalSuspended: the rest stays in the portal.
    Suspended,
    /// The rows failed (the statement's error: cancel, timeout, budget, a
    /// value that does not convert); nothing more of them is sent.
    Failed(PgWireError),
}

/// Sends rows as the result produces them — `feed` waits whenever the
/// socket's buffer is full, which is what holds a slow client's statement
/// back — up to `max_rows` (0: all). Err only when the connection failed.
async fn send_rows<C>(
    client: &mut C,
    response: &mut QueryResponse,
    describe: bool,
    max_rows: usize,
) -> PgWireResult<Sent>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    use futures::StreamExt;
    if describe {
        client
            .feed(PgWireBackendMessage::RowDescription(
                pgwire::messages::data::RowDescription::new(
                    response.row_schema().iter().map(Into::into).collect(),
                ),
            ))
            .await?;
    }
    let tag = response.command_tag().to_string();
    let rows = response.data_rows();
    let mut sent = 0;
    while max_rows == 0 || sent < max_rows {
        match rows.next().await {
            Some(Ok(row)) => {
                client.feed(PgWireBackendMessage::DataRow(row)).await?;
                sent += 1;
            }
            Some(Err(e)) => return Ok(Sent::Failed(e)),
            None => {
                client
                    .feed(PgWireBackendMessage::CommandComplete(
                        Tag::new(&tag).with_rows(sent).into(),
                    ))
                    .await?;
                return Ok(Sent::Complete);
            }
        }
    }
    client
        .feed(PgWireBackendMessage::PortalSuspended(
            pgwire::messages::extendedquery::PortalSuspended::new(),
        ))
        .await?;
    Ok(Sent::Suspended)
}

fn error_message(e: PgWireError) -> PgWireBackendMessage {
    let info: ErrorInfo = e.into();
    PgWireBackendMessage::ErrorResponse(info.into())
}

#[async_trait]
impl SimpleQueryHandler for ConnState {
    /// Runs the query's statements and answers ReadyForQuery with the
    /// session's own transaction status.
    async fn on_query<C>(&self, client: &mut C, query: Query) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            return Err(PgWireError::NotReadyForQuery);
        }
        self.end_if_demoted().await?;
        client.set_state(PgWireConnectionState::QueryInProgress);
        match self.move_portal(client, &query.query).await {
            Ok(None) => {}
            Ok(Some(moved)) => {
                send_execution_response(client, Tag::new("MOVE").with_rows(moved as usize)).await?;
                return self.ready_after_simple(client).await;
            }
            Err(e) => {
                client.feed(error_message(e)).await?;
                return self.ready_after_simple(client).await;
            }
        }
        if self.run_simple(client, &query.query).await? {
            // The data follows; ReadyForQuery comes after CopyDone.
            return Ok(());
        }
        self.ready_after_simple(client).await
    }

    /// Every statement's response is sent as it runs (`ConnState::run_simple`).
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.run_simple(client, query).await?;
        Ok(Vec::new())
    }
}

impl ConnState {
    /// ReadyForQuery at the end of a simple Query, with the session's own
    /// transaction status.
    async fn ready_after_simple<C>(&self, client: &mut C) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let status = match self.session.lock().await.as_ref() {
            Some(session) => status_of(session),
            None => TransactionStatus::Idle,
        };
        client.set_state(PgWireConnectionState::ReadyForQuery);
        client.set_transaction_status(status);
        send_ready_for_query(client, status).await
    }

    /// Sends one response of a simple Query; Ok(false) when it was an
    /// error (the statements after it are skipped), Ok(true) when it
    /// started COPY FROM STDIN.
    async fn send_simple<C>(
        &self,
        client: &mut C,
        session: &mut Session,
        response: Response,
    ) -> PgWireResult<Option<bool>>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match response {
            Response::Query(mut rows) => match send_rows(client, &mut rows, true, 0).await? {
                Sent::Failed(e) => {
                    session.note_stream_error();
                    client.feed(error_message(e)).await?;
                    return Ok(Some(false));
                }
                Sent::Complete | Sent::Suspended => {}
            },
            Response::Execution(tag)
            | Response::TransactionStart(tag)
            | Response::TransactionEnd(tag) => send_execution_response(client, tag).await?,
            Response::Error(info) => {
                client
                    .feed(PgWireBackendMessage::ErrorResponse((*info).into()))
                    .await?;
                return Ok(Some(false));
            }
            Response::EmptyQuery => {
                client
                    .feed(PgWireBackendMessage::EmptyQueryResponse(
                        EmptyQueryResponse::new(),
                    ))
                    .await?
            }
            Response::CopyIn(copy) => {
                send_copy_in_response(client, copy).await?;
                client.set_state(PgWireConnectionState::CopyInProgress(false));
                return Ok(Some(true));
            }
            Response::CopyOut(copy) => send_copy_out_response(client, copy).await?,
            Response::CopyBoth(_) => unreachable!("availdb never answers with COPY BOTH"),
        }
        Ok(None)
    }

    /// Runs a simple Query's statements, sending each one's response
    /// before the next runs (rows as they are produced); returns true when
    /// the query started COPY FROM STDIN.
    async fn run_simple<C>(&self, client: &mut C, query: &str) -> PgWireResult<bool>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut guard = self.session.lock().await;
        let session = guard.as_mut().ok_or(PgWireError::NotReadyForQuery)?;
        let statements = split_statements(query);
        if statements.is_empty() {
            self.send_simple(client, session, Response::EmptyQuery)
                .await?;
            return Ok(false);
        }
        let commands: Vec<Command> = statements.into_iter().map(classify).collect();
        if let Some(at) = commands.iter().position(|c| matches!(c, Command::Copy(_))) {
            let response = if commands.len() > 1 {
                Response::Error(Box::new(encode::to_user_error(
                    &Error::sql(
                        "0A000",
                        "COPY must be the only statement of its Query message",
                    )
                    .with_hint("send COPY on its own"),
                )))
            } else {
                let Command::Copy(spec) = commands[at].clone() else {
                    unreachable!("found above")
                };
                let result = start_copy(self, session, spec).await;
                send_asides(client, session).await?;
                match result {
                    Ok(response) => response,
                    Err(err) => {
                        session.note_error(&err);
                        Response::Error(Box::new(encode::to_user_error(&err)))
                    }
                }
            };
            return Ok(self.send_simple(client, session, response).await? == Some(true));
        }
        // Like PostgreSQL, several statements in one Query run as one
        // implicit transaction unless they manage transactions themselves.
        let implicit = commands.len() > 1
            && session.status() == TxStatus::Idle
            && commands.iter().all(|c| matches!(c, Command::Sql(_)));
        if implicit {
            if let Err(e) = session
                .execute(
                    Command::Begin {
                        read_only: None,
                        strict: None,
                    },
                    Vec::new(),
                )
                .await
            {
                return Err(user_error(&e));
            }
        }
        let mut failed = false;
        for command in commands {
            let result = execute_live(client, session, command, Vec::new()).await?;
            send_asides(client, session).await?;
            let response = match result {
                Ok(reply) => to_response(reply, &Format::UnifiedText, None)?,
                Err(err) => {
                    tracing::debug!(sqlstate = err.sqlstate(), error = %err, "statement failed");
                    Response::Error(Box::new(encode::to_user_error(&err)))
                }
            };
            if self.send_simple(client, session, response).await? == Some(false) {
                failed = true;
                break;
            }
        }
        if implicit {
            let end = if failed {
                Command::Rollback
            } else {
                Command::Commit
            };
            let result = session.execute(end, Vec::new()).await;
            send_asides(client, session).await?;
            if let Err(err) = result {
                client
                    .feed(PgWireBackendMessage::ErrorResponse(
                        encode::to_user_error(&err).into(),
                    ))
                    .await?;
            }
        }
        Ok(false)
    }
}

/// A statement prepared with Parse.
#[derive(Debug, Clone)]
pub struct Prepared {
    command: Command,
    /// For SQLite statements: types found when the statement was parsed.
    described: Option<Described>,
}

impl Prepared {
    fn columns(&self) -> Vec<Column> {
        let text = |name: &str| {
            vec![Column {
                name: name.to_string(),
                ty: ValueType::Text,
            }]
        };
        match &self.command {
            Command::Show { name } => text(name),
            Command::SessionUser => text("current_user"),
            Command::CurrentSchema => text("current_schema"),
            Command::Backup(sql) => backup::columns(sql),
            Command::BackupPreferred { .. } => vec![backup::preferred_column()],
            Command::Declare { .. }
            | Command::Fetch {
                move_only: true, ..
            } => Vec::new(),
            _ => self
                .described
                .as_ref()
                .map(|d| d.columns.clone())
                .unwrap_or_default(),
        }
    }

    fn parameter_types(&self) -> Vec<Type> {
        self.described
            .as_ref()
            .map(|d| {
                d.params
                    .iter()
                    .map(|p| p.map_or(Type::TEXT, encode::pg_type))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Parses statements for the extended protocol, on the connection's session.
pub struct Parser {
    state: Arc<ConnState>,
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let statements = split_statements(sql);
        let statement = match statements.as_slice() {
            [] => return Ok(None),
            [one] => *one,
            _ => {
                return Err(user_error(&Error::sql(
                    "42601",
                    "cannot insert multiple commands into a prepared statement",
                )))
            }
        };
        self.state.end_if_demoted().await?;
        let command = classify(statement);
        // The privilege the statement needs is checked here, before it is
        // described: a Describe answers its columns and parameter types
        // from what Parse found, and a role without READ must not learn a
        // table's columns from them. Execute checks again (a REVOKE in
        // between holds).
        {
            let mut guard = self.state.session.lock().await;
            let session = guard.as_mut().ok_or(PgWireError::NotReadyForQuery)?;
            session
                .authorize(&command)
                .await
                .map_err(|e| user_error(&e))?;
        }
        let described = match &command {
            // A cursor's query: its parameters (DECLARE itself has no rows).
            Command::Sql(sql) | Command::Declare { query: sql, .. } => {
                let mut guard = self.state.session.lock().await;
                let session = guard.as_mut().ok_or(PgWireError::NotReadyForQuery)?;
                Some(
                    session
                        .describe(sql.clone())
                        .await
                        .map_err(|e| user_error(&e))?,
                )
            }
            Command::Fetch {
                name,
                move_only: false,
                ..
            } => {
                let guard = self.state.session.lock().await;
                let session = guard.as_ref().ok_or(PgWireError::NotReadyForQuery)?;
                Some(Described {
                    columns: session.cursor_columns(name).map_err(|e| user_error(&e))?,
                    params: Vec::new(),
                    readonly: true,
                })
            }
            _ => None,
        };
        Ok(Some(Prepared { command, described }))
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(stmt.parameter_types())
    }

    fn get_result_schema(
        &self,
        stmt: &Prepared,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        Ok(encode::fields(
            &stmt.columns(),
            format.unwrap_or(&Format::UnifiedBinary),
        ))
    }
}

/// The extended-protocol handler of one connection.
pub struct Extended {
    state: Arc<ConnState>,
    parser: Arc<Parser>,
}

impl Extended {
    /// Sends what an Execute of a statement without rows answered.
    async fn send_execute_response<C>(&self, client: &mut C, response: Response) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match response {
            Response::Query(_) => unreachable!("rows are sent by on_execute"),
            Response::EmptyQuery => {
                client
                    .feed(PgWireBackendMessage::EmptyQueryResponse(
                        EmptyQueryResponse::new(),
                    ))
                    .await?
            }
            Response::Execution(tag)
            | Response::TransactionStart(tag)
            | Response::TransactionEnd(tag) => send_execution_response(client, tag).await?,
            Response::Error(info) => {
                client
                    .send(PgWireBackendMessage::ErrorResponse((*info).into()))
                    .await?
            }
            Response::CopyIn(copy) => {
                client.set_state(PgWireConnectionState::CopyInProgress(true));
                send_copy_in_response(client, copy).await?;
                return Ok(());
            }
            Response::CopyOut(copy) => send_copy_out_response(client, copy).await?,
            Response::CopyBoth(_) => unreachable!("availdb never answers with COPY BOTH"),
        }
        if let Some(session) = self.state.session.lock().await.as_ref() {
            client.set_transaction_status(status_of(session));
        }
        client.set_state(PgWireConnectionState::ReadyForQuery);
        Ok(())
    }
}

impl ConnState {
    /// Runs a bound portal's statement (the extended protocol's first
    /// Execute, or a MOVE on the portal: [`ConnState::move_portal`]).
    async fn run_portal<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
    ) -> PgWireResult<Response>
    where
        C: Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.end_if_demoted().await?;
        let prepared = &portal.statement.statement;
        let inferred = prepared.parameter_types();
        let types: Vec<Type> = (0..portal.parameter_len())
            .map(|i| {
                portal
                    .statement
                    .parameter_types
                    .get(i)
                    .cloned()
                    .flatten()
                    .filter(|t| *t != Type::UNKNOWN)
                    .or_else(|| inferred.get(i).cloned())
                    .unwrap_or(Type::UNKNOWN)
            })
            .collect();
        let mut guard = self.session.lock().await;
        let session = guard.as_mut().ok_or(PgWireError::NotReadyForQuery)?;
        let params = match encode::decode_params(portal, &types) {
            Ok(params) => params,
            Err(err) => {
                session.note_error(&err);
                return Err(user_error(&err));
            }
        };
        if let Command::Copy(spec) = &prepared.command {
            let result = start_copy(self, session, spec.clone()).await;
            send_asides(client, session).await?;
            return result.map_err(|err| {
                session.note_error(&err);
                user_error(&err)
            });
        }
        let result = execute_live(client, session, prepared.command.clone(), params).await?;
        send_asides(client, session).await?;
        match result {
            Ok(reply) => {
                let announced = prepared.columns();
                to_response(reply, &portal.result_column_format, Some(&announced))
            }
            Err(err) => Err(user_error(&err)),
        }
    }

    /// `MOVE [FORWARD] [n | ALL] [FROM | IN] name` where `name` is a portal
    /// bound with the extended protocol, not a cursor of DECLARE: as in
    /// PostgreSQL, where both are portals, the portal skips `n` rows (its
    /// statement runs first if no Execute has yet), and the next Execute
    /// goes on after them (asyncpg's `Cursor.forward`). None when the
    /// query is anything else, for the session to run.
    async fn move_portal<C>(&self, client: &mut C, query: &str) -> PgWireResult<Option<u64>>
    where
        C: ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        use futures::StreamExt;
        use pgwire::api::portal::PortalExecutionState;
        use pgwire::api::store::{Entry, MemPortalStore};
        static MOVE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
            regex::Regex::new(
                r#"(?is)^\s*MOVE\s+(?:FORWARD\s+)?(\d+|ALL)?\s*(?:(?:FROM|IN)\s+)?("[^"]+"|[\w$]+)\s*;?\s*$"#,
            )
            .expect("valid regex")
        });
        let Some(c) = MOVE.captures(query) else {
            return Ok(None);
        };
        let name = c[2].trim_matches('"').to_string();
        let count = match c.get(1).map(|m| m.as_str()) {
            None => 1,
            Some(n) if n.eq_ignore_ascii_case("all") => u64::MAX,
            Some(n) => n.parse().unwrap_or(u64::MAX),
        };
        if let Some(session) = self.session.lock().await.as_ref() {
            if session.cursor_columns(&name).is_ok() {
                return Ok(None);
            }
        }
        let Some(store) = client
            .portal_store()
            .as_any()
            .downcast_ref::<MemPortalStore<Prepared>>()
        else {
            return Ok(None);
        };
        let Some(Entry::Value(portal)) = store.get_portal(&name) else {
            return Ok(None);
        };
        let state = portal.state();
        let mut state = state.lock().await;
        let mut rows = match std::mem::take(&mut *state) {
            PortalExecutionState::Initial => {
                match self.run_portal(client, portal.as_ref()).await? {
                    Response::Query(rows) => rows,
                    _ => {
                        *state = PortalExecutionState::Finished;
                        return Ok(Some(0));
                    }
                }
            }
            PortalExecutionState::Suspended(rows) => rows,
            PortalExecutionState::Finished => {
                *state = PortalExecutionState::Finished;
                return Ok(Some(0));
            }
        };
        let mut moved = 0;
        while moved < count {
            match rows.data_rows().next().await {
                Some(Ok(_)) => moved += 1,
                Some(Err(e)) => {
                    *state = PortalExecutionState::Finished;
                    if let Some(session) = self.session.lock().await.as_mut() {
                        session.note_stream_error();
                    }
                    return Err(e);
                }
                None => {
                    *state = PortalExecutionState::Finished;
                    return Ok(Some(moved));
                }
            }
        }
        *state = PortalExecutionState::Suspended(rows);
        Ok(Some(moved))
    }
}

#[async_trait]
impl ExtendedQueryHandler for Extended {
    type Statement = Prepared;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.state.run_portal(client, portal).await
    }

    /// Runs a portal's statement at its first Execute and sends its rows
    /// as they are produced, `max_rows` at a time: with a row limit the
    /// portal is suspended (PortalSuspended) and the next Execute goes on
    /// where it stopped. pgwire's own `on_execute` would collect each
    /// Execute's rows in memory first (all of them without a limit).
    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        use pgwire::api::portal::PortalExecutionState;
        use pgwire::api::store::Entry;
        if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            return Err(PgWireError::NotReadyForQuery);
        }
        client.set_state(PgWireConnectionState::QueryInProgress);
        let name = message.name.as_deref().unwrap_or(pgwire::api::DEFAULT_NAME);
        let max_rows = message.max_rows.max(0) as usize;
        let portal = match client.portal_store().get_portal(name) {
            Some(Entry::Value(portal)) => portal,
            Some(Entry::Empty) => {
                client
                    .feed(PgWireBackendMessage::EmptyQueryResponse(
                        EmptyQueryResponse::new(),
                    ))
                    .await?;
                client.set_state(PgWireConnectionState::ReadyForQuery);
                return Ok(());
            }
            None => return Err(PgWireError::PortalNotFound(name.to_owned())),
        };
        let state = portal.state();
        let mut state = state.lock().await;
        let mut rows = match std::mem::take(&mut *state) {
            PortalExecutionState::Initial => {
                match self.do_query(client, portal.as_ref(), max_rows).await? {
                    Response::Query(rows) => rows,
                    other => {
                        *state = PortalExecutionState::Finished;
                        drop(state);
                        return self.send_execute_response(client, other).await;
                    }
                }
            }
            PortalExecutionState::Suspended(rows) => rows,
            PortalExecutionState::Finished => {
                client
                    .feed(PgWireBackendMessage::CommandComplete(
                        Tag::new("SELECT").with_rows(0).into(),
                    ))
                    .await?;
                client.set_state(PgWireConnectionState::ReadyForQuery);
                return Ok(());
            }
        };
        match send_rows(client, &mut rows, false, max_rows).await? {
            Sent::Suspended => *state = PortalExecutionState::Suspended(rows),
            Sent::Complete => *state = PortalExecutionState::Finished,
            Sent::Failed(e) => {
                *state = PortalExecutionState::Finished;
                if let Some(session) = self.state.session.lock().await.as_mut() {
                    session.note_stream_error();
                    client.set_transaction_status(status_of(session));
                }
                return Err(e);
            }
        }
        client.set_state(PgWireConnectionState::ReadyForQuery);
        Ok(())
    }

    /// Describe of a portal also answers for a cursor opened with DECLARE
    /// (psycopg asks so for its named cursors' columns), as in PostgreSQL,
    /// where such a cursor is a portal.
    async fn on_describe<C>(&self, client: &mut C, message: Describe) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.as_deref().unwrap_or(pgwire::api::DEFAULT_NAME);
        if message.target_type == b'P' && client.portal_store().get_portal(name).is_none() {
            let columns = match self.state.session.lock().await.as_ref() {
                Some(session) => session.cursor_columns(name).ok(),
                None => None,
            };
            if let Some(columns) = columns {
                let fields = encode::fields(&columns, &Format::UnifiedText);
                return feed_describe_response(client, &DescribePortalResponse::new(fields)).await;
            }
        }
        let name = message.name.as_deref().unwrap_or(pgwire::api::DEFAULT_NAME);
        match message.target_type {
            b'S' => match client.portal_store().get_statement(name) {
                Some(Entry::Value(stmt)) => {
                    let described = self.do_describe_statement(client, &stmt).await?;
                    feed_describe_response(client, &described).await
                }
                Some(Entry::Empty) => {
                    feed_describe_response(client, &DescribeStatementResponse::no_data()).await
                }
                None => Err(PgWireError::StatementNotFound(name.to_owned())),
            },
            b'P' => match client.portal_store().get_portal(name) {
                Some(Entry::Value(portal)) => {
                    let described = self.do_describe_portal(client, &portal).await?;
                    feed_describe_response(client, &described).await
                }
                Some(Entry::Empty) => {
                    feed_describe_response(client, &DescribePortalResponse::no_data()).await
                }
                None => Err(PgWireError::PortalNotFound(name.to_owned())),
            },
            other => Err(PgWireError::InvalidTargetType(other)),
        }
    }

    /// As pgwire's, but ParseComplete is queued, not flushed: the replies
    /// to Parse, Bind, Describe and Execute leave in one write at Sync (or
    /// Flush), as PostgreSQL sends them. A flush per message is a system
    /// call each and wakes the client once per message.
    async fn on_parse<C>(&self, client: &mut C, message: Parse) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message
            .name
            .clone()
            .unwrap_or_else(|| pgwire::api::DEFAULT_NAME.to_owned());
        match StoredStatement::parse(client, &message, self.query_parser()).await? {
            Some(stmt) => client.portal_store().put_statement(Arc::new(stmt)),
            None => client.portal_store().put_empty_statement(&name),
        }
        client
            .feed(PgWireBackendMessage::ParseComplete(ParseComplete::new()))
            .await?;
        Ok(())
    }

    /// As pgwire's, with BindComplete queued (see `on_parse`).
    async fn on_bind<C>(&self, client: &mut C, message: Bind) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statement = message
            .statement_name
            .as_deref()
            .unwrap_or(pgwire::api::DEFAULT_NAME);
        let portal = message
            .portal_name
            .as_deref()
            .unwrap_or(pgwire::api::DEFAULT_NAME);
        match client.portal_store().get_statement(statement) {
            Some(Entry::Value(stmt)) => {
                let bound = Portal::try_new(&message, stmt)?;
                client.portal_store().put_portal(Arc::new(bound));
            }
            Some(Entry::Empty) => {
                if !message.parameters.is_empty() {
                    return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                        "ERROR".to_owned(),
                        "08P01".to_owned(),
                        format!(
                            "bind message supplies {} parameters, but prepared statement \"{statement}\" requires 0",
                            message.parameters.len()
                        ),
                    ))));
                }
                client.portal_store().put_empty_portal(portal);
            }
            None => return Err(PgWireError::StatementNotFound(statement.to_owned())),
        }
        client
            .feed(PgWireBackendMessage::BindComplete(BindComplete::new()))
            .await?;
        Ok(())
    }

    /// ReadyForQuery carries the session's own transaction status.
    async fn on_sync<C>(&self, client: &mut C, _message: PgSync) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        client.portal_store().rm_portal(pgwire::api::DEFAULT_NAME);
        let status = match self.state.session.lock().await.as_ref() {
            Some(session) => status_of(session),
            None => TransactionStatus::Idle,
        };
        if status == TransactionStatus::Idle {
            // Portals live as long as their transaction: outside a block
            // that ends here (an open portal would keep its reader's
            // snapshot, and the WAL behind it, until the connection ends).
            client.portal_store().clear_portals();
        }
        client.set_transaction_status(status);
        client
            .send(PgWireBackendMessage::ReadyForQuery(ReadyForQuery::new(
                status,
            )))
            .await?;
        Ok(())
    }
}

/// Queues the answer to a Describe (ParameterDescription, then
/// RowDescription or NoData) without flushing it: pgwire's
/// `send_describe_response` flushes each message (see `on_parse`).
async fn feed_describe_response<C, D>(client: &mut C, described: &D) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    D: DescribeResponse,
{
    if let Some(types) = described.parameters() {
        client
            .feed(PgWireBackendMessage::ParameterDescription(
                ParameterDescription::new(types.iter().map(|t| t.oid()).collect()),
            ))
            .await?;
    }
    let message = if described.is_no_data() {
        PgWireBackendMessage::NoData(NoData::new())
    } else {
        PgWireBackendMessage::RowDescription(RowDescription::new(
            described.fields().iter().map(Into::into).collect(),
        ))
    };
    client.feed(message).await?;
    Ok(())
}
