//! Reading a full backup's image: the database file itself, in large
//! sequential chunks, with the pages the WAL holds taken through the
//! backup's read snapshot — one image, exactly the snapshot's.
//!
//! # Protocol
//! 1. The caller holds a read transaction on `conn`: SQLite's WAL snapshot,
//!    the WAL's frames up to some frame `M`.
//! 2. [`layout`] reads through the snapshot the database's size (`PRAGMA
//!    page_count`), its page size, whether its pages carry checksums, and
//!    the pages of the schema b-tree.
//! 3. [`for_each_chunk`] then lists `W`, every page in a valid frame of the
//!    WAL's current generation (`engine::wal::pages_in`), read *after* 1;
//!    hands over the first block (page 1, the schema b-tree, the last page,
//!    through the snapshot: the order of `engine/image.rs`); then, for each
//!    run of [`PAGES_PER_BLOCK`] page numbers, reads the file once at the
//!    run's offset (through SQLite's own file handle,
//!    `engine::vfs::read_database_file`) and replaces the pages of `W` by
//!    the snapshot's (`sqlite_dbpage`).
//! 4. Workers ([`encode`]) check each page read from the file against its
//!    checksum, hash every page (the manifest's crc32c), build the block
//!    and compress it; blocks are independent, so any number of workers
//!    can, and one writer puts them in order.
//!
//! # Why the image is the snapshot's
//! * While a reader holds a snapshot on a WAL read mark other than 0, SQLite
//!   neither restarts the WAL (a restart needs every such mark's lock) nor
//!   lets a checkpoint copy a frame past `M` into the file (a checkpoint
//!   copies no further than the oldest read mark in use). A reader on mark
//!   0 began when everything was checkpointed and reads the file alone; no
//!   checkpoint copies anything while it reads (copying needs mark 0's lock
//!   exclusively). Neither case waits for the backup: writers go on
//!   appending to the WAL, which grows until the snapshot ends.
//! * So a page in no frame of `W` is, in the file, the version the
//!   snapshot sees, and nothing writes it while the backup reads. The
//!   checkpoints that run meanwhile write only pages of frames up to `M`,
//!   all in `W` (listed after the snapshot began, before any restart could
//!   happen): a page they write, even half-written when read, is replaced
//!   by the snapshot's.
//! * `W` may hold more than the snapshot's frames (later commits, frames
//!   of a transaction in progress): those pages are read through the
//!   snapshot too, which is right for any page.
//!
//! # Invariants
//! * Every page `1..=size` is in exactly one block, once; the lock-byte
//!   page (the page at 1 GiB, which SQLite never uses) as zeros, as
//!   `sqlite_dbpage` gives it.
//! * Every page read from the file is checked against its checksum (when
//!   the database has them) before it is hashed: a damaged page fails the
//!   backup with XX001 and is reported to the scrubber, as a read through
//!   SQLite would. Pages through the snapshot were checked by the VFS.
//! * A page past the file's end must be in `W` (the snapshot's pages are
//!   in the file or in the WAL); otherwise the backup fails rather than
//!   store zeros.

use std::collections::BTreeSet;
use std::path::Path;

use rusqlite::Connection;

use super::error::{BackupError, Result};
use super::format::{self, Block, BlockKind};
use crate::engine::checksum;

/// Pages per block: 8 MiB of 4 KiB pages, as a full image's parts
/// (`engine::image::IMAGE_PART_BYTES`).
pub(super) const BLOCK_BYTES: usize = crate::engine::image::IMAGE_PART_BYTES;

/// What the snapshot says about the database, read before any page.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    /// Pages in the snapshot.
    pub db_size: u32,
    /// Bytes per page.
    pub page_size: u32,
    /// Pages carry availdb's checksum (page 1's byte 20).
    pub checksummed: bool,
    /// Page 1, the schema b-tree's pages and the last page: the first block.
    pub first_block: BTreeSet<u32>,
}

