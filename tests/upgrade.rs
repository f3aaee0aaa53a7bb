//! `availdb upgrade` end to end, with real processes: production and stage
//! clusters, the example application (V1, then V2 started by the
//! orchestrator) behind a traffic manager, and clients reading and
//! writing through it the whole time (`tests/common/upgrade.rs`).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::group::{query_text, APP};
use common::upgrade::Rig;
use common::DEFAULT_DB;

const REQUEST: Duration = Duration::from_secs(15);

/// The example's upgrade script.
fn example_script() -> String {
    std::fs::read_to_string(common::upgrade::example_dir().join("upgrade.sql")).unwrap()
}

/// A smoke check that takes a second (so the clients surely try writes
/// inside the read-only window), then asks V2 whether it is ready.
fn slow_smoke(v2_port: u16) -> String {
    format!(
        "smoke = [\"python3\", \"-c\", \"import time, urllib.request; time.sleep(1); \
         urllib.request.urlopen('http://127.0.0.1:{v2_port}/ready', timeout=10)\"]"
    )
}

/// What the clients saw.
#[derive(Debug, Default)]
struct Seen {
    /// Reads that did not answer 200.
    read_errors: Vec<String>,
    /// Writes acknowledged: (id, version that acknowledged it).
    acked: Vec<(i64, u64)>,
    /// Writes refused because the database was read-only (503, 25006).
    read_only_refusals: Vec<String>,
    /// Any other write failure.
    write_errors: Vec<String>,
}

/// A reader and a writer hammering the application through the traffic
/// manager until stopped.
struct Clients {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Clients {
    fn start(address: String) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let reader = {
            let (stop, seen, address) = (stop.clone(), seen.clone(), address.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let got =
                        availdb::traffic::http::request(&address, "GET", "/items", None, REQUEST)
                            .await;
                    match got {
                        Ok(a) if a.status == 200 => {}
                        Ok(a) => seen.lock().unwrap().read_errors.push(format!(
                            "{}: {}",
                            a.status,
                            String::from_utf8_lossy(&a.body)
                        )),
                        Err(e) => seen.lock().unwrap().read_errors.push(e),
                    }
                }
            })
        };
        let writer = {
            let (stop, seen) = (stop.clone(), seen.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let body = format!("{{\"name\": \"item {n}\"}}");
                    let got = availdb::traffic::http::request(
                        &address,
                        "POST",
                        "/items",
                        Some(body.as_bytes()),
                        REQUEST,
                    )
                    .await;
                    let mut seen = seen.lock().unwrap();
                    match got {
                        Ok(a) if a.status == 201 => {
                            let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
                            seen.acked
                                .push((v["id"].as_i64().unwrap(), v["version"].as_u64().unwrap()));
                        }
                        Ok(a) => {
                            let text = String::from_utf8_lossy(&a.body).into_owned();
                            if a.status == 503 && text.contains("\"25006\"") {
                                seen.read_only_refusals.push(text);
                            } else {
                                seen.write_errors.push(format!("{}: {text}", a.status));
                            }
                        }
                        Err(e) => seen.write_errors.push(e),
                    }
                }
            })
        };
        Clients {
            stop,
            seen,
            tasks: vec![reader, writer],
        }
    }

    fn acked_by(&self, version: u64) -> usize {
        self.seen
            .lock()
            .unwrap()
            .acked
            .iter()
            .filter(|(_, v)| *v == version)
            .count()
    }

    async fn wait_acked_by(&self, version: u64, n: usize, rig: &Rig) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self.acked_by(version) < n {
            assert!(
                std::time::Instant::now() < deadline,
                "fewer than {n} writes acknowledged by V{version}: {:?}\n{}",
                self.seen.lock().unwrap(),
                rig.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn finish(self) -> Seen {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        Arc::try_unwrap(self.seen).unwrap().into_inner().unwrap()
    }
}

/// The ids `GET /items` answers through the traffic manager.
async fn item_ids(rig: &Rig) -> (Vec<i64>, Vec<serde_json::Value>) {
    let a = availdb::traffic::http::request(&rig.tm.address(), "GET", "/items", None, REQUEST)
        .await
        .expect("GET /items");
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let items: Vec<serde_json::Value> = serde_json::from_slice(&a.body).unwrap();
    (
        items.iter().map(|i| i["id"].as_i64().unwrap()).collect(),
        items,
    )
}

fn missing(acked: &[(i64, u64)], present: &[i64]) -> Vec<i64> {
    acked
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !present.contains(id))
        .collect()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Whether production's `items` has a `category` column (V2's).
