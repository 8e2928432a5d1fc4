//! The group coordinators this broker hosts, wired to the cluster: the I/O edge of
//! `crate::group`.
//!
//! - **Leadership.** A loop every Raft tick compares the `__consumer_offsets`
//!   partitions this broker leads (and in which term) with what the
//!   [`CoordinatorHost`] holds. A partition led in a new term is loaded: once the leader
//!   has committed an entry of its own term (so every earlier entry is committed too),
//!   its committed records are read and replayed; meanwhile its groups get
//!   COORDINATOR_LOAD_IN_PROGRESS. A partition no longer led is dropped (NOT_COORDINATOR);
//!   requests waiting on it are answered so.
//! - **Writes.** Each loaded partition has one writer task, fed in order. A job's
//!   records are appended with acks=all, only in the term its coordinator was loaded
//!   for ([`ClusterNode::submit_in_term`]); what follows a job (JoinGroup and SyncGroup
//!   answers, an OffsetCommit's success) is released only once it and every job before
//!   it committed, so no answer shows a generation, assignment or offset that a failover
//!   could lose. Offset commits reach the coordinator's state only once durable. A write
//!   that fails or times out fails every later job of that leadership, and the
//!   partition is loaded again from its log.
//! - **Transactions.** A TxnOffsetCommit's records are appended as one transactional
//!   batch of the producer (so the partition's producer state holds the transaction
//!   open) and, once durable, applied as pending. When a COMMIT or ABORT marker commits
//!   on a partition coordinated here ([`GroupService::marker_committed`], called by
//!   WriteTxnMarkers before it answers), the coordinator completes that producer's
//!   pending offsets in log order: the completion is queued on the partition's writer
//!   behind every job queued before it (the transaction's offset records were queued
//!   before the client could end the transaction). A marker that commits while the
//!   partition loads is kept and applied after the replay when the load's read ended
//!   before it (its offset), and ignored when the read included it; one already inside
//!   what a serving coordinator loaded is ignored too. A marker written by another
//!   leader reaches the coordinator through the replay.
//! - **Time.** The same loop ticks every coordinator (session and rebalance timeouts,
//!   offset retention); their effects take the same path.

use super::coordinator_log::{self, HostingState, PartitionWriter, Then, WriteJob};
use crate::clock;
use crate::cluster::{ClusterNode, TxnAppend};
use crate::config::GroupConfig;
use crate::error::ApiError;
use crate::group::coordinator::{
    CommittedOffset, Effect, GroupCoordinator, GroupDescription, GroupState, JoinRequest,
    JoinResponse, OffsetCommitRequest, RequestId, SyncRequest, SyncResponse,
    TxnOffsetCommitRequest,
};
use crate::group::host::{CoordinatorHost, OFFSETS_TOPIC};
use crate::group::records::{
    decode_batches, encode_batch, encode_txn_batch, GroupRecord, LogEntry,
};
use kafka_protocol::ResponseError;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::oneshot;

/// OffsetFetch's answer: per partition asked, its committed offset.
pub type FetchedOffsets = Vec<((String, i32), Option<CommittedOffset>)>;

/// Requests waiting for a rebalance to answer them, over every group here.
const MAX_WAITING: usize = 100_000;
/// A SyncGroup waits at most this long (the coordinator answers it within the rebalance
/// timeout; this only bounds a request whose group vanished).
const MAX_SYNC_WAIT: Duration = Duration::from_secs(600);
/// Markers kept for a partition while it loads; past it the load starts over (and
/// reads them from the log).
const MARKERS_WHILE_LOADING_MAX: usize = 10_000;

/// Hosts this broker's group coordinators. Made by the broker; [`GroupService::run`]
/// is its background loop.
pub struct GroupService {
    node: Arc<ClusterNode>,
    config: GroupConfig,
    tick: Duration,
    seed: u64,
    /// Shared with what runs after a write (offset commits reach the coordinator then).
    state: Arc<Mutex<State>>,
    /// Set by [`GroupService::stop`]: the loop drops every coordinator and ends.
    stopped: AtomicBool,
}

struct State {
    /// Made once `__consumer_offsets` exists (its partition count is fixed then).
    host: Option<CoordinatorHost>,
    next_request: RequestId,
    waiting: BTreeMap<RequestId, Waiter>,
    writers: BTreeMap<i32, PartitionWriter>,
    /// Transaction markers that committed while their partition was loading: (marker
    /// offset, producer id, commit), in commit order.
    markers_while_loading: BTreeMap<i32, Vec<(i64, i64, bool)>>,
    /// Per partition served: the offset its load read up to (markers below it were
    /// replayed).
    loaded_next_offset: BTreeMap<i32, i64>,
}

/// A JoinGroup or SyncGroup whose answer comes with a later effect.
enum Waiter {
    Join(i32, oneshot::Sender<JoinResponse>),
    Sync(i32, oneshot::Sender<SyncResponse>),
}

