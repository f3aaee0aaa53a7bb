//! The byte format of one log record, and its checks.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "AVL2" (0x41 0x56 0x4c 0x32)
//!      4     4  body length N (bytes 8 .. 8+N, i.e. everything up to the CRC)
//!      8     8  lsn             position of this record in the database's log
//!     16     8  epoch           failover generation that wrote it
//!     24     8  commit time     microseconds since the Unix epoch
//!     32     4  db size         database size in pages after the commit
//!     36     4  page size       bytes per page image
//!     40     4  page count      P
//!     44     4  flags           bit 0: starts a full image; bit 1: the image
//!                               goes on in the next record; bit 2: the
//!                               transaction goes on in the next record
//!     48     …  P × (4-byte page number, page-size bytes of image)
//!  8 + N     4  crc32c          over bytes 0 .. 8+N
//! ```
//! All integers little-endian. A record is `12 + N` bytes long; the next
//! record's LSN is this one's LSN plus that length, so LSNs are byte
//! positions in an endless stream and queue sizes are differences of LSNs.
//!
//! A **full image** of a database (seeding a replica, rewinding a diverged
//! one, starting a log for an existing file) is a run of records: the
//! first has [`Record::IMAGE_START`] and pages 1, 2, … in order; each but
//! the last has [`Record::IMAGE_MORE`], and the next continues the pages.
//! Every part is far below a wire frame, so a database of any size ships.
//! Until the last part is redone the file is part new, part old.
//!
//! A **large transaction** is a run of records too: each part carries at
//! most [`Record::PART_BYTES`] of pages, every part but the last has
//! [`Record::TX_MORE`], and all carry the transaction's final database
//! size. Redo applies a transaction's parts together, in one SQLite
//! transaction, so readers never see part of one; a log that ends inside
//! one (a crash between its parts) ends, for redo, before its first part.
//!
//! A record that ends early is *torn* (a crash during the write): only the
//! last record of a log may be torn, and it was never acknowledged. A record
//! whose CRC does not match is *corrupt*.

/// A log sequence number: the byte position of a record in a database's log.
pub type Lsn = u64;

const MAGIC: [u8; 4] = *b"AVL2";
const FIXED_BODY: usize = 8 + 8 + 8 + 4 + 4 + 4 + 4;

/// One committed transaction as shipped and redone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Position of the record in the log.
    pub lsn: Lsn,
    /// Failover generation that wrote the record.
    pub epoch: u64,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_time_us: i64,
    /// Database size in pages after the commit.
    pub db_size: u32,
    /// Size of each page image.
    pub page_size: u32,
    /// (page number, image), sorted by page number.
    pub pages: Vec<(u32, Vec<u8>)>,
    /// [`Record::IMAGE_START`], [`Record::IMAGE_MORE`] (0 for a commit).
    pub flags: u32,
}

