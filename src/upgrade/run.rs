//! The driver around the step machine: the state folder (lock, state
//! file, the V2 application's log), the steps' I/O (admin SQL on each
//! slot's primary, the traffic manager's admin API, the plan's commands),
//! progress and the report.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use super::machine::{Machine, Next, Phase, Step};
use super::plan::Plan;
use super::{Error, Result};
use crate::traffic::{self, Activate, EndpointDef, Health, Status};

/// How long seeding may take.
const SEED_WITHIN: Duration = Duration::from_secs(6 * 3600);
/// How long the stage application may take to be healthy.
const V2_HEALTHY_WITHIN: Duration = Duration::from_secs(120);
/// How long a stopped application may take to exit before SIGKILL.
const STOP_WITHIN: Duration = Duration::from_secs(10);
/// How long a plan's command (script, smoke check, stop) may run.
const COMMAND_WITHIN: Duration = Duration::from_secs(3600);

/// What the state file holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    /// The plan's name when the upgrade began.
    plan: String,
    machine: Machine,
    /// The V2 application's process (group) id.
    stage_app_pid: Option<i32>,
    /// When ADD SECONDARY was sent (ms since the epoch).
    seeding_started_ms: Option<u64>,
    /// Production's log end once it was READ_ONLY.
    production_end_lsn: Option<i64>,
    /// Option 2: the V2-DR application's process (group) id.
    #[serde(default)]
    stage_dr_app_pid: Option<i32>,
    /// Option 2: when the chained ADD SECONDARY was sent.
    #[serde(default)]
    stage_dr_seeding_started_ms: Option<u64>,
    /// Option 2: how far production's DR copy had hardened production's
    /// log once production was READ_ONLY (step 3's guard).
    #[serde(default)]
    production_dr_synced_lsn: Option<i64>,
    /// Option 2: step 8 rolled back to the DR slot (production was
    /// unreachable).
    #[serde(default)]
    rolled_back_to_dr: bool,
}

/// How `availdb upgrade` reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Draw progress bars (when stderr is a terminal).
    pub progress: bool,
}

/// How an upgrade ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The final phase.
    pub phase: Phase,
    /// The printed summary.
    pub summary: String,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The state folder, locked for this orchestrator.
struct Folder {
    state_path: PathBuf,
    app_log: PathBuf,
    dr_app_log: PathBuf,
    report_path: PathBuf,
    _lock: File,
}

impl Folder {
    fn open(plan: &Plan, plan_path: &Path) -> Result<Folder> {
        let dir = plan.state_dir(plan_path);
        crate::durable::create_dir_all(&dir).map_err(|e| Error::State {
            path: dir.clone(),
            why: e.to_string(),
        })?;
        let lock_path = dir.join("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::State {
                path: lock_path.clone(),
                why: e.to_string(),
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(Error::Busy { path: lock_path }),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::State {
                    path: lock_path,
                    why: e.to_string(),
                })
            }
        }
        Ok(Folder {
            state_path: dir.join("state.json"),
            app_log: dir.join("stage-app.log"),
            dr_app_log: dir.join("stage-dr-app.log"),
            report_path: dir.join("report.json"),
            _lock: lock,
        })
    }

    fn load(&self) -> Result<Option<State>> {
        match std::fs::read_to_string(&self.state_path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| Error::State {
                    path: self.state_path.clone(),
                    why: format!(
                        "{e} (the file is damaged; `availdb upgrade status` cannot read it)"
                    ),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::State {
                path: self.state_path.clone(),
                why: e.to_string(),
            }),
        }
    }

    fn save(&self, state: &State) -> Result<()> {
        let text = serde_json::to_vec_pretty(state).expect("the state serializes");
        crate::durable::write_atomically(&self.state_path, &text).map_err(|e| Error::State {
            path: self.state_path.clone(),
            why: e.to_string(),
        })
    }
}

/// `availdb upgrade PLAN` (`fresh`) or `availdb upgrade resume PLAN`.
pub async fn start(plan_path: &Path, fresh: bool, options: Options) -> Result<Outcome> {
    let plan = Plan::load(plan_path)?;
    let folder = Folder::open(&plan, plan_path)?;
    let mut state = match (folder.load()?, fresh) {
        (None, true) => State {
            plan: plan.name.clone(),
            machine: if plan.stage_dr.is_some() {
                Machine::geo_redundant(plan.upgrade.remove_v1)
            } else {
                Machine::new(plan.upgrade.remove_v1)
            },
            stage_app_pid: None,
            seeding_started_ms: None,
            production_end_lsn: None,
            stage_dr_app_pid: None,
            stage_dr_seeding_started_ms: None,
            production_dr_synced_lsn: None,
            rolled_back_to_dr: false,
        },
        (None, false) => {
            return Err(Error::Wrong(format!(
                "no upgrade of plan {} has begun: start it with `availdb upgrade {}`",
                plan.name,
                plan_path.display()
            )))
        }
        (Some(state), true) => {
            return Err(Error::Wrong(match state.machine.next() {
                Next::Finished(phase) => format!(
                    "plan {} already ran ({}): remove {} to run it again",
                    plan.name,
                    phase_text(&phase),
                    folder.state_path.display()
                ),
                Next::Run(step) => format!(
                    "an upgrade of plan {} is under way (next: step {} — {}): \
                     `availdb upgrade resume` continues it, `availdb upgrade rollback` undoes it",
                    plan.name,
                    step.number(),
                    step.title()
                ),
            }))
        }
        (Some(mut state), false) => {
            state.machine.recover(now_ms());
            state
        }
    };
    check_state_fits(&plan, &folder, &state)?;
    folder.save(&state)?;
    drive(&plan, &folder, &mut state, options).await
}

/// The state was written for this plan (its name, and its option: a plan
/// that gained or lost `[stage_dr]` mid-upgrade would skip steps or undo
/// what it never made).
fn check_state_fits(plan: &Plan, folder: &Folder, state: &State) -> Result<()> {
    if state.plan != plan.name {
        return Err(Error::Wrong(format!(
            "the state in {} belongs to plan {}, not {}",
            folder.state_path.display(),
            state.plan,
            plan.name
        )));
    }
    if state.machine.stage_dr != plan.stage_dr.is_some() {
        return Err(Error::Wrong(format!(
            "the upgrade under way in {} was begun {} [stage_dr]; the plan now has {}: \
             put the plan back as it was to resume or roll back",
            folder.state_path.display(),
            if state.machine.stage_dr {
                "with"
            } else {
                "without"
            },
            if plan.stage_dr.is_some() {
                "one"
            } else {
                "none"
            }
        )));
    }
    Ok(())
}

/// `availdb upgrade rollback PLAN`.
pub async fn rollback(plan_path: &Path, options: Options) -> Result<Outcome> {
    let plan = Plan::load(plan_path)?;
    let folder = Folder::open(&plan, plan_path)?;
    let mut state = folder.load()?.ok_or_else(|| {
        Error::Wrong(format!(
            "no upgrade of plan {} has begun: there is nothing to roll back",
            plan.name
        ))
    })?;
    check_state_fits(&plan, &folder, &state)?;
    state
        .machine
        .request_rollback()
        .map_err(|e| Error::Wrong(e.0))?;
    folder.save(&state)?;
    match drive(&plan, &folder, &mut state, options).await {
        // What was asked for is not an error.
        Err(Error::RolledBack { cause, slots }) => Ok(Outcome {
            phase: Phase::RolledBack { cause },
            summary: format!("the upgrade rolled back as requested. {slots}"),
        }),
        other => other,
    }
}