impl Waiter {
    fn partition(&self) -> i32 {
        match self {
            Waiter::Join(p, _) | Waiter::Sync(p, _) => *p,
        }
    }

    fn fail(self, error: ResponseError) {
        match self {
            Waiter::Join(_, reply) => {
                let _ = reply.send(join_error(error));
            }
            Waiter::Sync(_, reply) => {
                let _ = reply.send(sync_error(error));
            }
        }
    }
}

/// Released once the job it follows (and every job before it) is durable.
enum Notify {
    Join(oneshot::Sender<JoinResponse>, JoinResponse),
    Sync(oneshot::Sender<SyncResponse>, SyncResponse),
    Done(oneshot::Sender<Result<(), ResponseError>>),
}

impl Notify {
    fn send(self, outcome: Result<(), ResponseError>) {
        match (self, outcome) {
            (Notify::Join(reply, answer), Ok(())) => {
                let _ = reply.send(answer);
            }
            (Notify::Join(reply, _), Err(e)) => {
                let _ = reply.send(join_error(e));
            }
            (Notify::Sync(reply, answer), Ok(())) => {
                let _ = reply.send(answer);
            }
            (Notify::Sync(reply, _), Err(e)) => {
                let _ = reply.send(sync_error(e));
            }
            (Notify::Done(reply), outcome) => {
                let _ = reply.send(outcome);
            }
        }
    }
}

pub fn join_error(error: ResponseError) -> JoinResponse {
    JoinResponse {
        error: Some(error),
        generation_id: -1,
        ..JoinResponse::default()
    }
}

pub fn sync_error(error: ResponseError) -> SyncResponse {
    SyncResponse {
        error: Some(error),
        ..SyncResponse::default()
    }
}

impl GroupService {
    pub fn new(node: Arc<ClusterNode>, config: GroupConfig, tick_ms: u64, seed: u64) -> Self {
        GroupService {
            node,
            config,
            tick: Duration::from_millis(tick_ms.max(1)),
            seed,
            state: Arc::new(Mutex::new(State {
                host: None,
                next_request: 0,
                waiting: BTreeMap::new(),
                writers: BTreeMap::new(),
                markers_while_loading: BTreeMap::new(),
                loaded_next_offset: BTreeMap::new(),
            })),
            stopped: AtomicBool::new(false),
        }
    }

    /// Stops the background loop (clean shutdown).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The broker that coordinates `group_id` (FindCoordinator), creating
    /// `__consumer_offsets` first if no broker has.
    pub async fn find_coordinator(&self, group_id: &str) -> Result<i32, ApiError> {
        if self.offsets_partitions().is_none() {
            coordinator_log::create_internal_topic(
                &self.node,
                OFFSETS_TOPIC,
                self.config.offsets_topic_partitions,
                self.config.offsets_topic_replication_factor,
            )
            .await?;
        }
        let partitions = self.offsets_partitions().ok_or_else(|| {
            ApiError::new(
                ResponseError::CoordinatorNotAvailable,
                format!("{OFFSETS_TOPIC} is being created"),
            )
        })?;
        let partition = crate::group::host::partition_for(group_id, partitions);
        coordinator_log::live_leader(&self.node, OFFSETS_TOPIC, partition)
    }

    /// Partitions of `__consumer_offsets`, once it exists.
    pub fn offsets_partitions(&self) -> Option<i32> {
        coordinator_log::partition_count(&self.node, OFFSETS_TOPIC)
    }

    /// JoinGroup.
    pub async fn join(&self, join: JoinRequest) -> JoinResponse {
        let wait = Duration::from_millis(join.rebalance_timeout_ms.max(0) as u64)
            + Duration::from_secs(30);
        let group_id = join.group_id.clone();
        let (reply, answer) = oneshot::channel();
        let asked = self.ask(
            &group_id,
            |partition| Waiter::Join(partition, reply),
            |coordinator, id, now_ms| {
                let (now, mut effects) = coordinator.join(id, join, now_ms);
                effects.extend(now.map(|now| Effect::Join(id, now)));
                effects
            },
        );
        let id = match asked {
            Ok(id) => id,
            Err(e) => return join_error(e),
        };
        self.answer(id, answer, wait).await.unwrap_or_else(|| {
            tracing::warn!(group = %group_id, "a JoinGroup got no answer within its rebalance timeout");
            join_error(ResponseError::CoordinatorNotAvailable)
        })
    }

    /// SyncGroup.
    pub async fn sync(&self, sync: SyncRequest) -> SyncResponse {
        let group_id = sync.group_id.clone();
        let (reply, answer) = oneshot::channel();
        let asked = self.ask(
            &group_id,
            |partition| Waiter::Sync(partition, reply),
            |coordinator, id, now_ms| {
                let (now, mut effects) = coordinator.sync(id, sync, now_ms);
                effects.extend(now.map(|now| Effect::Sync(id, now)));
                effects
            },
        );
        let id = match asked {
            Ok(id) => id,
            Err(e) => return sync_error(e),
        };
        self.answer(id, answer, MAX_SYNC_WAIT)
            .await
            .unwrap_or_else(|| sync_error(ResponseError::CoordinatorNotAvailable))
    }

