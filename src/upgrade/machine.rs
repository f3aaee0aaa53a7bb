//! The upgrade's step sequencing, as a state machine without I/O: which
//! step runs next, what a success, a failure, a crash or a rollback
//! request changes, and the report's durations. Time is passed in
//! (milliseconds since the Unix epoch, so a record survives a restart of
//! the orchestrator); the driver (`run.rs`) persists the machine after
//! every call, before it acts on the answer.
//!
//! # The steps (option 1, the seed's numbering)
//! Forward: 1 [`Step::CreateStage`], 2 [`Step::SeedStage`],
//! 3 [`Step::ProductionReadOnly`], 4 [`Step::TerminateStage`],
//! 5 [`Step::UpgradeStage`], 6 [`Step::Switch`], 7 [`Step::RemoveV1`]
//! (only when the plan asks). Rollback: 8 [`Step::ProductionReadWrite`],
//! 9 [`Step::RemoveStage`].
//!
//! Option 2 (geo-redundant, [`Machine::stage_dr`]) adds three steps,
//! numbered after the seed's: 10 [`Step::CreateStageDr`] and 11
//! [`Step::SeedStageDr`] run between steps 2 and 3 (the chained copy can
//! only be made once the stage copy is seeded), and 12
//! [`Step::RemoveStageDr`] in the rollback, between 8 and 9 (the chained
//! link is ended on the stage copy before that copy is dropped).
//!
//! # Rules
//! * A failed forward step before the switch succeeded starts the
//!   rollback: 8 if step 3 ever began (production may be read-only), then
//!   12 if step 10 ever began, then 9 if step 1 ever began. Nothing production holds is touched by steps
//!   1–5 but its READ_ONLY flag, so the rollback loses nothing.
//! * Once the switch succeeded, V2 is live and takes writes production
//!   never sees: a rollback is refused, and a failure of step 7 leaves the
//!   upgrade *done with a failed cleanup* that `resume` retries.
//! * A crash leaves at most one step begun and not ended. `resume` runs it
//!   again — every step is written to be repeated (it checks what is
//!   already done) — except step 5: the upgrade script's effect on the
//!   stage copy is unknown after a crash, so an interrupted step 5 counts
//!   as failed and the upgrade rolls back (the stage copy is thrown away;
//!   production was only read-only).
//! * A failed rollback step stays current: `resume` or `rollback` retries
//!   it.
//! * The read-only window is from the start of step 3 to the end of step 6
//!   (or of step 8 on a rollback).

use serde::{Deserialize, Serialize};

/// One step of the procedure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
pub enum Step {
    /// 1: a geo-secondary of production on the stage server, and the V2
    /// application started against it.
    CreateStage,
    /// 2: seeding done and the copy synchronized; the stage endpoint
    /// registered in the profile, offline.
    SeedStage,
    /// 3: production READ_ONLY (V1 keeps serving reads).
    ProductionReadOnly,
    /// 4: planned termination: the stage copy becomes independent with
    /// every commit production made.
    TerminateStage,
    /// 5: the stage copy READ_WRITE, the upgrade script, the V2 smoke
    /// check.
    UpgradeStage,
    /// 6: the profile's active endpoint becomes the stage's (V2).
    Switch,
    /// 7: the V1 endpoint removed from the profile, V1 stopped.
    RemoveV1,
    /// 8 (rollback): production READ_WRITE again, and its endpoint active.
    ProductionReadWrite,
    /// 9 (rollback): the stage application stopped, its endpoint removed,
    /// the stage copy dropped.
    RemoveStage,
    /// 10 (option 2): a chained geo-secondary of the stage copy on the
    /// stage-DR server, and V2-DR started against it.
    CreateStageDr,
    /// 11 (option 2): the stage-DR copy seeded and synchronized; its
    /// endpoint registered in the profile, offline.
    SeedStageDr,
    /// 12 (option 2, rollback): V2-DR stopped, its endpoint removed, the
    /// chained link ended, the stage-DR copy dropped.
    RemoveStageDr,
}

impl Step {
    /// The seed's number of the step.
    pub fn number(self) -> u8 {
        self as u8 + 1
    }