/// What [`Record::check`] reads of a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Position of the record in the log.
    pub lsn: Lsn,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_time_us: i64,
    /// The record's length in bytes, checksum included.
    pub len: usize,
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes end inside the record (a torn write at the end of a log).
    #[error("record is torn: {needed} bytes needed, {available} available")]
    Torn {
        /// Bytes the record claims.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// Not a record at all.
    #[error("bad record magic {0:02x?}")]
    BadMagic([u8; 4]),
    /// The checksum does not match the contents.
    #[error("record checksum mismatch: stored {stored:08x}, computed {computed:08x}")]
    BadChecksum {
        /// CRC in the record.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// The checksum matches but the fields contradict each other.
    #[error("record is inconsistent: {0}")]
    Inconsistent(String),
}

impl Record {
    /// The record starts a full image: the database is replaced.
    pub const IMAGE_START: u32 = 1;
    /// The full image goes on in the next record.
    pub const IMAGE_MORE: u32 = 2;
    /// The transaction goes on in the next record.
    pub const TX_MORE: u32 = 4;
    /// Most page bytes one record of a large transaction carries.
    pub const PART_BYTES: usize = 1 << 20;

    /// True when the transaction goes on in the next record: the database
    /// is not consistent until its last record is redone too.
    pub fn continues_transaction(&self) -> bool {
        self.flags & Record::TX_MORE != 0
    }

    /// True for the first record of a full image.
    pub fn starts_image(&self) -> bool {
        self.flags & Record::IMAGE_START != 0
    }

    /// True when a full image goes on after this record: the database is
    /// not consistent until the image's last record is redone.
    pub fn image_continues(&self) -> bool {
        self.flags & Record::IMAGE_MORE != 0
    }

    /// Checks what a valid checksum cannot: that the contents are possible.
    /// A receiver refuses such a record before hardening it. The rules: a
    /// page size that is a power of two from 512 to 65536, a database of at
    /// least one page, page numbers from 1, strictly ascending (each page at
    /// most once). Pages beyond the database size are allowed: a transaction
    /// that shrinks the file may carry pages it spilled before it cut them,
    /// and redo drops them.
    pub fn check_contents(&self) -> Result<(), DecodeError> {
        let bad = |why: String| Err(DecodeError::Inconsistent(why));
        if !(512..=65536).contains(&self.page_size) || !self.page_size.is_power_of_two() {
            return bad(format!(
                "page size {} is not a power of two from 512 to 65536",
                self.page_size
            ));
        }
        if self.db_size == 0 {
            return bad("a database of 0 pages".into());
        }
        let mut previous = 0u32;
        for (pgno, image) in &self.pages {
            if *pgno <= previous {
                return bad(format!("page {pgno} follows page {previous}: pages must be listed once, in ascending order from 1"));
            }
            if image.len() != self.page_size as usize {
                return bad(format!(
                    "page {pgno} is {} bytes, not {}",
                    image.len(),
                    self.page_size
                ));
            }
            previous = *pgno;
        }
        Ok(())
    }

    /// Encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        12 + FIXED_BODY + self.pages.len() * (4 + self.page_size as usize)
    }

    /// LSN of the record that follows this one.
    pub fn end_lsn(&self) -> Lsn {
        self.lsn + self.encoded_len() as u64
    }

    /// Appends the encoded record to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let body_len = self.encoded_len() - 12;
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&(body_len as u32).to_le_bytes());
        out.extend_from_slice(&self.lsn.to_le_bytes());
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&self.commit_time_us.to_le_bytes());
        out.extend_from_slice(&self.db_size.to_le_bytes());
        out.extend_from_slice(&self.page_size.to_le_bytes());
        out.extend_from_slice(&(self.pages.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        for (pgno, image) in &self.pages {
            debug_assert_eq!(image.len(), self.page_size as usize);
            out.extend_from_slice(&pgno.to_le_bytes());
            out.extend_from_slice(image);
        }
        let crc = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }

    /// Checks the record at the start of `bytes` as [`Record::decode`] does
    /// (length, checksum, layout, flags) without taking its pages out;
    /// returns its header. For passing records on as they are stored.
    pub fn check(bytes: &[u8]) -> Result<Header, DecodeError> {
        let torn = |needed: usize| DecodeError::Torn {
            needed,
            available: bytes.len(),
        };
        if bytes.len() < 8 {
            return Err(torn(8));
        }
        let magic: [u8; 4] = bytes[0..4].try_into().expect("4 bytes");
        if magic != MAGIC {
            return Err(DecodeError::BadMagic(magic));
        }
        let body_len = u32_at(bytes, 4) as usize;
        let total = 12 + body_len;
        if bytes.len() < total {
            return Err(torn(total));
        }
        let stored = u32_at(bytes, 8 + body_len);
        let computed = crc32c::crc32c(&bytes[..8 + body_len]);
        if stored != computed {
            return Err(DecodeError::BadChecksum { stored, computed });
        }
        if body_len < FIXED_BODY {
            return Err(DecodeError::Inconsistent(format!(
                "body of {body_len} bytes"
            )));
        }
        let page_size = u32_at(bytes, 36);
        let count = u32_at(bytes, 40) as usize;
        let expected = FIXED_BODY + count * (4 + page_size as usize);
        if expected != body_len {
            return Err(DecodeError::Inconsistent(format!(
                "{count} pages of {page_size} bytes need a body of {expected}, found {body_len}"
            )));
        }
        let flags = u32_at(bytes, 44);
        if flags & !(Record::IMAGE_START | Record::IMAGE_MORE | Record::TX_MORE) != 0 {
            return Err(DecodeError::Inconsistent(format!(
                "unknown flags {flags:#x} (a newer availdb wrote this log?)"
            )));
        }
        Ok(Header {
            lsn: u64_at(bytes, 8),
            commit_time_us: u64_at(bytes, 24) as i64,
            len: total,
        })
    }

    /// Decodes the record at the start of `bytes`; returns it and its length.
    pub fn decode(bytes: &[u8]) -> Result<(Record, usize), DecodeError> {
        let total = Self::check(bytes)?.len;
        let page_size = u32_at(bytes, 36);
        let count = u32_at(bytes, 40) as usize;
        let flags = u32_at(bytes, 44);
        let mut pages = Vec::with_capacity(count);
        let mut at = 48;
        for _ in 0..count {
            let pgno = u32_at(bytes, at);
            let image = bytes[at + 4..at + 4 + page_size as usize].to_vec();
            pages.push((pgno, image));
            at += 4 + page_size as usize;
        }
        let record = Record {
            lsn: u64_at(bytes, 8),
            epoch: u64_at(bytes, 16),
            commit_time_us: u64_at(bytes, 24) as i64,
            db_size: u32_at(bytes, 32),
            page_size,
            pages,
            flags,
        };
        Ok((record, total))
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            lsn: 4096,
            epoch: 3,
            commit_time_us: 1_700_000_000_000_000,
            db_size: 7,
            page_size: 512,
            pages: vec![(1, vec![1; 512]), (7, vec![7; 512])],
            flags: Record::IMAGE_MORE,
        }
    }

    #[test]
    fn records_round_trip_and_lengths_chain_lsns() {
        let r = sample();
        let mut buf = Vec::new();
        r.encode_into(&mut buf);
        assert_eq!(buf.len(), r.encoded_len());
        let (back, len) = Record::decode(&buf).unwrap();
        assert_eq!((back, len), (r.clone(), buf.len()));
        assert_eq!(r.end_lsn(), 4096 + buf.len() as u64);
    }

    #[test]
    fn a_short_record_is_torn_not_corrupt() {
        let mut buf = Vec::new();
        sample().encode_into(&mut buf);
        for cut in [0, 3, 8, 100, buf.len() - 1] {
            assert!(
                matches!(Record::decode(&buf[..cut]), Err(DecodeError::Torn { .. })),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn impossible_contents_are_refused_even_with_a_valid_checksum() {
        assert_eq!(sample().check_contents(), Ok(()));
        type Breaks = fn(&mut Record);
        let cases: [(&str, Breaks); 5] = [
            ("page size 1000", |r| r.page_size = 1000),
            ("page size 256", |r| r.page_size = 256),
            ("0 pages", |r| r.db_size = 0),
            ("page 0", |r| r.pages[0].0 = 0),
            ("descending", |r| r.pages.swap(0, 1)),
        ];
        for (what, break_it) in cases {
            let mut r = sample();
            break_it(&mut r);
            assert!(r.check_contents().is_err(), "{what}");
        }
    }

    #[test]
    fn any_flipped_byte_is_detected() {
        let mut buf = Vec::new();
        sample().encode_into(&mut buf);
        for at in [0, 5, 9, 20, 40, 44, 600, buf.len() - 1] {
            let mut bad = buf.clone();
            bad[at] ^= 0x40;
            assert!(Record::decode(&bad).is_err(), "flip at {at}");
        }
    }
}
