//! Full images of a database: every page, as a run of log records.
//!
//! A full image seeds a new replica, rewinds a diverged one, and starts the
//! log of a database file that had none. It is read under the writer lock
//! (the database does not change meanwhile) and cut into parts of at most
//! [`IMAGE_PART_BYTES`] of page images, so an image of any size ships in
//! frames far below the wire limit and only one part is in memory at a
//! time (`log::record` describes the flags that chain the parts).
//!
//! # Invariant: the schema is whole after the first part
//! A replica redoes an image part by part, in separate SQLite
//! transactions, and every transaction loads the schema (SQLite does before
//! it writes through `sqlite_dbpage`). While the file is part new, part old,
//! that load must only read new pages: so the first part holds page 1 and
//! every page of the `sqlite_schema` b-tree, its overflow chains included,
//! wherever they are in the file — and the last page, so the file has its
//! full size from the first part on (SQLite refuses a database shorter than
//! its header says). The other pages follow in order. Table
//! and index pages are never read while redoing, so their order does not
//! matter. Readers on the replica may see a mixed file until the last part
//! is redone.

use std::collections::BTreeSet;

use rusqlite::{Connection, OptionalExtension};

use super::error::{Error, Result};
use crate::log::Record;

/// Bytes of page images in one part of a full image.
pub const IMAGE_PART_BYTES: usize = 8 << 20;

/// Reads every page of the database as `conn` sees it and hands it to
/// `part` as the records of one full image (schema first, see the module
/// doc). The caller keeps the database from changing meanwhile.
pub fn for_each_image_part(
    conn: &Connection,
    epoch: u64,
    part: impl FnMut(Record) -> Result<()>,
) -> Result<()> {
    for_each_image_part_sized(conn, epoch, IMAGE_PART_BYTES, part)
}

/// [`for_each_image_part`] with parts of at most `part_bytes` (at least one
/// page each).
pub fn for_each_image_part_sized(
    conn: &Connection,
    epoch: u64,
    part_bytes: usize,
    mut part: impl FnMut(Record) -> Result<()>,
) -> Result<()> {
    let page_size: u32 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let db_size: u32 = conn.query_row("SELECT count(*) FROM sqlite_dbpage", [], |r| r.get(0))?;
    if db_size == 0 {
        return Ok(());
    }
    let per_part = (part_bytes / page_size as usize).max(1);
    let mut schema = schema_pages(conn, page_size as usize)?;
    schema.insert(db_size);
    let mut one = conn.prepare("SELECT data FROM sqlite_dbpage WHERE pgno = ?1")?;
    let mut pages: Vec<(u32, Vec<u8>)> = Vec::with_capacity(per_part.max(schema.len()));
    for pgno in &schema {
        pages.push((*pgno, one.query_row([pgno], |r| r.get(0))?));
    }
    let commit_time_us = super::capture::now_us();
    let mut flags = Record::IMAGE_START;
    let mut emitted = 0usize;
    let mut emit = |pages: &mut Vec<(u32, Vec<u8>)>, flags: &mut u32, last: bool| {
        pages.sort_unstable_by_key(|(pgno, _)| *pgno);
        emitted += pages.len();
        let record = Record {
            lsn: 0,
            epoch,
            commit_time_us,
            db_size,
            page_size,
            pages: std::mem::take(pages),
            // Free space is left out of each page (`Record::HOLES`).
            flags: Record::HOLES | *flags | if last { 0 } else { Record::IMAGE_MORE },
        };
        *flags = 0;
        part(record)
    };
    let mut all = conn.prepare("SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno")?;
    let mut rows = all.query([])?;
    let mut left = db_size as usize - schema.len();
    while let Some(row) = rows.next()? {
        let pgno: u32 = row.get(0)?;
        if schema.contains(&pgno) {
            continue;
        }
        pages.push((pgno, row.get(1)?));
        left -= 1;
        if pages.len() >= per_part && left > 0 {
            emit(&mut pages, &mut flags, false)?;
        }
    }
    emit(&mut pages, &mut flags, true)?;
    if emitted != db_size as usize {
        return Err(Error::sql(
            "XX001",
            format!("a full image read {emitted} pages of a database of {db_size}"),
        ));
    }
    Ok(())
}

