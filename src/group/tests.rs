//! The group coordinator driven as clients drive it: members join, sync, heartbeat,
//! leave, stop heartbeating and come back, with the clock moved by hand.

use super::coordinator::*;
use super::records::{GroupRecord, LogEntry};
use bytes::Bytes;
use kafka_protocol::ResponseError;
use std::collections::BTreeMap;

const SESSION_MS: i32 = 10_000;
const REBALANCE_MS: i32 = 30_000;
const GROUP: &str = "g";

struct Harness {
    coordinator: GroupCoordinator,
    now_ms: i64,
    next_request: RequestId,
    joins: BTreeMap<RequestId, JoinResponse>,
    syncs: BTreeMap<RequestId, SyncResponse>,
    /// What the coordinator had persisted, in order (its `__consumer_offsets` log).
    log: Vec<GroupRecord>,
}

fn protocols(names: &[&str]) -> Vec<(String, Bytes)> {
    names
        .iter()
        .map(|n| (n.to_string(), Bytes::from(format!("meta-{n}"))))
        .collect()
}

impl Harness {
    fn new() -> Harness {
        Harness {
            coordinator: GroupCoordinator::new(CoordinatorConfig::default(), 7),
            now_ms: 1_000,
            next_request: 0,
            joins: BTreeMap::new(),
            syncs: BTreeMap::new(),
            log: Vec::new(),
        }
    }

    /// OffsetCommit as the broker does it: the records persisted, then applied.
    fn commit(&mut self, commit: OffsetCommitRequest) -> Vec<Option<ResponseError>> {
        let (errors, records) = self.coordinator.commit_offsets(commit, self.now_ms);
        for record in records {
            // Through the stored encoding, as a reload reads it.
            let (key, value) = record.encode();
            let decoded = GroupRecord::decode(&key, value.as_deref()).unwrap();
            assert_eq!(decoded, record);
            self.coordinator.replay(&decoded, self.now_ms);
            self.log.push(decoded);
        }
        errors
    }

    /// A new coordinator (the partition's next leader) loading the log.
    fn fail_over(&mut self) {
        self.coordinator = GroupCoordinator::new(CoordinatorConfig::default(), 8);
        for record in &self.log {
            self.coordinator.replay(record, self.now_ms);
        }
    }

    fn take(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Join(id, answer) => assert!(self.joins.insert(id, answer).is_none()),
                Effect::Sync(id, answer) => assert!(self.syncs.insert(id, answer).is_none()),
                Effect::Persist(record) => {
                    let (key, value) = record.encode();
                    let decoded = GroupRecord::decode(&key, value.as_deref()).unwrap();
                    assert_eq!(decoded, record);
                    self.log.push(decoded);
                }
            }
        }
    }

    fn join_with(&mut self, member_id: &str, instance: Option<&str>, names: &[&str]) -> RequestId {
        self.next_request += 1;
        let request = self.next_request;
        let join = JoinRequest {
            group_id: GROUP.into(),
            member_id: member_id.into(),
            group_instance_id: instance.map(String::from),
            client_id: "client".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: SESSION_MS,
            rebalance_timeout_ms: REBALANCE_MS,
            protocol_type: "consumer".into(),
            protocols: protocols(names),
            require_known_member_id: true,
        };
        let (answer, effects) = self.coordinator.join(request, join, self.now_ms);
        self.take(effects);
        if let Some(answer) = answer {
            assert!(self.joins.insert(request, answer).is_none());
        }
        request
    }

    /// A new dynamic member, through KIP-394's two steps; returns its member id and
    /// the request of its second JoinGroup.
    fn new_member(&mut self) -> (String, RequestId) {
        let first = self.join_with("", None, &["range"]);
        let answer = self.joins.remove(&first).expect("answered at once");
        assert_eq!(answer.error, Some(ResponseError::MemberIdRequired));
        assert!(answer.member_id.starts_with("client-"));
        let second = self.join_with(&answer.member_id, None, &["range"]);
        (answer.member_id, second)
    }

    fn sync(
        &mut self,
        member_id: &str,
        generation: i32,
        assignments: &[(&str, &str)],
    ) -> RequestId {
        self.next_request += 1;
        let request = self.next_request;
        let sync = SyncRequest {
            group_id: GROUP.into(),
            member_id: member_id.into(),
            generation_id: generation,
            group_instance_id: None,
            protocol_type: Some("consumer".into()),
            protocol_name: None,
            assignments: assignments
                .iter()
                .map(|(m, a)| (m.to_string(), Bytes::from(a.to_string())))
                .collect(),
        };
        let (answer, effects) = self.coordinator.sync(request, sync, self.now_ms);
        self.take(effects);
        if let Some(answer) = answer {
            assert!(self.syncs.insert(request, answer).is_none());
        }
        request
    }

    fn heartbeat(&mut self, member_id: &str, generation: i32) -> Option<ResponseError> {
        self.coordinator
            .heartbeat(GROUP, member_id, generation, None, self.now_ms)
    }

    fn advance(&mut self, ms: i64) {
        self.now_ms += ms;
        let effects = self.coordinator.tick(self.now_ms);
        self.take(effects);
    }

    fn state(&self) -> GroupState {
        self.coordinator.describe(GROUP).unwrap().state
    }

    /// Every member's JoinGroup answer, then the leader's assignment of `member-i`
    /// values to each: returns the generation.
    fn form_generation(&mut self, requests: &[(String, RequestId)]) -> i32 {
        let answers: Vec<JoinResponse> = requests
            .iter()
            .map(|(_, r)| self.joins.remove(r).expect("join answered"))
            .collect();
        let generation = answers[0].generation_id;
        assert!(answers
            .iter()
            .all(|a| a.error.is_none() && a.generation_id == generation));
        let leader = answers[0].leader.clone();
        let leader_answer = answers.iter().find(|a| a.member_id == leader).unwrap();
        assert_eq!(
            leader_answer.members.len(),
            requests.len(),
            "the leader sees every member"
        );
        assert!(answers
            .iter()
            .filter(|a| a.member_id != leader)
            .all(|a| a.members.is_empty()));
        let assignment: Vec<(String, String)> = requests
            .iter()
            .map(|(id, _)| (id.clone(), format!("assigned-{id}")))
            .collect();
        let borrowed: Vec<(&str, &str)> = assignment
            .iter()
            .map(|(m, a)| (m.as_str(), a.as_str()))
            .collect();
        // Followers sync first (their answers wait for the leader's), then the leader.
        let mut syncs = Vec::new();
        for (id, _) in requests.iter().filter(|(id, _)| *id != leader) {
            let request = self.sync(id, generation, &[]);
            assert!(
                !self.syncs.contains_key(&request),
                "answered before the leader synced"
            );
            syncs.push((id.clone(), request));
        }
        syncs.push((leader.clone(), self.sync(&leader, generation, &borrowed)));
        for (id, request) in syncs {
            let answer = self.syncs.remove(&request).expect("sync answered");
            assert_eq!(answer.error, None);
            assert_eq!(answer.assignment, Bytes::from(format!("assigned-{id}")));
        }
        assert_eq!(self.state(), GroupState::Stable);
        generation
    }
}

