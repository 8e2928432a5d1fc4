//! The consumer group workload: the members of one group consume the scenario's topic
//! through the classic group protocol (FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//! OffsetCommit, OffsetFetch, LeaveGroup), spoken by the project's client, while every
//! fault runs. Each member is an eager consumer: it gives up all its partitions before it
//! rejoins, resumes each partition it is assigned from the group's committed offset, and
//! commits only offsets it consumed up to.
//!
//! Invariants:
//! - `one-owner-per-generation`: no two members are assigned one partition in one
//!   generation (what SyncGroup answered them).
//! - `committed-offsets-monotonic`: an OffsetFetch answer is never below an offset whose
//!   commit was acknowledged, nor below an earlier OffsetFetch answer, before it was
//!   asked (real-time order).
//! - `group-consumed-all`: after healing, the group consumes every record of the final
//!   logs at least once (liveness, bounded).
//! Reads are also checked like every other consumer's (`no-invented-records`,
//! `consistent-reads`).
//!
//! A member whose commit failed or went unanswered does not commit again in that
//! membership: it goes silent past its session timeout and joins again under a new
//! member id, so a commit still travelling can only be refused (unknown member), never
//! applied after a later one.

use super::{
    brokers_from_random, connect, find_leader, kafka_addr, record_read, violation, Shared,
    OP_TIMEOUT, TOPIC,
};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use madsim::rand::{thread_rng, Rng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use strand::client::Client;

pub(super) const GROUP: &str = "sim-group";
const SESSION_TIMEOUT_MS: i32 = 6_000;
const REBALANCE_TIMEOUT_MS: i32 = 10_000;
const HEARTBEAT_EVERY_MS: u64 = 500;
const COMMIT_EVERY_MS: u64 = 700;
/// How long a JoinGroup or SyncGroup may wait (the rebalance timeout, and some).
const REBALANCE_WAIT: Duration = Duration::from_millis(REBALANCE_TIMEOUT_MS as u64 + 5_000);
/// How long an OffsetCommit may take (the broker gives up on its write after 5 s).
const COMMIT_WAIT: Duration = Duration::from_secs(8);

/// What the group's members did and saw.
#[derive(Default)]
pub(super) struct GroupHistory {
    /// Generation -> partition -> the member SyncGroup assigned it to.
    owners: BTreeMap<i32, BTreeMap<i32, String>>,
    /// Every value a member consumed.
    pub(super) consumed: BTreeSet<String>,
    /// A logical clock ordering requests and answers in real time.
    clock: u64,
    /// Per partition: (clock when the answer arrived, offset) of acknowledged commits and
    /// of OffsetFetch answers.
    acked: BTreeMap<i32, Vec<(u64, i64)>>,
    fetched: BTreeMap<i32, Vec<(u64, i64)>>,
    /// Generations a member was assigned in (for the trace).
    pub(super) syncs: u64,
}

impl GroupHistory {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }
}

