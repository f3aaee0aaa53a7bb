//! The byte format of a backup file, and its checks (`docs/backup-format.md`
//! has the same tables for readers outside the code).
//!
//! ```text
//! file     = header | block* | manifest | trailer
//!
//! header   offset size  field
//!               0    8  magic "AVDBBKUP"
//!               8    2  format version (1)
//!              10    1  kind: 1 full, 2 log
//!              11    1  flags: bit 0 copy-only, bit 1 compressed
//!              12    4  header length H, CRC included
//!              16   16  backup id (random)
//!              32    8  first LSN: the first log record the backup carries
//!              40    8  end LSN: the backup restores the database to here
//!              48    8  previous record's LSN (the record ending at the
//!                       first LSN; u64::MAX when unknown)
//!              56    4  previous record's crc32c (0 when unknown)
//!              60    4  page size (full: of the image; log: 0)
//!              64    8  epoch of the end LSN
//!              72    8  started at, µs since the Unix epoch
//!              80    …  3 strings, each u16 length + UTF-8: database,
//!                       availability group ("" outside one), replica
//!                       (the node that took the backup)
//!           H - 4    4  crc32c of bytes 0 .. H-4
//!
//! block    offset size  field
//!               0    4  magic "AVBK"
//!               4    1  kind: 1 pages (a part of a full image), 2 log records
//!               5    1  flags: bit 0 zstd; bit 1 starts the image; bit 2
//!                       the image goes on in the next pages block
//!               6    2  0
//!               8    4  raw length R (payload before compression)
//!              12    4  stored length S
//!              16    4  count (pages or records)
//!              20    4  database size in pages (pages blocks; else 0)
//!              24    4  crc32c of the S stored bytes
//!              28    4  crc32c of bytes 0 .. 28
//!              32    S  payload: pages = count × (u32 page number, page
//!                       bytes); log = count encoded log records
//!                       (`log::record` format, each with its own CRC)
//!
//! manifest offset size  field
//!               0    4  magic "AVMF"
//!               4    4  block count B
//!               8    8  finished at, µs since the Unix epoch
//!              16    8  first commit time carried (µs; 0 none)
//!              24    8  last commit time carried (µs; 0 none)
//!              32    8  last record's LSN (u64::MAX none)
//!              40    4  last record's crc32c
//!              44    4  database size in pages at the end LSN (full)
//!              48    4  page hash count P (full: = database size; log: 0)
//!              52 B×16  per block: offset u64, stored length u32, CRC u32
//!               …  P×4  crc32c of every page at the end LSN, page 1 first
//!               …    4  crc32c of the manifest's bytes before it
//!
//! trailer  offset size  field (the file's last 16 bytes)
//!               0    8  manifest offset
//!               8    8  magic "AVDBEND1"
//! ```
//! All integers little-endian. A file without the trailer is *truncated*
//! (a backup that did not finish, or a copy that stopped); any CRC that
//! does not match is *corrupt*; a file that does not start with the magic
//! is *not a backup*. Decoding never panics, whatever the bytes.
//!
//! Evolving: a reader refuses a version it does not know; a new field goes
//! at the end of the header (its length says where the CRC is) or the
//! manifest, with a new version number.

use std::io::{Read, Seek, SeekFrom, Write};

/// Magic of the header.
pub const MAGIC: [u8; 8] = *b"AVDBBKUP";
/// The format version this build writes and reads.
pub const VERSION: u16 = 1;
const BLOCK_MAGIC: [u8; 4] = *b"AVBK";
const MANIFEST_MAGIC: [u8; 4] = *b"AVMF";
const END_MAGIC: [u8; 8] = *b"AVDBEND1";
const BLOCK_HEADER: usize = 32;
const TRAILER: u64 = 16;
/// Most bytes a block's payload may claim (a corrupt length must not make
/// a reader allocate gigabytes).
const MAX_BLOCK: u32 = 64 << 20;

/// What a backup holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Every page of the database, and the log that makes it consistent.
    Full,
    /// The log records of an LSN range.
    Log,
}