    /// What the step does, in a few words.
    pub fn title(self) -> &'static str {
        match self {
            Step::CreateStage => "create the stage copy and start V2 against it",
            Step::SeedStage => "wait for seeding; register the stage endpoint offline",
            Step::ProductionReadOnly => "set production READ_ONLY",
            Step::TerminateStage => "planned termination of the stage copy",
            Step::UpgradeStage => "stage READ_WRITE, upgrade script, V2 smoke check",
            Step::Switch => "switch the active endpoint to V2",
            Step::RemoveV1 => "remove the V1 components",
            Step::ProductionReadWrite => "set production READ_WRITE (rollback)",
            Step::RemoveStage => "remove the stage components (rollback)",
            Step::CreateStageDr => "create the chained stage-DR copy and start V2-DR",
            Step::SeedStageDr => "wait for stage-DR seeding; register its endpoint offline",
            Step::RemoveStageDr => "remove the stage-DR components (rollback)",
        }
    }

    /// Whether the step belongs to the rollback.
    pub fn is_rollback(self) -> bool {
        matches!(
            self,
            Step::ProductionReadWrite | Step::RemoveStage | Step::RemoveStageDr
        )
    }
}

/// Where the upgrade is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Going forward.
    Forward,
    /// Rolling back, because of this.
    RollingBack {
        /// Why (the failed step's error, or "requested").
        cause: String,
    },
    /// V2 serves; every planned step succeeded.
    Upgraded,
    /// V2 serves, but step 7 failed: `resume` retries it.
    CleanupFailed {
        /// Its error.
        error: String,
    },
    /// Rolled back: V1 serves read-write, the stage is gone.
    RolledBack {
        /// Why it rolled back.
        cause: String,
    },
}

/// One step's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The step.
    pub step: Step,
    /// When it (last) began.
    pub started_ms: u64,
    /// When it ended, if it did.
    pub ended_ms: Option<u64>,
    /// Its error, if it failed.
    pub error: Option<String>,
    /// How many times it began (a resume or a retry runs it again).
    pub attempts: u32,
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Run this step (call [`Machine::begin`] first).
    Run(Step),
    /// Nothing left: the upgrade is in this final phase.
    Finished(Phase),
}

/// A refused request, saying why and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// The upgrade's progress: everything `status`, `resume` and `rollback`
/// need, persisted after every change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// Where the upgrade is.
    pub phase: Phase,
    /// Whether step 7 is part of the plan.
    pub remove_v1: bool,
    /// Option 2: steps 10, 11 and 12 are part of the plan.
    #[serde(default)]
    pub stage_dr: bool,
    /// Every step that began, in the order they first began.
    pub steps: Vec<StepRecord>,
    /// The step begun and not ended (at most one).
    pub current: Option<Step>,
    /// Durations measured inside steps, in milliseconds: `seeding`,
    /// `seeding_dr`, `script`, `smoke`, `termination`.
    pub measured: std::collections::BTreeMap<String, u64>,
}

impl Machine {
    /// A new upgrade (`remove_v1`: the plan includes step 7).
    pub fn new(remove_v1: bool) -> Machine {
        Machine {
            phase: Phase::Forward,
            remove_v1,
            stage_dr: false,
            steps: Vec::new(),
            current: None,
            measured: Default::default(),
        }
    }

    /// A new option 2 upgrade (with the stage-DR slot).
    pub fn geo_redundant(remove_v1: bool) -> Machine {
        Machine {
            stage_dr: true,
            ..Machine::new(remove_v1)
        }
    }

    /// The record of `step`, if it began.
    pub fn record(&self, step: Step) -> Option<&StepRecord> {
        self.steps.iter().find(|r| r.step == step)
    }

    fn ended_ok(&self, step: Step) -> bool {
        self.record(step)
            .is_some_and(|r| r.ended_ms.is_some() && r.error.is_none())
    }

    fn began(&self, step: Step) -> bool {
        self.record(step).is_some()
    }