#[test]
fn members_starting_together_form_one_generation() {
    let mut h = Harness::new();
    let members: Vec<(String, RequestId)> = (0..3).map(|_| h.new_member()).collect();
    assert!(h.joins.is_empty(), "an empty group waits its initial delay");
    assert_eq!(h.state(), GroupState::PreparingRebalance);
    h.advance(3_000);
    let generation = h.form_generation(&members);
    assert_eq!(generation, 1);
    for (id, _) in &members {
        assert_eq!(h.heartbeat(id, generation), None);
    }
    assert_eq!(
        h.heartbeat(&members[0].0, generation - 1),
        Some(ResponseError::IllegalGeneration)
    );
    assert_eq!(
        h.heartbeat("someone", generation),
        Some(ResponseError::UnknownMemberId)
    );
}

#[test]
fn a_member_leaving_or_joining_rebalances_the_group() {
    let mut h = Harness::new();
    let members: Vec<(String, RequestId)> = (0..3).map(|_| h.new_member()).collect();
    h.advance(3_000);
    let first = h.form_generation(&members);
    // One leaves: the others learn it from their heartbeats, rejoin, and form the next
    // generation without it.
    let (results, effects) = h
        .coordinator
        .leave(GROUP, &[(members[2].0.clone(), None)], h.now_ms);
    h.take(effects);
    assert_eq!(results, vec![None]);
    assert_eq!(
        h.heartbeat(&members[0].0, first),
        Some(ResponseError::RebalanceInProgress)
    );
    let rejoined: Vec<(String, RequestId)> = members[..2]
        .iter()
        .map(|(id, _)| (id.clone(), h.join_with(id, None, &["range"])))
        .collect();
    let second = h.form_generation(&rejoined);
    assert_eq!(second, first + 1);
    assert_eq!(h.coordinator.describe(GROUP).unwrap().members.len(), 2);
    // A new member joins: everyone rejoins again, with no initial delay this time.
    let (newcomer, newcomer_join) = h.new_member();
    assert!(
        !h.joins.contains_key(&newcomer_join),
        "waits for the others"
    );
    let mut all: Vec<(String, RequestId)> = rejoined
        .iter()
        .map(|(id, _)| (id.clone(), h.join_with(id, None, &["range"])))
        .collect();
    all.push((newcomer, newcomer_join));
    assert_eq!(h.form_generation(&all), second + 1);
    // Everyone leaves: the group is empty but still a consumer group, as ListGroups
    // shows it, also on the next coordinator.
    let leaving: Vec<(String, Option<String>)> =
        all.iter().map(|(id, _)| (id.clone(), None)).collect();
    let (_, effects) = h.coordinator.leave(GROUP, &leaving, h.now_ms);
    h.take(effects);
    let listed = vec![(GROUP.to_string(), "consumer".to_string(), GroupState::Empty)];
    assert_eq!(h.coordinator.list(), listed);
    h.fail_over();
    assert_eq!(h.coordinator.list(), listed);
}

