//! Availability groups of real `availdb server` processes on loopback, for
//! the log-shipping tests: start an N-node group, read the `sys` views,
//! wait (bounded) for synchronization and catch-up, compare page images,
//! and drive a unique-insert workload that records which commits were
//! acknowledged.
//!
//! Replica `r1` (index 0) is the primary; `r2 … rN` are secondaries of group
//! `ag1` holding database `app`. Every node keeps its ports and data
//! directory across `restart()`, so a killed node comes back as itself.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, SimpleQueryMessage};

use super::{free_port, TestServer, DEFAULT_DB};

/// The group every helper here talks about.
pub const GROUP: &str = "ag1";
/// The availability database.
pub const APP: &str = "app";
/// Bound on a node becoming SYNCHRONIZED or catching up after it was
/// started, restarted, resumed or un-suspended.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on any single statement a helper runs.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

const POLL: Duration = Duration::from_millis(100);

/// How to define the group.
#[derive(Clone, Debug)]
pub struct GroupSpec {
    /// Number of replicas, the primary included.
    pub replicas: usize,
    /// SESSION_TIMEOUT of every replica, seconds (minimum 5).
    pub session_timeout_s: u32,
    /// SYNCHRONOUS_COMMIT (true) or ASYNCHRONOUS_COMMIT for every replica.
    pub synchronous: bool,
    /// FAILOVER_MODE = AUTOMATIC for every synchronous replica (default
    /// MANUAL; asynchronous replicas are always MANUAL).
    pub automatic: bool,
    /// Node indexes that are ASYNCHRONOUS_COMMIT whatever `synchronous` says.
    pub asynchronous_replicas: Vec<usize>,
    /// `WITH (CLUSTER_TYPE = …)` of the group (None: the default, which
    /// puts the group under the nodes' cluster manager).
    pub cluster_type: Option<&'static str>,
    /// `(node index, MiB)`: that node's data directory is a tmpfs of that
    /// size (needs root), so its disk can be filled.
    pub tmpfs_data: Option<(usize, u32)>,
    /// Every node's `--host` (None: 127.0.0.1; clients of the harness
    /// still connect on loopback).
    pub host: Option<String>,
    /// Every node's password (a non-loopback host needs one).
    pub password: Option<String>,
    /// More command-line arguments for every node; `{replica}` in one
    /// stands for the node's replica name (per-node file names).
    pub args: Vec<String>,
    /// Environment variables `(name, value)` of every node.
    pub env: Vec<(&'static str, &'static str)>,
}

impl Default for GroupSpec {
    fn default() -> Self {
        GroupSpec {
            replicas: 3,
            session_timeout_s: 5,
            synchronous: true,
            automatic: false,
            asynchronous_replicas: Vec::new(),
            cluster_type: None,
            tmpfs_data: None,
            host: None,
            password: None,
            args: Vec::new(),
            env: Vec::new(),
        }
    }
}

impl GroupSpec {
    /// True when node `i` is a SYNCHRONOUS_COMMIT replica.
    pub fn is_synchronous(&self, i: usize) -> bool {
        self.synchronous && !self.asynchronous_replicas.contains(&i)
    }

    /// A server builder for node `i` ([`GroupSpec::tmpfs_data`] applied).
    fn builder(&self, i: usize) -> super::Builder {
        let mut builder = match self.tmpfs_data {
            Some((node, mb)) if node == i => TestServer::builder().tmpfs_data(mb),
            _ => TestServer::builder(),
        };
        if let Some(host) = &self.host {
            builder = builder.host(host);
        }
        if let Some(password) = &self.password {
            builder = builder.password(password);
        }
        for arg in &self.args {
            builder = builder.arg(&arg.replace("{replica}", &name(i)));
        }
        for (name, value) in &self.env {
            builder = builder.env(name, value);
        }
        builder
    }
}

/// One row of `sys.dm_hadr_database_replica_states`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbReplicaState {
    pub database: String,
    pub replica: String,
    pub is_local: bool,
    pub is_primary: bool,
    pub sync_state: String,
    pub is_suspended: bool,
    pub hardened: u64,
    pub redone: u64,
    pub commit: u64,
    pub last_error: Option<String>,
}

/// One row of `sys.dm_hadr_availability_replica_states`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaState {
    pub replica: String,
    pub role: String,
    pub connected: String,
    pub health: String,
    pub is_local: bool,
    pub last_error: Option<String>,
}