    /// The answer to request `id`, or None (and it is forgotten) after `wait`.
    async fn answer<T>(
        &self,
        id: RequestId,
        answer: oneshot::Receiver<T>,
        wait: Duration,
    ) -> Option<T> {
        match tokio::time::timeout(wait, answer).await {
            Ok(Ok(answer)) => Some(answer),
            _ => {
                self.lock().waiting.remove(&id);
                None
            }
        }
    }

    /// Hands a JoinGroup or SyncGroup to the coordinator of `group_id` under a new request
    /// id, with `waiter` waiting for its answer (an effect, now or later); returns the id.
    fn ask(
        &self,
        group_id: &str,
        waiter: impl FnOnce(i32) -> Waiter,
        call: impl FnOnce(&mut GroupCoordinator, RequestId, i64) -> Vec<Effect>,
    ) -> Result<RequestId, ResponseError> {
        let mut state = self.lock();
        let state = &mut *state;
        let (partition, coordinator) = serving(&mut state.host, group_id)?;
        if state.waiting.len() >= MAX_WAITING {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        let id = state.next_request;
        state.next_request += 1;
        state.waiting.insert(id, waiter(partition));
        let effects = call(coordinator, id, clock::now_ms());
        route(&self.state, state, partition, effects, false, Vec::new());
        Ok(id)
    }

    /// Heartbeat.
    pub fn heartbeat(
        &self,
        group_id: &str,
        member_id: &str,
        generation_id: i32,
        group_instance_id: Option<&str>,
    ) -> Option<ResponseError> {
        let mut state = self.lock();
        match serving(&mut state.host, group_id) {
            Ok((_, coordinator)) => coordinator.heartbeat(
                group_id,
                member_id,
                generation_id,
                group_instance_id,
                clock::now_ms(),
            ),
            Err(e) => Some(e),
        }
    }

    /// LeaveGroup: one answer per (member id, instance id), once the group's new state
    /// is durable.
    pub async fn leave(
        &self,
        group_id: &str,
        members: &[(String, Option<String>)],
    ) -> Result<Vec<Option<ResponseError>>, ResponseError> {
        let (done, durable) = oneshot::channel();
        let errors = {
            let mut state = self.lock();
            let state = &mut *state;
            let (partition, coordinator) = serving(&mut state.host, group_id)?;
            let (errors, effects) = coordinator.leave(group_id, members, clock::now_ms());
            route(
                &self.state,
                state,
                partition,
                effects,
                false,
                vec![Notify::Done(done)],
            );
            errors
        };
        durable
            .await
            .unwrap_or(Err(ResponseError::NotCoordinator))?;
        Ok(errors)
    }

    /// OffsetCommit: one answer per offset, in order.
    pub async fn commit_offsets(&self, commit: OffsetCommitRequest) -> Vec<Option<ResponseError>> {
        let n = commit.offsets.len();
        let (done, durable) = oneshot::channel();
        let errors = {
            let mut state = self.lock();
            let state = &mut *state;
            let (partition, coordinator) = match serving(&mut state.host, &commit.group_id) {
                Ok(found) => found,
                Err(e) => return vec![Some(e); n],
            };
            let (errors, records) = coordinator.commit_offsets(commit, clock::now_ms());
            let effects = records.into_iter().map(Effect::Persist).collect();
            route(
                &self.state,
                state,
                partition,
                effects,
                true,
                vec![Notify::Done(done)],
            );
            errors
        };
        match durable.await.unwrap_or(Err(ResponseError::NotCoordinator)) {
            Ok(()) => errors,
            Err(e) => errors
                .into_iter()
                .map(|refused| refused.or(Some(e)))
                .collect(),
        }
    }

    /// The `__consumer_offsets` partition of `group_id`, if this broker serves its
    /// coordinator (NOT_COORDINATOR or COORDINATOR_LOAD_IN_PROGRESS otherwise).
    pub fn offsets_partition(&self, group_id: &str) -> Result<i32, ResponseError> {
        let mut state = self.lock();
        serving(&mut state.host, group_id).map(|(partition, _)| partition)
    }

    /// TxnOffsetCommit: one answer per offset, in order, once the transactional batch is
    /// durable (the offsets are then pending in the coordinator). `txn`: how the batch
    /// was verified with the transaction coordinator (KIP-890).
    pub async fn txn_commit_offsets(
        &self,
        commit: TxnOffsetCommitRequest,
        txn: TxnAppend,
    ) -> Vec<Option<ResponseError>> {
        let n = commit.offsets.len();
        let (done, durable) = oneshot::channel();
        let errors = {
            let mut state = self.lock();
            let state = &mut *state;
            let (partition, coordinator) = match serving(&mut state.host, &commit.group_id) {
                Ok(found) => found,
                Err(e) => return vec![Some(e); n],
            };
            let (errors, records) = coordinator.txn_commit_offsets(&commit, clock::now_ms());
            let producer = (commit.producer_id, commit.producer_epoch);
            queue_txn_commit(&self.state, state, partition, records, producer, txn, done);
            errors
        };
        match durable.await.unwrap_or(Err(ResponseError::NotCoordinator)) {
            Ok(()) => errors,
            Err(e) => errors
                .into_iter()
                .map(|refused| refused.or(Some(e)))
                .collect(),
        }
    }

    /// OffsetFetch with `require_stable`: the committed offsets, and (read at the same
    /// moment) the partitions of `group_id` with transactional offsets not yet
    /// committed or aborted.
    pub fn fetch_offsets_and_pending(
        &self,
        group_id: &str,
        partitions: Option<&[(String, i32)]>,
    ) -> Result<(FetchedOffsets, BTreeSet<(String, i32)>), ResponseError> {
        let mut state = self.lock();
        let (_, coordinator) = serving(&mut state.host, group_id)?;
        let fetched = coordinator.fetch_offsets(group_id, partitions);
        Ok((fetched, coordinator.pending_txn_partitions(group_id)))
    }

    /// A COMMIT (`commit`) or ABORT marker of `producer_id` committed at
    /// `marker_offset` of `__consumer_offsets`-`partition` (WriteTxnMarkers calls this
    /// before it answers, so before the producer can start its next transaction here).
    pub fn marker_committed(
        &self,
        partition: i32,
        marker_offset: i64,
        producer_id: i64,
        commit: bool,
    ) {
        let mut state = self.lock();
        let state = &mut *state;
        let Some(host) = state.host.as_mut() else {
            return;
        };
        let Some(epoch) = host.epoch(partition) else {
            // Not coordinated here: whoever loads it replays the marker from the log.
            return;
        };
        if host.serving(partition, epoch).is_none() {
            let kept = state.markers_while_loading.entry(partition).or_default();
            if kept.len() >= MARKERS_WHILE_LOADING_MAX {
                tracing::warn!(partition, "too many markers during a load: loading again");
                state.resign(partition);
                return;
            }
            kept.push((marker_offset, producer_id, commit));
            return;
        }
        if state
            .loaded_next_offset
            .get(&partition)
            .is_some_and(|end| marker_offset < *end)
        {
            return; // replayed by the load
        }
        let shared = self.state.clone();
        let complete: Then = Box::new(move |outcome| {
            if outcome.is_err() {
                return; // the partition is loaded again, marker included
            }
            let mut state = lock(&shared);
            if let Some(coordinator) = state
                .host
                .as_mut()
                .and_then(|h| h.serving(partition, epoch))
            {
                coordinator.complete_txn(producer_id, commit);
            }
        });
        queue_jobs(
            state,
            partition,
            vec![WriteJob {
                batch: None,
                txn: TxnAppend::Unchecked,
                then: vec![complete],
            }],
        );
    }

    /// OffsetFetch: the committed offsets (only durable ones are ever in the state).
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        partitions: Option<&[(String, i32)]>,
    ) -> Result<FetchedOffsets, ResponseError> {
        let mut state = self.lock();
        let (_, coordinator) = serving(&mut state.host, group_id)?;
        Ok(coordinator.fetch_offsets(group_id, partitions))
    }

