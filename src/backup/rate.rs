//! A BACKUP's read rate (`--backup-kib-per-s`): a token bucket the
//! backup's reading loop charges with the bytes it has just read (the
//! database's pages, a block at a time, and the log records it copies),
//! and that says how long to wait before reading on.
//!
//! # The rule
//! The bucket holds up to `burst` bytes and fills at `rate` bytes a
//! second. Taking `n` bytes empties it by `n`, into debt if need be; the
//! reader then waits until the debt is paid ([`Bucket::take`]'s answer).
//! So at any moment, once the reader has waited what it was told, the
//! bytes taken since the bucket was made are at most `burst + rate ×
//! elapsed`, and the reader never waits longer than that bound needs. A
//! take larger than the burst (8 MiB of log records, or a block at a low rate) is
//! allowed: it just waits for the rest.
//!
//! [`Bucket`] is pure (the instant is the caller's, so tests inject time);
//! [`Limit`] is what `take.rs` uses: the bucket plus the clock, and a
//! rate of 0 for no limit at all. It also counts the bytes taken and tells
//! them to the backup's [`Limit::telling`] callback (`bytes_processed` of
//! `sys.dm_exec_requests`).
//!
//! # Saying so
//! A paced backup says so once ([`pacing_notice`]): a `STATS` notice, and
//! a line of `availdb backup`'s progress.
//!
//! # Defaults
//! A backup on the primary reads unlimited by default, as before: backing
//! up there is choosing speed over the commits' latency. A backup on a
//! secondary reads at most [`DEFAULT_SECONDARY_RATE_BYTES`] a second: its
//! disk and cores also harden the primary's synchronous commits, and
//! nice +10 with the idle I/O class alone left the primary's commits at
//! 0.26–0.70× TPS and 1.3–11× p99 under back-to-back backups on a shared
//! 2-core machine; at 64 MiB/s they were at 0.74–0.78× and 1.6–2.5×, at
//! 32 MiB/s 0.70–0.96× and 1.3–2.1×, at 16 MiB/s 0.91–1.13× and
//! 0.96–1.5× (8 MiB blocks), then, with a paced backup's smaller blocks
//! (`take.rs`), 0.94–1.04× and 0.84–1.13× on a quiet machine: within the
//! spread of the runs without a backup (`BENCHMARKS.md`, issue 12, *a read
//! rate for backups*). 16 MiB/s is about a minute per GiB. The node option
//! sets one rate for both roles.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// The read rate of a BACKUP on a secondary when the node has no
/// `--backup-kib-per-s`, bytes a second.
pub const DEFAULT_SECONDARY_RATE_BYTES: u64 = 16 << 20;

/// The read rate of a BACKUP on a replica of `primary`'s role when the
/// node sets none, bytes a second (0: unlimited).
pub fn default_rate(primary: bool) -> u64 {
    if primary {
        0
    } else {
        DEFAULT_SECONDARY_RATE_BYTES
    }
}

/// How `rate` bytes a second reads: in MiB/s or KiB/s when whole, else B/s.
pub fn human_rate(rate: u64) -> String {
    if rate >= 1 << 20 && rate.is_multiple_of(1 << 20) {
        format!("{} MiB/s", rate >> 20)
    } else if rate >= 1 << 10 && rate.is_multiple_of(1 << 10) {
        format!("{} KiB/s", rate >> 10)
    } else {
        format!("{rate} B/s")
    }
}

/// The line a backup paced at `rate` bytes a second says once (None for
/// an unlimited one): the rate, whose it is (the node's option, or else
/// the default of the replica's role, `primary` or not), and how to change
/// it.
pub fn pacing_notice(rate: u64, primary: bool, from_the_node_option: bool) -> Option<String> {
    if rate == 0 {
        return None;
    }
    let whose = match (from_the_node_option, primary) {
        (true, _) => "this node's backup read rate",
        (false, true) => "the primary's backup read rate",
        (false, false) => "the secondary's backup read rate",
    };
    Some(format!(
        "{PACING_PREFIX}{} ({whose}; set --backup-kib-per-s or backup_kib_per_s, 0 = unlimited)",
        human_rate(rate)
    ))
}

