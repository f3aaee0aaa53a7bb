//! Partner mutual TLS (issue 19), with real `availdb` processes on
//! loopback: certificates made by `availdb cert init | issue`, every
//! connection between nodes (Raft, replication, listener forwards) under
//! TLS, partners without a certificate of the cluster CA refused at the
//! endpoint and counted in `sys.dm_hadr_partner_refusals`, and the CA
//! rotated while the group keeps committing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use common::cluster::planned_failover;
use common::group::{error_text, exec, name, query_text, Group, GroupSpec, InsertLoad, APP, GROUP};
use common::{free_port, run_bounded, TestServer, DEFAULT_DB};

const WAIT: Duration = Duration::from_secs(60);

/// Runs `availdb ARGS`; panics with its output unless it succeeds.
fn availdb(args: &[&str]) -> String {
    let out = run_bounded(
        Command::new(common::availdb_bin()).args(args),
        Duration::from_secs(30),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "availdb {args:?}: {text}");
    text
}

/// A CA in `dir` (`availdb cert init`).
fn ca(dir: &Path) -> PathBuf {
    availdb(&["cert", "init", "--dir", &dir.display().to_string()]);
    dir.join("ca.pem")
}

/// `name`'s certificate for 127.0.0.1 from the CA in `ca_dir`, into `out`,
/// with more `availdb cert issue` options.
fn issue(ca_dir: &Path, name: &str, out: &Path, more: &[&str]) {
    let (ca_dir, out) = (ca_dir.display().to_string(), out.display().to_string());
    let mut args = vec![
        "cert",
        "issue",
        "--ca-dir",
        &ca_dir,
        "--name",
        name,
        "--host",
        "127.0.0.1",
        "--out",
        &out,
    ];
    args.extend_from_slice(more);
    availdb(&args);
}

/// Writes the CAs' certificates into one PEM file (what `--partner-ca`
/// points at, so a SIGHUP can change what a node trusts).
fn trust(file: &Path, cas: &[&Path]) {
    let pems: Vec<String> = cas
        .iter()
        .map(|ca| std::fs::read_to_string(ca).unwrap())
        .collect();
    std::fs::write(file, pems.concat()).unwrap();
}

/// The partner TLS options of a node whose files are `DIR/NAME.pem`,
/// `DIR/NAME.key`, trusting `DIR/trusted.pem` (`{replica}`: the group
/// harness puts each node's name there).
fn tls_args(dir: &Path, name: &str) -> Vec<String> {
    let d = dir.display();
    vec![
        "--partner-tls-cert".into(),
        format!("{d}/{name}.pem"),
        "--partner-tls-key".into(),
        format!("{d}/{name}.key"),
        "--partner-ca".into(),
        format!("{d}/trusted.pem"),
        "--partner-crl".into(),
        format!("{d}/crl.pem"),
    ]
}

/// Gives the nodes whose files are in `dir` the revocation list of the CA
/// in `ca_dir` (what an operator copies to the nodes).
fn distribute_crl(ca_dir: &Path, dir: &Path) {
    std::fs::copy(ca_dir.join("crl.pem"), dir.join("crl.pem")).unwrap();
}

/// A cluster CA and a certificate per replica, all in one directory.
struct Certs {
    dir: TempDir,
    ca_dir: PathBuf,
}

impl Certs {
    fn new(replicas: usize) -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca1");
        let ca_pem = ca(&ca_dir);
        for i in 0..replicas {
            issue(&ca_dir, &name(i), dir.path(), &[]);
        }
        trust(&dir.path().join("trusted.pem"), &[&ca_pem]);
        distribute_crl(&ca_dir, dir.path());
        Certs { dir, ca_dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A group of `replicas` nodes with these certificates.
    async fn group(&self, replicas: usize) -> Group {
        let group = Group::start_with(GroupSpec {
            replicas,
            args: tls_args(self.path(), "{replica}"),
            ..GroupSpec::default()
        })
        .await;
        for node in &group.nodes {
            assert!(
                node.log().contains("partner connections use mutual TLS"),
                "{}",
                node.log_tail()
            );
        }
        group
    }
}

/// `(count, last reason)` of one kind in `sys.dm_hadr_partner_refusals`.
async fn refusals(server: &TestServer, kind: &str) -> (u64, String) {
    let client = server.client(DEFAULT_DB).await;
    let sql = format!(
        "SELECT refused_count, last_refused_reason FROM sys.dm_hadr_partner_refusals \
         WHERE partner_type_desc = '{kind}'"
    );
    let rows = query_text(&client, &sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e)));
    assert_eq!(rows.len(), 1, "one row for {kind}: {rows:?}");
    (
        rows[0][0].as_deref().unwrap_or("0").parse().unwrap(),
        rows[0][1].clone().unwrap_or_default(),
    )
}

