//! A deterministic simulation of an availability group: one process, one
//! seeded random generator, a simulated clock and network, and the real
//! protocol cores — the role machine ([`crate::ag::role`]), the link cores
//! ([`crate::replication::link`]), the synchronous-commit rule
//! ([`crate::replication::sync`]), the write fence ([`crate::engine::Fence`]),
//! the automatic-failover decision ([`crate::ag::failover`]) and the cluster's
//! state machine ([`crate::cluster::ClusterState`]) — wired together as the
//! drivers wire them in a node, with simulated logs and files (`db.rs`) and
//! an oracle for Raft (`cluster.rs`).
//!
//! # What is checked, after every step
//! 1. **One writer**: at no simulated instant do two nodes' fences take
//!    writes (safety rule 2).
//! 2. **No acknowledged commit lost**: when a node opens its writes in a
//!    new epoch, its log holds every commit acknowledged so far (rule 1;
//!    forced failovers here target synchronized replicas only).
//! 3. **Redo never runs ahead of hardening** on a secondary.
//!
//! And at the end of a run (everything healed and restarted, quiet): one
//! primary; every node's file equal to the primary's at the same applied
//! LSN (rule 3); every acknowledged commit in every file exactly once,
//! nothing that was never sent.
//!
//! # Commands (golden scripts in `scripts/`, regenerated with
//! `UPDATE_GOLDENFILES=1`)
//! `start [nodes=N] [async=rX]`, `write [n=N] [parts=P]`, `tick [ms=N]`,
//! `stabilize`, `partition rA,rB`, `heal`, `kill rX`, `restart rX`,
//! `pause rX`, `resume rX`, `failover rX`, `force rX`, `resume_movement`,
//! `change timeout=S`, `redo rX rate=N`, `sync rX on|off`, `status`,
//! `check`.

mod cluster;
mod db;
mod node;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::ag::role::{Event, Request};
use crate::cluster::{Command, CommandResult};
use crate::group::{AvailabilityMode, FailoverMode};

use cluster::Cluster;
use db::FileState;
use node::{Msg, Node};

/// Milliseconds in simulated microseconds.
const MS: u64 = 1000;
/// How often the clock moves in `tick` and `stabilize`.
const STEP: u64 = 10 * MS;
/// The group's name.
const GROUP: &str = "ag1";
/// Its one database.
const DB: &str = "app";

/// One message on the simulated network.
#[derive(Debug, Clone)]
struct Envelope {
    at: u64,
    from: usize,
    to: usize,
    msg: Msg,
}

/// The simulated world.
pub(crate) struct Sim {
    /// The clock (µs).
    pub now: u64,
    rng: u64,
    pub nodes: Vec<Node>,
    pub cluster: Cluster,
    /// Links cut by a partition (both directions).
    cut: BTreeSet<(usize, usize)>,
    /// Connections that lost a message: like TCP, they deliver nothing
    /// more (both sides find out by their session timeout) until the
    /// primary connects again.
    broken: BTreeSet<(usize, usize)>,
    inflight: VecDeque<Envelope>,
    /// Full images, by number: what the file held when each was taken.
    pub images: Vec<FileState>,
    next_tx: u64,
    /// Acknowledged transactions, and on which node.
    pub acked: BTreeMap<u64, usize>,
    /// Transactions sent (acknowledged or not).
    pub attempted: BTreeSet<u64>,
    /// Transactions whose commit failed (in doubt: present or not).
    pub failed: BTreeSet<u64>,
    /// What happened since the output was last taken.
    trace: Vec<String>,
    /// Broken rules.
    pub violations: Vec<String>,
    /// Which node's writes were open at the last step (rule 1 and 2).
    open: BTreeMap<usize, u64>,
}

impl Sim {
    /// An empty world with `seed`.
    pub fn new(seed: u64) -> Sim {
        Sim {
            now: 0,
            rng: seed ^ 0x9E37_79B9_7F4A_7C15,
            nodes: Vec::new(),
            cluster: Cluster::default(),
            cut: BTreeSet::new(),
            broken: BTreeSet::new(),
            inflight: VecDeque::new(),
            images: Vec::new(),
            next_tx: 1,
            acked: BTreeMap::new(),
            attempted: BTreeSet::new(),
            failed: BTreeSet::new(),
            trace: Vec::new(),
            violations: Vec::new(),
            open: BTreeMap::new(),
        }
    }