/// How [`pacing_notice`]'s line starts (so `availdb backup` knows it).
pub const PACING_PREFIX: &str = "reading at most ";

/// A token bucket of bytes: see the module's rule.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// Bytes a second (at least 1).
    rate: u64,
    /// Most bytes it holds.
    burst: u64,
    /// Bytes it holds now; negative: the debt of a take past what it held.
    tokens: i128,
    /// When `tokens` was last brought up to date.
    at: Instant,
}

const NANOS: i128 = 1_000_000_000;

impl Bucket {
    /// A full bucket of `burst` bytes filling at `rate` bytes a second,
    /// as of `now`.
    pub fn new(rate: u64, burst: u64, now: Instant) -> Bucket {
        Bucket {
            rate: rate.max(1),
            burst,
            tokens: i128::from(burst),
            at: now,
        }
    }

    /// Takes `n` bytes at `now`; returns how long to wait before reading
    /// on (zero when the bucket held them). An instant before the last
    /// one given counts as that one.
    pub fn take(&mut self, n: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.at);
        self.at = self.at.max(now);
        let rate = i128::from(self.rate);
        let filled = elapsed.as_nanos() as i128 * rate / NANOS;
        self.tokens = (self.tokens + filled).min(i128::from(self.burst));
        self.tokens -= i128::from(n);
        if self.tokens >= 0 {
            return Duration::ZERO;
        }
        // Rounded up: waiting this long always pays the whole debt.
        let debt = -self.tokens;
        let nanos = (debt * NANOS + rate - 1) / rate;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// Told the bytes a backup (or a restore) has read so far, each time it
/// reads more.
#[derive(Clone)]
pub struct BytesRead(pub Arc<dyn Fn(u64) + Send + Sync>);

impl std::fmt::Debug for BytesRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BytesRead")
    }
}

/// A backup's rate limit on the wall clock: a [`Bucket`] that holds one
/// second of reading (so a database smaller than that is read at once),
/// or nothing for a rate of 0; and the count of the bytes read.
#[derive(Debug)]
pub struct Limit {
    bucket: Option<Bucket>,
    read: u64,
    tell: Option<BytesRead>,
}

impl Limit {
    /// `rate` bytes a second, 0 for unlimited.
    pub fn new(rate: u64) -> Limit {
        Limit {
            bucket: (rate > 0).then(|| Bucket::new(rate, rate, Instant::now())),
            read: 0,
            tell: None,
        }
    }

    /// The same limit, telling `tell` the bytes read so far at each take.
    pub fn telling(self, tell: Option<BytesRead>) -> Limit {
        Limit { tell, ..self }
    }

    /// Counts `n` bytes just read; returns how long to wait before
    /// reading on.
    pub fn took(&mut self, n: u64) -> Duration {
        self.read = self.read.saturating_add(n);
        if let Some(tell) = &self.tell {
            (tell.0)(self.read);
        }
        match &mut self.bucket {
            Some(bucket) => bucket.take(n, Instant::now()),
            None => Duration::ZERO,
        }
    }

    /// The bytes read so far.
    pub fn read(&self) -> u64 {
        self.read
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_take_within_the_burst_waits_nothing_and_past_it_waits_for_the_debt_at_the_rate() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(MIB, MIB, t0);
        assert_eq!(bucket.take(MIB, t0), Duration::ZERO);
        assert_eq!(bucket.take(MIB / 2, t0), Duration::from_millis(500));
        // Having waited it, the bucket is empty: the next byte waits its share.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(bucket.take(MIB / 4, t1), Duration::from_millis(250));
    }