fn s(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

fn error_of(code: i16) -> Option<ResponseError> {
    ResponseError::try_from_code(code)
}

/// One member's state.
struct Member {
    name: String,
    member_id: String,
    /// -1: not in a generation (join first).
    generation: i32,
    coordinator: Option<(u64, Client)>,
    /// Owned partitions and the next offset to consume in each.
    positions: BTreeMap<i32, i64>,
    /// What was last committed (acknowledged) per partition.
    committed: BTreeMap<i32, i64>,
    /// Partition leaders' connections.
    leaders: BTreeMap<i32, (u64, Client)>,
    last_heartbeat_ms: u64,
    last_commit_ms: u64,
}

impl Member {
    /// Leaves its generation (eager: its partitions go with it).
    fn drop_generation(&mut self) {
        self.generation = -1;
        self.positions.clear();
        self.committed.clear();
    }

    /// Gone silent: a new member id after the session expired (see the module comment).
    async fn go_silent(&mut self, shared: &Shared, why: &str) {
        shared.event(format!(
            "group member {} goes silent after {why}",
            self.name
        ));
        self.drop_generation();
        self.member_id.clear();
        self.coordinator = None;
        tokio::time::sleep(Duration::from_millis(SESSION_TIMEOUT_MS as u64 + 1_000)).await;
    }
}

/// Asks brokers in turn for the group's coordinator and connects to it.
async fn find_coordinator(shared: &Shared, rng: &mut impl Rng) -> Option<(u64, Client)> {
    for id in brokers_from_random(shared, rng) {
        let Some(mut client) = connect(kafka_addr(id)).await else {
            continue;
        };
        let request = FindCoordinatorRequest::default()
            .with_key(s(GROUP))
            .with_key_type(0);
        let Ok(Ok(response)) = tokio::time::timeout(OP_TIMEOUT, client.send(&request, 3)).await
        else {
            continue;
        };
        if response.error_code != 0 || response.node_id.0 <= 0 {
            shared.event(format!(
                "FindCoordinator at broker {id}: {:?} {:?}",
                error_of(response.error_code),
                response.error_message
            ));
            continue;
        }
        let coordinator = response.node_id.0 as u64;
        let connected = connect(kafka_addr(coordinator)).await;
        if connected.is_none() {
            shared.event(format!(
                "FindCoordinator at broker {id}: broker {coordinator}, which does not answer"
            ));
        }
        return connected.map(|c| (coordinator, c));
    }
    None
}

/// The range assignment the leader computes: partitions in order, split over the
/// members in member id order.
fn range_assignment(members: &[String], partitions: i32) -> BTreeMap<String, Vec<i32>> {
    let mut sorted = members.to_vec();
    sorted.sort();
    let mut out: BTreeMap<String, Vec<i32>> =
        sorted.iter().map(|m| (m.clone(), Vec::new())).collect();
    let n = sorted.len().max(1) as i32;
    for p in 0..partitions {
        let per = partitions / n;
        let extra = partitions % n;
        // The first `extra` members get one more.
        let mut start = 0;
        for (i, m) in sorted.iter().enumerate() {
            let count = per + i32::from((i as i32) < extra);
            if p >= start && p < start + count {
                out.get_mut(m).expect("listed").push(p);
                break;
            }
            start += count;
        }
    }
    out
}

fn encode_assignment(partitions: &[i32]) -> bytes::Bytes {
    let text: Vec<String> = partitions.iter().map(|p| p.to_string()).collect();
    bytes::Bytes::from(text.join(","))
}

fn decode_assignment(bytes: &[u8]) -> Option<Vec<i32>> {
    let text = std::str::from_utf8(bytes).ok()?;
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split(',').map(|p| p.parse().ok()).collect()
}

/// JoinGroup then SyncGroup; on success the member owns its partitions from the
/// committed offsets. Returns false when it should back off.
async fn join(shared: &Shared, member: &mut Member) -> bool {
    let Some((coordinator, client)) = member.coordinator.as_mut() else {
        return false;
    };
    let coordinator = *coordinator;
    let request = JoinGroupRequest::default()
        .with_group_id(s(GROUP).into())
        .with_session_timeout_ms(SESSION_TIMEOUT_MS)
        .with_rebalance_timeout_ms(REBALANCE_TIMEOUT_MS)
        .with_member_id(s(&member.member_id))
        .with_protocol_type(s("sim"))
        .with_protocols(vec![JoinGroupRequestProtocol::default()
            .with_name(s("range"))
            .with_metadata(bytes::Bytes::from(member.name.clone()))]);
    // A first join is answered at once (MEMBER_ID_REQUIRED); a broker that accepts
    // connections while it starts answers nothing for a while.
    let wait = if member.member_id.is_empty() {
        OP_TIMEOUT
    } else {
        REBALANCE_WAIT
    };
    let joined = match tokio::time::timeout(wait, client.send(&request, 5)).await {
        Ok(Ok(r)) => r,
        _ => {
            shared.event(format!(
                "group member {} got no JoinGroup answer from broker {coordinator}",
                member.name
            ));
            member.coordinator = None;
            return false;
        }
    };
    if joined.error_code != 0 && joined.error_code != ResponseError::MemberIdRequired.code() {
        shared.event(format!(
            "group member {} JoinGroup at broker {coordinator}: {:?}",
            member.name,
            error_of(joined.error_code)
        ));
    }
    match error_of(joined.error_code) {
        None => {}
        Some(ResponseError::MemberIdRequired) => {
            member.member_id = joined.member_id.to_string();
            return true;
        }
        Some(ResponseError::UnknownMemberId) => {
            member.member_id.clear();
            return false;
        }
        Some(e) => {
            if matches!(
                e,
                ResponseError::NotCoordinator | ResponseError::CoordinatorNotAvailable
            ) {
                member.coordinator = None;
            }
            return false;
        }
    }
    member.member_id = joined.member_id.to_string();
    let generation = joined.generation_id;
    let assignments = if joined.leader == joined.member_id {
        let members: Vec<String> = joined
            .members
            .iter()
            .map(|m| m.member_id.to_string())
            .collect();
        range_assignment(&members, shared.settings.partitions)
            .into_iter()
            .map(|(m, partitions)| {
                SyncGroupRequestAssignment::default()
                    .with_member_id(s(&m))
                    .with_assignment(encode_assignment(&partitions))
            })
            .collect()
    } else {
        Vec::new()
    };
    let request = SyncGroupRequest::default()
        .with_group_id(s(GROUP).into())
        .with_generation_id(generation)
        .with_member_id(s(&member.member_id))
        .with_assignments(assignments);
    let Some((_, client)) = member.coordinator.as_mut() else {
        return false;
    };
    let synced = match tokio::time::timeout(REBALANCE_WAIT, client.send(&request, 3)).await {
        Ok(Ok(r)) => r,
        _ => {
            shared.event(format!(
                "group member {} got no SyncGroup answer from broker {coordinator}",
                member.name
            ));
            member.coordinator = None;
            return false;
        }
    };
    if let Some(e) = error_of(synced.error_code) {
        shared.event(format!(
            "group member {} SyncGroup of generation {generation} at broker {coordinator}: {e:?}",
            member.name
        ));
        if e == ResponseError::UnknownMemberId {
            member.member_id.clear();
        }
        if matches!(
            e,
            ResponseError::NotCoordinator | ResponseError::CoordinatorNotAvailable
        ) {
            member.coordinator = None;
        }
        return false;
    }
    let Some(partitions) = decode_assignment(&synced.assignment) else {
        shared.report(violation(
            "one-owner-per-generation",
            format!(
                "{}: undecodable assignment {:?}",
                member.name, synced.assignment
            ),
        ));
        return false;
    };
    {
        let mut history = shared.group.lock().unwrap();
        history.syncs += 1;
        let owners = history.owners.entry(generation).or_default();
        for p in &partitions {
            let owner = owners.entry(*p).or_insert_with(|| member.member_id.clone());
            if *owner != member.member_id {
                let detail = format!(
                    "generation {generation}: partition {p} assigned to {owner} and to {} ({})",
                    member.member_id, member.name
                );
                drop(history);
                shared.report(violation("one-owner-per-generation", detail));
                return false;
            }
        }
    }
    shared.event(format!(
        "group member {} ({}) in generation {generation} from broker {coordinator}: partitions {partitions:?}",
        member.name, member.member_id
    ));
    match fetch_offsets(shared, member, &partitions).await {
        Some(positions) => {
            member.generation = generation;
            member.committed = positions.clone();
            member.positions = positions;
            let now = shared_now();
            member.last_heartbeat_ms = now;
            member.last_commit_ms = now;
            true
        }
        None => {
            member.coordinator = None;
            false
        }
    }
}

fn shared_now() -> u64 {
    Shared::now_ms()
}

/// The group's committed offsets of `partitions` (0 where none), checked against what
/// was acknowledged or answered before the request went out.
async fn fetch_offsets(
    shared: &Shared,
    member: &mut Member,
    partitions: &[i32],
) -> Option<BTreeMap<i32, i64>> {
    let (_, client) = member.coordinator.as_mut()?;
    let request = OffsetFetchRequest::default()
        .with_group_id(s(GROUP).into())
        .with_topics(Some(vec![OffsetFetchRequestTopic::default()
            .with_name(s(TOPIC).into())
            .with_partition_indexes(partitions.to_vec())]));
    let asked_at = shared.group.lock().unwrap().tick();
    let response = match tokio::time::timeout(OP_TIMEOUT, client.send(&request, 5)).await {
        Ok(Ok(r)) if r.error_code == 0 => r,
        _ => return None,
    };
    let mut history = shared.group.lock().unwrap();
    let answered_at = history.tick();
    let mut positions = BTreeMap::new();
    for p in response.topics.iter().flat_map(|t| t.partitions.iter()) {
        if p.error_code != 0 {
            return None;
        }
        let offset = p.committed_offset;
        let floor = history
            .acked
            .get(&p.partition_index)
            .into_iter()
            .chain(history.fetched.get(&p.partition_index))
            .flatten()
            .filter(|(at, _)| *at < asked_at)
            .map(|(_, o)| *o)
            .max();
        if let Some(floor) = floor.filter(|f| offset < *f) {
            let detail = format!(
                "partition {}: OffsetFetch answered {offset} after {floor} was committed or answered",
                p.partition_index
            );
            drop(history);
            shared.report(violation("committed-offsets-monotonic", detail));
            return None;
        }
        history
            .fetched
            .entry(p.partition_index)
            .or_default()
            .push((answered_at, offset));
        positions.insert(p.partition_index, offset.max(0));
    }
    if positions.len() != partitions.len() {
        return None;
    }
    Some(positions)
}

/// Heartbeat; false when the member must rejoin.
async fn heartbeat(shared: &Shared, member: &mut Member) -> bool {
    let Some((_, client)) = member.coordinator.as_mut() else {
        return false;
    };
    let request = HeartbeatRequest::default()
        .with_group_id(s(GROUP).into())
        .with_generation_id(member.generation)
        .with_member_id(s(&member.member_id));
    let response = match tokio::time::timeout(OP_TIMEOUT, client.send(&request, 3)).await {
        Ok(Ok(r)) => r,
        _ => {
            member.coordinator = None;
            return true; // try again on another connection
        }
    };
    member.last_heartbeat_ms = shared_now();
    match error_of(response.error_code) {
        None => true,
        Some(ResponseError::RebalanceInProgress) => {
            // Eager: commit what was consumed, then give everything up and rejoin.
            if commit(shared, member).await {
                member.drop_generation();
            }
            false
        }
        Some(ResponseError::UnknownMemberId) => {
            member.member_id.clear();
            member.drop_generation();
            false
        }
        Some(ResponseError::NotCoordinator | ResponseError::CoordinatorNotAvailable) => {
            member.coordinator = None;
            true
        }
        Some(_) => {
            member.drop_generation();
            false
        }
    }
}

/// Commits the positions that moved; false when the commit failed or went unanswered
/// (the member then goes silent, see the module comment).
async fn commit(shared: &Shared, member: &mut Member) -> bool {
    let moved: Vec<(i32, i64)> = member
        .positions
        .iter()
        .filter(|(p, o)| member.committed.get(p) != Some(o))
        .map(|(p, o)| (*p, *o))
        .collect();
    member.last_commit_ms = shared_now();
    if moved.is_empty() {
        return true;
    }
    let Some((coordinator, client)) = member.coordinator.as_mut() else {
        member
            .go_silent(shared, "no coordinator to commit to")
            .await;
        return false;
    };
    let coordinator = *coordinator;
    let request = OffsetCommitRequest::default()
        .with_group_id(s(GROUP).into())
        .with_generation_id_or_member_epoch(member.generation)
        .with_member_id(s(&member.member_id))
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(s(TOPIC).into())
            .with_partitions(
                moved
                    .iter()
                    .map(|(p, o)| {
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(*p)
                            .with_committed_offset(*o)
                    })
                    .collect(),
            )]);
    let response = match tokio::time::timeout(COMMIT_WAIT, client.send(&request, 7)).await {
        Ok(Ok(r)) => r,
        _ => {
            member.go_silent(shared, "an unanswered commit").await;
            return false;
        }
    };
    let results: Vec<(i32, i16)> = response
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .map(|p| (p.partition_index, p.error_code))
        .collect();
    let mut failed = None;
    {
        let mut history = shared.group.lock().unwrap();
        let at = history.tick();
        for (partition, code) in results {
            if code == 0 {
                let offset = member.positions[&partition];
                history
                    .acked
                    .entry(partition)
                    .or_default()
                    .push((at, offset));
                member.committed.insert(partition, offset);
            } else {
                failed = error_of(code);
            }
        }
    }
    match failed {
        None => {
            shared.event(format!(
                "group member {} committed {moved:?} at broker {coordinator}",
                member.name
            ));
            true
        }
        Some(e) => {
            member
                .go_silent(shared, &format!("a refused commit ({e:?})"))
                .await;
            false
        }
    }
}