/// `availdb upgrade status PLAN`.
pub fn status(plan_path: &Path) -> Result<String> {
    let plan = Plan::load(plan_path)?;
    let state_path = plan.state_dir(plan_path).join("state.json");
    let text = match std::fs::read_to_string(&state_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(format!(
                "plan {}: not started (`availdb upgrade {}` starts it)\n",
                plan.name,
                plan_path.display()
            ))
        }
        Err(e) => {
            return Err(Error::State {
                path: state_path,
                why: e.to_string(),
            })
        }
    };
    let state: State = serde_json::from_str(&text).map_err(|e| Error::State {
        path: state_path,
        why: e.to_string(),
    })?;
    let mut out = format!("plan {}: {}\n", plan.name, phase_text(&state.machine.phase));
    match (state.machine.current, state.machine.next()) {
        (Some(step), _) => out.push_str(&format!(
            "  step {} ({}) began and did not end: the orchestrator stopped during it; \
             `availdb upgrade resume` runs it again{}, `availdb upgrade rollback` undoes the upgrade\n",
            step.number(),
            step.title(),
            if step == Step::UpgradeStage {
                " (for step 5: rolls back)"
            } else {
                ""
            }
        )),
        (None, Next::Run(step)) => out.push_str(&format!(
            "  next: step {} ({}); `availdb upgrade resume` continues\n",
            step.number(),
            step.title()
        )),
        (None, Next::Finished(_)) => {}
    }
    out.push_str(&summary(&plan, &state));
    Ok(out)
}

/// `availdb upgrade PLAN --dry-run`: every step and what it would run.
pub fn dry_run(plan_path: &Path) -> Result<String> {
    let plan = Plan::load(plan_path)?;
    let p = &plan.production;
    let s = &plan.stage;
    let db = &p.database;
    let sdb = plan.stage_database();
    let mut out = format!(
        "plan {}: upgrade {db} on server '{}' through stage server '{}' (nothing is run: --dry-run)\n",
        plan.name, p.server, s.server
    );
    if let Some(dr) = &plan.stage_dr {
        out.push_str(&format!(
            "option 2 (geo-redundant): a chained stage-DR copy on server '{}' with V2-DR behind endpoint {}{}\n",
            dr.server,
            dr.endpoint,
            plan.production_dr.as_ref().map_or(String::new(), |pdr| format!(
                "; production's DR slot: server '{}', endpoint {} (an online backup)",
                pdr.server, pdr.endpoint
            ))
        ));
    }
    let mut steps: Vec<(Step, Vec<String>)> = Vec::new();
    let mut step = |step: Step, lines: Vec<String>| steps.push((step, lines));
    let mut create = Vec::new();
    if let Some(pdr) = &plan.production_dr {
        create.push(format!(
            "check: production {db} has a geo-secondary on '{}', and endpoint {} is online in the profile",
            pdr.server, pdr.endpoint
        ));
    }
    create.extend([
        format!(
            "on production's primary (of {}): ALTER CLUSTER ADD PARTNER SERVER '{}' WITH (ENDPOINT_URL = '{}')   [if not registered]",
            p.hosts.join(", "),
            s.server,
            s.endpoint_urls.join(", ")
        ),
        format!(
            "on production's primary: ALTER DATABASE {db} ADD SECONDARY ON SERVER '{}' WITH (DATABASE_NAME = '{sdb}')",
            s.server
        ),
        format!("run (detached): {}", shell_words(&plan.expand(&s.start))),
    ]);
    step(Step::CreateStage, create);
    step(
        Step::SeedStage,
        vec![
            "wait until sys.dm_geo_replication_link_status shows CATCH_UP (progress bar)".into(),
            format!(
                "SELECT sys.wait_for_database_copy_sync('{db}', '{}')",
                s.server
            ),
            format!(
                "traffic manager {}: add endpoint {} → {} priority {} OFFLINE; wait until healthy",
                plan.traffic_manager.admin, s.endpoint, s.target, s.priority
            ),
        ],
    );
    if let Some(dr) = &plan.stage_dr {
        let ddb = plan.stage_dr_database();
        step(
            Step::CreateStageDr,
            vec![
                format!(
                    "on the stage's primary: ALTER CLUSTER ADD PARTNER SERVER '{}' WITH (ENDPOINT_URL = '{}')   [if not registered]",
                    dr.server,
                    dr.endpoint_urls.join(", ")
                ),
                format!(
                    "on the stage's primary: ALTER DATABASE {sdb} ADD SECONDARY ON SERVER '{}' WITH (DATABASE_NAME = '{ddb}')   [chained: production → stage → stage-DR]",
                    dr.server
                ),
                format!("run (detached): {}", shell_words(&plan.expand_dr(&dr.start))),
            ],
        );
        step(
            Step::SeedStageDr,
            vec![
                "wait until the stage copy's link to stage-DR shows CATCH_UP (progress bar)".into(),
                format!(
                    "SELECT sys.wait_for_database_copy_sync('{sdb}', '{}')",
                    dr.server
                ),
                format!(
                    "traffic manager: add endpoint {} → {} priority {} OFFLINE; wait until healthy",
                    dr.endpoint, dr.target, dr.priority
                ),
            ],
        );
    }
    let mut read_only = vec![format!(
        "on production's primary: ALTER DATABASE {db} SET READ_ONLY   [the read-only window opens]"
    )];
    if let Some(pdr) = &plan.production_dr {
        read_only.push(format!(
            "check: SELECT sys.wait_for_database_copy_sync('{db}', '{}') reaches production's log end",
            pdr.server
        ));
    }
    step(Step::ProductionReadOnly, read_only);
    step(
        Step::TerminateStage,
        vec![
            format!(
                "on production's primary: ALTER DATABASE {db} REMOVE SECONDARY ON SERVER '{}' WITH (TERMINATION = PLANNED)",
                s.server
            ),
            "check: the stage copy's log ends at or past production's, and it is independent".into(),
        ]
        .into_iter()
        .chain(plan.stage_dr.as_ref().map(|dr| {
            format!("check: the stage copy still feeds its chained geo-secondary on '{}'", dr.server)
        }))
        .collect(),
    );
    let script = match (&plan.upgrade.script, &plan.upgrade.command) {
        (Some(file), _) => format!(
            "run {} on the stage copy {sdb} at {} as one transaction",
            plan.folder.join(file).display(),
            plan.stage_address()
        ),
        (_, Some(cmd)) => format!("run: {}", shell_words(&plan.expand(cmd))),
        _ => unreachable!("checked by Plan::load"),
    };
    let smoke = match (&plan.upgrade.smoke, &plan.upgrade.smoke_http) {
        (Some(cmd), _) => format!("smoke check: {}", shell_words(&plan.expand(cmd))),
        (_, Some(path)) => format!("smoke check: GET http://{}{path} answers 2xx", s.target),
        _ => "no smoke check in the plan".into(),
    };
    let mut upgrade = vec![
        format!(
            "on the stage's primary (of {}): ALTER DATABASE {sdb} SET READ_WRITE",
            s.hosts.join(", ")
        ),
        script,
        smoke,
    ];
    if let Some(dr) = &plan.stage_dr {
        upgrade.push(format!(
            "SELECT sys.wait_for_database_copy_sync('{sdb}', '{}')   [stage-DR holds the upgrade]",
            dr.server
        ));
    }
    step(Step::UpgradeStage, upgrade);
    let mut offline = vec![p.endpoint.clone()];
    offline.extend(plan.production_dr.iter().map(|d| d.endpoint.clone()));
    step(
        Step::Switch,
        vec![format!(
            "traffic manager: activate {} (probed first; {} {} offline{})   [the read-only window closes]",
            s.endpoint,
            offline.join(" and "),
            if offline.len() > 1 { "go" } else { "goes" },
            plan.stage_dr
                .as_ref()
                .map_or(String::new(), |d| format!("; {} online as its backup", d.endpoint))
        )],
    );
    if plan.upgrade.remove_v1 {
        let mut lines = vec![
            format!("traffic manager: remove endpoint {}", offline.join(" and ")),
            format!(
                "run: {}",
                shell_words(p.stop.as_deref().unwrap_or_default())
            ),
        ];
        if let Some(stop) = plan.production_dr.as_ref().and_then(|d| d.stop.as_ref()) {
            lines.push(format!("run: {}", shell_words(stop)));
        }
        step(Step::RemoveV1, lines);
    }
    step(
        Step::ProductionReadWrite,
        [
            format!("on production's primary: ALTER DATABASE {db} SET READ_WRITE"),
            format!(
                "traffic manager: activate {} if it is not the active endpoint",
                p.endpoint
            ),
        ]
        .into_iter()
        .chain(
            plan.production_dr
                .as_ref()
                .filter(|d| !d.hosts.is_empty())
                .map(|d| {
                    format!(
                        "if production is unreachable and step 3 saw its DR copy hold its end: on the DR's primary \
                         (of {}) ALTER DATABASE {db} FORCE_FAILOVER_ALLOW_DATA_LOSS; SET READ_WRITE; \
                         traffic manager: activate {}   [rollback to the DR slot]",
                        d.hosts.join(", "),
                        d.endpoint
                    )
                }),
        )
        .collect(),
    );
    if let Some(dr) = &plan.stage_dr {
        step(
            Step::RemoveStageDr,
            vec![
                "stop the V2-DR application (its process group: SIGTERM, then SIGKILL)".into(),
                format!("traffic manager: remove endpoint {}", dr.endpoint),
                format!(
                    "on the stage's primary: ALTER DATABASE {sdb} REMOVE SECONDARY ON SERVER '{}' WITH (TERMINATION = FORCED)   [if linked]",
                    dr.server
                ),
                format!(
                    "on the stage-DR's primary: ALTER AVAILABILITY GROUP <its group> REMOVE DATABASE {0}; DROP DATABASE {0}",
                    plan.stage_dr_database()
                ),
            ],
        );
    }
    step(
        Step::RemoveStage,
        vec![
            "stop the V2 application (its process group: SIGTERM, then SIGKILL)".into(),
            format!("traffic manager: remove endpoint {}", s.endpoint),
            format!(
                "on production's primary: ALTER DATABASE {db} REMOVE SECONDARY ON SERVER '{}' WITH (TERMINATION = FORCED)   [if linked]",
                s.server
            ),
            format!("on the stage's primary: ALTER AVAILABILITY GROUP <its group> REMOVE DATABASE {sdb}; DROP DATABASE {sdb}"),
        ],
    );
    for (step, lines) in steps {
        if step == Step::ProductionReadWrite {
            out.push_str("on a failure before the switch, or `availdb upgrade rollback`:\n");
        }
        out.push_str(&format!("step {}: {}\n", step.number(), step.title()));
        for line in lines {
            out.push_str(&format!("    {line}\n"));
        }
    }
    Ok(out)
}

fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            if w.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=@{}".contains(c))
            {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn phase_text(phase: &Phase) -> String {
    match phase {
        Phase::Forward => "in progress".into(),
        Phase::RollingBack { cause } => format!("rolling back ({cause})"),
        Phase::Upgraded => "UPGRADED: V2 serves".into(),
        Phase::CleanupFailed { error } => format!(
            "UPGRADED (V2 serves), but removing V1 failed: {error}; `availdb upgrade resume` retries it"
        ),
        Phase::RolledBack { cause } => format!("ROLLED BACK: V1 serves read-write ({cause})"),
    }
}

async fn drive(
    plan: &Plan,
    folder: &Folder,
    state: &mut State,
    options: Options,
) -> Result<Outcome> {
    loop {
        match state.machine.next() {
            Next::Finished(phase) => {
                let text = summary(plan, state);
                let report = serde_json::json!({
                    "plan": plan.name,
                    "phase": phase_text(&phase),
                    "report": state.machine.report(),
                });
                let _ = crate::durable::write_atomically(
                    &folder.report_path,
                    serde_json::to_string_pretty(&report)
                        .expect("the report serializes")
                        .as_bytes(),
                );
                return match &phase {
                    Phase::RolledBack { cause } if state.rolled_back_to_dr => {
                        let pdr = plan
                            .production_dr
                            .as_ref()
                            .expect("only option 2 rolls back to DR");
                        Err(Error::RolledBack {
                            cause: cause.clone(),
                            slots: format!(
                                "Production '{}' was unreachable: its DR copy on '{}' took over \
                                 (production was READ_ONLY and that copy held its last commit, so \
                                 nothing is lost), is READ_WRITE and serves V1 through endpoint {}; \
                                 the stage and stage-DR slots are removed. When production's region \
                                 is back, its copy is a geo-secondary of '{}'.\n{text}",
                                plan.production.server,
                                pdr.server,
                                pdr.endpoint,
                                pdr.server
                            ),
                        })
                    }
                    Phase::RolledBack { cause } => Err(Error::RolledBack {
                        cause: cause.clone(),
                        slots: format!(
                            "Production '{}'/{} is READ_WRITE and serves V1 through endpoint {}; \
                             the stage copy, its endpoint and V2 are removed{}.\n{text}",
                            plan.production.server,
                            plan.production.database,
                            plan.production.endpoint,
                            if plan.stage_dr.is_some() {
                                ", and so are the stage-DR copy, its endpoint and V2-DR"
                            } else {
                                ""
                            }
                        ),
                    }),
                    _ => Ok(Outcome {
                        phase,
                        summary: text,
                    }),
                };
            }
            Next::Run(step) => {
                state.machine.begin(step, now_ms());
                folder.save(state)?;
                println!("step {}: {} …", step.number(), step.title());
                let started = Instant::now();
                let result = run_step(plan, folder, state, step, options).await;
                match result {
                    Ok(()) => {
                        state.machine.succeeded(step, now_ms());
                        folder.save(state)?;
                        println!(
                            "step {}: done in {} ms",
                            step.number(),
                            started.elapsed().as_millis()
                        );
                    }
                    Err(why) => {
                        println!("step {}: FAILED: {why}", step.number());
                        state.machine.failed(step, now_ms(), &why);
                        folder.save(state)?;
                        if step.is_rollback() {
                            return Err(Error::RollbackFailed {
                                step: step.number(),
                                why,
                                slots: slots_after_failed_rollback(plan, state),
                            });
                        }
                        if step == Step::RemoveV1 {
                            return Err(Error::Step(format!(
                                "step 7 (remove the V1 components) failed: {why}. V2 serves through \
                                 endpoint {}; `availdb upgrade resume` retries step 7",
                                plan.stage.endpoint
                            )));
                        }
                        println!("rolling back …");
                    }
                }
            }
        }
    }
}

fn slots_after_failed_rollback(plan: &Plan, state: &State) -> String {
    let rw = state.machine.record(Step::ProductionReadWrite);
    let rolled_back_to_dr;
    let production = if state.rolled_back_to_dr {
        let pdr = plan
            .production_dr
            .as_ref()
            .expect("only option 2 rolls back to DR");
        rolled_back_to_dr = format!(
            "unreachable; its DR copy on '{}' serves V1 through endpoint {} (read-write once \
             step 8 is done)",
            pdr.server, pdr.endpoint
        );
        rolled_back_to_dr.as_str()
    } else if rw.is_some_and(|r| r.ended_ms.is_some() && r.error.is_none())
        || state.machine.record(Step::ProductionReadOnly).is_none()
    {
        "READ_WRITE, serving V1"
    } else {
        "possibly still READ_ONLY (V1 serves reads only)"
    };
    let mut out = format!(
        "Production '{}'/{}: {production}. Stage: the copy {} on '{}' and V2 (pid {}) may still exist.",
        plan.production.server,
        plan.production.database,
        plan.stage_database(),
        plan.stage.server,
        state
            .stage_app_pid
            .map_or("none".to_string(), |p| p.to_string())
    );
    if let Some(pdr) = &plan.production_dr {
        out.push_str(&format!(
            " If production's region is unreachable, the profile sends new connections to its DR \
             slot (endpoint {}, server '{}'), read-only until that copy is failed over.",
            pdr.endpoint, pdr.server
        ));
    }
    if let Some(dr) = &plan.stage_dr {
        let removed = state
            .machine
            .record(Step::RemoveStageDr)
            .is_some_and(|r| r.ended_ms.is_some() && r.error.is_none());
        if !removed && state.machine.record(Step::CreateStageDr).is_some() {
            out.push_str(&format!(
                " Stage-DR: the copy {} on '{}' and V2-DR (pid {}) may still exist.",
                plan.stage_dr_database(),
                dr.server,
                state
                    .stage_dr_app_pid
                    .map_or("none".to_string(), |p| p.to_string())
            ));
        }
    }
    out
}

fn summary(plan: &Plan, state: &State) -> String {
    let report = state.machine.report();
    let mut out = format!(
        "upgrade {}: {}\n",
        plan.name,
        phase_text(&state.machine.phase)
    );
    for r in &state.machine.steps {
        let how = match (&r.ended_ms, &r.error) {
            (Some(end), None) => format!("{} ms", end.saturating_sub(r.started_ms)),
            (Some(_), Some(e)) => format!("FAILED: {e}"),
            (None, _) => "not ended".into(),
        };
        let again = if r.attempts > 1 {
            format!(" ({} attempts)", r.attempts)
        } else {
            String::new()
        };
        out.push_str(&format!(
            "  step {:>2}  {:<56} {how}{again}\n",
            r.step.number(),
            r.step.title()
        ));
    }
    let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
    out.push_str(&format!(
        "  read-only window {:>10}   (steps 3–6: production READ_ONLY until the switch)\n",
        ms(report.read_only_window_ms)
    ));
    out.push_str(&format!(
        "  upgrade script   {:>10}\n",
        ms(report.script_ms)
    ));
    out.push_str(&format!("  smoke check      {:>10}\n", ms(report.smoke_ms)));
    out.push_str(&format!(
        "  seeding          {:>10}\n",
        ms(report.seeding_ms)
    ));
    if plan.stage_dr.is_some() {
        out.push_str(&format!(
            "  stage-DR seeding {:>10}\n",
            ms(report.seeding_dr_ms)
        ));
    }
    out.push_str(&format!(
        "  termination      {:>10}\n",
        ms(report.termination_ms)
    ));
    out.push_str(&format!(
        "  switch           {:>10}\n",
        ms(report.switch_ms)
    ));
    out.push_str(&format!("  total            {:>10}\n", ms(report.total_ms)));
    out
}

// ---------------------------------------------------------------------
// The steps.

type StepResult = std::result::Result<(), String>;

async fn run_step(
    plan: &Plan,
    folder: &Folder,
    state: &mut State,
    step: Step,
    options: Options,
) -> StepResult {
    match step {
        Step::CreateStage => create_stage(plan, folder, state).await,
        Step::SeedStage => seed_stage(plan, state, options).await,
        Step::ProductionReadOnly => production_read_only(plan, folder, state).await,
        Step::TerminateStage => terminate_stage(plan, state).await,
        Step::UpgradeStage => upgrade_stage(plan, state).await,
        Step::Switch => switch(plan).await,
        Step::RemoveV1 => remove_v1(plan).await,
        Step::ProductionReadWrite => production_read_write(plan, state).await,
        Step::RemoveStage => remove_stage(plan, state).await,
        Step::CreateStageDr => create_stage_dr(plan, folder, state).await,
        Step::SeedStageDr => seed_stage_dr(plan, state, options).await,
        Step::RemoveStageDr => remove_stage_dr(plan, state).await,
    }
}

fn tm(plan: &Plan) -> traffic::Client {
    traffic::Client::new(&plan.traffic_manager.admin)
}

async fn create_stage(plan: &Plan, folder: &Folder, state: &mut State) -> StepResult {
    let (p, s) = (&plan.production, &plan.stage);
    let prod = primary_of_database(&p.hosts, &p.database, "production").await?;
    if let Some(pdr) = &plan.production_dr {
        check_production_dr(plan, &prod, pdr).await?;
    }
    ensure_partner(&prod, &s.server, &s.endpoint_urls, "stage", "production").await?;
    if !has_link(&prod, &p.database, &s.server).await? {
        state.seeding_started_ms = Some(now_ms());
        exec(
            &prod,
            &format!(
                "ALTER DATABASE {} ADD SECONDARY ON SERVER '{}' WITH (DATABASE_NAME = '{}')",
                p.database,
                s.server,
                plan.stage_database()
            ),
        )
        .await?;
    }
    if state.stage_app_pid.is_some_and(alive) {
        return Ok(());
    }
    let pid = start_app_at(
        plan,
        &plan.expand(&s.start),
        &s.target,
        &folder.app_log,
        "V2",
    )
    .await?;
    state.stage_app_pid = Some(pid);
    folder.save(state).map_err(|e| e.to_string())?;
    check_started(pid, &folder.app_log, "V2").await
}

/// Option 2's precondition: production's DR slot exists — production
/// has its geo-secondary on the DR server, and the profile has the DR
/// endpoint online, the backup that takes over if production's region is
/// lost during the upgrade.
async fn check_production_dr(
    plan: &Plan,
    prod: &Client,
    pdr: &super::plan::ProductionDr,
) -> StepResult {
    if !has_link(prod, &plan.production.database, &pdr.server).await? {
        return Err(format!(
            "production {} has no geo-secondary on its DR server '{}' ([production_dr]): \
             create it (ALTER DATABASE {} ADD SECONDARY ON SERVER '{}') and start V1 there first",
            plan.production.database, pdr.server, plan.production.database, pdr.server
        ));
    }
    let view = tm(plan).show().await.map_err(|e| e.to_string())?;
    match view.endpoints.iter().find(|e| e.name == pdr.endpoint) {
        Some(e) if e.status == Status::Online => Ok(()),
        Some(_) => Err(format!(
            "production's DR endpoint {} is offline in the profile: set it online (a backup of {}) \
             so a loss of production's region fails over to it",
            pdr.endpoint, plan.production.endpoint
        )),
        None => Err(format!(
            "the profile has no endpoint {} (production_dr.endpoint)",
            pdr.endpoint
        )),
    }
}

/// Registers `server` as a partner of the cluster of `source` unless it
/// is one already.
async fn ensure_partner(
    source: &Client,
    server: &str,
    urls: &[String],
    slot: &str,
    of: &str,
) -> StepResult {
    let partners = column(source, "SELECT name FROM sys.partner_servers").await?;
    if partners.iter().any(|n| n.eq_ignore_ascii_case(server)) {
        return Ok(());
    }
    if urls.is_empty() {
        return Err(format!(
            "{slot} server '{server}' is not a partner server of {of}: register it there \
             (ALTER CLUSTER ADD PARTNER SERVER '{server}' WITH (ENDPOINT_URL = …)) or list its \
             endpoint_urls in the plan"
        ));
    }
    exec(
        source,
        &format!(
            "ALTER CLUSTER ADD PARTNER SERVER '{server}' WITH (ENDPOINT_URL = '{}')",
            urls.join(", ")
        ),
    )
    .await
}

/// Starts an application (V2 or V2-DR) that must listen on `target`,
/// after checking nothing else does; returns its pid.
async fn start_app_at(
    plan: &Plan,
    command: &[String],
    target: &str,
    log: &Path,
    what: &str,
) -> std::result::Result<i32, String> {
    // Something else answering on the address (an old V2, another
    // program) would pass every later check in the application's stead.
    if tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(target),
    )
    .await
    .is_ok_and(|c| c.is_ok())
    {
        return Err(format!(
            "something already listens on {what}'s address {target}: stop it (or choose another \
             target in the plan) and resume"
        ));
    }
    start_app(plan, command, log)
}

