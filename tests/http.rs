//! The nodes' HTTP server (issue 18): real `availdb server` processes of a
//! 3-replica group (r1 primary, r2 and r3 synchronous secondaries), asked
//! over HTTP as HAProxy, Kubernetes and Prometheus do.
//!
//! Rules guarded, each by the test of the same name:
//! * every health endpoint answers 200 exactly in the roles Patroni's
//!   meanings give it, on every node, and follows a planned failover;
//! * a secondary whose data movement is suspended fails `/replica?lag=`
//!   and passes again once resumed;
//! * `/failover-readiness?max_loss=0s` fails on the primary while its only
//!   synchronous secondary is stopped and a commit was made without it
//!   (passing with a larger allowance), and passes again once it is back;
//! * `/metrics` is valid Prometheus text whose values match the `sys`
//!   views, and `/groups/NAME` and `/cluster` answer the views' rows;
//! * the POST actions run the SQL statements' code: a planned failover
//!   moves the primary, a forced failover needs its confirmation, and a
//!   node with a password wants it as a bearer token;
//! * HAProxy with the README's backend (`option httpchk GET /primary`)
//!   sends clients to the primary and follows a planned failover;
//! * the counters and histograms move: commits, commit latency and
//!   sync-commit waits after commits, lease renewals as the primary
//!   renews, failovers by kind on the new primary; process metrics and
//!   the estimated recovery time are there;
//! * on an idle primary with synchronized secondaries the lag metric
//!   stays at most 1 s for 30 s (postgres_exporter's grows without bound);
//! * the dashboard, loaded in a real headless Chromium, shows the same
//!   roles and states as the `sys` views, and a killed primary's
//!   replacement within seconds of the views;
//! * `/history` lists a planned and a forced failover, newest first, with
//!   their kind, ends, epoch and data lost, the same on every node (the
//!   cluster's replicated state), the forced one's loss exactly what the
//!   old primary committed alone.

mod common;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::cluster::{planned_failover, wait_failover_ready};
use common::group::{error_text, name, query_text, Group, GroupSpec, APP, CATCH_UP_TIMEOUT};
use common::{free_port, run_bounded, TestServer, DEFAULT_DB};

/// How long a role change may take to show on every endpoint.
const SETTLE: Duration = Duration::from_secs(30);

/// `GET path` on `server`'s HTTP port: (status, body).
async fn get(server: &TestServer, path: &str) -> (u16, String) {
    request(server, "GET", path, "", None).await
}

/// `POST path` with a JSON `body` and, if given, a bearer token.
async fn post(server: &TestServer, path: &str, body: &str, token: Option<&str>) -> (u16, String) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    request(server, "POST", path, body, Some(auth)).await
}

/// One HTTP/1.0 request: (status, body).
async fn request(
    server: &TestServer,
    method: &str,
    path: &str,
    body: &str,
    extra_headers: Option<String>,
) -> (u16, String) {
    let content = if body.is_empty() {
        String::new()
    } else {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        )
    };
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\n{content}{}\r\n{body}",
        extra_headers.unwrap_or_default()
    );
    let request = async {
        let mut stream = TcpStream::connect(("127.0.0.1", server.http_port())).await?;
        stream.write_all(head.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), request)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "GET {path} on port {}: no answer in 10 s",
                server.http_port()
            )
        })
        .unwrap_or_else(|e| panic!("GET {path} on port {}: {e}", server.http_port()));
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: not an HTTP answer: {text}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    (status, body)
}

/// Polls until `GET path` on node `i` answers `want` (bounded).
async fn wait_status(group: &Group, i: usize, path: &str, want: u16) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let (status, body) = get(&group.nodes[i], path).await;
        if status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path} on {} answered {status}, not {want}, for {SETTLE:?}: {body}\n{}",
            name(i),
            group.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The status every endpoint answers on a node in `role`.
fn expected(role: &str) -> Vec<(&'static str, u16)> {
    let primary = role == "primary";
    let pick = |yes: bool| if yes { 200 } else { 503 };
    vec![
        ("/", 200),
        ("/health", 200),
        ("/liveness", 200),
        ("/readiness", 200),
        ("/primary", pick(primary)),
        ("/read-write", pick(primary)),
        ("/replica", pick(!primary)),
        ("/replica?lag=64MB", pick(!primary)),
        ("/read-only", 200),
        ("/sync", pick(!primary)),
        ("/async", 503),
        ("/primary?group=ag1", pick(primary)),
        ("/primary?group=nope", 503),
        // Every secondary synchronized: a failover loses nothing, and a
        // synchronized secondary knows it is failover-ready.
        ("/failover-readiness?max_loss=0s", 200),
    ]
}

