//! A minimal HTTP/1.1 client: one request per connection
//! (`Connection: close`), the whole answer read, for health probes and the
//! admin command line. It speaks to any HTTP/1.x server; it follows no
//! redirect, keeps no connection and does no TLS.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most of an answer that is read (a probe needs only the status).
const MAX_ANSWER: usize = 4 << 20;

/// An answer: status code and body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status code (200, 404, …).
    pub status: u16,
    /// The body (chunked encoding undone).
    pub body: Vec<u8>,
}

/// Sends `method path` to `target` (`host:port`) with an optional JSON
/// body; the whole exchange is bounded by `within`.
pub async fn request(
    target: &str,
    method: &str,
    path: &str,
    json: Option<&[u8]>,
    within: Duration,
) -> Result<Answer, String> {
    tokio::time::timeout(within, exchange(target, method, path, json))
        .await
        .map_err(|_| format!("no answer from {target} within {} ms", within.as_millis()))?
}

async fn exchange(
    target: &str,
    method: &str,
    path: &str,
    json: Option<&[u8]>,
) -> Result<Answer, String> {
    let mut stream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("cannot connect to {target}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\nUser-Agent: availdb\r\n"
    );
    if let Some(body) = json {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(json.unwrap_or_default());
    stream
        .write_all(&out)
        .await
        .map_err(|e| format!("{target}: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("{target}: {e}"))?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if raw.len() > MAX_ANSWER {
            return Err(format!(
                "{target}: the answer is larger than {MAX_ANSWER} bytes"
            ));
        }
        // A probe only needs the status line; stop once the head and a
        // declared body are complete (some servers keep the socket open).
        if let Some(answer) = parse(&raw, false) {
            return answer;
        }
    }
    parse(&raw, true).unwrap_or_else(|| Err(format!("{target}: the answer ended early")))
}

/// Parses a whole answer (`closed`: the server closed the connection, so
/// a body without length ends here). None: more bytes are needed.
fn parse(raw: &[u8], closed: bool) -> Option<Result<Answer, String>> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Some(Err(format!("not an HTTP status line: {status_line:?}")));
    };
    if !version.starts_with("HTTP/1.") {
        return Some(Err(format!("not an HTTP/1 answer: {status_line:?}")));
    }
    let Ok(status) = code.parse::<u16>() else {
        return Some(Err(format!("bad status code in {status_line:?}")));
    };
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding")
                && value.eq_ignore_ascii_case("chunked")
            {
                chunked = true;
            }
        }
    }
    let body = &raw[end + 4..];
    if chunked {
        return dechunk(body).map(|body| Ok(Answer { status, body }));
    }
    match length {
        Some(n) if body.len() >= n => Some(Ok(Answer {
            status,
            body: body[..n].to_vec(),
        })),
        Some(_) => closed.then(|| Err("the answer's body ended early".into())),
        None if closed => Some(Ok(Answer {
            status,
            body: body.to_vec(),
        })),
        None => None,
    }
}

/// Undoes chunked transfer encoding; None until the last chunk arrived.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if body.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed_by_length_by_chunks_or_by_close() {
        // (raw answer, connection closed, expected status and body)
        type Case = (&'static [u8], bool, Option<(u16, &'static [u8])>);
        let table: Vec<Case> = vec![
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false, Some((200, b"ok"))),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok", false, None),
            (b"HTTP/1.0 503 Unavailable\r\n\r\ndown", true, Some((503, b"down"))),
            (b"HTTP/1.0 503 Unavailable\r\n\r\ndown", false, None),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n3\r\n!!!\r\n0\r\n\r\n",
                false,
                Some((200, b"ok!!!")),
            ),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n", false, None),
            (b"HTTP/1.1 204", true, None),
        ];
        for (raw, closed, expected) in table {
            let got = parse(raw, closed).map(|a| a.map(|a| (a.status, a.body)));
            assert_eq!(
                got,
                expected.map(|(s, b)| Ok((s, b.to_vec()))),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        assert!(parse(b"SSH-2.0-OpenSSH\r\n\r\n", true).unwrap().is_err());
    }
}
