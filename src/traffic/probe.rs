//! An endpoint's health, as a state machine over probe results, with time
//! passed in (the I/O of a probe is [`super::check`]).
//!
//! # The rule (Azure Traffic Manager's knobs)
//! * A probe runs every `interval`, on a fixed schedule (one that starts
//!   late does not push the next one back); one that takes longer than
//!   `timeout` is a failure. At most one scheduled probe of an endpoint is
//!   in flight.
//! * One success makes the endpoint **healthy** and resets the count of
//!   consecutive failures.
//! * An endpoint turns **unhealthy** at the first failure past the
//!   `tolerated_failures` in a row (0 tolerated: the first failure).
//!   Before it has ever succeeded, failures up to that bound leave it
//!   *unknown*.
//! * So an endpoint that dies right after a successful probe is out within
//!   `interval × (tolerated_failures + 1) + timeout`
//!   ([`ProbeSettings::detection_bound`]); Azure's defaults (30 s, 3
//!   tolerated, 10 s) give 130 s, availdb's (10 s, 2, 2 s) 32 s, and its
//!   fastest (1 s, 0, a short timeout) about a second.
//! * An on-demand probe (the admin's, or the proxy's after a failed
//!   connect) is recorded like a scheduled one but does not move the
//!   schedule.

use std::time::{Duration, Instant};

use super::routing::Health;

/// The knobs of one endpoint's probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSettings {
    /// Time between the starts of two scheduled probes.
    pub interval: Duration,
    /// A probe that has not succeeded by then has failed.
    pub timeout: Duration,
    /// Consecutive failures that still leave the endpoint healthy.
    pub tolerated_failures: u32,
}

impl ProbeSettings {
    /// The longest an endpoint that died right after a successful probe
    /// is still taken for healthy.
    pub fn detection_bound(&self) -> Duration {
        self.interval * (self.tolerated_failures + 1) + self.timeout
    }
}

/// A change of health that a probe result caused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// What it was.
    pub from: Health,
    /// What it is now.
    pub to: Health,
}

/// One endpoint's probe state.
#[derive(Debug, Clone)]
pub struct Probe {
    settings: ProbeSettings,
    health: Health,
    consecutive_failures: u32,
    /// When the next scheduled probe may start.
    next_due: Instant,
    /// A scheduled probe is running (started at this time).
    in_flight: Option<Instant>,
    last_error: Option<String>,
    /// When the health last changed.
    changed_at: Instant,
    /// When a probe last succeeded.
    last_success: Option<Instant>,
}

impl Probe {
    /// A new endpoint: unknown, its first probe due at once.
    pub fn new(settings: ProbeSettings, now: Instant) -> Probe {
        Probe {
            settings,
            health: Health::Unknown,
            consecutive_failures: 0,
            next_due: now,
            in_flight: None,
            last_error: None,
            changed_at: now,
            last_success: None,
        }
    }

    /// The probe's knobs.
    pub fn settings(&self) -> ProbeSettings {
        self.settings
    }

    /// Changes the knobs; the next probe is due at once.
    pub fn reconfigure(&mut self, settings: ProbeSettings, now: Instant) {
        self.settings = settings;
        self.next_due = now;
    }

    /// The verdict.
    pub fn health(&self) -> Health {
        self.health
    }

    /// Failures in a row since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// The last failure's reason, until a success clears it.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// When the health last changed.
    pub fn changed_at(&self) -> Instant {
        self.changed_at
    }

    /// When a probe last succeeded.
    pub fn last_success(&self) -> Option<Instant> {
        self.last_success
    }

    /// When the next scheduled probe should start (None while one runs).
    pub fn next_due(&self) -> Option<Instant> {
        self.in_flight.is_none().then_some(self.next_due)
    }

    /// Starts the scheduled probe if it is due: returns its deadline.
    pub fn begin(&mut self, now: Instant) -> Option<Instant> {
        if self.in_flight.is_some() || now < self.next_due {
            return None;
        }
        self.in_flight = Some(now);
        // A fixed schedule: a probe that starts a little late does not
        // push the next one back (the delays would add up).
        let next = self.next_due + self.settings.interval;
        self.next_due = if next > now {
            next
        } else {
            now + self.settings.interval
        };
        Some(now + self.settings.timeout)
    }

    /// Makes the next scheduled probe due now (after a failed connect).
    pub fn hurry(&mut self, now: Instant) {
        self.next_due = self.next_due.min(now);
    }

