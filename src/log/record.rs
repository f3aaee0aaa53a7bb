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
//!                               transaction goes on in the next record;
//!                               bit 3: pages are stored without their hole
//!     48     …  P pages, each:
//!                 without bit 3: 4-byte page number, page-size bytes of image
//!                 with bit 3:    4-byte page number, 4-byte hole offset H,
//!                                4-byte hole length L, the image's bytes
//!                                before H and from H + L (page size − L)
//!  8 + N     4  crc32c          over bytes 0 .. 8+N
//! ```
//! All integers little-endian. A record is `12 + N` bytes long; the next
//! record's LSN is this one's LSN plus that length, so LSNs are byte
//! positions in an endless stream and queue sizes are differences of LSNs.
//!
//! # Pages without their hole ([`Record::HOLES`])
//! A page image is mostly the free space of a b-tree page: the zeros
//! between its cell pointers and its cells (an inserted row changes a few
//! dozen bytes of a page that is, on average, half empty). With bit 3 a
//! record leaves out each page's *hole*, its longest run of zero bytes —
//! the first of the longest, and only from [`MIN_HOLE`] bytes (none:
//! offset and length 0) — and decoding puts the zeros back, so every
//! replica still holds the primary's exact bytes. PostgreSQL leaves out
//! the hole of its full-page images the same way. The hole is a function
//! of the image, so an encoding is *canonical*: [`Record::check`] refuses
//! a stored hole that is not the image's, and a record decoded and encoded
//! again is the same bytes (what a replica appending the bytes it received
//! relies on). A record without bit 3 (an older log, a full image) is read
//! and written as before; a binary older than bit 3 refuses such records
//! as written by a newer availdb.
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
/// A page's number, and with [`Record::HOLES`] its hole's offset and length.
const PAGE_HEAD: usize = 4;
const HOLE_HEAD: usize = 4 + 4 + 4;
/// The shortest run of zeros left out as a page's hole (at least 15: the
/// search looks at whole 8-byte words, see `first_zero_run`).
const MIN_HOLE: usize = 32;

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
    /// Pages are stored without their hole (the module's page, "Pages
    /// without their hole").
    pub const HOLES: u32 = 8;
    const KNOWN_FLAGS: u32 =
        Record::IMAGE_START | Record::IMAGE_MORE | Record::TX_MORE | Record::HOLES;
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
        // Each hole's length as it is found: no list of them is kept.
        let hole_lens = self.each_hole().map(|holes| holes.map(|(_, len)| len));
        12 + FIXED_BODY + self.pages_len(hole_lens)
    }

    /// Each page's hole, found as asked, when the record leaves them out
    /// ([`Record::HOLES`]).
    fn each_hole(&self) -> Option<impl Iterator<Item = (usize, usize)> + '_> {
        (self.flags & Record::HOLES != 0).then(|| self.pages.iter().map(|(_, image)| hole(image)))
    }

    /// The encoded length of the pages, given their holes' lengths (when
    /// the holes are left out).
    fn pages_len(&self, hole_lens: Option<impl Iterator<Item = usize>>) -> usize {
        let page_size = self.page_size as usize;
        match hole_lens {
            None => self.pages.len() * (PAGE_HEAD + page_size),
            Some(lens) => lens.map(|len| HOLE_HEAD + page_size - len).sum(),
        }
    }

    /// LSN of the record that follows this one.
    pub fn end_lsn(&self) -> Lsn {
        self.lsn + self.encoded_len() as u64
    }

    /// Appends the encoded record to `out` (reserving exactly its length).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        // Each page's hole is found once, here.
        let holes: Option<Vec<_>> = self.each_hole().map(Iterator::collect);
        let body_len =
            FIXED_BODY + self.pages_len(holes.as_ref().map(|h| h.iter().map(|&(_, len)| len)));
        out.reserve(12 + body_len);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&(body_len as u32).to_le_bytes());
        out.extend_from_slice(&self.lsn.to_le_bytes());
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&self.commit_time_us.to_le_bytes());
        out.extend_from_slice(&self.db_size.to_le_bytes());
        out.extend_from_slice(&self.page_size.to_le_bytes());
        out.extend_from_slice(&(self.pages.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        for (i, (pgno, image)) in self.pages.iter().enumerate() {
            debug_assert_eq!(image.len(), self.page_size as usize);
            out.extend_from_slice(&pgno.to_le_bytes());
            match holes.as_ref().map(|holes| holes[i]) {
                None => out.extend_from_slice(image),
                Some((at, len)) => {
                    out.extend_from_slice(&(at as u32).to_le_bytes());
                    out.extend_from_slice(&(len as u32).to_le_bytes());
                    out.extend_from_slice(&image[..at]);
                    out.extend_from_slice(&image[at + len..]);
                }
            }
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
        let flags = u32_at(bytes, 44);
        if flags & !Record::KNOWN_FLAGS != 0 {
            return Err(DecodeError::Inconsistent(format!(
                "unknown flags {flags:#x} (a newer availdb wrote this log?)"
            )));
        }
        if flags & Record::HOLES != 0 {
            check_holes(&bytes[..8 + body_len], page_size as usize, count)?;
        } else {
            let expected = FIXED_BODY + count * (PAGE_HEAD + page_size as usize);
            if expected != body_len {
                return Err(DecodeError::Inconsistent(format!(
                    "{count} pages of {page_size} bytes need a body of {expected}, found {body_len}"
                )));
            }
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
        let size = page_size as usize;
        for _ in 0..count {
            let pgno = u32_at(bytes, at);
            if flags & Record::HOLES == 0 {
                pages.push((pgno, bytes[at + PAGE_HEAD..at + PAGE_HEAD + size].to_vec()));
                at += PAGE_HEAD + size;
                continue;
            }
            // `check` has checked the layout and that each hole is its page's.
            let (hole_at, hole_len) = stored_hole(bytes, at);
            let stored = &bytes[at + HOLE_HEAD..at + HOLE_HEAD + size - hole_len];
            let mut image = vec![0; size];
            image[..hole_at].copy_from_slice(&stored[..hole_at]);
            image[hole_at + hole_len..].copy_from_slice(&stored[hole_at..]);
            pages.push((pgno, image));
            at += HOLE_HEAD + size - hole_len;
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

/// Checks the pages of a record with [`Record::HOLES`] (`bytes` ends where
/// its checksum starts): each hole inside its page, the stored bytes ending
/// exactly at the checksum, and each hole the one its image has — the first
/// longest run of zeros, from [`MIN_HOLE`] bytes — so that every image has
/// one encoding.
fn check_holes(bytes: &[u8], page_size: usize, count: usize) -> Result<(), DecodeError> {
    let bad = |why: String| Err(DecodeError::Inconsistent(why));
    let mut at = 48;
    for i in 0..count {
        if bytes.len() < at + HOLE_HEAD {
            return bad(format!("page {i} of {count} starts past the record's end"));
        }
        let (hole_at, hole_len) = stored_hole(bytes, at);
        if hole_at
            .checked_add(hole_len)
            .is_none_or(|end| end > page_size)
        {
            return bad(format!(
                "page {i}'s hole ({hole_len} bytes at {hole_at}) is not inside a page of {page_size} bytes"
            ));
        }
        let stored_len = page_size - hole_len;
        let Some(stored) = bytes.get(at + HOLE_HEAD..at + HOLE_HEAD + stored_len) else {
            return bad(format!("page {i} of {count} ends past the record's end"));
        };
        // The first longest run of zeros is the hole when the bytes around
        // it are not zero, none before it is as long and none after longer.
        let (before, after) = stored.split_at(hole_at);
        let canonical = if hole_len == 0 {
            hole_at == 0 && first_zero_run(stored, MIN_HOLE).is_none()
        } else {
            hole_len >= MIN_HOLE
                && before.last().is_none_or(|&b| b != 0)
                && after.first().is_none_or(|&b| b != 0)
                && first_zero_run(before, hole_len).is_none()
                && first_zero_run(after, hole_len + 1).is_none()
        };
        if !canonical {
            return bad(format!(
                "page {i}'s stored hole ({hole_len} bytes at {hole_at}) is not its image's first longest run of zeros"
            ));
        }
        at += HOLE_HEAD + stored_len;
    }
    if at != bytes.len() {
        return bad(format!(
            "{count} pages end at byte {at}, the body at {}",
            bytes.len()
        ));
    }
    Ok(())
}

/// A page's hole: (offset, length) of its first longest run of zero
/// bytes, or (0, 0) when none reaches [`MIN_HOLE`].
fn hole(image: &[u8]) -> (usize, usize) {
    let mut best = (0, 0);
    let mut from = 0;
    while let Some((at, len)) = first_zero_run(&image[from..], best.1.max(MIN_HOLE - 1) + 1) {
        best = (from + at, len);
        from += at + len;
    }
    best
}

/// The first run of at least `need` (≥ 15) zero bytes in `bytes`: its
/// offset and its whole length. Such a run covers `(need - 7) / 8` whole
/// 8-byte words, one of which lies on a grid of that many words, so only
/// the grid's words are looked at until one is zero; that run is then
/// measured, and the search goes on from the grid past it. A page is
/// looked at in a few dozen words, its hole's words aside.
fn first_zero_run(bytes: &[u8], need: usize) -> Option<(usize, usize)> {
    debug_assert!(need >= 15, "runs shorter than two words are not found");
    if bytes.len() < need {
        return None;
    }
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let stride = (need - 7) / 8 * 8;
    let mut probe = 0;
    while probe + 8 <= bytes.len() {
        if word(probe) != 0 {
            probe += stride;
            continue;
        }
        let mut start = probe;
        while start >= 8 && word(start - 8) == 0 {
            start -= 8;
        }
        while start > 0 && bytes[start - 1] == 0 {
            start -= 1;
        }
        let mut end = probe + 8;
        while end + 8 <= bytes.len() && word(end) == 0 {
            end += 8;
        }
        while end < bytes.len() && bytes[end] == 0 {
            end += 1;
        }
        if end - start >= need {
            return Some((start, end - start));
        }
        probe = end.div_ceil(stride) * stride;
    }
    None
}

/// The hole's offset and length stored with the page that starts at `at`.
fn stored_hole(bytes: &[u8], at: usize) -> (usize, usize) {
    (
        u32_at(bytes, at + PAGE_HEAD) as usize,
        u32_at(bytes, at + PAGE_HEAD + 4) as usize,
    )
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

    /// The first longest run of zeros, one byte at a time.
    fn naive_hole(image: &[u8]) -> (usize, usize) {
        let (mut best, mut at, mut len) = ((0, 0), 0, 0);
        for (i, &b) in image.iter().enumerate() {
            if b == 0 {
                if len == 0 {
                    at = i;
                }
                len += 1;
                if len > best.1 {
                    best = (at, len);
                }
            } else {
                len = 0;
            }
        }
        if best.1 >= MIN_HOLE {
            best
        } else {
            (0, 0)
        }
    }

    /// A b-tree page after some inserts: header and cell pointers, free
    /// space, cells at the end.
    fn leaf_page(size: usize, used: usize) -> Vec<u8> {
        let mut page = vec![0; size];
        page[..8 + used / 8].fill(0x0d);
        page[size - used..]
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (i % 251) as u8 | 1);
        page
    }

    #[test]
    fn the_hole_is_the_first_longest_run_of_zeros_at_any_alignment() {
        assert_eq!(hole(&[0; 4096]), (0, 4096));
        assert_eq!(hole(&[7; 4096]), (0, 0));
        assert_eq!(hole(&leaf_page(4096, 1000)), (133, 4096 - 1000 - 133));
        // Deterministic pseudo-random pages: runs of every length and
        // offset, ties, runs across words, runs at both ends.
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..3000 {
            let size = [512, 1024, 4096][(next() % 3) as usize];
            let mut page: Vec<u8> = (0..size).map(|_| (next() % 255 + 1) as u8).collect();
            for _ in 0..(next() % 4) {
                let len = (next() % 120) as usize;
                let at = (next() as usize) % size;
                let end = (at + len).min(size);
                page[at..end].fill(0);
            }
            assert_eq!(hole(&page), naive_hole(&page), "{page:?}");
        }
    }

    #[test]
    fn pages_without_their_hole_round_trip_to_the_same_bytes() {
        let record = Record {
            pages: vec![
                (1, leaf_page(4096, 1000)),
                (2, vec![0; 4096]),
                (5, vec![3; 4096]),
            ],
            page_size: 4096,
            flags: Record::HOLES | Record::TX_MORE,
            ..sample()
        };
        let mut buf = Vec::new();
        record.encode_into(&mut buf);
        assert_eq!(buf.len(), record.encoded_len());
        let full = Record {
            flags: Record::TX_MORE,
            ..record.clone()
        };
        assert_eq!(
            full.encoded_len() - buf.len(),
            (4096 - 1000 - 133) + 4096 - 3 * 8,
            "each hole is left out, at 8 bytes a page"
        );
        let (back, len) = Record::decode(&buf).unwrap();
        assert_eq!((&back, len), (&record, buf.len()));
        let mut again = Vec::new();
        back.encode_into(&mut again);
        assert_eq!(again, buf);
        assert_eq!(Record::check(&buf).unwrap().len, buf.len());
    }

    /// An image has one encoding: a stored hole that is not the image's
    /// first longest run of zeros is refused, checksum or not.
    #[test]
    fn a_hole_that_is_not_the_pages_own_is_refused() {
        let stored_with = |page: &[u8], hole_at: usize, hole_len: usize| {
            let mut body = Vec::new();
            body.extend_from_slice(&4096u64.to_le_bytes());
            body.extend_from_slice(&3u64.to_le_bytes());
            body.extend_from_slice(&5i64.to_le_bytes());
            body.extend_from_slice(&7u32.to_le_bytes());
            body.extend_from_slice(&512u32.to_le_bytes());
            body.extend_from_slice(&1u32.to_le_bytes());
            body.extend_from_slice(&Record::HOLES.to_le_bytes());
            body.extend_from_slice(&1u32.to_le_bytes());
            body.extend_from_slice(&(hole_at as u32).to_le_bytes());
            body.extend_from_slice(&(hole_len as u32).to_le_bytes());
            body.extend_from_slice(&page[..hole_at]);
            body.extend_from_slice(&page[hole_at + hole_len..]);
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&body);
            let crc = crc32c::crc32c(&bytes);
            bytes.extend_from_slice(&crc.to_le_bytes());
            bytes
        };
        let page = leaf_page(512, 100);
        let (at, len) = hole(&page);
        // Two runs of 40 zeros: the first is the hole.
        let mut twins = vec![9u8; 512];
        twins[100..140].fill(0);
        twins[300..340].fill(0);
        assert_eq!(hole(&twins), (100, 40));
        assert!(Record::decode(&stored_with(&page, at, len)).is_ok());
        assert!(Record::decode(&stored_with(&twins, 100, 40)).is_ok());
        for (what, image, hole_at, hole_len) in [
            ("a shorter hole", &page, at + 8, len - 8),
            ("no hole", &page, 0, 0),
            ("a hole of non-zero bytes", &page, 0, 40),
            ("the second of two longest runs", &twins, 300, 40),
            ("a run shorter than the shortest hole", &twins, 100, 20),
        ] {
            let bytes = stored_with(image, hole_at, hole_len);
            assert!(
                matches!(Record::check(&bytes), Err(DecodeError::Inconsistent(_))),
                "{what}"
            );
            assert!(Record::decode(&bytes).is_err(), "{what}");
        }
        let mut outside = stored_with(&page, at, len);
        outside[52..56].copy_from_slice(&600u32.to_le_bytes());
        let n = outside.len() - 4;
        let crc = crc32c::crc32c(&outside[..n]);
        outside[n..].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            Record::check(&outside),
            Err(DecodeError::Inconsistent(_))
        ));
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
