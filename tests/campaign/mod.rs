//! The fault campaign's parts: a seeded generator ([`rng`]), bounded
//! client helpers ([`net`]), the workload ([`workload`]), the nemesis
//! ([`nemesis`]), the checks ([`checker`]) and the report ([`report`]);
//! [`run`] puts them together. The module page of `tests/campaign.rs`
//! says what a campaign does and how to run one.

pub mod checker;
pub mod nemesis;
pub mod net;
pub mod report;
pub mod rng;
pub mod workload;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use checker::{check_round, one_primary, Expected, Violation};
use nemesis::{Kind, Nemesis};
use net::{query_at, Endpoint};
use report::Report;
use rng::Rng;
use workload::{Op, Recorder, Workload};

use crate::common::cluster::KeepLogsOnPanic;
use crate::common::group::{name, Group, GroupSpec, APP};

/// The short campaign's fixed seed (CI).
pub const SHORT_SEED: u64 = 0x5EED_0009;
/// Size of the tmpfs that holds the data directory of the node whose disk
/// gets filled (root only).
const DISK_MB: u32 = 512;
/// The node whose disk gets filled.
const DISK_NODE: usize = 2;
/// Bound on exactly one primary after the heal and after the restarts.
const ONE_PRIMARY_WITHIN: Duration = Duration::from_secs(60);

/// What to run, from the environment.
#[derive(Clone, Debug)]
pub struct Config {
    pub mode: &'static str,
    pub seed: u64,
    pub faults: usize,
    /// Only these kinds (`AVAILDB_CAMPAIGN_KINDS=kill_primary,disk_full`).
    pub kinds: Option<Vec<String>>,
    pub dir: PathBuf,
}

fn parse_seed(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

impl Config {
    /// `AVAILDB_CAMPAIGN=long` (else short), `AVAILDB_CAMPAIGN_FAULTS`,
    /// `AVAILDB_CAMPAIGN_SEED`, `AVAILDB_CAMPAIGN_KINDS`,
    /// `AVAILDB_CAMPAIGN_DIR`.
    pub fn from_env() -> Config {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let long = var("AVAILDB_CAMPAIGN").as_deref() == Some("long");
        let seed = var("AVAILDB_CAMPAIGN_SEED")
            .map(|s| {
                parse_seed(&s).unwrap_or_else(|| panic!("AVAILDB_CAMPAIGN_SEED={s}: not a number"))
            })
            .unwrap_or_else(|| {
                if long {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(1, |d| d.as_nanos() as u64)
                } else {
                    SHORT_SEED
                }
            });
        let faults = var("AVAILDB_CAMPAIGN_FAULTS")
            .map(|s| s.parse().expect("AVAILDB_CAMPAIGN_FAULTS: a number"))
            .unwrap_or(if long { 200 } else { 0 });
        let mode = if long { "long" } else { "short" };
        let dir = var("AVAILDB_CAMPAIGN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                    .join("campaign")
                    .join(format!("{mode}-seed-{seed:#x}"))
            });
        Config {
            mode,
            seed,
            faults,
            kinds: var("AVAILDB_CAMPAIGN_KINDS")
                .map(|s| s.split(',').map(|k| k.trim().to_string()).collect()),
            dir,
        }
    }
}