/// Waits until `server` has counted a refusal of `kind` whose reason
/// contains `reason`; returns the reason.
async fn wait_refusal(
    server: &TestServer,
    kind: &str,
    reason: &str,
    logs: impl Fn() -> String,
) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (count, last) = refusals(server, kind).await;
        if count > 0 && last.contains(reason) {
            return last;
        }
        assert!(
            Instant::now() < deadline,
            "no {kind} refusal with {reason:?} within {WAIT:?} (last: {count}, {last:?})\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A node outside the group (`r1` of its own group `ag1`, with no cluster)
/// whose primary replicates to `target`'s endpoint: its partner
/// connections reach `target`'s endpoint over and over.
async fn foreign_primary(args: &[String], target_endpoint: u16) -> TestServer {
    let x_endpoint = free_port();
    let mut builder = TestServer::builder().replica("r1", x_endpoint);
    for arg in args {
        builder = builder.arg(arg);
    }
    let x = builder.start().await;
    let create = format!(
        "CREATE DATABASE {APP}; CREATE AVAILABILITY GROUP {GROUP} WITH (CLUSTER_TYPE = NONE) \
         FOR DATABASE {APP} REPLICA ON \
         'r1' WITH (ENDPOINT_URL = 'tcp://127.0.0.1:{x_endpoint}', AVAILABILITY_MODE = ASYNCHRONOUS_COMMIT, FAILOVER_MODE = MANUAL), \
         'r2' WITH (ENDPOINT_URL = 'tcp://127.0.0.1:{target_endpoint}', AVAILABILITY_MODE = ASYNCHRONOUS_COMMIT, FAILOVER_MODE = MANUAL)"
    );
    x.client(DEFAULT_DB)
        .await
        .batch_execute(&create)
        .await
        .unwrap_or_else(|e| panic!("{create}: {}\n{}", error_text(&e), x.log_tail()));
    x
}

/// The group still commits on r1 and r2 receives it.
async fn assert_unharmed(group: &Group, id: i64) {
    let r1 = group.nodes[0].client(APP).await;
    r1.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS t (id integer PRIMARY KEY); INSERT INTO t VALUES ({id})"
    ))
    .await
    .unwrap_or_else(|e| panic!("r1: {}\n{}", error_text(&e), group.logs()));
    wait_rows(group, 1, 1, &format!("SELECT id FROM t WHERE id = {id}")).await;
}

