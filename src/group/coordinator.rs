//! The group coordinator of the classic consumer group protocol, as a state machine.
//!
//! A group moves through Kafka's states: `Empty` (no members; it may still hold
//! committed offsets), `PreparingRebalance` (members are (re)joining; JoinGroup answers
//! wait), `CompletingRebalance` (the new generation is formed and JoinGroup answered;
//! SyncGroup answers wait for the leader's assignment) and `Stable`. Every call takes
//! the time (`now_ms`) from the caller; [`GroupCoordinator::tick`] expires sessions,
//! ends join phases and drops members that never synced. Answers that cannot be given
//! at once are returned later as [`Effect`]s naming the request they answer.
//!
//! What Kafka clients rely on, and this follows:
//! - KIP-394: a dynamic member joining with no member id (JoinGroup v4+) is given one
//!   with MEMBER_ID_REQUIRED and must join again with it; until then it is pending and
//!   expires after its session timeout.
//! - KIP-345 static membership: a member with a `group.instance.id` that rejoins with
//!   an unknown member id takes over its old place under a new member id (the old one is
//!   fenced: FENCED_INSTANCE_ID), and a stable group does not rebalance for it.
//! - An empty group waits `initial_rebalance_delay_ms` before its first generation, so
//!   members starting together join one generation.
//! - The protocol is the one every member supports, by the members' preference votes.

use super::records::{GroupRecord, GroupValue, LogEntry, MemberValue};
use bytes::Bytes;
use kafka_protocol::ResponseError;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};

/// Partitions one group may hold pending transactional offsets for, over all its open
/// transactions: a TxnOffsetCommit that would go past it is refused
/// (COORDINATOR_NOT_AVAILABLE) until transactions end.
pub const PENDING_TXN_OFFSETS_PER_GROUP_MAX: usize = 100_000;

/// Names a request whose answer may come later (the caller's own numbering).
pub type RequestId = u64;

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// `group.min.session.timeout.ms` / `group.max.session.timeout.ms`.
    pub min_session_timeout_ms: i32,
    pub max_session_timeout_ms: i32,
    /// `group.initial.rebalance.delay.ms`.
    pub initial_rebalance_delay_ms: i32,
    /// `group.max.size`.
    pub max_group_size: usize,
    /// `offset.metadata.max.bytes`.
    pub max_offset_metadata_bytes: usize,
    /// `offsets.retention.minutes`, in ms: an empty group's offsets expire this long
    /// after it became empty (or after their commit, whichever is later).
    pub offsets_retention_ms: i64,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        // Kafka's defaults.
        CoordinatorConfig {
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            initial_rebalance_delay_ms: 3_000,
            max_group_size: i32::MAX as usize,
            max_offset_metadata_bytes: 4096,
            offsets_retention_ms: 7 * 24 * 60 * 60 * 1000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    /// The name DescribeGroups and ListGroups report.
    pub fn kafka_name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    pub group_id: String,
    /// Empty for a member joining for the first time.
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    /// (name, metadata) in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a new dynamic member must first be given its id (KIP-394).
    pub require_known_member_id: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JoinResponse {
    pub error: Option<ResponseError>,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// The leader's only: every member's (id, instance id, metadata of the chosen
    /// protocol), for it to compute the assignment.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRequest {
    pub group_id: String,
    pub member_id: String,
    pub generation_id: i32,
    pub group_instance_id: Option<String>,
    /// SyncGroup v5+ (checked when given).
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    /// The leader's assignment: (member id, assignment); empty from followers.
    pub assignments: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncResponse {
    pub error: Option<ResponseError>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

/// An answer the coordinator gives later than the call that asked, or a record to
/// persist.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Join(RequestId, JoinResponse),
    Sync(RequestId, SyncResponse),
    /// Append to the group's `__consumer_offsets` partition before sending the answers
    /// that follow it (a new generation's members and assignments, or a group that
    /// became empty).
    Persist(GroupRecord),
}

/// What an offset commit stores for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommitRequest {
    pub group_id: String,
    /// Empty, with generation -1: a commit from outside any generation (a consumer
    /// that assigns partitions itself), accepted only while the group has no members.
    pub member_id: String,
    pub generation_id: i32,
    pub group_instance_id: Option<String>,
    /// (topic, partition, offset, leader epoch, metadata).
    pub offsets: Vec<(String, i32, i64, i32, String)>,
}

/// TxnOffsetCommit (KIP-98): offsets committed in a producer's transaction. They stay
/// pending (invisible to OffsetFetch) until the transaction's marker commits them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnOffsetCommitRequest {
    pub group_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// v3+ (KIP-447): the consumer's member id and generation, checked when given; an
    /// empty member id and generation -1 (v0-2 clients) skip the member checks.
    pub member_id: String,
    pub generation_id: i32,
    pub group_instance_id: Option<String>,
    /// (topic, partition, offset, leader epoch, metadata).
    pub offsets: Vec<(String, i32, i64, i32, String)>,
}

#[derive(Debug, Clone)]
struct Member {
    group_instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout_ms: i32,
    rebalance_timeout_ms: i32,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_heartbeat_ms: i64,
    awaiting_join: Option<RequestId>,
    awaiting_sync: Option<RequestId>,
}

impl Member {
    fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, metadata)| metadata.clone())
            .unwrap_or_default()
    }

    fn same_protocols(&self, protocols: &[(String, Bytes)]) -> bool {
        self.protocols == protocols
    }
}

/// A member as DescribeGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub group_id: String,
    pub state: GroupState,
    pub generation_id: i32,
    pub protocol_type: String,
    pub protocol_name: String,
    pub leader: String,
    pub members: Vec<MemberDescription>,
}

#[derive(Debug, Clone)]
struct Group {
    group_id: String,
    state: GroupState,
    generation_id: i32,
    protocol_type: Option<String>,
    protocol_name: Option<String>,
    leader: Option<String>,
    /// By member id.
    members: BTreeMap<String, Member>,
    /// Member ids given out with MEMBER_ID_REQUIRED, with when they expire (KIP-394).
    pending_members: BTreeMap<String, i64>,
    /// Static members: instance id -> its current member id.
    static_members: BTreeMap<String, String>,
    /// When the join phase (PreparingRebalance) or the wait for SyncGroup
    /// (CompletingRebalance) ends at the latest.
    phase_deadline_ms: i64,
    /// The join phase of an empty group waits its whole initial delay.
    initial_delay: bool,
    offsets: BTreeMap<(String, i32), CommittedOffset>,
    /// Offsets written in open transactions, by producer id: durable, not visible until
    /// the producer's COMMIT marker (dropped at its ABORT).
    pending_txn_offsets: BTreeMap<i64, BTreeMap<(String, i32), CommittedOffset>>,
    /// When the group last became empty (its offsets' retention counts from then).
    empty_since_ms: i64,
}

