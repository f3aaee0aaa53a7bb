//! Limits on what clients may take from a node: how many sessions at once
//! (`--max-connections`, 53300), how many of them one role may hold (its
//! `CONNECTION LIMIT`, 53300 too) and how often one address may fail to
//! authenticate (a password guesser is turned away, 28000, for a while).
//!
//! All are pure: the session count is an atomic with a guard, the role
//! counts a table with guards, and the authentication throttle is a table
//! of recent failures per address with the time passed in, so its rule is
//! tested without clocks.
//!
//! A role's limit counts its sessions on *this node*, as PostgreSQL counts
//! them per server: a role limited to 10 may hold 10 on the primary and 10
//! on each readable secondary. The built-in administrator has no limit, so
//! a node full of one role's sessions can still be reached to fix it.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Default of `--max-connections` (PostgreSQL's `max_connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 100;

/// Failed authentications one address may have within [`AUTH_WINDOW`];
/// the next start-up from it is refused until the oldest of them is older
/// than the window.
pub const AUTH_FAILURES_ALLOWED: usize = 5;
/// The window over which failed authentications are counted.
pub const AUTH_WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most; past it the oldest entries are dropped (an
/// attacker with many addresses fills the table, never the memory).
const AUTH_TRACKED: usize = 10_000;

/// The sessions of a node, counted against `--max-connections`.
#[derive(Debug)]
pub struct SessionCount {
    open: Arc<AtomicUsize>,
    max: usize,
}

/// One session's place in the count, given back when dropped.
#[derive(Debug)]
pub struct SessionSlot(Arc<AtomicUsize>);

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl SessionCount {
    /// A count that admits at most `max` sessions.
    pub fn new(max: usize) -> SessionCount {
        SessionCount {
            open: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.max
    }

    /// A slot for one more session, or None when `max` are open.
    pub fn take(&self) -> Option<SessionSlot> {
        let mut now = self.open.load(Ordering::Acquire);
        loop {
            if now >= self.max {
                return None;
            }
            match self
                .open
                .compare_exchange(now, now + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(SessionSlot(self.open.clone())),
                Err(seen) => now = seen,
            }
        }
    }
}

/// The sessions each role holds on this node, counted against the roles'
/// `CONNECTION LIMIT`s.
#[derive(Debug, Default)]
pub struct RoleSessions {
    open: Arc<std::sync::Mutex<HashMap<String, usize>>>,
}

/// One session's place in its role's count, given back when dropped.
#[derive(Debug)]
pub struct RoleSlot {
    open: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    role: String,
}

impl Drop for RoleSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.role) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.role);
            }
        }
    }
}

impl RoleSessions {
    /// A place for one more session of `role`, whose limit is `limit`
    /// (None: no limit, and the session is still counted so that a limit
    /// set later sees it); `Err` holds how many it has open.
    pub fn take(&self, role: &str, limit: Option<u32>) -> Result<RoleSlot, usize> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(role.to_string()).or_default();
        if limit.is_some_and(|limit| *n >= limit as usize) {
            let held = *n;
            if held == 0 {
                open.remove(role);
            }
            return Err(held);
        }
        *n += 1;
        Ok(RoleSlot {
            open: self.open.clone(),
            role: role.to_string(),
        })
    }

    /// Sessions `role` holds open now.
    #[cfg(test)]
    fn held(&self, role: &str) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(role).copied().unwrap_or(0)
    }
}

/// Recent authentication failures per client address.
#[derive(Debug, Default)]
pub struct AuthThrottle {
    failures: HashMap<IpAddr, VecDeque<Instant>>,
}