/// The header: what the backup is of, written before its contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Full or log.
    pub kind: Kind,
    /// Taken WITH COPY_ONLY.
    pub copy_only: bool,
    /// Blocks are zstd-compressed.
    pub compressed: bool,
    /// Random id of this backup.
    pub id: [u8; 16],
    /// First LSN of the log records carried.
    pub first_lsn: u64,
    /// The LSN the backup restores to.
    pub end_lsn: u64,
    /// The record that ends at `first_lsn`: (its LSN, its CRC), when known.
    pub previous: Option<(u64, u32)>,
    /// Page size of the image (full backups).
    pub page_size: u32,
    /// Epoch of the end LSN.
    pub epoch: u64,
    /// Start time, µs since the Unix epoch.
    pub started_us: i64,
    /// Database name.
    pub database: String,
    /// Availability group ("" outside one).
    pub group: String,
    /// The replica (node) that took it.
    pub replica: String,
}

/// The manifest: written last, it says where everything is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    /// Where each block starts, its stored length and its CRC.
    pub blocks: Vec<BlockRef>,
    /// Finish time, µs since the Unix epoch.
    pub finished_us: i64,
    /// Commit time of the first log record carried (0: none).
    pub first_commit_us: i64,
    /// Commit time of the last log record carried (0: none).
    pub last_commit_us: i64,
    /// The last record carried: (its LSN, its CRC).
    pub last_record: Option<(u64, u32)>,
    /// Database size in pages at the end LSN (full backups).
    pub db_size: u32,
    /// crc32c of every page at the end LSN, page 1 first (full backups).
    pub page_hashes: Vec<u32>,
}

/// A block's place in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRef {
    /// Offset of the block header.
    pub offset: u64,
    /// Stored payload length.
    pub stored: u32,
    /// crc32c of the stored payload.
    pub crc: u32,
}

/// What a block carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Pages of the image.
    Pages,
    /// Log records.
    Log,
}

/// One decoded block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Pages or log.
    pub kind: BlockKind,
    /// Pages blocks: starts the image.
    pub image_start: bool,
    /// Pages blocks: the image goes on in the next pages block.
    pub image_more: bool,
    /// Pages or records in the payload.
    pub count: u32,
    /// Pages blocks: the image's database size in pages.
    pub db_size: u32,
    /// The payload, decompressed.
    pub payload: Vec<u8>,
}

impl Block {
    /// A log block of `count` records.
    pub fn log(count: u32, payload: Vec<u8>) -> Block {
        Block {
            kind: BlockKind::Log,
            image_start: false,
            image_more: false,
            count,
            db_size: 0,
            payload,
        }
    }
}

/// Why a file is not a good backup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Not an availdb backup at all.
    #[error("not an availdb backup (it does not start with the backup magic)")]
    NotABackup,
    /// A version this build cannot read.
    #[error(
        "backup format version {0} is not one this availdb reads (it reads version {VERSION})"
    )]
    Version(u16),
    /// The file ends early.
    #[error("the backup is truncated: {0}")]
    Truncated(String),
    /// A checksum or a field is wrong.
    #[error("the backup is corrupt: {0}")]
    Corrupt(String),
}

type Result<T> = std::result::Result<T, FormatError>;

