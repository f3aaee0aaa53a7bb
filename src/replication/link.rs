//! The protocol cores of a replication link, without I/O: what the primary
//! decides when a secondary says where its log stands ([`plan_start`]), what
//! the secondary decides about every batch of records ([`check_batch`]), and
//! the session timeout both ends keep ([`Liveness`]). The connection tasks
//! (`primary.rs`, `secondary.rs`) feed them what they read from the socket
//! and the log; the deterministic simulation (`crate::sim`) feeds them its
//! own logs.
//!
//! # Where a secondary starts (primary side)
//! 1. **Fork by epochs**: the epoch histories attribute an LSN both logs
//!    hold to different epochs, or the secondary's log goes past ours
//!    ([`crate::log::divergence`]): rewind from the fork point.
//! 2. **Fork within one epoch**: the histories agree, but the record the
//!    secondary holds last is not ours (a primary that lost the unsynced
//!    tail of its log in a power loss restarted in the same epoch and wrote
//!    on): its stored checksum differs from ours at that LSN, or no record
//!    of ours starts there. Rewind from that record (the fork is there or
//!    earlier; everything from it on is replaced).
//! 3. Otherwise continue at its end when we still hold the records from
//!    there, else seed it from a full image.
//!
//! A geo-secondary database's log is a copy of its source region's log,
//! never written here. A local secondary whose copy merely goes past ours
//! ([`ahead_only`]: the former forwarder hardened records from the source
//! that we have not received yet) holds nothing we will not receive: the
//! primary waits, bounded, for its own copy to reach that end and plans
//! again rather than rewinding (a rewind restarts from a full image).
//!
//! # A batch of records (secondary side)
//! Checked whole before anything is appended: a full image first in a batch
//! restarts the log (seeding past our end, or the image a `Rewind`
//! announced); after a `Rewind`, nothing but that image is taken; epochs
//! never go down along the log; a record we already hold must be identical
//! to ours (else the logs forked and the primary must rewind us); every
//! other record must start exactly at our end.

use crate::log::{divergence, Lsn, Record};

use super::error::ReplicationError;
use super::wire::DatabasePosition;

/// What a primary knows of its own log of one database.
#[derive(Debug, Clone, Copy)]
pub struct OwnLog<'a> {
    /// First LSN held.
    pub first: Lsn,
    /// End of the log.
    pub end: Lsn,
    /// Epoch history, oldest first.
    pub history: &'a [(u64, Lsn)],
}

/// Where streaming one database to a secondary starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Its log agrees with ours to its end: send from there.
    Continue(Lsn),
    /// It needs a full image (an empty log, or one behind what we hold).
    Seed,
    /// Its log holds records we never had, from `diverged` to `their_end`:
    /// it restarts from a full image and discards that range.
    Rewind {
        /// First LSN of the discarded range.
        diverged: Lsn,
        /// End of the secondary's log.
        their_end: Lsn,
    },
}

/// Decides where a secondary starts (see the module page). `checksum_at`
/// gives the end and stored checksum of our record starting at an LSN.
pub fn plan_start(
    ours: OwnLog<'_>,
    checksum_at: impl Fn(Lsn) -> Option<(Lsn, u32)>,
    theirs: Option<&DatabasePosition>,
) -> Start {
    let (their_end, history, last) = theirs.map_or((0, &[][..], None), |p| {
        (p.end_lsn, &p.epoch_history[..], p.last_record)
    });
    if let Some(diverged) = divergence(ours.history, ours.end, history, their_end) {
        return Start::Rewind {
            diverged,
            their_end,
        };
    }
    if let Some((lsn, crc)) = last {
        // Below our first LSN nothing can be compared: both sides agreed on
        // it at a checkpoint.
        if lsn >= ours.first {
            match checksum_at(lsn) {
                Some((end, ours_crc)) if end == their_end && ours_crc == crc => {}
                _ => {
                    return Start::Rewind {
                        diverged: lsn,
                        their_end,
                    }
                }
            }
        }
    }
    if their_end >= ours.first && (their_end > 0 || ours.first == 0) {
        Start::Continue(their_end)
    } else {
        Start::Seed
    }
}

