//! The quorum cluster's voters, managed with `availdb cluster init | join |
//! leave | status` against real nodes: a witness gives a two-replica group
//! the third vote it needs to fail over automatically; a witness hosts no
//! replica; a replica host cannot leave while it hosts a replica; a node
//! that leaves is no longer a voter.

mod common;

use std::process::Command;
use std::time::Duration;

use common::cluster::{wait_new_primary, wait_secondary_of, FAILOVER_TIMEOUT};
use common::group::{error_text, Group, GroupSpec, APP};
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
    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
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