impl Group {
    fn new(group_id: &str, now_ms: i64) -> Group {
        Group {
            group_id: group_id.to_string(),
            state: GroupState::Empty,
            generation_id: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: BTreeMap::new(),
            pending_members: BTreeMap::new(),
            static_members: BTreeMap::new(),
            phase_deadline_ms: 0,
            initial_delay: false,
            offsets: BTreeMap::new(),
            pending_txn_offsets: BTreeMap::new(),
            empty_since_ms: now_ms,
        }
    }

    /// Whether a joining member's protocols can join this group: the same protocol
    /// type, and a protocol every member (it included) supports.
    fn accepts(&self, protocol_type: &str, protocols: &[(String, Bytes)], except: &str) -> bool {
        if self.members.is_empty() {
            return true;
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        protocols.iter().any(|(name, _)| {
            self.members
                .iter()
                .filter(|(id, _)| id.as_str() != except)
                .all(|(_, m)| m.protocols.iter().any(|(n, _)| n == name))
        })
    }

    /// The protocol for the new generation: among those every member supports, the one
    /// most members prefer (each votes for its first supported candidate); ties go to
    /// the name first in order.
    fn select_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(name, _)| name)
            .filter(|name| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == *name))
            })
            .collect();
        let mut votes: BTreeMap<&String, usize> = BTreeMap::new();
        for member in self.members.values() {
            if let Some((name, _)) = member
                .protocols
                .iter()
                .find(|(n, _)| candidates.contains(&n))
            {
                *votes.entry(name).or_default() += 1;
            }
        }
        let most = votes.values().copied().max()?;
        votes
            .into_iter()
            .find(|(_, v)| *v == most)
            .map(|(name, _)| name.clone())
    }

    fn all_joined(&self) -> bool {
        self.members.values().all(|m| m.awaiting_join.is_some())
    }

    fn join_response(&self, member_id: &str) -> JoinResponse {
        let leader = self.leader.clone().unwrap_or_default();
        let protocol = self.protocol_name.clone().unwrap_or_default();
        let members = if leader == member_id {
            self.members
                .iter()
                .map(|(id, m)| {
                    (
                        id.clone(),
                        m.group_instance_id.clone(),
                        m.metadata(&protocol),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinResponse {
            error: None,
            generation_id: self.generation_id,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader,
            member_id: member_id.to_string(),
            members,
        }
    }

    fn sync_response(&self, member_id: &str) -> SyncResponse {
        SyncResponse {
            error: None,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            assignment: self
                .members
                .get(member_id)
                .map(|m| m.assignment.clone())
                .unwrap_or_default(),
        }
    }

    /// The ids of the members `which` picks.
    fn member_ids_where(&self, which: impl Fn(&Member) -> bool) -> Vec<String> {
        self.members
            .iter()
            .filter(|(_, m)| which(m))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The last member is gone: the group is Empty from `now_ms` (its offsets' retention
    /// counts from then), and that is persisted.
    fn become_empty(&mut self, now_ms: i64, effects: &mut Vec<Effect>) {
        debug_assert!(self.members.is_empty());
        self.state = GroupState::Empty;
        self.empty_since_ms = now_ms;
        // As Kafka: an empty group keeps its protocol type (ListGroups shows a consumer
        // group as one), not its protocol.
        self.protocol_name = None;
        self.leader = None;
        effects.push(Effect::Persist(self.record()));
    }

    /// Moves to the next generation. After i32::MAX it starts over at 1 (only a damaged
    /// or forged record gets near it; found by the `group_record` fuzz target, which
    /// replayed generation i32::MAX and then overflowed).
    fn next_generation(&mut self) {
        // Planted bug: every rebalance after the first keeps the generation's id.
        if crate::planted::on("group-generation-not-bumped") && self.generation_id > 0 {
            return;
        }
        self.generation_id = self.generation_id.checked_add(1).unwrap_or(1);
    }

    /// The group's record: its generation and members as they are now.
    fn record(&self) -> GroupRecord {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        GroupRecord::Group {
            group: self.group_id.clone(),
            value: Some(GroupValue {
                generation_id: self.generation_id,
                protocol_type: self.protocol_type.clone().unwrap_or_default(),
                protocol_name: self.protocol_name.clone(),
                leader: self.leader.clone(),
                members: self
                    .members
                    .iter()
                    .map(|(id, m)| MemberValue {
                        member_id: id.clone(),
                        group_instance_id: m.group_instance_id.clone(),
                        client_id: m.client_id.clone(),
                        client_host: m.client_host.clone(),
                        session_timeout_ms: m.session_timeout_ms,
                        rebalance_timeout_ms: m.rebalance_timeout_ms,
                        subscription: m.metadata(&protocol),
                        assignment: m.assignment.clone(),
                    })
                    .collect(),
            }),
        }
    }

    fn check_invariants(&self) {
        debug_assert!(self
            .static_members
            .values()
            .all(|id| self.members.contains_key(id)));
        if let Some(leader) = &self.leader {
            assert!(
                self.members.contains_key(leader),
                "the leader is one of the members"
            );
        }
        assert_eq!(
            self.members.is_empty(),
            self.state == GroupState::Empty,
            "a group is Empty exactly when it has no members"
        );
    }
}

/// The topics of a consumer's subscription (ConsumerProtocolSubscription: a version,
/// then the message of that version), None when it does not decode.
fn subscribed_topics(metadata: &Bytes) -> Option<Vec<String>> {
    use kafka_protocol::messages::ConsumerProtocolSubscription;
    use kafka_protocol::protocol::Decodable;
    let mut buf = metadata.clone();
    if buf.len() < 2 {
        return None;
    }
    let version = i16::from_be_bytes([buf[0], buf[1]]);
    let _ = bytes::Buf::get_i16(&mut buf);
    // Newer versions than the crate knows are read as its newest (fields are added).
    let version = version.clamp(0, 3);
    let subscription = ConsumerProtocolSubscription::decode(&mut buf, version).ok()?;
    Some(subscription.topics.iter().map(|t| t.to_string()).collect())
}

fn join_error(error: ResponseError, member_id: &str) -> JoinResponse {
    JoinResponse {
        error: Some(error),
        generation_id: -1,
        member_id: member_id.to_string(),
        ..JoinResponse::default()
    }
}

fn sync_error(error: ResponseError) -> SyncResponse {
    SyncResponse {
        error: Some(error),
        ..SyncResponse::default()
    }
}

/// Every group this coordinator owns (the groups of the `__consumer_offsets`
/// partitions it leads).
pub struct GroupCoordinator {
    config: CoordinatorConfig,
    groups: BTreeMap<String, Group>,
    /// Draws member ids (Kafka's `client.id-UUID`).
    rng: rand::rngs::StdRng,
}

impl GroupCoordinator {
    pub fn new(config: CoordinatorConfig, seed: u64) -> GroupCoordinator {
        GroupCoordinator {
            config,
            groups: BTreeMap::new(),
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        }
    }

    fn new_member_id(&mut self, client_id: &str) -> String {
        let uuid = uuid::Uuid::from_u128(self.rng.gen());
        format!("{client_id}-{uuid}")
    }

    /// JoinGroup: answered now (`Some`) or by a later [`Effect::Join`] for `request`.
    pub fn join(
        &mut self,
        request: RequestId,
        join: JoinRequest,
        now_ms: i64,
    ) -> (Option<JoinResponse>, Vec<Effect>) {
        let mut effects = Vec::new();
        let answer = self.join_inner(request, join, now_ms, &mut effects);
        (answer, effects)
    }

    fn join_inner(
        &mut self,
        request: RequestId,
        join: JoinRequest,
        now_ms: i64,
        effects: &mut Vec<Effect>,
    ) -> Option<JoinResponse> {
        let config = &self.config;
        if join.group_id.is_empty() {
            return Some(join_error(ResponseError::InvalidGroupId, &join.member_id));
        }
        if join.session_timeout_ms < config.min_session_timeout_ms
            || join.session_timeout_ms > config.max_session_timeout_ms
        {
            return Some(join_error(
                ResponseError::InvalidSessionTimeout,
                &join.member_id,
            ));
        }
        if join.protocol_type.is_empty() || join.protocols.is_empty() {
            return Some(join_error(
                ResponseError::InconsistentGroupProtocol,
                &join.member_id,
            ));
        }
        if !join.member_id.is_empty() && !self.groups.contains_key(&join.group_id) {
            return Some(join_error(ResponseError::UnknownMemberId, &join.member_id));
        }
        let new_id = join
            .member_id
            .is_empty()
            .then(|| self.new_member_id(&join.client_id));
        let max_group_size = self.config.max_group_size;
        let group = self
            .groups
            .entry(join.group_id.clone())
            .or_insert_with_key(|id| Group::new(id, now_ms));
        if !group.accepts(&join.protocol_type, &join.protocols, &join.member_id) {
            return Some(join_error(
                ResponseError::InconsistentGroupProtocol,
                &join.member_id,
            ));
        }
        let member_id = match new_id {
            Some(new_id) => {
                // A member joining with no id.
                if let Some(instance) = &join.group_instance_id {
                    if let Some(old_id) = group.static_members.get(instance).cloned() {
                        return Self::replace_static_member(
                            group,
                            &self.config,
                            (request, &join),
                            old_id,
                            new_id,
                            now_ms,
                            effects,
                        );
                    }
                } else if join.require_known_member_id {
                    if group.members.len() + group.pending_members.len() >= max_group_size {
                        return Some(join_error(ResponseError::GroupMaxSizeReached, ""));
                    }
                    let expires = now_ms + i64::from(join.session_timeout_ms);
                    group.pending_members.insert(new_id.clone(), expires);
                    return Some(join_error(ResponseError::MemberIdRequired, &new_id));
                }
                if group.members.len() >= max_group_size {
                    return Some(join_error(ResponseError::GroupMaxSizeReached, ""));
                }
                new_id
            }
            None => join.member_id.clone(),
        };
        if let Some(instance) = &join.group_instance_id {
            if let Some(current) = group.static_members.get(instance) {
                if *current != member_id {
                    return Some(join_error(ResponseError::FencedInstanceId, &member_id));
                }
            }
        }
        let known = group.members.contains_key(&member_id);
        let pending = group.pending_members.remove(&member_id).is_some();
        if !known && !pending && !join.member_id.is_empty() {
            return Some(join_error(ResponseError::UnknownMemberId, &member_id));
        }
        if known {
            let member = group.members.get_mut(&member_id).expect("known");
            let unchanged = member.same_protocols(&join.protocols);
            let is_leader = group.leader.as_deref() == Some(member_id.as_str());
            match group.state {
                GroupState::CompletingRebalance if unchanged => {
                    // Its JoinGroup answer was lost: the same generation again.
                    member.last_heartbeat_ms = now_ms;
                    return Some(group.join_response(&member_id));
                }
                GroupState::Stable if unchanged && !is_leader => {
                    member.last_heartbeat_ms = now_ms;
                    return Some(group.join_response(&member_id));
                }
                _ => {}
            }
            let member = group.members.get_mut(&member_id).expect("known");
            member.protocols = join.protocols.clone();
            member.session_timeout_ms = join.session_timeout_ms;
            member.rebalance_timeout_ms = join.rebalance_timeout_ms;
            member.last_heartbeat_ms = now_ms;
            if let Some(earlier) = member.awaiting_join.replace(request) {
                // The same member joined again before its answer: the earlier request
                // gets one, the later waits.
                effects.push(Effect::Join(
                    earlier,
                    join_error(ResponseError::UnknownMemberId, &member_id),
                ));
            }
        } else {
            let member = Member {
                group_instance_id: join.group_instance_id.clone(),
                client_id: join.client_id.clone(),
                client_host: join.client_host.clone(),
                session_timeout_ms: join.session_timeout_ms,
                rebalance_timeout_ms: join.rebalance_timeout_ms,
                protocols: join.protocols.clone(),
                assignment: Bytes::new(),
                last_heartbeat_ms: now_ms,
                awaiting_join: Some(request),
                awaiting_sync: None,
            };
            if group.members.is_empty() {
                group.protocol_type = Some(join.protocol_type.clone());
            }
            group.members.insert(member_id.clone(), member);
            if let Some(instance) = &join.group_instance_id {
                group
                    .static_members
                    .insert(instance.clone(), member_id.clone());
            }
        }
        if group.state != GroupState::PreparingRebalance {
            Self::prepare_rebalance(group, &self.config, now_ms, effects);
        }
        Self::maybe_complete_join(group, now_ms, effects);
        group.check_invariants();
        None
    }

    /// A static member rejoining with an unknown member id (a restart): it takes its
    /// old place under `new_id`, and the old id is fenced. Answered now unless it must
    /// wait for a join phase.
    fn replace_static_member(
        group: &mut Group,
        config: &CoordinatorConfig,
        (request, join): (RequestId, &JoinRequest),
        old_id: String,
        new_id: String,
        now_ms: i64,
        effects: &mut Vec<Effect>,
    ) -> Option<JoinResponse> {
        let mut member = group
            .members
            .remove(&old_id)
            .expect("static members are members");
        // The old incarnation's waiting requests are fenced.
        if let Some(earlier) = member.awaiting_join.take() {
            effects.push(Effect::Join(
                earlier,
                join_error(ResponseError::FencedInstanceId, &old_id),
            ));
        }
        if let Some(earlier) = member.awaiting_sync.take() {
            effects.push(Effect::Sync(
                earlier,
                sync_error(ResponseError::FencedInstanceId),
            ));
        }
        let unchanged = member.same_protocols(&join.protocols);
        member.client_id = join.client_id.clone();
        member.client_host = join.client_host.clone();
        member.session_timeout_ms = join.session_timeout_ms;
        member.rebalance_timeout_ms = join.rebalance_timeout_ms;
        member.protocols = join.protocols.clone();
        member.last_heartbeat_ms = now_ms;
        group.members.insert(new_id.clone(), member);
        let instance = join.group_instance_id.clone().expect("a static member");
        group.static_members.insert(instance, new_id.clone());
        if group.leader.as_deref() == Some(old_id.as_str()) {
            group.leader = Some(new_id.clone());
        }
        match group.state {
            // A stable group keeps its generation and assignment: no rebalance for a
            // static member that comes back (KIP-345). It syncs to get its assignment.
            GroupState::Stable | GroupState::CompletingRebalance if unchanged => {
                let mut answer = group.join_response(&new_id);
                // Only a rebalance gives the leader the member list.
                answer.members.clear();
                group.check_invariants();
                Some(answer)
            }
            _ => {
                group
                    .members
                    .get_mut(&new_id)
                    .expect("just inserted")
                    .awaiting_join = Some(request);
                if group.state != GroupState::PreparingRebalance {
                    // The protocols changed: a new generation.
                    Self::prepare_rebalance(group, config, now_ms, effects);
                }
                Self::maybe_complete_join(group, now_ms, effects);
                group.check_invariants();
                None
            }
        }
    }

    fn prepare_rebalance(
        group: &mut Group,
        config: &CoordinatorConfig,
        now_ms: i64,
        effects: &mut Vec<Effect>,
    ) {
        // Members waiting for an assignment of the generation that ends now.
        for member in group.members.values_mut() {
            if let Some(request) = member.awaiting_sync.take() {
                effects.push(Effect::Sync(
                    request,
                    sync_error(ResponseError::RebalanceInProgress),
                ));
            }
        }
        let rebalance_timeout_ms = group
            .members
            .values()
            .map(|m| m.rebalance_timeout_ms)
            .max()
            .unwrap_or(0);
        // Only an empty group's first join phase waits the initial delay.
        let was_empty = group.state == GroupState::Empty;
        group.initial_delay = was_empty && config.initial_rebalance_delay_ms > 0;
        let wait_ms = if group.initial_delay {
            config
                .initial_rebalance_delay_ms
                .min(rebalance_timeout_ms.max(1))
        } else {
            rebalance_timeout_ms
        };
        group.phase_deadline_ms = now_ms + i64::from(wait_ms);
        group.state = GroupState::PreparingRebalance;
    }

    /// Ends the join phase once every member rejoined (an empty group's first one
    /// waits its whole initial delay).
    fn maybe_complete_join(group: &mut Group, now_ms: i64, effects: &mut Vec<Effect>) {
        if group.state == GroupState::PreparingRebalance
            && group.all_joined()
            && !group.initial_delay
        {
            Self::complete_join(group, now_ms, effects);
        }
    }

    /// The join phase ends: members that did not rejoin are dropped, and the rest form
    /// the next generation.
    fn complete_join(group: &mut Group, now_ms: i64, effects: &mut Vec<Effect>) {
        assert_eq!(group.state, GroupState::PreparingRebalance);
        for id in group.member_ids_where(|m| m.awaiting_join.is_none()) {
            Self::drop_member(group, &id);
        }
        group.next_generation();
        group.initial_delay = false;
        if group.members.is_empty() {
            group.become_empty(now_ms, effects);
            return;
        }
        group.protocol_name = group.select_protocol();
        if group
            .leader
            .as_ref()
            .is_none_or(|leader| !group.members.contains_key(leader))
        {
            group.leader = group.members.keys().next().cloned();
        }
        group.state = GroupState::CompletingRebalance;
        let longest_ms = group
            .members
            .values()
            .map(|m| m.rebalance_timeout_ms.max(m.session_timeout_ms))
            .max()
            .unwrap_or(0);
        group.phase_deadline_ms = now_ms + i64::from(longest_ms);
        let ids: Vec<String> = group.members.keys().cloned().collect();
        for id in ids {
            let answer = group.join_response(&id);
            let member = group.members.get_mut(&id).expect("listed");
            member.last_heartbeat_ms = now_ms;
            member.assignment = Bytes::new();
            if let Some(request) = member.awaiting_join.take() {
                effects.push(Effect::Join(request, answer));
            }
        }
    }

    fn drop_member(group: &mut Group, member_id: &str) {
        if let Some(member) = group.members.remove(member_id) {
            if let Some(instance) = &member.group_instance_id {
                if group.static_members.get(instance).map(String::as_str) == Some(member_id) {
                    group.static_members.remove(instance);
                }
            }
        }
        if group.leader.as_deref() == Some(member_id) {
            group.leader = None;
        }
    }

    /// A member left or expired: the group rebalances without it.
    fn remove_member(
        group: &mut Group,
        config: &CoordinatorConfig,
        member_id: &str,
        now_ms: i64,
        effects: &mut Vec<Effect>,
    ) {
        if let Some(member) = group.members.get_mut(member_id) {
            if let Some(request) = member.awaiting_join.take() {
                effects.push(Effect::Join(
                    request,
                    join_error(ResponseError::UnknownMemberId, member_id),
                ));
            }
            if let Some(request) = member.awaiting_sync.take() {
                effects.push(Effect::Sync(
                    request,
                    sync_error(ResponseError::UnknownMemberId),
                ));
            }
        }
        Self::drop_member(group, member_id);
        match group.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                if group.members.is_empty() {
                    group.next_generation();
                    group.become_empty(now_ms, effects);
                } else {
                    Self::prepare_rebalance(group, config, now_ms, effects);
                }
            }
            GroupState::PreparingRebalance => {
                if group.members.is_empty() {
                    Self::complete_join(group, now_ms, effects);
                } else {
                    Self::maybe_complete_join(group, now_ms, effects);
                }
            }
            GroupState::Empty => {}
        }
    }

    /// The membership checks SyncGroup, Heartbeat and OffsetCommit share.
    fn check_member(
        group: &Group,
        member_id: &str,
        group_instance_id: Option<&str>,
    ) -> Result<(), ResponseError> {
        if let Some(instance) = group_instance_id {
            if let Some(current) = group.static_members.get(instance) {
                if current != member_id {
                    return Err(ResponseError::FencedInstanceId);
                }
            }
        }
        if !group.members.contains_key(member_id) {
            return Err(ResponseError::UnknownMemberId);
        }
        Ok(())
    }

    /// SyncGroup: answered now (`Some`) or by a later [`Effect::Sync`] for `request`.
    pub fn sync(
        &mut self,
        request: RequestId,
        sync: SyncRequest,
        now_ms: i64,
    ) -> (Option<SyncResponse>, Vec<Effect>) {
        let mut effects = Vec::new();
        let Some(group) = self.groups.get_mut(&sync.group_id) else {
            return (Some(sync_error(ResponseError::UnknownMemberId)), effects);
        };
        if let Err(e) =
            Self::check_member(group, &sync.member_id, sync.group_instance_id.as_deref())
        {
            return (Some(sync_error(e)), effects);
        }
        if sync.generation_id != group.generation_id {
            return (Some(sync_error(ResponseError::IllegalGeneration)), effects);
        }
        let mismatch =
            |given: &Option<String>, current: &Option<String>| given.is_some() && given != current;
        if mismatch(&sync.protocol_type, &group.protocol_type)
            || mismatch(&sync.protocol_name, &group.protocol_name)
        {
            return (
                Some(sync_error(ResponseError::InconsistentGroupProtocol)),
                effects,
            );
        }
        let answer = match group.state {
            GroupState::Empty => Some(sync_error(ResponseError::UnknownMemberId)),
            GroupState::PreparingRebalance => Some(sync_error(ResponseError::RebalanceInProgress)),
            GroupState::Stable => {
                let member = group.members.get_mut(&sync.member_id).expect("checked");
                member.last_heartbeat_ms = now_ms;
                Some(group.sync_response(&sync.member_id))
            }
            GroupState::CompletingRebalance => {
                let member = group.members.get_mut(&sync.member_id).expect("checked");
                member.last_heartbeat_ms = now_ms;
                if let Some(earlier) = member.awaiting_sync.replace(request) {
                    effects.push(Effect::Sync(
                        earlier,
                        sync_error(ResponseError::UnknownMemberId),
                    ));
                }
                if group.leader.as_deref() == Some(sync.member_id.as_str()) {
                    // The leader's assignment forms the generation: members it left out
                    // get an empty one.
                    let assigned: BTreeMap<String, Bytes> = sync.assignments.into_iter().collect();
                    for (id, member) in group.members.iter_mut() {
                        member.assignment = assigned.get(id).cloned().unwrap_or_default();
                    }
                    group.state = GroupState::Stable;
                    effects.push(Effect::Persist(group.record()));
                    let ids: Vec<String> = group.members.keys().cloned().collect();
                    for id in ids {
                        let answer = group.sync_response(&id);
                        let member = group.members.get_mut(&id).expect("listed");
                        if let Some(waiting) = member.awaiting_sync.take() {
                            effects.push(Effect::Sync(waiting, answer));
                        }
                    }
                }
                None
            }
        };
        group.check_invariants();
        (answer, effects)
    }

    /// Heartbeat: the error code to answer with (None: no error).
    pub fn heartbeat(
        &mut self,
        group_id: &str,
        member_id: &str,
        generation_id: i32,
        group_instance_id: Option<&str>,
        now_ms: i64,
    ) -> Option<ResponseError> {
        let Some(group) = self.groups.get_mut(group_id) else {
            return Some(ResponseError::UnknownMemberId);
        };
        if let Err(e) = Self::check_member(group, member_id, group_instance_id) {
            return Some(e);
        }
        let member = group.members.get_mut(member_id).expect("checked");
        match group.state {
            GroupState::Empty => Some(ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => {
                member.last_heartbeat_ms = now_ms;
                Some(ResponseError::RebalanceInProgress)
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                if generation_id != group.generation_id {
                    return Some(ResponseError::IllegalGeneration);
                }
                member.last_heartbeat_ms = now_ms;
                None
            }
        }
    }

    /// LeaveGroup for each (member id, instance id): its error (None: it left).
    pub fn leave(
        &mut self,
        group_id: &str,
        leaving: &[(String, Option<String>)],
        now_ms: i64,
    ) -> (Vec<Option<ResponseError>>, Vec<Effect>) {
        let mut effects = Vec::new();
        let Some(group) = self.groups.get_mut(group_id) else {
            return (
                vec![Some(ResponseError::UnknownMemberId); leaving.len()],
                effects,
            );
        };
        let mut results = Vec::with_capacity(leaving.len());
        for (member_id, instance) in leaving {
            // A static member may leave by its instance id alone.
            let member_id = match (member_id.is_empty(), instance) {
                (true, Some(instance)) => match group.static_members.get(instance) {
                    Some(id) => id.clone(),
                    None => {
                        results.push(Some(ResponseError::UnknownMemberId));
                        continue;
                    }
                },
                _ => member_id.clone(),
            };
            if group.pending_members.remove(&member_id).is_some() {
                results.push(None);
                continue;
            }
            match Self::check_member(group, &member_id, instance.as_deref()) {
                Err(e) => results.push(Some(e)),
                Ok(()) => {
                    Self::remove_member(group, &self.config, &member_id, now_ms, &mut effects);
                    results.push(None);
                }
            }
        }
        group.check_invariants();
        (results, effects)
    }

    /// Advances the clock: pending member ids and silent members expire, join phases
    /// and waits for the leader's assignment end at their deadlines.
    pub fn tick(&mut self, now_ms: i64) -> Vec<Effect> {
        let mut effects = Vec::new();
        self.expire_offsets(now_ms, &mut effects);
        for group in self.groups.values_mut() {
            group.pending_members.retain(|_, expires| *expires > now_ms);
            // Members waiting for an answer are alive by definition.
            let expired = group.member_ids_where(|m| {
                m.awaiting_join.is_none()
                    && m.awaiting_sync.is_none()
                    && m.last_heartbeat_ms + i64::from(m.session_timeout_ms) <= now_ms
            });
            for id in expired {
                Self::remove_member(group, &self.config, &id, now_ms, &mut effects);
            }
            match group.state {
                GroupState::PreparingRebalance if now_ms >= group.phase_deadline_ms => {
                    Self::complete_join(group, now_ms, &mut effects);
                }
                GroupState::CompletingRebalance if now_ms >= group.phase_deadline_ms => {
                    // The leader never sent its assignment: those that did not sync are
                    // dropped and the rest rebalance.
                    for id in group.member_ids_where(|m| m.awaiting_sync.is_none()) {
                        Self::remove_member(group, &self.config, &id, now_ms, &mut effects);
                    }
                    if group.state == GroupState::CompletingRebalance {
                        Self::prepare_rebalance(group, &self.config, now_ms, &mut effects);
                    }
                }
                _ => {}
            }
            group.check_invariants();
        }
        effects
    }

    /// Offset retention: an empty group's offsets expire `offsets_retention_ms` after it
    /// became empty or after their commit, whichever is later; a group left with no
    /// members and no offsets is deleted. Both are persisted (tombstones) and applied
    /// at once.
    fn expire_offsets(&mut self, now_ms: i64, effects: &mut Vec<Effect>) {
        let retention_ms = self.config.offsets_retention_ms;
        let mut deleted = Vec::new();
        for (group_id, group) in self.groups.iter_mut() {
            if group.state != GroupState::Empty {
                continue;
            }
            let since = group.empty_since_ms;
            let expired: Vec<(String, i32)> = group
                .offsets
                .iter()
                .filter(|(_, c)| c.commit_ms.max(since).saturating_add(retention_ms) <= now_ms)
                .map(|(key, _)| key.clone())
                .collect();
            for (topic, partition) in expired {
                group.offsets.remove(&(topic.clone(), partition));
                effects.push(Effect::Persist(GroupRecord::Offset {
                    group: group_id.clone(),
                    topic,
                    partition,
                    value: None,
                }));
            }
            if group.offsets.is_empty()
                && group.pending_txn_offsets.is_empty()
                && since.saturating_add(retention_ms) <= now_ms
            {
                deleted.push(group_id.clone());
            }
        }
        for group_id in deleted {
            self.groups.remove(&group_id);
            effects.push(Effect::Persist(GroupRecord::Group {
                group: group_id,
                value: None,
            }));
        }
    }

    /// DeleteGroups: for each group, its error, or the records that delete it (offset
    /// tombstones, then the group's): only a group with no members can be deleted.
    /// Nothing changes until the caller persisted and [`Self::replay`]ed them.
    pub fn delete_groups(
        &self,
        group_ids: &[String],
    ) -> Vec<Result<Vec<GroupRecord>, ResponseError>> {
        group_ids
            .iter()
            .map(|group_id| {
                let group = self
                    .groups
                    .get(group_id)
                    .ok_or(ResponseError::GroupIdNotFound)?;
                if group.state != GroupState::Empty {
                    return Err(ResponseError::NonEmptyGroup);
                }
                let mut records: Vec<GroupRecord> = group
                    .offsets
                    .keys()
                    .map(|(topic, partition)| GroupRecord::Offset {
                        group: group_id.clone(),
                        topic: topic.clone(),
                        partition: *partition,
                        value: None,
                    })
                    .collect();
                records.push(GroupRecord::Group {
                    group: group_id.clone(),
                    value: None,
                });
                Ok(records)
            })
            .collect()
    }

    /// OffsetDelete: the error of each (topic, partition) (None: deleted) and the
    /// tombstones to persist and replay. A topic some member of a consumer group
    /// subscribes to keeps its offsets (GROUP_SUBSCRIBED_TO_TOPIC).
    pub fn delete_offsets(
        &self,
        group_id: &str,
        partitions: &[(String, i32)],
    ) -> Result<(Vec<Option<ResponseError>>, Vec<GroupRecord>), ResponseError> {
        let group = self
            .groups
            .get(group_id)
            .ok_or(ResponseError::GroupIdNotFound)?;
        let subscribed = |topic: &str| {
            group.protocol_type.as_deref() == Some("consumer")
                && group.members.values().any(|m| {
                    let metadata = m.metadata(group.protocol_name.as_deref().unwrap_or_default());
                    // Undecodable metadata counts as subscribed to everything.
                    subscribed_topics(&metadata)
                        .is_none_or(|topics| topics.iter().any(|t| t == topic))
                })
        };
        let mut records = Vec::new();
        let errors = partitions
            .iter()
            .map(|(topic, partition)| {
                if subscribed(topic) {
                    return Some(ResponseError::GroupSubscribedToTopic);
                }
                if group.offsets.contains_key(&(topic.clone(), *partition)) {
                    records.push(GroupRecord::Offset {
                        group: group_id.to_string(),
                        topic: topic.clone(),
                        partition: *partition,
                        value: None,
                    });
                }
                None
            })
            .collect();
        Ok((errors, records))
    }

    /// OffsetCommit: the error of each offset (None: accepted), in order, and the
    /// records of the accepted ones. Nothing is stored yet: the caller appends the
    /// records to the group's `__consumer_offsets` partition, then [`Self::replay`]s
    /// them and answers.
    pub fn commit_offsets(
        &mut self,
        commit: OffsetCommitRequest,
        now_ms: i64,
    ) -> (Vec<Option<ResponseError>>, Vec<GroupRecord>) {
        let n = commit.offsets.len();
        if commit.group_id.is_empty() {
            return (vec![Some(ResponseError::InvalidGroupId); n], Vec::new());
        }
        let outside_generation = commit.generation_id < 0 && commit.member_id.is_empty();
        if !outside_generation && !self.groups.contains_key(&commit.group_id) {
            // As Kafka answers a member of a group it does not know (an older
            // generation, or another coordinator's).
            return (vec![Some(ResponseError::IllegalGeneration); n], Vec::new());
        }
        let group = self
            .groups
            .entry(commit.group_id.clone())
            .or_insert_with_key(|id| Group::new(id, now_ms));
        let refused = if outside_generation {
            (group.state != GroupState::Empty).then_some(ResponseError::UnknownMemberId)
        } else {
            match Self::check_member(
                group,
                &commit.member_id,
                commit.group_instance_id.as_deref(),
            ) {
                Err(e) => Some(e),
                Ok(()) if commit.generation_id != group.generation_id => {
                    Some(ResponseError::IllegalGeneration)
                }
                // As in Kafka: a member of the current generation may still commit while
                // the group prepares the next one (an eager consumer commits what it
                // consumed as it gives its partitions up); not while the new generation
                // is being assigned, nor before the group's first generation.
                Ok(())
                    if group.state == GroupState::CompletingRebalance
                        || group.generation_id == 0 =>
                {
                    Some(ResponseError::RebalanceInProgress)
                }
                Ok(()) => None,
            }
        };
        if let Some(error) = refused {
            return (vec![Some(error); n], Vec::new());
        }
        if let Some(member) = group.members.get_mut(&commit.member_id) {
            member.last_heartbeat_ms = now_ms;
        }
        let max_metadata = self.config.max_offset_metadata_bytes;
        let mut records = Vec::new();
        let errors = commit
            .offsets
            .into_iter()
            .map(|(topic, partition, offset, leader_epoch, metadata)| {
                if metadata.len() > max_metadata {
                    return Some(ResponseError::OffsetMetadataTooLarge);
                }
                records.push(GroupRecord::Offset {
                    group: commit.group_id.clone(),
                    topic,
                    partition,
                    value: Some(CommittedOffset {
                        offset,
                        leader_epoch,
                        metadata,
                        commit_ms: now_ms,
                    }),
                });
                None
            })
            .collect();
        (errors, records)
    }

    /// TxnOffsetCommit: the error of each offset (None: accepted), in order, and the
    /// records of the accepted ones, to be appended as one transactional batch of the
    /// producer. As Kafka's: only a member id that is given must be a member (its
    /// static instance not fenced), only a generation that is given (>= 0) must be the
    /// group's; a rebalance does not refuse it. Nothing changes until the caller
    /// persisted the records and applied them with [`Self::replay_pending_txn_offset`].
    pub fn txn_commit_offsets(
        &self,
        commit: &TxnOffsetCommitRequest,
        now_ms: i64,
    ) -> (Vec<Option<ResponseError>>, Vec<GroupRecord>) {
        let n = commit.offsets.len();
        let refused = self.check_txn_commit(commit);
        if let Some(error) = refused {
            return (vec![Some(error); n], Vec::new());
        }
        let max_metadata = self.config.max_offset_metadata_bytes;
        let mut records = Vec::new();
        let errors = commit
            .offsets
            .iter()
            .map(|(topic, partition, offset, leader_epoch, metadata)| {
                if metadata.len() > max_metadata {
                    return Some(ResponseError::OffsetMetadataTooLarge);
                }
                records.push(GroupRecord::Offset {
                    group: commit.group_id.clone(),
                    topic: topic.clone(),
                    partition: *partition,
                    value: Some(CommittedOffset {
                        offset: *offset,
                        leader_epoch: *leader_epoch,
                        metadata: metadata.clone(),
                        commit_ms: now_ms,
                    }),
                });
                None
            })
            .collect();
        (errors, records)
    }

    /// Why a TxnOffsetCommit is refused as a whole, if it is.
    fn check_txn_commit(&self, commit: &TxnOffsetCommitRequest) -> Option<ResponseError> {
        if commit.group_id.is_empty() {
            return Some(ResponseError::InvalidGroupId);
        }
        if commit.producer_id < 0 {
            return Some(ResponseError::InvalidProducerIdMapping);
        }
        if commit.producer_epoch < 0 {
            return Some(ResponseError::InvalidProducerEpoch);
        }
        let empty;
        let group = match self.groups.get(&commit.group_id) {
            Some(group) => group,
            None => {
                empty = Group::new(&commit.group_id, 0);
                &empty
            }
        };
        if let Some(instance) = &commit.group_instance_id {
            if group
                .static_members
                .get(instance)
                .is_some_and(|current| *current != commit.member_id)
            {
                return Some(ResponseError::FencedInstanceId);
            }
        }
        if !commit.member_id.is_empty() && !group.members.contains_key(&commit.member_id) {
            return Some(ResponseError::UnknownMemberId);
        }
        if commit.generation_id >= 0 && commit.generation_id != group.generation_id {
            return Some(ResponseError::IllegalGeneration);
        }
        let pending: usize = group.pending_txn_offsets.values().map(|p| p.len()).sum();
        if pending.saturating_add(commit.offsets.len()) > PENDING_TXN_OFFSETS_PER_GROUP_MAX {
            return Some(ResponseError::CoordinatorNotAvailable);
        }
        None
    }

    /// Applies an offset record of `producer_id`'s open transaction (durable now, or
    /// read back at a load): pending, invisible to OffsetFetch until
    /// [`Self::complete_txn`]. A later pending offset of the same producer and
    /// partition replaces an earlier one.
    pub fn replay_pending_txn_offset(
        &mut self,
        producer_id: i64,
        record: &GroupRecord,
        now_ms: i64,
    ) {
        assert!(producer_id >= 0, "a transaction has a producer id");
        match record {
            GroupRecord::Offset {
                group,
                topic,
                partition,
                value: Some(committed),
            } => {
                let group = self
                    .groups
                    .entry(group.clone())
                    .or_insert_with_key(|id| Group::new(id, now_ms));
                group
                    .pending_txn_offsets
                    .entry(producer_id)
                    .or_default()
                    .insert((topic.clone(), *partition), committed.clone());
            }
            // Never written in a transaction by this coordinator (another program's):
            // applied as if outside one.
            other => self.replay(other, now_ms),
        }
    }

    /// A COMMIT (`commit`) or ABORT marker of `producer_id` in this partition: its
    /// pending offsets become the committed ones (commit) or are dropped (abort), in
    /// every group.
    pub fn complete_txn(&mut self, producer_id: i64, commit: bool) {
        for group in self.groups.values_mut() {
            let Some(pending) = group.pending_txn_offsets.remove(&producer_id) else {
                continue;
            };
            assert!(!pending.is_empty(), "no empty pending set is kept");
            if commit {
                group.offsets.extend(pending);
            }
            assert!(!group.pending_txn_offsets.contains_key(&producer_id));
        }
    }

    /// Applies what a load read from the partition, in log order: records (pending
    /// when written in a transaction) and transaction markers.
    pub fn replay_entry(&mut self, entry: &LogEntry, now_ms: i64) {
        match entry {
            LogEntry::Record {
                producer_id: None,
                record,
            } => self.replay(record, now_ms),
            LogEntry::Record {
                producer_id: Some(producer_id),
                record,
            } => self.replay_pending_txn_offset(*producer_id, record, now_ms),
            LogEntry::Marker {
                producer_id,
                commit,
            } => self.complete_txn(*producer_id, *commit),
        }
    }

    /// The partitions of `group_id` with offsets pending in an open transaction
    /// (OffsetFetch with `require_stable` answers UNSTABLE_OFFSET_COMMIT for them).
    pub fn pending_txn_partitions(&self, group_id: &str) -> BTreeSet<(String, i32)> {
        self.groups
            .get(group_id)
            .map(|g| {
                g.pending_txn_offsets
                    .values()
                    .flat_map(|p| p.keys().cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Applies a record of `__consumer_offsets`: one this coordinator had persisted (a
    /// commit), or, loading a partition whose leadership it took over, every record of
    /// the partition in order. A group record brings the generation back as it was
    /// persisted: with members, it is Stable and their sessions start at `now_ms`.
    pub fn replay(&mut self, record: &GroupRecord, now_ms: i64) {
        match record {
            GroupRecord::Offset {
                group,
                topic,
                partition,
                value,
            } => {
                let key = (topic.clone(), *partition);
                match value {
                    Some(committed) => {
                        let group = self
                            .groups
                            .entry(group.clone())
                            .or_insert_with_key(|id| Group::new(id, now_ms));
                        // As Kafka: of a transactional and a plain commit of one
                        // partition, the one later in the log wins. This one is later
                        // than every pending one, so none of them can show any more.
                        for pending in group.pending_txn_offsets.values_mut() {
                            pending.remove(&key);
                        }
                        group.pending_txn_offsets.retain(|_, p| !p.is_empty());
                        group.offsets.insert(key, committed.clone());
                    }
                    None => {
                        if let Some(group) = self.groups.get_mut(group) {
                            group.offsets.remove(&key);
                        }
                    }
                }
            }
            GroupRecord::Group { group, value: None } => {
                self.groups.remove(group);
            }
            GroupRecord::Group {
                group: group_id,
                value: Some(value),
            } => {
                let group = self
                    .groups
                    .entry(group_id.clone())
                    .or_insert_with_key(|id| Group::new(id, now_ms));
                let offsets = std::mem::take(&mut group.offsets);
                let pending_txn_offsets = std::mem::take(&mut group.pending_txn_offsets);
                *group = Group::new(group_id, now_ms);
                group.offsets = offsets;
                group.pending_txn_offsets = pending_txn_offsets;
                // Generations are never negative (-1 means "outside any generation").
                group.generation_id = value.generation_id.max(0);
                for m in &value.members {
                    let protocol = value.protocol_name.clone().unwrap_or_default();
                    group.members.insert(
                        m.member_id.clone(),
                        Member {
                            group_instance_id: m.group_instance_id.clone(),
                            client_id: m.client_id.clone(),
                            client_host: m.client_host.clone(),
                            session_timeout_ms: m.session_timeout_ms,
                            rebalance_timeout_ms: m.rebalance_timeout_ms,
                            protocols: vec![(protocol, m.subscription.clone())],
                            assignment: m.assignment.clone(),
                            last_heartbeat_ms: now_ms,
                            awaiting_join: None,
                            awaiting_sync: None,
                        },
                    );
                }
                // From the members as they end up: a record naming one member twice
                // (only a damaged or forged one does) must not leave an instance id
                // pointing at a member that is not there (found by the `group_record`
                // fuzz target).
                for (id, member) in &group.members {
                    if let Some(instance) = &member.group_instance_id {
                        group.static_members.insert(instance.clone(), id.clone());
                    }
                }
                if !value.protocol_type.is_empty() {
                    group.protocol_type = Some(value.protocol_type.clone());
                }
                if !group.members.is_empty() {
                    group.state = GroupState::Stable;
                    group.protocol_name = value.protocol_name.clone();
                    group.leader = value
                        .leader
                        .clone()
                        .filter(|l| group.members.contains_key(l));
                    if group.leader.is_none() {
                        group.leader = group.members.keys().next().cloned();
                    }
                }
                group.check_invariants();
            }
        }
    }

    /// OffsetFetch: the committed offset of each (topic, partition) asked, or of every
    /// partition the group has one for when `partitions` is None.
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        partitions: Option<&[(String, i32)]>,
    ) -> Vec<((String, i32), Option<CommittedOffset>)> {
        let offsets = self.groups.get(group_id).map(|g| &g.offsets);
        match partitions {
            Some(asked) => asked
                .iter()
                .map(|key| (key.clone(), offsets.and_then(|o| o.get(key)).cloned()))
                .collect(),
            None => offsets
                .into_iter()
                .flatten()
                .map(|(key, committed)| (key.clone(), Some(committed.clone())))
                .collect(),
        }
    }

    /// DescribeGroups.
    pub fn describe(&self, group_id: &str) -> Option<GroupDescription> {
        let group = self.groups.get(group_id)?;
        let protocol = group.protocol_name.clone().unwrap_or_default();
        Some(GroupDescription {
            group_id: group_id.to_string(),
            state: group.state,
            generation_id: group.generation_id,
            protocol_type: group.protocol_type.clone().unwrap_or_default(),
            protocol_name: protocol.clone(),
            leader: group.leader.clone().unwrap_or_default(),
            members: group
                .members
                .iter()
                .map(|(id, m)| MemberDescription {
                    member_id: id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m.metadata(&protocol),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        })
    }

    /// ListGroups: (group id, protocol type, state) of every group.
    pub fn list(&self) -> Vec<(String, String, GroupState)> {
        self.groups
            .iter()
            .map(|(id, g)| {
                (
                    id.clone(),
                    g.protocol_type.clone().unwrap_or_default(),
                    g.state,
                )
            })
            .collect()
    }
}
