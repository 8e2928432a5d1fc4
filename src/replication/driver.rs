//! The multi-Raft driver: one per broker, for every Raft group the broker hosts (the
//! TiKV pattern).
//!
//! A round collects the `Ready` of every group that has one, appends their entries to
//! their logs and makes them durable with one fsync pass across every group (group
//! commit), then writes each group's state record (hard state, durable log end) and
//! fsyncs those in a second pass, then releases the messages that had to wait for the
//! persist, advances the groups and reports committed entries and leadership changes.
//! Outgoing Raft messages come back batched per destination broker. The driver does no
//! network I/O and reads no clock; its only I/O is through the storage trait.
//!
//! raft-rs draws each randomized election timeout from a thread RNG; the driver
//! overwrites it from its own seeded RNG whenever a group's term or role changes, so a
//! run under the simulator replays exactly from its seed.

use super::entry_codec::encode_entry;
use super::replica_log::{ReplicaLog, ReplicaStorage, VerifyError, VoteBarrier};
use super::slog_bridge;
use raft::eraftpb::{Entry, EntryType, Message, MessageType};
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

/// A group's log handles to fsync after a round's writes, and the offset they make
/// durable.
type GroupSyncs = (
    GroupId,
    Vec<std::sync::Arc<dyn crate::storage::SyncHandle>>,
    i64,
);

/// A round whose entries are written and whose fsync passes are still to come (see
/// [`Driver::write_round`]).
pub struct WrittenRound {
    output: RoundOutput,
    readies: Vec<(GroupId, raft::Ready)>,
    handles: Vec<GroupSyncs>,
    broken: bool,
}

impl WrittenRound {
    /// Whether the round wrote anything that its fsync passes must make durable.
    pub fn needs_sync(&self) -> bool {
        !self.handles.is_empty()
    }
}

/// A round whose entries are durable and whose state records are written, not yet
/// fsynced (see [`Driver::sync_entries`]).
pub struct SyncedRound {
    output: RoundOutput,
    readies: Vec<(GroupId, raft::Ready)>,
    state_handles: Vec<std::sync::Arc<dyn crate::storage::SyncHandle>>,
    broken: bool,
}

impl SyncedRound {
    /// Whether state records wait for the second fsync pass.
    pub fn needs_sync(&self) -> bool {
        !self.state_handles.is_empty()
    }
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
    /// Answers to [`Driver::read_index`]: the leader's commit index when it confirmed it
    /// still leads, with the request's context.
    pub read_indexes: Vec<ReadIndexed>,
}

/// A linearizable read point of a group (raft-rs ReadIndex): everything committed before
/// the request was made is at or below `index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadIndexed {
    pub group: GroupId,
    pub index: u64,
    pub context: Vec<u8>,
}

impl RoundOutput {
    /// Puts an earlier round's results (already sent, not yet applied) before this
    /// round's, in order.
    pub fn prepend(&mut self, earlier: RoundOutput) {
        let later = std::mem::replace(self, earlier);
        for (to, messages) in later.outgoing {
            self.outgoing.entry(to).or_default().extend(messages);
        }
        self.committed.extend(later.committed);
        self.leader_changes.extend(later.leader_changes);
        self.groups_synced += later.groups_synced;
        self.snapshots.extend(later.snapshots);
        self.read_indexes.extend(later.read_indexes);
    }
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
    /// A peer's message that failed [`check_peer_message`]; it never reached raft-rs.
    #[error("refused a message for {group} from {from}: {reason}")]
    Refused {
        group: GroupId,
        from: u64,
        reason: &'static str,
    },
}

/// Highest Raft term a peer may name. A term is stored as a batch's
/// `partitionLeaderEpoch` (an i32); a replica that adopted a forged term near that limit
/// would fail to store its next no-op and stop. Half the range is far more elections than
/// a group ever holds.
pub const MAX_PEER_TERM: u64 = 1 << 30;

/// Timing of every group, in ticks.
#[derive(Debug, Clone, Copy)]
pub struct DriverConfig {
    pub election_tick: usize,
    pub heartbeat_tick: usize,
    pub max_size_per_msg_bytes: u64,
    pub max_inflight_msgs: usize,
    /// Bytes of committed batches [`Driver::scrub`] re-reads per call (CRC-checked).
    pub scrub_bytes_per_tick: u64,
    /// Ticks between the end of one scrubbing pass over every log and the next.
    pub scrub_pass_pause_ticks: u64,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            election_tick: 10,
            heartbeat_tick: 2,
            max_size_per_msg_bytes: 1 << 20,
            max_inflight_msgs: 256,
            scrub_bytes_per_tick: 256 * 1024,
            scrub_pass_pause_ticks: 300,
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
    /// Set after this replica dropped entries it had acknowledged (a repair): where its
    /// log ended before. Until its log reaches it again the replica does not campaign,
    /// and it votes only for candidates that hold what it held (see [`VoteBarrier`]), so
    /// it can never help elect a leader that lacks a committed entry.
    vote_barrier: Option<VoteBarrier>,
    /// Set when the replica is unproven with an empty log (`ReplicaLog::unproven`): it may
    /// be a disk that was wiped or replaced, whose votes no longer stand for what it once
    /// acknowledged, so it votes only for candidates whose log is empty too (a group being
    /// formed), and answers no leader (appends, heartbeats) but one that has committed
    /// nothing (a group being formed), until a leader is proven current
    /// (`Group::proves_current_leader`); that gives it a vote barrier.
    empty_start: bool,
    /// Set (with `empty_start`) when the replica was placed on this broker before its
    /// disk joined the cluster (see [`Driver::set_replaced_disk`]): the disk that held it
    /// is gone, and even a candidate with an empty log may lack what that disk
    /// acknowledged. It neither votes nor campaigns, nor takes a forming group's appends,
    /// until a leader is proven current.
    replaced_disk: bool,
    /// The Raft index the scrubber verifies next.
    scrub_next: u64,
    /// Messages the driver itself answers with (see `survive_lost_log`), sent next round.
    replies: Vec<Message>,
    /// The last vote request taken from each candidate: (term, last index, last term).
    /// Its answer carries that index and term back (see `stamp_vote_responses`).
    vote_requests: BTreeMap<u64, (u64, u64, u64)>,
    /// While `empty_start`: the leader (and its term) whose appends this replica took
    /// before it had committed anything (a group being formed).
    formed_with: Option<(u64, u64)>,
    /// While `empty_start`: a leader seen committing in its term (see
    /// `Group::proves_current_leader`).
    leader_seen: Option<LeaderSeen>,
    /// While `empty_start`: the tick this replica last asked a leader for an append.
    nudged_at: Option<u64>,
}