fn crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Header {
    /// The encoded header.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.push(match self.kind {
            Kind::Full => 1,
            Kind::Log => 2,
        });
        out.push(u8::from(self.copy_only) | (u8::from(self.compressed) << 1));
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&self.first_lsn.to_le_bytes());
        out.extend_from_slice(&self.end_lsn.to_le_bytes());
        let (prev_lsn, prev_crc) = self.previous.unwrap_or((u64::MAX, 0));
        out.extend_from_slice(&prev_lsn.to_le_bytes());
        out.extend_from_slice(&prev_crc.to_le_bytes());
        out.extend_from_slice(&self.page_size.to_le_bytes());
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&self.started_us.to_le_bytes());
        for s in [&self.database, &self.group, &self.replica] {
            let bytes = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
            out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        let len = (out.len() + 4) as u32;
        out[12..16].copy_from_slice(&len.to_le_bytes());
        let c = crc(&out);
        out.extend_from_slice(&c.to_le_bytes());
        out
    }

    /// Decodes a header from the start of `bytes`; returns it and its length.
    pub fn decode(bytes: &[u8]) -> Result<(Header, usize)> {
        if bytes.len() < 8 || bytes[..8] != MAGIC {
            return Err(FormatError::NotABackup);
        }
        if bytes.len() < 16 {
            return Err(FormatError::Truncated("the header is cut short".into()));
        }
        let version = u16_at(bytes, 8);
        if version != VERSION {
            return Err(FormatError::Version(version));
        }
        let len = u32_at(bytes, 12) as usize;
        if !(90..=3 * 65_537 + 90).contains(&len) {
            return Err(FormatError::Corrupt(format!("header length {len}")));
        }
        if bytes.len() < len {
            return Err(FormatError::Truncated("the header is cut short".into()));
        }
        let stored = u32_at(bytes, len - 4);
        if crc(&bytes[..len - 4]) != stored {
            return Err(FormatError::Corrupt(
                "the header's checksum does not match".into(),
            ));
        }
        let kind = match bytes[10] {
            1 => Kind::Full,
            2 => Kind::Log,
            k => return Err(FormatError::Corrupt(format!("backup kind {k}"))),
        };
        let prev_lsn = u64_at(bytes, 48);
        let mut at = 80;
        let mut strings = Vec::with_capacity(3);
        for _ in 0..3 {
            if at + 2 > len - 4 {
                return Err(FormatError::Corrupt("header strings overrun it".into()));
            }
            let n = u16_at(bytes, at) as usize;
            at += 2;
            if at + n > len - 4 {
                return Err(FormatError::Corrupt("header strings overrun it".into()));
            }
            let s = std::str::from_utf8(&bytes[at..at + n])
                .map_err(|_| FormatError::Corrupt("a header string is not UTF-8".into()))?;
            strings.push(s.to_string());
            at += n;
        }
        let replica = strings.pop().unwrap_or_default();
        let group = strings.pop().unwrap_or_default();
        let database = strings.pop().unwrap_or_default();
        Ok((
            Header {
                kind,
                copy_only: bytes[11] & 1 != 0,
                compressed: bytes[11] & 2 != 0,
                id: bytes[16..32].try_into().expect("16 bytes"),
                first_lsn: u64_at(bytes, 32),
                end_lsn: u64_at(bytes, 40),
                previous: (prev_lsn != u64::MAX).then(|| (prev_lsn, u32_at(bytes, 56))),
                page_size: u32_at(bytes, 60),
                epoch: u64_at(bytes, 64),
                started_us: u64_at(bytes, 72) as i64,
                database,
                group,
                replica,
            },
            len,
        ))
    }

    /// The id as 32 hex digits.
    pub fn id_hex(&self) -> String {
        self.id.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl Manifest {
    /// The encoded manifest.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(52 + self.blocks.len() * 16 + self.page_hashes.len() * 4);
        out.extend_from_slice(&MANIFEST_MAGIC);
        out.extend_from_slice(&(self.blocks.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.finished_us.to_le_bytes());
        out.extend_from_slice(&self.first_commit_us.to_le_bytes());
        out.extend_from_slice(&self.last_commit_us.to_le_bytes());
        let (last_lsn, last_crc) = self.last_record.unwrap_or((u64::MAX, 0));
        out.extend_from_slice(&last_lsn.to_le_bytes());
        out.extend_from_slice(&last_crc.to_le_bytes());
        out.extend_from_slice(&self.db_size.to_le_bytes());
        out.extend_from_slice(&(self.page_hashes.len() as u32).to_le_bytes());
        for b in &self.blocks {
            out.extend_from_slice(&b.offset.to_le_bytes());
            out.extend_from_slice(&b.stored.to_le_bytes());
            out.extend_from_slice(&b.crc.to_le_bytes());
        }
        for h in &self.page_hashes {
            out.extend_from_slice(&h.to_le_bytes());
        }
        let c = crc(&out);
        out.extend_from_slice(&c.to_le_bytes());
        out
    }

    /// Decodes a manifest that is exactly `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Manifest> {
        if bytes.len() < 56 || bytes[..4] != MANIFEST_MAGIC {
            return Err(FormatError::Corrupt(
                "the manifest is missing or damaged".into(),
            ));
        }
        let blocks = u32_at(bytes, 4) as usize;
        let hashes = u32_at(bytes, 48) as usize;
        let want = 52u64 + blocks as u64 * 16 + hashes as u64 * 4 + 4;
        if want != bytes.len() as u64 {
            return Err(FormatError::Corrupt(format!(
                "the manifest is {} bytes, its counts say {want}",
                bytes.len()
            )));
        }
        let stored = u32_at(bytes, bytes.len() - 4);
        if crc(&bytes[..bytes.len() - 4]) != stored {
            return Err(FormatError::Corrupt(
                "the manifest's checksum does not match".into(),
            ));
        }
        let last_lsn = u64_at(bytes, 32);
        let mut at = 52;
        let mut refs = Vec::with_capacity(blocks);
        for _ in 0..blocks {
            refs.push(BlockRef {
                offset: u64_at(bytes, at),
                stored: u32_at(bytes, at + 8),
                crc: u32_at(bytes, at + 12),
            });
            at += 16;
        }
        let page_hashes = (0..hashes).map(|i| u32_at(bytes, at + i * 4)).collect();
        Ok(Manifest {
            blocks: refs,
            finished_us: u64_at(bytes, 8) as i64,
            first_commit_us: u64_at(bytes, 16) as i64,
            last_commit_us: u64_at(bytes, 24) as i64,
            last_record: (last_lsn != u64::MAX).then(|| (last_lsn, u32_at(bytes, 40))),
            db_size: u32_at(bytes, 44),
            page_hashes,
        })
    }
}

