//! The transaction coordinators this broker hosts, wired to the cluster: the I/O edge of
//! `crate::txn`, shaped like `broker::groups`.
//!
//! - **Leadership.** A loop every Raft tick follows which `__transaction_state`
//!   partitions this broker leads; a partition led in a new term is loaded once its
//!   leader committed an entry of that term (`coordinator_log`), and the markers of the
//!   transactions it finds prepared are written again. Meanwhile its ids get
//!   COORDINATOR_LOAD_IN_PROGRESS; a partition no longer led gets NOT_COORDINATOR.
//! - **Writes.** A coordinator's effects go to its partition's writer in order: records
//!   are appended with acks=all in the term loaded, and what follows a record (the
//!   client's answer, writing markers) runs only once it is durable. Every answer, also
//!   one that persists nothing (a KIP-890 verification), waits for the records queued
//!   before it: an answer never shows state a failover could lose.
//! - **Markers.** Once a PrepareCommit/PrepareAbort record is durable, a task sends
//!   WriteTxnMarkers to the leader of every partition of the transaction (itself
//!   included, over the Kafka protocol), retrying each until it is written or its topic
//!   is gone, for as long as this leadership lasts; then the coordinator completes the
//!   transaction (another record). A new coordinator resends what was not completed.
//! - **Time.** The loop ticks the coordinators: abandoned transactions are aborted after
//!   their `transaction.timeout.ms`, idle transactional ids expire.

use super::coordinator_log::{self, HostingState, PartitionWriter, Then, WriteJob};
use super::producer_ids::ProducerIds;
use crate::client::Client;
use crate::clock;
use crate::cluster::{ClusterNode, TxnAppend};
use crate::config::TxnServiceConfig;
use crate::error::ApiError;
use crate::txn::coordinator::{
    Effect, EndTxnResponse, ListFilter, ProducerIdAndEpoch, TopicPartition, TxnCoordinator,
    TxnDescription, TxnListing, TxnResult, WriteMarkers,
};
use crate::txn::host::{TxnCoordinatorHost, TRANSACTION_STATE_TOPIC};
use crate::txn::records::{decode_batches, encode_batch, TxnRecord};
use kafka_protocol::ResponseError;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::oneshot;

/// How long a request waits for the records before its answer to be durable.
const ANSWER_WAIT: Duration = Duration::from_secs(30);
/// Pause between two rounds of marker writes that did not all succeed (doubling up to
/// the maximum).
const MARKER_RETRY_MIN: Duration = Duration::from_millis(50);
const MARKER_RETRY_MAX: Duration = Duration::from_secs(1);
/// How long one WriteTxnMarkers request may take.
const MARKER_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub struct TxnService {
    node: Arc<ClusterNode>,
    config: TxnServiceConfig,
    producer_ids: Arc<ProducerIds>,
    tick: Duration,
    /// Shared with what runs after a write.
    state: Arc<Mutex<State>>,
    stopped: AtomicBool,
}