/// A leader a replica that started empty saw commit in its own term, unanswered.
#[derive(Debug, Clone, Copy)]
struct LeaderSeen {
    leader: u64,
    term: u64,
    /// The driver tick it was first seen at.
    since_tick: u64,
    /// Where that append ended (and its commit): what the replica must hold before it
    /// votes, once the leader is proven.
    barrier: VoteBarrier,
}

impl Group {
    /// Whether an append shows a leader that holds everything this replica's lost disk
    /// may have acknowledged (this replica started empty and has acknowledged nothing
    /// since). The leader must have committed an entry of its own term (its driver stamps
    /// `commit_term`: see `stamp_commit_terms`), and it must have gone on leading, without
    /// any answer from this replica, for two election timeouts: with check-quorum a
    /// leader that lost its quorum steps down within one, so it is backed by a quorum of
    /// the other replicas now, one of which took part in every commit the old disk
    /// acknowledged (quorums intersect), so its term is at least as high as those
    /// entries' and, elected, its log holds them below its commit index. A commit in its
    /// own term alone proves nothing: a stale leader of an older term (paused, then
    /// resumed) committed in its term too, and kept leading on this replica's answers
    /// (found by the simulator, seed 40868).
    ///
    /// A group being formed is the exception: its followers take the first leader's
    /// appends before it committed anything (a leader that has committed nothing holds
    /// every committed entry: there is none it could be behind), and that leader
    /// committing in its term proves it at once.
    fn proves_current_leader(&self, message: &Message, now_tick: u64, election_tick: u64) -> bool {
        match message.get_msg_type() {
            MessageType::MsgAppend => {
                message.commit > 0
                    && message.commit_term == message.term
                    && self.formed_with == Some((message.from, message.term))
            }
            MessageType::MsgHeartbeat => matches!(self.leader_seen, Some(seen)
                if (seen.leader, seen.term) == (message.from, message.term)
                    && now_tick >= seen.since_tick + 2 * election_tick),
            _ => false,
        }
    }

    /// Whether the group has other voters (a replica to repair from).
    fn multi_voter(&self) -> bool {
        self.raw.raft.prs().conf().voters().ids().len() > 1
    }

    /// Outgoing messages, without vote requests while the vote barrier stands, and with
    /// vote answers stamped with the request they answer.
    fn outgoing(&self, mut messages: Vec<Message>) -> Vec<Message> {
        if self.vote_barrier.is_some() || self.replaced_disk {
            messages.retain(|m| !is_vote_request(m));
        }
        self.stamp_vote_responses(&mut messages);
        self.stamp_commit_terms(&mut messages);
        messages
    }

    /// A vote answer says nothing of the request it answers (raft-rs leaves its index
    /// and log term empty), so a candidate that restarted counts answers meant for its
    /// earlier incarnation in the same term. Harmless when the restart kept its state,
    /// but a wiped replica re-enters the term and was elected with an empty log (found
    /// by the simulator, seed 24378: metadata lost). Each answer carries the candidate's
    /// log position from the request back; the candidate drops a grant that does not
    /// match its own log (see `Driver::step`).
    /// raft-rs leaves `commit_term` empty on appends; it is filled in with the term of
    /// the entry at the commit index, which tells a replica that started empty whether
    /// the leader committed in its own term (`Group::proves_current_leader`).
    fn stamp_commit_terms(&self, messages: &mut [Message]) {
        for m in messages.iter_mut() {
            if m.get_msg_type() == MessageType::MsgAppend && m.commit > 0 {
                m.commit_term = self.raw.raft.raft_log.term(m.commit).unwrap_or(0);
            }
        }
    }

    fn stamp_vote_responses(&self, messages: &mut [Message]) {
        for m in messages.iter_mut() {
            if !matches!(
                m.get_msg_type(),
                MessageType::MsgRequestVoteResponse | MessageType::MsgRequestPreVoteResponse
            ) {
                continue;
            }
            if let Some(&(_, index, log_term)) = self.vote_requests.get(&m.to) {
                m.index = index;
                m.log_term = log_term;
            }
        }
    }
}

fn is_vote_grant(m: &Message) -> bool {
    !m.reject
        && matches!(
            m.get_msg_type(),
            MessageType::MsgRequestVoteResponse | MessageType::MsgRequestPreVoteResponse
        )
}

fn is_vote_request(m: &Message) -> bool {
    matches!(
        m.get_msg_type(),
        MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
    )
}

pub struct Driver {
    node_id: u64,
    config: DriverConfig,
    /// Boxed: a `RawNode` is large, and B-tree nodes move their values around on inserts
    /// and removals (when groups were taken out and put back around every step, moving
    /// them was a fifth of the simulator's time). Groups are now worked on in place.
    groups: BTreeMap<GroupId, Box<Group>>,
    rng: rand::rngs::StdRng,
    /// Ticks so far (the driver's clock for liveness).
    ticks: u64,
    /// Tick of the last message taken from each peer broker (any group).
    last_heard_tick: BTreeMap<u64, u64>,
    /// The group the scrubber continues with.
    scrub_group: GroupId,
    /// The tick the next scrubbing pass may start at.
    scrub_resume_tick: u64,
}

/// A follower more than this many entries behind its leader's log is out of sync.
pub const MAX_IN_SYNC_LAG_ENTRIES: u64 = 256;