impl AuthThrottle {
    /// Whether `client` may try to authenticate at `now`; when not, how
    /// long until it may.
    pub fn check(&mut self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let Some(times) = self.failures.get_mut(&client) else {
            return Ok(());
        };
        while times
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= AUTH_WINDOW)
        {
            times.pop_front();
        }
        match times.front() {
            None => {
                self.failures.remove(&client);
                Ok(())
            }
            Some(oldest) if times.len() >= AUTH_FAILURES_ALLOWED => {
                Err(AUTH_WINDOW.saturating_sub(now.saturating_duration_since(*oldest)))
            }
            Some(_) => Ok(()),
        }
    }

    /// Records a failed authentication of `client` at `now`.
    pub fn failed(&mut self, client: IpAddr, now: Instant) {
        if self.failures.len() >= AUTH_TRACKED && !self.failures.contains_key(&client) {
            let stalest = self
                .failures
                .iter()
                .min_by_key(|(_, times)| times.back().copied())
                .map(|(ip, _)| *ip);
            if let Some(ip) = stalest {
                self.failures.remove(&ip);
            }
        }
        let times = self.failures.entry(client).or_default();
        times.push_back(now);
        while times.len() > AUTH_FAILURES_ALLOWED {
            times.pop_front();
        }
    }

    /// Forgets `client`'s failures: it authenticated.
    pub fn succeeded(&mut self, client: IpAddr) {
        self.failures.remove(&client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_past_the_limit_get_no_slot_until_one_ends() {
        let count = SessionCount::new(2);
        let a = count.take().expect("first");
        let _b = count.take().expect("second");
        assert!(count.take().is_none(), "a third session past max 2");
        drop(a);
        assert!(count.take().is_some(), "a slot freed by a session's end");
    }

    #[test]
    fn a_role_at_its_connection_limit_gets_no_slot_until_one_of_its_sessions_ends() {
        let roles = RoleSessions::default();
        let a = roles.take("app", Some(2)).expect("first");
        let _b = roles.take("app", Some(2)).expect("second");
        assert_eq!(roles.take("app", Some(2)).unwrap_err(), 2);
        assert!(
            roles.take("other", Some(2)).is_ok(),
            "each role its own count"
        );
        assert!(
            roles.take("app", None).is_ok(),
            "no limit (ALTER ROLE … -1)"
        );
        drop(a);
        assert_eq!(roles.held("app"), 1, "the unlimited slot was dropped too");
        assert!(
            roles.take("app", Some(2)).is_ok(),
            "a slot freed by a session's end"
        );
        assert_eq!(
            roles.take("none", Some(0)).unwrap_err(),
            0,
            "LIMIT 0 admits none"
        );
        assert_eq!(roles.held("none"), 0);
    }

    #[test]
    fn unlimited_sessions_still_count_against_a_limit_set_later() {
        let roles = RoleSessions::default();
        let held: Vec<_> = (0..3).map(|_| roles.take("app", None).unwrap()).collect();
        assert_eq!(roles.take("app", Some(3)).unwrap_err(), 3);
        drop(held);
        assert_eq!(
            roles.held("app"),
            0,
            "every slot given back, the entry gone"
        );
        assert!(roles.take("app", Some(3)).is_ok());
    }

    #[test]
    fn an_address_that_fails_too_often_waits_out_the_window() {
        let mut throttle = AuthThrottle::default();
        let (guesser, other): (IpAddr, IpAddr) =
            ("10.0.0.9".parse().unwrap(), "10.0.0.8".parse().unwrap());
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        for i in 0..AUTH_FAILURES_ALLOWED as u64 {
            assert_eq!(throttle.check(guesser, at(i)), Ok(()), "attempt {i}");
            throttle.failed(guesser, at(i));
        }
        // Five failures at 0..4 s: refused until the first is 60 s old.
        assert_eq!(
            throttle.check(guesser, at(10)),
            Err(Duration::from_secs(50))
        );
        assert_eq!(throttle.check(other, at(10)), Ok(()), "another address");
        assert_eq!(throttle.check(guesser, at(60)), Ok(()), "the window passed");
        throttle.failed(guesser, at(60));
        assert_eq!(
            throttle.check(guesser, at(60)),
            Err(Duration::from_secs(1)),
            "failures at 1..4 s and 60 s: refused until the one at 1 s is 60 s old"
        );
        assert_eq!(throttle.check(guesser, at(61)), Ok(()));
        throttle.failed(guesser, at(61));
        assert!(throttle.check(guesser, at(61)).is_err());
        throttle.succeeded(guesser);
        assert_eq!(throttle.check(guesser, at(61)), Ok(()), "a success forgets");
    }

    #[test]
    fn fewer_failures_than_allowed_never_refuse() {
        let mut throttle = AuthThrottle::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..100u64 {
            let now = t0 + Duration::from_secs(i * 13);
            assert_eq!(throttle.check(ip, now), Ok(()), "at {} s", i * 13);
            throttle.failed(ip, now);
        }
    }
}
