//! Page checksums: the format that lets every page read of an availability
//! database be verified, and the page number of a bad page be known.
//!
//! SQLite pages carry no checksum. A database whose header says it keeps
//! **8 reserved bytes** at the end of every page (byte 20 of page 1) has
//! them filled by availdb: SQLite never reads or writes those bytes itself
//! (its B-tree uses `page_size - reserved` bytes of a page), so the file
//! stays an ordinary SQLite file.
//!
//! # Format (`docs/page-checksums.md` has the byte table)
//! ```text
//! page offset   size  field
//! size - 8         4  crc32c (Castagnoli), little endian, over bytes
//!                     0 .. size - 8 of the page, page 1's volatile bytes
//!                     (24..28, 92..100) counted as zeros
//! size - 4         4  "AVC1": the format's tag (a page never sealed fails)
//! ```
//! "Page 1" is any page that starts with SQLite's magic
//! `"SQLite format 3\0"`: the rule looks at the bytes alone, never at where
//! the page lies, so a WAL frame, a log record and the file agree. The
//! masked bytes are those every pager rewrites at its own commits (redo's
//! rule 5): leaving them out keeps the checksum, and so the whole page
//! apart from them, identical on every replica.
//!
//! A page is *sealed* when its last 8 bytes hold its checksum. The log
//! carries sealed pages only (capture seals what it reads from SQLite's
//! WAL), so redo, recovery, seeding and restore write sealed pages without
//! computing anything.
//!
//! # Limits
//! * A page moved whole to another place of the file, or a page of another
//!   database with checksums, passes: the checksum covers the bytes, not
//!   the position (page-identical replicas need position-free bytes).
//! * Page 1's change counter and SQLite version bytes are not covered.

/// Bytes every page of a checksummed database reserves (page 1's byte 20).
pub const RESERVED: usize = 8;

/// The format tag in a sealed page's last 4 bytes.
pub const TAG: [u8; 4] = *b"AVC1";

/// SQLite's magic at the start of page 1.
const MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Page 1 bytes each pager rewrites when it commits (not covered).
const VOLATILE: [std::ops::Range<usize>; 2] = [24..28, 92..100];

/// Smallest and largest SQLite page sizes.
const MIN_PAGE: usize = 512;
const MAX_PAGE: usize = 65536;

/// True when `len` is a size SQLite pages can have.
pub fn is_page_size(len: usize) -> bool {
    (MIN_PAGE..=MAX_PAGE).contains(&len) && len.is_power_of_two()
}

/// True when `header` (the first 100 bytes or more of page 1) describes a
/// database whose pages carry availdb's checksum.
pub fn header_says_checksummed(header: &[u8]) -> bool {
    header.len() >= 100 && header.starts_with(MAGIC) && usize::from(header[20]) == RESERVED
}

/// The checksum of `page` (the stored value not included).
fn compute(page: &[u8]) -> u32 {
    let body = &page[..page.len() - RESERVED];
    if !body.starts_with(MAGIC) {
        return crc32c::crc32c(body);
    }
    let mut crc = 0;
    let mut from = 0;
    for range in VOLATILE {
        crc = crc32c::crc32c_append(crc, &body[from..range.start]);
        crc = crc32c::crc32c_append(crc, &[0; 8][..range.len()]);
        from = range.end;
    }
    crc32c::crc32c_append(crc, &body[from..])
}

/// Writes `page`'s checksum into its last 8 bytes. Pages of a size SQLite
/// cannot have are left alone.
pub fn seal(page: &mut [u8]) {
    if !is_page_size(page.len()) {
        return;
    }
    let crc = compute(page).to_le_bytes();
    let at = page.len() - RESERVED;
    page[at..at + 4].copy_from_slice(&crc);
    page[at + 4..].copy_from_slice(&TAG);
}

/// True when `page` is sealed and its bytes are those it was sealed with.
pub fn verify(page: &[u8]) -> bool {
    if !is_page_size(page.len()) {
        return false;
    }
    let at = page.len() - RESERVED;
    page[at + 4..] == TAG && page[at..at + 4] == compute(page).to_le_bytes()
}