/// Fetches once from each owned partition's leader.
async fn consume(shared: &Shared, member: &mut Member, rng: &mut impl Rng) {
    let owned: Vec<(i32, i64)> = member.positions.iter().map(|(p, o)| (*p, *o)).collect();
    for (partition, position) in owned {
        if !member.leaders.contains_key(&partition) {
            let Some((leader, _)) = find_leader(shared, partition, rng).await else {
                continue;
            };
            let Some(client) = connect(kafka_addr(leader)).await else {
                continue;
            };
            member.leaders.insert(partition, (leader, client));
        }
        let (_, client) = member.leaders.get_mut(&partition).expect("inserted above");
        let fetched = tokio::time::timeout(
            OP_TIMEOUT,
            client.fetch(
                TOPIC,
                partition,
                position,
                50,
                shared.settings.fetch_max_bytes,
            ),
        )
        .await;
        let fetched = match fetched {
            Ok(Ok(f)) if f.error.is_none() => f,
            _ => {
                member.leaders.remove(&partition);
                continue;
            }
        };
        for record in fetched.records.iter().filter(|r| r.offset >= position) {
            let value = record
                .value
                .as_ref()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            if record_read(shared, partition, record.offset, &value) {
                shared.group.lock().unwrap().consumed.insert(value);
            }
        }
        if let Some(batch) = fetched.batches.last() {
            let next = position.max(batch.next_offset);
            member.positions.insert(partition, next);
        }
    }
}