/// Reads the snapshot's layout (the caller's read transaction is open).
pub(super) fn layout(conn: &Connection) -> Result<Layout> {
    let engine = crate::engine::Error::from;
    let page_size: u32 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .map_err(engine)?;
    let db_size: u32 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .map_err(engine)?;
    if db_size == 0 {
        return Ok(Layout {
            db_size,
            page_size,
            checksummed: false,
            first_block: BTreeSet::new(),
        });
    }
    let page_one: Vec<u8> = conn
        .query_row("SELECT data FROM sqlite_dbpage WHERE pgno = 1", [], |r| {
            r.get(0)
        })
        .map_err(engine)?;
    let mut first_block = crate::engine::image::schema_pages(conn, page_size as usize)?;
    first_block.insert(db_size);
    Ok(Layout {
        db_size,
        page_size,
        checksummed: checksum::header_says_checksummed(&page_one),
        first_block,
    })
}

/// The page that holds SQLite's lock bytes (offset 1 GiB): never used, read
/// as zeros.
pub(super) fn lock_byte_page(page_size: u32) -> u32 {
    (0x4000_0000 / page_size.max(1)) + 1
}

/// The runs of page numbers read from the file, `(first, last)` inclusive,
/// `per_block` pages each (the last one shorter): `1..=db_size` in order.
pub(super) fn runs(db_size: u32, per_block: u32) -> impl Iterator<Item = (u32, u32)> {
    let per_block = per_block.max(1);
    (0..db_size.div_ceil(per_block)).map(move |i| {
        let first = i * per_block + 1;
        (first, (first + per_block - 1).min(db_size))
    })
}

/// One block's pages, read and waiting to be encoded.
#[derive(Debug)]
pub(super) struct Chunk {
    /// Its place among the blocks (0: the first).
    pub seq: u64,
    /// It starts the image.
    pub start: bool,
    /// More pages blocks follow.
    pub more: bool,
    /// The database's size in pages.
    pub db_size: u32,
    /// (page number, offset of its image in `bytes`, checked already):
    /// ascending page numbers.
    pub pages: Vec<(u32, usize, bool)>,
    /// The images.
    pub bytes: Vec<u8>,
}

/// A block encoded for the file, with the crc32c of each of its pages.
#[derive(Debug)]
pub(super) struct Encoded {
    /// Its place among the blocks.
    pub seq: u64,
    /// The block as `format::Writer::encoded` takes it.
    pub bytes: Vec<u8>,
    /// (page number, crc32c of its image).
    pub hashes: Vec<(u32, u32)>,
}

/// Why a chunk could not be encoded.
#[derive(Debug)]
pub(super) enum EncodeError {
    /// The page failed its checksum: it is damaged in the file.
    Damaged(u32),
    /// Compression failed.
    Io(std::io::Error),
}

/// Buffers of the pipeline handed back for reuse: an 8 MiB buffer freed
/// and allocated again costs its page faults on every block (a quarter of
/// a backup's CPU when measured).
#[derive(Default)]
pub(super) struct Pool(std::sync::Mutex<Vec<Vec<u8>>>);

/// Most buffers a [`Pool`] keeps.
const POOLED: usize = 16;

impl Pool {
    /// A buffer of `len` bytes (contents unspecified).
    pub fn take(&self, len: usize) -> Vec<u8> {
        let mut buf = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default();
        buf.resize(len, 0);
        buf
    }

    /// Hands `buf` back.
    pub fn give(&self, buf: Vec<u8>) {
        let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOLED {
            pool.push(buf);
        }
    }
}