#[test]
fn a_silent_member_expires_and_one_that_does_not_rejoin_is_dropped() {
    let mut h = Harness::new();
    let members: Vec<(String, RequestId)> = (0..3).map(|_| h.new_member()).collect();
    h.advance(3_000);
    let generation = h.form_generation(&members);
    // Members 0 and 1 heartbeat; member 2 goes silent past its session timeout.
    for _ in 0..4 {
        h.advance(3_000);
        for (id, _) in &members[..2] {
            let _ = h.heartbeat(id, generation);
        }
    }
    assert_eq!(h.state(), GroupState::PreparingRebalance);
    assert_eq!(h.coordinator.describe(GROUP).unwrap().members.len(), 2);
    // Only member 0 rejoins; member 1 keeps heartbeating but never rejoins: at the
    // rebalance timeout it is dropped and member 0 forms a generation alone.
    let alone = h.join_with(&members[0].0, None, &["range"]);
    for _ in 0..10 {
        h.advance(3_000);
        let _ = h.heartbeat(&members[1].0, generation);
    }
    let next = h.form_generation(&[(members[0].0.clone(), alone)]);
    assert_eq!(next, generation + 1);
    assert_eq!(
        h.heartbeat(&members[1].0, next),
        Some(ResponseError::UnknownMemberId)
    );
}

#[test]
fn a_static_member_restarting_within_its_session_does_not_rebalance() {
    let mut h = Harness::new();
    let a = h.join_with("", Some("instance-a"), &["range"]);
    let b = h.join_with("", Some("instance-b"), &["range"]);
    h.advance(3_000);
    let ids: Vec<String> = [a, b]
        .iter()
        .map(|r| h.joins[r].member_id.clone())
        .collect();
    let generation = h.form_generation(&[(ids[0].clone(), a), (ids[1].clone(), b)]);
    // Instance b restarts: a new process, no member id, the same instance id.
    h.advance(2_000);
    let rejoin = h.join_with("", Some("instance-b"), &["range"]);
    let answer = h.joins.remove(&rejoin).expect("answered at once");
    assert_eq!(answer.error, None);
    assert_eq!(answer.generation_id, generation, "no new generation");
    assert_ne!(answer.member_id, ids[1], "a new member id");
    assert_eq!(h.state(), GroupState::Stable);
    assert_eq!(
        h.heartbeat(&ids[0], generation),
        None,
        "the others do not rebalance"
    );
    let sync = h.sync(&answer.member_id, generation, &[]);
    assert_eq!(
        h.syncs[&sync].assignment,
        Bytes::from(format!("assigned-{}", ids[1])),
        "it keeps its assignment"
    );
    // The old incarnation is fenced.
    assert_eq!(
        h.coordinator
            .heartbeat(GROUP, &ids[1], generation, Some("instance-b"), h.now_ms),
        Some(ResponseError::FencedInstanceId)
    );
}

#[test]
fn the_protocol_is_one_every_member_supports() {
    let mut h = Harness::new();
    let a = h.join_with("", Some("a"), &["range", "roundrobin"]);
    let b = h.join_with("", Some("b"), &["roundrobin", "range"]);
    let c = h.join_with("", Some("c"), &["roundrobin"]);
    h.advance(3_000);
    for r in [a, b, c] {
        assert_eq!(h.joins[&r].protocol_name.as_deref(), Some("roundrobin"));
    }
    let refused = h.join_with("", Some("d"), &["sticky"]);
    assert_eq!(
        h.joins[&refused].error,
        Some(ResponseError::InconsistentGroupProtocol)
    );
}

#[test]
fn joins_are_checked() {
    let mut h = Harness::new();
    let unknown = h.join_with("nobody", None, &["range"]);
    assert_eq!(
        h.joins[&unknown].error,
        Some(ResponseError::UnknownMemberId)
    );
    let (answer, _) = h.coordinator.join(
        99,
        JoinRequest {
            group_id: GROUP.into(),
            member_id: String::new(),
            group_instance_id: None,
            client_id: "c".into(),
            client_host: "h".into(),
            session_timeout_ms: 10,
            rebalance_timeout_ms: REBALANCE_MS,
            protocol_type: "consumer".into(),
            protocols: protocols(&["range"]),
            require_known_member_id: true,
        },
        h.now_ms,
    );
    assert_eq!(
        answer.unwrap().error,
        Some(ResponseError::InvalidSessionTimeout)
    );
    // A member id given out with MEMBER_ID_REQUIRED expires unused.
    let first = h.join_with("", None, &["range"]);
    let id = h.joins[&first].member_id.clone();
    h.advance(i64::from(SESSION_MS) + 1);
    let late = h.join_with(&id, None, &["range"]);
    assert_eq!(h.joins[&late].error, Some(ResponseError::UnknownMemberId));
}