    /// DescribeGroups: None for a group this coordinator does not know.
    pub fn describe(&self, group_id: &str) -> Result<Option<GroupDescription>, ResponseError> {
        let mut state = self.lock();
        let (_, coordinator) = serving(&mut state.host, group_id)?;
        Ok(coordinator.describe(group_id))
    }

    /// ListGroups: every group coordinated here (group id, protocol type, state).
    pub fn list(&self) -> Vec<(String, String, GroupState)> {
        let mut state = self.lock();
        let Some(host) = state.host.as_mut() else {
            return Vec::new();
        };
        host.active()
            .flat_map(|(_, coordinator)| coordinator.list())
            .collect()
    }

    /// DeleteGroups: per group, None once its deletion is durable.
    pub async fn delete_groups(&self, group_ids: &[String]) -> Vec<Option<ResponseError>> {
        let mut outcomes = Vec::with_capacity(group_ids.len());
        for group_id in group_ids {
            let (done, durable) = oneshot::channel();
            let refused = {
                let mut state = self.lock();
                let state = &mut *state;
                match serving(&mut state.host, group_id) {
                    Err(e) => Some(e),
                    Ok((partition, coordinator)) => {
                        match coordinator
                            .delete_groups(std::slice::from_ref(group_id))
                            .remove(0)
                        {
                            Err(e) => Some(e),
                            Ok(records) => {
                                let effects = records.into_iter().map(Effect::Persist).collect();
                                route(
                                    &self.state,
                                    state,
                                    partition,
                                    effects,
                                    true,
                                    vec![Notify::Done(done)],
                                );
                                None
                            }
                        }
                    }
                }
            };
            outcomes.push(match refused {
                Some(e) => Some(e),
                None => durable
                    .await
                    .unwrap_or(Err(ResponseError::NotCoordinator))
                    .err(),
            });
        }
        outcomes
    }