/// Page 1 and every page of the `sqlite_schema` b-tree, overflow pages
/// included: what SQLite reads to load the schema.
pub fn schema_pages(conn: &Connection, page_size: usize) -> Result<BTreeSet<u32>> {
    let mut stmt = conn.prepare("SELECT data FROM sqlite_dbpage WHERE pgno = ?1")?;
    let mut read = |pgno: u32| -> Result<Vec<u8>> {
        stmt.query_row([pgno], |r| r.get::<_, Vec<u8>>(0))
            .optional()?
            .filter(|d| d.len() == page_size)
            .ok_or_else(|| corrupt(format!("schema page {pgno} is missing")))
    };
    let page_one = read(1)?;
    let usable = page_size - usize::from(page_one[20]);
    let mut seen = BTreeSet::new();
    let mut todo = vec![1u32];
    while let Some(pgno) = todo.pop() {
        if !seen.insert(pgno) {
            continue;
        }
        let data = if pgno == 1 {
            page_one.clone()
        } else {
            read(pgno)?
        };
        let header = if pgno == 1 { 100 } else { 0 };
        let kind = data[header];
        let cells = usize::from(be16(&data, header + 3));
        match kind {
            0x05 => {
                todo.push(be32(&data, header + 8));
                for i in 0..cells {
                    let cell = usize::from(be16(&data, header + 12 + 2 * i));
                    todo.push(be32(&data, cell));
                }
            }
            0x0D => {
                for i in 0..cells {
                    let cell = usize::from(be16(&data, header + 8 + 2 * i));
                    let (payload, n) = varint(&data, cell);
                    let (_, m) = varint(&data, cell + n);
                    let local = local_payload(payload as usize, usable);
                    if local < payload as usize {
                        let mut next = be32(&data, cell + n + m + local);
                        while next != 0 && seen.insert(next) {
                            next = be32(&read(next)?, 0);
                        }
                    }
                }
            }
            other => {
                return Err(corrupt(format!(
                    "page {pgno} of sqlite_schema has b-tree page type {other:#04x}"
                )))
            }
        }
    }
    Ok(seen)
}

/// Bytes of a table-leaf cell's payload stored on the page itself (the
/// rest goes to overflow pages), per the SQLite file format.
fn local_payload(payload: usize, usable: usize) -> usize {
    let max_local = usable - 35;
    if payload <= max_local {
        return payload;
    }
    let min_local = (usable - 12) * 32 / 255 - 23;
    let k = min_local + (payload - min_local) % (usable - 4);
    if k <= max_local {
        k
    } else {
        min_local
    }
}

/// SQLite's big-endian varint at `at`: value and length.
fn varint(data: &[u8], at: usize) -> (u64, usize) {
    let mut value = 0u64;
    for i in 0..8 {
        let byte = data[at + i];
        value = (value << 7) | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            return (value, i + 1);
        }
    }
    ((value << 8) | u64::from(data[at + 8]), 9)
}

fn be16(data: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([data[at], data[at + 1]])
}