#[derive(Default)]
struct State {
    /// Made once `__transaction_state` exists.
    host: Option<TxnCoordinatorHost>,
    writers: BTreeMap<i32, PartitionWriter>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl TxnService {
    pub fn new(
        node: Arc<ClusterNode>,
        config: TxnServiceConfig,
        producer_ids: Arc<ProducerIds>,
        tick_ms: u64,
    ) -> TxnService {
        TxnService {
            node,
            config,
            producer_ids,
            tick: Duration::from_millis(tick_ms.max(1)),
            state: Arc::default(),
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

    fn partitions(&self) -> Option<i32> {
        coordinator_log::partition_count(&self.node, TRANSACTION_STATE_TOPIC)
    }

    /// The broker that coordinates `transactional_id` (FindCoordinator, key type 1),
    /// creating `__transaction_state` first if no broker has.
    pub async fn find_coordinator(&self, transactional_id: &str) -> Result<i32, ApiError> {
        if self.partitions().is_none() {
            coordinator_log::create_internal_topic(
                &self.node,
                TRANSACTION_STATE_TOPIC,
                self.config.transaction_state_partitions,
                self.config.transaction_state_replication_factor,
            )
            .await?;
        }
        let partitions = self.partitions().ok_or_else(|| {
            ApiError::new(
                ResponseError::CoordinatorNotAvailable,
                format!("{TRANSACTION_STATE_TOPIC} is being created"),
            )
        })?;
        let partition = crate::txn::host::partition_for(transactional_id, partitions);
        coordinator_log::live_leader(&self.node, TRANSACTION_STATE_TOPIC, partition)
    }

    /// Calls the coordinator of `transactional_id` and queues its effects; `answer` is
    /// sent (with the call's result) once every record before it is durable.
    async fn ask<T: Send + 'static>(
        self: &Arc<Self>,
        transactional_id: &str,
        call: impl FnOnce(&mut TxnCoordinator, i64) -> (T, Vec<Effect>),
        on_error: impl Fn(ResponseError) -> T,
    ) -> T {
        let (reply, answer) = oneshot::channel::<Result<T, ResponseError>>();
        {
            let mut state = self.lock();
            let state = &mut *state;
            let Some(host) = state.host.as_mut() else {
                return on_error(ResponseError::NotCoordinator);
            };
            let partition = host.partition_for(transactional_id);
            let coordinator = match host.coordinator(transactional_id) {
                Ok(coordinator) => coordinator,
                Err(e) => return on_error(e),
            };
            let (result, effects) = call(coordinator, clock::now_ms());
            let then: Then = Box::new(move |outcome| {
                let _ = reply.send(outcome.map(|()| result));
            });
            self.route(state, partition, effects, vec![then]);
        }
        match tokio::time::timeout(ANSWER_WAIT, answer).await {
            Ok(Ok(Ok(result))) => result,
            Ok(Ok(Err(e))) => on_error(e),
            Ok(Err(_)) => on_error(ResponseError::NotCoordinator),
            Err(_) => on_error(ResponseError::CoordinatorNotAvailable),
        }
    }

    /// Where the coordinator takes a new producer id from when a call needs one (a
    /// fresh producer, an exhausted epoch): a block is reserved first, so the call
    /// itself never waits for the metadata quorum.
    async fn producer_id_allocator(
        &self,
    ) -> Result<impl FnMut() -> Result<i64, ResponseError>, ResponseError> {
        self.producer_ids
            .reserve(&self.node)
            .await
            .map_err(|e| e.code)?;
        let ids = self.producer_ids.clone();
        Ok(move || {
            ids.try_next()
                .ok_or(ResponseError::CoordinatorLoadInProgress)
        })
    }

    /// InitProducerId with a transactional id.
    pub async fn init_producer_id(
        self: &Arc<Self>,
        transactional_id: &str,
        txn_timeout_ms: i32,
        expected: Option<ProducerIdAndEpoch>,
    ) -> Result<ProducerIdAndEpoch, ResponseError> {
        let mut allocate = self.producer_id_allocator().await?;
        self.ask(
            transactional_id,
            |coordinator, now_ms| {
                coordinator.init_producer_id(
                    transactional_id,
                    txn_timeout_ms,
                    expected,
                    &mut allocate,
                    now_ms,
                )
            },
            Err,
        )
        .await
    }

    /// AddPartitionsToTxn (a client's, v0-3): one error for every partition.
    pub async fn add_partitions(
        self: &Arc<Self>,
        transactional_id: &str,
        producer: ProducerIdAndEpoch,
        partitions: Vec<TopicPartition>,
        transaction_v2: bool,
    ) -> Result<(), ResponseError> {
        self.ask(
            transactional_id,
            |coordinator, now_ms| {
                coordinator.add_partitions(
                    transactional_id,
                    producer,
                    &partitions,
                    transaction_v2,
                    now_ms,
                )
            },
            Err,
        )
        .await
    }

    /// AddPartitionsToTxn v4+ with `verify_only` (KIP-890 part 1, a partition leader
    /// asking): per partition, whether it is in the ongoing transaction.
    pub async fn verify_partitions(
        self: &Arc<Self>,
        transactional_id: &str,
        producer: ProducerIdAndEpoch,
        partitions: Vec<TopicPartition>,
    ) -> Vec<Option<ResponseError>> {
        let n = partitions.len();
        self.ask(
            transactional_id,
            |coordinator, _| {
                let errors = coordinator.verify_partitions(transactional_id, producer, &partitions);
                (errors, Vec::new())
            },
            |e| vec![Some(e); n],
        )
        .await
    }

    /// AddOffsetsToTxn: `offsets_partition` is the group's `__consumer_offsets` partition.
    pub async fn add_offsets(
        self: &Arc<Self>,
        transactional_id: &str,
        producer: ProducerIdAndEpoch,
        offsets_partition: i32,
        transaction_v2: bool,
    ) -> Result<(), ResponseError> {
        self.ask(
            transactional_id,
            |coordinator, now_ms| {
                coordinator.add_offsets(
                    transactional_id,
                    producer,
                    offsets_partition,
                    transaction_v2,
                    now_ms,
                )
            },
            Err,
        )
        .await
    }

    /// EndTxn.
    pub async fn end_txn(
        self: &Arc<Self>,
        transactional_id: &str,
        producer: ProducerIdAndEpoch,
        commit: bool,
        transaction_v2: bool,
    ) -> EndTxnResponse {
        let mut allocate = match self.producer_id_allocator().await {
            Ok(allocate) => allocate,
            Err(e) => return end_txn_error(e),
        };
        let result = if commit {
            TxnResult::Commit
        } else {
            TxnResult::Abort
        };
        self.ask(
            transactional_id,
            |coordinator, now_ms| {
                coordinator.end_txn(
                    transactional_id,
                    producer,
                    result,
                    transaction_v2,
                    &mut allocate,
                    now_ms,
                )
            },
            end_txn_error,
        )
        .await
    }

    /// DescribeTransactions.
    pub fn describe(
        &self,
        transactional_ids: &[String],
    ) -> Vec<Result<TxnDescription, ResponseError>> {
        let mut state = self.lock();
        transactional_ids
            .iter()
            .map(|id| {
                let host = state.host.as_mut().ok_or(ResponseError::NotCoordinator)?;
                let coordinator = host.coordinator(id)?;
                coordinator
                    .describe(std::slice::from_ref(id))
                    .pop()
                    .unwrap_or(Err(ResponseError::TransactionalIdNotFound))
            })
            .collect()
    }

    /// ListTransactions over every coordinator here, with the state filters that name
    /// no state; COORDINATOR_LOAD_IN_PROGRESS while a partition led here loads.
    pub fn list(
        &self,
        filter: &ListFilter,
    ) -> Result<(Vec<TxnListing>, Vec<String>), ResponseError> {
        let unknown: BTreeSet<String> = filter.unknown_states().into_iter().collect();
        let mut state = self.lock();
        let Some(host) = state.host.as_mut() else {
            return Ok((Vec::new(), unknown.into_iter().collect()));
        };
        if host.any_loading() {
            return Err(ResponseError::CoordinatorLoadInProgress);
        }
        let now_ms = clock::now_ms();
        let mut listed = Vec::new();
        for (_, coordinator) in host.active() {
            listed.extend(coordinator.list(filter, now_ms).0);
        }
        Ok((listed, unknown.into_iter().collect()))
    }

    /// Queues a coordinator's effects on its partition's writer (see the module comment);
    /// `tail` runs after the last of them.
    fn route(
        self: &Arc<Self>,
        state: &mut State,
        partition: i32,
        effects: Vec<Effect>,
        tail: Vec<Then>,
    ) {
        let epoch = state.writers.get(&partition).map(|w| w.epoch);
        let mut runs: Vec<(Vec<TxnRecord>, Vec<Then>)> = vec![(Vec::new(), Vec::new())];
        for effect in effects {
            let (records, then) = runs.last_mut().expect("never empty");
            match effect {
                Effect::Persist(record) if then.is_empty() => records.push(record),
                Effect::Persist(record) => runs.push((vec![record], Vec::new())),
                Effect::WriteMarkers(markers) => {
                    let service = self.clone();
                    then.push(Box::new(move |outcome| {
                        if let (Ok(()), Some(epoch)) = (outcome, epoch) {
                            tokio::spawn(service.deliver_markers(partition, epoch, markers));
                        }
                    }));
                }
            }
        }
        runs.last_mut().expect("never empty").1.extend(tail);
        let jobs: Vec<WriteJob> = runs
            .into_iter()
            .filter(|(records, then)| !records.is_empty() || !then.is_empty())
            .map(|(records, then)| WriteJob {
                batch: (!records.is_empty()).then(|| encode_batch(&records, clock::now_ms())),
                txn: TxnAppend::Unchecked,
                then,
            })
            .collect();
        let Some(writer) = state.writers.get(&partition) else {
            for job in jobs {
                job.fail(ResponseError::NotCoordinator);
            }
            return;
        };
        if !writer.queue(jobs) {
            tracing::warn!(
                partition,
                "the {TRANSACTION_STATE_TOPIC} writer is full: reloading"
            );
            state.resign(partition);
        }
    }

    /// Writes one transaction's markers to every partition (see the module comment),
    /// then completes the transaction, for the leadership of `epoch` only.
    async fn deliver_markers(self: Arc<Self>, partition: i32, epoch: i32, markers: WriteMarkers) {
        let mut remaining: BTreeSet<TopicPartition> = markers.partitions.clone();
        // Planted bug: the marker goes to the transaction's first partition only, and the
        // transaction is completed all the same.
        if crate::planted::on("markers-to-some-partitions") {
            remaining = remaining.into_iter().take(1).collect();
        }
        let mut pause = MARKER_RETRY_MIN;
        let mut connections: BTreeMap<i32, Client> = BTreeMap::new();
        loop {
            if self.stopped.load(Ordering::SeqCst) || !self.serves(partition, epoch) {
                return; // the next coordinator resends them
            }
            let by_leader = self.leaders_of(&mut remaining);
            for (leader, partitions) in by_leader {
                let written = self
                    .send_markers(&mut connections, leader, &markers, &partitions)
                    .await;
                for tp in written {
                    remaining.remove(&tp);
                }
            }
            if remaining.is_empty() {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MARKER_RETRY_MAX);
        }
        let mut state = self.lock();
        let state = &mut *state;
        let Some(coordinator) = state
            .host
            .as_mut()
            .and_then(|h| h.serving(partition, epoch))
        else {
            return;
        };
        let effects = coordinator.markers_written(&markers, clock::now_ms());
        self.route(state, partition, effects, Vec::new());
    }

    fn serves(&self, partition: i32, epoch: i32) -> bool {
        self.lock()
            .host
            .as_mut()
            .is_some_and(|h| h.serving(partition, epoch).is_some())
    }

    /// The partitions still to mark, by the broker leading each; partitions of topics
    /// that no longer exist are dropped from `remaining` (nothing to mark).
    fn leaders_of(
        &self,
        remaining: &mut BTreeSet<TopicPartition>,
    ) -> BTreeMap<i32, Vec<TopicPartition>> {
        self.node.with_image(|image| {
            remaining.retain(|tp| image.partition(&tp.topic, tp.partition).is_some());
            let mut by_leader: BTreeMap<i32, Vec<TopicPartition>> = BTreeMap::new();
            for tp in remaining.iter() {
                let leader = image
                    .partition(&tp.topic, tp.partition)
                    .map_or(-1, |p| p.leader);
                if leader >= 0 {
                    by_leader.entry(leader).or_default().push(tp.clone());
                }
            }
            by_leader
        })
    }

    /// Sends one WriteTxnMarkers to `leader`; returns the partitions it wrote (or whose
    /// topic is gone).
    async fn send_markers(
        &self,
        connections: &mut BTreeMap<i32, Client>,
        leader: i32,
        markers: &WriteMarkers,
        partitions: &[TopicPartition],
    ) -> Vec<TopicPartition> {
        if !connections.contains_key(&leader) {
            let Some(addr) = coordinator_log::kafka_address(&self.node, leader) else {
                return Vec::new();
            };
            match tokio::time::timeout(MARKER_REQUEST_TIMEOUT, Client::connect(addr)).await {
                Ok(Ok(client)) => {
                    connections.insert(leader, client);
                }
                _ => return Vec::new(),
            }
        }
        let client = connections.get_mut(&leader).expect("connected above");
        let list: Vec<(String, i32)> = partitions
            .iter()
            .map(|tp| (tp.topic.clone(), tp.partition))
            .collect();
        let sent = client.write_txn_markers(
            markers.producer_id,
            markers.producer_epoch,
            markers.result == TxnResult::Commit,
            markers.coordinator_epoch,
            &list,
        );
        match tokio::time::timeout(MARKER_REQUEST_TIMEOUT, sent).await {
            Ok(Ok(results)) => results
                .into_iter()
                .filter(|(_, error)| {
                    matches!(error, None | Some(ResponseError::UnknownTopicOrPartition))
                })
                .map(|((topic, partition), _)| TopicPartition { topic, partition })
                .collect(),
            _ => {
                connections.remove(&leader);
                Vec::new()
            }
        }
    }

    /// The background loop: follows the leadership of `__transaction_state` partitions
    /// and ticks the coordinators, until [`TxnService::stop`].
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
                self.route(state, partition, effects, Vec::new());
            }
        }
    }

    /// Brings the host in line with the partitions led here; returns the (partition,
    /// epoch) leaderships to load.
    fn follow_leadership(&self) -> Vec<(i32, i32)> {
        let partitions = self.partitions();
        let config = &self.config.coordinator;
        coordinator_log::follow_leadership(
            &mut *self.lock(),
            &self.node,
            TRANSACTION_STATE_TOPIC,
            partitions,
            |partitions| TxnCoordinatorHost::new(config.clone(), partitions),
        )
    }

    /// Replays the committed records of `partition` for the leadership of `epoch`,
    /// starts its writer, and resumes the markers of prepared transactions.
    async fn load(self: Arc<Self>, partition: i32, epoch: i32) {
        let still_wanted =
            || self.lock().host.as_ref().and_then(|h| h.epoch(partition)) == Some(epoch);
        let read = || self.read_committed(partition, epoch);
        let Some(records) = coordinator_log::read_for_load(
            TRANSACTION_STATE_TOPIC,
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
        let effects = host.loaded(partition, epoch, &records, clock::now_ms());
        if host.serving(partition, epoch).is_none() {
            return;
        }
        tracing::info!(
            partition,
            epoch,
            records = records.len(),
            "loaded the transactions of {TRANSACTION_STATE_TOPIC}-{partition}"
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
            TRANSACTION_STATE_TOPIC,
            partition,
            epoch,
            on_failure,
        );
        state.writers.insert(partition, writer);
        self.route(state, partition, effects, Vec::new());
    }

    fn read_committed(&self, partition: i32, epoch: i32) -> Result<Option<Vec<TxnRecord>>, String> {
        let Some(chunks) =
            coordinator_log::read_committed(&self.node, TRANSACTION_STATE_TOPIC, partition, epoch)?
        else {
            return Ok(None);
        };
        let mut records = Vec::new();
        for bytes in &chunks {
            let (decoded, skipped) = decode_batches(bytes)?;
            if skipped > 0 {
                tracing::warn!(partition, skipped, "records of {TRANSACTION_STATE_TOPIC} that are not transaction records were skipped");
            }
            records.extend(decoded);
        }
        Ok(Some(records))
    }
}

fn end_txn_error(error: ResponseError) -> EndTxnResponse {
    EndTxnResponse {
        error: Some(error),
        producer_id: -1,
        producer_epoch: -1,
    }
}

impl HostingState for State {
    type Coordinator = TxnCoordinator;
    type Host = TxnCoordinatorHost;

    fn host(&mut self) -> &mut Option<TxnCoordinatorHost> {
        &mut self.host
    }

    fn held(&self) -> Vec<i32> {
        self.writers.keys().copied().collect()
    }

    /// Drops `partition`'s state here: its writer is retired (queued jobs fail).
    fn resign(&mut self, partition: i32) {
        if let Some(host) = self.host.as_mut() {
            host.resigned(partition);
        }
        if let Some(writer) = self.writers.remove(&partition) {
            writer.retire();
        }
    }
}