/// Checks, hashes and encodes one chunk (any thread): with `compressor`,
/// compressed. The block is built in buffers of `pool`, and the chunk's
/// images go back to it.
pub(super) fn encode(
    chunk: Chunk,
    page_size: usize,
    checksummed: bool,
    compressor: Option<&mut zstd::bulk::Compressor<'static>>,
    pool: &Pool,
) -> std::result::Result<Encoded, EncodeError> {
    let header = format::BLOCK_HEADER_LEN;
    let each = 4 + page_size;
    let raw_len = chunk.pages.len() * each;
    // Uncompressed, the payload is built where it is stored, after the
    // block's header.
    let base = if compressor.is_some() { 0 } else { header };
    let mut buf = pool.take(base + raw_len);
    let mut hashes = Vec::with_capacity(chunk.pages.len());
    for (i, &(pgno, at, checked)) in chunk.pages.iter().enumerate() {
        let page = &chunk.bytes[at..at + page_size];
        let hash = if checksummed && !checked {
            let (intact, hash) = checksum::verify_and_hash(page);
            if !intact {
                pool.give(buf);
                return Err(EncodeError::Damaged(pgno));
            }
            hash
        } else {
            crc32c::crc32c(page)
        };
        hashes.push((pgno, hash));
        let o = base + i * each;
        buf[o..o + 4].copy_from_slice(&pgno.to_le_bytes());
        buf[o + 4..o + each].copy_from_slice(page);
    }
    let block = Block {
        kind: BlockKind::Pages,
        image_start: chunk.start,
        image_more: chunk.more,
        count: hashes.len() as u32,
        db_size: chunk.db_size,
        payload: Vec::new(),
    };
    let seq = chunk.seq;
    pool.give(chunk.bytes);
    let bytes = match compressor {
        None => {
            format::seal_block(&mut buf, &block, false, raw_len);
            buf
        }
        Some(compressor) => {
            let mut out = pool.take(header + zstd::zstd_safe::compress_bound(raw_len));
            let n = compressor
                .compress_to_buffer(&buf[..], &mut out[header..])
                .map_err(EncodeError::Io)?;
            pool.give(buf);
            out.truncate(header + n);
            format::seal_block(&mut out, &block, true, raw_len);
            out
        }
    };
    Ok(Encoded { seq, bytes, hashes })
}

