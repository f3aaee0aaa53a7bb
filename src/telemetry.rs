//! Process-wide counters and histograms: what happened since the node
//! started (commits and how long they took, lease renewals, elections,
//! failovers, listener sessions, page repairs, backups), as opposed to the
//! state of the moment, which `/metrics` reads from the `sys` views at
//! each scrape (`http::metrics`).
//!
//! Every metric is created and registered once, in one
//! [`prometheus_client`] registry per process ([`registry`]); the layers
//! count through [`get`] and the scrape encodes the registry as it stands.
//!
//! # Cost on the commit path
//! A commit touches only atomics: a counter increment and, per histogram,
//! three relaxed `fetch_add`s after a scan of 16 bucket bounds
//! ([`Latency`]). prometheus-client's own `Histogram` takes a lock at each
//! observation, so the histograms here are this module's own, encoded
//! through the crate's encoder. Labelled families (`Family`) take a read
//! lock to find their child: they count rare events only (failovers,
//! listener sessions, repairs, backups), never commits.
//!
//! | metric | type | labels | counts |
//! | --- | --- | --- | --- |
//! | `availdb_commits_total` | counter | — | write transactions acknowledged by this node |
//! | `availdb_statements_total` | counter | — | statements this node ran for client sessions (the scrub slows down while it moves fast) |
//! | `availdb_commit_duration_seconds` | histogram | — | from the start of the commit on the writer (an autocommit statement: of the statement) to its acknowledgement, the local fsync and the secondaries' hardening included |
//! | `availdb_sync_commit_wait_seconds` | histogram | — | how long commits waited for synchronous secondaries to harden them |
//! | `availdb_lease_renewals_total` | counter | — | lease renewals the cluster took (this node as primary) |
//! | `availdb_lease_renewal_misses_total` | counter | — | renewals refused or unanswered |
//! | `availdb_cluster_elections_total` | counter | — | term changes this node saw (each term begins with an election) |
//! | `availdb_failovers_total` | counter | `kind` (`PLANNED`, `AUTOMATIC`, `FORCED`) | failovers that made this node primary |
//! | `availdb_listener_sessions_total` | counter | `group` | sessions this node's listeners accepted |
//! | `availdb_listener_handovers_total` | counter | `group` | of those, sessions handed to a node's front end instead of relayed: this node's, in-process, or another node's on this host, which the client's socket was passed to |
//! | `availdb_listener_handed_over_sessions` | gauge | `group` | sessions a listener (this node's or another's on this host) handed to this node's front end, open now |
//! | `availdb_listener_relayed_sessions` | gauge | `group`, `replica` | sessions this node's listeners relay to `replica` (another host's, or a session whose TLS ended here), open now |
//! | `availdb_listener_routing_decisions_total` | counter | `group`, `route` (`primary`, `secondary`, `wait`, `refuse`) | routing decisions |
//! | `availdb_page_repairs_total` | counter | `outcome` (`succeeded`, `irreparable`) | finished automatic page repairs |
//! | `availdb_backups_total` | counter | — | backups this node took |
//! | `availdb_backup_bytes_total` | counter | — | bytes of those backups |

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// Label pairs of a family.
pub type Labels = Vec<(String, String)>;

/// Something open (a listener session), counted in its gauge while this
/// lives.
pub struct Open(Gauge);