    /// OffsetDelete: per partition, once durable.
    pub async fn delete_offsets(
        &self,
        group_id: &str,
        partitions: &[(String, i32)],
    ) -> Result<Vec<Option<ResponseError>>, ResponseError> {
        let (done, durable) = oneshot::channel();
        let errors = {
            let mut state = self.lock();
            let state = &mut *state;
            let (partition, coordinator) = serving(&mut state.host, group_id)?;
            let (errors, records) = coordinator.delete_offsets(group_id, partitions)?;
            let effects = records.into_iter().map(Effect::Persist).collect();
            route(
                &self.state,
                state,
                partition,
                effects,
                true,
                vec![Notify::Done(done)],
            );
            errors
        };
        durable
            .await
            .unwrap_or(Err(ResponseError::NotCoordinator))?;
        Ok(errors)
    }

    /// The background loop: follows the leadership of `__consumer_offsets` partitions
    /// and ticks the coordinators, until [`GroupService::stop`].
    pub async fn run(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.tick).await;
            if self.stopped.load(Ordering::SeqCst) {
                coordinator_log::resign_all(&mut *self.lock());
                return;
            }
            for (partition, epoch) in self.follow_leadership() {
                tokio::spawn(self.clone().load(partition, epoch));
            }
            let now_ms = clock::now_ms();
            let mut state = self.lock();
            let state = &mut *state;
            let Some(host) = state.host.as_mut() else {
                continue;
            };
            let ticked: Vec<(i32, Vec<Effect>)> = host
                .active()
                .map(|(partition, coordinator)| (partition, coordinator.tick(now_ms)))
                .filter(|(_, effects)| !effects.is_empty())
                .collect();
            for (partition, effects) in ticked {
                route(&self.state, state, partition, effects, false, Vec::new());
            }
        }
    }

    /// Brings the host in line with the partitions led here; returns the (partition,
    /// epoch) leaderships to load.
    fn follow_leadership(&self) -> Vec<(i32, i32)> {
        let partitions = self.offsets_partitions();
        let (config, seed) = (&self.config.coordinator, self.seed);
        coordinator_log::follow_leadership(
            &mut *self.lock(),
            &self.node,
            OFFSETS_TOPIC,
            partitions,
            |partitions| CoordinatorHost::new(config.clone(), partitions, seed),
        )
    }

    /// Replays the committed records of `partition` for the leadership of `epoch`, then
    /// starts its writer. Gives up when the leadership ends first.
    async fn load(self: Arc<Self>, partition: i32, epoch: i32) {
        let still_wanted =
            || self.lock().host.as_ref().and_then(|h| h.epoch(partition)) == Some(epoch);
        let read = || {
            // Planted bug: serve at once, with none of the partition's records.
            if crate::planted::on("group-serve-before-load") {
                return Ok(Some((Vec::new(), 0)));
            }
            self.read_committed(partition, epoch)
        };
        let Some((records, next_offset)) = coordinator_log::read_for_load(
            OFFSETS_TOPIC,
            partition,
            epoch,
            self.tick,
            still_wanted,
            read,
        )
        .await
        else {
            return;
        };
        let mut state = self.lock();
        let state = &mut *state;
        let Some(host) = state.host.as_mut() else {
            return;
        };
        let now_ms = clock::now_ms();
        host.loaded(partition, epoch, &records, now_ms);
        let Some(coordinator) = host.serving(partition, epoch) else {
            return; // a stale load: the markers kept are the current load's
        };
        let kept = state
            .markers_while_loading
            .remove(&partition)
            .unwrap_or_default();
        // Markers that committed after the read: after the replay, in log order.
        for (marker_offset, producer_id, commit) in kept {
            if marker_offset >= next_offset {
                coordinator.complete_txn(producer_id, commit);
            }
        }
        state.loaded_next_offset.insert(partition, next_offset);
        tracing::info!(
            partition,
            epoch,
            records = records.len(),
            "loaded the groups of {OFFSETS_TOPIC}-{partition}"
        );
        let shared = self.state.clone();
        let on_failure = move |_| {
            let mut state = lock(&shared);
            if state
                .writers
                .get(&partition)
                .is_some_and(|w| w.epoch == epoch)
            {
                state.resign(partition);
            }
        };
        let writer = PartitionWriter::start(
            self.node.clone(),
            OFFSETS_TOPIC,
            partition,
            epoch,
            on_failure,
        );
        state.writers.insert(partition, writer);
    }

    /// Every committed record and transaction marker of the partition, with the offset
    /// after them, once this broker, leading it in `epoch`, has committed an entry of
    /// that term (None before).
    fn read_committed(
        &self,
        partition: i32,
        epoch: i32,
    ) -> Result<Option<(Vec<LogEntry>, i64)>, String> {
        let Some(chunks) =
            coordinator_log::read_committed(&self.node, OFFSETS_TOPIC, partition, epoch)?
        else {
            return Ok(None);
        };
        let mut records = Vec::new();
        let mut skipped = 0;
        let mut next_offset = 0;
        for bytes in &chunks {
            let decoded = decode_batches(bytes)?;
            records.extend(decoded.entries);
            skipped += decoded.skipped;
            next_offset = decoded.next_offset.unwrap_or(next_offset).max(next_offset);
        }
        if skipped > 0 {
            tracing::warn!(
                partition,
                skipped,
                "records of {OFFSETS_TOPIC} that are not group records were skipped"
            );
        }
        Ok(Some((records, next_offset)))
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// The partition of `group_id` and its coordinator, if it serves here.
fn serving<'a>(
    host: &'a mut Option<CoordinatorHost>,
    group_id: &str,
) -> Result<(i32, &'a mut GroupCoordinator), ResponseError> {
    let host = host.as_mut().ok_or(ResponseError::NotCoordinator)?;
    let partition = host.partition_for(group_id);
    Ok((partition, host.coordinator(group_id)?))
}