    /// What to do next.
    pub fn next(&self) -> Next {
        if let Some(step) = self.current {
            return Next::Run(step);
        }
        match &self.phase {
            Phase::Forward => {
                let mut order = vec![Step::CreateStage, Step::SeedStage];
                if self.stage_dr {
                    order.extend([Step::CreateStageDr, Step::SeedStageDr]);
                }
                order.extend([
                    Step::ProductionReadOnly,
                    Step::TerminateStage,
                    Step::UpgradeStage,
                    Step::Switch,
                ]);
                if self.remove_v1 {
                    order.push(Step::RemoveV1);
                }
                match order.into_iter().find(|s| !self.ended_ok(*s)) {
                    Some(step) => Next::Run(step),
                    None => Next::Finished(Phase::Upgraded),
                }
            }
            Phase::CleanupFailed { .. } => Next::Run(Step::RemoveV1),
            Phase::RollingBack { cause } => {
                if self.began(Step::ProductionReadOnly) && !self.ended_ok(Step::ProductionReadWrite)
                {
                    Next::Run(Step::ProductionReadWrite)
                } else if self.began(Step::CreateStageDr) && !self.ended_ok(Step::RemoveStageDr) {
                    Next::Run(Step::RemoveStageDr)
                } else if self.began(Step::CreateStage) && !self.ended_ok(Step::RemoveStage) {
                    Next::Run(Step::RemoveStage)
                } else {
                    Next::Finished(Phase::RolledBack {
                        cause: cause.clone(),
                    })
                }
            }
            done @ (Phase::Upgraded | Phase::RolledBack { .. }) => Next::Finished(done.clone()),
        }
    }

    /// Records that `step` begins now.
    pub fn begin(&mut self, step: Step, now_ms: u64) {
        self.current = Some(step);
        match self.steps.iter_mut().find(|r| r.step == step) {
            Some(r) => {
                r.started_ms = now_ms;
                r.ended_ms = None;
                r.error = None;
                r.attempts += 1;
            }
            None => self.steps.push(StepRecord {
                step,
                started_ms: now_ms,
                ended_ms: None,
                error: None,
                attempts: 1,
            }),
        }
    }

    fn end(&mut self, step: Step, now_ms: u64, error: Option<String>) {
        if let Some(r) = self.steps.iter_mut().find(|r| r.step == step) {
            r.ended_ms = Some(now_ms);
            r.error = error;
        }
        if self.current == Some(step) {
            self.current = None;
        }
    }

    /// Records that `step` succeeded now.
    pub fn succeeded(&mut self, step: Step, now_ms: u64) {
        self.end(step, now_ms, None);
        let last_forward = step == Step::RemoveV1
            || (matches!(self.phase, Phase::Forward) && step == Step::Switch && !self.remove_v1);
        if last_forward {
            self.phase = Phase::Upgraded;
        } else if let (Phase::RollingBack { .. }, Next::Finished(done)) = (&self.phase, self.next())
        {
            self.phase = done;
        }
    }

    /// Records that `step` failed now, with `error`.
    pub fn failed(&mut self, step: Step, now_ms: u64, error: &str) {
        self.end(step, now_ms, Some(error.to_string()));
        if step.is_rollback() {
            // It stays to do: resume or rollback retries it.
            self.current = None;
            return;
        }
        if step == Step::RemoveV1 {
            self.phase = Phase::CleanupFailed {
                error: error.to_string(),
            };
            return;
        }
        self.phase = Phase::RollingBack {
            cause: format!("step {} ({}) failed: {error}", step.number(), step.title()),
        };
    }

    /// The orchestrator starts again after a crash: an interrupted step 5
    /// counts as failed (its effect is unknown); any other interrupted
    /// step is run again by [`Machine::next`].
    pub fn recover(&mut self, now_ms: u64) {
        if self.current == Some(Step::UpgradeStage) {
            self.failed(
                Step::UpgradeStage,
                now_ms,
                "interrupted (the orchestrator stopped while the upgrade script or smoke check ran; \
                 their effect on the stage copy is unknown, so the stage is thrown away)",
            );
        }
    }