/// Bytes of a block's header, before its stored payload.
pub const BLOCK_HEADER_LEN: usize = BLOCK_HEADER;

/// Encodes one block (payload compressed when asked).
pub fn encode_block(block: &Block, compress: bool) -> std::io::Result<Vec<u8>> {
    let stored: std::borrow::Cow<'_, [u8]> = if compress {
        zstd::bulk::compress(&block.payload, 1)?.into()
    } else {
        (&block.payload[..]).into()
    };
    let mut out = vec![0u8; BLOCK_HEADER];
    out.extend_from_slice(&stored);
    seal_block(&mut out, block, compress, block.payload.len());
    Ok(out)
}

/// Fills the header of an encoded block in place: `out` is
/// [`BLOCK_HEADER_LEN`] bytes (overwritten) then the stored payload,
/// `raw_len` bytes before compression (`compressed`). `block`'s payload is
/// not looked at. Lets a writer build a block in a buffer it reuses.
pub fn seal_block(out: &mut [u8], block: &Block, compressed: bool, raw_len: usize) {
    let stored_len = out.len() - BLOCK_HEADER;
    let stored_crc = crc(&out[BLOCK_HEADER..]);
    let head = &mut out[..BLOCK_HEADER];
    head[..4].copy_from_slice(&BLOCK_MAGIC);
    head[4] = match block.kind {
        BlockKind::Pages => 1,
        BlockKind::Log => 2,
    };
    head[5] = u8::from(compressed)
        | (u8::from(block.image_start) << 1)
        | (u8::from(block.image_more) << 2);
    head[6..8].copy_from_slice(&[0, 0]);
    head[8..12].copy_from_slice(&(raw_len as u32).to_le_bytes());
    head[12..16].copy_from_slice(&(stored_len as u32).to_le_bytes());
    head[16..20].copy_from_slice(&block.count.to_le_bytes());
    head[20..24].copy_from_slice(&block.db_size.to_le_bytes());
    head[24..28].copy_from_slice(&stored_crc.to_le_bytes());
    let c = crc(&head[..28]);
    head[28..32].copy_from_slice(&c.to_le_bytes());
}

/// Decodes one block from its 32-byte header and stored payload, checking
/// both CRCs and decompressing.
pub fn decode_block(header: &[u8], stored: &[u8]) -> Result<Block> {
    let mut decompressor = zstd::bulk::Decompressor::new()
        .map_err(|e| FormatError::Corrupt(format!("a block does not decompress: {e}")))?;
    decode_block_into(header, stored, Vec::new(), &mut decompressor)
}

