//! Passing a client's connection to another node's process on this host.
//!
//! # Why
//! A session the listener routes to another node is relayed: each round
//! trip crosses two more sockets and wakes two more tasks, which costs a
//! point select about as much as the select itself on loopback. When that
//! node runs on the same host (`availdb up`, several nodes on one machine)
//! the listener passes it the client's TCP socket instead, and the session
//! then costs what a direct connection costs.
//!
//! # Protocol
//! 1. A node whose endpoint takes listener sessions listens on the Unix
//!    socket [`name_for`] its replication endpoint, `availdb-handover/<endpoint>`,
//!    in Linux's abstract namespace: no file, gone with the process, and
//!    private to the network namespace, as the endpoint's port is.
//! 2. The listener connects to the name of the chosen replica's endpoint
//!    (the one the group definition gives) without blocking. No such name
//!    (the replica runs on another host, or a version without this), a
//!    full backlog, or any error before the answer: it relays the session
//!    as before. The client has seen nothing.
//! 3. Each side checks that the other runs as its own user
//!    (`SO_PEERCRED`): any user can bind an abstract name, and a client's
//!    socket, with the password it is about to send, goes to no other
//!    user's process.
//! 4. The listener sends one message, [`VERSION`], the length of the rest
//!    (big-endian `u32`) and the start-up packet it amended, with the
//!    client's socket attached (`SCM_RIGHTS`).
//! 5. The receiver makes the 57P03 check ([`LocalSessions::refusal`]) and
//!    answers `A`, it takes the session, or `R`, the length and the
//!    refusal's message; the listener then chooses again, as for a
//!    replica's 57P03. A receiver that does not know the version closes
//!    without an answer (the listener relays).
//! 6. After an `A` the listener writes `G` and forgets the client: it
//!    closes its copy of the socket, a close and not a shutdown, so the
//!    connection stays open in the receiver. The receiver serves the
//!    session only once it has read `G`.
//!
//! # Invariants
//! * At most one process serves a client's bytes. The listener uses the
//!   client again only when it has not written `G` (a refusal, an error,
//!   [`ANSWER_TIMEOUT`]), and a receiver serves nothing without a `G`.
//! * A receiver killed after `G` takes the client's connection with it,
//!   as a node killed under a direct session does. So does a `G` that
//!   comes after the receiver stopped waiting for it. Either way the
//!   client's session had not started: it reconnects and loses nothing.
//! * Sessions whose TLS ended at the listener are relayed: their TLS state
//!   lives in the listener's process.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpStream, UnixStream};

use super::{packet, HandedOver, LocalSessions, GROUP_PARAM};

/// The version of the message this build sends and takes.
pub const VERSION: u8 = 1;
/// Bound on one handover, from the connect to the receiver's `G`.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on a message: a start-up packet and the listener's parameters.
const MAX_MESSAGE: usize = packet::MAX_STARTUP_LEN as usize + 4096;
/// Bound on a refusal's message.
const MAX_REFUSAL: u32 = 4096;

/// The abstract Unix socket name of the node whose replication endpoint
/// is `endpoint`.
pub fn name_for(endpoint: SocketAddr) -> String {
    format!("availdb-handover/{endpoint}")
}

/// What became of a client's connection offered to another node's process.
#[derive(Debug)]
pub(super) enum Offer {
    /// The receiver serves the session; the listener's copy may close.
    Taken,
    /// The receiver refused the session with 57P03: this message.
    Refused(String),
    /// No receiver took it (the reason): the listener relays the session.
    NotHere(std::io::Error),
}

/// Offers the client's connection `client`, with its amended start-up
/// packet `startup`, to the process of the node whose endpoint is
/// `endpoint` (steps 2–6 of the protocol).
pub(super) async fn offer(endpoint: SocketAddr, client: &TcpStream, startup: &[u8]) -> Offer {
    match tokio::time::timeout(ANSWER_TIMEOUT, try_offer(endpoint, client, startup)).await {
        Ok(Ok(offer)) => offer,
        Ok(Err(e)) => Offer::NotHere(e),
        Err(_) => Offer::NotHere(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no answer in time",
        )),
    }
}