/// A running group: `nodes[i]` is replica `r{i+1}`.
pub struct Group {
    pub nodes: Vec<TestServer>,
    /// The port each node's ENDPOINT_URL names (on 127.0.0.1): its own
    /// endpoint, or its port on the proxy.
    pub endpoints: Vec<u16>,
    pub spec: GroupSpec,
    /// The proxy between the nodes, for groups that can be partitioned.
    pub proxy: Option<super::proxy::Proxy>,
    /// The host each node's ENDPOINT_URL names.
    pub endpoint_hosts: Vec<String>,
}

/// The replica name of node index `i`.
pub fn name(i: usize) -> String {
    format!("r{}", i + 1)
}

/// Runs `sql` through the simple protocol, bounded; rows as text.
pub async fn query_text(
    client: &Client,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, tokio_postgres::Error> {
    let messages = match tokio::time::timeout(STATEMENT_TIMEOUT, client.simple_query(sql)).await {
        Ok(result) => result?,
        Err(_) => panic!("{sql}: no answer within {STATEMENT_TIMEOUT:?}"),
    };
    Ok(rows_of(messages))
}

/// The rows of a simple-protocol answer, as text.
pub fn rows_of(messages: Vec<SimpleQueryMessage>) -> Vec<Vec<Option<String>>> {
    messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// `batch_execute`, bounded; panics (with `what`) on error or timeout.
pub async fn exec(client: &Client, sql: &str, what: &str) {
    match tokio::time::timeout(STATEMENT_TIMEOUT, client.batch_execute(sql)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{what}: {sql}: {}", error_text(&e)),
        Err(_) => panic!("{what}: {sql}: no answer within {STATEMENT_TIMEOUT:?}"),
    }
}

/// An error's SQLSTATE and message (or the client error).
pub fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => format!("{e:?}"),
    }
}

fn flag(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("t" | "true" | "1" | "on"))
}

fn number(v: &Option<String>) -> u64 {
    v.as_deref().and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// `sys.dm_hadr_database_replica_states` as `server` sees it.
pub async fn db_states(server: &TestServer) -> Vec<DbReplicaState> {
    let client = server.client(DEFAULT_DB).await;
    db_states_on(&client).await
}

/// `sys.dm_hadr_database_replica_states` through an open client.
pub async fn db_states_on(client: &Client) -> Vec<DbReplicaState> {
    let sql = "SELECT database_name, replica, is_local, is_primary_replica, \
               synchronization_state_desc, is_suspended, last_hardened_lsn, last_redone_lsn, \
               last_commit_lsn, last_error FROM sys.dm_hadr_database_replica_states \
               ORDER BY database_name, replica";
    let rows = query_text(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e)));
    rows.into_iter()
        .map(|r| DbReplicaState {
            database: r[0].clone().unwrap_or_default(),
            replica: r[1].clone().unwrap_or_default(),
            is_local: flag(&r[2]),
            is_primary: flag(&r[3]),
            sync_state: r[4].clone().unwrap_or_default(),
            is_suspended: flag(&r[5]),
            hardened: number(&r[6]),
            redone: number(&r[7]),
            commit: number(&r[8]),
            last_error: r[9].clone(),
        })
        .collect()
}

/// `sys.dm_hadr_availability_replica_states` as `server` sees it.
pub async fn replica_states(server: &TestServer) -> Vec<ReplicaState> {
    let client = server.client(DEFAULT_DB).await;
    let sql = "SELECT replica, role_desc, connected_state_desc, synchronization_health_desc, \
               is_local, last_connect_error_description FROM sys.dm_hadr_availability_replica_states \
               ORDER BY replica";
    let rows = query_text(&client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e)));
    rows.into_iter()
        .map(|r| ReplicaState {
            replica: r[0].clone().unwrap_or_default(),
            role: r[1].clone().unwrap_or_default(),
            connected: r[2].clone().unwrap_or_default(),
            health: r[3].clone().unwrap_or_default(),
            is_local: flag(&r[4]),
            last_error: r[5].clone(),
        })
        .collect()
}

/// Every page image of `db` on `server`: `(pgno, bytes)` in page order.
pub async fn pages(server: &TestServer, db: &str) -> Vec<(i64, Vec<u8>)> {
    match try_pages(server, db).await {
        Ok(pages) => pages,
        Err(why) => panic!("{why}\n{}", server.log_tail()),
    }
}