#[test]
fn offsets_are_committed_by_the_current_generation_only() {
    let mut h = Harness::new();
    let commit = |member: &str, generation: i32, offset: i64| OffsetCommitRequest {
        group_id: GROUP.into(),
        member_id: member.into(),
        generation_id: generation,
        group_instance_id: None,
        offsets: vec![("t".into(), 0, offset, 3, "meta".into())],
    };
    // A consumer outside any generation commits to a group with no members.
    assert_eq!(h.commit(commit("", -1, 5)), vec![None]);
    let members: Vec<(String, RequestId)> = (0..2).map(|_| h.new_member()).collect();
    assert_eq!(
        h.commit(commit(&members[0].0, 0, 6)),
        vec![Some(ResponseError::RebalanceInProgress)]
    );
    h.advance(3_000);
    let generation = h.form_generation(&members);
    assert_eq!(
        h.commit(commit("", -1, 7)),
        vec![Some(ResponseError::UnknownMemberId)],
        "no commits from outside while the group has members"
    );
    assert_eq!(
        h.commit(commit(&members[0].0, generation - 1, 7)),
        vec![Some(ResponseError::IllegalGeneration)]
    );
    assert_eq!(h.commit(commit(&members[0].0, generation, 8)), vec![None]);
    // A third member joins: while the group prepares the next generation, the members
    // of this one may still commit what they consumed (eager consumers do, on revoke).
    let (_, _) = h.new_member();
    assert_eq!(h.state(), GroupState::PreparingRebalance);
    assert_eq!(h.commit(commit(&members[1].0, generation, 8)), vec![None]);
    let mut big = commit(&members[0].0, generation, 9);
    big.offsets[0].4 = "x".repeat(5000);
    assert_eq!(
        h.commit(big),
        vec![Some(ResponseError::OffsetMetadataTooLarge)]
    );
    let fetched = h
        .coordinator
        .fetch_offsets(GROUP, Some(&[("t".into(), 0), ("t".into(), 1)]));
    assert_eq!(fetched[0].1.as_ref().map(|c| c.offset), Some(8));
    assert_eq!(fetched[1].1, None);
    assert_eq!(h.coordinator.fetch_offsets(GROUP, None).len(), 1);
}

/// The coordinator's state lives in `__consumer_offsets`: the partition's next leader
/// replays the records and carries on with the same generation, members, assignments
/// and committed offsets; members keep heartbeating and committing without a rebalance.
#[test]
fn a_new_coordinator_carries_on_from_the_records() {
    let mut h = Harness::new();
    let members: Vec<(String, RequestId)> = (0..3).map(|_| h.new_member()).collect();
    h.advance(3_000);
    let generation = h.form_generation(&members);
    let commit = |member: &str, offset: i64| OffsetCommitRequest {
        group_id: GROUP.into(),
        member_id: member.into(),
        generation_id: generation,
        group_instance_id: None,
        offsets: vec![("t".into(), 2, offset, 1, String::new())],
    };
    assert_eq!(h.commit(commit(&members[1].0, 41)), vec![None]);
    assert_eq!(h.commit(commit(&members[1].0, 42)), vec![None]);
    h.fail_over();
    assert_eq!(h.state(), GroupState::Stable);
    for (id, _) in &members {
        assert_eq!(h.heartbeat(id, generation), None, "{id} lost its place");
    }
    let sync = h.sync(&members[2].0, generation, &[]);
    assert_eq!(
        h.syncs[&sync].assignment,
        Bytes::from(format!("assigned-{}", members[2].0))
    );
    let fetched = h.coordinator.fetch_offsets(GROUP, Some(&[("t".into(), 2)]));
    assert_eq!(fetched[0].1.as_ref().map(|c| c.offset), Some(42));
    assert_eq!(h.commit(commit(&members[0].0, 43)), vec![None]);
    // The group then empties: that is persisted too, and a later coordinator has an
    // empty group with its offsets.
    let everyone: Vec<(String, Option<String>)> =
        members.iter().map(|(id, _)| (id.clone(), None)).collect();
    let (left, effects) = h.coordinator.leave(GROUP, &everyone, h.now_ms);
    h.take(effects);
    assert_eq!(left, vec![None, None, None]);
    h.fail_over();
    assert_eq!(h.state(), GroupState::Empty);
    let fetched = h.coordinator.fetch_offsets(GROUP, None);
    assert_eq!(fetched.len(), 1);
    assert_eq!(fetched[0].1.as_ref().map(|c| c.offset), Some(43));
}

