//! [`PartnerStream`]: one connection between two nodes, plaintext or TLS,
//! read and written the same way by every protocol that uses it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A connection to or from a partner: plaintext on a node without partner
/// TLS, mutual TLS on one with it.
#[derive(Debug)]
pub enum PartnerStream {
    /// Plaintext TCP (no partner TLS configured).
    Plain(TcpStream),
    /// Mutual TLS, either side of it.
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl PartnerStream {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            PartnerStream::Plain(s) => s,
            PartnerStream::Tls(s) => s.get_ref().0,
        }
    }

    /// Sets `TCP_NODELAY` on the connection underneath.
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.tcp().set_nodelay(nodelay)
    }

    /// The partner's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().peer_addr()
    }

    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, PartnerStream::Tls(_))
    }
}

/// A read that failed because the partner refused this node's certificate
/// (in TLS 1.3 the endpoint's verdict on the connecting node's certificate
/// arrives after that node's handshake has finished, with its first read)
/// says so in the refusal's words, and on the connecting side is counted
/// as a refused handshake ([`super::Partner::TlsConnect`]).
fn explain(e: io::Error, stream: &tokio_rustls::TlsStream<TcpStream>) -> io::Error {
    let alert = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<tokio_rustls::rustls::Error>())
        .is_some_and(|tls| matches!(tls, tokio_rustls::rustls::Error::AlertReceived(_)));
    if !alert {
        return e;
    }
    let reason = super::tls::handshake_refusal(&e);
    if let tokio_rustls::TlsStream::Client(_) = stream {
        let to = stream
            .get_ref()
            .0
            .peer_addr()
            .map_or_else(|_| "the partner".to_string(), |a| a.to_string());
        super::count_refusal(
            super::Partner::TlsConnect,
            &format!("TLS handshake with {to} failed: {reason}"),
        );
    }
    io::Error::new(e.kind(), reason)
}

impl AsyncRead for PartnerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PartnerStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            PartnerStream::Tls(s) => match Pin::new(s.as_mut()).poll_read(cx, buf) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(explain(e, s))),
                other => other,
            },
        }
    }
}

impl AsyncWrite for PartnerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PartnerStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            PartnerStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PartnerStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            PartnerStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            PartnerStream::Plain(s) => s.is_write_vectored(),
            PartnerStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PartnerStream::Plain(s) => Pin::new(s).poll_flush(cx),
            PartnerStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PartnerStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            PartnerStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