/// [`pages`], or why they could not be read (no session: the copy is being
/// replaced or restored; the session ended; no answer in time), for a
/// caller that waits for a copy and tries again.
pub async fn try_pages(server: &TestServer, db: &str) -> Result<Vec<(i64, Vec<u8>)>, String> {
    let client = server.try_client(db).await.map_err(|e| {
        format!(
            "cannot connect to {db:?} on port {}: {}",
            server.port(),
            error_text(&e)
        )
    })?;
    let sql = "SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno";
    let rows = match tokio::time::timeout(STATEMENT_TIMEOUT, client.query(sql, &[])).await {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => {
            return Err(format!(
                "{sql} on port {}: {}",
                server.port(),
                error_text(&e)
            ))
        }
        Err(_) => {
            return Err(format!(
                "{sql} on port {}: no answer in time",
                server.port()
            ))
        }
    };
    Ok(rows
        .iter()
        .map(|row| (super::int(row, 0), row.get::<_, Vec<u8>>(1)))
        .collect())
}

/// Page 1 bytes that legitimately differ between replicas: the file change
/// counter (24..28), version-valid-for (92..96), SQLite version (96..100).
const PAGE1_MASK: [std::ops::Range<usize>; 3] = [24..28, 92..96, 96..100];

fn masked(pgno: i64, image: &[u8]) -> Vec<u8> {
    let mut image = image.to_vec();
    if pgno == 1 {
        for range in PAGE1_MASK {
            if image.len() >= range.end {
                image[range].fill(0);
            }
        }
    }
    image
}

/// Compares two page sets (page 1 masked); `Err` describes every
/// difference (page count, first differing pages and offsets).
pub fn compare_pages(expected: &[(i64, Vec<u8>)], actual: &[(i64, Vec<u8>)]) -> Result<(), String> {
    let mut report = String::new();
    if expected.len() != actual.len() {
        let _ = writeln!(
            report,
            "page count differs: expected {} pages, got {}",
            expected.len(),
            actual.len()
        );
    }
    let mut differing = 0;
    for ((ep, eimg), (ap, aimg)) in expected.iter().zip(actual) {
        if ep != ap {
            let _ = writeln!(report, "page numbers differ: expected {ep}, got {ap}");
            differing += 1;
            continue;
        }
        let (e, a) = (masked(*ep, eimg), masked(*ap, aimg));
        if e != a {
            differing += 1;
            if differing <= 10 {
                let offset = e.iter().zip(&a).position(|(x, y)| x != y);
                let _ = writeln!(
                    report,
                    "page {ep} differs (lengths {} / {}; first differing byte at {offset:?})",
                    e.len(),
                    a.len()
                );
            }
        }
    }
    if differing > 10 {
        let _ = writeln!(report, "… {differing} differing pages in all");
    }
    if report.is_empty() {
        Ok(())
    } else {
        Err(report)
    }
}

impl Group {
    /// Starts a 3-replica synchronous-commit group with SESSION_TIMEOUT 5.
    pub async fn start(replicas: usize) -> Group {
        Group::start_with(GroupSpec {
            replicas,
            ..GroupSpec::default()
        })
        .await
    }

    /// Starts `spec.replicas` nodes, joins the secondaries, creates `app`
    /// and the group on r1, and waits until every secondary is SYNCHRONIZED
    /// (or, for asynchronous commit, SYNCHRONIZING and caught up).
    pub async fn start_with(spec: GroupSpec) -> Group {
        let mut nodes = Vec::new();
        let mut endpoints = Vec::new();
        for i in 0..spec.replicas {
            let endpoint = free_port();
            nodes.push(spec.builder(i).replica(&name(i), endpoint).start().await);
            endpoints.push(endpoint);
        }
        Group::define(nodes, endpoints, spec, None).await
    }

    /// Like [`Group::start_with`], with node `i` inside network namespace
    /// `hosts.ns(i)` at `hosts.ip(i)` (clients and partners reach it
    /// there; a non-loopback node needs a password).
    pub async fn start_in_namespaces(spec: GroupSpec, hosts: &super::netns::Hosts) -> Group {
        Group::start_on_hosts(spec, hosts, 0).await
    }