/// [`decode_block`] into `payload` (a buffer to reuse: its contents are
/// replaced) with `decompressor` (one per thread, reused).
pub fn decode_block_into(
    header: &[u8],
    stored: &[u8],
    mut payload: Vec<u8>,
    decompressor: &mut zstd::bulk::Decompressor<'static>,
) -> Result<Block> {
    if header.len() < BLOCK_HEADER || header[..4] != BLOCK_MAGIC {
        return Err(FormatError::Corrupt("a block header is damaged".into()));
    }
    if crc(&header[..28]) != u32_at(header, 28) {
        return Err(FormatError::Corrupt(
            "a block header's checksum does not match".into(),
        ));
    }
    if crc(stored) != u32_at(header, 24) {
        return Err(FormatError::Corrupt(
            "a block's checksum does not match its contents".into(),
        ));
    }
    let kind = match header[4] {
        1 => BlockKind::Pages,
        2 => BlockKind::Log,
        k => return Err(FormatError::Corrupt(format!("block kind {k}"))),
    };
    let raw = u32_at(header, 8);
    if raw > MAX_BLOCK {
        return Err(FormatError::Corrupt(format!("a block claims {raw} bytes")));
    }
    let flags = header[5];
    if flags & 1 != 0 {
        payload.resize(raw as usize, 0);
        let n = decompressor
            .decompress_to_buffer(stored, &mut payload[..])
            .map_err(|e| FormatError::Corrupt(format!("a block does not decompress: {e}")))?;
        payload.truncate(n);
    } else {
        payload.clear();
        payload.extend_from_slice(stored);
    }
    if payload.len() != raw as usize {
        return Err(FormatError::Corrupt(
            "a block's length does not match its header".into(),
        ));
    }
    Ok(Block {
        kind,
        image_start: flags & 2 != 0,
        image_more: flags & 4 != 0,
        count: u32_at(header, 16),
        db_size: u32_at(header, 20),
        payload,
    })
}

/// Decodes a block [`Reader::raw_block`] read: both checksums checked,
/// the payload decompressed.
pub fn decode_raw(bytes: &[u8]) -> Result<Block> {
    if bytes.len() < BLOCK_HEADER {
        return Err(FormatError::Corrupt("a block header is damaged".into()));
    }
    decode_block(&bytes[..BLOCK_HEADER], &bytes[BLOCK_HEADER..])
}

/// Writes a backup file: the header, then blocks, then the manifest and
/// trailer ([`Writer::finish`]).
pub struct Writer<W: Write> {
    out: W,
    at: u64,
    compress: bool,
    blocks: Vec<BlockRef>,
}

impl<W: Write> Writer<W> {
    /// Starts a backup with its header.
    pub fn new(mut out: W, header: &Header) -> std::io::Result<Writer<W>> {
        let bytes = header.encode();
        out.write_all(&bytes)?;
        Ok(Writer {
            out,
            at: bytes.len() as u64,
            compress: header.compressed,
            blocks: Vec::new(),
        })
    }

    /// Appends one block; returns its stored size.
    pub fn block(&mut self, block: &Block) -> std::io::Result<u64> {
        let bytes = encode_block(block, self.compress)?;
        self.encoded(&bytes)
    }

    /// Appends a block [`encode_block`] encoded (on another thread, say)
    /// with [`Writer::compresses`]; returns its size.
    pub fn encoded(&mut self, bytes: &[u8]) -> std::io::Result<u64> {
        if bytes.len() < BLOCK_HEADER {
            return Err(std::io::Error::other("not an encoded block"));
        }
        self.blocks.push(BlockRef {
            offset: self.at,
            stored: (bytes.len() - BLOCK_HEADER) as u32,
            crc: u32_at(bytes, 24),
        });
        self.out.write_all(bytes)?;
        self.at += bytes.len() as u64;
        Ok(bytes.len() as u64)
    }

    /// Whether blocks are compressed (the header's flag).
    pub fn compresses(&self) -> bool {
        self.compress
    }

    /// Writes the manifest (its block list filled in here) and the trailer;
    /// returns the output and the file's size.
    pub fn finish(mut self, mut manifest: Manifest) -> std::io::Result<(W, u64)> {
        manifest.blocks = std::mem::take(&mut self.blocks);
        let bytes = manifest.encode();
        let offset = self.at;
        self.out.write_all(&bytes)?;
        self.out.write_all(&offset.to_le_bytes())?;
        self.out.write_all(&END_MAGIC)?;
        self.out.flush()?;
        Ok((self.out, offset + bytes.len() as u64 + TRAILER))
    }
}

/// An open backup file: header and manifest checked, blocks read on demand.
pub struct Reader<R: Read + Seek> {
    input: R,
    /// The header.
    pub header: Header,
    /// The manifest.
    pub manifest: Manifest,
    /// The file's size.
    pub size: u64,
}

