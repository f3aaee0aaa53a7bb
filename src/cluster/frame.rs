//! The one framing the cluster uses, on disk (log records, the snapshot
//! file) and on the wire (RPCs between nodes):
//!
//! ```text
//! offset  size  field
//!      0     4  length N of the body, little-endian, N <= 64 MiB
//!      4     N  body: one serde_json value
//!    4+N     4  crc32c of the body, little-endian
//! ```
//!
//! [`split`] is pure (bytes in, frame out) and never panics; [`read`] and
//! [`write()`] move frames over an async stream, checking the length before
//! allocating or waiting for the body.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest body a frame may carry.
pub(crate) const MAX_BODY: usize = 64 << 20;

const LEN: usize = 4;
const CRC: usize = 4;

/// Why bytes are not a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length field is over the 64 MiB limit.
    #[error("frame body of {0} bytes exceeds the {MAX_BODY}-byte limit")]
    TooLarge(usize),
    /// The body was damaged.
    #[error("frame checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum {
        /// CRC carried by the frame.
        stored: u32,
        /// CRC of the body received.
        computed: u32,
    },
    /// The body is not the JSON value expected.
    #[error("malformed frame body: {0}")]
    Json(#[from] serde_json::Error),
    /// The stream failed or ended inside a frame.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Appends the frame of `value` to `out`.
pub(crate) fn encode_into<T: Serialize>(out: &mut Vec<u8>, value: &T) {
    let start = out.len();
    out.extend_from_slice(&[0; LEN]);
    serde_json::to_writer(&mut *out, value).expect("cluster values always serialize to JSON");
    let body = &out[start + LEN..];
    let (len, crc) = (body.len() as u32, crc32c::crc32c(body));
    out[start..start + LEN].copy_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
}

/// The frame of `value`.
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(&mut out, value);
    out
}

/// The body of the frame at the start of `bytes` and the frame's whole
/// length, or `None` when `bytes` ends before the frame does.
pub(crate) fn split(bytes: &[u8]) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some(len) = bytes.get(..LEN) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
    if len > MAX_BODY {
        return Err(FrameError::TooLarge(len));
    }
    let Some(frame) = bytes.get(..LEN + len + CRC) else {
        return Ok(None);
    };
    let body = &frame[LEN..LEN + len];
    check(body, &frame[LEN + len..])?;
    Ok(Some((body, frame.len())))
}

fn check(body: &[u8], crc: &[u8]) -> Result<(), FrameError> {
    let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(FrameError::Checksum { stored, computed });
    }
    Ok(())
}

/// Reads one frame and decodes its body; `None` at a clean end of stream
/// (before the first byte of a frame).
pub(crate) async fn read<R, T>(reader: &mut R) -> Result<Option<T>, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len = [0u8; LEN];
    let first = reader.read(&mut len).await?;
    if first == 0 {
        return Ok(None);
    }
    reader.read_exact(&mut len[first..]).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_BODY {
        return Err(FrameError::TooLarge(len));
    }
    let mut rest = vec![0u8; len + CRC];
    reader.read_exact(&mut rest).await?;
    let (body, crc) = rest.split_at(len);
    check(body, crc)?;
    Ok(Some(serde_json::from_slice(body)?))
}

/// Writes the frame of `value` and flushes.
pub(crate) async fn write<W, T>(writer: &mut W, value: &T) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    writer.write_all(&encode(value)).await?;
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_splits_back_into_its_body() {
        let mut bytes = encode(&"hello");
        assert_eq!(bytes.len(), 4 + 7 + 4);
        assert_eq!(&bytes[..4], &7u32.to_le_bytes());
        let (body, len) = split(&bytes).unwrap().unwrap();
        assert_eq!((body, len), (&b"\"hello\""[..], bytes.len()));
        for cut in 0..bytes.len() {
            assert!(split(&bytes[..cut]).unwrap().is_none(), "cut at {cut}");
        }
        bytes[6] ^= 0x20;
        assert!(matches!(split(&bytes), Err(FrameError::Checksum { .. })));
    }

    #[test]
    fn an_oversized_length_is_refused_before_the_body_arrives() {
        let bytes = (MAX_BODY as u32 + 1).to_le_bytes();
        assert!(matches!(split(&bytes), Err(FrameError::TooLarge(_))));
    }

    #[tokio::test]
    async fn frames_cross_a_stream_and_bad_ones_are_refused() {
        let mut stream = encode(&1u64);
        encode_into(&mut stream, &vec!["a", "b"]);
        let mut reader = &stream[..];
        assert_eq!(read::<_, u64>(&mut reader).await.unwrap(), Some(1));
        let list: Vec<String> = read(&mut reader).await.unwrap().unwrap();
        assert_eq!(list, ["a", "b"]);
        assert!(read::<_, u64>(&mut reader).await.unwrap().is_none());

        let cases: Vec<(Vec<u8>, &str)> = vec![
            (stream[..3].to_vec(), "early eof"),
            (stream[..7].to_vec(), "early eof"),
            ((u32::MAX).to_le_bytes().to_vec(), "exceeds"),
            (
                {
                    let mut b = encode(&1u64);
                    b[4] = b'x';
                    b
                },
                "checksum",
            ),
            (encode(&"text"), "malformed"),
        ];
        for (bytes, needle) in cases {
            let err = read::<_, u64>(&mut &bytes[..]).await.unwrap_err();
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        }

        let mut out = Vec::new();
        write(&mut out, &7u8).await.unwrap();
        assert_eq!(out, encode(&7u8));
    }
}