    /// Records a probe's result (`scheduled`: the one [`Probe::begin`]
    /// started); returns the change of health it caused.
    pub fn record(
        &mut self,
        result: Result<(), String>,
        scheduled: bool,
        now: Instant,
    ) -> Option<Transition> {
        if scheduled {
            self.in_flight = None;
        }
        let from = self.health;
        match result {
            Ok(()) => {
                self.consecutive_failures = 0;
                self.last_error = None;
                self.last_success = Some(now);
                self.health = Health::Healthy;
            }
            Err(why) => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.last_error = Some(why);
                if self.consecutive_failures > self.settings.tolerated_failures {
                    self.health = Health::Unhealthy;
                }
            }
        }
        (from != self.health).then(|| {
            self.changed_at = now;
            Transition {
                from,
                to: self.health,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(interval_ms: u64, timeout_ms: u64, tolerated: u32) -> ProbeSettings {
        ProbeSettings {
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(timeout_ms),
            tolerated_failures: tolerated,
        }
    }

    /// Drives scheduled probes from `start` until `until`, each taking
    /// `takes` and answering `alive(start_of_probe)`; returns when the
    /// endpoint turned unhealthy, if it did.
    fn run(
        probe: &mut Probe,
        start: Instant,
        until: Instant,
        takes: Duration,
        alive: impl Fn(Instant) -> bool,
    ) -> Option<Instant> {
        let mut now = start;
        while now <= until {
            if let Some(deadline) = probe.begin(now) {
                let ok = alive(now);
                // A dead endpoint does not answer: the probe times out.
                let done = if ok { now + takes } else { deadline };
                let t = probe.record(
                    if ok { Ok(()) } else { Err("timed out".into()) },
                    true,
                    done,
                );
                if let Some(Transition {
                    to: Health::Unhealthy,
                    ..
                }) = t
                {
                    return Some(done);
                }
                now = done.max(now);
            }
            now = probe.next_due().unwrap().max(now);
        }
        None
    }

    #[test]
    fn a_dead_endpoint_is_out_within_interval_times_tolerated_failures_plus_one_plus_timeout() {
        for (interval, timeout, tolerated) in [(1000, 200, 0), (1000, 500, 2), (10_000, 2000, 2)] {
            let s = settings(interval, timeout, tolerated);
            let t0 = Instant::now();
            let mut probe = Probe::new(s, t0);
            // Alive for the first probe, dead from just after it.
            let death = t0 + Duration::from_millis(1);
            let out = run(
                &mut probe,
                t0,
                t0 + s.detection_bound() * 3,
                Duration::from_millis(5),
                |at| at < death,
            )
            .expect("the endpoint is taken out");
            assert!(
                out - death <= s.detection_bound(),
                "{s:?}: out after {:?}, bound {:?}",
                out - death,
                s.detection_bound()
            );
            // And not earlier than the tolerated failures allow.
            assert_eq!(probe.consecutive_failures(), tolerated + 1);
            assert!(out - t0 >= s.interval * tolerated + s.timeout);
        }
    }

    #[test]
    fn tolerated_failures_keep_a_flaky_endpoint_healthy_and_one_success_resets_the_count() {
        let t0 = Instant::now();
        let mut probe = Probe::new(settings(1000, 100, 2), t0);
        probe.begin(t0);
        assert_eq!(
            probe.record(Ok(()), true, t0),
            Some(Transition {
                from: Health::Unknown,
                to: Health::Healthy
            })
        );
        for _ in 0..2 {
            assert_eq!(probe.record(Err("refused".into()), false, t0), None);
        }
        assert_eq!(probe.health(), Health::Healthy);
        assert_eq!(probe.last_error(), Some("refused"));
        assert_eq!(probe.record(Ok(()), false, t0), None);
        assert_eq!(probe.consecutive_failures(), 0);
        assert_eq!(probe.last_error(), None);
        for _ in 0..2 {
            probe.record(Err("refused".into()), false, t0);
        }
        assert_eq!(
            probe.record(Err("refused".into()), false, t0).map(|t| t.to),
            Some(Health::Unhealthy)
        );
        assert_eq!(
            probe.record(Ok(()), false, t0).map(|t| t.to),
            Some(Health::Healthy)
        );
    }

    #[test]
    fn an_endpoint_never_seen_healthy_stays_unknown_until_it_exceeds_the_tolerated_failures() {
        let t0 = Instant::now();
        let mut probe = Probe::new(settings(1000, 100, 1), t0);
        assert_eq!(probe.record(Err("refused".into()), false, t0), None);
        assert_eq!(probe.health(), Health::Unknown);
        assert_eq!(
            probe.record(Err("refused".into()), false, t0).map(|t| t.to),
            Some(Health::Unhealthy)
        );
    }

    #[test]
    fn a_late_start_does_not_push_the_schedule_back() {
        let t0 = Instant::now();
        let s = settings(1000, 300, 0);
        let mut probe = Probe::new(s, t0);
        probe.begin(t0 + Duration::from_millis(7));
        probe.record(Ok(()), true, t0 + Duration::from_millis(9));
        assert_eq!(probe.next_due(), Some(t0 + s.interval));
        // Far behind (a probe that outlived several intervals): the next
        // one is an interval after this start, not a burst.
        probe.begin(t0 + Duration::from_millis(5500));
        probe.record(Ok(()), true, t0 + Duration::from_millis(5501));
        assert_eq!(probe.next_due(), Some(t0 + Duration::from_millis(6500)));
    }

    #[test]
    fn one_scheduled_probe_at_a_time_every_interval() {
        let t0 = Instant::now();
        let s = settings(1000, 300, 0);
        let mut probe = Probe::new(s, t0);
        assert_eq!(probe.begin(t0), Some(t0 + s.timeout), "due at once");
        assert_eq!(probe.begin(t0), None, "one in flight");
        assert_eq!(probe.next_due(), None);
        probe.record(Ok(()), true, t0 + Duration::from_millis(50));
        assert_eq!(probe.next_due(), Some(t0 + s.interval));
        assert_eq!(probe.begin(t0 + Duration::from_millis(999)), None);
        // An on-demand result does not move the schedule...
        probe.record(Ok(()), false, t0 + Duration::from_millis(999));
        assert_eq!(probe.next_due(), Some(t0 + s.interval));
        // ...but a failed connect hurries the next probe.
        probe.hurry(t0 + Duration::from_millis(500));
        assert!(probe.begin(t0 + Duration::from_millis(500)).is_some());
    }
}