/// One member of the group, until the group workload stops.
pub(super) async fn member_loop(shared: Arc<Shared>, index: usize) {
    let mut rng = thread_rng();
    let mut member = Member {
        name: format!("member-{index}"),
        member_id: String::new(),
        generation: -1,
        coordinator: None,
        positions: BTreeMap::new(),
        committed: BTreeMap::new(),
        leaders: BTreeMap::new(),
        last_heartbeat_ms: 0,
        last_commit_ms: 0,
    };
    while !shared.stop_group.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(20..=100))).await;
        if member.coordinator.is_none() {
            member.coordinator = find_coordinator(&shared, &mut rng).await;
            if member.coordinator.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        if member.generation < 0 {
            if !join(&shared, &mut member).await {
                tokio::time::sleep(Duration::from_millis(rng.gen_range(100..=400))).await;
            }
            continue;
        }
        let now = shared_now();
        if now >= member.last_heartbeat_ms + HEARTBEAT_EVERY_MS
            && !heartbeat(&shared, &mut member).await
        {
            continue;
        }
        consume(&shared, &mut member, &mut rng).await;
        if shared_now() >= member.last_commit_ms + COMMIT_EVERY_MS {
            commit(&shared, &mut member).await;
        }
        // Now and then a member leaves for a while (LeaveGroup), to make the group
        // rebalance; only while the load runs, so that the group settles after healing.
        if !shared.stop_load.load(Ordering::Relaxed) && rng.gen_bool(0.002) {
            if commit(&shared, &mut member).await {
                if let Some((_, client)) = member.coordinator.as_mut() {
                    let request = LeaveGroupRequest::default()
                        .with_group_id(s(GROUP).into())
                        .with_member_id(s(&member.member_id));
                    let _ = tokio::time::timeout(OP_TIMEOUT, client.send(&request, 2)).await;
                }
                shared.event(format!("group member {} leaves for a while", member.name));
                member.drop_generation();
                member.member_id.clear();
                tokio::time::sleep(Duration::from_millis(rng.gen_range(500..=3_000))).await;
            }
        }
    }
}

/// After healing: has the group consumed every record of the final logs?
pub(super) fn missing_from_group(shared: &Shared, logs: &super::Logs) -> Option<String> {
    let history = shared.group.lock().unwrap();
    for (partition, log) in logs {
        for batch in log.values() {
            let Ok(records) = strand::client::decode_records(batch) else {
                continue; // reported by the history check
            };
            for record in records {
                let value = record
                    .value
                    .map(|v| String::from_utf8_lossy(&v).into_owned())
                    .unwrap_or_default();
                if !history.consumed.contains(&value) {
                    return Some(format!(
                        "p{partition} offset {} ({value:?}) was never consumed by the group",
                        record.offset
                    ));
                }
            }
        }
    }
    None
}