/// True when the secondary's log goes past ours and agrees with it, by
/// epochs, to our end: the only reason [`plan_start`] would rewind it is
/// that it is ahead. What lies past our end (its epochs, its last record's
/// checksum) can be checked only once ours gets there: plan again then.
pub fn ahead_only(ours: OwnLog<'_>, theirs: &DatabasePosition) -> bool {
    theirs.end_lsn > ours.end
        && divergence(ours.history, ours.end, &theirs.epoch_history, ours.end).is_none()
}

/// What a secondary's log of one database looks like to the batch check.
pub trait LocalLog {
    /// First LSN held.
    fn first(&self) -> Lsn;
    /// End of the log.
    fn end(&self) -> Lsn;
    /// The epoch of the record starting at `record.lsn` if it equals
    /// `record` (`Ok(None)`: it differs, or none starts there).
    fn same(&self, record: &Record) -> Result<Option<u64>, ReplicationError>;
}

/// A secondary's intake state for one database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Intake {
    /// Epoch of the newest record in the local log.
    pub epoch: u64,
    /// The primary announced a `Rewind`: the next record is a full image
    /// at this LSN, and the log restarts there.
    pub rewind_to: Option<Lsn>,
}

/// What to do with a checked batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Restart the log at this full image first: (LSN, epoch).
    pub restart: Option<(Lsn, u64)>,
    /// Records to append, in order.
    pub append: Vec<Record>,
    /// The intake state after the batch.
    pub intake: Intake,
}

/// Checks a batch whole (see the module page); nothing is appended when it
/// fails.
pub fn check_batch(
    intake: Intake,
    local: &impl LocalLog,
    database: &str,
    records: Vec<Record>,
) -> Result<Plan, ReplicationError> {
    let mut epoch = intake.epoch;
    let local_end = local.end();
    let mut restart = None;
    let mut append: Vec<Record> = Vec::with_capacity(records.len());
    for record in records {
        // Where this record must start: the end of the last record taken,
        // else the local log's. Worked out only when a record asks (a
        // record's length is found page by page; a batch's last record
        // needs none).
        let expected = append.last().map_or(local_end, Record::end_lsn);
        if let Err(cause) = record.check_contents() {
            return Err(ReplicationError::Corrupt {
                database: database.to_string(),
                cause: cause.to_string(),
            });
        }
        if append.is_empty() && crate::engine::is_base_image(&record) {
            // A full image restarts the log: to seed an empty or lagging
            // replica (past our end), or to rewind a diverged one (the
            // primary announced it, wherever it lands).
            if intake.rewind_to == Some(record.lsn) || record.lsn > expected {
                restart = Some((record.lsn, record.epoch));
                epoch = record.epoch;
                append.push(record);
                continue;
            }
        }
        if record.epoch < epoch {
            return Err(ReplicationError::EpochRegressed {
                database: database.to_string(),
                lsn: record.lsn,
                epoch: record.epoch,
                newest: epoch,
            });
        }
        if intake.rewind_to.is_some() && restart.is_none() {
            return Err(ReplicationError::AwaitingImage {
                database: database.to_string(),
                lsn: record.lsn,
            });
        }
        if record.lsn < expected && record.end_lsn() <= expected && restart.is_none() {
            // Already here, if the local record at that LSN is this one
            // (below the log's start it cannot be compared: both sides
            // agreed on it at a checkpoint).
            if record.lsn >= local.first() && local.same(&record)?.is_none() {
                return Err(ReplicationError::Forked {
                    database: database.to_string(),
                    lsn: record.lsn,
                    ours: None,
                    theirs: record.epoch,
                });
            }
            continue;
        }
        if record.lsn != expected {
            return Err(ReplicationError::NotContiguous {
                database: database.to_string(),
                lsn: record.lsn,
                end: expected,
            });
        }
        epoch = record.epoch;
        append.push(record);
    }
    Ok(Plan {
        restart,
        append,
        intake: Intake {
            epoch,
            rewind_to: if restart.is_some() {
                None
            } else {
                intake.rewind_to
            },
        },
    })
}

/// The session timeout of one end of a link: silent longer than the
/// timeout means DISCONNECTED. Time is passed in (µs, monotonic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    heard_us: u64,
    timeout_us: u64,
}

impl Liveness {
    /// A link that was heard from at `now_us`.
    pub fn new(now_us: u64, timeout: std::time::Duration) -> Liveness {
        Liveness {
            heard_us: now_us,
            timeout_us: timeout.as_micros() as u64,
        }
    }