    /// Like [`Group::start_in_namespaces`], with node `i` on host
    /// `first + i` (several groups, e.g. regions, on one set of hosts).
    pub async fn start_on_hosts(
        spec: GroupSpec,
        hosts: &super::netns::Hosts,
        first: usize,
    ) -> Group {
        let mut nodes = Vec::new();
        let mut endpoints = Vec::new();
        for i in 0..spec.replicas {
            let (host, endpoint) = (first + i, free_port());
            nodes.push(
                spec.builder(i)
                    .netns(&hosts.ns(host))
                    .host(&hosts.ip(host).to_string())
                    .password("netns-test")
                    .replica_at(&name(i), hosts.ip(host), endpoint)
                    .start()
                    .await,
            );
            endpoints.push(endpoint);
        }
        let mut group = Group::define_at(
            nodes,
            endpoints,
            (0..spec.replicas)
                .map(|i| hosts.ip(first + i).to_string())
                .collect(),
            spec,
        )
        .await;
        group.proxy = None;
        group
    }

    /// Like [`Group::start_with`], but every connection between two nodes
    /// passes through a [`Proxy`](super::proxy::Proxy) that can partition
    /// them: node `i` listens on its own loopback address
    /// ([`node_ip`](super::proxy::node_ip)) and its ENDPOINT_URL names its
    /// proxy port.
    pub async fn start_partitionable(spec: GroupSpec) -> Group {
        let mut nodes = Vec::new();
        let mut upstream = Vec::new();
        for i in 0..spec.replicas {
            let ip = super::proxy::node_ip(i);
            let endpoint = free_port();
            nodes.push(
                spec.builder(i)
                    .replica_at(&name(i), ip, endpoint)
                    .start()
                    .await,
            );
            upstream.push(std::net::SocketAddr::new(ip, endpoint));
        }
        let proxy = super::proxy::Proxy::start(&upstream).await;
        let endpoints = (0..spec.replicas).map(|i| proxy.port(i)).collect();
        Group::define(nodes, endpoints, spec, Some(proxy)).await
    }

    /// Joins the secondaries, creates `app` and the group on r1, and waits
    /// until every secondary is SYNCHRONIZED (or, for asynchronous commit,
    /// SYNCHRONIZING and caught up).
    async fn define(
        nodes: Vec<TestServer>,
        endpoints: Vec<u16>,
        spec: GroupSpec,
        proxy: Option<super::proxy::Proxy>,
    ) -> Group {
        let hosts = vec!["127.0.0.1".to_string(); nodes.len()];
        let mut group = Group::define_at(nodes, endpoints, hosts, spec).await;
        group.proxy = proxy;
        group
    }

    async fn define_at(
        nodes: Vec<TestServer>,
        endpoints: Vec<u16>,
        endpoint_hosts: Vec<String>,
        spec: GroupSpec,
    ) -> Group {
        let group = Group {
            nodes,
            endpoints,
            spec,
            proxy: None,
            endpoint_hosts,
        };
        for i in 1..group.nodes.len() {
            let client = group.nodes[i].client(DEFAULT_DB).await;
            exec(
                &client,
                &format!("ALTER AVAILABILITY GROUP {GROUP} JOIN"),
                &name(i),
            )
            .await;
        }
        let primary = group.nodes[0].client(DEFAULT_DB).await;
        exec(&primary, &format!("CREATE DATABASE {APP}"), "r1").await;
        exec(&primary, &group.create_statement(), "r1").await;
        let (sync, not_sync): (Vec<usize>, Vec<usize>) =
            (1..group.nodes.len()).partition(|&i| group.spec.is_synchronous(i));
        if !sync.is_empty() {
            group.wait_synchronized(&sync, CATCH_UP_TIMEOUT).await;
        }
        if !not_sync.is_empty() {
            group.wait_caught_up(&not_sync, CATCH_UP_TIMEOUT).await;
        }
        group
    }

