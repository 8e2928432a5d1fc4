//! The multi-Raft driver: one per broker, for every Raft group the broker hosts (the
//! TiKV pattern).
//!
//! A round collects the `Ready` of every group that has one, appends their entries and
//! hard states to their logs, makes all of it durable with one fsync pass across every
//! group (group commit), then releases the messages that had to wait for the persist,
//! advances the groups and reports committed entries and leadership changes. Outgoing
//! Raft messages come back batched per destination broker. The driver does no network
//! I/O and reads no clock; its only I/O is through the storage trait.
//!
//! raft-rs draws each randomized election timeout from a thread RNG; the driver
//! overwrites it from its own seeded RNG whenever a group's term or role changes, so a
//! run under the simulator replays exactly from its seed.

use super::replica_log::{ReplicaLog, ReplicaStorage};
use super::slog_bridge;
use raft::eraftpb::{Message, MessageType};
use raft::{Config, RawNode, StateRole};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::io;

/// Names a Raft group: `<topic>-<partition>` for partitions.
pub type GroupId = String;

/// A Raft message for one group.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupMessage {
    pub group: GroupId,
    pub message: Message,
}

/// An entry that became committed on this broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub group: GroupId,
    pub index: u64,
    pub term: u64,
    pub base_offset: i64,
    pub next_offset: i64,
}

/// A group whose known leader or term changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderChange {
    pub group: GroupId,
    /// 0 while no leader is known.
    pub leader: u64,
    pub term: u64,
    pub is_local_leader: bool,
}

#[derive(Debug, Default)]
pub struct RoundOutput {
    /// Messages to send, by destination broker.
    pub outgoing: BTreeMap<u64, Vec<GroupMessage>>,
    pub committed: Vec<Committed>,
    pub leader_changes: Vec<LeaderChange>,
    /// Groups whose writes this round's one fsync pass covered.
    pub groups_synced: usize,
    /// Groups that installed a leader's snapshot (their log restarts at `next_offset`).
    pub snapshots: Vec<SnapshotInstalled>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInstalled {
    pub group: GroupId,
    pub next_offset: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("group {0} is not hosted here")]
    UnknownGroup(GroupId),
    #[error("not the leader of {group} (leader: {leader})")]
    NotLeader { group: GroupId, leader: u64 },
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("storage: {0}")]
    Io(#[from] io::Error),
}

/// Timing of every group, in ticks.
#[derive(Debug, Clone, Copy)]
pub struct DriverConfig {
    pub election_tick: usize,
    pub heartbeat_tick: usize,
    pub max_size_per_msg_bytes: u64,
    pub max_inflight_msgs: usize,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            election_tick: 10,
            heartbeat_tick: 2,
            max_size_per_msg_bytes: 1 << 20,
            max_inflight_msgs: 256,
        }
    }
}

struct Group {
    raw: RawNode<ReplicaStorage>,
    storage: ReplicaStorage,
    /// (term, role, leader) last reported.
    observed: (u64, StateRole, u64),
    /// (term, role) the election timeout was last drawn for.
    timeout_drawn_for: (u64, StateRole),
}

pub struct Driver {
    node_id: u64,
    config: DriverConfig,
    groups: BTreeMap<GroupId, Group>,
    rng: rand::rngs::StdRng,
}

