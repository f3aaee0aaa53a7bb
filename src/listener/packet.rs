//! The few PostgreSQL messages the listener reads and writes itself, as
//! pure functions over bytes: the client's first packet (SSLRequest,
//! GSSENCRequest, CancelRequest or StartupMessage), the start-up packet
//! re-encoded with the parameters the listener adds, an ErrorResponse to
//! refuse a session, and the SQLSTATE of the target's first answer.
//!
//! Byte layouts (all integers big-endian, as in the PostgreSQL protocol):
//!
//! ```text
//! untyped packet  = length:u32 (itself included) | code:u32 | body
//!   SSLRequest      code 80877103, no body (length 8)
//!   GSSENCRequest   code 80877104, no body (length 8)
//!   CancelRequest   code 80877102, pid:u32, secret (length 16 in 3.0)
//!   StartupMessage  code = protocol version (3.x: 0x0003_xxxx),
//!                   then (name NUL value NUL)* NUL
//! typed message   = type:u8 | length:u32 (itself included) | body
//!   ErrorResponse   type 'E', body (field-code:u8 text NUL)* NUL
//! ```
//!
//! PostgreSQL refuses a start-up packet shorter than 8 or longer than
//! 10 000 bytes; so does the listener, before reading the body, so a
//! client cannot make it buffer more.

use std::fmt;

/// SSLRequest code.
pub const SSL_REQUEST: u32 = 80_877_103;
/// GSSENCRequest code.
pub const GSSENC_REQUEST: u32 = 80_877_104;
/// CancelRequest code.
pub const CANCEL_REQUEST: u32 = 80_877_102;
/// Longest start-up packet accepted (PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_LEN: u32 = 10_000;
/// Longest first answer from a target the listener reads before relaying:
/// it only looks inside ErrorResponses, which are short.
pub const MAX_ANSWER_LEN: u32 = 64 * 1024;

/// Why a client's first packet was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PacketError {
    /// The length word is below 8 or above `MAX_STARTUP_LEN`.
    BadLength(u32),
    /// A start-up packet for a protocol other than 3.x.
    UnsupportedVersion(u32),
    /// The parameter list is not NUL-terminated name/value pairs.
    Malformed(&'static str),
}

impl PacketError {
    /// The SQLSTATE PostgreSQL answers with.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            PacketError::UnsupportedVersion(_) => "0A000",
            _ => "08P01",
        }
    }
}

impl fmt::Display for PacketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PacketError::BadLength(len) => write!(f, "invalid length of startup packet ({len})"),
            PacketError::UnsupportedVersion(v) => write!(
                f,
                "unsupported frontend protocol {}.{}: the listener speaks protocol 3",
                v >> 16,
                v & 0xffff
            ),
            PacketError::Malformed(why) => write!(f, "invalid startup packet layout: {why}"),
        }
    }
}

/// The client's first packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstPacket {
    /// Asks for TLS; the listener answers `N` and reads the next packet.
    SslRequest,
    /// Asks for GSSAPI encryption; answered `N` as well.
    GssEncRequest,
    /// Cancels a running statement: the whole packet, to pass on as is.
    Cancel(Vec<u8>),
    /// Opens a session.
    Startup(Startup),
}

/// A StartupMessage: protocol version and parameters, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Startup {
    /// Protocol version code (3.x).
    pub version: u32,
    /// `(name, value)` pairs as sent (`user`, `database`, `options`, …).
    pub params: Vec<(String, String)>,
}

/// Checks the length word of an untyped packet; returns how many bytes
/// follow it.
pub fn body_len(len: u32) -> Result<usize, PacketError> {
    if !(8..=MAX_STARTUP_LEN).contains(&len) {
        return Err(PacketError::BadLength(len));
    }
    Ok(len as usize - 4)
}

