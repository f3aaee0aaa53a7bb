//! The quorum cluster's voters, managed with `availdb cluster init | join |
//! leave | status` against real nodes: a witness gives a two-replica group
//! the third vote it needs to fail over automatically; a witness hosts no
//! replica; a replica host cannot leave while it hosts a replica; a node
//! that leaves is no longer a voter; a node of another cluster with the
//! same replica names is refused and its cluster left untouched.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{wait_new_primary, wait_secondary_of, FAILOVER_TIMEOUT};
use common::group::{error_text, group_row, query_text, Group, GroupSpec, APP};
use common::{free_port, run_bounded, TestServer, DEFAULT_DB};

const R1: usize = 0;
const R2: usize = 1;
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `availdb cluster ARGS…` (bounded); its exit success and output.
async fn cli(args: &[String]) -> (bool, String) {
    let args = args.to_vec();
    let output = tokio::task::spawn_blocking(move || {
        run_bounded(
            Command::new(env!("CARGO_BIN_EXE_availdb"))
                .arg("cluster")
                .args(&args),
            CLI_TIMEOUT,
        )
    })
    .await
    .expect("the CLI runner");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn port_args(port: u16) -> Vec<String> {
    vec!["--port".into(), port.to_string()]
}

async fn start_witness() -> TestServer {
    TestServer::builder()
        .arg("--witness")
        .replica("w1", free_port())
        .start()
        .await
}

/// The member names `availdb cluster status` lists on the node at `port`.
async fn voters_in_status(port: u16) -> (Vec<String>, String) {
    let (ok, out) = cli(&[vec!["status".into()], port_args(port)].concat()).await;
    assert!(ok, "availdb cluster status failed:\n{out}");
    let voters = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("voter "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    (voters, out)
}

/// Two replica hosts alone cannot fail over: losing one loses the
/// majority. With a witness joined through `availdb cluster join`, the
/// survivor and the witness are a majority of three, so killing the
/// primary makes the synchronized secondary primary, with every
/// acknowledged row.
#[tokio::test(flavor = "multi_thread")]
async fn a_witness_gives_a_two_replica_group_the_majority_to_fail_over() {
    let mut group = Group::start_with(GroupSpec {
        replicas: 2,
        automatic: true,
        ..GroupSpec::default()
    })
    .await;
    let witness = start_witness().await;
    let join = [
        vec!["join".into()],
        port_args(witness.port()),
        vec![
            "--via".into(),
            format!("127.0.0.1:{}", group.nodes[R1].port()),
        ],
    ]
    .concat();
    let (ok, out) = cli(&join).await;
    assert!(
        ok,
        "availdb cluster join of the witness failed:\n{out}\n{}",
        group.logs()
    );
    let (mut voters, status) = voters_in_status(group.nodes[R2].port()).await;
    voters.sort();
    assert_eq!(
        voters,
        ["r1", "r2", "w1"],
        "status on r2 after the join:\n{status}"
    );

    let r1 = group.nodes[R1].client(APP).await;
    r1.batch_execute("CREATE TABLE t(id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1), (2), (3)")
        .await
        .unwrap_or_else(|e| panic!("writes on r1: {}", error_text(&e)));
    drop(r1);
    group.nodes[R1].kill9();
    let (new, epoch, took) = wait_new_primary(&group, &[R2], &[R1], 1, FAILOVER_TIMEOUT).await;
    eprintln!("r2 primary at epoch {epoch} {took:?} after the kill");
    let r2 = group.nodes[new].client(APP).await;
    r2.batch_execute("INSERT INTO t VALUES (4)")
        .await
        .unwrap_or_else(|e| panic!("a write on the new primary: {}", error_text(&e)));
    let rows = r2
        .query("SELECT id FROM t ORDER BY id", &[])
        .await
        .expect("read on r2");
    let ids: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, [1, 2, 3, 4]);

    group.nodes[R1].restart().await;
    wait_secondary_of(&group, &[R1, R2], R1, new, epoch).await;
}

/// A witness refuses to host a replica; a replica host may not leave the
/// cluster while it hosts one; a witness leaves with `availdb cluster
/// leave` and is then no longer listed; `init` on a node that is already
/// in a cluster is refused.
#[tokio::test(flavor = "multi_thread")]
async fn membership_changes_are_refused_with_reasons_and_a_witness_can_leave() {
    let group = Group::start_with(GroupSpec {
        replicas: 2,
        ..GroupSpec::default()
    })
    .await;
    let witness = start_witness().await;

    let w = witness.client(DEFAULT_DB).await;
    let refused = w
        .batch_execute("ALTER AVAILABILITY GROUP ag1 JOIN")
        .await
        .expect_err("a witness joining a group");
    assert_eq!(
        refused.code().map(|c| c.code()),
        Some("55000"),
        "{}",
        error_text(&refused)
    );
    assert!(
        error_text(&refused).contains("witness"),
        "{}",
        error_text(&refused)
    );

    let (ok, out) = cli(&[vec!["init".into()], port_args(group.nodes[R1].port())].concat()).await;
    assert!(
        !ok && out.contains("already belongs to a cluster"),
        "init on r1:\n{out}"
    );

    let (ok, out) = cli(&[
        vec!["join".into()],
        port_args(witness.port()),
        vec![
            "--via".into(),
            format!("127.0.0.1:{}", group.nodes[R2].port()),
        ],
    ]
    .concat())
    .await;
    assert!(
        ok,
        "join of the witness via a follower:\n{out}\n{}",
        group.logs()
    );

    let (ok, out) = cli(&[vec!["leave".into()], port_args(group.nodes[R2].port())].concat()).await;
    assert!(
        !ok && out.contains("REMOVE REPLICA"),
        "leave of r2, which hosts a replica, must be refused with what to do:\n{out}"
    );

    let (ok, out) = cli(&[vec!["leave".into()], port_args(witness.port())].concat()).await;
    assert!(ok, "leave of the witness:\n{out}\n{}", group.logs());
    let (mut voters, status) = voters_in_status(group.nodes[R1].port()).await;
    voters.sort();
    assert_eq!(
        voters,
        ["r1", "r2"],
        "status on r1 after the witness left:\n{status}"
    );
}

/// Rows of `sql` on `server` (simple protocol), panicking with its log.
async fn rows(server: &TestServer, sql: &str) -> Vec<Vec<Option<String>>> {
    let client = server.client(DEFAULT_DB).await;
    query_text(&client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}\n{}", error_text(&e), server.log_tail()))
}

/// The members `server` knows: (name, endpoint URL, voter or not).
async fn members(server: &TestServer) -> Vec<Vec<Option<String>>> {
    rows(
        server,
        "SELECT member_name, endpoint_url, member_type_desc FROM sys.dm_hadr_cluster_members \
         ORDER BY member_name",
    )
    .await
}

/// The id of the cluster `server` belongs to.
async fn id_of(server: &TestServer) -> String {
    rows(server, "SELECT cluster_id FROM sys.dm_hadr_cluster").await[0][0]
        .clone()
        .expect("a cluster id")
}

/// The leader and term `server` knows.
async fn leader_and_term(server: &TestServer) -> (Option<String>, u64) {
    let r = rows(server, "SELECT leader, term FROM sys.dm_hadr_cluster").await;
    let r = r.first().cloned().unwrap_or_default();
    let term = r.get(1).cloned().flatten().and_then(|t| t.parse().ok());
    (r.first().cloned().flatten(), term.unwrap_or(0))
}

/// Safety rule 6, issue 9's cause 9: node ids come from replica names, so
/// two clusters whose replicas are both called r1, r2 share node ids and
/// Raft leader ids. Cluster X (a node r1 and a witness) is told to add
/// "r2" at the endpoint of cluster Y's r2, with a Raft term above Y's (a
/// leader of a lower term would be ignored, one of the same term taken for
/// Y's own leader). Y's r2 refuses every request of X
/// (its log says so, naming both clusters); X's ALTER CLUSTER ADD NODE
/// fails naming both and X keeps no such member; Y keeps its members, its
/// primary, its lease and its data, and replicates a write made after.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_of_another_cluster_with_the_same_replica_names_is_refused_and_left_untouched() {
    let y = Group::start_with(GroupSpec {
        replicas: 2,
        ..GroupSpec::default()
    })
    .await;
    let y1 = y.nodes[R1].client(APP).await;
    y1.batch_execute("CREATE TABLE t(id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1), (2)")
        .await
        .unwrap_or_else(|e| panic!("writes on y's r1: {}", error_text(&e)));
    drop(y1);
    let y_members = members(&y.nodes[R1]).await;
    assert_eq!(y_members.len(), 2, "y's members: {y_members:?}");
    assert_eq!(members(&y.nodes[R2]).await, y_members);

    // Cluster x: a node also called r1 and a witness, with a Raft term
    // above y's: the witness campaigns while r1 is paused.
    let x = TestServer::builder()
        .replica("r1", free_port())
        .start()
        .await;
    let xw_endpoint = free_port();
    let xw = TestServer::builder()
        .arg("--witness")
        .replica("xw", xw_endpoint)
        .start()
        .await;
    let form = format!(
        "CREATE CLUSTER; ALTER CLUSTER ADD NODE 'xw' WITH (ENDPOINT_URL = 'tcp://127.0.0.1:{xw_endpoint}')"
    );
    x.client(DEFAULT_DB)
        .await
        .batch_execute(&form)
        .await
        .unwrap_or_else(|e| panic!("{form} on x: {}\n{}", error_text(&e), x.log_tail()));
    let x_logs = || {
        format!(
            "===== x's r1 =====\n{}\n===== x's xw =====\n{}",
            x.log_tail(),
            xw.log_tail()
        )
    };
    let (_, y_term) = leader_and_term(&y.nodes[R1]).await;
    x.pause();
    tokio::time::sleep(Duration::from_secs(2)).await;
    x.resume();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (leader, term) = leader_and_term(&x).await;
        if leader.is_some() && term > y_term {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "x's term never passed y's ({y_term}): x at {term} led by {leader:?}\n{}",
            x_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let add = format!(
        "ALTER CLUSTER ADD NODE 'r2' WITH (ENDPOINT_URL = 'tcp://127.0.0.1:{}')",
        y.endpoints[R2]
    );
    let added = tokio::time::timeout(
        Duration::from_secs(60),
        x.client(DEFAULT_DB).await.batch_execute(&add),
    )
    .await
    .unwrap_or_else(|_| panic!("{add} on x: no answer within 60 s\n{}", x_logs()));
    // Time for a wrongly accepted leader to do harm.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Y is untouched: same members on both nodes, r1 primary at epoch 1,
    // taking writes that reach r2.
    for i in [R1, R2] {
        assert_eq!(
            members(&y.nodes[i]).await,
            y_members,
            "y's members as r{} sees them after x tried to add y's r2\n{}\n{}",
            i + 1,
            y.logs(),
            x_logs()
        );
        let row = group_row(&y.nodes[i]).await.expect("y's group row");
        assert_eq!(
            (row.primary_replica.as_str(), row.epoch),
            ("r1", 1),
            "y's group as r{} sees it\n{}",
            i + 1,
            y.logs()
        );
    }
    let y1 = y.nodes[R1].client(APP).await;
    match tokio::time::timeout(
        Duration::from_secs(10),
        y1.batch_execute("INSERT INTO t VALUES (3)"),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!(
            "y's primary refused a write after x tried to add y's r2: {}\n{}\n{}",
            error_text(&e),
            y.logs(),
            x_logs()
        ),
        Err(_) => panic!(
            "y's primary did not answer a write within 10 s\n{}",
            y.logs()
        ),
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let y2 = y.nodes[R2].client(APP).await;
        let ids = query_text(&y2, "SELECT id FROM t ORDER BY id").await;
        if matches!(&ids, Ok(r) if r.len() == 3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "y's r2 did not get the new row: {ids:?}\n{}",
            y.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The refusal, on both sides, names both clusters.
    let (x_id, y_id) = (id_of(&x).await, id_of(&y.nodes[R1]).await);
    assert_ne!(x_id, y_id);
    assert_eq!(id_of(&y.nodes[R2]).await, y_id);
    match added {
        Ok(()) => panic!("x added y's r2 as its own node\n{}\n{}", y.logs(), x_logs()),
        Err(e) => {
            let text = error_text(&e);
            assert!(
                text.contains(&x_id) && text.contains(&y_id) && text.contains("55000"),
                "{add} on x must fail naming both clusters: {text}"
            );
        }
    }
    let x_members = members(&x).await;
    assert!(
        x_members.len() == 2 && x_members.iter().all(|m| m[0].as_deref() != Some("r2")),
        "x keeps no member r2: {x_members:?}"
    );
    assert_eq!(id_of(&xw).await, x_id);
    let y2_log = y.nodes[R2].log();
    assert!(
        y2_log.lines().any(|l| l.contains("WARN")
            && l.contains("refused a cluster")
            && l.contains(&x_id)
            && l.contains(&y_id)),
        "y's r2 logs the refused requests with both clusters\n{}",
        y.nodes[R2].log_tail()
    );
    let refused = rows(
        &y.nodes[R2],
        "SELECT refused_count, last_refused_reason FROM sys.dm_hadr_partner_refusals WHERE partner_type_desc = 'RAFT'",
    )
    .await;
    let count: u64 = refused[0][0].as_deref().unwrap_or("0").parse().unwrap();
    assert!(
        count > 0 && refused[0][1].as_deref().is_some_and(|r| r.contains(&x_id)),
        "y's r2 counts the refused requests in sys.dm_hadr_partner_refusals: {refused:?}"
    );
    // Whichever of x's nodes leads sent the requests.
    let x_log = x.log() + &xw.log();
    assert!(
        x_log
            .lines()
            .any(|l| l.contains("WARN") && l.contains("refused this node's") && l.contains(&y_id)),
        "x logs that y's r2 refused it\n{}",
        x_logs()
    );
}