impl HostingState for State {
    type Coordinator = GroupCoordinator;
    type Host = CoordinatorHost;

    fn host(&mut self) -> &mut Option<CoordinatorHost> {
        &mut self.host
    }

    fn held(&self) -> Vec<i32> {
        self.writers.keys().copied().collect()
    }

    /// Drops `partition`'s state here: its writer is retired (queued jobs fail), requests
    /// waiting on its groups get NOT_COORDINATOR.
    fn resign(&mut self, partition: i32) {
        if let Some(host) = self.host.as_mut() {
            host.resigned(partition);
        }
        self.markers_while_loading.remove(&partition);
        self.loaded_next_offset.remove(&partition);
        if let Some(writer) = self.writers.remove(&partition) {
            writer.retire();
        }
        let gone: Vec<RequestId> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.partition() == partition)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(waiter) = self.waiting.remove(&id) {
                waiter.fail(ResponseError::NotCoordinator);
            }
        }
    }
}

/// Queues a coordinator's effects on its partition's writer: each run of records is one
/// job, and the answers after it (with `tail` last) follow that job. `replay`: the
/// records are applied to the coordinator once durable (commits, deletions).
fn route(
    shared: &Arc<Mutex<State>>,
    state: &mut State,
    partition: i32,
    effects: Vec<Effect>,
    replay: bool,
    tail: Vec<Notify>,
) {
    // Runs of (records, answers after them).
    let mut runs: Vec<(Vec<GroupRecord>, Vec<Notify>)> = vec![(Vec::new(), Vec::new())];
    for effect in effects {
        let (records, then) = runs.last_mut().expect("never empty");
        match effect {
            Effect::Persist(record) => {
                if then.is_empty() {
                    records.push(record);
                } else {
                    runs.push((vec![record], Vec::new()));
                }
            }
            Effect::Join(id, answer) => match state.waiting.remove(&id) {
                Some(Waiter::Join(_, reply)) => then.push(Notify::Join(reply, answer)),
                Some(other) => {
                    debug_assert!(false, "request {id} waits for a SyncGroup answer");
                    other.fail(ResponseError::UnknownServerError);
                }
                None => {} // the request gave up waiting
            },
            Effect::Sync(id, answer) => match state.waiting.remove(&id) {
                Some(Waiter::Sync(_, reply)) => then.push(Notify::Sync(reply, answer)),
                Some(other) => {
                    debug_assert!(false, "request {id} waits for a JoinGroup answer");
                    other.fail(ResponseError::UnknownServerError);
                }
                None => {}
            },
        }
    }
    runs.last_mut().expect("never empty").1.extend(tail);
    let epoch = state.writers.get(&partition).map(|w| w.epoch);
    let jobs: Vec<WriteJob> = runs
        .into_iter()
        .filter(|(records, then)| !records.is_empty() || !then.is_empty())
        .map(|(records, then)| {
            let batch = (!records.is_empty()).then(|| encode_batch(&records, clock::now_ms()));
            let mut after: Vec<Then> = Vec::with_capacity(then.len() + 1);
            if replay && !records.is_empty() {
                after.push(apply_once_durable(
                    shared,
                    partition,
                    epoch,
                    move |c, now_ms| {
                        for record in &records {
                            c.replay(record, now_ms);
                        }
                    },
                ));
            }
            after.extend(
                then.into_iter()
                    .map(|notify| -> Then { Box::new(move |outcome| notify.send(outcome)) }),
            );
            WriteJob {
                batch,
                txn: TxnAppend::Unchecked,
                then: after,
            }
        })
        .collect();
    queue_jobs(state, partition, jobs);
}