/// Decodes the bytes after the length word of the first packet.
pub fn decode_first(body: &[u8]) -> Result<FirstPacket, PacketError> {
    let Some((code, rest)) = body.split_first_chunk::<4>() else {
        return Err(PacketError::Malformed("no protocol code"));
    };
    let code = u32::from_be_bytes(*code);
    match code {
        SSL_REQUEST => Ok(FirstPacket::SslRequest),
        GSSENC_REQUEST => Ok(FirstPacket::GssEncRequest),
        CANCEL_REQUEST => {
            let mut whole = ((body.len() + 4) as u32).to_be_bytes().to_vec();
            whole.extend_from_slice(body);
            Ok(FirstPacket::Cancel(whole))
        }
        v if v >> 16 == 3 => Ok(FirstPacket::Startup(Startup {
            version: v,
            params: decode_params(rest)?,
        })),
        v => Err(PacketError::UnsupportedVersion(v)),
    }
}

fn decode_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, PacketError> {
    let mut params = Vec::new();
    loop {
        let name = take_cstr(&mut rest)?;
        if name.is_empty() {
            break;
        }
        let value = take_cstr(&mut rest)?;
        params.push((name, value));
    }
    if !rest.is_empty() {
        return Err(PacketError::Malformed("bytes after the terminating NUL"));
    }
    Ok(params)
}

fn take_cstr(rest: &mut &[u8]) -> Result<String, PacketError> {
    let end = rest
        .iter()
        .position(|b| *b == 0)
        .ok_or(PacketError::Malformed("a parameter is not NUL-terminated"))?;
    let text = std::str::from_utf8(&rest[..end])
        .map_err(|_| PacketError::Malformed("a parameter is not UTF-8"))?
        .to_string();
    *rest = &rest[end + 1..];
    Ok(text)
}

impl Startup {
    /// The value of parameter `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets parameter `name`, replacing an earlier value.
    pub fn set(&mut self, name: &str, value: &str) {
        match self.params.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value.to_string(),
            None => self.params.push((name.to_string(), value.to_string())),
        }
    }

    /// The database the session asks for (libpq's default: the user name).
    pub fn database(&self) -> Option<&str> {
        self.get("database").or_else(|| self.get("user"))
    }

    /// The whole packet, length word included.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0; 4];
        out.extend_from_slice(&self.version.to_be_bytes());
        for (name, value) in &self.params {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            out.extend_from_slice(value.as_bytes());
            out.push(0);
        }
        out.push(0);
        let len = out.len() as u32;
        out[..4].copy_from_slice(&len.to_be_bytes());
        out
    }
}

/// An ErrorResponse message (type byte included).
pub fn error_response(
    severity: &str,
    sqlstate: &str,
    message: &str,
    hint: Option<&str>,
) -> Vec<u8> {
    let mut body = Vec::new();
    let mut field = |code: u8, text: &str| {
        body.push(code);
        body.extend(text.bytes().filter(|b| *b != 0));
        body.push(0);
    };
    field(b'S', severity);
    field(b'V', severity);
    field(b'C', sqlstate);
    field(b'M', message);
    if let Some(hint) = hint {
        field(b'H', hint);
    }
    body.push(0);
    let mut out = vec![b'E'];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The fields of an ErrorResponse body: `(code, text)` pairs.
pub fn error_fields(body: &[u8]) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let end = tail.iter().position(|b| *b == 0).unwrap_or(tail.len());
        out.push((code, String::from_utf8_lossy(&tail[..end]).into_owned()));
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    out
}