async fn try_offer(
    endpoint: SocketAddr,
    client: &TcpStream,
    startup: &[u8],
) -> std::io::Result<Offer> {
    let mut stream = connect(endpoint)?;
    same_user(&stream)?;
    let mut message = Vec::with_capacity(startup.len() + 5);
    message.push(VERSION);
    message.extend_from_slice(&(startup.len() as u32).to_be_bytes());
    message.extend_from_slice(startup);
    let sent = stream
        .async_io(Interest::WRITABLE, || {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            let fds = [client.as_fd()];
            control.push(SendAncillaryMessage::ScmRights(&fds));
            rustix::net::sendmsg(
                &stream,
                &[IoSlice::new(&message)],
                &mut control,
                SendFlags::NOSIGNAL,
            )
            .map_err(std::io::Error::from)
        })
        .await?;
    stream.write_all(&message[sent..]).await?;
    match stream.read_u8().await? {
        b'A' => {
            stream.write_all(b"G").await?;
            Ok(Offer::Taken)
        }
        b'R' => {
            let len = stream.read_u32().await?;
            if len > MAX_REFUSAL {
                return Err(invalid(format!("a refusal of {len} bytes")));
            }
            let mut why = vec![0; len as usize];
            stream.read_exact(&mut why).await?;
            Ok(Offer::Refused(String::from_utf8_lossy(&why).into_owned()))
        }
        other => Err(invalid(format!("answer byte {other}"))),
    }
}

/// Connects to the abstract name of `endpoint` without blocking: a full
/// backlog is an error, as a missing name is.
fn connect(endpoint: SocketAddr) -> std::io::Result<UnixStream> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    let name = SocketAddrUnix::new_abstract_name(name_for(endpoint).as_bytes())?;
    rustix::net::connect(&fd, &name)?;
    UnixStream::from_std(std::os::unix::net::UnixStream::from(fd))
}

/// Refuses a peer that runs as another user than this process (step 3).
fn same_user(stream: &UnixStream) -> std::io::Result<()> {
    let theirs = stream.peer_cred()?.uid();
    let ours = rustix::process::geteuid().as_raw();
    if theirs == ours {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("the process at the other end of the handover socket runs as uid {theirs}, not {ours}"),
        ))
    }
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

/// Takes sessions that listeners of other nodes on this host pass to this
/// node, whose replication endpoint is `endpoint`, and serves them on
/// `local`. Fails if the name is taken (another process holds it).
pub fn receive(endpoint: SocketAddr, local: Arc<dyn LocalSessions>) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let name = std::os::unix::net::SocketAddr::from_abstract_name(name_for(endpoint))?;
    let listener = std::os::unix::net::UnixListener::bind_addr(&name)?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(take(stream, local.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting on the handover socket failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    Ok(())
}

/// One offer, from the receiver's side (steps 3, 5 and 6).
async fn take(mut stream: UnixStream, local: Arc<dyn LocalSessions>) {
    let taken = tokio::time::timeout(ANSWER_TIMEOUT, answer(&mut stream, &*local)).await;
    match taken {
        Ok(Ok(Some((session, peer)))) => local.serve(session, peer),
        Ok(Ok(None)) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "a handover offer failed"),
        Err(_) => tracing::debug!("a handover offer was not completed in time"),
    }
}

