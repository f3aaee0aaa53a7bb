//! The traffic manager as a real process in front of HTTP application
//! endpoints: probes take a dead or hung endpoint out within the bound
//! its knobs promise, a switch moves the next connection at once with no
//! client error, connections are held while nothing is healthy, open
//! connections stay on their endpoint, and admin changes survive a
//! restart.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use availdb::traffic::{Activate, EndpointDef, Health, Status};
use common::traffic::{get_once, HttpEndpoint, TestTrafficManager};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WITHIN: Duration = Duration::from_secs(30);
const REQUEST: Duration = Duration::from_secs(10);

/// A profile of two HTTP endpoints, v1 (priority 1, online) and v2
/// (priority 2, `v2_status`), probed every second.
fn profile(v1: &HttpEndpoint, v2: &HttpEndpoint, v2_status: &str, tolerated: u32) -> String {
    format!(
        "name = \"shop\"\nhold_ms = 10000\n\
         [probe]\nprotocol = \"http\"\npath = \"/health\"\ninterval_seconds = 1\ntimeout_ms = 300\ntolerated_failures = {tolerated}\n\
         [[endpoint]]\nname = \"v1\"\ntarget = \"{}\"\npriority = 1\nstatus = \"online\"\n\
         [[endpoint]]\nname = \"v2\"\ntarget = \"{}\"\npriority = 2\nstatus = \"{v2_status}\"\n",
        v1.target(),
        v2.target()
    )
}

/// One request on an open connection: the answer's text.
async fn ask(s: &mut tokio::net::TcpStream) -> String {
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 512];
    let n = s.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn healthy(view: &availdb::traffic::ProfileView, name: &str) -> bool {
    view.endpoints
        .iter()
        .any(|e| e.name == name && e.health == Health::Healthy)
}