    /// The operator asks for a rollback.
    pub fn request_rollback(&mut self) -> Result<(), Refused> {
        match &self.phase {
            Phase::Upgraded | Phase::CleanupFailed { .. } => Err(Refused(
                "the switch to V2 is done: V2 takes writes that production never saw, so a \
                 rollback would lose them. Upgrade again to go back (V2 → V1), or restore a backup"
                    .into(),
            )),
            _ if self.ended_ok(Step::Switch) => Err(Refused(
                "the switch to V2 is done: a rollback would lose V2's writes".into(),
            )),
            Phase::RolledBack { .. } => Err(Refused("already rolled back".into())),
            Phase::RollingBack { .. } => Ok(()),
            Phase::Forward => {
                // An interrupted forward step is abandoned; it is undone
                // by the rollback steps.
                if let Some(step) = self.current.take() {
                    if let Some(r) = self.steps.iter_mut().find(|r| r.step == step) {
                        r.error = Some("abandoned for a rollback".into());
                    }
                }
                self.phase = Phase::RollingBack {
                    cause: "requested (availdb upgrade rollback)".into(),
                };
                Ok(())
            }
        }
    }

    /// The report's durations.
    pub fn report(&self) -> Report {
        let span = |from: Step, to: Step| -> Option<u64> {
            let start = self.record(from)?.started_ms;
            let end = self.record(to)?.ended_ms?;
            (self.record(to)?.error.is_none()).then(|| end.saturating_sub(start))
        };
        let duration = |step: Step| -> Option<u64> {
            let r = self.record(step)?;
            Some(r.ended_ms?.saturating_sub(r.started_ms))
        };
        let read_only_window = span(Step::ProductionReadOnly, Step::Switch)
            .or_else(|| span(Step::ProductionReadOnly, Step::ProductionReadWrite));
        let first = self.steps.iter().map(|r| r.started_ms).min();
        let last = self.steps.iter().filter_map(|r| r.ended_ms).max();
        Report {
            read_only_window_ms: read_only_window,
            script_ms: self.measured.get("script").copied(),
            smoke_ms: self.measured.get("smoke").copied(),
            seeding_ms: self.measured.get("seeding").copied(),
            seeding_dr_ms: self.measured.get("seeding_dr").copied(),
            termination_ms: duration(Step::TerminateStage),
            switch_ms: duration(Step::Switch),
            total_ms: first.zip(last).map(|(a, b)| b.saturating_sub(a)),
            steps: self
                .steps
                .iter()
                .map(|r| (r.step, r.ended_ms.map(|e| e.saturating_sub(r.started_ms))))
                .collect(),
        }
    }
}