    /// The `CREATE AVAILABILITY GROUP` statement for this group.
    pub fn create_statement(&self) -> String {
        let replicas: Vec<String> = self
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let sync = self.spec.is_synchronous(i);
                let mode = if sync {
                    "SYNCHRONOUS_COMMIT"
                } else {
                    "ASYNCHRONOUS_COMMIT"
                };
                let failover = if sync && self.spec.automatic {
                    "AUTOMATIC"
                } else {
                    "MANUAL"
                };
                format!(
                    "'{}' WITH (ENDPOINT_URL = 'tcp://{}:{port}', AVAILABILITY_MODE = {mode}, \
                     FAILOVER_MODE = {failover}, SESSION_TIMEOUT = {})",
                    name(i),
                    self.endpoint_hosts[i],
                    self.spec.session_timeout_s
                )
            })
            .collect();
        let options = self
            .spec
            .cluster_type
            .map(|t| format!(" WITH (CLUSTER_TYPE = {t})"))
            .unwrap_or_default();
        format!(
            "CREATE AVAILABILITY GROUP {GROUP}{options} FOR DATABASE {APP} REPLICA ON {}",
            replicas.join(", ")
        )
    }

    /// Waits (bounded) until node `i` sees itself PRIMARY and taking
    /// writes: a restarted primary is RESOLVING until the cluster grants
    /// it a lease, and refuses writes until then (25006).
    pub async fn wait_takes_writes(&self, i: usize, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let me = replica_states(&self.nodes[i])
                .await
                .into_iter()
                .find(|r| r.is_local);
            if me.as_ref().is_some_and(|m| m.role == "PRIMARY") {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} never took writes: {me:#?}\n{}",
                name(i),
                self.logs()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The primary (r1).
    pub fn primary(&self) -> &TestServer {
        &self.nodes[0]
    }

    /// The last lines of every node's log, for panic messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let _ = writeln!(out, "===== {} =====\n{}", name(i), node.log_tail());
        }
        out
    }

    /// The primary's rows of `sys.dm_hadr_database_replica_states` for `app`.
    pub async fn primary_view(&self) -> Vec<DbReplicaState> {
        db_states(self.primary())
            .await
            .into_iter()
            .filter(|s| s.database == APP)
            .collect()
    }

    /// The primary's last commit LSN of `app`.
    pub async fn commit_lsn(&self) -> u64 {
        self.primary_view()
            .await
            .iter()
            .find(|s| s.is_local)
            .unwrap_or_else(|| panic!("the primary has no local row for {APP}\n{}", self.logs()))
            .commit
    }

    /// Node `i`'s own row for `app` (its hardened and redone LSNs).
    pub async fn local_state(&self, i: usize) -> Option<DbReplicaState> {
        db_states(&self.nodes[i])
            .await
            .into_iter()
            .find(|s| s.is_local && s.database == APP)
    }

    /// Waits until the primary's view shows every replica in `secondaries`
    /// (node indexes) SYNCHRONIZED and CONNECTED.
    pub async fn wait_synchronized(&self, secondaries: &[usize], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let view = self.primary_view().await;
            let links = replica_states(self.primary()).await;
            let pending: Vec<String> = secondaries
                .iter()
                .map(|&i| name(i))
                .filter(|n| {
                    let synced = view
                        .iter()
                        .any(|s| &s.replica == n && s.sync_state == "SYNCHRONIZED");
                    let connected = links
                        .iter()
                        .any(|l| &l.replica == n && l.connected == "CONNECTED");
                    !(synced && connected)
                })
                .collect();
            if pending.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{pending:?} not SYNCHRONIZED and CONNECTED within {timeout:?}\n\
                     primary's database view: {view:#?}\nprimary's replica view: {links:#?}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until every node in `secondaries` has hardened and redone the
    /// primary's last commit of `app` (its own view: last_redone_lsn ≥ the
    /// primary's last_commit_lsn). Returns the commit LSN waited for.
    ///
    /// `≥` rather than `=`: a seeding full image is appended to the
    /// primary's log without being a commit, so a secondary's redone LSN can
    /// legitimately pass the last commit LSN. Page comparison is the check
    /// that nothing else is in there.
    pub async fn wait_caught_up(&self, secondaries: &[usize], timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let commit = self.commit_lsn().await;
        loop {
            let mut behind = Vec::new();
            for &i in secondaries {
                match self.local_state(i).await {
                    Some(s) if s.redone >= commit && s.hardened >= commit => {}
                    other => behind.push((name(i), other)),
                }
            }
            if behind.is_empty() {
                return commit;
            }
            if Instant::now() > deadline {
                panic!(
                    "secondaries did not redo up to the primary's last_commit_lsn {commit} within \
                     {timeout:?}; their own rows: {behind:#?}\nprimary's view: {:#?}\n{}",
                    self.primary_view().await,
                    self.logs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits for catch-up of every secondary, then asserts that each one's
    /// `app` is page-identical to the primary's (page 1 masked), with the
    /// same page count. Returns the primary's page count.
    pub async fn assert_page_identical(&self, what: &str) -> usize {
        let all: Vec<usize> = (1..self.nodes.len()).collect();
        self.assert_page_identical_on(&all, what).await
    }

    /// `assert_page_identical` for some secondaries only.
    pub async fn assert_page_identical_on(&self, secondaries: &[usize], what: &str) -> usize {
        let lsn = self.wait_caught_up(secondaries, CATCH_UP_TIMEOUT).await;
        let expected = pages(self.primary(), APP).await;
        assert!(!expected.is_empty(), "{what}: the primary has no pages");
        for &i in secondaries {
            let actual = pages(&self.nodes[i], APP).await;
            if let Err(diff) = compare_pages(&expected, &actual) {
                panic!(
                    "{what}: {} is not page-identical to the primary at LSN {lsn}:\n{diff}\n{}",
                    name(i),
                    self.logs()
                );
            }
        }
        expected.len()
    }
}

/// What a unique-insert workload did.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    /// Ids whose INSERT returned success (acknowledged commits).
    pub acked: Vec<i64>,
    /// The id whose INSERT failed or timed out, and why; the load stops at
    /// the first failure. That insert is in doubt: it may or may not exist.
    pub failed: Option<(i64, String)>,
    /// Every id attempted (acknowledged, in doubt).
    pub attempted: Vec<i64>,
}

/// A task inserting rows with unique ids `first..first+max` into
/// `table(id INTEGER PRIMARY KEY, pad BLOB)`, one autocommit INSERT each,
/// recording which were acknowledged. Stops at `max`, at the first error,
/// or when asked.
pub struct InsertLoad {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<i64>>>,
    task: tokio::task::JoinHandle<LoadReport>,
}

impl InsertLoad {
    /// Starts the load on an open client (the table must exist).
    pub fn start(client: Client, table: &str, first: i64, max: usize) -> InsertLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let sql = format!("INSERT INTO {table}(id, pad) VALUES ($1, randomblob(300))");
        let task = tokio::spawn({
            let stop = stop.clone();
            let acked = acked.clone();
            async move {
                let mut report = LoadReport::default();
                for id in first..first + max as i64 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    report.attempted.push(id);
                    // `id INTEGER` is int4, as in PostgreSQL.
                    let id32 = i32::try_from(id).expect("ids fit in int4");
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id32];
                    let insert = client.execute(sql.as_str(), &params);
                    match tokio::time::timeout(STATEMENT_TIMEOUT, insert).await {
                        Ok(Ok(1)) => {
                            report.acked.push(id);
                            acked.lock().unwrap().push(id);
                        }
                        Ok(Ok(n)) => {
                            report.failed = Some((id, format!("INSERT reported {n} rows")));
                            break;
                        }
                        Ok(Err(e)) => {
                            report.failed = Some((id, error_text(&e)));
                            break;
                        }
                        Err(_) => {
                            report.failed =
                                Some((id, format!("no answer within {STATEMENT_TIMEOUT:?}")));
                            break;
                        }
                    }
                }
                report
            }
        });
        InsertLoad { stop, acked, task }
    }

    /// How many inserts were acknowledged so far.
    pub fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits (bounded) until at least `n` inserts were acknowledged; panics
    /// if the load ended or the time ran out first.
    pub async fn wait_acked(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.acked_count() < n {
            if self.task.is_finished() {
                panic!(
                    "the insert load ended after {} acknowledged inserts, before {n}",
                    self.acked_count()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "only {} inserts acknowledged within {timeout:?} (wanted {n})",
                    self.acked_count()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asks the load to stop and returns its report (bounded).
    pub async fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        match tokio::time::timeout(STATEMENT_TIMEOUT + Duration::from_secs(10), self.task).await {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => panic!("the insert load panicked: {e}"),
            Err(_) => panic!("the insert load did not stop in time"),
        }
    }

    /// Waits (bounded) for the load to end by itself (max reached or error).
    pub async fn join(self, timeout: Duration) -> LoadReport {
        match tokio::time::timeout(timeout, self.task).await {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => panic!("the insert load panicked: {e}"),
            Err(_) => panic!("the insert load did not end within {timeout:?}"),
        }
    }
}

/// The ids in `table` of `db` on `server`.
pub async fn ids(server: &TestServer, db: &str, table: &str) -> BTreeSet<i64> {
    let client = server.client(db).await;
    let sql = format!("SELECT id FROM {table}");
    match tokio::time::timeout(STATEMENT_TIMEOUT, client.query(sql.as_str(), &[])).await {
        Ok(Ok(rows)) => rows.iter().map(|r| super::int(r, 0)).collect(),
        Ok(Err(e)) => panic!(
            "{sql} on port {}: {}\n{}",
            server.port(),
            error_text(&e),
            server.log_tail()
        ),
        Err(_) => panic!("{sql} on port {}: no answer in time", server.port()),
    }
}

/// Panics unless every acknowledged id of `report` is in `present`, and
/// nothing outside the attempted ids is.
pub fn assert_has_acked(report: &LoadReport, present: &BTreeSet<i64>, what: &str) {
    let missing: Vec<i64> = report
        .acked
        .iter()
        .copied()
        .filter(|id| !present.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{what}: {} acknowledged inserts are missing (of {}): {:?}",
        missing.len(),
        report.acked.len(),
        &missing[..missing.len().min(50)]
    );
    let attempted: BTreeSet<i64> = report.attempted.iter().copied().collect();
    let phantom: Vec<i64> = present
        .iter()
        .copied()
        .filter(|id| !attempted.contains(id))
        .collect();
    assert!(
        phantom.is_empty(),
        "{what}: ids that were never inserted appeared: {:?}",
        &phantom[..phantom.len().min(50)]
    );
}

// ------------------------------------------------ failover (any primary)

/// One row of `sys.availability_groups`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRow {
    pub name: String,
    pub version: u64,
    pub epoch: u64,
    pub primary_replica: String,
    pub cluster_type_desc: Option<String>,
    pub last_failover_time: Option<String>,
    pub last_failover_reason: Option<String>,
    pub last_failover_from: Option<String>,
    pub last_failover_to: Option<String>,
    pub last_failover_data_lost: Option<String>,
    pub last_failover_loss_known: bool,
}

/// The `sys.availability_groups` row of [`GROUP`] as `server` sees it
/// (None when the node has no definition of it).
pub async fn group_row(server: &TestServer) -> Option<GroupRow> {
    let client = server.client(DEFAULT_DB).await;
    let sql = format!(
        "SELECT name, version, epoch, primary_replica, cluster_type_desc, last_failover_time, \
         last_failover_reason, last_failover_from, last_failover_to, last_failover_data_lost, \
         last_failover_loss_known FROM sys.availability_groups WHERE name = '{GROUP}'"
    );
    let rows = query_text(&client, &sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e)));
    rows.into_iter().next().map(|r| GroupRow {
        name: r[0].clone().unwrap_or_default(),
        version: number(&r[1]),
        epoch: number(&r[2]),
        primary_replica: r[3].clone().unwrap_or_default(),
        cluster_type_desc: r[4].clone(),
        last_failover_time: r[5].clone(),
        last_failover_reason: r[6].clone(),
        last_failover_from: r[7].clone(),
        last_failover_to: r[8].clone(),
        last_failover_data_lost: r[9].clone(),
        last_failover_loss_known: flag(&r[10]),
    })
}

/// `(log_first_lsn, log_end_lsn)` of `db` in `server`'s `sys.databases`.
pub async fn log_bounds(server: &TestServer, db: &str) -> (u64, u64) {
    let client = server.client(DEFAULT_DB).await;
    let sql = format!("SELECT log_first_lsn, log_end_lsn FROM sys.databases WHERE name = '{db}'");
    let rows = query_text(&client, &sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e)));
    let row = rows
        .first()
        .unwrap_or_else(|| panic!("{sql}: no row on port {}", server.port()));
    (number(&row[0]), number(&row[1]))
}