    #[test]
    fn an_idle_bucket_refills_at_the_rate_but_never_past_its_burst() {
        let t0 = Instant::now();
        let mut bucket = Bucket::new(MIB, MIB, t0);
        assert_eq!(bucket.take(MIB, t0), Duration::ZERO);
        // A quarter of a second refills a quarter of a MiB.
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!(bucket.take(MIB / 4, t1), Duration::ZERO);
        assert_eq!(bucket.take(1 << 10, t1), Duration::from_nanos(976_563));
        // Ten idle seconds still hold one burst: 8 MiB wait for 7.
        let mut bucket = Bucket::new(MIB, MIB, t0);
        let t2 = t0 + Duration::from_secs(10);
        assert_eq!(bucket.take(8 * MIB, t2), Duration::from_secs(7));
    }

    #[test]
    fn an_instant_before_the_last_one_refills_nothing() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let mut bucket = Bucket::new(MIB, 0, t0);
        assert_eq!(bucket.take(MIB, t1), Duration::from_secs(1));
        assert_eq!(bucket.take(MIB, t0), Duration::from_secs(2));
    }

    #[test]
    fn a_reader_that_waits_as_told_reads_at_most_burst_plus_rate_times_time_and_no_slower() {
        let (rate, burst) = (3 * MIB + 7, 8 * MIB);
        let t0 = Instant::now();
        let mut bucket = Bucket::new(rate, burst, t0);
        let mut now = t0;
        let mut total = 0u64;
        let mut waited_last = Duration::ZERO;
        // Blocks of uneven sizes, some larger than the burst.
        for i in 0..200u64 {
            let n = (i * 7_919_993) % (11 * MIB) + 1;
            let wait = bucket.take(n, now);
            now += wait;
            total += n;
            waited_last = wait;
            let elapsed = (now - t0).as_nanos();
            let allowed = u128::from(burst) + u128::from(rate) * elapsed / 1_000_000_000;
            assert!(total as u128 <= allowed, "block {i}: {total} > {allowed}");
        }
        // No slower: the last wait ended when the bound allowed the bytes
        // (to within the rounding of each wait up to the nanosecond).
        assert!(!waited_last.is_zero());
        let needed = Duration::from_secs_f64((total - burst) as f64 / rate as f64);
        let elapsed = now - t0;
        assert!(
            elapsed <= needed + Duration::from_micros(1),
            "{elapsed:?} for {needed:?}"
        );
    }

    #[test]
    fn a_rate_of_zero_is_no_limit() {
        let mut limit = Limit::new(0);
        assert_eq!(limit.took(u64::MAX / 2), Duration::ZERO);
        let mut limit = Limit::new(1);
        assert!(limit.took(MIB) > Duration::from_secs(1_000_000));
    }

    #[test]
    fn a_limit_counts_every_byte_taken_and_tells_the_total() {
        let told = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tell = {
            let told = told.clone();
            BytesRead(Arc::new(move |n| told.lock().unwrap().push(n)))
        };
        let mut limit = Limit::new(0).telling(Some(tell));
        limit.took(10);
        limit.took(0);
        limit.took(5);
        assert_eq!(limit.read(), 15);
        assert_eq!(*told.lock().unwrap(), [10, 10, 15]);
    }

    #[test]
    fn a_paced_backup_says_its_rate_whose_it_is_and_how_to_change_it() {
        assert_eq!(pacing_notice(0, false, true), None);
        assert_eq!(
            pacing_notice(DEFAULT_SECONDARY_RATE_BYTES, false, false).as_deref(),
            Some("reading at most 16 MiB/s (the secondary's backup read rate; set --backup-kib-per-s or backup_kib_per_s, 0 = unlimited)")
        );
        let node = pacing_notice(256 << 10, true, true).unwrap();
        assert!(node.starts_with(PACING_PREFIX), "{node}");
        assert!(node.contains("256 KiB/s (this node's"), "{node}");
    }

    #[test]
    fn a_rate_reads_in_the_largest_whole_unit() {
        assert_eq!(human_rate(16 << 20), "16 MiB/s");
        assert_eq!(human_rate(1536 << 10), "1536 KiB/s");
        assert_eq!(human_rate(1000), "1000 B/s");
    }
}