impl Open {
    fn new(gauge: &Gauge) -> Open {
        gauge.inc();
        Open(gauge.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The labels of a metric per availability group.
fn group_label(group: &str) -> Labels {
    vec![("group".to_string(), group.to_string())]
}

/// Upper bounds of the latency buckets, in microseconds (100 µs to 10 s).
const BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// A latency histogram with fixed buckets made of atomics, so that
/// observing never takes a lock.
#[derive(Debug, Default)]
pub struct Latency {
    /// Per bucket (the last one: above every bound), not cumulative.
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Latency {
    /// Counts one observation of `d`.
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let i = BOUNDS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(BOUNDS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl TypedMetric for Latency {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Latency {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = BOUNDS_US
            .iter()
            .map(|&b| b as f64 / 1e6)
            .chain(std::iter::once(f64::MAX))
            .zip(&self.buckets)
            .map(|(bound, n)| (bound, n.load(Ordering::Relaxed)))
            .collect();
        // The count is the buckets' total, read with them: a scrape racing
        // a commit never shows a count the buckets do not add up to.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Every counter and histogram of the process.
#[derive(Debug, Default)]
pub struct Telemetry {
    /// `availdb_commits_total`.
    pub commits: Counter,
    /// `availdb_statements_total`.
    pub statements: Counter,
    /// `availdb_commit_duration_seconds`.
    pub commit_duration: Latency,
    /// `availdb_sync_commit_wait_seconds`.
    pub sync_commit_wait: Latency,
    /// `availdb_lease_renewals_total`.
    pub lease_renewals: Counter,
    /// `availdb_lease_renewal_misses_total`.
    pub lease_renewal_misses: Counter,
    /// `availdb_cluster_elections_total`.
    pub elections: Counter,
    /// `availdb_failovers_total{kind}`.
    pub failovers: Family<Labels, Counter>,
    /// `availdb_listener_sessions_total{group}`.
    pub listener_sessions: Family<Labels, Counter>,
    /// `availdb_listener_handovers_total{group}`.
    pub listener_handovers: Family<Labels, Counter>,
    /// `availdb_listener_handed_over_sessions{group}`.
    pub listener_handed_over: Family<Labels, Gauge>,
    /// `availdb_listener_relayed_sessions{group, replica}`.
    pub listener_relayed: Family<Labels, Gauge>,
    /// `availdb_listener_routing_decisions_total{group, route}`.
    pub routing_decisions: Family<Labels, Counter>,
    /// `availdb_page_repairs_total{outcome}`.
    pub page_repairs: Family<Labels, Counter>,
    /// `availdb_backups_total`.
    pub backups: Counter,
    /// `availdb_backup_bytes_total`.
    pub backup_bytes: Counter,
}

impl Telemetry {
    /// Counts a failover of `kind` (`PLANNED`, `AUTOMATIC`, `FORCED`) that
    /// made this node primary.
    pub fn failover(&self, kind: &str) {
        self.failovers
            .get_or_create(&vec![("kind".to_string(), kind.to_string())])
            .inc();
    }

    /// Counts a session a listener of `group` accepted.
    pub fn listener_session(&self, group: &str) {
        self.listener_sessions
            .get_or_create(&group_label(group))
            .inc();
    }

    /// Counts a session a listener of `group` handed to a node's front end
    /// (this node's, or another node's on this host) instead of relaying it.
    pub fn listener_handover(&self, group: &str) {
        self.listener_handovers
            .get_or_create(&group_label(group))
            .inc();
    }

    /// Counts a handed-over session of `group` open on this node's front
    /// end while the returned guard lives.
    pub fn listener_handed_over_session(&self, group: &str) -> Open {
        Open::new(&self.listener_handed_over.get_or_create(&group_label(group)))
    }

    /// Counts a session of `group` this node's listener relays to
    /// `replica`, open while the returned guard lives.
    pub fn listener_relayed_session(&self, group: &str, replica: &str) -> Open {
        Open::new(&self.listener_relayed.get_or_create(&vec![
            ("group".to_string(), group.to_string()),
            ("replica".to_string(), replica.to_string()),
        ]))
    }

    /// Counts a routing decision of a listener of `group`.
    pub fn routed(&self, group: &str, route: &str) {
        self.routing_decisions
            .get_or_create(&vec![
                ("group".to_string(), group.to_string()),
                ("route".to_string(), route.to_string()),
            ])
            .inc();
    }

    /// Counts a finished page repair.
    pub fn page_repair(&self, succeeded: bool) {
        let outcome = if succeeded {
            "succeeded"
        } else {
            "irreparable"
        };
        self.page_repairs
            .get_or_create(&vec![("outcome".to_string(), outcome.to_string())])
            .inc();
    }
}

struct Registered {
    telemetry: &'static Telemetry,
    registry: Registry,
}

static REGISTERED: LazyLock<Registered> = LazyLock::new(|| {
    let telemetry: &'static Telemetry = Box::leak(Box::default());
    let t = telemetry;
    let mut r = Registry::default();
    // Counters are registered without `_total`: the encoder adds it.
    r.register(
        "availdb_commits",
        "Write transactions acknowledged by this node",
        t.commits.clone(),
    );
    r.register(
        "availdb_statements",
        "Statements this node ran for client sessions",
        t.statements.clone(),
    );
    r.register(
        "availdb_commit_duration_seconds",
        "From the start of a commit on the writer to its acknowledgement",
        Shared(&t.commit_duration),
    );
    r.register(
        "availdb_sync_commit_wait_seconds",
        "How long commits waited for synchronous secondaries to harden them",
        Shared(&t.sync_commit_wait),
    );
    r.register(
        "availdb_lease_renewals",
        "Lease renewals the cluster took from this node as primary",
        t.lease_renewals.clone(),
    );
    r.register(
        "availdb_lease_renewal_misses",
        "Lease renewals refused or unanswered",
        t.lease_renewal_misses.clone(),
    );
    r.register(
        "availdb_cluster_elections",
        "Term changes this node saw",
        t.elections.clone(),
    );
    r.register(
        "availdb_failovers",
        "Failovers that made this node primary, by kind",
        t.failovers.clone(),
    );
    r.register(
        "availdb_listener_sessions",
        "Sessions this node's listeners accepted",
        t.listener_sessions.clone(),
    );
    r.register(
        "availdb_listener_handovers",
        "Listener sessions handed to a node's front end (this node's, or another's on this host) instead of relayed",
        t.listener_handovers.clone(),
    );
    r.register(
        "availdb_listener_handed_over_sessions",
        "Listener sessions handed to this node's front end that are open now",
        t.listener_handed_over.clone(),
    );
    r.register(
        "availdb_listener_relayed_sessions",
        "Listener sessions this node relays to a replica, open now",
        t.listener_relayed.clone(),
    );
    r.register(
        "availdb_listener_routing_decisions",
        "Routing decisions of this node's listeners",
        t.routing_decisions.clone(),
    );
    r.register(
        "availdb_page_repairs",
        "Finished automatic page repairs",
        t.page_repairs.clone(),
    );
    r.register(
        "availdb_backups",
        "Backups this node took",
        t.backups.clone(),
    );
    r.register(
        "availdb_backup_bytes",
        "Bytes of the backups this node took",
        t.backup_bytes.clone(),
    );
    Registered {
        telemetry,
        registry: r,
    }
});

/// A histogram of the static [`Telemetry`], registered by reference (the
/// registry wants owned metrics; counters are cheap clones of an `Arc`,
/// histograms here are not).
#[derive(Debug)]
struct Shared(&'static Latency);

impl EncodeMetric for Shared {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The process's counters and histograms.
pub fn get() -> &'static Telemetry {
    REGISTERED.telemetry
}

/// The registry holding them, for the scrape.
pub fn registry() -> &'static Registry {
    &REGISTERED.registry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_latency_lands_in_the_first_bucket_whose_bound_holds_it_and_encodes_cumulatively() {
        let h = Latency::default();
        for us in [50, 100, 101, 20_000_000] {
            h.observe(Duration::from_micros(us));
        }
        assert_eq!(h.count(), 4);
        let mut r = Registry::default();
        r.register("lat_seconds", "test", Shared(Box::leak(Box::new(h))));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        assert!(text.contains("lat_seconds_count 4"), "{text}");
        assert!(
            text.contains("lat_seconds_bucket{le=\"0.0001\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_bucket{le=\"0.00025\"} 3"),
            "{text}"
        );
        assert!(text.contains("lat_seconds_bucket{le=\"10.0\"} 3"), "{text}");
        assert!(text.contains("lat_seconds_bucket{le=\"+Inf\"} 4"), "{text}");
        assert!(text.contains("lat_seconds_sum 20.000251"), "{text}");
    }
}