impl Group {
    /// Node `primary`'s rows of `sys.dm_hadr_database_replica_states` for
    /// `app` (like [`Group::primary_view`], for any node as primary).
    pub async fn view_on(&self, primary: usize) -> Vec<DbReplicaState> {
        db_states(&self.nodes[primary])
            .await
            .into_iter()
            .filter(|s| s.database == APP)
            .collect()
    }

    /// Node `primary`'s own last commit LSN of `app`.
    pub async fn commit_lsn_on(&self, primary: usize) -> u64 {
        self.view_on(primary)
            .await
            .iter()
            .find(|s| s.is_local)
            .unwrap_or_else(|| {
                panic!(
                    "{} has no local row for {APP}\n{}",
                    name(primary),
                    self.logs()
                )
            })
            .commit
    }

    /// Waits until node `primary`'s view shows every replica in
    /// `secondaries` SYNCHRONIZED and CONNECTED (like
    /// [`Group::wait_synchronized`], for any node as primary).
    pub async fn wait_synchronized_on(
        &self,
        primary: usize,
        secondaries: &[usize],
        timeout: Duration,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let view = self.view_on(primary).await;
            let links = replica_states(&self.nodes[primary]).await;
            let pending: Vec<String> = secondaries
                .iter()
                .map(|&i| name(i))
                .filter(|n| {
                    let synced = view
                        .iter()
                        .any(|s| &s.replica == n && s.sync_state == "SYNCHRONIZED");
                    let connected = links
                        .iter()
                        .any(|l| &l.replica == n && l.connected == "CONNECTED");
                    !(synced && connected)
                })
                .collect();
            if pending.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{pending:?} not SYNCHRONIZED and CONNECTED in {}'s view within {timeout:?}\n\
                     database view: {view:#?}\nreplica view: {links:#?}\n{}",
                    name(primary),
                    self.logs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Runs `ALTER AVAILABILITY GROUP ag1 FORCE_FAILOVER_ALLOW_DATA_LOSS` on
    /// node `i` (dbname=availdb); panics with the logs when it fails.
    pub async fn force_failover(&self, i: usize) {
        let client = self.nodes[i].client(DEFAULT_DB).await;
        let sql = format!("ALTER AVAILABILITY GROUP {GROUP} FORCE_FAILOVER_ALLOW_DATA_LOSS");
        match tokio::time::timeout(STATEMENT_TIMEOUT, client.batch_execute(&sql)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{sql} on {}: {}\n{}", name(i), error_text(&e), self.logs()),
            Err(_) => panic!(
                "{sql} on {}: no answer within {STATEMENT_TIMEOUT:?}\n{}",
                name(i),
                self.logs()
            ),
        }
    }

    /// Waits until every node in `secondaries` holds all of node
    /// `primary`'s log of `app`: the primary's log end (full images
    /// included) is hardened and redone both in the secondary's own row and
    /// in the primary's row for it. The primary's row is reset when a
    /// replica reconnects, so a rejoining replica whose stale log ends far
    /// out (a former primary's divergent tail) does not count as caught up
    /// before it restarted from the primary's image. Returns the LSN.
    pub async fn wait_caught_up_to(
        &self,
        primary: usize,
        secondaries: &[usize],
        timeout: Duration,
    ) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let (_, end) = log_bounds(&self.nodes[primary], APP).await;
            let view = self.view_on(primary).await;
            let mut behind = Vec::new();
            for &i in secondaries {
                let seen = view
                    .iter()
                    .find(|s| s.replica == name(i) && !s.is_local)
                    .cloned();
                let own = self.local_state(i).await;
                let done = seen
                    .as_ref()
                    .is_some_and(|s| s.hardened >= end && s.redone >= end)
                    && own
                        .as_ref()
                        .is_some_and(|s| s.hardened >= end && s.redone >= end);
                if !done {
                    behind.push((name(i), seen, own));
                }
            }
            if behind.is_empty() {
                return end;
            }
            if Instant::now() > deadline {
                panic!(
                    "secondaries did not harden and redo {}'s log end {end} within {timeout:?}; \
                     (replica, primary's row, own row): {behind:#?}\n{}",
                    name(primary),
                    self.logs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `assert_page_identical_on` with node `primary` as the primary: waits
    /// for [`Group::wait_caught_up_to`], then compares page images.
    pub async fn assert_page_identical_to(
        &self,
        primary: usize,
        secondaries: &[usize],
        what: &str,
    ) -> usize {
        let lsn = self
            .wait_caught_up_to(primary, secondaries, CATCH_UP_TIMEOUT)
            .await;
        let expected = pages(&self.nodes[primary], APP).await;
        assert!(
            !expected.is_empty(),
            "{what}: {} has no pages",
            name(primary)
        );
        for &i in secondaries {
            let actual = pages(&self.nodes[i], APP).await;
            if let Err(diff) = compare_pages(&expected, &actual) {
                panic!(
                    "{what}: {} is not page-identical to {} at LSN {lsn}:\n{diff}\n{}",
                    name(i),
                    name(primary),
                    self.logs()
                );
            }
        }
        expected.len()
    }
}
