//! A simulated database: its log (real [`Record`]s, so the real batch check
//! and start decision run on it), what is durable, what the file holds.
//!
//! The file is modelled by what it is a function of: the set of
//! transactions applied (a full image carries a copy of its source's set).
//! Two files are "page-identical" when their sets and applied LSNs are
//! equal.

use std::collections::BTreeSet;

use crate::log::{Lsn, Record};

/// Page size of simulated records.
const PAGE: u32 = 512;

/// What a simulated file holds: the transactions redone or committed
/// into it.
pub(crate) type FileState = BTreeSet<u64>;

/// What one record of the simulation carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Payload {
    /// Transaction `id` (one part of `parts`, counted from 1).
    Tx { id: u64, part: u32, parts: u32 },
    /// A full image: the file state numbered `image` in the world's table.
    Image(u64),
}

/// A record carrying `payload` in `epoch`.
pub(crate) fn record(epoch: u64, payload: Payload) -> Record {
    let mut page = vec![0u8; PAGE as usize];
    let (kind, a, b, c, flags) = match payload {
        Payload::Tx { id, part, parts } => (
            0u8,
            id,
            u64::from(part),
            u64::from(parts),
            if part < parts { Record::TX_MORE } else { 0 },
        ),
        Payload::Image(image) => (1, image, 0, 0, Record::IMAGE_START),
    };
    page[0] = kind;
    page[1..9].copy_from_slice(&a.to_le_bytes());
    page[9..17].copy_from_slice(&b.to_le_bytes());
    page[17..25].copy_from_slice(&c.to_le_bytes());
    Record {
        lsn: 0,
        epoch,
        commit_time_us: 1,
        db_size: 1,
        page_size: PAGE,
        pages: vec![(1, page)],
        // As capture and full images write them: the page's zeros left out.
        flags: flags | Record::HOLES,
    }
}

/// What a record carries.
pub(crate) fn payload(r: &Record) -> Payload {
    let page = &r.pages[0].1;
    let n = |range: std::ops::Range<usize>| {
        u64::from_le_bytes(page[range].try_into().expect("8 bytes"))
    };
    match page[0] {
        0 => Payload::Tx {
            id: n(1..9),
            part: n(9..17) as u32,
            parts: n(17..25) as u32,
        },
        _ => Payload::Image(n(1..9)),
    }
}

/// The stored checksum of a record (what the log keeps after it).
pub(crate) fn checksum(r: &Record) -> u32 {
    let mut bytes = Vec::with_capacity(r.encoded_len());
    r.encode_into(&mut bytes);
    u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().expect("4 bytes"))
}

/// A simulated database.
#[derive(Debug, Clone, Default)]
pub(crate) struct Db {
    /// The records held, in LSN order.
    pub log: Vec<Record>,
    /// First LSN held (the log restarts at a full image).
    pub first: Lsn,
    /// Everything before this LSN survives a crash.
    pub durable: Lsn,
    /// Everything before this LSN is in the file.
    pub applied: Lsn,
    /// The file.
    pub file: FileState,
    /// Epoch history, `(epoch, first LSN)`.
    pub history: Vec<(u64, Lsn)>,
    /// No fsync happens while true (the disk cache holds everything).
    pub no_sync: bool,
}

impl Db {
    /// End of the log.
    pub fn end(&self) -> Lsn {
        self.log.last().map_or(self.first, Record::end_lsn)
    }

    /// Appends a record at the end; returns its end.
    pub fn append(&mut self, mut r: Record) -> Lsn {
        r.lsn = self.end();
        if self.history.last().is_none_or(|(e, _)| *e < r.epoch) {
            self.history.push((r.epoch, r.lsn));
        }
        self.log.push(r);
        self.end()
    }

    /// Records that `epoch` starts at the log's end (a new primary).
    pub fn begin_epoch(&mut self, epoch: u64) {
        if self.history.last().is_none_or(|(e, _)| *e < epoch) {
            self.history.push((epoch, self.end()));
        }
    }

    /// Empties the log and restarts it at `lsn` (a full image follows).
    pub fn restart_at(&mut self, lsn: Lsn, epoch: u64) {
        self.log.clear();
        self.first = lsn;
        self.durable = lsn;
        self.applied = lsn;
        self.history = vec![(epoch, lsn)];
    }

    /// Cuts records at or after `lsn`.
    pub fn truncate_from(&mut self, lsn: Lsn) {
        self.log.retain(|r| r.lsn < lsn);
        self.durable = self.durable.min(self.end());
        self.applied = self.applied.min(self.end());
        let end = self.end();
        self.history.retain(|(_, at)| *at <= end);
    }

    /// The record starting at `lsn`.
    pub fn at(&self, lsn: Lsn) -> Option<&Record> {
        self.log
            .binary_search_by_key(&lsn, |r| r.lsn)
            .ok()
            .map(|i| &self.log[i])
    }

    /// The end and checksum of the record starting at `lsn`.
    pub fn checksum_at(&self, lsn: Lsn) -> Option<(Lsn, u32)> {
        self.at(lsn).map(|r| (r.end_lsn(), checksum(r)))
    }

    /// The last record's start and checksum.
    pub fn last_record(&self) -> Option<(Lsn, u32)> {
        self.log.last().map(|r| (r.lsn, checksum(r)))
    }

    /// The newest epoch of the log.
    pub fn newest_epoch(&self) -> u64 {
        self.history.last().map_or(0, |(e, _)| *e)
    }

    /// End of the last whole transaction at or before the end.
    pub fn whole_end(&self) -> Lsn {
        self.log
            .iter()
            .rev()
            .find(|r| !r.continues_transaction())
            .map_or(self.first, Record::end_lsn)
            .max(self.applied)
    }

    /// Applies the whole transactions after `applied` up to `limit`, at
    /// most `max` records; `images` resolves full images. Returns how many
    /// records it applied.
    pub fn redo(&mut self, limit: Lsn, max: usize, images: &[FileState]) -> usize {
        let mut done = 0;
        let start = self.log.partition_point(|r| r.lsn < self.applied);
        let mut pending: Vec<usize> = Vec::new();
        for i in start..self.log.len() {
            if done >= max {
                break;
            }
            let r = &self.log[i];
            if r.end_lsn() > limit {
                break;
            }
            pending.push(i);
            if r.continues_transaction() {
                continue;
            }
            for &j in &pending {
                match payload(&self.log[j]) {
                    Payload::Tx { id, .. } => {
                        self.file.insert(id);
                    }
                    Payload::Image(image) => self.file = images[image as usize].clone(),
                }
                done += 1;
            }
            self.applied = self.log[i].end_lsn();
            pending.clear();
        }
        done
    }

    /// Rebuilds the file from the log (recovery after a crash): a full image
    /// at the log's start replaces it, every whole transaction is redone.
    pub fn recover(&mut self, images: &[FileState], before: &FileState) {
        self.file = before.clone();
        self.applied = self.first;
        let end = self.end();
        self.redo(end, usize::MAX, images);
        let applied = self.applied;
        // A transaction whose last part never came is cut at open.
        self.truncate_from(applied);
    }
}
