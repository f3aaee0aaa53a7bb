//! Where a new connection goes (priority routing), as a pure function.
//!
//! # The rule (Azure Traffic Manager's *priority* method)
//! * Only endpoints that are **online** and **healthy** (their last probes
//!   succeeded, [`super::probe`]) take connections.
//! * Among those, the one with the lowest `priority` number wins (1 is the
//!   highest priority). Priorities are unique within a profile
//!   ([`super::profile`] refuses duplicates), so the choice is never a tie.
//! * An endpoint whose health is not known yet (just added, first probe
//!   pending) takes no connection: routing to it could fail the client,
//!   and the wait is one probe.
//! * With no eligible endpoint the connection is **held** ([`Choice::Hold`])
//!   rather than refused; the proxy waits for a change of the profile or
//!   of a probe result, up to the profile's hold time.
//!
//! The caller may exclude endpoints for this one connection (one it just
//! failed to connect to), so a dead endpoint that the probes have not yet
//! caught costs a retry, never a client error while another is healthy.

/// An endpoint's administrative status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Takes connections while healthy.
    Online,
    /// Takes no new connection (still probed, so it can be switched to at
    /// once).
    Offline,
}

/// What the probes say of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No probe has decided yet.
    Unknown,
    /// The last probe succeeded.
    Healthy,
    /// More consecutive probes failed than the profile tolerates.
    Unhealthy,
}

/// One endpoint as routing sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// Its name in the profile.
    pub name: &'a str,
    /// Lower wins.
    pub priority: u32,
    /// Online or offline.
    pub status: Status,
    /// The probes' verdict.
    pub health: Health,
}

/// The routing decision for one new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice<'a> {
    /// Connect to this endpoint.
    Endpoint(&'a str),
    /// No endpoint can take it now: hold the connection, for this reason.
    Hold(HoldReason),
}

/// Why a connection is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldReason {
    /// The profile has no online endpoint.
    NoneOnline,
    /// Online endpoints exist, but none is healthy (or all that are were
    /// excluded for this connection).
    NoneHealthy,
}

impl HoldReason {
    /// What an operator reads in the log when a held connection is given
    /// up.
    pub fn describe(self) -> &'static str {
        match self {
            HoldReason::NoneOnline => {
                "no endpoint is online: set one online (availdb traffic-manager online NAME)"
            }
            HoldReason::NoneHealthy => {
                "no online endpoint is healthy: see `availdb traffic-manager show` for each probe's last error"
            }
        }
    }
}

/// Chooses the endpoint for a new connection (see the module page).
pub fn choose<'a>(
    candidates: impl IntoIterator<Item = Candidate<'a>>,
    excluded: &[&str],
) -> Choice<'a> {
    let mut any_online = false;
    let mut best: Option<Candidate<'a>> = None;
    for c in candidates {
        if c.status != Status::Online {
            continue;
        }
        any_online = true;
        if c.health != Health::Healthy || excluded.contains(&c.name) {
            continue;
        }
        if best.is_none_or(|b| (c.priority, c.name) < (b.priority, b.name)) {
            best = Some(c);
        }
    }
    match best {
        Some(c) => Choice::Endpoint(c.name),
        None if any_online => Choice::Hold(HoldReason::NoneHealthy),
        None => Choice::Hold(HoldReason::NoneOnline),
    }
}

/// The endpoint that takes connections now, if any (what `show` calls
/// *active*).
pub fn active<'a>(candidates: impl IntoIterator<Item = Candidate<'a>>) -> Option<&'a str> {
    match choose(candidates, &[]) {
        Choice::Endpoint(name) => Some(name),
        Choice::Hold(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Health::*;
    use Status::*;

    fn c(name: &str, priority: u32, status: Status, health: Health) -> Candidate<'_> {
        Candidate {
            name,
            priority,
            status,
            health,
        }
    }

    #[test]
    fn priority_routing_takes_the_best_online_healthy_endpoint() {
        // (endpoints, excluded, expected)
        let table: Vec<(Vec<Candidate>, Vec<&str>, Choice)> = vec![
            (
                vec![c("v1", 1, Online, Healthy), c("v2", 2, Online, Healthy)],
                vec![],
                Choice::Endpoint("v1"),
            ),
            // The lower number wins whatever the order given.
            (
                vec![c("v2", 2, Online, Healthy), c("v1", 1, Online, Healthy)],
                vec![],
                Choice::Endpoint("v1"),
            ),
            // An offline endpoint never takes connections, healthy or not.
            (
                vec![c("v1", 1, Offline, Healthy), c("v2", 2, Online, Healthy)],
                vec![],
                Choice::Endpoint("v2"),
            ),
            // Failover: the best one is unhealthy, the next takes over.
            (
                vec![c("v1", 1, Online, Unhealthy), c("v2", 2, Online, Healthy)],
                vec![],
                Choice::Endpoint("v2"),
            ),
            // Not yet probed is not healthy.
            (
                vec![c("v1", 1, Online, Unknown), c("v2", 2, Online, Healthy)],
                vec![],
                Choice::Endpoint("v2"),
            ),
            // Excluded for this connection (it just refused us).
            (
                vec![c("v1", 1, Online, Healthy), c("v2", 2, Online, Healthy)],
                vec!["v1"],
                Choice::Endpoint("v2"),
            ),
            (
                vec![c("v1", 1, Online, Unhealthy), c("v2", 2, Offline, Healthy)],
                vec![],
                Choice::Hold(HoldReason::NoneHealthy),
            ),
            (
                vec![c("v1", 1, Online, Healthy)],
                vec!["v1"],
                Choice::Hold(HoldReason::NoneHealthy),
            ),
            (
                vec![c("v1", 1, Offline, Healthy), c("v2", 2, Offline, Healthy)],
                vec![],
                Choice::Hold(HoldReason::NoneOnline),
            ),
            (vec![], vec![], Choice::Hold(HoldReason::NoneOnline)),
        ];
        for (endpoints, excluded, expected) in table {
            assert_eq!(
                choose(endpoints.clone(), &excluded),
                expected,
                "{endpoints:?} excluding {excluded:?}"
            );
        }
    }

    #[test]
    fn the_active_endpoint_is_the_one_new_connections_get() {
        let profile = [c("v1", 1, Offline, Healthy), c("v2", 2, Online, Healthy)];
        assert_eq!(active(profile), Some("v2"));
        assert_eq!(active([c("v1", 1, Online, Unhealthy)]), None);
    }
}
