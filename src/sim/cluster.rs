//! The quorum cluster manager as the simulation sees it: the real replicated
//! state machine ([`ClusterState`]) behind an oracle for Raft itself. A
//! command is committed when its proposer is in the majority component of
//! the network (a connected set of more than half the voters, none of them
//! down or paused); committed state reaches a node when the node is in that
//! component. openraft provides exactly that much (linearizable commits on
//! a majority); what is tested here is everything built on top of it.

use std::collections::{BTreeMap, BTreeSet};

use crate::cluster::{ClusterState, Command, CommandResult, GroupRecord};

/// The cluster: its state, its leader's lease bookkeeping.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cluster {
    /// The replicated state.
    pub state: ClusterState,
    /// Bumped at every applied command: nodes catch up to it.
    pub version: u64,
    /// The node that leads, and since when (µs).
    pub leader: Option<(usize, u64)>,
    /// Per group: when the leader last applied a lease renewal (µs).
    pub renewed_at: BTreeMap<String, u64>,
    /// Per group: since when it has had no lease (µs).
    pub unleased_since: BTreeMap<String, u64>,
}

impl Cluster {
    /// Commits `command` (the proposer is in the majority): applies it and
    /// keeps the lease bookkeeping as the real leader does.
    pub fn commit(&mut self, now: u64, command: &Command) -> CommandResult {
        let result = self.state.apply(command);
        if result == CommandResult::Ok {
            self.version += 1;
            let key = group_of(command);
            match command {
                Command::RenewLease { .. } => {
                    self.renewed_at.insert(key.clone(), now);
                    self.unleased_since.remove(&key);
                }
                Command::Promote { .. } => {
                    self.renewed_at.remove(&key);
                    self.unleased_since.insert(key, now);
                }
                Command::PutGroup(_) => {
                    self.unleased_since.entry(key).or_insert(now);
                }
                _ => {}
            }
        }
        result
    }

    /// A new leader (another majority component) takes over at `now`: like
    /// the real one, it gives a live primary half a lease plus the margin to
    /// renew through it.
    pub fn elect(&mut self, leader: usize, now: u64) {
        if self.leader.map(|(l, _)| l) != Some(leader) {
            self.leader = Some((leader, now));
            let lease = crate::ag::clustered::LEASE.as_micros() as u64;
            for at in self.renewed_at.values_mut() {
                *at = (*at).max(now.saturating_sub(lease / 2));
            }
        }
    }

    /// The record of `group`.
    pub fn record(&self, group: &str) -> Option<&GroupRecord> {
        self.state.group(group)
    }

    /// Every group's name.
    pub fn groups(&self) -> BTreeSet<String> {
        self.state.groups.keys().cloned().collect()
    }
}

fn group_of(command: &Command) -> String {
    match command {
        Command::SetServerName(_)
        | Command::PutPartner(_)
        | Command::RemovePartner(_)
        | Command::CreateRole(_)
        | Command::AlterRole { .. }
        | Command::DropRole(_)
        | Command::SetPrivileges { .. } => String::new(),
        Command::PutGroup(c) => c.name.to_ascii_lowercase(),
        Command::RemoveGroup(g)
        | Command::RenewLease { group: g, .. }
        | Command::SetSynchronized { group: g, .. }
        | Command::Promote { group: g, .. }
        | Command::StepDown { group: g, .. }
        | Command::HoldLogForBackups { group: g, .. }
        | Command::RecordFailoverLoss { group: g, .. } => g.to_ascii_lowercase(),
    }
}