/// Reads an offer, answers it, and returns the session once the listener
/// wrote `G`; None after a refusal.
async fn answer(
    stream: &mut UnixStream,
    local: &dyn LocalSessions,
) -> std::io::Result<Option<(HandedOver, SocketAddr)>> {
    same_user(stream)?;
    let (message, mut fds) = read_offer(stream).await?;
    if fds.len() != 1 {
        return Err(invalid(format!(
            "an offer with {} descriptors, not one",
            fds.len()
        )));
    }
    let client = std::net::TcpStream::from(fds.remove(0));
    client.set_nonblocking(true)?;
    let client = TcpStream::from_std(client)?;
    let peer = client.peer_addr()?;
    let Some((len, body)) = message.split_first_chunk::<4>() else {
        return Err(invalid("an offer without a start-up packet".into()));
    };
    let body_len =
        packet::body_len(u32::from_be_bytes(*len)).map_err(|e| invalid(e.to_string()))?;
    if body_len != body.len() {
        return Err(invalid("a start-up packet of the wrong length".into()));
    }
    let packet::FirstPacket::Startup(startup) =
        packet::decode_first(body).map_err(|e| invalid(e.to_string()))?
    else {
        return Err(invalid("an offer without a start-up packet".into()));
    };
    let group = startup
        .get(GROUP_PARAM)
        .ok_or_else(|| invalid("an offer without a listener group".into()))?
        .to_string();
    let params = startup.params.iter().cloned().collect();
    if let Some(why) = local.refusal(&params) {
        let mut refusal = vec![b'R'];
        let why = &why.as_bytes()[..why.len().min(MAX_REFUSAL as usize)];
        refusal.extend_from_slice(&(why.len() as u32).to_be_bytes());
        refusal.extend_from_slice(why);
        stream.write_all(&refusal).await?;
        return Ok(None);
    }
    stream.write_all(b"A").await?;
    match stream.read_u8().await? {
        b'G' => Ok(Some((
            HandedOver::new(message, Box::new(client), &group),
            peer,
        ))),
        other => Err(invalid(format!("go byte {other}"))),
    }
}