#[test]
fn tombstones_delete_offsets_and_groups() {
    let mut h = Harness::new();
    let commit = OffsetCommitRequest {
        group_id: GROUP.into(),
        member_id: String::new(),
        generation_id: -1,
        group_instance_id: None,
        offsets: vec![
            ("t".into(), 0, 5, -1, String::new()),
            ("t".into(), 1, 6, -1, String::new()),
        ],
    };
    assert_eq!(h.commit(commit), vec![None, None]);
    for tombstone in [
        GroupRecord::Offset {
            group: GROUP.into(),
            topic: "t".into(),
            partition: 0,
            value: None,
        },
        GroupRecord::Group {
            group: "other".into(),
            value: None,
        },
    ] {
        let (key, value) = tombstone.encode();
        assert!(value.is_none());
        assert_eq!(GroupRecord::decode(&key, None).unwrap(), tombstone);
        h.log.push(tombstone);
    }
    h.fail_over();
    let fetched = h.coordinator.fetch_offsets(GROUP, None);
    assert_eq!(fetched.len(), 1);
    assert_eq!(fetched[0].0, ("t".to_string(), 1));
    h.log.push(GroupRecord::Group {
        group: GROUP.into(),
        value: None,
    });
    h.fail_over();
    assert!(h.coordinator.fetch_offsets(GROUP, None).is_empty());
    assert!(h.coordinator.describe(GROUP).is_none());
    assert!(GroupRecord::decode(b"\xff\xff", None).is_err());
}

/// The leader never sends its assignment: when the wait for SyncGroup ends (the longest
/// rebalance or session timeout), the members that never synced (the leader) are
/// dropped, those waiting are told to rejoin, and they form the next generation.
#[test]
fn a_leader_that_never_syncs_is_dropped() {
    let mut h = Harness::new();
    let members: Vec<(String, RequestId)> = (0..2).map(|_| h.new_member()).collect();
    h.advance(3_000);
    let answers: Vec<JoinResponse> = members
        .iter()
        .map(|(_, r)| h.joins.remove(r).unwrap())
        .collect();
    let generation = answers[0].generation_id;
    let leader = answers[0].leader.clone();
    let follower = members
        .iter()
        .find(|(id, _)| *id != leader)
        .unwrap()
        .0
        .clone();
    // A lost JoinGroup answer: joining again with the same protocols gives it again.
    let again = h.join_with(&follower, None, &["range"]);
    assert_eq!(h.joins[&again].generation_id, generation);
    let waiting = h.sync(&follower, generation, &[]);
    assert!(!h.syncs.contains_key(&waiting));
    for _ in 0..10 {
        h.advance(3_000);
        if h.syncs.contains_key(&waiting) {
            break;
        }
        assert_eq!(h.heartbeat(&follower, generation), None);
    }
    assert_eq!(
        h.syncs[&waiting].error,
        Some(ResponseError::RebalanceInProgress)
    );
    assert_eq!(h.state(), GroupState::PreparingRebalance);
    let rejoin = h.join_with(&follower, None, &["range"]);
    assert_eq!(
        h.form_generation(&[(follower.clone(), rejoin)]),
        generation + 1
    );
    assert_eq!(
        h.heartbeat(&leader, generation + 1),
        Some(ResponseError::UnknownMemberId)
    );
}

/// A consumer's JoinGroup metadata: ConsumerProtocolSubscription v0 for `topics`.
fn subscription(topics: &[&str]) -> Bytes {
    use kafka_protocol::messages::ConsumerProtocolSubscription;
    use kafka_protocol::protocol::{Encodable, StrBytes};
    let message = ConsumerProtocolSubscription::default().with_topics(
        topics
            .iter()
            .map(|t| StrBytes::from_string(t.to_string()))
            .collect(),
    );
    let mut buf = bytes::BytesMut::new();
    buf.extend_from_slice(&0i16.to_be_bytes());
    message.encode(&mut buf, 0).unwrap();
    buf.freeze()
}