/// Every endpoint on every node answers as node `primary` being primary
/// says.
async fn assert_roles(group: &Group, primary: usize) {
    for i in 0..group.nodes.len() {
        let role = if i == primary { "primary" } else { "secondary" };
        for (path, want) in expected(role) {
            wait_status(group, i, path, want).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_health_endpoint_answers_by_role_and_follows_a_planned_failover() {
    let group = Group::start(3).await;
    group.wait_synchronized(&[1, 2], CATCH_UP_TIMEOUT).await;
    assert_roles(&group, 0).await;
    // Synchronized secondaries: a failover loses nothing.
    wait_status(&group, 0, "/failover-readiness?max_loss=0s", 200).await;
    let (status, body) = get(&group.nodes[0], "/failover-readiness").await;
    assert_eq!(status, 400, "max_loss is required: {body}");
    assert!(body.contains("max_loss=5s"), "{body}");
    let (status, body) = get(&group.nodes[1], "/replica?lag=fast").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("16kB"),
        "the error says how to write a lag: {body}"
    );

    planned_failover(&group, 1)
        .await
        .unwrap_or_else(|e| panic!("planned failover to r2: {e:?}\n{}", group.logs()));
    assert_roles(&group, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_suspended_secondary_fails_the_lag_check_until_resumed() {
    let group = Group::start(3).await;
    group.wait_synchronized(&[1, 2], CATCH_UP_TIMEOUT).await;
    wait_status(&group, 1, "/replica?lag=1MB", 200).await;
    let r2 = group.nodes[1].client(APP).await;
    r2.batch_execute(&format!("ALTER DATABASE {APP} SET HADR SUSPEND"))
        .await
        .expect("suspend on r2");
    let (status, body) = get(&group.nodes[1], "/replica?lag=1MB").await;
    assert_eq!(
        status, 503,
        "a suspended replica passed the lag check: {body}"
    );
    assert!(body.contains("suspended"), "{body}");
    wait_status(&group, 2, "/replica?lag=1MB", 200).await;
    r2.batch_execute(&format!("ALTER DATABASE {APP} SET HADR RESUME"))
        .await
        .expect("resume on r2");
    wait_status(&group, 1, "/replica?lag=1MB", 200).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failover_readiness_fails_while_the_synchronized_secondary_is_stopped_and_passes_once_it_is_back(
) {
    // Two replicas outside the cluster (CLUSTER_TYPE = NONE): stopping r2
    // leaves r1 primary (a two-voter cluster would lose its quorum).
    let mut group = Group::start_with(GroupSpec {
        replicas: 2,
        cluster_type: Some("NONE"),
        ..GroupSpec::default()
    })
    .await;
    let c = group.primary().client(APP).await;
    c.batch_execute("CREATE TABLE t(x INTEGER); INSERT INTO t VALUES (1)")
        .await
        .expect("write");
    group.wait_synchronized(&[1], CATCH_UP_TIMEOUT).await;
    let ready = "/failover-readiness?max_loss=0s";
    wait_status(&group, 0, ready, 200).await;

    // r2 stopped: r2 leaves the synchronized set (at once when its
    // connection closes, at the latest after the session timeout, the next
    // commit waiting until then), and a failover now would lose the commit.
    group.nodes[1].kill9();
    tokio::time::timeout(SETTLE, c.batch_execute("INSERT INTO t VALUES (2)"))
        .await
        .unwrap_or_else(|_| panic!("a commit with r2 stopped never ended\n{}", group.logs()))
        .unwrap_or_else(|e| panic!("a commit with r2 stopped: {}", error_text(&e)));
    wait_status(&group, 0, ready, 503).await;
    let (_, body) = get(&group.nodes[0], ready).await;
    assert!(body.contains("no secondary is synchronized"), "{body}");
    // The loss is the time since r2's last commit: an hour allows it.
    wait_status(&group, 0, "/failover-readiness?max_loss=1h", 200).await;

    // r2 back and caught up: ready again.
    group.nodes[1].restart().await;
    group.wait_synchronized(&[1], CATCH_UP_TIMEOUT).await;
    wait_status(&group, 0, ready, 200).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_prometheus_text_matching_the_views_and_state_is_json() {
    let group = Group::start(3).await;
    let c = group.primary().client(APP).await;
    c.batch_execute("CREATE TABLE t(x INTEGER); INSERT INTO t VALUES (1)")
        .await
        .expect("write");
    let end = group.wait_caught_up(&[1, 2], CATCH_UP_TIMEOUT).await;
    group.wait_synchronized(&[1, 2], CATCH_UP_TIMEOUT).await;

    // The cluster lists the secondaries as failover-ready a moment after
    // the primary sees them synchronized.
    let deadline = Instant::now() + SETTLE;
    let text = loop {
        let (status, text) = get(group.primary(), "/metrics").await;
        assert_eq!(status, 200, "{text}");
        let ready = |r: &str| {
            text.lines().any(|l| {
                l.starts_with("availdb_database_failover_ready{")
                    && l.contains(&format!("replica=\"{r}\""))
                    && (l.ends_with(" 1") || l.ends_with(" 1.0"))
            })
        };
        if ready("r2") && ready("r3") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "r2 and r3 not failover-ready after {SETTLE:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lines: Vec<std::io::Result<String>> = text.lines().map(|l| Ok(l.to_string())).collect();
    let scrape = prometheus_parse::Scrape::parse(lines.into_iter())
        .unwrap_or_else(|e| panic!("/metrics is not Prometheus text: {e}\n{text}"));
    let value = |metric: &str, labels: &[(&str, &str)]| -> f64 {
        let sample = scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == metric
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(k).is_some_and(|x| x == *v))
            })
            .unwrap_or_else(|| panic!("no sample {metric} {labels:?} in\n{text}"));
        match sample.value {
            prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{metric} is not a gauge: {other:?}"),
        }
    };
    assert_eq!(value("availdb_up", &[("node", "r1")]), 1.0);
    assert_eq!(
        value(
            "availdb_group_role",
            &[("group", "ag1"), ("role", "PRIMARY")]
        ),
        1.0
    );
    assert!(value("availdb_log_end_lsn", &[("database", APP)]) >= end as f64);
    for replica in ["r2", "r3"] {
        let labels = [("group", "ag1"), ("database", APP), ("replica", replica)];
        assert_eq!(value("availdb_redo_queue_bytes", &labels), 0.0, "{replica}");
        assert_eq!(
            value("availdb_database_failover_ready", &labels),
            1.0,
            "{replica}"
        );
        let mut with_state = labels.to_vec();
        with_state.push(("state", "SYNCHRONIZED"));
        assert_eq!(
            value("availdb_database_synchronization_state", &with_state),
            1.0
        );
    }
    assert_eq!(
        value(
            "availdb_estimated_data_loss_seconds",
            &[("group", "ag1"), ("database", APP)]
        ),
        0.0
    );
    let (status, text) = get(&group.nodes[1], "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        text.contains("availdb_group_role{group=\"ag1\",role=\"SECONDARY\"} 1"),
        "{text}"
    );

    let (status, body) = get(group.primary(), "/groups/ag1").await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(json["group"][0]["primary_replica"], "r1", "{body}");
    assert_eq!(json["replicas"].as_array().map(Vec::len), Some(3), "{body}");
    assert_eq!(
        json["database_replica_states"].as_array().map(Vec::len),
        Some(3)
    );
    let (status, body) = get(group.primary(), "/groups/nope").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = get(&group.nodes[2], "/cluster").await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(json["members"].as_array().map(Vec::len), Some(3), "{body}");
}

/// A test whose program is missing: SKIPPED, loudly, on a developer's
/// machine; a failure under `scripts/test` (and so in CI), which installs
/// the programs and says so with `AVAILDB_TEST_PROGRAMS=installed`, so
/// that a broken install cannot pass as a skipped test.
fn tool_missing(test: &str, why: &str) {
    if std::env::var("AVAILDB_TEST_PROGRAMS").as_deref() == Ok("installed") {
        panic!("{test}: {why}; scripts/test should have installed it: see its step 1");
    }
    eprintln!("SKIPPED {test}: {why} (scripts/test does)");
}

/// `haproxy -f FILE -db`, stopped when dropped.
struct Haproxy(std::process::Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The replica a session through `port` reached (its local replica name).
async fn reached(port: u16) -> Result<String, String> {
    let conn = format!("host=127.0.0.1 port={port} user=availdb dbname={APP} connect_timeout=3");
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let rows = query_text(
        &client,
        "SELECT replica FROM sys.dm_hadr_availability_replica_states WHERE is_local",
    )
    .await
    .map_err(|e| error_text(&e))?;
    rows.first()
        .and_then(|r| r[0].clone())
        .ok_or_else(|| "no local replica".to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn haproxy_with_the_documented_health_check_routes_to_the_primary_and_follows_a_failover() {
    let test =
        "haproxy_with_the_documented_health_check_routes_to_the_primary_and_follows_a_failover";
    if std::process::Command::new("haproxy")
        .arg("-v")
        .output()
        .is_err()
    {
        return tool_missing(
            test,
            "haproxy cannot be run; install it (Debian: apt-get install haproxy)",
        );
    }
    let group = Group::start(3).await;
    group.wait_synchronized(&[1, 2], CATCH_UP_TIMEOUT).await;
    let front = free_port();
    let servers: String = group
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            format!(
                "    server {} 127.0.0.1:{} check port {}\n",
                name(i),
                n.port(),
                n.http_port()
            )
        })
        .collect();
    // The README's backend, with a faster check interval.
    let config = format!(
        "global\n    maxconn 100\n\
         defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 60s\n    timeout server 60s\n\
         frontend availdb\n    bind 127.0.0.1:{front}\n    default_backend availdb_primary\n\
         backend availdb_primary\n    option httpchk GET /primary\n    http-check expect status 200\n\
         \x20   default-server inter 200ms fall 2 rise 1 on-marked-down shutdown-sessions\n{servers}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, &config).unwrap();
    let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
    let _haproxy = Haproxy(
        std::process::Command::new("haproxy")
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start haproxy"),
    );
    let haproxy_log =
        || std::fs::read_to_string(dir.path().join("haproxy.log")).unwrap_or_default();
    for want in ["r1", "r2"] {
        let deadline = Instant::now() + SETTLE;
        loop {
            match reached(front).await {
                Ok(r) if r == want => break,
                other => assert!(
                    Instant::now() < deadline,
                    "through HAProxy: {other:?}, not {want}, after {SETTLE:?}\n{config}\n{}\n{}",
                    haproxy_log(),
                    group.logs()
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if want == "r1" {
            planned_failover(&group, 1)
                .await
                .unwrap_or_else(|e| panic!("planned failover to r2: {e:?}\n{}", group.logs()));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_actions_fail_over_suspend_and_resume_like_their_sql_and_need_the_password() {
    let group = Group::start(3).await;
    group.wait_synchronized(&[1, 2], CATCH_UP_TIMEOUT).await;
    let (status, body) = post(&group.nodes[1], "/groups/ag1/force-failover", "{}", None).await;
    assert_eq!(
        status, 400,
        "a forced failover without its confirmation: {body}"
    );
    assert!(body.contains("FORCE_FAILOVER_ALLOW_DATA_LOSS"), "{body}");
    let (status, body) = post(&group.nodes[1], "/groups/nope/failover", "", None).await;
    assert!(
        status == 404 || status == 400,
        "an unknown group: {status} {body}"
    );
    let (status, body) = post(&group.nodes[2], "/databases/app/suspend", "", None).await;
    assert_eq!(status, 200, "{body}");
    wait_status(&group, 2, "/replica", 503).await;
    let (status, body) = post(&group.nodes[2], "/databases/app/resume", "", None).await;
    assert_eq!(status, 200, "{body}");
    wait_status(&group, 2, "/replica", 200).await;
    group.wait_synchronized(&[1, 2], CATCH_UP_TIMEOUT).await;
    // The cluster lists r2 as synchronized again a moment after the
    // primary sees it: until then the failover is refused with 409.
    let deadline = Instant::now() + SETTLE;
    loop {
        let (status, body) = post(&group.nodes[1], "/groups/ag1/failover", "", None).await;
        if status == 200 {
            break;
        }
        assert!(
            status == 409 && body.contains("55000") && Instant::now() < deadline,
            "planned failover to r2: {status} {body}\n{}",
            group.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_status(&group, 1, "/primary", 200).await;
    wait_status(&group, 0, "/replica", 200).await;

    let secured = TestServer::builder().password("s3cret").start().await;
    let (status, body) = post(&secured, "/databases/availdb/suspend", "", None).await;
    assert_eq!(status, 401, "no token: {body}");
    let (status, body) = post(&secured, "/databases/availdb/suspend", "", Some("wrong")).await;
    assert_eq!(status, 401, "a wrong token: {body}");
    let (status, body) = post(&secured, "/databases/availdb/suspend", "", Some("s3cret")).await;
    assert_ne!(status, 401, "the right token passes authentication: {body}");
    let (status, _) = get(&secured, "/health").await;
    assert_eq!(status, 200, "reading needs no token");
}

/// Runs `sql` on node `i`'s database `db`, panicking with the logs.
async fn run_on(group: &Group, i: usize, db: &str, sql: &str) {
    let client = group.nodes[i].client(db).await;
    if let Err(e) = client.batch_execute(sql).await {
        panic!("{sql} on {}: {}\n{}", name(i), error_text(&e), group.logs());
    }
}

/// Node `i`'s `/history`: (epoch, kind, from, to, data lost, has a time),
/// newest first.
async fn history(
    group: &Group,
    i: usize,
) -> Vec<(i64, String, String, String, Option<String>, bool)> {
    let (status, body) = get(&group.nodes[i], "/history").await;
    assert_eq!(status, 200, "/history on {}: {body}", name(i));
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    json["failovers"]
        .as_array()
        .unwrap_or_else(|| panic!("no failovers array: {body}"))
        .iter()
        .map(|f| {
            let text = |k: &str| f[k].as_str().unwrap_or_default().to_string();
            (
                f["epoch"].as_i64().unwrap_or(-1),
                text("kind_desc"),
                text("from_replica"),
                text("to_replica"),
                f["data_lost"].as_str().map(str::to_string),
                f["failover_time"].is_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn history_lists_a_planned_and_a_forced_failover_with_their_data_lost_on_every_node() {
    let mut group = Group::start(3).await;
    group.wait_synchronized(&[1, 2], CATCH_UP_TIMEOUT).await;
    assert_eq!(history(&group, 0).await, Vec::new(), "no failover yet");

    // Planned: r1 -> r2 (refused with 55000 until the cluster lists r2 as
    // synchronized).
    let deadline = Instant::now() + SETTLE;
    while let Err((state, message)) = planned_failover(&group, 1).await {
        assert!(
            state == "55000" && Instant::now() < deadline,
            "planned failover to r2: {state} {message}\n{}",
            group.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    group.wait_takes_writes(1, SETTLE).await;

    // A tail only r2 has: committed after SUSPEND stopped shipping.
    run_on(
        &group,
        1,
        APP,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'kept')",
    )
    .await;
    let before = group.wait_caught_up_to(1, &[0, 2], CATCH_UP_TIMEOUT).await;
    run_on(
        &group,
        1,
        DEFAULT_DB,
        &format!("ALTER DATABASE {APP} SET HADR SUSPEND"),
    )
    .await;
    for id in 2..=6 {
        run_on(
            &group,
            1,
            APP,
            &format!("INSERT INTO t VALUES ({id}, 'lost')"),
        )
        .await;
    }
    let after = group.commit_lsn_on(1).await;
    assert!(after > before, "the tail did not move r2's last commit");

    // Forced: r2 dies, r1 takes over; r2 comes back and its tail is compared.
    group.nodes[1].kill9();
    group.force_failover(0).await;
    run_on(
        &group,
        0,
        DEFAULT_DB,
        &format!("ALTER DATABASE {APP} SET HADR RESUME"),
    )
    .await;
    group.nodes[1].restart().await;

    let lost = format!("{APP}: LSN {before}..{after}");
    let want = vec![
        (
            3,
            "FORCED".to_string(),
            "r2".to_string(),
            "r1".to_string(),
            Some(lost),
            true,
        ),
        (
            2,
            "PLANNED".to_string(),
            "r1".to_string(),
            "r2".to_string(),
            Some("none".to_string()),
            true,
        ),
    ];
    for i in 0..3 {
        let deadline = Instant::now() + CATCH_UP_TIMEOUT;
        loop {
            let got = history(&group, i).await;
            if got == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "/history on {} after {CATCH_UP_TIMEOUT:?}: {got:#?}, not {want:#?}\n{}",
                name(i),
                group.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let (_, body) = get(&group.nodes[2], "/history").await;
    eprintln!("/history on r3: {body}");
    let (status, body) = get(&group.nodes[2], "/history?group=nope").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"failovers\":[]"),
        "another group's history is empty: {body}"
    );
    // The same rows through SQL.
    let r3 = group.nodes[2].client(DEFAULT_DB).await;
    let rows = query_text(
        &r3,
        "SELECT kind_desc, from_replica, to_replica FROM sys.dm_hadr_failover_history ORDER BY epoch",
    )
    .await
    .expect("sys.dm_hadr_failover_history");
    let rows: Vec<Vec<Option<String>>> = rows;
    assert_eq!(
        rows,
        vec![
            vec![Some("PLANNED".into()), Some("r1".into()), Some("r2".into())],
            vec![Some("FORCED".into()), Some("r2".into()), Some("r1".into())],
        ]
    );
}

/// Node `i`'s `/metrics`, parsed (panics with the text when it is not
/// Prometheus text).
async fn scrape(group: &Group, i: usize) -> prometheus_parse::Scrape {
    let (status, text) = get(&group.nodes[i], "/metrics").await;
    assert_eq!(status, 200, "/metrics on {}: {text}", name(i));
    let lines: Vec<std::io::Result<String>> = text.lines().map(|l| Ok(l.to_string())).collect();
    prometheus_parse::Scrape::parse(lines.into_iter()).unwrap_or_else(|e| {
        panic!(
            "/metrics of {} is not Prometheus text: {e}\n{text}",
            name(i)
        )
    })
}

/// The value of `metric` with (at least) `labels`, when there is one.
fn sample(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == metric
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(k).is_some_and(|x| x == *v))
        })
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{metric} is not a number: {other:?}"),
        })
}

/// The observations of histogram `metric`: its `+Inf` bucket, checked
/// against its `_count` and for cumulative buckets.
fn observations(scrape: &prometheus_parse::Scrape, metric: &str) -> f64 {
    let buckets = scrape
        .samples
        .iter()
        .find_map(|s| match (&s.value, s.metric == metric) {
            (prometheus_parse::Value::Histogram(b), true) => Some(b.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no histogram {metric}"));
    assert!(
        buckets.windows(2).all(|w| w[0].count <= w[1].count),
        "{metric}'s buckets are not cumulative: {buckets:?}"
    );
    let all = buckets.last().map_or(0.0, |b| b.count);
    let count = sample(scrape, &format!("{metric}_count"), &[]);
    assert_eq!(
        count,
        Some(all),
        "{metric}: _count and the +Inf bucket differ"
    );
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn counters_and_histograms_move_with_commits_lease_renewals_and_a_failover() {
    let group = Group::start(3).await;
    group.wait_synchronized(&[1, 2], CATCH_UP_TIMEOUT).await;
    let before = scrape(&group, 0).await;
    let commits =
        |s: &prometheus_parse::Scrape| sample(s, "availdb_commits_total", &[]).unwrap_or(0.0);
    let renewals = |s: &prometheus_parse::Scrape| {
        sample(s, "availdb_lease_renewals_total", &[]).expect("availdb_lease_renewals_total")
    };
    let c = group.primary().client(APP).await;
    c.batch_execute("CREATE TABLE t(x BIGINT)")
        .await
        .expect("create");
    for x in 0..10i64 {
        c.execute("INSERT INTO t VALUES ($1)", &[&x])
            .await
            .expect("insert");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = scrape(&group, 0).await;
    assert!(
        commits(&after) >= commits(&before) + 11.0,
        "11 commits: {} -> {}",
        commits(&before),
        commits(&after)
    );
    let statements =
        |s: &prometheus_parse::Scrape| sample(s, "availdb_statements_total", &[]).unwrap_or(0.0);
    assert!(
        statements(&after) >= statements(&before) + 11.0,
        "11 statements: {} -> {}",
        statements(&before),
        statements(&after)
    );
    for h in [
        "availdb_commit_duration_seconds",
        "availdb_sync_commit_wait_seconds",
    ] {
        assert!(
            observations(&after, h) >= observations(&before, h) + 11.0,
            "{h} did not count the 11 synchronous commits"
        );
    }
    assert!(
        renewals(&after) > renewals(&before),
        "the primary renews its lease several times a second"
    );
    assert!(sample(&after, "availdb_cluster_elections_total", &[]).is_some_and(|e| e >= 1.0));
    assert!(sample(&after, "process_cpu_seconds_total", &[]).is_some_and(|v| v > 0.0));
    assert!(sample(&after, "process_open_fds", &[]).is_some_and(|v| v > 3.0));
    assert!(sample(&after, "process_threads", &[]).is_some_and(|v| v >= 2.0));
    group.wait_caught_up(&[1, 2], CATCH_UP_TIMEOUT).await;
    let caught_up = scrape(&group, 0).await;
    assert_eq!(
        sample(
            &caught_up,
            "availdb_estimated_recovery_time_seconds",
            &[("replica", "r2")]
        ),
        Some(0.0),
        "a caught-up replica has nothing to redo"
    );
    // Only the new primary counts a failover, by its kind.
    assert_eq!(sample(&after, "availdb_failovers_total", &[]), None);
    wait_failover_ready(&group, 0, &[1, 2]).await;
    planned_failover(&group, 1)
        .await
        .unwrap_or_else(|e| panic!("planned failover to r2: {e:?}\n{}", group.logs()));
    let deadline = Instant::now() + SETTLE;
    loop {
        let r2 = scrape(&group, 1).await;
        if sample(&r2, "availdb_failovers_total", &[("kind", "PLANNED")]) == Some(1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "r2 did not count its planned failover in {SETTLE:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r1 = scrape(&group, 0).await;
    assert_eq!(
        sample(&r1, "availdb_failovers_total", &[]),
        None,
        "r1 was not promoted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lag_metric_stays_under_a_second_on_an_idle_primary_for_30_seconds() {
    let group = Group::start(3).await;
    let c = group.primary().client(APP).await;
    c.batch_execute("CREATE TABLE t(x INTEGER); INSERT INTO t VALUES (1)")
        .await
        .expect("write");
    group.wait_synchronized(&[1, 2], CATCH_UP_TIMEOUT).await;
    let started = Instant::now();
    let mut worst: f64 = 0.0;
    let mut scrapes = 0;
    while started.elapsed() < Duration::from_secs(30) {
        let s = scrape(&group, 0).await;
        for replica in ["r2", "r3"] {
            let labels = [("database", APP), ("replica", replica)];
            let lag = sample(&s, "availdb_secondary_lag_seconds", &labels)
                .unwrap_or_else(|| panic!("no lag of {replica} after {:?}", started.elapsed()));
            worst = worst.max(lag);
            assert!(
                lag <= 1.0,
                "the lag of idle {replica} is {lag} s after {:?} of idleness",
                started.elapsed()
            );
        }
        scrapes += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!("idle primary: {scrapes} scrapes over 30 s, largest lag {worst} s");
}

/// Chromium's name, when it can be run here.
fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|c| {
        std::process::Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// The page at `url` after Chromium ran its script for a few seconds
/// (virtual time: the page polls once a second), as HTML; with
/// `screenshot`, saved there as PNG after a longer while (the sparklines
/// fill).
async fn render(
    browser: &'static str,
    url: String,
    screenshot: Option<std::path::PathBuf>,
) -> String {
    tokio::task::spawn_blocking(move || {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut cmd = std::process::Command::new(browser);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--window-size=1600,520",
        ])
        .arg(match screenshot {
            Some(_) => "--virtual-time-budget=30000",
            None => "--virtual-time-budget=3000",
        })
        .arg(format!("--user-data-dir={}", profile.path().display()));
        match &screenshot {
            Some(path) => cmd.arg(format!("--screenshot={}", path.display())),
            None => cmd.arg("--dump-dom"),
        };
        let out = run_bounded(cmd.arg(&url), Duration::from_secs(60));
        assert!(
            out.status.success(),
            "{browser} on {url}: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    })
    .await
    .expect("chromium")
}

/// A replica's row: (replica, role, connection, synchronization state,
/// failover ready).
type Row = (String, String, String, String, String);

/// The dashboard's replica rows, from the `data-*` attributes of its
/// `<tr>`s.
fn dashboard_rows(html: &str) -> Vec<Row> {
    let mut rows: Vec<_> = html
        .split("<tr ")
        .skip(1)
        .filter_map(|tag| {
            let tag = &tag[..tag.find('>')?];
            let attr = |k: &str| {
                let at = tag.find(&format!("{k}=\""))? + k.len() + 2;
                Some(tag[at..at + tag[at..].find('"')?].to_string())
            };
            Some((
                attr("data-replica")?,
                attr("data-role")?,
                attr("data-connection")?,
                attr("data-state")?,
                attr("data-failover-ready")?,
            ))
        })
        .collect();
    rows.sort();
    rows
}

/// The same as [`dashboard_rows`], from node `i`'s `sys` views.
async fn view_rows(group: &Group, i: usize) -> Vec<Row> {
    let client = group.nodes[i].client(DEFAULT_DB).await;
    let rows = query_text(
        &client,
        "SELECT d.replica, r.role_desc, r.connected_state_desc, d.synchronization_state_desc,
                CASE WHEN d.is_primary_replica THEN '—'
                     WHEN d.is_failover_ready THEN 'yes' ELSE 'no' END
         FROM sys.dm_hadr_database_replica_states d
         JOIN sys.dm_hadr_availability_replica_states r
           ON r.group_id = d.group_id AND r.replica = d.replica
         ORDER BY d.replica",
    )
    .await
    .expect("the views");
    rows.into_iter()
        .map(|r| {
            let t = |k: usize| r[k].clone().unwrap_or_default();
            (t(0), t(1), t(2), t(3), t(4))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_in_chromium_matches_the_views_and_shows_a_killed_primary_within_seconds() {
    let test =
        "the_dashboard_in_chromium_matches_the_views_and_shows_a_killed_primary_within_seconds";
    let Some(browser) = chromium() else {
        return tool_missing(
            test,
            "chromium cannot be run; install it (Debian: apt-get install chromium)",
        );
    };
    let mut group = Group::start_with(GroupSpec {
        automatic: true,
        ..GroupSpec::default()
    })
    .await;
    let c = group.primary().client(APP).await;
    c.batch_execute("CREATE TABLE t(x INTEGER); INSERT INTO t VALUES (1)")
        .await
        .expect("write");
    wait_failover_ready(&group, 0, &[1, 2]).await;
    // One page, nothing fetched from elsewhere; `/` is the page for a
    // browser (Chromium asks for text/html below) and `/health` otherwise.
    let (status, page) = get(&group.nodes[0], "/dashboard").await;
    assert_eq!(status, 200, "{page}");
    for external in ["src=", "href=", "url(", "@import"] {
        assert!(
            !page.contains(external),
            "the dashboard loads an external asset ({external}):\n{page}"
        );
    }
    let (status, body) = get(&group.nodes[0], "/").await;
    assert!(status == 200 && body.contains("\"status\""), "{body}");
    let ports: Vec<u16> = group.nodes.iter().map(|n| n.http_port()).collect();
    let url = |i: usize| format!("http://127.0.0.1:{}/", ports[i]);

    // The page shows what the views say (polled: a state may move between
    // the two reads).
    let deadline = Instant::now() + SETTLE;
    loop {
        let page = render(browser, url(0), None).await;
        assert!(
            page.contains("data-loaded=\"yes\""),
            "the script did not run:\n{page}"
        );
        assert!(page.contains("id=\"history\""), "{page}");
        let (shown, viewed) = (dashboard_rows(&page), view_rows(&group, 0).await);
        assert_eq!(shown.len(), 3, "one row per replica of {APP}:\n{page}");
        if shown == viewed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard shows {shown:#?}, the views {viewed:#?}"
        );
    }

    // r1 dies: the cluster names r2 or r3; the page served by the survivors
    // shows it soon after their views do.
    group.nodes[0].kill9();
    let killed = Instant::now();
    let promoted = |rows: &[Row]| {
        rows.iter()
            .any(|(r, role, ..)| r != "r1" && role == "PRIMARY")
            && rows
                .iter()
                .any(|(r, _, connection, ..)| r == "r1" && connection == "DISCONNECTED")
    };
    let mut in_views = None;
    let mut seen = Vec::new();
    let (new, in_page) = loop {
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "no new primary on the dashboard 60 s after r1 was killed; last seen (views, page): {seen:#?}\n{}",
            group.logs()
        );
        let mut found = None;
        seen.clear();
        for i in [1, 2] {
            let viewed = view_rows(&group, i).await;
            if in_views.is_none() && promoted(&viewed) {
                in_views = Some(killed.elapsed());
            }
            let shown = dashboard_rows(&render(browser, url(i), None).await);
            if promoted(&shown) {
                found = Some(i);
            }
            seen.push((name(i), viewed, shown));
        }
        if let Some(i) = found {
            break (i, killed.elapsed());
        }
    };
    let in_views = in_views.unwrap_or(in_page);
    eprintln!(
        "r1 killed: the views of the new primary {} showed it after {in_views:?}, the dashboard after {in_page:?}",
        name(new)
    );
    assert!(
        in_page <= in_views + Duration::from_secs(10),
        "the dashboard showed the new primary {:?} after the views did",
        in_page - in_views
    );

    // AVAILDB_DASHBOARD_SCREENSHOT=docs/dashboard.png: r1 back, the history
    // showing the automatic failover.
    if let Ok(path) = std::env::var("AVAILDB_DASHBOARD_SCREENSHOT") {
        group.nodes[0].restart().await;
        let others: Vec<usize> = [0, 1, 2].into_iter().filter(|&i| i != new).collect();
        group
            .wait_synchronized_on(new, &others, CATCH_UP_TIMEOUT)
            .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        render(browser, url(new), Some(path.clone())).await;
        eprintln!("screenshot saved to {}", path.display());
    }
}