/// A TxnOffsetCommit's records as one transactional batch of `producer` (id, epoch);
/// once durable they are pending in the coordinator, then `done` is answered.
fn queue_txn_commit(
    shared: &Arc<Mutex<State>>,
    state: &mut State,
    partition: i32,
    records: Vec<GroupRecord>,
    producer: (i64, i16),
    txn: TxnAppend,
    done: oneshot::Sender<Result<(), ResponseError>>,
) {
    let notify: Then = Box::new(move |outcome| Notify::Done(done).send(outcome));
    if records.is_empty() {
        queue_jobs(
            state,
            partition,
            vec![WriteJob {
                batch: None,
                txn: TxnAppend::Unchecked,
                then: vec![notify],
            }],
        );
        return;
    }
    let (producer_id, producer_epoch) = producer;
    let epoch = state.writers.get(&partition).map(|w| w.epoch);
    let batch = encode_txn_batch(&records, producer_id, producer_epoch, clock::now_ms());
    let apply = apply_once_durable(shared, partition, epoch, move |c, now_ms| {
        for record in &records {
            c.replay_pending_txn_offset(producer_id, record, now_ms);
        }
    });
    let job = WriteJob {
        batch: Some(batch),
        txn,
        then: vec![apply, notify],
    };
    queue_jobs(state, partition, vec![job]);
}

/// A write's follow-up that, once the write is durable, runs `apply` on the coordinator
/// of `partition` if it still serves the epoch the write was queued in (`epoch`, `None`:
/// no writer then, so nothing to apply).
fn apply_once_durable(
    shared: &Arc<Mutex<State>>,
    partition: i32,
    epoch: Option<i32>,
    apply: impl FnOnce(&mut GroupCoordinator, i64) + Send + 'static,
) -> Then {
    let shared = shared.clone();
    Box::new(move |outcome| {
        if outcome.is_err() {
            return;
        }
        let mut state = lock(&shared);
        let serving = epoch.and_then(|epoch| {
            state
                .host
                .as_mut()
                .and_then(|h| h.serving(partition, epoch))
        });
        if let Some(coordinator) = serving {
            apply(coordinator, clock::now_ms());
        }
    })
}