async fn production_has_category(rig: &Rig) -> bool {
    let client = rig.production.primary().client(APP).await;
    let rows = query_text(&client, "SELECT name FROM pragma_table_info('items')")
        .await
        .unwrap();
    rows.iter().any(|r| r[0].as_deref() == Some("category"))
}

async fn stage_databases(rig: &Rig) -> Vec<String> {
    let client = rig.stage.client(DEFAULT_DB).await;
    query_text(&client, "SELECT name FROM sys.databases")
        .await
        .unwrap()
        .into_iter()
        .filter_map(|r| r[0].clone())
        .collect()
}

/// Writes some V1 rows through the traffic manager.
async fn seed_rows(rig: &Rig, n: usize) {
    for i in 0..n {
        let body = format!("{{\"name\": \"seed {i}\"}}");
        let a = availdb::traffic::http::request(
            &rig.tm.address(),
            "POST",
            "/items",
            Some(body.as_bytes()),
            REQUEST,
        )
        .await
        .expect("POST /items");
        assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn option_1_upgrades_with_reads_all_along_read_only_refusals_in_the_window_and_every_v1_row_in_v2(
) {
    let rig = Rig::start(&example_script(), slow_smoke).await;
    seed_rows(&rig, 30).await;
    let clients = Clients::start(rig.tm.address());
    clients.wait_acked_by(1, 10, &rig).await;
    let out = rig.upgrade(&[], None).await;
    assert!(out.status.success(), "{}\n{}", text(&out), rig.logs());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("UPGRADED"), "{stdout}");
    assert!(stdout.contains("read-only window"), "{stdout}");
    clients.wait_acked_by(2, 10, &rig).await;
    let seen = clients.finish().await;
    // Clients kept reading during the window.
    assert!(
        seen.read_errors.is_empty(),
        "reads failed: {:?}",
        seen.read_errors
    );
    // Writes in the window got the documented read-only error, nothing else.
    assert!(
        seen.write_errors.is_empty(),
        "writes failed: {:?}",
        seen.write_errors
    );
    assert!(
        !seen.read_only_refusals.is_empty(),
        "no write was refused as read-only: was there a window? {seen:?}"
    );
    assert!(
        seen.read_only_refusals[0].contains("READ_ONLY"),
        "{:?}",
        seen.read_only_refusals[0]
    );
    // V2 serves after the switch, and every V1 row is there.
    let view = rig.tm.show().await;
    assert_eq!(view.active.as_deref(), Some("v2"), "{view:?}");
    let (ids, items) = item_ids(&rig).await;
    assert!(
        items.iter().all(|i| i["category"] == "general"),
        "V2 answers"
    );
    assert_eq!(
        ids.len(),
        30 + seen.acked.len(),
        "the seed rows and every acked write"
    );
    let lost = missing(&seen.acked, &ids);
    assert!(
        lost.is_empty(),
        "acknowledged writes missing in V2: {lost:?}"
    );
    // Production never saw the schema change.
    assert!(!production_has_category(&rig).await);
    let report = &rig.report()["report"];
    let window = report["read_only_window_ms"].as_u64().expect("a window");
    let script = report["script_ms"].as_u64().expect("a script time");
    assert!(window >= script, "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn option_1_with_a_failing_upgrade_script_rolls_back_to_v1_read_write_and_loses_nothing() {
    // The script's first statement works, its second fails: it runs as
    // one transaction on the stage copy, which is thrown away anyway.
    let failing = "ALTER TABLE items ADD COLUMN category TEXT;\nSELECT no_such_function();\n";
    let rig = Rig::start(failing, |port| {
        format!("smoke_http = \"/ready\"\n# V2 on {port}")
    })
    .await;
    seed_rows(&rig, 20).await;
    let clients = Clients::start(rig.tm.address());
    clients.wait_acked_by(1, 10, &rig).await;
    let out = rig.upgrade(&[], None).await;
    assert!(!out.status.success(), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains("step 5") && all.contains("no_such_function"),
        "{all}"
    );
    assert!(all.contains("rolled back"), "{all}");
    // V1 takes writes again after the rollback.
    let before = clients.acked_by(1);
    clients.wait_acked_by(1, before + 10, &rig).await;
    let seen = clients.finish().await;
    assert!(
        seen.read_errors.is_empty(),
        "reads failed: {:?}",
        seen.read_errors
    );
    assert!(
        seen.write_errors.is_empty(),
        "writes failed: {:?}",
        seen.write_errors
    );
    assert!(seen.acked.iter().all(|(_, v)| *v == 1), "only V1 served");
    let view = rig.tm.show().await;
    assert_eq!(view.active.as_deref(), Some("v1"));
    assert!(
        view.endpoints.iter().all(|e| e.name != "v2"),
        "the stage endpoint is removed: {view:?}"
    );
    let (ids, _) = item_ids(&rig).await;
    let lost = missing(&seen.acked, &ids);
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert_eq!(ids.len(), 20 + seen.acked.len());
    assert!(!production_has_category(&rig).await);
    assert!(!rig.v2_alive(), "V2 is stopped");
    assert!(
        !stage_databases(&rig).await.contains(&APP.to_string()),
        "the stage copy is dropped"
    );
}

/// Runs the upgrade until it dies at crash point `point` (the
/// orchestrator exits there, as if killed), then checks that `status`
/// names `step` as begun and not ended.
async fn killed_at(rig: &Rig, point: &str, step: u32) {
    let out = rig.upgrade(&[], Some(point)).await;
    assert!(
        !out.status.success() && text(&out).contains(&format!("crash point {point}")),
        "{}",
        text(&out)
    );
    let status = rig.upgrade(&["status"], None).await;
    let status_text = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(
        status_text.contains(&format!("step {step}")) && status_text.contains("did not end"),
        "{status_text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_orchestrator_killed_after_the_termination_resumes_and_finishes_the_upgrade() {
    let rig = Rig::start(&example_script(), |_| "smoke_http = \"/ready\"".into()).await;
    seed_rows(&rig, 25).await;
    killed_at(&rig, "upgrade.terminated", 4).await;
    // A second `availdb upgrade PLAN` is refused: one is under way.
    let again = rig.upgrade(&[], None).await;
    assert!(
        !again.status.success() && text(&again).contains("resume"),
        "{}",
        text(&again)
    );
    let out = rig.upgrade(&["resume"], None).await;
    assert!(out.status.success(), "{}\n{}", text(&out), rig.logs());
    assert!(String::from_utf8_lossy(&out.stdout).contains("UPGRADED"));
    assert_eq!(rig.tm.show().await.active.as_deref(), Some("v2"));
    let (ids, items) = item_ids(&rig).await;
    assert_eq!(ids.len(), 25);
    assert!(items.iter().all(|i| i["category"] == "general"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_orchestrator_killed_mid_upgrade_is_rolled_back_to_v1_and_an_interrupted_script_rolls_back_on_resume(
) {
    let rig = Rig::start(&example_script(), |_| "smoke_http = \"/ready\"".into()).await;
    seed_rows(&rig, 15).await;
    // Killed with production READ_ONLY: `rollback` restores V1.
    let out = rig.upgrade(&[], Some("upgrade.read_only")).await;
    assert!(
        text(&out).contains("crash point upgrade.read_only"),
        "{}",
        text(&out)
    );
    let write = availdb::traffic::http::request(
        &rig.tm.address(),
        "POST",
        "/items",
        Some(b"{\"name\": \"in the window\"}"),
        REQUEST,
    )
    .await
    .unwrap();
    assert_eq!(write.status, 503, "production is read-only after the crash");
    let out = rig.upgrade(&["rollback"], None).await;
    let all = text(&out);
    assert!(
        all.contains("rolled back") && all.contains("requested"),
        "{all}"
    );
    seed_rows(&rig, 5).await;
    let (ids, _) = item_ids(&rig).await;
    assert_eq!(ids.len(), 20, "V1 read-write, nothing lost");
    assert!(!rig.v2_alive());
    assert!(!stage_databases(&rig).await.contains(&APP.to_string()));
    // A rolled-back plan does not run again by accident.
    let again = rig.upgrade(&[], None).await;
    assert!(text(&again).contains("already ran"), "{}", text(&again));
    // Killed while the script ran: its effect is unknown, so resume rolls
    // back (a fresh state folder: the same plan again).
    std::fs::remove_dir_all(rig.dir.path().join("plan.toml.state")).unwrap();
    let out = rig.upgrade(&[], Some("upgrade.script_ran")).await;
    assert!(
        text(&out).contains("crash point upgrade.script_ran"),
        "{}",
        text(&out)
    );
    let out = rig.upgrade(&["resume"], None).await;
    let all = text(&out);
    assert!(
        !out.status.success() && all.contains("interrupted"),
        "{all}\n{}",
        rig.logs()
    );
    seed_rows(&rig, 5).await;
    let (ids, _) = item_ids(&rig).await;
    assert_eq!(ids.len(), 25);
    assert_eq!(rig.tm.show().await.active.as_deref(), Some("v1"));
    assert!(!production_has_category(&rig).await);
}

/// The ids in `items` of the stage-DR copy (option 2), read on its node.
async fn stage_dr_ids(rig: &Rig) -> Vec<i64> {
    let dr = rig.dr.as_ref().expect("an option 2 rig");
    let client = dr.stage_dr.client(APP).await;
    query_text(&client, "SELECT id FROM items ORDER BY id")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r[0].as_deref().unwrap().parse().unwrap())
        .collect()
}

/// Each endpoint's status in the profile, by name.
/// Option 2's profile after the switch, as [`statuses`] sorted shows it:
/// V2 and V2-DR online, V1 and V1-DR offline.
fn switched_to_v2() -> [(String, String); 4] {
    [
        ("v1".to_string(), "offline".to_string()),
        ("v1-dr".into(), "offline".into()),
        ("v2".into(), "online".into()),
        ("v2-dr".into(), "online".into()),
    ]
}

async fn statuses(rig: &Rig) -> Vec<(String, String)> {
    rig.tm
        .show()
        .await
        .endpoints
        .iter()
        .map(|e| {
            (
                e.name.clone(),
                serde_json::to_value(e.status)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn option_2_upgrades_both_regions_and_ends_with_stage_active_and_stage_dr_its_backup() {
    let rig = Rig::start_geo(&example_script(), slow_smoke).await;
    // The dry run shows option 2's steps, in the order they run.
    let dry = rig.upgrade(&["--dry-run"], None).await;
    let dry_text = String::from_utf8_lossy(&dry.stdout).into_owned();
    assert!(dry.status.success(), "{}", text(&dry));
    let at = |needle: &str| {
        dry_text
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} in {dry_text}"))
    };
    assert!(at("step 2:") < at("step 10:") && at("step 11:") < at("step 3:"));
    assert!(at("step 8:") < at("step 12:") && at("step 12:") < at("step 9:"));
    assert!(
        dry_text.contains("ADD SECONDARY ON SERVER 'SB'")
            && dry_text.contains("wait_for_database_copy_sync('app', 'B')")
            && dry_text.contains("[rollback to the DR slot]"),
        "{dry_text}"
    );
    assert!(
        std::fs::read_dir(rig.dir.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".state")),
        "a dry run changes nothing"
    );
    seed_rows(&rig, 30).await;
    let clients = Clients::start(rig.tm.address());
    clients.wait_acked_by(1, 10, &rig).await;
    let out = rig.upgrade(&[], None).await;
    assert!(out.status.success(), "{}\n{}", text(&out), rig.logs());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("UPGRADED"), "{stdout}");
    assert!(
        stdout.contains("step 10") && stdout.contains("step 11"),
        "{stdout}"
    );
    assert!(stdout.contains("stage-DR seeding"), "{stdout}");
    clients.wait_acked_by(2, 10, &rig).await;
    let seen = clients.finish().await;
    assert!(
        seen.read_errors.is_empty(),
        "reads failed: {:?}",
        seen.read_errors
    );
    assert!(
        seen.write_errors.is_empty(),
        "writes failed: {:?}",
        seen.write_errors
    );
    assert!(
        !seen.read_only_refusals.is_empty(),
        "no write was refused as read-only: was there a window? {seen:?}"
    );
    // The profile: stage active, stage-DR its online backup; production
    // and production-DR offline.
    let view = rig.tm.show().await;
    assert_eq!(view.active.as_deref(), Some("v2"), "{view:?}");
    let mut status = statuses(&rig).await;
    status.sort();
    assert_eq!(status, switched_to_v2(), "{view:?}");
    // Every V1 row (and every V2 write) is in V2…
    let (ids, items) = item_ids(&rig).await;
    assert!(items.iter().all(|i| i["category"] == "general"));
    assert_eq!(ids.len(), 30 + seen.acked.len());
    let lost = missing(&seen.acked, &ids);
    assert!(
        lost.is_empty(),
        "acknowledged writes missing in V2: {lost:?}"
    );
    // …and in the stage-DR copy, which follows the stage copy.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let dr_ids = stage_dr_ids(&rig).await;
        if dr_ids == ids {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stage-DR copy has {} rows, V2 {}: {:?}",
            dr_ids.len(),
            ids.len(),
            missing(&seen.acked, &dr_ids)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!production_has_category(&rig).await);
    let report = &rig.report()["report"];
    assert!(report["seeding_dr_ms"].as_u64().is_some(), "{report}");
    // The stage region is lost now: the profile fails over to V2-DR, which
    // serves every row (read-only: its copy is a geo-secondary).
    rig.stage.signal("KILL");
    let v2 = rig.v2_pid().expect("V2 wrote its pid");
    // SAFETY: killing the V2 process (group) the orchestrator started.
    unsafe {
        libc::kill(-v2, libc::SIGKILL);
    }
    rig.tm
        .wait_until("v2-dr takes over", Duration::from_secs(15), |v| {
            v.active.as_deref() == Some("v2-dr")
        })
        .await;
    let (dr_ids, dr_items) = item_ids(&rig).await;
    assert_eq!(dr_ids, ids, "V2-DR serves every row");
    assert!(dr_items.iter().all(|i| i["category"] == "general"));
}

#[tokio::test(flavor = "multi_thread")]
async fn option_2_with_the_production_region_lost_mid_upgrade_fails_over_to_production_dr_and_loses_nothing(
) {
    // The smoke check (step 5, inside the window) waits for the test's
    // go-ahead, so the production region is lost while the upgrade is
    // surely under way, after the termination (step 4).
    let rig = Rig::start_geo(&example_script(), |port| {
        format!(
            "smoke = [\"python3\", \"-c\", \"import os, time, urllib.request\\n\
             for _ in range(1200):\\n    if os.path.exists('go'): break\\n    time.sleep(0.1)\\n\
             urllib.request.urlopen('http://127.0.0.1:{port}/ready', timeout=10)\"]"
        )
    })
    .await;
    seed_rows(&rig, 20).await;
    let clients = Clients::start(rig.tm.address());
    clients.wait_acked_by(1, 10, &rig).await;
    let state_path = rig.dir.path().join("plan.toml.state/state.json");
    let disaster = async {
        // Wait until step 4 (planned termination) has ended.
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        loop {
            let state: serde_json::Value = std::fs::read_to_string(&state_path)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            let terminated = state["machine"]["steps"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["step"] == "TerminateStage" && r["ended_ms"].is_u64());
            if terminated {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "step 4 never ended: {state}\n{}",
                rig.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Production's region is lost: its nodes and V1. The profile fails
        // over to production's DR slot (an online backup) by itself:
        // probes every second, one failure tolerated.
        let failover = rig.lose_production_region().await;
        // The clients stop here: V1 acknowledged every write they saw
        // acknowledged (a request cut by the loss is an error, not an ack).
        let seen = clients.finish().await;
        // V1-DR serves reads; writes get the read-only error (its copy is
        // a geo-secondary, and production was READ_ONLY anyway).
        let write = availdb::traffic::http::request(
            &rig.tm.address(),
            "POST",
            "/items",
            Some(b"{\"name\": \"after the disaster\"}"),
            REQUEST,
        )
        .await
        .unwrap();
        assert_eq!(
            write.status,
            503,
            "{}",
            String::from_utf8_lossy(&write.body)
        );
        let (dr_ids, dr_items) = item_ids(&rig).await;
        assert!(
            dr_items.iter().all(|i| i["category"].is_null()),
            "V1 answers"
        );
        std::fs::write(rig.dir.path().join("go"), b"").unwrap();
        (failover, dr_ids, seen)
    };
    let (out, (failover, dr_ids, seen)) = tokio::join!(rig.upgrade(&[], None), disaster);
    assert!(
        failover < Duration::from_secs(10),
        "failover took {failover:?}"
    );
    // Nothing acknowledged was lost in the DR slot: step 3 waited until
    // production's DR copy held production's last commit.
    assert!(seen.acked.iter().all(|(_, v)| *v == 1), "{seen:?}");
    let lost = missing(&seen.acked, &dr_ids);
    assert!(
        lost.is_empty(),
        "acknowledged writes missing in production-DR: {lost:?}"
    );
    assert_eq!(dr_ids.len(), 20 + seen.acked.len());
    // The upgrade needs production no more after step 4: it finished, and
    // V2 (with stage-DR as its backup) serves every row.
    assert!(out.status.success(), "{}\n{}", text(&out), rig.logs());
    let view = rig.tm.show().await;
    assert_eq!(view.active.as_deref(), Some("v2"), "{view:?}");
    assert!(
        statuses(&rig)
            .await
            .contains(&("v2-dr".into(), "online".into())),
        "{view:?}"
    );
    let (ids, items) = item_ids(&rig).await;
    assert_eq!(ids, dr_ids, "V2 has exactly what production had");
    assert!(items.iter().all(|i| i["category"] == "general"));
}

async fn databases_on(server: &common::TestServer) -> Vec<String> {
    let client = server.client(DEFAULT_DB).await;
    query_text(&client, "SELECT name FROM sys.databases")
        .await
        .unwrap()
        .into_iter()
        .filter_map(|r| r[0].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn option_2_with_a_failing_upgrade_script_rolls_back_and_removes_the_stage_dr_components_too()
{
    let failing = "ALTER TABLE items ADD COLUMN category TEXT;\nSELECT no_such_function();\n";
    let rig = Rig::start_geo(failing, |_| "smoke_http = \"/ready\"".into()).await;
    seed_rows(&rig, 20).await;
    let clients = Clients::start(rig.tm.address());
    clients.wait_acked_by(1, 10, &rig).await;
    let out = rig.upgrade(&[], None).await;
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("step 5") && all.contains("no_such_function"),
        "{all}"
    );
    // The rollback: 8, then 12 (stage-DR) before 9 (the stage copy it
    // hangs from).
    let (s8, s12, s9) = (
        all.find("step 8:").expect("step 8 ran"),
        all.find("step 12:").expect("step 12 ran"),
        all.find("step 9:").expect("step 9 ran"),
    );
    assert!(s8 < s12 && s12 < s9, "{all}");
    assert!(all.contains("stage-DR copy"), "{all}");
    let before = clients.acked_by(1);
    clients.wait_acked_by(1, before + 10, &rig).await;
    let seen = clients.finish().await;
    assert!(seen.write_errors.is_empty(), "{:?}", seen.write_errors);
    assert!(seen.read_errors.is_empty(), "{:?}", seen.read_errors);
    // V1 active, production-DR still its backup; both stage endpoints gone.
    let view = rig.tm.show().await;
    assert_eq!(view.active.as_deref(), Some("v1"), "{view:?}");
    let mut status = statuses(&rig).await;
    status.sort();
    assert_eq!(
        status,
        [
            ("v1".to_string(), "online".to_string()),
            ("v1-dr".into(), "online".into())
        ]
    );
    assert!(
        !rig.v2_alive() && !rig.v2_dr_alive(),
        "V2 and V2-DR stopped"
    );
    assert!(!stage_databases(&rig).await.contains(&APP.to_string()));
    let dr = rig.dr.as_ref().unwrap();
    assert!(
        !databases_on(&dr.stage_dr).await.contains(&APP.to_string()),
        "the stage-DR copy is dropped"
    );
    let (ids, _) = item_ids(&rig).await;
    let lost = missing(&seen.acked, &ids);
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert_eq!(ids.len(), 20 + seen.acked.len());
    assert!(!production_has_category(&rig).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_option_2_orchestrator_killed_in_step_10_is_rolled_back_with_its_chained_copy() {
    let rig = Rig::start_geo(&example_script(), |_| "smoke_http = \"/ready\"".into()).await;
    seed_rows(&rig, 15).await;
    killed_at(&rig, "upgrade.stage_dr_linked", 10).await;
    let out = rig.upgrade(&["rollback"], None).await;
    let all = text(&out);
    assert!(
        out.status.success() && all.contains("rolled back") && all.contains("step 12"),
        "{all}\n{}",
        rig.logs()
    );
    // Production was never read-only: no step 8.
    assert!(!all.contains("step 8:"), "{all}");
    let dr = rig.dr.as_ref().unwrap();
    assert!(
        !databases_on(&dr.stage_dr).await.contains(&APP.to_string()),
        "the stage-DR copy is dropped"
    );
    assert!(!stage_databases(&rig).await.contains(&APP.to_string()));
    assert!(!rig.v2_alive() && !rig.v2_dr_alive());
    let view = rig.tm.show().await;
    assert_eq!(view.active.as_deref(), Some("v1"));
    assert!(view
        .endpoints
        .iter()
        .all(|e| e.name != "v2" && e.name != "v2-dr"));
    seed_rows(&rig, 5).await;
    let (ids, _) = item_ids(&rig).await;
    assert_eq!(ids.len(), 20, "V1 read-write, nothing lost");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_option_2_orchestrator_killed_in_step_11_resumes_and_upgrades_both_regions() {
    let rig = Rig::start_geo(&example_script(), |_| "smoke_http = \"/ready\"".into()).await;
    seed_rows(&rig, 15).await;
    // Killed once the chained copy is seeded and V2-DR's endpoint added:
    // production still READ_WRITE, nothing in the window yet.
    killed_at(&rig, "upgrade.stage_dr_seeded", 11).await;
    assert!(!production_has_category(&rig).await);
    // Step 11 runs again (its copy seeded, its endpoint there already),
    // then the rest of the upgrade.
    let out = rig.upgrade(&["resume"], None).await;
    assert!(out.status.success(), "{}\n{}", text(&out), rig.logs());
    assert!(String::from_utf8_lossy(&out.stdout).contains("UPGRADED"));
    let mut status = statuses(&rig).await;
    status.sort();
    assert_eq!(status, switched_to_v2());
    assert_eq!(rig.tm.show().await.active.as_deref(), Some("v2"));
    let (ids, items) = item_ids(&rig).await;
    assert_eq!(ids.len(), 15, "every V1 row is in V2");
    assert!(items.iter().all(|i| i["category"] == "general"));
    // The stage-DR copy follows the stage copy: every row, bounded wait.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while stage_dr_ids(&rig).await != ids {
        assert!(
            std::time::Instant::now() < deadline,
            "the stage-DR copy lacks rows of V2"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(rig.v2_alive() && rig.v2_dr_alive());
}

#[tokio::test(flavor = "multi_thread")]
async fn option_2_with_the_production_region_lost_before_step_3s_dr_guard_stops_and_says_v1_dr_serves(
) {
    // The documented limit: production lost in step 3 before its guard saw
    // the DR copy hold production's end (the orchestrator killed there
    // too), so a failover to that copy could lose writes. The profile still fails over to V1-DR
    // with every acknowledged row; the orchestrator cannot finish (step 4
    // needs production) nor roll back (step 8 does), and says so.
    let rig = Rig::start_geo(&example_script(), |_| "smoke_http = \"/ready\"".into()).await;
    seed_rows(&rig, 20).await;
    let out = rig.upgrade(&[], Some("upgrade.read_only")).await;
    assert!(
        text(&out).contains("crash point upgrade.read_only"),
        "{}",
        text(&out)
    );
    rig.lose_production_region().await;
    let (ids, _) = item_ids(&rig).await;
    assert_eq!(ids.len(), 20, "V1-DR serves every acknowledged row");
    let out = rig.upgrade(&["resume"], None).await;
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        // Resume runs the interrupted step 3 again: it cannot reach
        // production.
        all.contains("step 3: FAILED") && all.contains("rollback step 8 failed"),
        "{all}"
    );
    assert!(
        all.contains("endpoint v1-dr") && all.contains("READ_ONLY"),
        "names the DR slot and production's state: {all}"
    );
    assert_eq!(rig.tm.show().await.active.as_deref(), Some("v1-dr"));
}

#[tokio::test(flavor = "multi_thread")]
async fn option_2_with_production_dr_unreachable_refuses_to_open_the_window_unprotected_and_rolls_back(
) {
    let rig = Rig::start_geo(&example_script(), |_| "smoke_http = \"/ready\"".into()).await;
    seed_rows(&rig, 10).await;
    // The DR region stops answering, and production commits more: its DR
    // copy cannot harden production's end, so step 3's guard fails and
    // the upgrade rolls back (a loss of production's region in the window
    // would lose those commits).
    let dr = rig.dr.as_ref().unwrap();
    dr.production_dr.pause();
    seed_rows(&rig, 5).await;
    let out = rig.upgrade(&[], None).await;
    dr.production_dr.resume();
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("step 3: FAILED") && all.contains("did not harden"),
        "{all}"
    );
    assert!(all.contains("rolled back"), "{all}");
    seed_rows(&rig, 5).await;
    let (ids, _) = item_ids(&rig).await;
    assert_eq!(ids.len(), 20, "V1 read-write again, nothing lost");
    assert_eq!(rig.tm.show().await.active.as_deref(), Some("v1"));
    assert!(!rig.v2_alive() && !rig.v2_dr_alive());
    assert!(!databases_on(&dr.stage_dr).await.contains(&APP.to_string()));
}

/// Whether process `pid` (a child of this test) has exited: gone, or a
/// zombie not reaped yet.
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn option_2_step_7_removes_v1_and_v1_dr_and_leaves_v2_with_its_dr_backup() {
    let rig = Rig::start_geo(&example_script(), |_| {
        "smoke_http = \"/ready\"\nremove_v1 = true".into()
    })
    .await;
    seed_rows(&rig, 10).await;
    let out = rig.upgrade(&[], None).await;
    let all = text(&out);
    assert!(out.status.success(), "{all}\n{}", rig.logs());
    assert!(all.contains("step 7: done"), "{all}");
    let mut names: Vec<String> = rig
        .tm
        .show()
        .await
        .endpoints
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.sort();
    assert_eq!(names, ["v2", "v2-dr"]);
    let v1_dr = rig.dr.as_ref().unwrap().v1_dr.pid();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !(exited(rig.v1.pid()) && exited(v1_dr)) {
        assert!(
            std::time::Instant::now() < deadline,
            "V1 and V1-DR still run after step 7"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ids, items) = item_ids(&rig).await;
    assert_eq!(ids.len(), 10);
    assert!(items.iter().all(|i| i["category"] == "general"));
}

#[tokio::test(flavor = "multi_thread")]
async fn option_2_with_the_production_region_lost_in_the_window_rolls_back_to_production_dr_read_write(
) {
    // Production is lost after step 3's guard (production READ_ONLY, its
    // DR copy holding its last commit) and before the stage copy is
    // independent: the upgrade cannot go on, and the rollback cannot set
    // production READ_WRITE — it rolls back to the DR slot instead, which
    // loses nothing (production took no write since).
    let rig = Rig::start_geo(&example_script(), |_| "smoke_http = \"/ready\"".into()).await;
    seed_rows(&rig, 20).await;
    let out = rig.upgrade(&[], Some("upgrade.dr_synced")).await;
    assert!(
        text(&out).contains("crash point upgrade.dr_synced"),
        "{}",
        text(&out)
    );
    rig.lose_production_region().await;
    let out = rig.upgrade(&["resume"], None).await;
    let all = text(&out);
    assert!(
        all.contains("rolled back") && all.contains("DR copy on 'B' took over"),
        "{all}\n{}",
        rig.logs()
    );
    assert!(
        all.contains("step 12: done") && all.contains("step 9: done"),
        "{all}"
    );
    // V1 in the DR region takes writes now, with every row.
    seed_rows(&rig, 5).await;
    let (ids, items) = item_ids(&rig).await;
    assert_eq!(ids.len(), 25, "nothing lost, writes taken: {ids:?}");
    assert!(items.iter().all(|i| i["category"].is_null()), "V1 answers");
    let view = rig.tm.show().await;
    assert_eq!(view.active.as_deref(), Some("v1-dr"), "{view:?}");
    assert!(view
        .endpoints
        .iter()
        .all(|e| e.name != "v2" && e.name != "v2-dr"));
    assert!(!rig.v2_alive() && !rig.v2_dr_alive());
    assert!(!stage_databases(&rig).await.contains(&APP.to_string()));
    let dr = rig.dr.as_ref().unwrap();
    assert!(!databases_on(&dr.stage_dr).await.contains(&APP.to_string()));
}