/// An application that cannot start at all shows at once (checked once
/// its pid is saved, so a crash of the orchestrator meanwhile leaves no
/// process it does not know of).
async fn check_started(pid: i32, log: &Path, what: &str) -> StepResult {
    tokio::time::sleep(Duration::from_millis(200)).await;
    if !alive(pid) {
        return Err(format!(
            "the {what} application exited at once; its output is in {}",
            log.display()
        ));
    }
    Ok(())
}

async fn seed_stage(plan: &Plan, state: &mut State, options: Options) -> StepResult {
    let (p, s) = (&plan.production, &plan.stage);
    let prod = primary_of_database(&p.hosts, &p.database, "production").await?;
    wait_seeded(&prod, &p.database, &s.server, options).await?;
    if let Some(started) = state.seeding_started_ms {
        state
            .machine
            .measured
            .insert("seeding".into(), now_ms().saturating_sub(started));
    }
    if !state.stage_app_pid.is_some_and(alive) {
        return Err(
            "the V2 application is not running (see stage-app.log in the state folder)".into(),
        );
    }
    register_offline(plan, &s.endpoint, &s.target, s.priority, &s.probe, "V2").await
}

/// Waits until the geo-link of `db` (on `source`, its source's primary)
/// to `partner` has seeded, the copy has hardened every commit so far and
/// redone it.
async fn wait_seeded(source: &Client, db: &str, partner: &str, options: Options) -> StepResult {
    let bar = options.progress.then(|| {
        let bar = indicatif::ProgressBar::new(100);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "  seeding {msg} [{bar:40}] {pos:>3}% ({elapsed})",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_message(format!("{db} → '{partner}'"));
        bar
    });
    let deadline = Instant::now() + SEED_WITHIN;
    let seeding_since = Instant::now();
    let mut last_line = Instant::now();
    loop {
        let rows = rows(
            source,
            &format!(
                "SELECT replication_state_desc, percent_complete, last_error \
                 FROM sys.dm_geo_replication_link_status WHERE database_name = '{db}' \
                 AND lower(partner_server) = lower('{partner}')"
            ),
        )
        .await?;
        let Some(row) = rows.first() else {
            return Err(format!(
                "{db} has no geo-link to '{partner}' (the step before did not create it, or it was removed)"
            ));
        };
        let percent: f64 = row[1]
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        match &bar {
            Some(bar) => bar.set_position(percent as u64),
            // Not a terminal (a log file, CI): a line every 10 s instead.
            None if last_line.elapsed() >= Duration::from_secs(10) => {
                println!(
                    "  seeding {db} → '{partner}': {percent:.0}% ({} s)",
                    seeding_since.elapsed().as_secs()
                );
                last_line = Instant::now();
            }
            None => {}
        }
        if row[0].as_deref() == Some("CATCH_UP") {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "seeding did not finish within {} s (state {}, last error {})",
                SEED_WITHIN.as_secs(),
                row[0].as_deref().unwrap_or("?"),
                row[2].as_deref().unwrap_or("none")
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    // Guard: the copy has hardened every commit so far…
    let synced = copy_sync(source, db, partner).await?;
    // …and redone it, so the termination in the read-only window has no
    // redo backlog to wait for (a large seed's image is hardened long
    // before it is redone).
    let deadline = Instant::now() + SEED_WITHIN;
    loop {
        let redone: i64 = column(
            source,
            &format!(
                "SELECT redone_lsn FROM sys.dm_geo_replication_link_status WHERE database_name = '{db}' \
                 AND lower(partner_server) = lower('{partner}')"
            ),
        )
        .await?
        .first()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
        if redone >= synced {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the copy on '{partner}' has not redone {db}'s log up to {synced} (at {redone})"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `sys.wait_for_database_copy_sync`: the LSN up to which the copy on
/// `partner` has hardened `db`'s log (every commit so far).
async fn copy_sync(source: &Client, db: &str, partner: &str) -> std::result::Result<i64, String> {
    column(
        source,
        &format!("SELECT sys.wait_for_database_copy_sync('{db}', '{partner}')"),
    )
    .await?
    .first()
    .and_then(|v| v.parse().ok())
    .ok_or_else(|| "sys.wait_for_database_copy_sync returned no LSN".into())
}

/// Adds an application's endpoint to the profile, offline (unless it is
/// there with the same target), and waits until a probe finds it healthy.
async fn register_offline(
    plan: &Plan,
    name: &str,
    target: &str,
    priority: u32,
    probe: &Option<traffic::ProbeDef>,
    what: &str,
) -> StepResult {
    let tm = tm(plan);
    let view = tm.show().await.map_err(|e| e.to_string())?;
    match view.endpoints.iter().find(|e| e.name == name) {
        Some(e) if e.target == target => {}
        Some(e) => {
            return Err(format!(
                "the profile has an endpoint {} with target {}, not {target}: remove it or rename \
                 the endpoint in the plan",
                e.name, e.target
            ))
        }
        None => {
            tm.add(&EndpointDef {
                name: name.to_string(),
                target: target.to_string(),
                priority,
                status: Status::Offline,
                probe: probe.clone(),
            })
            .await
            .map_err(|e| e.to_string())?;
        }
    }
    let deadline = Instant::now() + V2_HEALTHY_WITHIN;
    loop {
        let e = tm.probe(name).await.map_err(|e| e.to_string())?;
        if e.health == Health::Healthy {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the {what} application at {target} did not become healthy within {} s: {}",
                V2_HEALTHY_WITHIN.as_secs(),
                e.last_error.unwrap_or_default()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The stage-DR slot of an option 2 plan (steps 10–12 run only then).
fn stage_dr(plan: &Plan) -> std::result::Result<&super::plan::StageDr, String> {
    plan.stage_dr
        .as_ref()
        .ok_or_else(|| "the plan has no [stage_dr]".to_string())
}

async fn create_stage_dr(plan: &Plan, folder: &Folder, state: &mut State) -> StepResult {
    let dr = stage_dr(plan)?;
    let sdb = plan.stage_database();
    // The chained link starts at the stage copy: its region's primary is
    // the source (the forwarder of production's log).
    let stage = primary_of_database(&plan.stage.hosts, sdb, "stage").await?;
    ensure_partner(
        &stage,
        &dr.server,
        &dr.endpoint_urls,
        "stage-DR",
        "the stage cluster",
    )
    .await?;
    if !has_link(&stage, sdb, &dr.server).await? {
        state.stage_dr_seeding_started_ms = Some(now_ms());
        exec(
            &stage,
            &format!(
                "ALTER DATABASE {sdb} ADD SECONDARY ON SERVER '{}' WITH (DATABASE_NAME = '{}')",
                dr.server,
                plan.stage_dr_database()
            ),
        )
        .await?;
        crate::crashpoint::hit("upgrade.stage_dr_linked");
    }
    if state.stage_dr_app_pid.is_some_and(alive) {
        return Ok(());
    }
    let pid = start_app_at(
        plan,
        &plan.expand_dr(&dr.start),
        &dr.target,
        &folder.dr_app_log,
        "V2-DR",
    )
    .await?;
    state.stage_dr_app_pid = Some(pid);
    folder.save(state).map_err(|e| e.to_string())?;
    check_started(pid, &folder.dr_app_log, "V2-DR").await
}

async fn seed_stage_dr(plan: &Plan, state: &mut State, options: Options) -> StepResult {
    let dr = stage_dr(plan)?;
    let sdb = plan.stage_database();
    let stage = primary_of_database(&plan.stage.hosts, sdb, "stage").await?;
    wait_seeded(&stage, sdb, &dr.server, options).await?;
    if let Some(started) = state.stage_dr_seeding_started_ms {
        state
            .machine
            .measured
            .insert("seeding_dr".into(), now_ms().saturating_sub(started));
    }
    if !state.stage_dr_app_pid.is_some_and(alive) {
        return Err(
            "the V2-DR application is not running (see stage-dr-app.log in the state folder)"
                .into(),
        );
    }
    register_offline(
        plan,
        &dr.endpoint,
        &dr.target,
        dr.priority,
        &dr.probe,
        "V2-DR",
    )
    .await?;
    crate::crashpoint::hit("upgrade.stage_dr_seeded");
    Ok(())
}

async fn production_read_only(plan: &Plan, folder: &Folder, state: &mut State) -> StepResult {
    let p = &plan.production;
    let prod = primary_of_database(&p.hosts, &p.database, "production").await?;
    exec(
        &prod,
        &format!("ALTER DATABASE {} SET READ_ONLY", p.database),
    )
    .await?;
    crate::crashpoint::hit("upgrade.read_only");
    let end = log_end(&prod, &p.database).await?;
    state.production_end_lsn = Some(end);
    if let Some(pdr) = &plan.production_dr {
        // Option 2: the DR slot holds every commit production made before
        // the window, so a loss of production's region from here on loses
        // nothing acknowledged (the profile fails over to V1 there).
        let synced = copy_sync(&prod, &p.database, &pdr.server).await?;
        if synced < end {
            return Err(format!(
                "production's DR copy on '{}' has hardened its log up to {synced}, before its end {end}",
                pdr.server
            ));
        }
        // Saved at once: a rollback to the DR slot relies on it.
        state.production_dr_synced_lsn = Some(synced);
        folder.save(state).map_err(|e| e.to_string())?;
        crate::crashpoint::hit("upgrade.dr_synced");
    }
    Ok(())
}

async fn terminate_stage(plan: &Plan, state: &mut State) -> StepResult {
    let (p, s) = (&plan.production, &plan.stage);
    let prod = primary_of_database(&p.hosts, &p.database, "production").await?;
    let started = Instant::now();
    if has_link(&prod, &p.database, &s.server).await? {
        exec(
            &prod,
            &format!(
                "ALTER DATABASE {} REMOVE SECONDARY ON SERVER '{}' WITH (TERMINATION = PLANNED)",
                p.database, s.server
            ),
        )
        .await?;
        crate::crashpoint::hit("upgrade.terminated");
    }
    state
        .machine
        .measured
        .insert("termination".into(), started.elapsed().as_millis() as u64);
    // Guards: the copy is independent and holds production's last commit.
    let stage = primary_of_database(&s.hosts, plan.stage_database(), "stage").await?;
    let geo_secondary = rows(
        &stage,
        &format!(
            "SELECT 1 FROM sys.geo_replication_links WHERE database_name = '{}' AND role_desc = 'SECONDARY'",
            plan.stage_database()
        ),
    )
    .await?;
    if !geo_secondary.is_empty() {
        return Err("the stage copy is still a geo-secondary after the termination".into());
    }
    let end = state
        .production_end_lsn
        .ok_or("production's log end was not recorded in step 3")?;
    let stage_end = log_end(&stage, plan.stage_database()).await?;
    if stage_end < end {
        return Err(format!(
            "the stage copy's log ends at {stage_end}, before production's last commit at {end}"
        ));
    }
    // Option 2: the termination ended production → stage only; the
    // stage → stage-DR link goes on (the upgrade reaches the DR region).
    if let Some(dr) = &plan.stage_dr {
        if !has_link(&stage, plan.stage_database(), &dr.server).await? {
            return Err(format!(
                "the stage copy lost its chained geo-secondary on '{}' in the termination",
                dr.server
            ));
        }
    }
    Ok(())
}

async fn upgrade_stage(plan: &Plan, state: &mut State) -> StepResult {
    let s = &plan.stage;
    let db = plan.stage_database();
    // Inside the read-only window: one look for the stage's primary serves
    // both the statement and the script's connection.
    let (host, stage) =
        find_primary(&s.hosts, &primary_sql(db), &format!("stage database {db}")).await?;
    exec(&stage, &format!("ALTER DATABASE {db} SET READ_WRITE")).await?;
    let started = Instant::now();
    match (&plan.upgrade.script, &plan.upgrade.command) {
        (Some(file), _) => {
            let path = plan.folder.join(file);
            let sql = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read the upgrade script {}: {e}", path.display()))?;
            let client = connect(&host, db).await?;
            client.batch_execute(&sql).await.map_err(|e| {
                format!(
                    "the upgrade script {} failed: {}",
                    path.display(),
                    pg_text(&e)
                )
            })?;
        }
        (_, Some(command)) => {
            run_command("the upgrade command", plan, &plan.expand(command)).await?
        }
        _ => unreachable!("checked by Plan::load"),
    }
    crate::crashpoint::hit("upgrade.script_ran");
    state
        .machine
        .measured
        .insert("script".into(), started.elapsed().as_millis() as u64);
    let started = Instant::now();
    match (&plan.upgrade.smoke, &plan.upgrade.smoke_http) {
        (Some(command), _) => {
            run_command("the V2 smoke check", plan, &plan.expand(command)).await?
        }
        (_, Some(path)) => {
            let answer =
                traffic::http::request(&s.target, "GET", path, None, Duration::from_secs(30))
                    .await
                    .map_err(|e| format!("the V2 smoke check: {e}"))?;
            if !(200..300).contains(&answer.status) {
                return Err(format!(
                    "the V2 smoke check: GET {path} on {} answered {}: {}",
                    s.target,
                    answer.status,
                    String::from_utf8_lossy(&answer.body).trim()
                ));
            }
        }
        _ => {}
    }
    state
        .machine
        .measured
        .insert("smoke".into(), started.elapsed().as_millis() as u64);
    // Option 2: the stage-DR copy has hardened the upgrade too, so V2-DR,
    // the backup the switch brings online, serves the V2 schema.
    if let Some(dr) = &plan.stage_dr {
        copy_sync(&stage, db, &dr.server).await?;
    }
    Ok(())
}

async fn switch(plan: &Plan) -> StepResult {
    // Option 2: stage-DR comes online as the stage's backup in the same
    // change (production and production-DR, of better priority, go
    // offline).
    let also_online: Vec<String> = plan.stage_dr.iter().map(|d| d.endpoint.clone()).collect();
    let view = tm(plan)
        .activate(
            &plan.stage.endpoint,
            &Activate {
                also_online: also_online.clone(),
                ..Activate::default()
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    crate::crashpoint::hit("upgrade.switched");
    if view.active.as_deref() != Some(plan.stage.endpoint.as_str()) {
        return Err(format!(
            "after the switch the active endpoint is {}, not {}",
            view.active.as_deref().unwrap_or("none"),
            plan.stage.endpoint
        ));
    }
    for name in &also_online {
        if !view
            .endpoints
            .iter()
            .any(|e| &e.name == name && e.status == Status::Online)
        {
            return Err(format!("after the switch the backup {name} is not online"));
        }
    }
    Ok(())
}

async fn remove_v1(plan: &Plan) -> StepResult {
    let tm = tm(plan);
    let view = tm.show().await.map_err(|e| e.to_string())?;
    // Option 2: V1 in the DR region goes too (it serves an old copy).
    let mut endpoints = vec![&plan.production.endpoint];
    endpoints.extend(plan.production_dr.iter().map(|d| &d.endpoint));
    for name in endpoints {
        if view.endpoints.iter().any(|e| &e.name == name) {
            tm.remove(name).await.map_err(|e| e.to_string())?;
        }
    }
    if let Some(stop) = &plan.production.stop {
        run_command("stopping V1", plan, stop).await?;
    }
    if let Some(stop) = plan.production_dr.as_ref().and_then(|d| d.stop.as_ref()) {
        run_command("stopping V1 in the DR region", plan, stop).await?;
    }
    Ok(())
}

async fn production_read_write(plan: &Plan, state: &mut State) -> StepResult {
    let p = &plan.production;
    if state.rolled_back_to_dr {
        // Production was given up for its DR copy already (a resume).
        return rollback_to_production_dr(plan, state).await;
    }
    let prod = match primary_of_database(&p.hosts, &p.database, "production").await {
        Ok(prod) => prod,
        Err(unreachable) => {
            return match dr_rollback_possible(plan, state) {
                Ok(()) => {
                    println!(
                        "  production is unreachable ({unreachable}): rolling back to its DR slot"
                    );
                    rollback_to_production_dr(plan, state).await
                }
                Err(why) => Err(format!("{unreachable} ({why})")),
            };
        }
    };
    exec(
        &prod,
        &format!("ALTER DATABASE {} SET READ_WRITE", p.database),
    )
    .await?;
    let read_only = column(
        &prod,
        &format!(
            "SELECT is_read_only FROM sys.databases WHERE name = '{}'",
            p.database
        ),
    )
    .await?;
    if read_only.first().map(String::as_str) != Some("f") {
        return Err(format!("production {} is still read-only", p.database));
    }
    let tm = tm(plan);
    let view = tm.show().await.map_err(|e| e.to_string())?;
    if view.active.as_deref() != Some(p.endpoint.as_str()) {
        tm.activate(&p.endpoint, &Activate::default())
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Whether step 8 may roll back to production's DR slot instead: option
/// 2 with the DR cluster's hosts in the plan, and step 3's guard passed —
/// production has been READ_ONLY since its log end `E` (it takes no
/// write, so nothing can diverge) and its DR copy had hardened `E`, so a
/// forced geo-failover of that copy loses nothing.
fn dr_rollback_possible(plan: &Plan, state: &State) -> std::result::Result<(), String> {
    let Some(pdr) = &plan.production_dr else {
        return Err("the plan has no [production_dr] to roll back to".into());
    };
    if pdr.hosts.is_empty() {
        return Err(format!(
            "production_dr.hosts is not in the plan, so the rollback cannot fail over to '{}'",
            pdr.server
        ));
    }
    match (state.production_end_lsn, state.production_dr_synced_lsn) {
        (Some(end), Some(synced)) if synced >= end => Ok(()),
        _ => Err(format!(
            "production's DR copy on '{}' was not seen holding production's last commit, so a \
             failover there could lose writes",
            pdr.server
        )),
    }
}

/// Step 8 without production: its DR copy becomes the primary (a forced
/// geo-failover, lossless here — see [`dr_rollback_possible`]), read-write,
/// and its endpoint the active one.
async fn rollback_to_production_dr(plan: &Plan, state: &mut State) -> StepResult {
    let pdr = plan
        .production_dr
        .as_ref()
        .ok_or("the plan has no [production_dr]")?;
    let db = &plan.production.database;
    let dr = primary_of_database(&pdr.hosts, db, "production-DR").await?;
    state.rolled_back_to_dr = true;
    let geo_secondary = rows(
        &dr,
        &format!(
            "SELECT 1 FROM sys.geo_replication_links WHERE database_name = '{db}' AND role_desc = 'SECONDARY'"
        ),
    )
    .await?;
    if !geo_secondary.is_empty() {
        exec(
            &dr,
            &format!("ALTER DATABASE {db} FORCE_FAILOVER_ALLOW_DATA_LOSS"),
        )
        .await?;
    }
    let end = state
        .production_end_lsn
        .ok_or("production's log end was not recorded in step 3")?;
    let dr = primary_of_database(&pdr.hosts, db, "production-DR").await?;
    let dr_end = log_end(&dr, db).await?;
    if dr_end < end {
        return Err(format!(
            "production's DR copy's log ends at {dr_end}, before production's last commit at {end}"
        ));
    }
    // It inherited production's READ_ONLY.
    exec(&dr, &format!("ALTER DATABASE {db} SET READ_WRITE")).await?;
    let tm = tm(plan);
    let view = tm.show().await.map_err(|e| e.to_string())?;
    if view.active.as_deref() != Some(pdr.endpoint.as_str()) {
        tm.activate(&pdr.endpoint, &Activate::default())
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn remove_stage(plan: &Plan, state: &mut State) -> StepResult {
    let (p, s) = (&plan.production, &plan.stage);
    if let Some(pid) = state.stage_app_pid {
        stop_app(pid).await?;
    }
    remove_endpoint(plan, &s.endpoint).await?;
    // After a rollback to the DR slot production is unreachable, or a
    // deposed geo-secondary of its DR copy: its link to the stage is not
    // ended there.
    if !state.rolled_back_to_dr {
        let prod = primary_of_database(&p.hosts, &p.database, "production").await?;
        if has_link(&prod, &p.database, &s.server).await? {
            exec(
                &prod,
                &format!(
                    "ALTER DATABASE {} REMOVE SECONDARY ON SERVER '{}' WITH (TERMINATION = FORCED)",
                    p.database, s.server
                ),
            )
            .await?;
        }
    }
    drop_copy(&s.hosts, plan.stage_database(), "stage").await?;
    state.stage_app_pid = None;
    Ok(())
}

async fn remove_stage_dr(plan: &Plan, state: &mut State) -> StepResult {
    let dr = stage_dr(plan)?;
    if let Some(pid) = state.stage_dr_app_pid {
        stop_app(pid).await?;
    }
    remove_endpoint(plan, &dr.endpoint).await?;
    // The chained link is the stage copy's: end it there while that copy
    // exists (step 9, which drops it, comes after this one).
    let sdb = plan.stage_database();
    let stage = primary_of_any(&plan.stage.hosts, "stage").await?;
    if has_link(&stage, sdb, &dr.server).await? {
        exec(
            &stage,
            &format!(
                "ALTER DATABASE {sdb} REMOVE SECONDARY ON SERVER '{}' WITH (TERMINATION = FORCED)",
                dr.server
            ),
        )
        .await?;
    }
    drop_copy(&dr.hosts, plan.stage_dr_database(), "stage-DR").await?;
    state.stage_dr_app_pid = None;
    Ok(())
}

async fn remove_endpoint(plan: &Plan, name: &str) -> StepResult {
    let tm = tm(plan);
    let view = tm.show().await.map_err(|e| e.to_string())?;
    if view.endpoints.iter().any(|e| e.name == name) {
        tm.remove(name).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Removes `db` from its group on the cluster of `hosts` and drops it, if
/// it is there.
async fn drop_copy(hosts: &[String], db: &str, slot: &str) -> StepResult {
    let primary = primary_of_any(hosts, slot).await?;
    let groups = column(
        &primary,
        &format!(
            "SELECT group_id FROM sys.dm_hadr_database_replica_states WHERE database_name = '{db}' AND is_local"
        ),
    )
    .await?;
    if let Some(group) = groups.first() {
        exec(
            &primary,
            &format!("ALTER AVAILABILITY GROUP {group} REMOVE DATABASE {db}"),
        )
        .await?;
    }
    let exists = column(
        &primary,
        &format!("SELECT name FROM sys.databases WHERE name = '{db}'"),
    )
    .await?;
    if !exists.is_empty() {
        drop_when_released(&primary, db).await?;
    }
    Ok(())
}

/// How long the rollback waits for a dropped copy to be let go.
const RELEASE_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// `DROP DATABASE db`, retried while it is in use (55006): right after
/// `REMOVE DATABASE` the group, restarting without it, and the
/// application's closing sessions still hold it a moment.
async fn drop_when_released(primary: &Client, db: &str) -> StepResult {
    let deadline = tokio::time::Instant::now() + RELEASE_WITHIN;
    loop {
        match exec(primary, &format!("DROP DATABASE {db}")).await {
            Err(e) if e.contains("(55006)") && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

// ---------------------------------------------------------------------
// SQL, processes and commands.

async fn connect(host: &str, db: &str) -> std::result::Result<Client, String> {
    let (h, port) =
        traffic::profile::split_target(host).ok_or_else(|| format!("{host:?} is not host:port"))?;
    let mut config = tokio_postgres::Config::new();
    config
        .host(h)
        .port(port)
        .user("availdb")
        .dbname(db)
        .application_name("availdb-upgrade")
        .connect_timeout(Duration::from_secs(5));
    if let Ok(password) = std::env::var("AVAILDB_PASSWORD") {
        config.password(password);
    }
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| format!("cannot connect to {host}/{db}: {}", pg_text(&e)))?;
    tokio::spawn(connection);
    Ok(client)
}

fn pg_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = format!("{} ({})", db.message(), db.code().code());
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; {hint}"));
            }
            text
        }
        None => e.to_string(),
    }
}

async fn exec(client: &Client, sql: &str) -> StepResult {
    client
        .batch_execute(sql)
        .await
        .map_err(|e| format!("{sql}: {}", pg_text(&e)))
}

async fn rows(client: &Client, sql: &str) -> std::result::Result<Vec<Vec<Option<String>>>, String> {
    let messages = client
        .simple_query(sql)
        .await
        .map_err(|e| format!("{sql}: {}", pg_text(&e)))?;
    Ok(messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

async fn column(client: &Client, sql: &str) -> std::result::Result<Vec<String>, String> {
    Ok(rows(client, sql)
        .await?
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect())
}

async fn log_end(client: &Client, db: &str) -> std::result::Result<i64, String> {
    column(
        client,
        &format!("SELECT log_end_lsn FROM sys.databases WHERE name = '{db}'"),
    )
    .await?
    .first()
    .and_then(|v| v.parse().ok())
    .ok_or_else(|| format!("database {db} has no log end in sys.databases"))
}

/// Whether `db` (on `source`, its primary) has a geo-secondary on
/// `partner`.
async fn has_link(source: &Client, db: &str, partner: &str) -> std::result::Result<bool, String> {
    let partners = column(
        source,
        &format!(
            "SELECT partner_server FROM sys.geo_replication_links WHERE database_name = '{db}' AND role_desc = 'PRIMARY'"
        ),
    )
    .await?;
    Ok(partners.iter().any(|n| n.eq_ignore_ascii_case(partner)))
}

/// The query that finds the node whose replica of `db` is primary.
fn primary_sql(db: &str) -> String {
    format!(
        "SELECT 1 FROM sys.dm_hadr_database_replica_states \
         WHERE database_name = '{db}' AND is_local AND is_primary_replica"
    )
}

/// The node (of `hosts`) whose replica of `db` is primary.
async fn primary_of_database(
    hosts: &[String],
    db: &str,
    slot: &str,
) -> std::result::Result<Client, String> {
    Ok(
        find_primary(hosts, &primary_sql(db), &format!("{slot} database {db}"))
            .await?
            .1,
    )
}

/// The node (of `hosts`) that is primary of an availability group.
async fn primary_of_any(hosts: &[String], slot: &str) -> std::result::Result<Client, String> {
    let sql = "SELECT 1 FROM sys.dm_hadr_availability_replica_states WHERE is_local AND role_desc = 'PRIMARY'";
    Ok(
        find_primary(hosts, sql, &format!("the {slot} cluster's group"))
            .await?
            .1,
    )
}

async fn find_primary(
    hosts: &[String],
    sql: &str,
    what: &str,
) -> std::result::Result<(String, Client), String> {
    let mut errors = Vec::new();
    // A local failover may be under way: look again for a while.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for host in hosts {
            match connect(host, "availdb").await {
                Ok(client) => match rows(&client, sql).await {
                    Ok(r) if !r.is_empty() => return Ok((host.clone(), client)),
                    Ok(_) => errors.push(format!("{host}: not primary")),
                    Err(e) => errors.push(format!("{host}: {e}")),
                },
                Err(e) => errors.push(e),
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no primary of {what} among {}: {}",
                hosts.join(", "),
                errors.join("; ")
            ));
        }
        errors.clear();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Starts the V2 application in a process group of its own, its output
/// appended to `log`; returns its pid (= its process group id).
fn start_app(plan: &Plan, command: &[String], log: &Path) -> std::result::Result<i32, String> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
    let mut child = std::process::Command::new(&command[0])
        .args(&command[1..])
        .current_dir(&plan.folder)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start V2 ({}): {e}", shell_words(command)))?;
    let pid = child.id() as i32;
    // Reap it when it exits, so `alive` sees it gone.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(pid)
}

/// Stops a process group started by [`start_app`]: SIGTERM, then SIGKILL.
async fn stop_app(pid: i32) -> StepResult {
    if !alive(pid) {
        return Ok(());
    }
    // SAFETY: signalling the process group we started.
    unsafe {
        libc::kill(-pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + STOP_WITHIN;
    while alive(pid) {
        if Instant::now() > deadline {
            // SAFETY: as above.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            return if alive(pid) {
                Err(format!("the V2 application (pid {pid}) does not stop"))
            } else {
                Ok(())
            };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Runs one of the plan's commands to completion; exit 0 or an error
/// quoting its output.
async fn run_command(what: &str, plan: &Plan, command: &[String]) -> StepResult {
    let Some((program, args)) = command.split_first() else {
        return Err(format!("{what}: the command is empty"));
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(&plan.folder)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(COMMAND_WITHIN, child)
        .await
        .map_err(|_| {
            format!(
                "{what} ({}) ran longer than {} s",
                shell_words(command),
                COMMAND_WITHIN.as_secs()
            )
        })?
        .map_err(|e| format!("{what}: cannot run {}: {e}", shell_words(command)))?;
    if output.status.success() {
        return Ok(());
    }
    let mut said = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if said.is_empty() {
        said = String::from_utf8_lossy(&output.stdout).trim().to_string();
    }
    let tail: String = said
        .chars()
        .rev()
        .take(500)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Err(format!(
        "{what} ({}) failed ({}): {tail}",
        shell_words(command),
        output.status
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(dr: &str) -> Plan {
        let text = format!(
            "name = \"p\"\n[production]\nserver = \"A\"\nhosts = [\"127.0.0.1:5434\"]\n\
             database = \"app\"\nendpoint = \"v1\"\n{dr}\
             [stage]\nserver = \"S\"\nhosts = [\"127.0.0.1:6434\"]\nendpoint = \"v2\"\n\
             target = \"127.0.0.1:8002\"\npriority = 3\nstart = [\"app\"]\n\
             [stage_dr]\nserver = \"SB\"\nhosts = [\"127.0.0.1:7634\"]\nendpoint = \"v2-dr\"\n\
             target = \"127.0.0.1:8004\"\npriority = 4\nstart = [\"app\"]\n\
             [upgrade]\nscript = \"u.sql\"\n[traffic_manager]\nadmin = \"127.0.0.1:9001\"\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.toml");
        std::fs::write(&path, text).unwrap();
        Plan::load(&path).unwrap()
    }

    fn state(end: Option<i64>, synced: Option<i64>) -> State {
        State {
            plan: "p".into(),
            machine: Machine::geo_redundant(false),
            stage_app_pid: None,
            seeding_started_ms: None,
            production_end_lsn: end,
            stage_dr_app_pid: None,
            stage_dr_seeding_started_ms: None,
            production_dr_synced_lsn: synced,
            rolled_back_to_dr: false,
        }
    }

    #[test]
    fn a_rollback_goes_to_the_dr_slot_only_when_its_copy_held_productions_end_and_the_plan_names_its_hosts(
    ) {
        let with_hosts = plan(
            "[production_dr]\nserver = \"B\"\nendpoint = \"v1-dr\"\nhosts = [\"127.0.0.1:7234\"]\n",
        );
        let without_hosts = plan("[production_dr]\nserver = \"B\"\nendpoint = \"v1-dr\"\n");
        let no_dr = plan("");
        // (plan, production's end, the DR copy's hardened LSN, allowed)
        let table = [
            (&with_hosts, Some(100), Some(100), Ok(())),
            (&with_hosts, Some(100), Some(120), Ok(())),
            (&with_hosts, Some(100), Some(99), Err("could lose writes")),
            (&with_hosts, Some(100), None, Err("could lose writes")),
            (&with_hosts, None, None, Err("could lose writes")),
            (
                &without_hosts,
                Some(100),
                Some(100),
                Err("production_dr.hosts"),
            ),
            (&no_dr, Some(100), Some(100), Err("no [production_dr]")),
        ];
        for (plan, end, synced, expected) in table {
            let got = dr_rollback_possible(plan, &state(end, synced));
            match expected {
                Ok(()) => assert_eq!(got, Ok(()), "{end:?} {synced:?}"),
                Err(why) => assert!(
                    got.as_ref().is_err_and(|e| e.contains(why)),
                    "{end:?} {synced:?}: {got:?}"
                ),
            }
        }
    }
}