/// [`verify`] and the crc32c of the whole page (what a backup's manifest
/// records per page) in one pass over its bytes: `(sealed and intact,
/// crc32c of all of it)`.
pub fn verify_and_hash(page: &[u8]) -> (bool, u32) {
    if !is_page_size(page.len()) {
        return (false, crc32c::crc32c(page));
    }
    let at = page.len() - RESERVED;
    let body = &page[..at];
    if body.starts_with(MAGIC) {
        return (verify(page), crc32c::crc32c(page));
    }
    let body_crc = crc32c::crc32c(body);
    let whole = crc32c::crc32c_append(body_crc, &page[at..]);
    let ok = page[at + 4..] == TAG && page[at..at + 4] == body_crc.to_le_bytes();
    (ok, whole)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_and_hash_agrees_with_verify_and_with_the_whole_page_crc() {
        for size in [512usize, 4096] {
            let mut plain = vec![7u8; size];
            plain[0] = 13;
            seal(&mut plain);
            let mut first = page_one(size);
            seal(&mut first);
            for page in [plain, first] {
                assert_eq!(verify_and_hash(&page), (true, crc32c::crc32c(&page)));
                let mut bad = page.clone();
                bad[size / 2] ^= 1;
                assert_eq!(verify_and_hash(&bad), (false, crc32c::crc32c(&bad)));
            }
        }
    }

    fn page_one(size: usize) -> Vec<u8> {
        let mut page = vec![0u8; size];
        page[..16].copy_from_slice(MAGIC);
        page[20] = RESERVED as u8;
        for (i, byte) in page.iter_mut().enumerate().skip(100) {
            *byte = (i % 251) as u8;
        }
        page
    }

    #[test]
    fn a_sealed_page_verifies_and_every_single_bit_flip_is_found() {
        let mut page: Vec<u8> = (0..4096).map(|i| (i * 7 % 256) as u8).collect();
        seal(&mut page);
        assert!(verify(&page));
        for bit in 0..page.len() * 8 {
            page[bit / 8] ^= 1 << (bit % 8);
            assert!(!verify(&page), "flip of bit {bit} not found");
            page[bit / 8] ^= 1 << (bit % 8);
        }
    }

    #[test]
    fn zeroed_torn_and_unsealed_pages_fail() {
        let zeroed = vec![0u8; 4096];
        assert!(!verify(&zeroed), "a zeroed page");
        let mut old: Vec<u8> = (0..4096).map(|i| (i % 13) as u8).collect();
        let mut new: Vec<u8> = (0..4096).map(|i| (i % 17) as u8).collect();
        seal(&mut old);
        seal(&mut new);
        let mut torn = old.clone();
        torn[2048..].copy_from_slice(&new[2048..]);
        assert!(!verify(&torn), "half old, half new");
        let mut unsealed = old.clone();
        unsealed[4092..].copy_from_slice(&[0; 4]);
        assert!(!verify(&unsealed), "no tag");
        assert!(!verify(&old[..1000]), "not a page size");
    }

    #[test]
    fn page_one_volatile_bytes_are_not_covered_so_replicas_agree() {
        let mut primary = page_one(4096);
        seal(&mut primary);
        let mut replica = primary.clone();
        replica[24..28].copy_from_slice(&[9, 9, 9, 9]);
        replica[92..100].copy_from_slice(&[7; 8]);
        assert!(
            verify(&replica),
            "another pager's change counter and version"
        );
        let mut resealed = replica.clone();
        seal(&mut resealed);
        assert_eq!(resealed[4088..], primary[4088..], "same checksum");
        replica[28] ^= 1;
        assert!(!verify(&replica), "the database size is covered");
    }

    #[test]
    fn headers_say_whether_pages_are_checksummed() {
        let page = page_one(4096);
        assert!(header_says_checksummed(&page[..100]));
        let mut other = page.clone();
        other[20] = 0;
        assert!(!header_says_checksummed(&other));
        assert!(!header_says_checksummed(&page[..99]));
        assert!(!header_says_checksummed(&[0; 100]));
    }
}