#[test]
fn groups_and_offsets_are_deleted_only_when_unused() {
    let mut h = Harness::new();
    // A consumer group subscribed to "t", with offsets for "t" and "old".
    h.next_request += 1;
    let (_, effects) = h.coordinator.join(
        h.next_request,
        JoinRequest {
            group_id: GROUP.into(),
            member_id: String::new(),
            group_instance_id: Some("i".into()),
            client_id: "client".into(),
            client_host: "h".into(),
            session_timeout_ms: SESSION_MS,
            rebalance_timeout_ms: REBALANCE_MS,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), subscription(&["t"]))],
            require_known_member_id: true,
        },
        h.now_ms,
    );
    h.take(effects);
    h.advance(3_000);
    let member = h.joins[&h.next_request].member_id.clone();
    let generation = h.joins[&h.next_request].generation_id;
    h.sync(&member, generation, &[(&member, "a")]);
    let commit = OffsetCommitRequest {
        group_id: GROUP.into(),
        member_id: member.clone(),
        generation_id: generation,
        group_instance_id: Some("i".into()),
        offsets: vec![
            ("t".into(), 0, 5, 1, String::new()),
            ("old".into(), 0, 9, 1, String::new()),
        ],
    };
    assert_eq!(h.commit(commit), vec![None, None]);
    assert_eq!(
        h.coordinator
            .delete_groups(&[GROUP.into(), "nothing".into()]),
        vec![
            Err(ResponseError::NonEmptyGroup),
            Err(ResponseError::GroupIdNotFound)
        ]
    );
    let (errors, records) = h
        .coordinator
        .delete_offsets(GROUP, &[("t".into(), 0), ("old".into(), 0)])
        .unwrap();
    assert_eq!(
        errors,
        vec![Some(ResponseError::GroupSubscribedToTopic), None]
    );
    for record in &records {
        h.coordinator.replay(record, h.now_ms);
    }
    let left = h.coordinator.fetch_offsets(GROUP, None);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0, ("t".to_string(), 0));
    // Once empty, the group can be deleted, offsets and all.
    let (_, effects) = h.coordinator.leave(GROUP, &[(member, None)], h.now_ms);
    h.take(effects);
    let deletion = h
        .coordinator
        .delete_groups(&[GROUP.into()])
        .remove(0)
        .unwrap();
    assert_eq!(deletion.len(), 2, "one offset tombstone, then the group's");
    for record in &deletion {
        h.coordinator.replay(record, h.now_ms);
    }
    assert!(h.coordinator.describe(GROUP).is_none());
    assert!(h.coordinator.fetch_offsets(GROUP, None).is_empty());
}

#[test]
fn an_empty_groups_offsets_expire_after_the_retention() {
    let mut h = Harness::new();
    let retention_ms = CoordinatorConfig::default().offsets_retention_ms;
    let commit = |offset: i64| OffsetCommitRequest {
        group_id: GROUP.into(),
        member_id: String::new(),
        generation_id: -1,
        group_instance_id: None,
        offsets: vec![("t".into(), 0, offset, -1, String::new())],
    };
    assert_eq!(h.commit(commit(1)), vec![None]);
    h.advance(retention_ms / 2);
    // A later commit renews the offset's retention.
    assert_eq!(h.commit(commit(2)), vec![None]);
    h.advance(retention_ms / 2 + 1);
    assert_eq!(
        h.coordinator.fetch_offsets(GROUP, None).len(),
        1,
        "expired early"
    );
    h.log.clear();
    h.advance(retention_ms / 2);
    assert!(h.coordinator.fetch_offsets(GROUP, None).is_empty());
    assert!(
        h.coordinator.describe(GROUP).is_none(),
        "the empty group is gone too"
    );
    // The expiry is persisted: a new coordinator replaying it agrees.
    assert_eq!(
        h.log.len(),
        2,
        "an offset tombstone and the group's: {:?}",
        h.log
    );
}

#[test]
fn a_commit_for_an_unknown_group_by_a_member_is_refused_and_creates_nothing() {
    let mut h = Harness::new();
    let refused = h.commit(OffsetCommitRequest {
        group_id: "unknown".into(),
        member_id: "m".into(),
        generation_id: 3,
        group_instance_id: None,
        offsets: vec![("t".into(), 0, 1, -1, String::new())],
    });
    assert_eq!(refused, vec![Some(ResponseError::IllegalGeneration)]);
    assert!(h.coordinator.list().is_empty());
}

#[test]
fn records_go_to_one_batch_and_come_back_in_order() {
    use crate::group::records::{decode_batches, encode_batch};
    use crate::log::batch::parse_whole;
    let records: Vec<GroupRecord> = (0..5)
        .map(|i| GroupRecord::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: i,
            value: (i != 3).then(|| CommittedOffset {
                offset: i64::from(i) * 10,
                leader_epoch: 1,
                metadata: String::new(),
                commit_ms: 7,
            }),
        })
        .chain([GroupRecord::Group {
            group: "g".into(),
            value: None,
        }])
        .collect();
    let batch = encode_batch(&records, 7);
    let header = parse_whole(&batch).expect("one whole, valid batch");
    assert_eq!(header.size_bytes(), batch.len(), "exactly one batch");
    assert_eq!(header.records_count, 6);
    assert_eq!(header.producer_id, -1);
    let decoded = decode_batches(&batch).unwrap();
    let expected: Vec<LogEntry> = records
        .into_iter()
        .map(|record| LogEntry::Record {
            producer_id: None,
            record,
        })
        .collect();
    assert_eq!((decoded.entries, decoded.skipped), (expected, 0));
    assert_eq!(decoded.next_offset, Some(6));
}

/// The coordinator with a byte-exact `__consumer_offsets` partition beside it: every
/// batch it writes (plain, transactional, markers) is appended with its offsets, so a
/// reload decodes what the broker would read.
struct TxnHarness {
    h: Harness,
    partition_log: bytes::BytesMut,
    next_offset: i64,
}

const PRODUCER_EPOCH: i16 = 0;