/// The durations of an upgrade, in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// From production READ_ONLY to the switch (or back to READ_WRITE).
    pub read_only_window_ms: Option<u64>,
    /// The upgrade script alone.
    pub script_ms: Option<u64>,
    /// The smoke check alone.
    pub smoke_ms: Option<u64>,
    /// From ADD SECONDARY to the copy synchronized.
    pub seeding_ms: Option<u64>,
    /// Option 2: the same for the chained stage-DR copy.
    pub seeding_dr_ms: Option<u64>,
    /// Step 4.
    pub termination_ms: Option<u64>,
    /// Step 6.
    pub switch_ms: Option<u64>,
    /// From the first step's start to the last one's end.
    pub total_ms: Option<u64>,
    /// Each step's duration, if it ended.
    pub steps: Vec<(Step, Option<u64>)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use Step::*;

    /// Runs the machine, failing the steps in `fail`, crashing (stopping
    /// without an end) at `crash`; returns the steps run, in order.
    fn drive(m: &mut Machine, fail: &[Step], crash: Option<Step>) -> Vec<Step> {
        let mut ran = Vec::new();
        let mut now = 1_000;
        while let Next::Run(step) = m.next() {
            m.begin(step, now);
            ran.push(step);
            now += 10;
            if crash == Some(step) {
                return ran;
            }
            if fail.contains(&step) && m.record(step).unwrap().attempts == 1 {
                m.failed(step, now, "boom");
            } else {
                m.succeeded(step, now);
            }
            now += 10;
            assert!(ran.len() < 30, "the machine loops: {ran:?}");
        }
        ran
    }

    #[test]
    fn option_1_runs_steps_1_to_6_and_7_only_when_planned() {
        let mut m = Machine::new(false);
        assert_eq!(
            drive(&mut m, &[], None),
            [
                CreateStage,
                SeedStage,
                ProductionReadOnly,
                TerminateStage,
                UpgradeStage,
                Switch
            ]
        );
        assert_eq!(m.phase, Phase::Upgraded);
        let mut m = Machine::new(true);
        assert_eq!(drive(&mut m, &[], None).last(), Some(&RemoveV1));
        assert_eq!(m.next(), Next::Finished(Phase::Upgraded));
    }

    #[test]
    fn a_failure_before_the_switch_rolls_back_only_what_began() {
        // (failing step, the rollback steps that follow it)
        let table = [
            (CreateStage, vec![RemoveStage]),
            (SeedStage, vec![RemoveStage]),
            (ProductionReadOnly, vec![ProductionReadWrite, RemoveStage]),
            (TerminateStage, vec![ProductionReadWrite, RemoveStage]),
            (UpgradeStage, vec![ProductionReadWrite, RemoveStage]),
            (Switch, vec![ProductionReadWrite, RemoveStage]),
        ];
        for (failing, rollback) in table {
            let mut m = Machine::new(true);
            let ran = drive(&mut m, &[failing], None);
            let at = ran.iter().position(|s| *s == failing).unwrap();
            assert_eq!(ran[at + 1..], rollback[..], "{failing:?} failed: {ran:?}");
            assert!(
                matches!(&m.phase, Phase::RolledBack { cause } if cause.contains("boom")),
                "{:?}",
                m.phase
            );
        }
    }

    #[test]
    fn option_2_creates_and_seeds_stage_dr_between_steps_2_and_3() {
        let mut m = Machine::geo_redundant(true);
        assert_eq!(
            drive(&mut m, &[], None),
            [
                CreateStage,
                SeedStage,
                CreateStageDr,
                SeedStageDr,
                ProductionReadOnly,
                TerminateStage,
                UpgradeStage,
                Switch,
                RemoveV1
            ]
        );
        assert_eq!(m.phase, Phase::Upgraded);
        assert_eq!(CreateStageDr.number(), 10);
        assert_eq!(RemoveStageDr.number(), 12);
    }

    #[test]
    fn an_option_2_rollback_removes_stage_dr_before_the_stage_copy_it_hangs_from() {
        let table = [
            (CreateStage, vec![RemoveStage]),
            (SeedStage, vec![RemoveStage]),
            (CreateStageDr, vec![RemoveStageDr, RemoveStage]),
            (SeedStageDr, vec![RemoveStageDr, RemoveStage]),
            (
                ProductionReadOnly,
                vec![ProductionReadWrite, RemoveStageDr, RemoveStage],
            ),
            (
                TerminateStage,
                vec![ProductionReadWrite, RemoveStageDr, RemoveStage],
            ),
            (
                UpgradeStage,
                vec![ProductionReadWrite, RemoveStageDr, RemoveStage],
            ),
            (
                Switch,
                vec![ProductionReadWrite, RemoveStageDr, RemoveStage],
            ),
        ];
        for (failing, rollback) in table {
            let mut m = Machine::geo_redundant(false);
            let ran = drive(&mut m, &[failing], None);
            let at = ran.iter().position(|s| *s == failing).unwrap();
            assert_eq!(ran[at + 1..], rollback[..], "{failing:?} failed: {ran:?}");
            assert!(
                matches!(&m.phase, Phase::RolledBack { .. }),
                "{:?}",
                m.phase
            );
        }
        // A failed stage-DR removal stays to do, and is retried.
        let mut m = Machine::geo_redundant(false);
        let ran = drive(&mut m, &[UpgradeStage, RemoveStageDr], None);
        assert_eq!(
            ran.iter().filter(|s| **s == RemoveStageDr).count(),
            2,
            "{ran:?}"
        );
        assert!(matches!(m.phase, Phase::RolledBack { .. }));
    }

    #[test]
    fn option_2_resumes_an_interrupted_stage_dr_step_and_an_older_state_reads_as_option_1() {
        for crash in [CreateStageDr, SeedStageDr] {
            let mut m = Machine::geo_redundant(false);
            drive(&mut m, &[], Some(crash));
            let mut m: Machine = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
            m.recover(5_000);
            assert_eq!(m.next(), Next::Run(crash));
            drive(&mut m, &[], None);
            assert_eq!(m.phase, Phase::Upgraded);
            assert!(m.record(SeedStageDr).is_some());
        }
        // A state file written before option 2 existed has no `stage_dr`.
        let mut json = serde_json::to_value(Machine::new(false)).unwrap();
        json.as_object_mut().unwrap().remove("stage_dr");
        let m: Machine = serde_json::from_value(json).unwrap();
        assert!(!m.stage_dr);
        // An option 2 upgrade rolled back by request from step 11.
        let mut m = Machine::geo_redundant(false);
        drive(&mut m, &[], Some(SeedStageDr));
        m.request_rollback().unwrap();
        assert_eq!(drive(&mut m, &[], None), [RemoveStageDr, RemoveStage]);
    }

    #[test]
    fn a_failed_rollback_step_is_retried_by_resume() {
        let mut m = Machine::new(false);
        let ran = drive(&mut m, &[UpgradeStage, ProductionReadWrite], None);
        // The failed rollback step ran again (drive fails only the first
        // attempt), and the rollback finished.
        assert_eq!(
            ran.iter().filter(|s| **s == ProductionReadWrite).count(),
            2,
            "{ran:?}"
        );
        assert!(matches!(m.phase, Phase::RolledBack { .. }));
    }

    #[test]
    fn a_crash_resumes_the_interrupted_step_except_the_upgrade_script_which_rolls_back() {
        for crash in [
            CreateStage,
            SeedStage,
            ProductionReadOnly,
            TerminateStage,
            Switch,
        ] {
            let mut m = Machine::new(false);
            drive(&mut m, &[], Some(crash));
            // Persisted and loaded again by a new orchestrator.
            let mut m: Machine = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
            m.recover(5_000);
            assert_eq!(m.next(), Next::Run(crash), "resume re-runs {crash:?}");
            drive(&mut m, &[], None);
            assert_eq!(m.phase, Phase::Upgraded, "after a crash in {crash:?}");
        }
        let mut m = Machine::new(false);
        drive(&mut m, &[], Some(UpgradeStage));
        m.recover(5_000);
        assert_eq!(drive(&mut m, &[], None), [ProductionReadWrite, RemoveStage]);
        assert!(matches!(&m.phase, Phase::RolledBack { cause } if cause.contains("interrupted")));
    }

    #[test]
    fn rollback_is_refused_once_the_switch_succeeded() {
        let mut m = Machine::new(true);
        drive(&mut m, &[], Some(RemoveV1));
        assert!(m.request_rollback().unwrap_err().0.contains("V2"));
        let mut m = Machine::new(false);
        drive(&mut m, &[], None);
        assert!(m.request_rollback().is_err());
        // Before the switch (here: crashed during step 4) it is accepted,
        // and undoes step 3.
        let mut m = Machine::new(false);
        drive(&mut m, &[], Some(TerminateStage));
        m.request_rollback().unwrap();
        assert_eq!(drive(&mut m, &[], None), [ProductionReadWrite, RemoveStage]);
    }

    #[test]
    fn a_failed_cleanup_leaves_v2_serving_and_resume_retries_it() {
        let mut m = Machine::new(true);
        m.steps.clear();
        let mut now = 0;
        while let Next::Run(step) = m.next() {
            m.begin(step, now);
            now += 1;
            if step == RemoveV1 {
                m.failed(step, now, "V1 would not stop");
                break;
            }
            m.succeeded(step, now);
        }
        assert!(matches!(m.phase, Phase::CleanupFailed { .. }));
        assert_eq!(m.next(), Next::Run(RemoveV1));
        m.begin(RemoveV1, now);
        m.succeeded(RemoveV1, now + 1);
        assert_eq!(m.phase, Phase::Upgraded);
    }

    #[test]
    fn the_read_only_window_runs_from_step_3_to_the_end_of_the_switch_or_of_step_8() {
        let mut m = Machine::new(false);
        drive(&mut m, &[], None);
        // drive: each step takes 10 ms with 10 ms between steps; steps 3–6
        // are four steps: 3 starts at t, 6 ends at t + 70.
        assert_eq!(m.report().read_only_window_ms, Some(70));
        assert_eq!(m.report().switch_ms, Some(10));
        let mut m = Machine::new(false);
        drive(&mut m, &[UpgradeStage], None);
        // 3, 4, 5 (failed), then 8.
        assert_eq!(m.report().read_only_window_ms, Some(70));
    }
}