    /// A message arrived at `now_us`.
    pub fn heard(&mut self, now_us: u64) {
        self.heard_us = self.heard_us.max(now_us);
    }

    /// A new session timeout (a definition taken in place).
    pub fn set_timeout(&mut self, timeout: std::time::Duration) {
        self.timeout_us = timeout.as_micros() as u64;
    }

    /// True when the partner has been silent past the timeout at `now_us`.
    pub fn timed_out(&self, now_us: u64) -> bool {
        now_us.saturating_sub(self.heard_us) > self.timeout_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(end: Lsn, history: Vec<(u64, Lsn)>, last: Option<(Lsn, u32)>) -> DatabasePosition {
        DatabasePosition {
            database: "app".into(),
            epoch: history.last().map_or(0, |h| h.0),
            end_lsn: end,
            redone_lsn: end,
            epoch_history: history,
            last_record: last,
        }
    }

    /// Our log: records at 0..100 (crc 1) and 100..200 (crc 2), epoch 1.
    fn ours() -> (OwnLog<'static>, impl Fn(Lsn) -> Option<(Lsn, u32)>) {
        static HISTORY: [(u64, Lsn); 1] = [(1, 0)];
        let log = OwnLog {
            first: 0,
            end: 200,
            history: &HISTORY,
        };
        (log, |lsn| match lsn {
            0 => Some((100, 1)),
            100 => Some((200, 2)),
            _ => None,
        })
    }

    #[test]
    fn a_secondary_whose_last_record_matches_ours_continues_at_its_end() {
        let (log, sums) = ours();
        let p = position(200, vec![(1, 0)], Some((100, 2)));
        assert_eq!(plan_start(log, &sums, Some(&p)), Start::Continue(200));
        let p = position(100, vec![(1, 0)], Some((0, 1)));
        assert_eq!(plan_start(log, &sums, Some(&p)), Start::Continue(100));
    }

    #[test]
    fn a_fork_within_one_epoch_is_found_by_the_last_records_checksum() {
        // Issue 9 cause 7: same epoch, same end, different content.
        let (log, sums) = ours();
        let p = position(200, vec![(1, 0)], Some((100, 99)));
        assert_eq!(
            plan_start(log, &sums, Some(&p)),
            Start::Rewind {
                diverged: 100,
                their_end: 200
            }
        );
        // Their last record ends elsewhere than ours.
        let p = position(150, vec![(1, 0)], Some((100, 2)));
        assert!(matches!(
            plan_start(log, &sums, Some(&p)),
            Start::Rewind { diverged: 100, .. }
        ));
    }

    #[test]
    fn a_secondary_ahead_or_in_another_epoch_is_rewound_and_an_empty_one_seeded() {
        let (log, sums) = ours();
        let p = position(300, vec![(1, 0)], Some((200, 5)));
        assert!(matches!(
            plan_start(log, &sums, Some(&p)),
            Start::Rewind { diverged: 200, .. }
        ));
        let p = position(150, vec![(1, 0), (2, 100)], Some((100, 7)));
        assert!(matches!(
            plan_start(log, &sums, Some(&p)),
            Start::Rewind { diverged: 100, .. }
        ));
        let truncated = OwnLog { first: 100, ..log };
        assert_eq!(plan_start(truncated, &sums, None), Start::Seed);
        assert_eq!(
            plan_start(truncated, &sums, Some(&position(0, vec![], None))),
            Start::Seed
        );
        assert_eq!(plan_start(log, &sums, None), Start::Continue(0));
    }

    #[test]
    fn a_copy_only_ahead_of_ours_is_told_apart_from_one_in_another_epoch() {
        let (log, _) = ours();
        assert!(ahead_only(
            log,
            &position(300, vec![(1, 0)], Some((200, 5)))
        ));
        // Not ahead.
        assert!(!ahead_only(
            log,
            &position(200, vec![(1, 0)], Some((100, 2)))
        ));
        // Another epoch below our end.
        assert!(!ahead_only(
            log,
            &position(300, vec![(1, 0), (2, 100)], Some((200, 5)))
        ));
        // A newer epoch past our end is checked once we get there.
        assert!(ahead_only(
            log,
            &position(300, vec![(1, 0), (2, 250)], Some((250, 5)))
        ));
    }

    struct Mem(Vec<Record>, Lsn);

    impl LocalLog for Mem {
        fn first(&self) -> Lsn {
            self.1
        }
        fn end(&self) -> Lsn {
            self.0.last().map_or(self.1, Record::end_lsn)
        }
        fn same(&self, record: &Record) -> Result<Option<u64>, ReplicationError> {
            Ok(self.0.iter().find(|r| *r == record).map(|r| r.epoch))
        }
    }

    fn rec(lsn: Lsn, epoch: u64, byte: u8) -> Record {
        Record {
            lsn,
            epoch,
            commit_time_us: 1,
            db_size: 1,
            page_size: 512,
            pages: vec![(1, vec![byte; 512])],
            flags: 0,
        }
    }

    #[test]
    fn a_batch_continues_the_log_exactly_and_refuses_gaps_regressions_and_forks() {
        let a = rec(0, 1, 1);
        let b = rec(a.end_lsn(), 1, 2);
        let c = rec(b.end_lsn(), 2, 3);
        let local = Mem(vec![a.clone()], 0);
        let intake = Intake {
            epoch: 1,
            rewind_to: None,
        };
        let plan =
            check_batch(intake, &local, "app", vec![a.clone(), b.clone(), c.clone()]).unwrap();
        assert_eq!(
            plan.append,
            [b.clone(), c.clone()],
            "a re-sent record we hold is skipped"
        );
        assert_eq!(plan.intake.epoch, 2);
        assert!(matches!(
            check_batch(intake, &local, "app", vec![c.clone()]),
            Err(ReplicationError::NotContiguous { .. })
        ));
        assert!(matches!(
            check_batch(
                Intake { epoch: 2, ..intake },
                &local,
                "app",
                vec![b.clone()]
            ),
            Err(ReplicationError::EpochRegressed { .. })
        ));
        let other = rec(0, 1, 9);
        assert!(check_batch(intake, &local, "app", vec![other])
            .unwrap_err()
            .is_fork());
    }

    #[test]
    fn a_record_with_a_valid_checksum_but_impossible_contents_refuses_the_whole_batch() {
        // The checksum only says the bytes arrived as sent: a record whose
        // contents cannot be (page 0, pages out of order, a 0-page
        // database) is refused before anything of its batch is hardened,
        // even the valid records before it.
        let a = rec(0, 1, 1);
        let local = Mem(vec![a.clone()], 0);
        let intake = Intake {
            epoch: 1,
            rewind_to: None,
        };
        let good = rec(a.end_lsn(), 1, 2);
        type Breaks = fn(&mut Record);
        let cases: [(&str, Breaks); 3] = [
            ("page 0", |r| r.pages[0].0 = 0),
            ("0 pages", |r| r.db_size = 0),
            ("page size 1000", |r| {
                r.page_size = 1000;
                r.pages[0].1 = vec![3; 1000];
            }),
        ];
        for (what, break_it) in cases {
            let mut bad = rec(good.end_lsn(), 1, 3);
            break_it(&mut bad);
            let outcome = check_batch(intake, &local, "app", vec![good.clone(), bad]);
            assert!(
                matches!(outcome, Err(ReplicationError::Corrupt { .. })),
                "{what}: {outcome:?}"
            );
        }
    }

    #[test]
    fn after_a_rewind_only_the_announced_image_restarts_the_log() {
        let local = Mem(vec![rec(0, 1, 1)], 0);
        let mut image = rec(5000, 2, 4);
        image.flags = Record::IMAGE_START;
        let intake = Intake {
            epoch: 1,
            rewind_to: Some(5000),
        };
        assert!(matches!(
            check_batch(intake, &local, "app", vec![rec(local.end(), 1, 2)]),
            Err(ReplicationError::AwaitingImage { .. })
        ));
        let plan = check_batch(intake, &local, "app", vec![image.clone()]).unwrap();
        assert_eq!(plan.restart, Some((5000, 2)));
        assert_eq!(
            plan.intake,
            Intake {
                epoch: 2,
                rewind_to: None
            }
        );
    }

    #[test]
    fn liveness_times_out_only_after_the_session_timeout() {
        let mut l = Liveness::new(1_000, std::time::Duration::from_millis(5));
        assert!(!l.timed_out(6_000));
        assert!(l.timed_out(6_001));
        l.heard(6_000);
        assert!(!l.timed_out(11_000));
    }
}