fn be32(data: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

fn corrupt(message: String) -> Error {
    Error::sql("XX001", message)
}

/// True when `record` starts a full image of the database.
pub fn is_base_image(record: &Record) -> bool {
    record.starts_image()
}

#[cfg(test)]
mod tests {
    use super::super::redo::{Applier, PageSet};
    use super::*;

    /// A database whose schema spills over several pages, some created
    /// after the data (so far from page 1), with CREATE statements longer
    /// than a page (overflow chains).
    fn spread_schema(path: &std::path::Path) -> Connection {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(
            "PRAGMA page_size = 1024; PRAGMA journal_mode = WAL;
             CREATE TABLE data(id INTEGER PRIMARY KEY, b BLOB);",
        )
        .unwrap();
        for i in 0..300 {
            conn.execute("INSERT INTO data VALUES (?1, randomblob(700))", [i])
                .unwrap();
        }
        let long: Vec<String> = (0..60)
            .map(|c| format!("column_with_a_long_name_{c} TEXT"))
            .collect();
        for t in 0..40 {
            conn.execute_batch(&format!(
                "CREATE TABLE late{t}(id INTEGER PRIMARY KEY, {}); CREATE INDEX late{t}_i ON late{t}(column_with_a_long_name_0);",
                long.join(", ")
            ))
            .unwrap();
            conn.execute(&format!("INSERT INTO late{t}(id) VALUES (1)"), [])
                .unwrap();
        }
        conn
    }

    /// A WAL-mode database at `path` holding `mib` rows of 1 MiB blobs.
    fn blob_primary(path: &std::path::Path, mib: i64) -> Connection {
        let primary = Connection::open(path).unwrap();
        primary
            .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE big(id INTEGER PRIMARY KEY, b BLOB NOT NULL);")
            .unwrap();
        for id in 1..=mib {
            primary
                .execute("INSERT INTO big VALUES (?1, randomblob(1048576))", [id])
                .unwrap();
        }
        primary
    }

    /// A full image of `conn` in parts of at most `part_bytes`.
    fn image_parts(conn: &Connection, part_bytes: usize) -> Vec<Record> {
        let mut parts = Vec::new();
        for_each_image_part_sized(conn, 1, part_bytes, |r| {
            parts.push(r);
            Ok(())
        })
        .unwrap();
        parts
    }

    #[test]
    fn large_blobs_and_a_late_schema_with_default_pages_redo_part_by_part() {
        let dir = tempfile::tempdir().unwrap();
        let primary = blob_primary(&dir.path().join("p.db"), 12);
        let long: Vec<String> = (0..12)
            .map(|c| format!("a_long_column_name_to_grow_the_schema_{c} TEXT"))
            .collect();
        for t in 0..60 {
            primary
                .execute_batch(&format!(
                    "CREATE TABLE late{t}(id INTEGER PRIMARY KEY, {})",
                    long.join(", ")
                ))
                .unwrap();
        }
        let parts = image_parts(&primary, 1 << 20);
        let path = dir.path().join("r.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "PRAGMA journal_mode = WAL; CREATE TABLE IF NOT EXISTS x(y); DROP TABLE x;",
            )
            .unwrap();
        let mut applier = Applier::open(&path).unwrap();
        for (i, part) in parts.iter().enumerate() {
            redo_part(&mut applier, part)
                .unwrap_or_else(|e| panic!("part {i} of {}: {e}", parts.len()));
        }
    }

    /// A replica checkpoints between the parts of an image it redoes, so its
    /// WAL stays near one part's size instead of growing to the whole
    /// database. SQLite refuses (SQLITE_CORRUPT) a checkpoint whose WAL
    /// declares a database larger than the file plus the WAL can fill.
    #[test]
    fn a_replica_checkpoints_between_the_parts_of_an_image() {
        let dir = tempfile::tempdir().unwrap();
        let primary = blob_primary(&dir.path().join("p.db"), 8);
        let parts = image_parts(&primary, 1 << 20);
        assert!(parts.len() > 4, "{} parts", parts.len());
        let path = dir.path().join("r.db");
        let mut applier = Applier::open(&path).unwrap();
        let wal = super::super::capture::wal_path(&path);
        for (i, part) in parts.iter().enumerate() {
            redo_part(&mut applier, part).unwrap();
            let complete = super::super::capture::checkpoint_passive(applier.connection())
                .unwrap_or_else(|e| panic!("checkpoint after part {i} of {}: {e}", parts.len()));
            assert!(complete, "checkpoint after part {i} copied every frame");
            applier
                .connection()
                .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
                .unwrap();
            let wal_bytes = std::fs::metadata(&wal).map_or(0, |m| m.len());
            assert!(
                wal_bytes < 2 << 20,
                "the WAL holds {wal_bytes} bytes after part {i}: more than one part"
            );
        }
        let rows: i64 = applier
            .connection()
            .query_row("SELECT count(*) FROM big", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 8);
    }

    /// Redoes one image part as a replica does: in its own transaction,
    /// loading the schema only after the last part.
    fn redo_part(
        applier: &mut Applier,
        part: &Record,
    ) -> std::result::Result<(), super::super::redo::RedoError> {
        let set = [PageSet {
            pages: &part.pages,
            db_size: part.db_size,
        }];
        if part.image_continues() {
            applier.apply_partial(&set)
        } else {
            applier.apply(&set)
        }
    }

    #[test]
    fn schema_pages_include_the_spilled_schema_and_its_overflow_chains() {
        let dir = tempfile::tempdir().unwrap();
        let conn = spread_schema(&dir.path().join("p.db"));
        let pages = schema_pages(&conn, 1024).unwrap();
        assert!(pages.contains(&1));
        let db_size: u32 = conn
            .query_row("SELECT count(*) FROM sqlite_dbpage", [], |r| r.get(0))
            .unwrap();
        assert!(
            pages.len() > 40 && pages.iter().any(|p| *p > db_size / 2),
            "a schema of 80 long statements spans many pages, some late: {pages:?} of {db_size}"
        );
    }

    /// The invariant: redoing the parts one SQLite transaction each, every
    /// part leaves a schema that loads, and the last leaves the same pages.
    #[test]
    fn an_image_redone_part_by_part_loads_its_schema_at_every_step() {
        let dir = tempfile::tempdir().unwrap();
        let primary = spread_schema(&dir.path().join("p.db"));
        let parts = image_parts(&primary, 8 * 1024);
        assert!(parts.len() > 10, "{} parts", parts.len());
        assert!(parts[0].starts_image() && !parts[1].starts_image());
        assert!(parts[..parts.len() - 1].iter().all(Record::image_continues));
        assert!(!parts.last().unwrap().image_continues());

        // Over an empty file and over a different database alike.
        for seeded_before in [false, true] {
            let path = dir.path().join(format!("r{seeded_before}.db"));
            if seeded_before {
                let old = Connection::open(&path).unwrap();
                old.execute_batch(
                    "PRAGMA page_size = 1024; PRAGMA journal_mode = WAL;
                     CREATE TABLE other(x); INSERT INTO other VALUES (randomblob(50000));",
                )
                .unwrap();
            }
            let mut applier = Applier::open(&path).unwrap();
            for (i, part) in parts.iter().enumerate() {
                redo_part(&mut applier, part).unwrap_or_else(|e| {
                    panic!("part {i} (over an old file: {seeded_before}): {e}")
                });
                let tables: i64 = applier
                    .connection()
                    .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
                    .unwrap_or_else(|e| panic!("schema after part {i}: {e}"));
                assert_eq!(tables, 81, "after part {i}");
            }
            // Page 1's change counter, version-valid-for and SQLite version
            // are the replica's own.
            let read = |c: &Connection| -> Vec<(u32, Vec<u8>)> {
                let mut s = c
                    .prepare("SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno")
                    .unwrap();
                s.query_map([], |r| {
                    let (pgno, mut data): (u32, Vec<u8>) = (r.get(0)?, r.get(1)?);
                    if pgno == 1 {
                        data[24..28].fill(0);
                        data[92..100].fill(0);
                    }
                    Ok((pgno, data))
                })
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
            };
            let (ours, theirs) = (read(applier.connection()), read(&primary));
            assert_eq!(
                ours.len(),
                theirs.len(),
                "page counts (over an old file: {seeded_before})"
            );
            let differ: Vec<u32> = ours
                .iter()
                .zip(&theirs)
                .filter(|(a, b)| a != b)
                .map(|(a, _)| a.0)
                .collect();
            assert!(
                differ.is_empty(),
                "pages {differ:?} differ (over an old file: {seeded_before})"
            );
        }
    }
}