/// The SQLSTATE (`C` field) of an ErrorResponse body.
pub fn error_sqlstate(body: &[u8]) -> Option<String> {
    error_fields(body)
        .into_iter()
        .find(|(code, _)| *code == b'C')
        .map(|(_, text)| text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup_bytes(params: &[(&str, &str)]) -> Vec<u8> {
        Startup {
            version: 0x0003_0000,
            params: params
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
        .encode()
    }

    #[test]
    fn a_startup_packet_round_trips_with_added_parameters() {
        let bytes = startup_bytes(&[("user", "availdb"), ("database", "app")]);
        assert_eq!(
            body_len(u32::from_be_bytes(bytes[..4].try_into().unwrap())),
            Ok(bytes.len() - 4)
        );
        let FirstPacket::Startup(mut s) = decode_first(&bytes[4..]).unwrap() else {
            panic!("not a startup packet")
        };
        assert_eq!(s.database(), Some("app"));
        s.set("application_intent", "read_only");
        s.set("database", "other");
        let again = s.encode();
        let FirstPacket::Startup(t) = decode_first(&again[4..]).unwrap() else {
            panic!("not a startup packet")
        };
        assert_eq!(t, s);
        assert_eq!(t.get("application_intent"), Some("read_only"));
        assert_eq!(t.params.len(), 3);
    }

    #[test]
    fn the_database_defaults_to_the_user_name() {
        let bytes = startup_bytes(&[("user", "bob")]);
        let FirstPacket::Startup(s) = decode_first(&bytes[4..]).unwrap() else {
            panic!()
        };
        assert_eq!(s.database(), Some("bob"));
    }

    #[test]
    fn negotiation_and_cancel_packets_are_recognised() {
        assert_eq!(
            decode_first(&SSL_REQUEST.to_be_bytes()),
            Ok(FirstPacket::SslRequest)
        );
        assert_eq!(
            decode_first(&GSSENC_REQUEST.to_be_bytes()),
            Ok(FirstPacket::GssEncRequest)
        );
        let mut cancel = CANCEL_REQUEST.to_be_bytes().to_vec();
        cancel.extend_from_slice(&[0, 0, 0, 7, 1, 2, 3, 4]);
        let Ok(FirstPacket::Cancel(whole)) = decode_first(&cancel) else {
            panic!("not a cancel request")
        };
        assert_eq!(&whole[..4], &16u32.to_be_bytes());
        assert_eq!(&whole[4..], &cancel[..]);
    }

    #[test]
    fn malformed_first_packets_are_refused_with_a_reason() {
        let cases: Vec<(Vec<u8>, PacketError)> = vec![
            (vec![0, 3], PacketError::Malformed("no protocol code")),
            (
                vec![0, 3, 0, 0, b'u', b's', b'e', b'r'],
                PacketError::Malformed("a parameter is not NUL-terminated"),
            ),
            (
                vec![0, 3, 0, 0, b'u', 0, b'v', 0, 0, b'x'],
                PacketError::Malformed("bytes after the terminating NUL"),
            ),
            (
                vec![0, 3, 0, 0, 0xff, 0, b'v', 0, 0],
                PacketError::Malformed("a parameter is not UTF-8"),
            ),
            (
                vec![0, 2, 0, 0, 0],
                PacketError::UnsupportedVersion(0x0002_0000),
            ),
            (
                vec![0x12, 0x34, 0x56, 0x78],
                PacketError::UnsupportedVersion(0x1234_5678),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(decode_first(&body), Err(want.clone()), "{body:?}");
            assert!(!want.to_string().is_empty());
        }
    }

    #[test]
    fn lengths_outside_postgresql_bounds_are_refused_before_reading() {
        for len in [0, 4, 7, MAX_STARTUP_LEN + 1, u32::MAX] {
            assert_eq!(body_len(len), Err(PacketError::BadLength(len)));
        }
        assert_eq!(body_len(8), Ok(4));
        assert_eq!(body_len(MAX_STARTUP_LEN), Ok(MAX_STARTUP_LEN as usize - 4));
        assert_eq!(PacketError::BadLength(1).sqlstate(), "08P01");
        assert_eq!(PacketError::UnsupportedVersion(1).sqlstate(), "0A000");
    }

    #[test]
    fn error_responses_carry_sqlstate_message_and_hint() {
        let bytes = error_response("FATAL", "57P03", "no primary", Some("retry"));
        assert_eq!(bytes[0], b'E');
        let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 1);
        let body = &bytes[5..];
        assert_eq!(error_sqlstate(body).as_deref(), Some("57P03"));
        let fields = error_fields(body);
        assert!(fields.contains(&(b'M', "no primary".into())));
        assert!(fields.contains(&(b'H', "retry".into())));
        assert!(fields.contains(&(b'S', "FATAL".into())));
        assert_eq!(error_sqlstate(b""), None);
        assert_eq!(error_sqlstate(b"Cabc"), Some("abc".into()));
    }
}