#[tokio::test(flavor = "multi_thread")]
async fn probes_take_a_dead_or_hung_endpoint_out_within_interval_times_tolerated_failures_plus_one_plus_timeout(
) {
    for how in ["killed", "hung"] {
        let (v1, v2) = (
            HttpEndpoint::start("v1").await,
            HttpEndpoint::start("v2").await,
        );
        let tm = TestTrafficManager::start(&profile(&v1, &v2, "online", 2)).await;
        tm.wait_until("both endpoints healthy", WITHIN, |v| {
            healthy(v, "v1") && healthy(v, "v2")
        })
        .await;
        assert_eq!(get_once(&tm.address(), REQUEST).await.as_deref(), Ok("v1"));
        match how {
            "killed" => v1.stop(),
            _ => v1.hang(),
        }
        let view = tm
            .wait_until(&format!("v1 ({how}) taken out"), WITHIN, |v| {
                v.endpoints
                    .iter()
                    .any(|e| e.name == "v1" && e.health == Health::Unhealthy)
            })
            .await;
        let v1_view = view.endpoints.iter().find(|e| e.name == "v1").unwrap();
        // The bound, measured by the traffic manager's own clock from the
        // last success to the verdict: interval × (tolerated + 1) + timeout,
        // plus what timers and the scheduler add on a loaded machine (the
        // exact bound is the probe core's unit test).
        let bound = 1000 * (2 + 1) + 300 + 250;
        let detected = v1_view.detected_after_ms.expect("it was healthy before");
        assert!(
            detected <= bound,
            "{how}: taken out {detected} ms after its last good probe (bound {bound} ms)"
        );
        assert_eq!(v1_view.consecutive_failures, 3, "{how}: {v1_view:?}");
        assert!(v1_view.last_error.is_some());
        assert_eq!(view.active.as_deref(), Some("v2"));
        // New connections fail over to v2.
        assert_eq!(get_once(&tm.address(), REQUEST).await.as_deref(), Ok("v2"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_switch_moves_the_next_connection_at_once_with_zero_connection_errors_and_open_ones_stay()
{
    let (v1, v2) = (
        HttpEndpoint::start("v1").await,
        HttpEndpoint::start("v2").await,
    );
    let tm = TestTrafficManager::start(&profile(&v1, &v2, "offline", 1)).await;
    tm.wait_until("both endpoints healthy", WITHIN, |v| {
        healthy(v, "v1") && healthy(v, "v2")
    })
    .await;
    // A connection opened before the switch, used after it.
    let mut open = tokio::net::TcpStream::connect(tm.address()).await.unwrap();
    assert!(ask(&mut open).await.ends_with("v1"));

    // Clients hammering the traffic manager with new connections.
    let stop = Arc::new(AtomicBool::new(false));
    let switched = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let after_switch: Arc<Mutex<Vec<String>>> = Arc::default();
    let before = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, switched, errors, after_switch, before, address) = (
            stop.clone(),
            switched.clone(),
            errors.clone(),
            after_switch.clone(),
            before.clone(),
            tm.address(),
        );
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                // Read before connecting: a connection that began after
                // the switch was answered must reach v2.
                let was_switched = switched.load(Ordering::SeqCst);
                match get_once(&address, REQUEST).await {
                    Ok(name) if was_switched => after_switch.lock().unwrap().push(name),
                    Ok(_) => {
                        before.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => errors.lock().unwrap().push(e),
                }
            }
        }));
    }
    while before.load(Ordering::SeqCst) < 50 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let view = tm
        .client()
        .activate("v2", &Activate::default())
        .await
        .expect("activate v2");
    switched.store(true, Ordering::SeqCst);
    assert_eq!(view.active.as_deref(), Some("v2"));
    let v1_status = view
        .endpoints
        .iter()
        .find(|e| e.name == "v1")
        .unwrap()
        .status;
    assert_eq!(v1_status, Status::Offline, "activate takes v1 offline");
    while after_switch.lock().unwrap().len() < 50 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let errors = errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "client connection errors: {errors:?}");
    let after = after_switch.lock().unwrap().clone();
    assert!(
        after.iter().all(|n| n == "v2"),
        "connections begun after the switch reached v1: {:?}",
        after.iter().filter(|n| *n != "v2").count()
    );
    // The connection opened before the switch is still v1's.
    assert!(ask(&mut open).await.ends_with("v1"));
    let view = tm.show().await;
    let v1_view = view.endpoints.iter().find(|e| e.name == "v1").unwrap();
    assert_eq!(v1_view.connections, 1, "the open connection is counted");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_connection_is_held_while_no_endpoint_is_online_and_goes_through_once_one_is() {
    let (v1, v2) = (
        HttpEndpoint::start("v1").await,
        HttpEndpoint::start("v2").await,
    );
    let tm = TestTrafficManager::start(&profile(&v1, &v2, "offline", 1)).await;
    tm.wait_until("v1 healthy", WITHIN, |v| healthy(v, "v1"))
        .await;
    tm.client()
        .set_status("v1", Status::Offline)
        .await
        .expect("v1 offline");
    assert_eq!(tm.show().await.active, None);
    let address = tm.address();
    let held = tokio::spawn(async move { get_once(&address, REQUEST).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!held.is_finished(), "the connection was not held");
    tm.client()
        .set_status("v2", Status::Online)
        .await
        .expect("v2 online");
    assert_eq!(held.await.unwrap().as_deref(), Ok("v2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_changes_survive_a_restart_and_refuse_what_breaks_a_rule() {
    let (v1, v2) = (
        HttpEndpoint::start("v1").await,
        HttpEndpoint::start("v2").await,
    );
    let v3 = HttpEndpoint::start("v3").await;
    let mut tm = TestTrafficManager::start(&profile(&v1, &v2, "offline", 1)).await;
    let client = tm.client();
    let err = client
        .add(&EndpointDef {
            name: "v3".into(),
            target: v3.target(),
            priority: 2,
            status: Status::Offline,
            probe: None,
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("priorities are unique"), "{err}");
    client
        .add(&EndpointDef {
            name: "v3".into(),
            target: v3.target(),
            priority: 3,
            status: Status::Online,
            probe: None,
        })
        .await
        .expect("add v3");
    client.remove("v2").await.expect("remove v2");
    client
        .set_status("v1", Status::Offline)
        .await
        .expect("v1 offline");
    let err = client.remove("v2").await.unwrap_err().to_string();
    assert!(err.contains("no endpoint named v2"), "{err}");
    tm.restart().await;
    let view = tm
        .wait_until("v3 healthy after the restart", WITHIN, |v| healthy(v, "v3"))
        .await;
    let names: Vec<(&str, Status)> = view
        .endpoints
        .iter()
        .map(|e| (e.name.as_str(), e.status))
        .collect();
    assert_eq!(names, [("v1", Status::Offline), ("v3", Status::Online)]);
    assert_eq!(get_once(&tm.address(), REQUEST).await.as_deref(), Ok("v3"));
    // An unhealthy endpoint cannot be activated without --force.
    v1.stop();
    let err = client
        .activate("v1", &Activate::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not healthy"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_drain_grace_connections_to_an_endpoint_taken_offline_are_closed_after_it_and_not_without(
) {
    for grace in [Some(300), None] {
        let (v1, v2) = (
            HttpEndpoint::start("v1").await,
            HttpEndpoint::start("v2").await,
        );
        let mut config = profile(&v1, &v2, "online", 1);
        if let Some(ms) = grace {
            config = config.replace(
                "hold_ms = 10000\n",
                &format!("hold_ms = 10000\ndrain_grace_ms = {ms}\n"),
            );
        }
        let tm = TestTrafficManager::start(&config).await;
        tm.wait_until("both endpoints healthy", WITHIN, |v| {
            healthy(v, "v1") && healthy(v, "v2")
        })
        .await;
        let mut open = tokio::net::TcpStream::connect(tm.address()).await.unwrap();
        assert!(ask(&mut open).await.ends_with("v1"));
        tm.client()
            .set_status("v1", Status::Offline)
            .await
            .expect("v1 offline");
        // Either the traffic manager closes the connection after the
        // grace (a read ends), or it stays usable on v1.
        let mut buf = [0u8; 16];
        let closed = tokio::time::timeout(Duration::from_secs(3), open.read(&mut buf)).await;
        match grace {
            Some(_) => assert!(
                matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
                "the connection was not drained: {closed:?}"
            ),
            None => {
                assert!(closed.is_err(), "closed without a drain grace: {closed:?}");
                assert!(ask(&mut open).await.ends_with("v1"));
            }
        }
        // New connections go to v2 meanwhile.
        assert_eq!(get_once(&tm.address(), REQUEST).await.as_deref(), Ok("v2"));
    }
}