fn txn_commit_request(producer_id: i64, offset: i64) -> TxnOffsetCommitRequest {
    TxnOffsetCommitRequest {
        group_id: GROUP.into(),
        producer_id,
        producer_epoch: PRODUCER_EPOCH,
        member_id: String::new(),
        generation_id: -1,
        group_instance_id: None,
        offsets: vec![("t".into(), 0, offset, 1, "txn".into())],
    }
}

impl TxnHarness {
    fn new() -> TxnHarness {
        TxnHarness {
            h: Harness::new(),
            partition_log: bytes::BytesMut::new(),
            next_offset: 0,
        }
    }

    fn append(&mut self, batch: Bytes) {
        let mut batch = batch.to_vec();
        crate::log::batch::patch_header(&mut batch, self.next_offset, 1);
        let header = crate::log::batch::parse_whole(&batch).unwrap();
        self.next_offset = header.next_offset();
        self.partition_log.extend_from_slice(&batch);
    }

    /// TxnOffsetCommit as the broker does it: one transactional batch, then pending.
    fn txn_commit(&mut self, commit: TxnOffsetCommitRequest) -> Vec<Option<ResponseError>> {
        let now_ms = self.h.now_ms;
        let (errors, records) = self.h.coordinator.txn_commit_offsets(&commit, now_ms);
        if !records.is_empty() {
            let batch = crate::group::records::encode_txn_batch(
                &records,
                commit.producer_id,
                commit.producer_epoch,
                now_ms,
            );
            self.append(batch);
            for record in &records {
                self.h
                    .coordinator
                    .replay_pending_txn_offset(commit.producer_id, record, now_ms);
            }
        }
        errors
    }

    fn plain_commit(&mut self, offset: i64) {
        let commit = OffsetCommitRequest {
            group_id: GROUP.into(),
            member_id: String::new(),
            generation_id: -1,
            group_instance_id: None,
            offsets: vec![("t".into(), 0, offset, 1, "plain".into())],
        };
        let (errors, records) = self.h.coordinator.commit_offsets(commit, self.h.now_ms);
        assert_eq!(errors, vec![None]);
        self.append(crate::group::records::encode_batch(&records, self.h.now_ms));
        for record in &records {
            self.h.coordinator.replay(record, self.h.now_ms);
        }
    }

    /// The transaction coordinator's marker lands in the partition, then reaches the
    /// group coordinator.
    fn marker(&mut self, producer_id: i64, commit: bool) {
        use crate::log::txn_marker::{build_marker_batch, TxnMarker};
        let marker = TxnMarker {
            commit,
            coordinator_epoch: 0,
        };
        let batch = build_marker_batch(producer_id, PRODUCER_EPOCH, marker, self.h.now_ms);
        self.append(batch);
        self.h.coordinator.complete_txn(producer_id, commit);
    }

    fn committed(&self) -> Option<i64> {
        let key = [("t".to_string(), 0)];
        let fetched = self.h.coordinator.fetch_offsets(GROUP, Some(&key));
        fetched[0].1.as_ref().map(|c| c.offset)
    }

    fn unstable(&self) -> bool {
        self.h
            .coordinator
            .pending_txn_partitions(GROUP)
            .contains(&("t".to_string(), 0))
    }

    /// A new coordinator replays the partition's bytes: it must agree on what is
    /// visible and what is pending.
    fn reload_and_compare(&mut self) {
        use crate::group::records::decode_batches;
        let decoded = decode_batches(&self.partition_log.clone().freeze()).unwrap();
        assert_eq!(decoded.skipped, 0);
        assert_eq!(decoded.next_offset, Some(self.next_offset));
        let mut reloaded = GroupCoordinator::new(CoordinatorConfig::default(), 9);
        for entry in &decoded.entries {
            reloaded.replay_entry(entry, self.h.now_ms);
        }
        assert_eq!(
            reloaded.fetch_offsets(GROUP, None),
            self.h.coordinator.fetch_offsets(GROUP, None)
        );
        assert_eq!(
            reloaded.pending_txn_partitions(GROUP),
            self.h.coordinator.pending_txn_partitions(GROUP)
        );
        self.h.coordinator = reloaded;
    }
}

#[test]
fn transactional_offsets_are_pending_until_the_commit_marker() {
    let mut t = TxnHarness::new();
    t.plain_commit(3);
    assert_eq!(t.txn_commit(txn_commit_request(7, 10)), vec![None]);
    assert_eq!(t.committed(), Some(3), "pending offsets are not visible");
    assert!(t.unstable(), "require_stable sees the open transaction");
    t.reload_and_compare();
    assert_eq!(t.committed(), Some(3));
    assert!(t.unstable(), "still pending after a reload");
    t.marker(7, true);
    assert_eq!(t.committed(), Some(10));
    assert!(!t.unstable());
    t.reload_and_compare();
    assert_eq!(t.committed(), Some(10));
}

