//! The simulation's tests: golden scripts, one per rule (`scripts/`), and
//! randomized runs that check every invariant after every step over many
//! seeds.

use std::error::Error;

use super::{Sim, MS};
use crate::ag::role::Request;

test_each_file::test_each_path! { in "src/sim/scripts" as scripts => run_script }

fn run_script(path: &std::path::Path) {
    goldenscript::run(&mut Runner::default(), path).expect("the script runs");
}

#[derive(Default)]
struct Runner {
    sim: Option<Sim>,
}

impl goldenscript::Runner for Runner {
    fn run(&mut self, command: &goldenscript::Command) -> Result<String, Box<dyn Error>> {
        let mut args = command.consume_args();
        let name = command.name.as_str();
        if name == "start" {
            let seed = args.lookup_parse::<u64>("seed")?.unwrap_or(1);
            let nodes = args.lookup_parse::<usize>("nodes")?.unwrap_or(3);
            let asynchronous: Vec<usize> = args
                .lookup("async")
                .map(|a| {
                    a.value
                        .trim_start_matches('r')
                        .parse::<usize>()
                        .map(|n| vec![n - 1])
                })
                .transpose()?
                .unwrap_or_default();
            args.reject_rest()?;
            let mut sim = Sim::new(seed);
            sim.start(nodes, &asynchronous);
            let out = sim.take_trace();
            self.sim = Some(sim);
            return Ok(out);
        }
        let sim = self.sim.as_mut().ok_or("start first")?;
        let node = |sim: &Sim,
                    args: &mut goldenscript::ArgumentConsumer<'_>|
         -> Result<usize, Box<dyn Error>> {
            let a = args.next_pos().ok_or("a node is needed")?;
            sim.index(&a.value)
                .ok_or_else(|| format!("no node {}", a.value).into())
        };
        match name {
            "write" => {
                let n = args.lookup_parse::<usize>("n")?.unwrap_or(1);
                let parts = args.lookup_parse::<u32>("parts")?.unwrap_or(1);
                args.reject_rest()?;
                sim.write(n, parts);
            }
            "tick" => {
                let ms = args.lookup_parse::<u64>("ms")?.unwrap_or(10);
                args.reject_rest()?;
                sim.tick(ms * MS);
            }
            "stabilize" => {
                args.reject_rest()?;
                let quiet = sim.stabilize(120_000 * MS);
                sim.note(format!("stable: {quiet}"));
            }
            "partition" => {
                let side: Vec<usize> = args
                    .rest()
                    .iter()
                    .filter_map(|a| sim.index(&a.value))
                    .collect();
                sim.partition(&side);
                sim.note(format!("partition {side:?} from the rest"));
            }
            "heal" => {
                sim.heal();
                sim.note("heal".into());
            }
            "resume_movement" => sim.resume_movement(),
            "kill" => {
                let i = node(sim, &mut args)?;
                sim.kill(i);
            }
            "restart" => {
                let i = node(sim, &mut args)?;
                sim.restart(i);
            }
            "pause" => {
                let i = node(sim, &mut args)?;
                sim.nodes[i].paused = true;
                sim.note(format!("{}: paused", sim.nodes[i].name));
            }
            "resume" => {
                let i = node(sim, &mut args)?;
                sim.nodes[i].paused = false;
                sim.note(format!("{}: resumed", sim.nodes[i].name));
            }
            "failover" => {
                let i = node(sim, &mut args)?;
                sim.request(i, Request::Failover);
            }
            "force" => {
                let i = node(sim, &mut args)?;
                sim.request(i, Request::ForceFailover);
            }
            "redo" => {
                let i = node(sim, &mut args)?;
                let rate = args.lookup_parse::<usize>("rate")?.unwrap_or(16);
                sim.nodes[i].redo_rate = rate;
            }
            "sync" => {
                let i = node(sim, &mut args)?;
                let on = args.next_pos().is_none_or(|a| a.value != "off");
                sim.nodes[i].db.no_sync = !on;
            }
            "change" => {
                let timeout = args.lookup_parse::<u32>("timeout")?.unwrap_or(6);
                args.reject_rest()?;
                sim.change_timeout(timeout);
            }
            "status" => return Ok(sim.status()),
            "check" => {
                let problems = sim.check_end();
                let out = sim.take_trace();
                let verdict = if problems.is_empty() {
                    "all rules hold".to_string()
                } else {
                    problems.join("\n")
                };
                return Ok(if out.is_empty() {
                    verdict
                } else {
                    format!("{out}\n{verdict}")
                });
            }
            other => return Err(format!("unknown command {other}").into()),
        }
        Ok(sim.take_trace())
    }
}