/// Waits until `sql` on node `i`'s `app` returns `n` rows (a table not
/// replicated yet counts as none).
async fn wait_rows(group: &Group, i: usize, n: usize, sql: &str) {
    let client = group.nodes[i].client(APP).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let rows = query_text(&client, sql).await;
        if matches!(&rows, Ok(r) if r.len() == n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not return {n} rows for {sql}: {rows:?}\n{}",
            name(i),
            group.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Connects to `endpoint` as a partner that trusts `ca` and presents the
/// certificate `NAME.pem`/`NAME.key` in `dir` whatever its validity (a
/// node refuses to start with an expired one, so the test plays it).
async fn raw_partner(endpoint: u16, ca: &Path, dir: &Path, name: &str) {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        vec![CertificateDer::from_pem_file(dir.join(format!("{name}.pem"))).unwrap()],
        PrivateKeyDer::from_pem_file(dir.join(format!("{name}.key"))).unwrap(),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", endpoint))
        .await
        .unwrap();
    let server = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    // TLS 1.3: the endpoint's verdict on the certificate comes with the
    // first read, as an alert.
    let outcome = async {
        let mut stream = connector.connect(server, tcp).await?;
        stream.write_all(b"AVRC").await?;
        let mut byte = [0u8; 1];
        stream.read(&mut byte).await
    };
    let outcome = tokio::time::timeout(Duration::from_secs(10), outcome).await;
    assert!(
        !matches!(outcome, Ok(Ok(n)) if n > 0),
        "the endpoint answered a partner with {name}'s certificate"
    );
}

/// Every partner connection of a group with partner TLS is mutual TLS:
/// the secondaries synchronize, sessions through the listener reach the
/// primary, a planned failover completes and the new primary's writes
/// replicate, and no node refused a handshake on the way.
#[tokio::test(flavor = "multi_thread")]
async fn a_group_with_partner_tls_replicates_fails_over_and_forwards_listener_sessions() {
    let certs = Certs::new(3);
    let group = certs.group(3).await;
    let (rw, ro) = (free_port(), free_port());
    exec(
        &group.nodes[0].client(DEFAULT_DB).await,
        &format!("ALTER AVAILABILITY GROUP {GROUP} ADD LISTENER '{GROUP}-listener' (PORT = {rw}, READ_ONLY_PORT = {ro})"),
        "r1",
    )
    .await;
    let through_listener = format!("host=127.0.0.1 port={rw} user=availdb dbname={APP}");
    let insert = |id: i64| {
        let conn = through_listener.clone();
        async move {
            let deadline = Instant::now() + WAIT;
            loop {
                let tried = async {
                    let client = common::connect(&conn).await?;
                    client
                        .batch_execute(&format!(
                            "CREATE TABLE IF NOT EXISTS t (id integer PRIMARY KEY); INSERT INTO t VALUES ({id})"
                        ))
                        .await
                }
                .await;
                match tried {
                    Ok(()) => return,
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => panic!("insert {id} through the listener: {}", error_text(&e)),
                }
            }
        }
    };
    insert(1).await;
    group.wait_synchronized(&[1, 2], WAIT).await;
    planned_failover(&group, 1)
        .await
        .unwrap_or_else(|e| panic!("failover to r2: {e:?}\n{}", group.logs()));
    group.wait_takes_writes(1, WAIT).await;
    insert(2).await;
    for i in [0, 2] {
        wait_rows(&group, i, 2, "SELECT id FROM t").await;
    }
    for node in &group.nodes {
        for kind in ["TLS_ACCEPT", "TLS_CONNECT"] {
            assert_eq!(refusals(node, kind).await.0, 0, "{kind}\n{}", group.logs());
        }
    }
}

/// A node whose certificate another CA signed is refused at the endpoint
/// (`unknown CA`), logged and counted, and the group goes on. (The
/// foreign node trusts the group's CA too, so the refusal is the group's
/// verdict on its certificate, not its verdict on the group's.)
#[tokio::test(flavor = "multi_thread")]
async fn a_node_with_a_certificate_of_another_ca_is_refused_and_the_group_is_unharmed() {
    let certs = Certs::new(2);
    let group = certs.group(2).await;
    let other = tempfile::tempdir().unwrap();
    let other_ca = ca(&other.path().join("ca"));
    issue(&other.path().join("ca"), "x", other.path(), &[]);
    trust(
        &other.path().join("trusted.pem"),
        &[&other_ca, &certs.ca_dir.join("ca.pem")],
    );
    distribute_crl(&other.path().join("ca"), other.path());
    let x = foreign_primary(&tls_args(other.path(), "x"), group.endpoints[1]).await;
    let reason = wait_refusal(&group.nodes[1], "TLS_ACCEPT", "unknown CA", || {
        format!("{}\n===== x =====\n{}", group.logs(), x.log_tail())
    })
    .await;
    assert!(reason.contains("from 127.0.0.1"), "{reason}");
    assert!(
        group.nodes[1]
            .log()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("partner connection refused: unknown CA")),
        "r2 logs the refusal\n{}",
        group.nodes[1].log_tail()
    );
    // The foreign node learns why, in its own view.
    wait_refusal(&x, "TLS_CONNECT", "refused this node's certificate", || {
        x.log_tail()
    })
    .await;
    assert_unharmed(&group, 1).await;
}

/// A partner in plaintext reaching a TLS endpoint is refused (`no TLS`);
/// a TLS partner reaching a plaintext endpoint is refused too: the two
/// configurations never mix.
#[tokio::test(flavor = "multi_thread")]
async fn a_plaintext_partner_is_refused_by_a_tls_endpoint_and_the_other_way_round() {
    let certs = Certs::new(2);
    let group = certs.group(2).await;
    let plain = foreign_primary(&[], group.endpoints[1]).await;
    wait_refusal(&group.nodes[1], "TLS_ACCEPT", "no TLS", || {
        format!(
            "{}\n===== plaintext x =====\n{}",
            group.logs(),
            plain.log_tail()
        )
    })
    .await;
    assert_unharmed(&group, 1).await;

    // A plaintext node, and a node with the group's CA replicating to it.
    let plain_endpoint = free_port();
    let plaintext_node = TestServer::builder()
        .replica("r2", plain_endpoint)
        .start()
        .await;
    issue(&certs.ca_dir, "x", certs.path(), &[]);
    let tls_x = foreign_primary(&tls_args(certs.path(), "x"), plain_endpoint).await;
    wait_refusal(
        &plaintext_node,
        "TLS_ACCEPT",
        "TLS from a partner of a node without partner TLS",
        || {
            format!(
                "{}\n===== tls x =====\n{}",
                plaintext_node.log_tail(),
                tls_x.log_tail()
            )
        },
    )
    .await;
    wait_refusal(&tls_x, "TLS_CONNECT", "without partner TLS", || {
        tls_x.log_tail()
    })
    .await;
}

/// An expired certificate is refused: a node will not start with one
/// (it says so), and the endpoint refuses a partner presenting one
/// (`expired certificate`).
#[tokio::test(flavor = "multi_thread")]
async fn an_expired_certificate_is_refused() {
    let certs = Certs::new(2);
    issue(
        &certs.ca_dir,
        "old",
        certs.path(),
        &["--days", "1", "--backdate-days", "3"],
    );
    let mut builder = TestServer::builder().replica("old", free_port());
    for arg in tls_args(certs.path(), "old") {
        builder = builder.arg(&arg);
    }
    let failed = builder.start_expecting_exit().await;
    assert!(
        failed.log.contains("expired certificate") && failed.log.contains("availdb cert issue"),
        "{}",
        failed.log
    );

    let group = certs.group(2).await;
    raw_partner(
        group.endpoints[1],
        &certs.ca_dir.join("ca.pem"),
        certs.path(),
        "old",
    )
    .await;
    wait_refusal(&group.nodes[1], "TLS_ACCEPT", "expired certificate", || {
        group.logs()
    })
    .await;
    assert_unharmed(&group, 1).await;
}

/// A revoked certificate is refused once the nodes have the CA's new
/// revocation list (`availdb cert revoke`, copied, SIGHUP), and the group
/// goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_certificate_is_refused_once_the_nodes_reload_the_revocation_list() {
    let certs = Certs::new(2);
    issue(&certs.ca_dir, "spare", certs.path(), &[]);
    let group = certs.group(2).await;
    let out = availdb(&[
        "cert",
        "revoke",
        "--dir",
        &certs.ca_dir.display().to_string(),
        "--name",
        "spare",
    ]);
    assert!(out.contains("now lists 1"), "{out}");
    distribute_crl(&certs.ca_dir, certs.path());
    for node in &group.nodes {
        node.signal("HUP");
    }
    let deadline = Instant::now() + WAIT;
    for node in &group.nodes {
        while !node.log().contains("partner TLS files read again") {
            assert!(Instant::now() < deadline, "no reload\n{}", node.log_tail());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    raw_partner(
        group.endpoints[1],
        &certs.ca_dir.join("ca.pem"),
        certs.path(),
        "spare",
    )
    .await;
    wait_refusal(&group.nodes[1], "TLS_ACCEPT", "revoked certificate", || {
        group.logs()
    })
    .await;
    assert_unharmed(&group, 1).await;
}

/// Rotation without downtime: while r1 commits without pause, every node
/// trusts CA1 and CA2, moves to a certificate of CA2, then stops trusting
/// CA1 — each step a file change and SIGHUP. Afterwards new connections
/// (a restarted secondary, a planned failover, every Raft RPC) work with
/// CA2 alone, and a certificate of CA1 is refused.
#[tokio::test(flavor = "multi_thread")]
async fn partner_certificates_rotate_to_a_new_ca_while_the_group_keeps_committing() {
    let certs = Certs::new(3);
    issue(&certs.ca_dir, "old", certs.path(), &[]);
    let mut group = certs.group(3).await;
    let r1 = group.nodes[0].client(APP).await;
    r1.batch_execute("CREATE TABLE load (id INTEGER PRIMARY KEY, pad BLOB)")
        .await
        .unwrap();
    let load = InsertLoad::start(r1, "load", 1, 1_000_000);
    load.wait_acked(20, WAIT).await;

    let ca1 = certs.ca_dir.join("ca.pem");
    let ca2_dir = certs.path().join("ca2");
    let ca2 = ca(&ca2_dir);
    let trusted = certs.path().join("trusted.pem");
    let reloads = |group: &Group| {
        group
            .nodes
            .iter()
            .map(|n| n.log().matches("partner TLS files read again").count())
            .collect::<Vec<_>>()
    };
    // One step: change the files, SIGHUP every node, wait for the reloads
    // and for more commits.
    async fn step(group: &Group, load: &InsertLoad, before: Vec<usize>, what: &str) {
        for node in &group.nodes {
            node.signal("HUP");
        }
        let deadline = Instant::now() + WAIT;
        for (i, node) in group.nodes.iter().enumerate() {
            while node.log().matches("partner TLS files read again").count() <= before[i] {
                assert!(
                    Instant::now() < deadline,
                    "{} did not reload its partner TLS files ({what})\n{}",
                    name(i),
                    node.log_tail()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let acked = load.acked_count();
        load.wait_acked(acked + 20, WAIT).await;
    }

    trust(&trusted, &[&ca1, &ca2]);
    step(&group, &load, reloads(&group), "trust CA1 and CA2").await;
    for i in 0..3 {
        issue(&ca2_dir, &name(i), certs.path(), &[]);
        let before = reloads(&group);
        group.nodes[i].signal("HUP");
        let deadline = Instant::now() + WAIT;
        while group.nodes[i]
            .log()
            .matches("partner TLS files read again")
            .count()
            <= before[i]
        {
            assert!(Instant::now() < deadline, "{} did not reload", name(i));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let acked = load.acked_count();
        load.wait_acked(acked + 20, WAIT).await;
    }
    trust(&trusted, &[&ca2]);
    step(&group, &load, reloads(&group), "trust CA2 only").await;

    // New connections with CA2 alone: a secondary restarts and catches up.
    group.nodes[2]
        .try_restart()
        .await
        .unwrap_or_else(|e| panic!("r3 restart: {e}"));
    group.wait_synchronized(&[1, 2], WAIT).await;
    let acked = load.acked_count();
    load.wait_acked(acked + 20, WAIT).await;
    let report = load.finish().await;
    assert!(
        report.failed.is_none(),
        "a commit failed during the rotation: {:?}\n{}",
        report.failed,
        group.logs()
    );
    planned_failover(&group, 1)
        .await
        .unwrap_or_else(|e| panic!("failover to r2 after the rotation: {e:?}\n{}", group.logs()));
    group.wait_takes_writes(1, WAIT).await;
    for node in &group.nodes {
        assert_eq!(
            refusals(node, "TLS_ACCEPT").await.0,
            0,
            "no handshake was refused during the rotation\n{}",
            group.logs()
        );
    }
    // CA1's certificates are no longer trusted.
    raw_partner(group.endpoints[1], &ca2, certs.path(), "old").await;
    wait_refusal(&group.nodes[1], "TLS_ACCEPT", "unknown CA", || group.logs()).await;
}