/// Reads one offer: its start-up packet and the descriptors that came
/// with it. An unknown version is an error (the listener relays).
async fn read_offer(stream: &UnixStream) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut message = Vec::new();
    let mut fds = Vec::new();
    let mut buf = vec![0u8; MAX_MESSAGE + 5];
    loop {
        let n = stream
            .async_io(Interest::READABLE, || {
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let got = rustix::net::recvmsg(
                    stream,
                    &mut [IoSliceMut::new(&mut buf)],
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                )?;
                for received in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(received) = received {
                        fds.extend(received);
                    }
                }
                Ok(got.bytes)
            })
            .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        message.extend_from_slice(&buf[..n]);
        if message[0] != VERSION {
            return Err(invalid(format!("an offer of version {}", message[0])));
        }
        if message.len() < 5 {
            continue;
        }
        let len = u32::from_be_bytes([message[1], message[2], message[3], message[4]]) as usize;
        if len > MAX_MESSAGE || message.len() > 5 + len {
            return Err(invalid(format!("an offer of {len} bytes")));
        }
        if message.len() == 5 + len {
            message.drain(..5);
            return Ok((message, fds));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU16, Ordering};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    /// A node's front end as the receiver sees it: refuses with `refuse`,
    /// or sends the sessions it is given to the test.
    struct Frontend {
        refuse: Option<String>,
        served: mpsc::UnboundedSender<(HandedOver, SocketAddr)>,
    }

    impl LocalSessions for Frontend {
        fn refusal(&self, _params: &HashMap<String, String>) -> Option<String> {
            self.refuse.clone()
        }

        fn serve(self: Arc<Self>, session: HandedOver, peer: SocketAddr) {
            let _ = self.served.send((session, peer));
        }
    }

    /// An endpoint no real node has (TEST-NET-1), different for each test
    /// and each run, so that its handover name is free.
    fn endpoint() -> SocketAddr {
        static NEXT: AtomicU16 = AtomicU16::new(0);
        let port =
            (std::process::id() as u16).wrapping_mul(31) ^ NEXT.fetch_add(1, Ordering::Relaxed);
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    /// A receiver on a new endpoint; its served sessions come out of the
    /// returned channel.
    fn receiver(
        refuse: Option<&str>,
    ) -> (
        SocketAddr,
        mpsc::UnboundedReceiver<(HandedOver, SocketAddr)>,
    ) {
        let (served, sessions) = mpsc::unbounded_channel();
        let frontend = Arc::new(Frontend {
            refuse: refuse.map(str::to_string),
            served,
        });
        let at = endpoint();
        receive(at, frontend).expect("bind the handover name");
        (at, sessions)
    }

    /// A client's connection: the client's end and the end a listener
    /// accepted.
    async fn connection() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        (client, accepted)
    }

    fn startup() -> Vec<u8> {
        packet::Startup {
            version: 196_608,
            params: vec![
                ("user".into(), "availdb".into()),
                (GROUP_PARAM.into(), "ag1".into()),
            ],
        }
        .encode()
    }

    #[tokio::test]
    async fn a_session_taken_on_this_host_is_served_there_start_up_packet_first() {
        let (at, mut sessions) = receiver(None);
        let (mut client, accepted) = connection().await;
        let offered = offer(at, &accepted, &startup()).await;
        assert!(matches!(offered, Offer::Taken), "{offered:?}");
        // The listener's copy closes; the connection stays open.
        drop(accepted);
        let (mut session, peer) = sessions.recv().await.expect("the session is served");
        assert_eq!(peer, client.local_addr().unwrap());
        let mut head = vec![0; startup().len()];
        session.read_exact(&mut head).await.unwrap();
        assert_eq!(head, startup());
        client.write_all(b"Q").await.unwrap();
        assert_eq!(session.read_u8().await.unwrap(), b'Q');
        session.write_all(b"Z").await.unwrap();
        assert_eq!(client.read_u8().await.unwrap(), b'Z');
    }

    #[tokio::test]
    async fn a_refused_session_stays_with_the_listener() {
        let (at, mut sessions) = receiver(Some("not the primary"));
        let (mut client, mut accepted) = connection().await;
        let offered = offer(at, &accepted, &startup()).await;
        assert!(
            matches!(&offered, Offer::Refused(why) if why == "not the primary"),
            "{offered:?}"
        );
        assert!(
            sessions.try_recv().is_err(),
            "a refused session is not served"
        );
        accepted.write_all(b"E").await.unwrap();
        assert_eq!(client.read_u8().await.unwrap(), b'E');
    }

    #[tokio::test]
    async fn without_a_receiver_that_answers_the_session_is_relayed_untouched() {
        // No process holds the name: another host's replica.
        let (mut client, mut accepted) = connection().await;
        let offered = offer(endpoint(), &accepted, &startup()).await;
        assert!(
            matches!(&offered, Offer::NotHere(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
            "{offered:?}"
        );
        // A process that takes the offer and closes without an answer.
        use std::os::linux::net::SocketAddrExt;
        let at = endpoint();
        let name = std::os::unix::net::SocketAddr::from_abstract_name(name_for(at)).unwrap();
        let squatter = std::os::unix::net::UnixListener::bind_addr(&name).unwrap();
        let breaks_off = std::thread::spawn(move || {
            let (mut stream, _) = squatter.accept().unwrap();
            let mut first = [0u8; 5];
            std::io::Read::read_exact(&mut stream, &mut first).unwrap();
        });
        let offered = offer(at, &accepted, &startup()).await;
        breaks_off.join().unwrap();
        assert!(matches!(&offered, Offer::NotHere(_)), "{offered:?}");
        // The client got nothing from either, and the listener still has it.
        accepted.write_all(b"R").await.unwrap();
        assert_eq!(client.read_u8().await.unwrap(), b'R');
        client.write_all(b"S").await.unwrap();
        assert_eq!(accepted.read_u8().await.unwrap(), b'S');
    }

    #[tokio::test]
    async fn an_offer_of_another_version_gets_no_answer() {
        let (at, mut sessions) = receiver(None);
        let mut stream = connect(at).unwrap();
        stream.write_all(&[VERSION + 1, 0, 0, 0, 0]).await.unwrap();
        assert!(stream.read_u8().await.is_err(), "closed without an answer");
        assert!(sessions.try_recv().is_err());
    }
}