    /// A pseudo-random number (splitmix64).
    pub fn random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.random() % n.max(1)
    }

    fn note(&mut self, line: String) {
        self.trace.push(format!("{:>6}ms {line}", self.now / MS));
    }

    /// The lines noted since the last call.
    pub fn take_trace(&mut self) -> String {
        let out = self.trace.join("\n");
        self.trace.clear();
        out
    }

    /// The index of replica `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.name.eq_ignore_ascii_case(name))
    }

    /// Forms a group of `n` synchronous, automatic replicas (`async_nodes`
    /// asynchronous) with r1 primary, and lets it settle.
    pub fn start(&mut self, n: usize, async_nodes: &[usize]) {
        let mut config = crate::group::fixtures::group(&[]);
        config.name = GROUP.into();
        config.databases = vec![DB.into()];
        config.cluster_id = "sim".into();
        for i in 0..n {
            let mut r = crate::group::fixtures::replica(&format!("r{}", i + 1));
            r.session_timeout_s = 5;
            if async_nodes.contains(&i) {
                r.availability_mode = AvailabilityMode::AsynchronousCommit;
                r.failover_mode = FailoverMode::Manual;
            }
            config.replicas.push(r);
        }
        for i in 0..n {
            self.nodes.push(Node::new(&format!("r{}", i + 1)));
        }
        self.request(0, Request::Create(Box::new(config.clone())));
        for i in 1..n {
            self.request(i, Request::Join);
        }
        let put = Command::PutGroup(Box::new(config));
        let _ = self.propose(0, &put);
        self.stabilize(60_000 * MS);
    }

    /// A statement on node `i`.
    pub fn request(&mut self, i: usize, request: Request) {
        let reply = self.nodes[i].reply_id();
        self.nodes[i]
            .queue
            .push_back(Event::Request { reply, request });
        self.run_machine(i);
    }

    /// Proposes a command from node `i`: committed only when `i` is in the
    /// majority component.
    pub fn propose(&mut self, i: usize, command: &Command) -> Result<CommandResult, String> {
        let majority = self.majority();
        if !majority.as_ref().is_some_and(|m| m.contains(&i)) {
            return Err("no majority of the cluster is reachable from this node".into());
        }
        let result = self.cluster.commit(self.now, command);
        if result == CommandResult::Ok {
            match command {
                Command::RenewLease { .. }
                | Command::RecordFailoverLoss { .. }
                | Command::RemoveGroup(_)
                | Command::SetServerName(_)
                | Command::PutPartner(_)
                | Command::RemovePartner(_)
                | Command::CreateRole(_)
                | Command::AlterRole { .. }
                | Command::DropRole(_)
                | Command::SetPrivileges { .. }
                | Command::HoldLogForBackups { .. } => {}
                Command::SetSynchronized {
                    replica,
                    synchronized,
                    ..
                } => {
                    let what = if *synchronized { "joins" } else { "leaves" };
                    self.note(format!("cluster: {replica} {what} the synchronized set"))
                }
                Command::Promote {
                    new_primary,
                    new_epoch,
                    after_lease,
                    ..
                } => self.note(format!(
                    "cluster: promote {new_primary} at epoch {new_epoch}{}",
                    if *after_lease {
                        " (after the lease)"
                    } else {
                        ""
                    }
                )),
                Command::StepDown { holder, epoch, .. } => {
                    self.note(format!("cluster: {holder} stepped down from epoch {epoch}"))
                }
                Command::PutGroup(c) => {
                    self.note(format!("cluster: definition version {}", c.version))
                }
            }
        }
        Ok(result)
    }

    /// The nodes that can reach more than half of all nodes (up, not
    /// paused, not cut off), if any.
    pub fn majority(&self) -> Option<BTreeSet<usize>> {
        let alive: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].up && !self.nodes[i].paused)
            .collect();
        let mut seen = BTreeSet::new();
        for &start in &alive {
            if seen.contains(&start) {
                continue;
            }
            let mut component = BTreeSet::from([start]);
            let mut stack = vec![start];
            while let Some(a) = stack.pop() {
                for &b in &alive {
                    if !component.contains(&b) && !self.is_cut(a, b) {
                        component.insert(b);
                        stack.push(b);
                    }
                }
            }
            seen.extend(component.iter().copied());
            if component.len() * 2 > self.nodes.len() {
                return Some(component);
            }
        }
        None
    }

    fn is_cut(&self, a: usize, b: usize) -> bool {
        self.cut.contains(&(a.min(b), a.max(b)))
    }

    /// Cuts every link between `side` and the other nodes.
    pub fn partition(&mut self, side: &[usize]) {
        for &a in side {
            for b in 0..self.nodes.len() {
                if !side.contains(&b) {
                    self.cut.insert((a.min(b), a.max(b)));
                }
            }
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        if matches!(msg, Msg::Hello { .. }) {
            // A new connection.
            self.broken.remove(&(from.min(to), from.max(to)));
        }
        self.inflight.push_back(Envelope {
            at: self.now + MS,
            from,
            to,
            msg,
        });
    }

    /// Moves the clock by `dt` (µs) in steps, doing everything due.
    pub fn tick(&mut self, dt: u64) {
        let end = self.now + dt;
        while self.now < end {
            self.now = (self.now + STEP).min(end);
            self.step();
        }
    }

    /// One step of the world at `now`.
    fn step(&mut self) {
        // The network.
        let mut later = VecDeque::new();
        while let Some(e) = self.inflight.pop_front() {
            if e.at > self.now {
                later.push_back(e);
                continue;
            }
            let pair = (e.from.min(e.to), e.from.max(e.to));
            let deliverable = !self.is_cut(e.from, e.to)
                && !self.broken.contains(&pair)
                && self.nodes[e.to].up
                && !self.nodes[e.to].paused
                && self.nodes[e.from].up;
            if deliverable {
                self.deliver(e.from, e.to, e.msg);
            } else {
                self.broken.insert(pair);
            }
        }
        later.extend(self.inflight.drain(..));
        self.inflight = later;
        // The cluster's leader and its failover decisions.
        if let Some(majority) = self.majority() {
            let leader = *majority.iter().next().expect("a majority is not empty");
            self.cluster.elect(leader, self.now);
            self.decide(&majority);
        } else {
            self.cluster.leader = None;
        }
        // Every node.
        for i in 0..self.nodes.len() {
            if self.nodes[i].up && !self.nodes[i].paused {
                self.node_step(i);
            }
        }
        self.check_step();
    }

    /// The leader's automatic failover (`ag::clustered::spawn_failover_decider`).
    fn decide(&mut self, majority: &BTreeSet<usize>) {
        use crate::ag::clustered::{LEASE, MARGIN, TAKE_OFFICE};
        use crate::ag::failover::{decide, Decision, Observation, Policy};
        for group in self.cluster.groups() {
            let Some(record) = self.cluster.record(&group).cloned() else {
                continue;
            };
            let expired = match self.cluster.renewed_at.get(&group) {
                Some(at) => self.now > at + (LEASE + MARGIN).as_micros() as u64,
                None => self
                    .cluster
                    .unleased_since
                    .get(&group)
                    .is_some_and(|since| self.now > since + TAKE_OFFICE.as_micros() as u64),
            };
            if !expired {
                continue;
            }
            let reachable: BTreeSet<String> = majority
                .iter()
                .map(|&i| self.nodes[i].name.clone())
                .collect();
            let observation = Observation {
                config: &record.config,
                synchronized: &record.synchronized,
                lease_expired: true,
                conditions: &[],
                reachable: &reachable,
            };
            if let Decision::Failover { target, reason } = decide(&observation, Policy::default()) {
                let promote = Command::Promote {
                    group: group.clone(),
                    new_primary: target,
                    new_epoch: record.config.epoch + 1,
                    require_synchronized: true,
                    after_lease: true,
                    at_us: 0,
                    reason,
                };
                let leader = *majority.iter().next().expect("not empty");
                let _ = self.propose(leader, &promote);
            }
        }
    }

    /// Rules 1–3 after a step.
    fn check_step(&mut self) {
        let mut open = BTreeMap::new();
        let mut broken = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if n.up {
                if let (Ok(()), Some(epoch)) = (n.fence.check(self.now), n.fence.epoch()) {
                    open.insert(i, epoch);
                }
            }
            if n.up && n.secondary.is_some() && n.db.applied > n.db.durable.max(n.db.first) {
                broken.push(format!(
                    "rule 3: {} redid past what it hardened ({} > {})",
                    n.name, n.db.applied, n.db.durable
                ));
            }
        }
        for line in broken {
            self.violation(line);
        }
        if open.len() > 1 {
            let names: Vec<String> = open.keys().map(|&i| self.nodes[i].name.clone()).collect();
            self.violation(format!("rule 2: two writers at once: {names:?}"));
        }
        for (&i, &epoch) in &open {
            if self.open.get(&i) != Some(&epoch) {
                self.note(format!(
                    "{}: writes open at epoch {epoch}",
                    self.nodes[i].name
                ));
                let held: BTreeSet<u64> = self.nodes[i].db.log_txs();
                let missing: Vec<u64> = self
                    .acked
                    .keys()
                    .filter(|t| !held.contains(t))
                    .copied()
                    .collect();
                if !missing.is_empty() {
                    self.violation(format!(
                        "rule 1: {} opened its writes at epoch {epoch} without acknowledged transactions {missing:?}",
                        self.nodes[i].name
                    ));
                }
            }
        }
        for (&i, &epoch) in &self.open.clone() {
            if !open.contains_key(&i) {
                self.note(format!(
                    "{}: writes closed (epoch {epoch})",
                    self.nodes[i].name
                ));
            }
        }
        self.open = open;
    }

    fn violation(&mut self, line: String) {
        if !self.violations.contains(&line) {
            self.note(format!("VIOLATION {line}"));
            self.violations.push(line);
        }
    }

    /// Runs until every secondary has caught up and nothing is pending, or
    /// `max` (µs) passed. True when quiet.
    pub fn stabilize(&mut self, max: u64) -> bool {
        let end = self.now + max;
        while self.now < end {
            self.tick(STEP);
            if self.quiet() {
                return true;
            }
        }
        false
    }

    fn quiet(&self) -> bool {
        let Some(&p) = self.open.keys().next() else {
            return false;
        };
        let end = self.nodes[p].db.end();
        let primary = &self.nodes[p];
        let last = primary.db.last_record();
        primary
            .primary
            .as_ref()
            .is_some_and(|pr| pr.commits.is_empty())
            && self.nodes.iter().enumerate().all(|(i, n)| {
                i == p
                    || !n.up
                    || n.paused
                    || (n.secondary.is_some()
                        && n.db.end() == end
                        && n.db.applied == end
                        && n.db.durable == end
                        && n.db.last_record() == last)
            })
            && self.inflight.is_empty()
    }

    /// `n` transactions of `parts` records each, sent to the node whose
    /// writes are open (if any): returns which were acknowledged within
    /// the steps the commits take.
    pub fn write(&mut self, n: usize, parts: u32) -> Vec<u64> {
        let Some(&p) = self.open.keys().next() else {
            self.note("write: no node takes writes".into());
            return Vec::new();
        };
        let mut sent = Vec::new();
        for _ in 0..n {
            let tx = self.next_tx;
            self.next_tx += 1;
            if self.nodes[p].commit(self.now, tx, parts) {
                self.attempted.insert(tx);
                sent.push(tx);
            }
        }
        // The clients wait for their answers (bounded, as a client's
        // statement timeout is).
        let deadline = self.now + 30_000 * MS;
        while self.now < deadline
            && sent
                .iter()
                .any(|t| !self.acked.contains_key(t) && !self.failed.contains(t))
        {
            self.tick(STEP);
        }
        let acked: Vec<u64> = sent
            .iter()
            .copied()
            .filter(|t| self.acked.contains_key(t))
            .collect();
        self.note(format!(
            "write at {}: sent {sent:?}, acknowledged {acked:?}",
            self.nodes[p].name
        ));
        acked
    }

    /// Kills node `i` (kill -9): volatile state is lost, so is the log past
    /// what was fsynced.
    pub fn kill(&mut self, i: usize) {
        if !self.nodes[i].up {
            return;
        }
        // Clients of commits in flight get a broken connection.
        self.failed.extend(self.nodes[i].kill());
        self.note(format!("{}: killed", self.nodes[i].name));
    }

    /// Restarts node `i` from its files.
    pub fn restart(&mut self, i: usize) {
        if self.nodes[i].up {
            return;
        }
        let images = self.images.clone();
        self.nodes[i].restart(&images);
        self.note(format!("{}: restarted", self.nodes[i].name));
        self.run_machine(i);
    }

    /// `MODIFY REPLICA ON 'r2' WITH (SESSION_TIMEOUT = seconds)` on the
    /// node whose writes are open.
    pub fn change_timeout(&mut self, seconds: u32) {
        let Some(&p) = self.open.keys().next() else {
            self.note("change: no primary takes statements".into());
            return;
        };
        let Some(mut config) = self.nodes[p].machine.config().cloned() else {
            return;
        };
        if let Some(r) = config.replica_mut("r2") {
            r.session_timeout_s = seconds;
        }
        self.request(p, Request::Change(Box::new(config)));
    }

    /// `ALTER DATABASE app SET HADR RESUME` on the primary (after a forced
    /// failover).
    pub fn resume_movement(&mut self) {
        let self_names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        let names_match = |names: &[String], j: usize, r: &str| names[j].eq_ignore_ascii_case(r);
        for n in &mut self.nodes {
            if let Some(p) = n.primary.as_mut() {
                let names: Vec<String> = p.sync.replicas().map(|(r, _)| r.clone()).collect();
                for r in names {
                    let connected = p.links.iter().any(|(j, l)| {
                        matches!(l, node::PLink::Up { .. }) && names_match(&self_names, *j, &r)
                    });
                    p.sync.resume(&r, connected);
                }
            }
        }
    }

    /// The end-of-run checks (see the module page); call after healing,
    /// restarting everything and stabilizing.
    pub fn check_end(&mut self) -> Vec<String> {
        let mut problems = self.violations.clone();
        let open: Vec<usize> = self.open.keys().copied().collect();
        if open.len() != 1 {
            problems.push(format!("end: {} nodes take writes, not one", open.len()));
            return problems;
        }
        let p = open[0];
        let primary = self.nodes[p].db.clone();
        for (i, n) in self.nodes.iter().enumerate() {
            if n.db.applied != primary.applied || n.db.file != primary.file {
                problems.push(format!(
                    "end: {} (applied {}) is not identical to the primary {} (applied {}): {} vs {} transactions",
                    n.name,
                    n.db.applied,
                    self.nodes[p].name,
                    primary.applied,
                    n.db.file.len(),
                    primary.file.len()
                ));
            }
            let missing: Vec<u64> = self
                .acked
                .keys()
                .filter(|t| !n.db.file.contains(t))
                .copied()
                .collect();
            if !missing.is_empty() {
                problems.push(format!(
                    "end: {} lacks acknowledged transactions {missing:?}",
                    self.nodes[i].name
                ));
            }
            let phantom: Vec<u64> =
                n.db.file
                    .iter()
                    .filter(|t| !self.attempted.contains(t))
                    .copied()
                    .collect();
            if !phantom.is_empty() {
                problems.push(format!(
                    "end: {} holds transactions never sent {phantom:?}",
                    n.name
                ));
            }
        }
        problems
    }

    /// One line per node: role, epoch, fence, log.
    pub fn status(&self) -> String {
        let mut out = Vec::new();
        for n in &self.nodes {
            let role = if !n.up {
                "down".to_string()
            } else {
                format!("{:?}", node::state_name(n.machine.state()))
            };
            out.push(format!(
                "{}: {role}{} epoch {} writes {} log {}..{} durable {} applied {} txs {}",
                n.name,
                if n.paused { " (paused)" } else { "" },
                n.machine.config().map_or(0, |c| c.epoch),
                if n.up && n.fence.check(self.now).is_ok() && n.fence.epoch().is_some() {
                    "open"
                } else {
                    "closed"
                },
                n.db.first,
                n.db.end(),
                n.db.durable,
                n.db.applied,
                n.db.file.len()
            ));
        }
        if let Some(r) = self.cluster.record(GROUP) {
            let set: Vec<String> = r
                .synchronized
                .get(DB)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default();
            out.push(format!(
                "cluster: primary {} epoch {} version {} synchronized {set:?}",
                r.config.primary, r.config.epoch, r.config.version
            ));
        }
        out.join("\n")
    }
}