impl<R: Read + Seek> Reader<R> {
    /// Opens a backup: checks the header, the trailer and the manifest.
    pub fn open(mut input: R) -> std::result::Result<Reader<R>, ReadError> {
        let size = input.seek(SeekFrom::End(0))?;
        input.seek(SeekFrom::Start(0))?;
        let mut head = vec![0u8; size.min(4096) as usize];
        input.read_exact(&mut head)?;
        let (header, header_len) = match Header::decode(&head) {
            Err(FormatError::Truncated(_)) if size > head.len() as u64 => {
                let mut more = vec![0u8; size.min(256 << 10) as usize];
                input.seek(SeekFrom::Start(0))?;
                input.read_exact(&mut more)?;
                Header::decode(&more)?
            }
            other => other?,
        };
        if size < header_len as u64 + TRAILER {
            return Err(FormatError::Truncated(format!(
                "the file is {size} bytes and has no manifest"
            ))
            .into());
        }
        let mut trailer = [0u8; 16];
        input.seek(SeekFrom::Start(size - TRAILER))?;
        input.read_exact(&mut trailer)?;
        if trailer[8..] != END_MAGIC {
            return Err(FormatError::Truncated(format!(
                "the file ({size} bytes) does not end with the backup trailer: the backup did not finish, or the copy was cut"
            ))
            .into());
        }
        let offset = u64_at(&trailer, 0);
        if offset < header_len as u64 || offset > size - TRAILER {
            return Err(FormatError::Corrupt(format!("manifest offset {offset}")).into());
        }
        let len = size - TRAILER - offset;
        if len > (1 << 30) {
            return Err(FormatError::Corrupt(format!("a manifest of {len} bytes")).into());
        }
        let mut bytes = vec![0u8; len as usize];
        input.seek(SeekFrom::Start(offset))?;
        input.read_exact(&mut bytes)?;
        let manifest = Manifest::decode(&bytes)?;
        let mut end = header_len as u64;
        for b in &manifest.blocks {
            if b.offset != end {
                return Err(FormatError::Corrupt(format!(
                    "block at {} where one was expected at {end}",
                    b.offset
                ))
                .into());
            }
            end = b.offset + BLOCK_HEADER as u64 + u64::from(b.stored);
        }
        if end != offset {
            return Err(
                FormatError::Corrupt("the blocks do not end at the manifest".into()).into(),
            );
        }
        Ok(Reader {
            input,
            header,
            manifest,
            size,
        })
    }

    /// Reads and checks block `i` (manifest order).
    pub fn block(&mut self, i: usize) -> std::result::Result<Block, ReadError> {
        let bytes = self.raw_block(i)?;
        Ok(decode_raw(&bytes)?)
    }

    /// Reads block `i`'s bytes (header and stored payload) and checks them
    /// against the manifest's entry; [`decode_raw`] checks and decodes the
    /// rest (on any thread: blocks are independent).
    pub fn raw_block(&mut self, i: usize) -> std::result::Result<Vec<u8>, ReadError> {
        let mut bytes = Vec::new();
        self.raw_block_into(i, &mut bytes)?;
        Ok(bytes)
    }

    /// [`Reader::raw_block`] into `bytes` (a buffer to reuse).
    pub fn raw_block_into(
        &mut self,
        i: usize,
        bytes: &mut Vec<u8>,
    ) -> std::result::Result<(), ReadError> {
        let r = self.manifest.blocks[i];
        bytes.resize(BLOCK_HEADER + r.stored as usize, 0);
        self.input.seek(SeekFrom::Start(r.offset))?;
        self.input.read_exact(bytes)?;
        if u32_at(bytes, 24) != r.crc || u32_at(bytes, 12) != r.stored {
            return Err(
                FormatError::Corrupt(format!("block {i} does not match the manifest")).into(),
            );
        }
        Ok(())
    }

    /// Number of blocks.
    pub fn blocks(&self) -> usize {
        self.manifest.blocks.len()
    }
}

/// A failure to read a backup: the bytes, or the file.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The bytes are not a good backup.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// Reading failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Splits a pages payload into `(page number, image)`.
pub fn pages_of(block: &Block, page_size: u32) -> Result<Vec<(u32, Vec<u8>)>> {
    let each = 4 + page_size as usize;
    if page_size == 0 || block.payload.len() != block.count as usize * each {
        return Err(FormatError::Corrupt(format!(
            "a pages block of {} bytes cannot hold {} pages of {page_size} bytes",
            block.payload.len(),
            block.count
        )));
    }
    Ok(block
        .payload
        .chunks_exact(each)
        .map(|c| (u32_at(c, 0), c[4..].to_vec()))
        .collect())
}