/// Reads the snapshot's pages as the module doc says and hands them to
/// `send` block by block, in order; `send` returning false stops the read
/// (the receiver failed or the backup was interrupted). Runs on the thread
/// that owns `conn`, inside its read transaction.
pub(super) fn for_each_chunk(
    conn: &Connection,
    layout: &Layout,
    wal: &Path,
    db_path: &Path,
    block_bytes: usize,
    pool: &Pool,
    mut send: impl FnMut(Chunk) -> Result<bool>,
) -> Result<()> {
    if layout.db_size == 0 {
        return Ok(());
    }
    let engine = crate::engine::Error::from;
    let mut tries = 0;
    let in_wal = loop {
        match crate::engine::wal::pages_in(wal) {
            Ok(pages) => break pages,
            // A snapshot that reads the file alone lets a writer restart
            // the WAL meanwhile: its header may be half-written when read.
            Err(_) if tries < 3 => tries += 1,
            Err(e) => {
                return Err(BackupError::Io {
                    what: "read the WAL of",
                    path: wal.to_path_buf(),
                    source: std::io::Error::other(format!(
                        "{e} (if it changed while the backup read it, run BACKUP again)"
                    )),
                })
            }
        }
    };
    let ps = layout.page_size as usize;
    let per_block = (block_bytes / ps).max(1) as u32;
    let lock_page = lock_byte_page(layout.page_size);
    let mut one = conn
        .prepare("SELECT data FROM sqlite_dbpage WHERE pgno = ?1")
        .map_err(engine)?;
    let mut through_snapshot = |pgno: u32, into: &mut [u8]| -> Result<()> {
        let data: Vec<u8> = one.query_row([pgno], |r| r.get(0)).map_err(engine)?;
        if data.len() != into.len() {
            return Err(BackupError::Engine(crate::engine::Error::sql(
                "XX001",
                format!(
                    "page {pgno} read through the snapshot is {} bytes",
                    data.len()
                ),
            )));
        }
        into.copy_from_slice(&data);
        Ok(())
    };
    // The first block: through the snapshot, as engine/image.rs orders it.
    let mut bytes = vec![0u8; layout.first_block.len() * ps];
    let mut pages = Vec::with_capacity(layout.first_block.len());
    for (i, &pgno) in layout.first_block.iter().enumerate() {
        through_snapshot(pgno, &mut bytes[i * ps..(i + 1) * ps])?;
        pages.push((pgno, i * ps, true));
    }
    let rest = layout.db_size as usize - layout.first_block.len();
    let mut seq = 0u64;
    let go_on = send(Chunk {
        seq,
        start: true,
        more: rest > 0,
        db_size: layout.db_size,
        pages,
        bytes,
    })?;
    if !go_on {
        return Ok(());
    }
    let mut left = rest;
    let mut wal_at = 0usize;
    for (first, last) in runs(layout.db_size, per_block) {
        let n = (last - first + 1) as usize;
        let mut pages = Vec::with_capacity(n);
        let mut bytes = pool.take(n * ps);
        let offset = u64::from(first - 1) * ps as u64;
        let file_size =
            crate::engine::vfs::read_database_file(conn, &mut bytes, offset).map_err(|source| {
                BackupError::Io {
                    what: "read",
                    path: db_path.to_path_buf(),
                    source,
                }
            })?;
        for pgno in first..=last {
            if layout.first_block.contains(&pgno) {
                continue;
            }
            let at = (pgno - first) as usize * ps;
            while wal_at < in_wal.len() && in_wal[wal_at] < pgno {
                wal_at += 1;
            }
            let page = &mut bytes[at..at + ps];
            if pgno == lock_page {
                page.fill(0);
                pages.push((pgno, at, true));
            } else if in_wal.get(wal_at) == Some(&pgno) {
                through_snapshot(pgno, page)?;
                pages.push((pgno, at, true));
            } else if u64::from(pgno) * ps as u64 > file_size {
                return Err(BackupError::Engine(crate::engine::Error::sql(
                    "XX001",
                    format!(
                        "page {pgno} of the snapshot's {} is past the end of the database file ({file_size} bytes) and in no frame of its WAL",
                        layout.db_size
                    ),
                )));
            } else {
                pages.push((pgno, at, false));
            }
        }
        if pages.is_empty() {
            pool.give(bytes);
            continue;
        }
        left -= pages.len();
        seq += 1;
        let go_on = send(Chunk {
            seq,
            start: false,
            more: left > 0,
            db_size: layout.db_size,
            pages,
            bytes,
        })?;
        if !go_on {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runs_cover_every_page_once_in_order() {
        for (db_size, per) in [(0, 4), (1, 4), (4, 4), (5, 4), (9, 4), (2049, 2048), (7, 1)] {
            let pages: Vec<u32> = runs(db_size, per).flat_map(|(a, b)| a..=b).collect();
            assert_eq!(
                pages,
                (1..=db_size).collect::<Vec<_>>(),
                "{db_size} by {per}"
            );
            assert!(runs(db_size, per).all(|(a, b)| b - a < per));
        }
    }

    #[test]
    fn the_lock_byte_page_is_the_page_at_one_gibibyte() {
        assert_eq!(lock_byte_page(4096), 262_145);
        assert_eq!(lock_byte_page(65536), 16_385);
        assert_eq!(u64::from(lock_byte_page(512) - 1) * 512, 1 << 30);
    }

    fn sealed(fill: u8) -> Vec<u8> {
        let mut page = vec![fill; 512];
        checksum::seal(&mut page);
        page
    }

    fn chunk(pages: &[(u32, Vec<u8>, bool)]) -> Chunk {
        let mut bytes = Vec::new();
        let mut list = Vec::new();
        for (pgno, image, checked) in pages {
            list.push((*pgno, bytes.len(), *checked));
            bytes.extend_from_slice(image);
        }
        Chunk {
            seq: 3,
            start: false,
            more: true,
            db_size: 9,
            pages: list,
            bytes,
        }
    }

    fn enc(
        chunk: Chunk,
        checksummed: bool,
        compress: bool,
    ) -> std::result::Result<Encoded, EncodeError> {
        let mut compressor = zstd::bulk::Compressor::new(1).unwrap();
        let pool = Pool::default();
        encode(
            chunk,
            512,
            checksummed,
            compress.then_some(&mut compressor),
            &pool,
        )
    }

    #[test]
    fn an_encoded_chunk_decodes_to_its_pages_with_their_hashes() {
        let pages = [
            (2, sealed(1), false),
            (3, sealed(2), true),
            (5, sealed(3), false),
        ];
        for compress in [false, true] {
            let encoded = enc(chunk(&pages), true, compress).unwrap();
            assert_eq!(encoded.seq, 3);
            let want: Vec<(u32, u32)> = pages
                .iter()
                .map(|(p, img, _)| (*p, crc32c::crc32c(img)))
                .collect();
            assert_eq!(encoded.hashes, want);
            let block = format::decode_block(&encoded.bytes[..32], &encoded.bytes[32..]).unwrap();
            assert!(!block.image_start && block.image_more);
            assert_eq!((block.count, block.db_size), (3, 9));
            let decoded = format::pages_of(&block, 512).unwrap();
            let images: Vec<(u32, Vec<u8>)> =
                pages.iter().map(|(p, img, _)| (*p, img.clone())).collect();
            assert_eq!(decoded, images);
        }
    }

    #[test]
    fn a_damaged_page_read_from_the_file_fails_its_block() {
        let mut bad = sealed(4);
        bad[100] ^= 0x10;
        let pages = [(2, sealed(1), false), (7, bad.clone(), false)];
        assert!(matches!(
            enc(chunk(&pages), true, false),
            Err(EncodeError::Damaged(7))
        ));
        // Through the snapshot it was checked already; without checksums
        // there is nothing to check.
        let pages = [(7, bad.clone(), true)];
        assert!(enc(chunk(&pages), true, false).is_ok());
        let pages = [(7, bad, false)];
        assert!(enc(chunk(&pages), false, false).is_ok());
    }

    // ---- On real SQLite files (through availdb's VFS, with checksums) ----

    use std::collections::BTreeMap;

    /// A checksummed WAL database at `path` with `rows` rows, everything
    /// checkpointed into the file.
    fn database(path: &Path, rows: u32) -> Connection {
        crate::engine::vfs::install();
        let conn = Connection::open(path).unwrap();
        let mut reserve = checksum::RESERVED as i32;
        conn.file_control(
            Some("main"),
            rusqlite::FileControl::ReserveBytes(&mut reserve),
        )
        .unwrap();
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
             CREATE TABLE t(x INTEGER PRIMARY KEY, pad BLOB);
             WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {rows})
             INSERT INTO t SELECT i, randomblob(300) FROM s;
             PRAGMA wal_checkpoint(TRUNCATE);"
        ))
        .unwrap();
        conn
    }

    /// Every page the open read transaction of `conn` sees, through SQLite.
    fn snapshot(conn: &Connection) -> BTreeMap<u32, Vec<u8>> {
        let mut stmt = conn
            .prepare("SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno")
            .unwrap();
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        rows.collect::<rusqlite::Result<_>>().unwrap()
    }

    /// Reads the image in blocks of 4 pages, running `between` after each
    /// block is read; returns the pages the blocks decode to.
    fn read_image(
        conn: &Connection,
        path: &Path,
        mut between: impl FnMut(),
    ) -> std::result::Result<BTreeMap<u32, Vec<u8>>, String> {
        let layout = layout(conn).map_err(|e| e.to_string())?;
        let pool = Pool::default();
        let wal = crate::engine::wal_path(path);
        let mut chunks = Vec::new();
        for_each_chunk(
            conn,
            &layout,
            &wal,
            path,
            4 * layout.page_size as usize,
            &pool,
            |chunk| {
                chunks.push(chunk);
                between();
                Ok(true)
            },
        )
        .map_err(|e| e.to_string())?;
        let mut pages = BTreeMap::new();
        let n = chunks.len();
        for (i, chunk) in chunks.into_iter().enumerate() {
            assert_eq!(chunk.seq, i as u64);
            assert_eq!((chunk.start, chunk.more), (i == 0, i + 1 < n));
            let mut compressor = zstd::bulk::Compressor::new(1).unwrap();
            let encoded = encode(
                chunk,
                layout.page_size as usize,
                layout.checksummed,
                Some(&mut compressor),
                &pool,
            )
            .map_err(|e| format!("{e:?}"))?;
            let block = format::decode_raw(&encoded.bytes).unwrap();
            for (pgno, image) in format::pages_of(&block, layout.page_size).unwrap() {
                let hash = encoded.hashes.iter().find(|(p, _)| *p == pgno).unwrap().1;
                assert_eq!(hash, crc32c::crc32c(&image), "page {pgno}'s hash");
                assert!(pages.insert(pgno, image).is_none(), "page {pgno} twice");
            }
        }
        Ok(pages)
    }

    /// A connection to `path` holding a read snapshot.
    fn reader_in_a_snapshot(path: &std::path::Path) -> Connection {
        let reader = Connection::open(path).unwrap();
        reader
            .execute_batch("BEGIN; SELECT count(*) FROM sqlite_schema;")
            .unwrap();
        reader
    }

    #[test]
    fn the_image_is_the_snapshots_while_checkpoints_copy_its_wal_frames_and_writes_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let writer = database(&path, 300);
        // Pages changed in the WAL, not checkpointed: the snapshot's
        // versions are only there when the backup begins.
        writer
            .execute_batch("UPDATE t SET pad = randomblob(300) WHERE x % 3 = 0")
            .unwrap();
        let reader = reader_in_a_snapshot(&path);
        let expected = snapshot(&reader);
        assert!(expected.len() > 20, "{} pages", expected.len());
        let mut copied_during = 0;
        let mut k = 0;
        let pages = read_image(&reader, &path, || {
            // Between the backup's reads: a commit (pages past the
            // snapshot, a growing file) and a checkpoint, which copies into
            // the file what the snapshot allows: the frames before the
            // snapshot, the first time.
            k += 1;
            writer
                .execute_batch(&format!(
                    "UPDATE t SET pad = randomblob(300) WHERE x % 7 = {}; INSERT INTO t(pad) VALUES (randomblob(3000));",
                    k % 7
                ))
                .unwrap();
            let (_, copied): (i64, i64) = writer
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get(1)?, r.get(2)?))
                })
                .unwrap();
            copied_during = copied_during.max(copied);
        })
        .unwrap();
        assert!(
            copied_during > 0,
            "no checkpoint copied frames while the image was read"
        );
        assert_eq!(pages.len(), expected.len());
        for (pgno, image) in &expected {
            assert!(pages[pgno] == *image, "page {pgno} is not the snapshot's");
        }
        reader.execute_batch("COMMIT").unwrap();
    }

    #[test]
    fn a_page_changed_in_the_wal_and_not_yet_checkpointed_is_taken_from_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let writer = database(&path, 200);
        writer
            .execute_batch("UPDATE t SET pad = zeroblob(300) WHERE x = 150")
            .unwrap();
        let reader = reader_in_a_snapshot(&path);
        let in_wal = crate::engine::wal::pages_in(&crate::engine::wal_path(&path)).unwrap();
        assert!(!in_wal.is_empty(), "the update is in the WAL");
        let expected = snapshot(&reader);
        let pages = read_image(&reader, &path, || {}).unwrap();
        for pgno in in_wal {
            assert!(pages[&pgno] == expected[&pgno], "page {pgno} of the WAL");
        }
        assert_eq!(pages, expected);
    }

    #[test]
    fn a_page_damaged_in_the_file_fails_the_image_with_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let writer = database(&path, 200);
        drop(writer);
        {
            use std::os::unix::fs::FileExt;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .read(true)
                .open(&path)
                .unwrap();
            let mut byte = [0u8; 1];
            file.read_exact_at(&mut byte, 4096 * 5 + 2000).unwrap();
            byte[0] ^= 0x40;
            file.write_all_at(&byte, 4096 * 5 + 2000).unwrap();
        }
        let reader = reader_in_a_snapshot(&path);
        let outcome = read_image(&reader, &path, || {});
        assert_eq!(outcome.err().as_deref(), Some("Damaged(6)"));
    }
}