/// Queues jobs on `partition`'s writer, or fails them when it has none.
fn queue_jobs(state: &mut State, partition: i32, jobs: Vec<WriteJob>) {
    let Some(writer) = state.writers.get(&partition) else {
        // Not serving (only a loaded partition produces effects): nothing was promised.
        for job in jobs {
            job.fail(ResponseError::NotCoordinator);
        }
        return;
    };
    if !writer.queue(jobs) {
        tracing::warn!(
            partition,
            "the {OFFSETS_TOPIC} writer is full: reloading its groups"
        );
        state.resign(partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Broker;
    use crate::config::BrokerConfig;
    use crate::log::batch::BatchHeader;
    use crate::storage::MemoryStorage;
    use bytes::Bytes;

    async fn open(storage: Arc<MemoryStorage>) -> Arc<Broker> {
        open_with(storage, BrokerConfig::default()).await
    }

    async fn open_with(storage: Arc<MemoryStorage>, base: BrokerConfig) -> Arc<Broker> {
        let mut config = BrokerConfig {
            data_dir: "/data".into(),
            seed: Some(3),
            raft_tick_ms: 10,
            ..base
        };
        config.groups.offsets_topic_partitions = 3;
        config.groups.coordinator.initial_rebalance_delay_ms = 0;
        let broker = Broker::open(config, storage, None).await.unwrap();
        broker.start_background_tasks();
        broker
    }

    /// Asks until the answer is not "loading" / "not yet" (bounded).
    async fn until<T: std::fmt::Debug>(mut ask: impl FnMut() -> Result<T, ResponseError>) -> T {
        for _ in 0..1000 {
            match ask() {
                Ok(answer) => return answer,
                Err(ResponseError::CoordinatorLoadInProgress | ResponseError::NotCoordinator) => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(e) => panic!("unexpected error {e:?}"),
            }
        }
        panic!("the coordinator never became ready");
    }

    fn join_request(member_id: &str) -> JoinRequest {
        JoinRequest {
            group_id: "g".into(),
            member_id: member_id.into(),
            group_instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 10_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"sub"))],
            require_known_member_id: true,
        }
    }

    /// A group forms through JoinGroup and SyncGroup, commits an offset, and after a
    /// power loss and restart the new coordinator has both, read back from
    /// `__consumer_offsets`.
    #[tokio::test]
    async fn a_group_and_its_offsets_survive_a_restart() {
        let storage = Arc::new(MemoryStorage::new());
        let broker = open(storage.clone()).await;
        for _ in 0..500 {
            if broker.groups.find_coordinator("g").await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(broker.groups.find_coordinator("g").await.unwrap(), 1);
        let offsets_topic = broker.topic(OFFSETS_TOPIC).expect("created");
        assert_eq!(offsets_topic.partitions.len(), 3);
        assert_eq!(
            offsets_topic
                .configs
                .get("cleanup.policy")
                .map(String::as_str),
            Some("compact")
        );
        until(|| broker.groups.describe("g")).await;
        let first = broker.groups.join(join_request("")).await;
        assert_eq!(first.error, Some(ResponseError::MemberIdRequired));
        let joined = broker.groups.join(join_request(&first.member_id)).await;
        assert_eq!(joined.error, None);
        assert_eq!(joined.generation_id, 1);
        assert_eq!(joined.leader, first.member_id);
        let synced = broker
            .groups
            .sync(SyncRequest {
                group_id: "g".into(),
                member_id: first.member_id.clone(),
                generation_id: 1,
                group_instance_id: None,
                protocol_type: None,
                protocol_name: None,
                assignments: vec![(first.member_id.clone(), Bytes::from_static(b"t-0"))],
            })
            .await;
        assert_eq!(synced.error, None);
        assert_eq!(synced.assignment, Bytes::from_static(b"t-0"));
        let committed = broker
            .groups
            .commit_offsets(OffsetCommitRequest {
                group_id: "g".into(),
                member_id: first.member_id.clone(),
                generation_id: 1,
                group_instance_id: None,
                offsets: vec![("t".into(), 0, 42, 1, "m".into())],
            })
            .await;
        assert_eq!(committed, vec![None]);
        let key = [("t".to_string(), 0)];
        let fetched = broker.groups.fetch_offsets("g", Some(&key)).unwrap();
        assert_eq!(fetched[0].1.as_ref().map(|c| c.offset), Some(42));

        // Power loss: only what was fsynced survives, and acks=all means fsynced.
        drop(broker);
        storage.crash();
        let broker = open(storage.clone()).await;
        for _ in 0..500 {
            if broker.groups.find_coordinator("g").await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let fetched = until(|| broker.groups.fetch_offsets("g", Some(&key))).await;
        let offset = fetched[0].1.clone().expect("the committed offset survived");
        assert_eq!((offset.offset, offset.metadata.as_str()), (42, "m"));
        let group = until(|| broker.groups.describe("g"))
            .await
            .expect("the group survived");
        assert_eq!(group.state, GroupState::Stable);
        assert_eq!(group.generation_id, 1);
        assert_eq!(group.members.len(), 1);
        assert_eq!(group.members[0].assignment, Bytes::from_static(b"t-0"));
        // The restored member carries on in its generation.
        assert_eq!(
            broker.groups.heartbeat("g", &first.member_id, 1, None),
            None
        );
    }

    /// `__consumer_offsets` is compacted: after many commits of one offset the cleaner
    /// keeps the latest, and a restarted coordinator still finds it (and the group).
    #[tokio::test]
    async fn commits_survive_compaction_of_the_offsets_topic() {
        let storage = Arc::new(MemoryStorage::new());
        let mut base = BrokerConfig {
            log_cleaner_backoff_ms: 20,
            ..BrokerConfig::default()
        };
        base.log_defaults.segment_bytes = 1024;
        let broker = open_with(storage.clone(), base.clone()).await;
        for _ in 0..500 {
            if broker.groups.find_coordinator("g").await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        until(|| broker.groups.describe("g")).await;
        let commit = |offset: i64| OffsetCommitRequest {
            group_id: "g".into(),
            member_id: String::new(),
            generation_id: -1,
            group_instance_id: None,
            offsets: vec![("t".into(), 0, offset, 1, String::new())],
        };
        for offset in 1..=300 {
            assert_eq!(
                broker.groups.commit_offsets(commit(offset)).await,
                vec![None]
            );
        }
        let partition = crate::group::host::partition_for("g", 3);
        let records_left = |broker: &Broker| {
            let replica = broker.node.replica(OFFSETS_TOPIC, partition).unwrap();
            let storage = replica.storage.lock();
            let log = storage.log();
            let mut offset = log.log_start_offset();
            let mut records = 0;
            while let Ok(bytes) = log.read(offset, 1 << 20, replica.high_watermark(), true) {
                if bytes.is_empty() {
                    break;
                }
                let mut at = 0;
                while at < bytes.len() {
                    let header = BatchHeader::parse(&bytes[at..]).unwrap();
                    if !header.is_control() {
                        records += header.records_count;
                    }
                    offset = header.next_offset();
                    at += header.size_bytes();
                }
            }
            records
        };
        for _ in 0..500 {
            if records_left(&broker) < 100 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = records_left(&broker);
        assert!(
            left < 100,
            "{left} of 300 records still there: nothing was cleaned"
        );
        drop(broker);
        storage.crash();
        let broker = open_with(storage.clone(), base).await;
        for _ in 0..500 {
            if broker.groups.find_coordinator("g").await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let key = [("t".to_string(), 0)];
        let fetched = until(|| broker.groups.fetch_offsets("g", Some(&key))).await;
        assert_eq!(fetched[0].1.as_ref().map(|c| c.offset), Some(300));
    }
}