/// Builds a pages payload.
pub fn pages_payload(pages: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(pages.iter().map(|(_, p)| 4 + p.len()).sum());
    for (pgno, image) in pages {
        out.extend_from_slice(&pgno.to_le_bytes());
        out.extend_from_slice(image);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn header() -> Header {
        Header {
            kind: Kind::Full,
            copy_only: true,
            compressed: true,
            id: [7; 16],
            first_lsn: 100,
            end_lsn: 900,
            previous: Some((40, 0xdead_beef)),
            page_size: 512,
            epoch: 3,
            started_us: 1_700_000_000_000_000,
            database: "app".into(),
            group: "ag1".into(),
            replica: "r2".into(),
        }
    }

    fn sample(compress: bool) -> Vec<u8> {
        let mut h = header();
        h.compressed = compress;
        let mut w = Writer::new(Vec::new(), &h).unwrap();
        let pages: Vec<(u32, Vec<u8>)> = (1..=3).map(|p| (p, vec![p as u8; 512])).collect();
        w.block(&Block {
            kind: BlockKind::Pages,
            image_start: true,
            image_more: false,
            count: 3,
            db_size: 3,
            payload: pages_payload(&pages),
        })
        .unwrap();
        w.block(&Block::log(0, Vec::new())).unwrap();
        let manifest = Manifest {
            db_size: 3,
            page_hashes: vec![1, 2, 3],
            last_record: Some((800, 9)),
            ..Manifest::default()
        };
        w.finish(manifest).unwrap().0
    }

    #[test]
    fn a_backup_reads_back_what_was_written_compressed_or_not() {
        for compress in [false, true] {
            let bytes = sample(compress);
            let mut r = Reader::open(Cursor::new(bytes)).unwrap();
            assert_eq!(r.header.database, "app");
            assert_eq!(r.header.previous, Some((40, 0xdead_beef)));
            assert_eq!(r.header.compressed, compress);
            assert_eq!(r.manifest.page_hashes, [1, 2, 3]);
            assert_eq!(r.manifest.last_record, Some((800, 9)));
            assert_eq!(r.blocks(), 2);
            let b = r.block(0).unwrap();
            assert!(b.image_start && !b.image_more);
            let pages = pages_of(&b, 512).unwrap();
            assert_eq!(pages[2], (3, vec![3u8; 512]));
            assert_eq!(r.block(1).unwrap().kind, BlockKind::Log);
        }
    }

    #[test]
    fn every_single_bit_flip_is_caught_by_a_checksum_or_a_check() {
        let good = sample(false);
        for byte in 0..good.len() {
            for bit in [0, 5] {
                let mut bad = good.clone();
                bad[byte] ^= 1 << bit;
                let outcome = Reader::open(Cursor::new(bad))
                    .and_then(|mut r| (0..r.blocks()).try_for_each(|i| r.block(i).map(|_| ())));
                assert!(
                    outcome.is_err(),
                    "flip of bit {bit} in byte {byte} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn a_truncated_backup_is_reported_as_truncated_at_every_length() {
        let good = sample(true);
        for len in 0..good.len() {
            match Reader::open(Cursor::new(good[..len].to_vec())) {
                Err(ReadError::Format(FormatError::Truncated(_) | FormatError::NotABackup)) => {}
                Err(ReadError::Format(FormatError::Corrupt(_))) => {}
                Err(e) => panic!("cut at {len}: unexpected {e}"),
                Ok(_) => panic!("cut at {len} was read as whole"),
            }
        }
        assert!(matches!(
            Reader::open(Cursor::new(good[..good.len() - 1].to_vec())),
            Err(ReadError::Format(FormatError::Truncated(_)))
        ));
    }

    /// The fixtures in `tests/fixtures/backup` (README there): name, what it
    /// is, and how reading it must end.
    const FIXTURES: [(&str, &str); 6] = [
        (
            "ok.bak",
            "a full backup of three 512-byte pages and an empty log block, uncompressed",
        ),
        ("ok-compressed.bak", "the same, zstd-compressed"),
        (
            "block-checksum-mismatch.bak",
            "`ok.bak` with one byte of the first block's pages flipped",
        ),
        (
            "manifest-checksum-mismatch.bak",
            "`ok.bak` with one byte of the manifest flipped",
        ),
        (
            "truncated.bak",
            "`ok.bak` without its last 10 bytes, as a copy cut short leaves it",
        ),
        ("foreign.bak", "the first bytes of a SQLite database file"),
    ];

    fn fixture_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/backup")
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = fixture_dir().join(name);
        std::fs::read(&path).unwrap_or_else(|e| {
            panic!("{}: {e}; regenerate with AVAILDB_REGEN_FIXTURES=1 cargo test regenerate_backup_fixtures", path.display())
        })
    }

    fn read_all(bytes: Vec<u8>) -> std::result::Result<Reader<Cursor<Vec<u8>>>, ReadError> {
        let mut r = Reader::open(Cursor::new(bytes))?;
        for i in 0..r.blocks() {
            r.block(i)?;
        }
        Ok(r)
    }

    #[test]
    fn version_1_fixtures_read_as_their_names_say() {
        // Version 1 is what this build writes: a change of the encoding
        // shows here first (then it needs a new version number).
        assert_eq!(
            sample(false),
            fixture("ok.bak"),
            "the encoding of version 1 changed"
        );
        for name in ["ok.bak", "ok-compressed.bak"] {
            let r = read_all(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                (r.header.database.as_str(), r.header.end_lsn),
                ("app", 900),
                "{name}"
            );
            assert_eq!(r.manifest.page_hashes, [1, 2, 3], "{name}");
        }
        for (name, expected) in [
            (
                "block-checksum-mismatch.bak",
                "a block's checksum does not match its contents",
            ),
            (
                "manifest-checksum-mismatch.bak",
                "the manifest's checksum does not match",
            ),
            ("truncated.bak", "truncated"),
            ("foreign.bak", "not an availdb backup"),
        ] {
            match read_all(fixture(name)) {
                Ok(_) => panic!("{name} read as a good backup"),
                Err(e) => assert!(e.to_string().contains(expected), "{name}: {e}"),
            }
        }
    }

    #[test]
    fn regenerate_backup_fixtures() {
        if std::env::var_os("AVAILDB_REGEN_FIXTURES").is_none_or(|v| v != "1") {
            return;
        }
        let dir = fixture_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).unwrap();
        let ok = sample(false);
        write("ok.bak", &ok);
        write("ok-compressed.bak", &sample(true));
        let r = Reader::open(Cursor::new(ok.clone())).unwrap();
        let mut bad = ok.clone();
        bad[r.manifest.blocks[0].offset as usize + BLOCK_HEADER + 10] ^= 0x01;
        write("block-checksum-mismatch.bak", &bad);
        let mut bad = ok.clone();
        let manifest_at = ok.len() - TRAILER as usize - 8;
        bad[manifest_at] ^= 0x01;
        write("manifest-checksum-mismatch.bak", &bad);
        write("truncated.bak", &ok[..ok.len() - 10]);
        write(
            "foreign.bak",
            b"SQLite format 3\0\x10\0\x02\x02\0@  \0\0\0\x01",
        );
        let mut readme = String::from(
            "# Backup file fixtures\n\nBackup files (format version 1, `docs/backup-format.md`) read by the tests in `src/backup/format.rs`. Regenerate with\n`AVAILDB_REGEN_FIXTURES=1 cargo test regenerate_backup_fixtures`.\n\n",
        );
        for (name, what) in FIXTURES {
            readme.push_str(&format!("* `{name}`: {what}\n"));
        }
        write("README.md", readme.as_bytes());
    }

    #[test]
    fn a_foreign_file_is_not_a_backup_and_a_newer_version_is_refused() {
        let foreign = b"SQLite format 3\0 and then some more bytes of a database".to_vec();
        assert!(matches!(
            Reader::open(Cursor::new(foreign)),
            Err(ReadError::Format(FormatError::NotABackup))
        ));
        let mut newer = sample(false);
        newer[8] = 2;
        assert!(matches!(
            Reader::open(Cursor::new(newer)),
            Err(ReadError::Format(FormatError::Version(2)))
        ));
    }
}