/// Runs `steps` random faults and writes on a 3-node group with `seed`,
/// then heals everything and checks the end state. Returns the problems.
fn random_run(seed: u64, steps: usize) -> (Vec<String>, String) {
    let mut sim = Sim::new(seed);
    sim.start(3, &[]);
    for _ in 0..steps {
        let n = sim.nodes.len() as u64;
        let i = sim.below(n) as usize;
        match sim.below(100) {
            0..=44 => {
                let parts = if sim.below(10) == 0 { 3 } else { 1 };
                let k = 1 + sim.below(3) as usize;
                sim.write(k, parts);
            }
            45..=59 => {
                let ms = 10 + sim.below(1500);
                sim.tick(ms * MS);
            }
            60..=64 => sim.kill(i),
            65..=69 => sim.restart(i),
            70..=72 => {
                sim.nodes[i].paused = true;
                sim.note(format!("{}: paused", sim.nodes[i].name));
            }
            73..=76 => {
                sim.nodes[i].paused = false;
                sim.note(format!("{}: resumed", sim.nodes[i].name));
            }
            77..=79 => {
                sim.partition(&[i]);
                sim.note(format!("{}: cut off", sim.nodes[i].name));
            }
            80..=82 => {
                sim.heal();
                sim.note("heal".into());
            }
            83..=87 => {
                sim.note(format!("{}: failover", sim.nodes[i].name));
                sim.request(i, Request::Failover);
            }
            88..=89 => {
                // Forced failover only onto a synchronized replica, so no
                // acknowledged commit may be lost.
                let synchronized = sim
                    .cluster
                    .record(super::GROUP)
                    .and_then(|r| r.synchronized.get(super::DB))
                    .is_some_and(|set| set.contains(&sim.nodes[i].name));
                if synchronized {
                    sim.note(format!("{}: force", sim.nodes[i].name));
                    sim.request(i, Request::ForceFailover);
                }
            }
            90..=93 => {
                let t = 5 + sim.below(4) as u32;
                sim.change_timeout(t);
            }
            94..=96 => {
                sim.nodes[i].redo_rate = sim.below(3) as usize * 8;
                sim.note(format!(
                    "{}: redo rate {}",
                    sim.nodes[i].name, sim.nodes[i].redo_rate
                ));
            }
            _ => sim.tick(5_000 * MS),
        }
    }
    sim.heal();
    for i in 0..sim.nodes.len() {
        sim.nodes[i].paused = false;
        sim.nodes[i].redo_rate = 16;
        sim.nodes[i].db.no_sync = false;
        sim.restart(i);
    }
    sim.resume_movement();
    sim.stabilize(300_000 * MS);
    let problems = sim.check_end();
    (problems, sim.take_trace())
}

#[test]
fn random_faults_keep_every_safety_rule() {
    let seeds: u64 = std::env::var("AVAILDB_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let steps: usize = std::env::var("AVAILDB_SIM_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(80);
    let first: u64 = std::env::var("AVAILDB_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    for seed in first..first + seeds {
        let (problems, trace) = random_run(seed, steps);
        assert!(
            problems.is_empty(),
            "seed {seed} ({steps} steps) broke the rules (replay: AVAILDB_SIM_SEED={seed} AVAILDB_SIM_SEEDS=1 AVAILDB_SIM_STEPS={steps}):\n{}\n--- trace ---\n{trace}",
            problems.join("\n")
        );
    }
}