impl Driver {
    pub fn new(node_id: u64, config: DriverConfig, seed: u64) -> Driver {
        assert!(node_id > 0, "Raft node ids start at 1");
        assert!(config.heartbeat_tick < config.election_tick);
        Driver {
            node_id,
            config,
            groups: BTreeMap::new(),
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            ticks: 0,
            last_heard_tick: BTreeMap::new(),
            scrub_group: GroupId::new(),
            scrub_resume_tick: 0,
        }
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Starts hosting a replica of `group`.
    pub fn add_group(&mut self, group: GroupId, replica: ReplicaLog) -> Result<(), DriverError> {
        self.add_group_storage(group, ReplicaStorage::new(replica), None)
    }

    /// `applied_before`: how far the group's entries were applied before it was rebuilt
    /// (a repair); a new group has applied what it committed (the metadata image replays
    /// the committed entries at start).
    fn add_group_storage(
        &mut self,
        group: GroupId,
        storage: ReplicaStorage,
        applied_before: Option<u64>,
    ) -> Result<(), DriverError> {
        let commit = storage.lock().hard_state().commit;
        let applied = applied_before.map_or(commit, |applied| applied.min(commit));
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
        let (empty_start, lost_barrier, persisted_barrier) = {
            let log = storage.lock();
            (
                // Only a replica that started empty and has heard from no leader since
                // (durably so: a wiped broker whose first start failed after writing its
                // state is still one; found by the simulator, seed 1245, where such a
                // replica voted a stale metadata leader in). One that has Raft state,
                // no entries and has been through that never acknowledged any.
                log.unproven() && log.last_index() == 0 && log.first_index() <= 1,
                log.lost_barrier(),
                log.vote_barrier(),
            )
        };
        // raft-rs reads the committed, unapplied entries here and panics if it cannot.
        let raw = storage_guarded(&storage, true, || {
            RawNode::new(&config, storage.clone(), &slog_bridge::logger(&group))
        })?
        .ok_or_else(|| {
            DriverError::Io(io::Error::other(format!(
                "a corrupt entry in {group} while opening it"
            )))
        })??;
        let observed = (raw.raft.term, raw.raft.state, raw.raft.leader_id);
        let mut entry = Box::new(Group {
            observed,
            timeout_drawn_for: (observed.0, observed.1),
            raw,
            storage,
            vote_barrier: match (lost_barrier, persisted_barrier) {
                (Some(lost), barrier) => Some(barrier.map_or(lost, |b| b.raise(lost))),
                (None, barrier) => barrier,
            },
            empty_start,
            replaced_disk: false,
            scrub_next: 0,
            replies: Vec::new(),
            vote_requests: BTreeMap::new(),
            formed_with: None,
            leader_seen: None,
            nudged_at: None,
        });
        reseed_timeout(&mut self.rng, self.config.election_tick, &mut entry);
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

    /// Repairs every group whose log a read found corrupt: the replica drops the corrupt
    /// entry and everything after it and rejoins as a follower (a fresh raft-rs node on
    /// the same storage), so the group's leader (another replica, if this one led)
    /// replicates those entries to it again. The next round reports its leader change.
    fn repair_corrupt_groups(&mut self) -> Result<(), DriverError> {
        let corrupt: Vec<(GroupId, u64)> = self
            .groups
            .iter()
            .filter_map(|(name, g)| g.storage.corrupt_index().map(|i| (name.clone(), i)))
            // A replica alone has no peer to repair from: it keeps refusing to serve the
            // batch instead of dropping everything after it.
            .filter(|(name, _)| self.groups[name].multi_voter())
            .collect();
        for (name, index) in corrupt {
            let group = self.groups.remove(&name).expect("listed above");
            let storage = group.storage.clone();
            let held = group.vote_barrier;
            // Entries committed but not yet applied when the corruption was found (the
            // apply read is often what finds it) must still be applied after the repair:
            // rebuilt with `applied` at the new commit, raft-rs would never hand them out
            // and a wiped broker's metadata image missed the topics they created.
            let applied_before = group.raw.raft.raft_log.applied;
            drop(group);
            {
                let mut log = storage.lock();
                let last_index = log.last_index();
                tracing::warn!(group = %name, index, last_index,
                    "repairing a corrupt entry: dropping it and what follows, to be replicated again");
                let held_until = VoteBarrier {
                    index: last_index,
                    term: log.position(last_index).map_or(0, |p| p.term),
                };
                // Persisted before the entries go; the rebuilt group reads it back.
                log.truncate_for_repair(index, held.map_or(held_until, |b| b.raise(held_until)))?;
            }
            self.add_group_storage(name.clone(), storage, Some(applied_before))?;
            if let Some(g) = self.groups.get_mut(&name) {
                // Not what the new node observes: its first round reports its leader.
                g.observed = (0, StateRole::Follower, u64::MAX);
                // Its log may be empty now, but it is not a replica that never held
                // anything: its barrier says what it held (found by the simulator:
                // repaired to an empty log, it took itself for a wiped one and refused
                // the only candidate that held everything, and the partition elected
                // nobody).
                g.empty_start = false;
                debug_assert!(g.vote_barrier.is_some(), "a repaired group has a barrier");
            }
        }
        for (name, group) in self.groups.iter_mut() {
            if let Some(barrier) = group.vote_barrier {
                let mut log = group.storage.lock();
                if log.last_index() >= barrier.index {
                    tracing::info!(group = %name, "caught up after a repair: votes again");
                    group.vote_barrier = None;
                    log.clear_vote_barrier();
                }
            }
        }
        Ok(())
    }

    /// Ticks since the driver started.
    pub fn ticks(&self) -> u64 {
        self.ticks
    }

    /// The scrubber: re-reads up to `scrub_bytes_per_tick` of committed batches, CRC
    /// checked, continuing where the last call stopped (group after group, each from its
    /// log start to its commit index). Corruption at rest is otherwise found only when a
    /// batch is read; a corrupt one found here is marked and the next round repairs it
    /// from a peer. An I/O error fails (the broker restarts).
    pub fn scrub(&mut self) -> Result<(), DriverError> {
        if self.ticks < self.scrub_resume_tick {
            return Ok(());
        }
        let mut budget = self.config.scrub_bytes_per_tick;
        // From the group it stopped in, round to the one before it.
        let (before, from): (Vec<GroupId>, Vec<GroupId>) = self
            .groups
            .keys()
            .cloned()
            .partition(|name| *name < self.scrub_group);
        for name in from.into_iter().chain(before) {
            let group = self.groups.get_mut(&name).expect("listed above");
            let log = group.storage.lock();
            let from_index = group.scrub_next.max(log.first_index());
            let up_to = log.hard_state().commit;
            match log.verify_entries(from_index, up_to, budget) {
                Ok((next, read)) => {
                    budget = budget.saturating_sub(read);
                    group.scrub_next = next;
                }
                Err(VerifyError::Corrupt(index)) => {
                    tracing::error!(group = %name, index, "the scrubber found a corrupt batch: repairing it from a peer");
                    group.scrub_next = 0;
                }
                Err(VerifyError::Io(e)) => return Err(DriverError::Io(e)),
            }
            drop(log);
            if budget == 0 {
                self.scrub_group = name;
                return Ok(());
            }
            // This group is done: it starts over in the next pass.
            group.scrub_next = 0;
        }
        // A whole pass within the budget: the next one waits.
        self.scrub_group.clear();
        self.scrub_resume_tick = self.ticks + self.config.scrub_pass_pause_ticks;
        Ok(())
    }

    /// Ticks since a message from `peer` was last taken (None: never).
    pub fn ticks_since_heard(&self, peer: u64) -> Option<u64> {
        self.last_heard_tick
            .get(&peer)
            .map(|heard| self.ticks.saturating_sub(*heard))
    }

    /// On a group's leader: the voters in sync with it, in ascending id order (the leader,
    /// and every follower heard from within an election timeout that is at most
    /// [`MAX_IN_SYNC_LAG_ENTRIES`] behind the leader's log). None elsewhere.
    pub fn in_sync_replicas(&self, group: &str) -> Option<Vec<u64>> {
        let g = self.groups.get(group)?;
        let raft = &g.raw.raft;
        if raft.state != StateRole::Leader {
            return None;
        }
        let last_index = raft.raft_log.last_index();
        let recent = self.config.election_tick as u64;
        let mut in_sync: Vec<u64> = raft
            .prs()
            .iter()
            .filter(|(id, progress)| {
                **id == self.node_id
                    || (progress.matched + MAX_IN_SYNC_LAG_ENTRIES >= last_index
                        && self
                            .last_heard_tick
                            .get(id)
                            .is_some_and(|heard| self.ticks.saturating_sub(*heard) <= recent))
            })
            .map(|(id, _)| *id)
            .filter(|id| raft.prs().conf().voters().contains(*id))
            .collect();
        in_sync.sort_unstable();
        Some(in_sync)
    }

    fn group_mut(&mut self, group: &str) -> Result<&mut Group, DriverError> {
        self.groups
            .get_mut(group)
            .map(|g| &mut **g)
            .ok_or_else(|| DriverError::UnknownGroup(group.to_string()))
    }

    /// Advances every group's logical clock by one tick.
    pub fn tick(&mut self) -> Result<(), DriverError> {
        self.ticks += 1;
        let mut broken = false;
        for group in self.groups.values_mut() {
            // A campaign reads the unapplied entries (see `storage_guarded`).
            let multi_voter = group.multi_voter();
            let ticked = storage_guarded(&group.storage, multi_voter, || group.raw.tick());
            if !matches!(ticked, Ok(Some(_))) {
                broken = true;
            }
            after_step(&mut self.rng, self.config.election_tick, group);
            buggify_leader_transfer(self.node_id, group);
            ticked?;
        }
        if broken {
            self.repair_corrupt_groups()?;
        }
        Ok(())
    }

    /// Delivers a message from a peer. Messages for groups not hosted here are dropped,
    /// and so is a message that fails [`check_peer_message`]: raft-rs trusts its peers
    /// and panics (or the next round fails) on some shapes a buggy or hostile peer can
    /// send, and one bad frame must not stop a broker.
    pub fn step(&mut self, message: GroupMessage) -> Result<(), DriverError> {
        let Some(group) = self.groups.get_mut(&message.group) else {
            return Err(DriverError::UnknownGroup(message.group));
        };
        let mut raft_message = message.message;
        if let Some(reply) = survive_lost_log(&message.group, &mut group.raw, &mut raft_message) {
            group.replies.push(reply);
        }
        if let Err(reason) = check_peer_message(self.node_id, group, &raft_message) {
            let from = raft_message.from;
            return Err(DriverError::Refused {
                group: message.group,
                from,
                reason,
            });
        }
        self.last_heard_tick.insert(raft_message.from, self.ticks);
        if is_vote_request(&raft_message) {
            group.vote_requests.insert(
                raft_message.from,
                (raft_message.term, raft_message.index, raft_message.log_term),
            );
        }
        if is_vote_grant(&raft_message) {
            let log = &group.raw.raft.raft_log;
            if (raft_message.index, raft_message.log_term) != (log.last_index(), log.last_term()) {
                // A grant for another request than this replica's own (an earlier
                // incarnation's): dropped (see `Group::stamp_vote_responses`).
                return Ok(());
            }
        }
        let (now_tick, election_tick) = (self.ticks, self.config.election_tick as u64);
        if group.empty_start {
            match raft_message.get_msg_type() {
                MessageType::MsgAppend | MessageType::MsgHeartbeat
                    if group.proves_current_leader(&raft_message, now_tick, election_tick) =>
                {
                    // Proven (see `Group::proves_current_leader`): the replica must hold
                    // what the leader holds of what it sent, committed entries among
                    // them, before its vote means anything again.
                    let held = match group.leader_seen {
                        Some(seen) if raft_message.get_msg_type() == MessageType::MsgHeartbeat => {
                            seen.barrier
                        }
                        _ => committed_end(&raft_message),
                    };
                    tracing::info!(group = %message.group, leader = raft_message.from, term = raft_message.term,
                        "a replica that started empty follows a proven leader");
                    group.empty_start = false;
                    group.replaced_disk = false;
                    let barrier = group.vote_barrier.map_or(held, |b| b.raise(held));
                    group.vote_barrier = Some(barrier);
                    let persisted = group.storage.lock().persist_vote_barrier(barrier);
                    if let Err(e) = persisted {
                        return Err(DriverError::Io(e));
                    }
                }
                MessageType::MsgAppend if raft_message.commit == 0 && !group.replaced_disk => {
                    // A leader that has committed nothing: a group being formed.
                    group.formed_with = Some((raft_message.from, raft_message.term));
                }
                MessageType::MsgAppend | MessageType::MsgHeartbeat
                    if group.formed_with != Some((raft_message.from, raft_message.term)) =>
                {
                    // Not proven current: a stale leader (one a newer quorum has moved
                    // past, in a term this replica forgot with its disk) could commit an
                    // entry with this replica's acknowledgement over entries the others
                    // committed, or keep leading on its answers (found by the simulator,
                    // seed 40868, in the metadata quorum). Dropped unanswered, but for a
                    // heartbeat answer now and then (less often than check-quorum looks)
                    // that makes the leader send an append to be seen.
                    let (from, term) = (raft_message.from, raft_message.term);
                    let seen = group.leader_seen.map(|s| (s.leader, s.term));
                    if raft_message.get_msg_type() == MessageType::MsgAppend
                        && raft_message.commit > 0
                        && raft_message.commit_term == term
                        && seen != Some((from, term))
                    {
                        group.leader_seen = Some(LeaderSeen {
                            leader: from,
                            term,
                            since_tick: now_tick,
                            barrier: committed_end(&raft_message),
                        });
                    }
                    let nudge_due = group
                        .nudged_at
                        .is_none_or(|at| now_tick >= at + 3 * election_tick);
                    if raft_message.get_msg_type() == MessageType::MsgHeartbeat
                        && seen != Some((from, term))
                        && nudge_due
                    {
                        group.nudged_at = Some(now_tick);
                        // A heartbeat answer: the leader resumes sending appends.
                        let mut ask = Message::default();
                        ask.set_msg_type(MessageType::MsgHeartbeatResponse);
                        ask.to = from;
                        ask.from = raft_message.to;
                        ask.term = term;
                        group.replies.push(ask);
                    }
                    return Ok(());
                }
                MessageType::MsgSnapshot => {
                    group.empty_start = false;
                    group.replaced_disk = false;
                }
                _ if is_vote_request(&raft_message)
                    && (raft_message.index > 0 || group.replaced_disk) =>
                {
                    return Ok(());
                }
                _ => {}
            }
        }
        if let Some(barrier) = group.vote_barrier {
            if is_vote_request(&raft_message)
                && !barrier.admits(raft_message.index, raft_message.log_term)
            {
                // No vote for a candidate that may lack what this replica had
                // acknowledged (see `Group::vote_barrier`): dropped unanswered.
                return Ok(());
            }
        }
        // Planted bug: the candidate's log is taken as up to date, whatever it holds (the
        // message passed the checks above; raft-rs compares these with its own log).
        if crate::planted::on("vote-without-log-check") && is_vote_request(&raft_message) {
            raft_message.log_term = raft_message.term;
            raft_message.index = u64::MAX / 2;
        }
        let multi_voter = group.multi_voter();
        // A vote can commit and read entries (see `storage_guarded`).
        let stepped = storage_guarded(&group.storage, multi_voter, || group.raw.step(raft_message));
        after_step(&mut self.rng, self.config.election_tick, group);
        match stepped? {
            Some(result) => result.map_err(DriverError::from),
            None => self.repair_corrupt_groups(),
        }
    }

    /// [`Driver::step`] for a message that arrived in a frame from broker `sender`: a
    /// message must name the broker that sent it.
    pub fn step_from(&mut self, sender: u64, message: GroupMessage) -> Result<(), DriverError> {
        if message.message.from != sender {
            return Err(DriverError::Refused {
                group: message.group,
                from: message.message.from,
                reason: "the message names another sender than the frame",
            });
        }
        self.step(message)
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

    /// Normal entries raft-rs holds for `group` after index `after` (those the replica log
    /// has not written yet: proposed since the last round), in index order.
    pub fn unwritten_entries(&self, group: &str, after: u64) -> Vec<Entry> {
        let Some(g) = self.groups.get(group) else {
            return Vec::new();
        };
        g.raw
            .raft
            .raft_log
            .unstable
            .entries
            .iter()
            .filter(|e| e.index > after && e.get_entry_type() == EntryType::EntryNormal)
            .cloned()
            .collect()
    }

    /// Proposes from any replica: a follower forwards the proposal to the leader it knows
    /// (raft-rs drops it when none is known). The caller learns the outcome from what
    /// commits.
    pub fn propose_anywhere(&mut self, group: &str, data: Vec<u8>) -> Result<(), DriverError> {
        self.group_mut(group)?.raw.propose(vec![], data)?;
        Ok(())
    }

    /// Tells `group`, just added with an empty log and no leader heard from yet, whether
    /// the disk it was placed on is the one it lives on now (its broker knows: see
    /// `RegisterBroker::directory_id`). A replica that merely starts empty may be a wiped
    /// disk's, so by default it votes only for candidates with empty logs too (a group
    /// being formed):
    /// - `replaced: false`: placed on this very disk, it never acknowledged anything and
    ///   votes by Raft's rules alone (found by the simulator: two replicas refusing every
    ///   candidate with a log left a new partition leaderless);
    /// - `replaced: true`: placed before this disk joined, the disk that held it (and
    ///   what it acknowledged) is gone, and even a candidate with an empty log may lack
    ///   it: it votes for nobody and does not campaign until a leader's append tells it
    ///   what it must hold (found by the simulator, seed 30076: a wiped broker and a
    ///   replica that had lost its unsynced first entry elected a leader with an empty
    ///   log over the one holding every acknowledged record).
    ///
    /// A group with no other voter, or one that has heard from a leader, is left alone.
    pub fn set_replaced_disk(&mut self, group: &str, replaced: bool) -> Result<(), DriverError> {
        let entry = self.group_mut(group)?;
        if entry.empty_start && entry.multi_voter() {
            if replaced {
                entry.replaced_disk = true;
            } else {
                entry.empty_start = false;
            }
        }
        Ok(())
    }

    /// Asks the group's leader (through this replica) for a linearizable read point: the
    /// answer comes in a later round's [`RoundOutput::read_indexes`] with `context`, once
    /// the leader confirmed with a quorum that it still leads. A request made with no
    /// leader known, or lost with a leader change, is never answered: the caller times
    /// out and asks again.
    pub fn read_index(&mut self, group: &str, context: Vec<u8>) -> Result<(), DriverError> {
        self.group_mut(group)?.raw.read_index(context);
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

    /// One round over every group with a `Ready` (see the module comment).
    ///
    /// raft-rs panics when its storage fails a read it needs (committed entries to
    /// apply): see [`storage_guarded`] for how a corrupt batch or an I/O error there
    /// becomes a repair or a storage failure instead of a crash. `now_ms` only
    /// stamps segment rolls.
    pub fn round(&mut self, now_ms: i64) -> Result<RoundOutput, DriverError> {
        let written = self.write_round(now_ms)?;
        let synced = self.sync_entries(written)?;
        self.finish_round(synced)
    }

    /// The first step of a [`Driver::round`]: every group's `Ready` taken and its entries
    /// appended, nothing fsynced and no message that depends on them out yet. The caller
    /// may wait here (a slow disk's fsync in the simulation, so a crash can land between
    /// the writes and their fsync), then must call [`Driver::sync_entries`] and
    /// [`Driver::finish_round`] before anything else touches the driver.
    ///
    /// A round's state records (hard state, and where the durable log ends) are written
    /// only once its entries are fsynced: a record then names every entry this replica
    /// will acknowledge as durable, so a log that reopens ending below it was damaged
    /// after the fact, never cut by a crash (found by the simulator, seed 49127: the last
    /// round's entries, fsynced and acknowledged, were damaged before any record named
    /// them, and the replica could not tell that from a crash before their fsync). It
    /// costs no fsync: the record was fsynced in the same pass before, now in a second.
    pub fn write_round(&mut self, now_ms: i64) -> Result<WrittenRound, DriverError> {
        // A read that failed since the last round (while raft-rs read entries to send).
        for group in self.groups.values() {
            if let Some(error) = group.storage.take_read_error() {
                return Err(DriverError::Io(io::Error::other(error)));
            }
        }
        self.repair_corrupt_groups()?;
        let mut output = RoundOutput::default();
        let mut readies = Vec::new();
        let mut handles = Vec::new();
        let mut broken = false;
        for (name, group) in self.groups.iter_mut() {
            if !group.replies.is_empty() {
                let replies = std::mem::take(&mut group.replies);
                route(&mut output.outgoing, name, replies);
            }
            if !group.raw.has_ready() {
                continue;
            }
            let multi_voter = group.multi_voter();
            let Some(mut ready) =
                storage_guarded(&group.storage, multi_voter, || group.raw.ready())?
            else {
                broken = true;
                continue;
            };
            route(
                &mut output.outgoing,
                name,
                group.outgoing(ready.take_messages()),
            );
            output
                .read_indexes
                .extend(ready.take_read_states().into_iter().map(|r| ReadIndexed {
                    group: name.clone(),
                    index: r.index,
                    context: r.request_ctx,
                }));
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
            // Planted bug: a hard state change alone (a vote, a new term) is not written.
            let state_changed = ready.hs().is_some() && !crate::planted::on("vote-not-persisted");
            if !ready.entries().is_empty() || state_changed {
                let (group_handles, up_to) = replica.log_sync_handles()?;
                handles.push((name.clone(), group_handles, up_to));
            }
            drop(replica);
            readies.push((name.clone(), ready));
        }
        Ok(WrittenRound {
            output,
            readies,
            handles,
            broken,
        })
    }

    /// The second step of a [`Driver::round`]: one fsync pass over the entries
    /// [`Driver::write_round`] appended, then each written group's state record, naming
    /// them durable. The caller may wait again (the records' fsync), then must call
    /// [`Driver::finish_round`].
    pub fn sync_entries(&mut self, written: WrittenRound) -> Result<SyncedRound, DriverError> {
        let WrittenRound {
            mut output,
            readies,
            handles,
            broken,
        } = written;
        // One fsync pass covers every group written this round.
        for (_, group_handles, _) in &handles {
            sync_all(group_handles)?;
        }
        output.groups_synced = handles.len();
        let mut state_handles = Vec::with_capacity(handles.len());
        for (name, _, up_to) in handles {
            let mut replica = self.groups[&name].storage.lock();
            replica.flushed(up_to);
            replica.write_state()?;
            state_handles.push(replica.state_sync_handle()?);
        }
        Ok(SyncedRound {
            output,
            readies,
            state_handles,
            broken,
        })
    }

    /// The last step of a [`Driver::round`]: the fsync pass over the state records
    /// [`Driver::sync_entries`] wrote, then the messages, commits and leader changes.
    pub fn finish_round(&mut self, synced: SyncedRound) -> Result<RoundOutput, DriverError> {
        let SyncedRound {
            mut output,
            readies,
            state_handles,
            mut broken,
        } = synced;
        sync_all(&state_handles)?;
        for (name, mut ready) in readies {
            let group = self
                .groups
                .get_mut(&name)
                .expect("ready came from this group");
            let persisted = ready.take_persisted_messages();
            {
                // Raft's rule: a vote is durable before it is sent (a replica that forgets
                // its vote can vote twice in one term). A later term written since covers
                // it too: the replica never votes in an earlier term again. (Checked only
                // when a grant goes out: no lock on the round's common path.)
                let is_grant = |m: &Message| {
                    m.get_msg_type() == MessageType::MsgRequestVoteResponse && !m.reject
                };
                let (term, vote) = if persisted.iter().any(is_grant) {
                    group.storage.lock().written_vote()
                } else {
                    (0, 0)
                };
                for m in persisted.iter().filter(|m| is_grant(m)) {
                    assert!(
                        term > m.term || (term, vote) == (m.term, m.to),
                        "group {name}: a vote for {} in term {} is sent before it is persisted (written: term {term}, vote {vote})",
                        m.to,
                        m.term
                    );
                }
            }
            let persisted = group.outgoing(persisted);
            route(&mut output.outgoing, &name, persisted);
            let mut committed = ready.take_committed_entries();
            let multi_voter = group.multi_voter();
            let Some(mut light) =
                storage_guarded(&group.storage, multi_voter, || group.raw.advance(ready))?
            else {
                broken = true;
                continue;
            };
            if let Some(commit) = light.commit_index() {
                let mut replica = group.storage.lock();
                let mut hs = replica.hard_state().clone();
                hs.commit = commit;
                replica.set_hard_state(hs);
            }
            let messages = group.outgoing(light.take_messages());
            route(&mut output.outgoing, &name, messages);
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
        if broken {
            // Groups whose raft-rs state is unknown after a failed read: rebuilt now.
            self.repair_corrupt_groups()?;
        }
        for (name, group) in self.groups.iter_mut() {
            after_step(&mut self.rng, self.config.election_tick, group);
            if group.raw.raft.state == StateRole::Leader {
                // Elected with empty logs all around (a group being formed): its own log
                // is the reference now, and it must vote normally when it falls back to
                // follower (found by the simulator: the first leader of a partition kept
                // refusing every candidate with a log, and the partition elected nobody).
                group.empty_start = false;
            }
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
        }
        Ok(output)
    }
}

/// Fsyncs every handle, stopping at the first failure (a failed fsync may have dropped
/// the dirty pages: a retry that succeeds proves nothing). Planted bugs: `skip-fsync`
/// syncs nothing, `ignore-failed-fsync` takes a failure for success.
fn sync_all(handles: &[std::sync::Arc<dyn crate::storage::SyncHandle>]) -> io::Result<()> {
    if crate::planted::on("skip-fsync") {
        return Ok(());
    }
    for handle in handles {
        match handle.sync() {
            Err(_) if crate::planted::on("ignore-failed-fsync") => {}
            result => result?,
        }
    }
    Ok(())
}

/// Reseeds the election timeout after any change of term or role.
fn after_step(rng: &mut rand::rngs::StdRng, election_tick: usize, group: &mut Group) {
    if (group.raw.raft.term, group.raw.raft.state) != group.timeout_drawn_for {
        reseed_timeout(rng, election_tick, group);
    }
}

/// Draws the group's randomized election timeout from the driver's seeded generator
/// (raft-rs would draw it from a thread RNG).
fn reseed_timeout(rng: &mut rand::rngs::StdRng, election_tick: usize, group: &mut Group) {
    let timeout = rng.gen_range(election_tick..2 * election_tick);
    group.raw.raft.set_randomized_election_timeout(timeout);
    group.timeout_drawn_for = (group.raw.raft.term, group.raw.raft.state);
}

/// BUGGIFY: now and then a leader hands leadership to a caught-up follower for no
/// reason (an early leader transfer), so elections and epoch changes happen under
/// load far more often than faults alone cause them.
fn buggify_leader_transfer(node_id: u64, group: &mut Group) {
    let raft = &group.raw.raft;
    if raft.state != StateRole::Leader
        || raft.lead_transferee.is_some()
        || !crate::buggify::fire(0.002)
    {
        return;
    }
    let last_index = raft.raft_log.last_index();
    let target = raft
        .prs()
        .iter()
        .filter(|(id, p)| **id != node_id && p.matched >= last_index)
        .map(|(id, _)| *id)
        .min();
    if let Some(target) = target {
        group.raw.transfer_leader(target);
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

/// The checks a peer's message passes before raft-rs sees it. Raft does not defend
/// against a peer that lies about its log (no check here can), but raft-rs also panics
/// on shapes no correct peer sends, and a replica must not die of them (each found by
/// the `interbroker` fuzz target or read off the raft-rs code it guards; docs/fuzzing.md):
///
/// - only message types peers exchange (not the local MsgHup, MsgBeat, MsgUnreachable,
///   MsgSnapStatus, MsgCheckQuorum), addressed to this broker, from another member of
///   the group's configuration;
/// - a forwarded request (MsgPropose, MsgReadIndex, MsgTransferLeader) only to the
///   leader (raft-rs would forward it again, and panics sending one with a term), a
///   proposal or read index without a term, a proposal with at least one normal entry;
/// - every other message with a term (raft-rs takes term 0 as a local message, and
///   panics answering a vote request of term 0); terms at most [`MAX_PEER_TERM`];
/// - entries only in MsgAppend and forwarded requests, and ones this replica can store
///   (see `entry_codec`; otherwise the next round fails and the broker stops); in a
///   MsgAppend they follow `index` one by one with terms from `log_term` (never 0 after
///   index 0) to the message's term, never going back;
/// - (a MsgHeartbeat's commit beyond this replica's log, which raft-rs commits to
///   blindly, is clamped before these checks by [`survive_lost_log`]: a follower that
///   lost its disk receives exactly that);
/// - no request for a snapshot (`RawNode::request_snapshot`, which Strand never calls);
/// - a snapshot only in MsgSnapshot, and one that passes [`check_snapshot`].
fn check_peer_message(node_id: u64, group: &Group, m: &Message) -> Result<(), &'static str> {
    use MessageType::*;
    match m.get_msg_type() {
        MsgAppend
        | MsgAppendResponse
        | MsgRequestVote
        | MsgRequestVoteResponse
        | MsgRequestPreVote
        | MsgRequestPreVoteResponse
        | MsgSnapshot
        | MsgHeartbeat
        | MsgHeartbeatResponse
        | MsgTransferLeader
        | MsgTimeoutNow
        | MsgReadIndex
        | MsgReadIndexResp
        | MsgPropose => {}
        MsgHup | MsgBeat | MsgUnreachable | MsgSnapStatus | MsgCheckQuorum => {
            return Err("a local message type");
        }
    }
    // Requests a follower forwards to its leader. raft-rs sends them on without a term
    // and panics when asked to send one that has a term: a follower never takes one
    // (it would forward it again), and proposals and read indexes carry no term.
    let forwarded = matches!(
        m.get_msg_type(),
        MsgPropose | MsgReadIndex | MsgTransferLeader
    );
    if forwarded && group.raw.raft.state != StateRole::Leader {
        return Err("a forwarded request to a replica that does not lead");
    }
    if matches!(m.get_msg_type(), MsgPropose | MsgReadIndex) && m.term != 0 {
        return Err("a forwarded proposal or read index with a term");
    }
    // raft-rs takes a message of term 0 as a local one (no term checks), and answers a
    // vote request of term 0 with a panic: a peer's message always has its term.
    if m.term == 0 && !forwarded {
        return Err("a peer message of term 0");
    }
    if m.to != node_id {
        return Err("addressed to another broker");
    }
    // raft-rs keeps a progress entry for every voter and learner of the configuration.
    if m.from == node_id || group.raw.raft.prs().get(m.from).is_none() {
        return Err("the sender is not another member of the group");
    }
    if m.term > MAX_PEER_TERM || m.log_term > MAX_PEER_TERM || m.commit_term > MAX_PEER_TERM {
        return Err("a term beyond MAX_PEER_TERM");
    }
    if m.get_snapshot().get_metadata().term > MAX_PEER_TERM {
        return Err("a snapshot term beyond MAX_PEER_TERM");
    }
    // raft-rs answers a request for a snapshot with one from storage, and panics when that
    // is empty (a log whose start retention never moved). Strand never requests one.
    if m.request_snapshot != 0 {
        return Err("a request for a snapshot");
    }
    let is_append = m.get_msg_type() == MsgAppend;
    // Only the empty log's index 0 has term 0, and raft-rs takes an append after an entry
    // it does not have, announced with term 0, as matching (then commits past its log).
    if is_append && m.index > 0 && m.log_term == 0 {
        return Err("an append after an entry of term 0");
    }
    let mut previous_term = m.log_term;
    for (k, entry) in m.entries.iter().enumerate() {
        match m.get_msg_type() {
            MsgAppend => {
                if entry.term == 0 || entry.term > MAX_PEER_TERM {
                    return Err("an entry's term is 0 or beyond MAX_PEER_TERM");
                }
                if Some(entry.index) != m.index.checked_add(k as u64 + 1) {
                    return Err("entries that do not follow the message's index one by one");
                }
                if entry.term < previous_term || entry.term > m.term {
                    return Err("entry terms out of order");
                }
                previous_term = entry.term;
            }
            // The leader gives a forwarded proposal its index and term.
            MsgPropose if entry.get_entry_type() == EntryType::EntryNormal => {}
            MsgPropose => return Err("a forwarded proposal that is not a normal entry"),
            // The request's context, never stored.
            MsgReadIndex | MsgReadIndexResp => continue,
            _ => return Err("entries in a message that carries none"),
        }
        if encode_entry(entry, 0).is_err() {
            return Err("an entry this replica cannot store");
        }
    }
    if m.get_msg_type() == MsgPropose && m.entries.is_empty() {
        return Err("a forwarded proposal without entries");
    }
    if m.get_msg_type() == MsgSnapshot {
        check_snapshot(group, m)?;
    } else if m.has_snapshot() {
        return Err("a snapshot in a message that carries none");
    }
    Ok(())
}

/// Largest offset a snapshot may start the log at (far beyond any real log; leaves room
/// for the offsets of every later batch).
pub const MAX_SNAPSHOT_OFFSET: i64 = i64::MAX / 2;

/// A snapshot (see `ReplicaLog::snapshot`) must be well formed, and installing it must not
/// reuse offsets: the log restarts at the snapshot's offset, and the entries between this
/// replica's commit and the snapshot's index take at least one offset each after the
/// committed ones. Its configuration is a plain one (Strand makes no joint changes).
fn check_snapshot(group: &Group, m: &Message) -> Result<(), &'static str> {
    let snapshot = m.get_snapshot();
    let meta = snapshot.get_metadata();
    if meta.index == 0 || meta.term == 0 {
        return Err("a snapshot at index 0 or of term 0");
    }
    if meta.term > m.term {
        return Err("a snapshot of a later term than its message");
    }
    let cs = meta.get_conf_state();
    let mut members: Vec<u64> = cs.voters.iter().chain(&cs.learners).copied().collect();
    members.sort_unstable();
    members.dedup();
    if cs.voters.is_empty()
        || members.len() != cs.voters.len() + cs.learners.len()
        || members.contains(&0)
        || !cs.voters_outgoing.is_empty()
        || !cs.learners_next.is_empty()
        || cs.auto_leave
    {
        return Err("a snapshot configuration that is not a plain set of voters and learners");
    }
    let next_offset =
        ReplicaLog::snapshot_next_offset(snapshot).ok_or("undecodable snapshot data")?;
    let replica = group.storage.lock();
    let commit = replica.hard_state().commit;
    if meta.index > commit {
        let committed_end = replica
            .position(commit)
            .map(|p| p.next_offset)
            .unwrap_or_else(|| replica.log().log_start_offset());
        let least = i64::try_from(meta.index - commit)
            .ok()
            .and_then(|entries| committed_end.checked_add(entries));
        if least.is_none_or(|least| next_offset < least) {
            return Err("a snapshot that would reuse offsets");
        }
    }
    if next_offset > MAX_SNAPSHOT_OFFSET {
        return Err("a snapshot offset beyond MAX_SNAPSHOT_OFFSET");
    }
    Ok(())
}

/// Lets a replica whose disk lost its log (a wiped data directory, a restored old
/// backup) rejoin instead of crashing or stalling. raft-rs assumes a follower keeps
/// what it acknowledged: a leader's heartbeat carries a commit index up to what it
/// believes the follower matched (raft-rs panics when that is past the follower's log),
/// and the leader ignores a rejection below that point as stale (the follower would
/// never catch up). So such a heartbeat commits nothing (its commit becomes the local
/// commit index), and a leader
/// that sees a follower reject while holding less than it matched starts probing from
/// the follower's actual end. Both are safe for entries already committed elsewhere:
/// commit never moves back, and a lower match index only delays commits.
///
/// Not covered: a wiped replica also lost its vote for the current term, so in the
/// rare case it had voted in an election still running it could vote again (Kafka's
/// KRaft closes that with directory ids, KIP-853).
fn survive_lost_log(
    group: &str,
    raw: &mut RawNode<ReplicaStorage>,
    message: &mut Message,
) -> Option<Message> {
    let raft = &mut raw.raft;
    match message.get_msg_type() {
        MessageType::MsgHeartbeat => {
            // Past the log, the leader's idea of this replica is wrong, so its commit
            // says nothing about what is here: commit nothing more (a restored backup
            // may hold entries the leader never had; they must not become committed).
            let last_index = raft.raft_log.last_index();
            if message.commit > last_index {
                message.commit = raft.raft_log.committed;
                // And tell the leader where this log really ends (a rejection it takes
                // below), or it would never send anything while no new entry comes.
                return Some(rejection(
                    message,
                    last_index,
                    last_index,
                    raft.raft_log.last_term(),
                ));
            }
        }
        MessageType::MsgAppend
            if message.index > 0 && message.log_term == 0 && message.term >= raft.term =>
        {
            // A leader whose idea of this replica runs past its own log announces the
            // entry before with term 0 (raft-rs's term for an index it does not have).
            // `check_peer_message` refuses it (raft-rs would take it as matching an entry
            // this replica may lack); answered with a rejection naming where this log
            // ends, so the leader probes back into its own log instead of sending the same
            // append forever (found by the simulator, seed 48014: a follower never caught
            // up again).
            let hint = (message.index - 1).min(raft.raft_log.last_index());
            let log_term = raft.raft_log.term(hint).unwrap_or(0);
            return Some(rejection(message, message.index, hint, log_term));
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
    None
}

/// An append rejection answering `message` (a heartbeat or an append from the leader):
/// `index` is what it rejects, `hint` and `log_term` where this log can match.
fn rejection(message: &Message, index: u64, hint: u64, log_term: u64) -> Message {
    let mut reply = Message::default();
    reply.set_msg_type(MessageType::MsgAppendResponse);
    reply.to = message.from;
    reply.from = message.to;
    reply.term = message.term;
    reply.reject = true;
    reply.index = index;
    reply.reject_hint = hint;
    reply.log_term = log_term;
    reply
}

/// What a replica must hold before it votes, from a proven leader's append: the
/// leader's commit position, or the end of what the append carries if later.
fn committed_end(append: &Message) -> VoteBarrier {
    VoteBarrier {
        index: append.commit,
        term: append.commit_term,
    }
    .raise(append_end(append))
}

/// Where a leader's append ends in its log: its last entry, or the entry it follows.
fn append_end(append: &Message) -> VoteBarrier {
    append.entries.last().map_or(
        VoteBarrier {
            index: append.index,
            term: append.log_term,
        },
        |e| VoteBarrier {
            index: e.index,
            term: e.term,
        },
    )
}

/// Runs a raft-rs call that reads `storage`, turning the panic raft-rs raises when such a
/// read fails into what the failure means. An I/O error fails the round (the broker must
/// restart: its disk is failing). A corrupt batch (the read marked it) returns None: the
/// group's raft-rs state is then unknown, and the caller has it rebuilt by the repair,
/// which drops the batch and what follows to replicate them again; a group of one voter
/// has no peer to repair from, so that is a storage failure too. Any other panic is a bug
/// and keeps unwinding.
fn storage_guarded<T>(
    storage: &ReplicaStorage,
    multi_voter: bool,
    call: impl FnOnce() -> T,
) -> Result<Option<T>, DriverError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)) {
        Ok(value) => Ok(Some(value)),
        Err(panic) => {
            if let Some(error) = storage.take_read_error() {
                return Err(DriverError::Io(io::Error::other(error)));
            }
            match storage.corrupt_index() {
                Some(_) if multi_voter => Ok(None),
                Some(index) => Err(DriverError::Io(io::Error::other(format!(
                    "corrupt entry {index} in a log with no other replica"
                )))),
                None => std::panic::resume_unwind(panic),
            }
        }
    }
}