/// The faults to inject: rounds in which every available kind comes once,
/// in a seeded order, until `faults` (0: one round). Kinds this machine
/// cannot run are returned with the reason.
pub fn plan(cfg: &Config, rng: &mut Rng, root: bool) -> (Vec<Kind>, Vec<(Kind, &'static str)>) {
    let mut skipped = Vec::new();
    let mut kinds: Vec<Kind> = Kind::ALL.to_vec();
    if !root {
        kinds.retain(|&k| k != Kind::DiskFull);
        skipped.push((
            Kind::DiskFull,
            "needs root (a tmpfs mounted on one node's data directory)",
        ));
    }
    if let Some(only) = &cfg.kinds {
        kinds.retain(|k| only.iter().any(|o| o == k.name()));
    }
    assert!(
        !kinds.is_empty(),
        "no fault kind left to run: {:?}",
        cfg.kinds
    );
    let count = if cfg.faults == 0 {
        kinds.len()
    } else {
        cfg.faults
    };
    let mut planned = Vec::new();
    while planned.len() < count {
        let mut round = kinds.clone();
        rng.shuffle(&mut round);
        planned.extend(round);
    }
    planned.truncate(count);
    (planned, skipped)
}

/// Runs one campaign (see `tests/campaign.rs`) and returns its report; the
/// nodes' logs are copied into `cfg.dir`.
pub async fn run(cfg: &Config) -> Report {
    let started = Instant::now();
    let root = crate::common::netns::available();
    let mut rng = Rng::new(cfg.seed);
    let (planned, skipped_kinds) = plan(cfg, &mut rng, root);
    for (k, why) in &skipped_kinds {
        eprintln!(
            "\n!!! campaign: fault kind {} SKIPPED: {why} !!!\n",
            k.name()
        );
    }
    let disk_node = root.then_some(DISK_NODE);
    let mut group = Group::start_partitionable(GroupSpec {
        automatic: true,
        tmpfs_data: disk_node.map(|d| (d, DISK_MB)),
        ..GroupSpec::default()
    })
    .await;
    let _keep = KeepLogsOnPanic::new(&group, &format!("campaign-{:#x}", cfg.seed));
    let nodes: Vec<Endpoint> = group
        .nodes
        .iter()
        .map(|n| Endpoint {
            host: "127.0.0.1".into(),
            port: n.port(),
            password: None,
        })
        .collect();
    if let Err(e) = query_at(&nodes[0], APP, &workload::schema(), Duration::from_secs(30)).await {
        panic!("creating the schema: {e}\n{}", group.logs());
    }
    let rec = Recorder::new();
    let workload = Workload::start(nodes.clone(), rec.clone(), &mut rng);
    let warm = Instant::now();
    while !rec.acks.lock().unwrap().iter().any(|a| a.op == Op::Big) {
        assert!(
            warm.elapsed() < Duration::from_secs(120) && workload.all_running(),
            "no large transaction acknowledged within 120 s of the start\n{}",
            group.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut nemesis = Nemesis::new(
        &mut group,
        nodes.clone(),
        rec.clone(),
        rng.fork(),
        disk_node,
    );
    for (n, kind) in planned.iter().enumerate() {
        nemesis.inject(n + 1, *kind).await;
        if nemesis.broken.is_some() {
            break;
        }
        // Settle briefly, and a third of the time not at all: the next
        // fault then lands in the previous one's transition.
        if !rng.chance(0.35) {
            tokio::time::sleep(rng.millis(200, 3000)).await;
        }
    }
    let mut violations = Vec::new();
    let healed = nemesis.heal_all().await;
    let faults = std::mem::take(&mut nemesis.faults);
    let mut findings = std::mem::take(&mut nemesis.findings);
    if let Err(e) = healed {
        violations.push(Violation {
            check: "heal",
            node: None,
            detail: e,
        });
    }
    drop(nemesis);
    eprintln!(
        "campaign: {} faults injected in {:.0} s; healed, checking",
        faults.len(),
        started.elapsed().as_secs_f64()
    );

    let mut rounds = Vec::new();
    let after_heal = one_primary(&mut group, &nodes, ONE_PRIMARY_WITHIN).await;
    let writers = workload.finish().await;
    for w in &writers {
        if let Some(why) = &w.gave_up {
            violations.push(Violation {
                check: "liveness",
                node: None,
                detail: format!("a {} writer gave up: {why}", w.op.name()),
            });
        }
    }
    let expected = Expected::of(&writers);
    match after_heal {
        Ok((p, epoch, took)) => {
            eprintln!(
                "campaign: exactly one primary ({} at epoch {epoch}) {took:?} after the heal",
                name(p)
            );
            let coverage = check_round(&group, &nodes, p, &expected, &mut violations).await;
            rounds.push(("the heal", Some(took.as_millis() as u64), coverage));
        }
        Err(e) => violations.push(Violation {
            check: "one_primary",
            node: None,
            detail: format!("after the heal: {e}"),
        }),
    }
    for i in 0..group.nodes.len() {
        if let Err(e) = group.nodes[i].try_restart().await {
            violations.push(Violation {
                check: "restart",
                node: Some(name(i)),
                detail: e,
            });
        }
    }
    match one_primary(&mut group, &nodes, ONE_PRIMARY_WITHIN).await {
        Ok((p, epoch, took)) => {
            eprintln!(
                "campaign: exactly one primary ({} at epoch {epoch}) {took:?} after every node restarted",
                name(p)
            );
            let coverage = check_round(&group, &nodes, p, &expected, &mut violations).await;
            rounds.push((
                "every node restarted",
                Some(took.as_millis() as u64),
                coverage,
            ));
        }
        Err(e) => violations.push(Violation {
            check: "one_primary",
            node: None,
            detail: format!("after every node restarted: {e}"),
        }),
    }
    for (i, node) in group.nodes.iter().enumerate() {
        let log = node.data_dir().with_file_name("server.log");
        let _ = std::fs::create_dir_all(&cfg.dir);
        let _ = std::fs::copy(&log, cfg.dir.join(format!("{}.log", name(i))));
    }
    findings.sort_by_key(|f| f.at_ms);
    let ryw = rec.ryw.lock().unwrap().clone();
    let acks = rec.acks.lock().unwrap().clone();
    Report {
        seed: cfg.seed,
        mode: cfg.mode,
        faults_requested: planned.len(),
        binary: crate::common::availdb_bin().display().to_string(),
        root,
        skipped_kinds,
        duration_ms: rec.now_ms(),
        faults,
        findings,
        violations,
        acks,
        writers,
        ryw,
        rounds,
    }
}