#[test]
fn an_aborted_transaction_drops_its_offsets() {
    let mut t = TxnHarness::new();
    t.plain_commit(3);
    assert_eq!(t.txn_commit(txn_commit_request(7, 10)), vec![None]);
    // Another producer's transaction on the same group is independent.
    assert_eq!(t.txn_commit(txn_commit_request(8, 20)), vec![None]);
    t.marker(7, false);
    assert_eq!(t.committed(), Some(3), "the abort drops only producer 7's");
    assert!(t.unstable(), "producer 8's transaction is still open");
    t.reload_and_compare();
    t.marker(8, false);
    assert_eq!(t.committed(), Some(3));
    assert!(!t.unstable());
    t.reload_and_compare();
    assert_eq!(t.committed(), Some(3));
    // A marker with nothing pending (its transaction had no offsets here) is harmless.
    t.marker(9, true);
    assert_eq!(t.committed(), Some(3));
    t.reload_and_compare();
}

/// As Kafka: of a transactional and a plain commit of one partition, the one written
/// later wins when the transaction commits.
#[test]
fn the_later_of_a_plain_and_a_transactional_commit_wins() {
    let mut t = TxnHarness::new();
    assert_eq!(t.txn_commit(txn_commit_request(7, 10)), vec![None]);
    t.plain_commit(5);
    assert_eq!(t.committed(), Some(5));
    t.marker(7, true);
    assert_eq!(t.committed(), Some(5), "the plain commit came later");
    t.reload_and_compare();
    assert_eq!(t.committed(), Some(5));

    t.plain_commit(6);
    assert_eq!(t.txn_commit(txn_commit_request(7, 12)), vec![None]);
    assert_eq!(t.committed(), Some(6));
    t.reload_and_compare();
    t.marker(7, true);
    assert_eq!(
        t.committed(),
        Some(12),
        "the transactional commit came later"
    );
    t.reload_and_compare();
    assert_eq!(t.committed(), Some(12));
}

#[test]
fn transactional_commits_are_checked_like_kafkas() {
    let mut t = TxnHarness::new();
    let mut bad = txn_commit_request(7, 1);
    bad.group_id = String::new();
    assert_eq!(t.txn_commit(bad), vec![Some(ResponseError::InvalidGroupId)]);
    let mut bad = txn_commit_request(-1, 1);
    bad.producer_id = -1;
    assert_eq!(
        t.txn_commit(bad),
        vec![Some(ResponseError::InvalidProducerIdMapping)]
    );
    let mut unknown = txn_commit_request(7, 1);
    unknown.member_id = "nobody".into();
    unknown.generation_id = 1;
    assert_eq!(
        t.txn_commit(unknown),
        vec![Some(ResponseError::UnknownMemberId)]
    );
    assert!(
        t.h.coordinator.list().is_empty(),
        "a refusal creates no group"
    );

    let members: Vec<(String, RequestId)> = (0..2).map(|_| t.h.new_member()).collect();
    t.h.advance(3_000);
    let generation = t.h.form_generation(&members);
    let member = |id: &str, generation: i32| TxnOffsetCommitRequest {
        member_id: id.into(),
        generation_id: generation,
        ..txn_commit_request(7, 2)
    };
    assert_eq!(
        t.txn_commit(member(&members[0].0, generation - 1)),
        vec![Some(ResponseError::IllegalGeneration)]
    );
    assert_eq!(
        t.txn_commit(member("stranger", generation)),
        vec![Some(ResponseError::UnknownMemberId)]
    );
    assert_eq!(t.txn_commit(member(&members[0].0, generation)), vec![None]);
    // v0-2 (no member fields): accepted while the group has members.
    assert_eq!(t.txn_commit(txn_commit_request(7, 3)), vec![None]);
    let mut big = member(&members[1].0, generation);
    big.offsets[0].4 = "x".repeat(5000);
    assert_eq!(
        t.txn_commit(big),
        vec![Some(ResponseError::OffsetMetadataTooLarge)]
    );
    // A rebalance in progress does not refuse it (Kafka checks only the generation).
    let _ = t.h.new_member();
    assert_eq!(t.h.state(), GroupState::PreparingRebalance);
    assert_eq!(t.txn_commit(member(&members[1].0, generation)), vec![None]);
    t.marker(7, true);
    assert_eq!(t.committed(), Some(2));
    t.reload_and_compare();
}

#[test]
fn decoding_a_damaged_partition_read_is_an_error_not_a_panic() {
    use crate::group::records::decode_batches;
    let mut t = TxnHarness::new();
    assert_eq!(t.txn_commit(txn_commit_request(7, 10)), vec![None]);
    t.marker(7, true);
    let whole = t.partition_log.clone().freeze();
    for cut in 0..whole.len() {
        let _ = decode_batches(&whole.slice(..cut));
    }
    let mut flipped = whole.to_vec();
    for i in 0..flipped.len() {
        flipped[i] ^= 0x5a;
        let _ = decode_batches(&Bytes::from(flipped.clone()));
        flipped[i] ^= 0x5a;
    }
}