impl Driver {
    pub fn new(node_id: u64, config: DriverConfig, seed: u64) -> Driver {
        assert!(node_id > 0, "Raft node ids start at 1");
        assert!(config.heartbeat_tick < config.election_tick);
        Driver {
            node_id,
            config,
            groups: BTreeMap::new(),
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        }
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Starts hosting a replica of `group`.
    pub fn add_group(&mut self, group: GroupId, replica: ReplicaLog) -> Result<(), DriverError> {
        let applied = replica.hard_state().commit;
        let storage = ReplicaStorage::new(replica);
        let config = Config {
            id: self.node_id,
            election_tick: self.config.election_tick,
            heartbeat_tick: self.config.heartbeat_tick,
            applied,
            max_size_per_msg: self.config.max_size_per_msg_bytes,
            max_inflight_msgs: self.config.max_inflight_msgs,
            pre_vote: true,
            check_quorum: true,
            ..Config::default()
        };
        let raw = RawNode::new(&config, storage.clone(), &slog_bridge::logger(&group))?;
        let observed = (raw.raft.term, raw.raft.state, raw.raft.leader_id);
        let mut entry = Group {
            observed,
            timeout_drawn_for: (observed.0, observed.1),
            raw,
            storage,
        };
        self.reseed_timeout(&mut entry);
        self.groups.insert(group, entry);
        Ok(())
    }

    pub fn remove_group(&mut self, group: &str) -> Option<ReplicaStorage> {
        self.groups.remove(group).map(|g| g.storage)
    }

    pub fn storage(&self, group: &str) -> Option<&ReplicaStorage> {
        self.groups.get(group).map(|g| &g.storage)
    }

    pub fn groups(&self) -> impl Iterator<Item = &GroupId> {
        self.groups.keys()
    }

    /// The leader this replica knows for `group` (0: none) and whether it is this broker.
    pub fn leader(&self, group: &str) -> Option<(u64, u64)> {
        self.groups
            .get(group)
            .map(|g| (g.raw.raft.leader_id, g.raw.raft.term))
    }

    fn reseed_timeout(&mut self, group: &mut Group) {
        let election = self.config.election_tick;
        let timeout = self.rng.gen_range(election..2 * election);
        group.raw.raft.set_randomized_election_timeout(timeout);
        group.timeout_drawn_for = (group.raw.raft.term, group.raw.raft.state);
    }

    fn group_mut(&mut self, group: &str) -> Result<&mut Group, DriverError> {
        self.groups
            .get_mut(group)
            .ok_or_else(|| DriverError::UnknownGroup(group.to_string()))
    }

    /// Advances every group's logical clock by one tick.
    pub fn tick(&mut self) {
        let names: Vec<GroupId> = self.groups.keys().cloned().collect();
        for name in names {
            let mut group = self.groups.remove(&name).expect("listed above");
            group.raw.tick();
            self.after_step(&mut group);
            self.groups.insert(name, group);
        }
    }

    /// Reseeds the election timeout after any change of term or role.
    fn after_step(&mut self, group: &mut Group) {
        if (group.raw.raft.term, group.raw.raft.state) != group.timeout_drawn_for {
            self.reseed_timeout(group);
        }
    }

    /// Delivers a message from a peer. Messages for groups not hosted here are dropped.
    pub fn step(&mut self, message: GroupMessage) -> Result<(), DriverError> {
        let Some(mut group) = self.groups.remove(&message.group) else {
            return Err(DriverError::UnknownGroup(message.group));
        };
        let mut raft_message = message.message;
        survive_lost_log(&message.group, &mut group.raw, &mut raft_message);
        let result = group.raw.step(raft_message);
        self.after_step(&mut group);
        self.groups.insert(message.group, group);
        result.map_err(DriverError::from)
    }

    /// Proposes one entry on the leader; returns the Raft index it will commit at (if it
    /// commits at all: a leader change can still replace it).
    pub fn propose(&mut self, group: &str, data: Vec<u8>) -> Result<u64, DriverError> {
        let g = self.group_mut(group)?;
        if g.raw.raft.state != StateRole::Leader {
            return Err(DriverError::NotLeader {
                group: group.to_string(),
                leader: g.raw.raft.leader_id,
            });
        }
        g.raw.propose(vec![], data)?;
        Ok(g.raw.raft.raft_log.last_index())
    }

    /// Proposes from any replica: a follower forwards the proposal to the leader it knows
    /// (raft-rs drops it when none is known). The caller learns the outcome from what
    /// commits.
    pub fn propose_anywhere(&mut self, group: &str, data: Vec<u8>) -> Result<(), DriverError> {
        self.group_mut(group)?.raw.propose(vec![], data)?;
        Ok(())
    }

    pub fn campaign(&mut self, group: &str) -> Result<(), DriverError> {
        self.group_mut(group)?.raw.campaign()?;
        Ok(())
    }

    /// Asks the leader of `group` to hand leadership to `to`.
    pub fn transfer_leader(&mut self, group: &str, to: u64) -> Result<(), DriverError> {
        self.group_mut(group)?.raw.transfer_leader(to);
        Ok(())
    }

    /// The leader balancer: every group this broker leads hands leadership to its
    /// preferred replica (as `preferred` names it) once that replica holds the whole log.
    /// Returns how many transfers were started.
    pub fn balance_leaders(&mut self, preferred: impl Fn(&str) -> Option<u64>) -> usize {
        let mut started = 0;
        for (name, group) in self.groups.iter_mut() {
            if group.raw.raft.state != StateRole::Leader || group.raw.raft.lead_transferee.is_some()
            {
                continue;
            }
            let Some(target) = preferred(name).filter(|t| *t != self.node_id) else {
                continue;
            };
            let last_index = group.raw.raft.raft_log.last_index();
            let caught_up = group
                .raw
                .raft
                .prs()
                .get(target)
                .map(|p| p.matched >= last_index)
                .unwrap_or(false);
            if caught_up {
                group.raw.transfer_leader(target);
                started += 1;
            }
        }
        started
    }

    /// One round over every group with a `Ready` (see the module comment). `now_ms` only
    /// stamps segment rolls.
    pub fn round(&mut self, now_ms: i64) -> Result<RoundOutput, DriverError> {
        let mut output = RoundOutput::default();
        let mut readies = Vec::new();
        let mut handles = Vec::new();
        for (name, group) in self.groups.iter_mut() {
            if !group.raw.has_ready() {
                continue;
            }
            let mut ready = group.raw.ready();
            route(&mut output.outgoing, name, ready.take_messages());
            let mut replica = group.storage.lock();
            if !ready.snapshot().is_empty() {
                replica.apply_snapshot(ready.snapshot())?;
                output.snapshots.push(SnapshotInstalled {
                    group: name.clone(),
                    next_offset: replica.log().log_end_offset(),
                });
            }
            replica.append(ready.entries(), now_ms)?;
            if let Some(hs) = ready.hs() {
                replica.set_hard_state(hs.clone());
            }
            if !ready.entries().is_empty() || ready.hs().is_some() {
                replica.write_state()?;
                let (group_handles, up_to) = replica.sync_handles()?;
                handles.push((name.clone(), group_handles, up_to));
            }
            drop(replica);
            readies.push((name.clone(), ready));
        }
        // One fsync pass covers every group written this round.
        for (_, group_handles, _) in &handles {
            for handle in group_handles {
                handle.sync()?;
            }
        }
        output.groups_synced = handles.len();
        for (name, _, up_to) in handles {
            self.groups[&name].storage.lock().flushed(up_to);
        }
        for (name, mut ready) in readies {
            let group = self
                .groups
                .get_mut(&name)
                .expect("ready came from this group");
            route(&mut output.outgoing, &name, ready.take_persisted_messages());
            let mut committed = ready.take_committed_entries();
            let mut light = group.raw.advance(ready);
            if let Some(commit) = light.commit_index() {
                let mut replica = group.storage.lock();
                let mut hs = replica.hard_state().clone();
                hs.commit = commit;
                replica.set_hard_state(hs);
            }
            route(&mut output.outgoing, &name, light.take_messages());
            committed.extend(light.take_committed_entries());
            {
                let replica = group.storage.lock();
                for entry in &committed {
                    let position = replica
                        .position(entry.index)
                        .expect("a committed entry is in the log");
                    output.committed.push(Committed {
                        group: name.clone(),
                        index: entry.index,
                        term: entry.term,
                        base_offset: position.base_offset,
                        next_offset: position.next_offset,
                    });
                }
            }
            group.raw.advance_apply();
        }
        let names: Vec<GroupId> = self.groups.keys().cloned().collect();
        for name in names {
            let mut group = self.groups.remove(&name).expect("listed above");
            self.after_step(&mut group);
            let now = (
                group.raw.raft.term,
                group.raw.raft.state,
                group.raw.raft.leader_id,
            );
            if now != group.observed {
                if (now.0, now.2) != (group.observed.0, group.observed.2) {
                    output.leader_changes.push(LeaderChange {
                        group: name.clone(),
                        leader: now.2,
                        term: now.0,
                        is_local_leader: now.1 == StateRole::Leader,
                    });
                }
                group.observed = now;
            }
            self.groups.insert(name, group);
        }
        Ok(output)
    }
}

fn route(outgoing: &mut BTreeMap<u64, Vec<GroupMessage>>, group: &str, messages: Vec<Message>) {
    for message in messages {
        outgoing.entry(message.to).or_default().push(GroupMessage {
            group: group.to_string(),
            message,
        });
    }
}

/// Lets a replica whose disk lost its log (a wiped data directory, a restored old
/// backup) rejoin instead of crashing or stalling. raft-rs assumes a follower keeps
/// what it acknowledged: a leader's heartbeat carries a commit index up to what it
/// believes the follower matched (raft-rs panics when that is past the follower's log),
/// and the leader ignores a rejection below that point as stale (the follower would
/// never catch up). So a heartbeat's commit is clamped to the local log, and a leader
/// that sees a follower reject while holding less than it matched starts probing from
/// the follower's actual end. Both are safe for entries already committed elsewhere:
/// commit never moves back, and a lower match index only delays commits.
///
/// Not covered: a wiped replica also lost its vote for the current term, so in the
/// rare case it had voted in an election still running it could vote again (Kafka's
/// KRaft closes that with directory ids, KIP-853).
fn survive_lost_log(group: &str, raw: &mut RawNode<ReplicaStorage>, message: &mut Message) {
    let raft = &mut raw.raft;
    match message.get_msg_type() {
        MessageType::MsgHeartbeat => {
            let last_index = raft.raft_log.last_index();
            if message.commit > last_index {
                message.commit = last_index;
            }
        }
        MessageType::MsgAppendResponse if message.reject && raft.state == StateRole::Leader => {
            let from = message.from;
            let hint = message.reject_hint;
            if let Some(progress) = raft.mut_prs().get_mut(from) {
                if hint < progress.matched {
                    tracing::warn!(group, replica = from, matched = progress.matched, follower_last_index = hint,
                        "a follower holds less than it acknowledged (lost its disk?); replicating to it again from its end");
                    progress.matched = hint;
                    progress.become_probe();
                }
            }
        }
        _ => {}
    }
}
