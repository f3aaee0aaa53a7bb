//! The message loop of one client connection: pgwire's TLS negotiation and
//! message dispatch (`negotiate_tls`, `process_message`, `process_error`),
//! driven here rather than by `pgwire::tokio::process_socket` so that a
//! session idle in a transaction can be ended.
//!
//! # `idle_in_transaction_session_timeout`
//! After a Query or a Sync has been answered with ReadyForQuery, while the
//! session is in a transaction block (open or failed), the wait for the
//! client's next message is bounded by the session's
//! `idle_in_transaction_session_timeout` (the node's
//! `--idle-in-transaction-session-timeout-ms` unless the session sets its
//! own). When it runs out, the session is dropped — its transaction rolled
//! back and, above all, the database's single write lock it may hold given
//! back, so the other sessions' writes go on — and the client gets FATAL
//! 25P03 and the connection closes, as in PostgreSQL.
//!
//! Everything else is pgwire's loop as `process_socket` runs it: the start-up
//! phase bounded by [`STARTUP_TIMEOUT`], Terminate closes, a FATAL error
//! ends the connection, a CancelRequest's connection closes after it.

use std::io;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use pgwire::api::DefaultClient;
use pgwire::api::{ClientInfo, PgWireConnectionState};
use pgwire::error::ErrorInfo;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::server::{
    negotiate_tls, process_error, process_message, PgWireMessageServerCodec,
};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use super::{Connection, Prepared};

/// How long a client has for TLS, its start-up packet and authentication
/// (pgwire's own bound).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves one connection from its first byte to its end.
pub(super) async fn run(
    socket: TcpStream,
    tls: Option<crate::tls::TlsAcceptor>,
    handlers: Connection,
) -> io::Result<()> {
    let startup_deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
    let Ok(negotiated) =
        tokio::time::timeout_at(startup_deadline, negotiate_tls::<Prepared>(socket, tls)).await
    else {
        return Ok(());
    };
    // None: a direct TLS negotiation on a node without a certificate.
    let Some(socket) = negotiated? else {
        return Ok(());
    };
    serve(socket, handlers, startup_deadline).await
}

/// Serves a session a listener forwarded through the replication endpoint
/// (plaintext or partner TLS, [`crate::net::PartnerStream`]) or handed
/// over in this process ([`crate::listener::HandedOver`]): it opens
/// with its start-up packet, never with an encryption request — the
/// listener ended the client's TLS.
pub(super) async fn run_forwarded<T>(
    socket: T,
    peer: std::net::SocketAddr,
    handlers: Connection,
) -> io::Result<()>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync + 'static,
{
    let startup_deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
    let mut socket = Framed::new(
        socket,
        PgWireMessageServerCodec::new(DefaultClient::<Prepared>::new(peer, false)),
    );
    socket.set_state(PgWireConnectionState::AwaitingStartup);
    serve(socket, handlers, startup_deadline).await
}

/// The message loop, after any TLS negotiation.
async fn serve<T>(
    mut socket: Framed<T, PgWireMessageServerCodec<Prepared>>,
    handlers: Connection,
    startup_deadline: tokio::time::Instant,
) -> io::Result<()>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync + 'static,
{
    // The handlers `Connection` hands pgwire (`PgWireServerHandlers`), by
    // their own types.
    let state = handlers.state.clone();
    let extended = handlers.extended.clone();
    let cancel = state.frontend.clone();
    // A ReadyForQuery answered the last message: the session waits for
    // its client.
    let mut ready = false;
    loop {
        let starting = matches!(
            socket.state(),
            PgWireConnectionState::AwaitingStartup
                | PgWireConnectionState::AuthenticationInProgress
        );
        let idle_limit = if ready {
            state.idle_in_transaction_limit().await
        } else {
            None
        };
        let message = if starting {
            tokio::select! {
                _ = tokio::time::sleep_until(startup_deadline) => None,
                message = socket.next() => message,
            }
        } else if let Some(limit) = idle_limit {
            tokio::select! {
                _ = tokio::time::sleep(limit) => {
                    let info = state.end_idle_transaction(limit).await;
                    let _ = socket.send(PgWireBackendMessage::ErrorResponse(info.into())).await;
                    let _ = socket.close().await;
                    return Ok(());
                }
                message = socket.next() => message,
            }
        } else {
            socket.next().await
        };
        let Some(Ok(message)) = message else {
            break;
        };
        // A Terminate ends the connection (asyncpg waits for the close).
        if matches!(message, PgWireFrontendMessage::Terminate(_)) {
            break;
        }
        let answers_ready = matches!(
            message,
            PgWireFrontendMessage::Query(_) | PgWireFrontendMessage::Sync(_)
        );
        let in_extended = match socket.state() {
            PgWireConnectionState::CopyInProgress(extended) => extended,
            _ => message.is_extended_query(),
        };
        let is_cancel = matches!(message, PgWireFrontendMessage::CancelRequest(_));
        if let Err(e) = process_message(
            message,
            &mut socket,
            state.clone(),
            state.clone(),
            extended.clone(),
            state.clone(),
            cancel.clone(),
        )
        .await
        {
            let fatal = e.is_fatal();
            process_error(&mut socket, e, in_extended).await?;
            if fatal {
                break;
            }
        }
        if is_cancel {
            break;
        }
        ready = answers_ready && matches!(socket.state(), PgWireConnectionState::ReadyForQuery);
    }
    Ok(())
}

/// The FATAL a session idle in a transaction for `limit` gets.
pub(super) fn idle_fatal(limit: Duration) -> ErrorInfo {
    let mut info = ErrorInfo::new(
        "FATAL".into(),
        "25P03".into(),
        format!(
            "terminating connection due to idle-in-transaction timeout: the session waited \
             {} ms inside a transaction (idle_in_transaction_session_timeout); its transaction \
             was rolled back",
            limit.as_millis()
        ),
    );
    info.hint = Some(
        "reconnect and run the transaction again without pausing inside it, or raise \
         idle_in_transaction_session_timeout"
            .into(),
    );
    info
}
