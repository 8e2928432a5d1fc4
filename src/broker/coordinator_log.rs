//! What the coordinators a broker hosts (consumer groups, transactions) share about the
//! partitions of their internal topic: which ones this broker leads and in which term,
//! reading a partition's committed records when its new leader may load them, and the
//! writer that appends one leadership's records in order and releases what follows each
//! only once it is durable.
//!
//! - **Loading.** A partition led in a term is loaded once its leader has committed an
//!   entry of that term: then every entry an earlier leader had acknowledged is
//!   committed, and in what is read.
//! - **Writes.** One writer task per loaded partition appends its jobs with acks=all,
//!   only in the term the coordinator was loaded for ([`ClusterNode::submit_in_term`]),
//!   and runs what follows a job once it and every job before it committed. A write that
//!   fails or times out fails every later job of that leadership and reports it
//!   (`on_failure`): the owner drops the partition's state and loads it again. The one
//!   exception is a batch the leader refuses for its producer (a zombie's
//!   TxnOffsetCommit, fenced by its epoch): nothing of it was written, so only that job
//!   fails, with the producer's error.

use crate::cluster::{AppendOrigin, ClusterNode, ProduceError, TxnAppend, Wait};
use crate::coordinator_shards::Shards;
use crate::error::ApiError;
use crate::log::batch::BatchHeader;
use crate::metadata::CreateTopic;
use bytes::Bytes;
use kafka_protocol::ResponseError;
use std::collections::BTreeMap;
use std::ops::DerefMut;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Jobs queued for one partition's writer before the partition is reloaded instead.
const WRITE_QUEUE: usize = 4096;
/// Jobs a writer proposes back to back before waiting for them.
const WRITE_BATCH_JOBS: usize = 64;
/// How long a write may take to commit (Kafka's `offsets.commit.timeout.ms`).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read at a time while loading a partition.
const LOAD_READ_BYTES: usize = 1 << 20;

/// Runs once the job it follows (and every job before it) is durable, or failed.
pub type Then = Box<dyn FnOnce(Result<(), ResponseError>) + Send>;

/// One append (or none: the job only orders what follows it) and what follows it.
pub struct WriteJob {
    pub batch: Option<Bytes>,
    /// How the batch was verified with the transaction coordinator (a TxnOffsetCommit's;
    /// the coordinators' own records are `Unchecked`).
    pub txn: TxnAppend,
    pub then: Vec<Then>,
}

impl WriteJob {
    pub fn fail(self, error: ResponseError) {
        for then in self.then {
            then(Err(error));
        }
    }
}

/// The writer of one partition in one leadership.
pub struct PartitionWriter {
    pub epoch: i32,
    jobs: mpsc::Sender<WriteJob>,
    /// Set when the leadership's state is dropped: queued jobs are failed, not written.
    retired: Arc<AtomicBool>,
}

impl PartitionWriter {
    /// Starts the writer task of `topic`-`partition` for the leadership of `epoch`.
    pub fn start(
        node: Arc<ClusterNode>,
        topic: &'static str,
        partition: i32,
        epoch: i32,
        on_failure: impl Fn(ResponseError) + Send + 'static,
    ) -> PartitionWriter {
        let (jobs, queue) = mpsc::channel(WRITE_QUEUE);
        let retired = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            node,
            topic,
            partition,
            epoch,
            retired: retired.clone(),
        };
        tokio::spawn(writer.run(queue, on_failure));
        PartitionWriter {
            epoch,
            jobs,
            retired,
        }
    }

    /// Queues jobs in order. False when the queue is full: the jobs that did not fit
    /// failed (COORDINATOR_NOT_AVAILABLE) and the owner must load the partition again,
    /// since its coordinator's state already moved on.
    pub fn queue(&self, jobs: Vec<WriteJob>) -> bool {
        let mut overflow = false;
        for job in jobs {
            if overflow {
                job.fail(ResponseError::CoordinatorNotAvailable);
                continue;
            }
            if let Err(e) = self.jobs.try_send(job) {
                overflow = true;
                let job = match e {
                    mpsc::error::TrySendError::Full(job)
                    | mpsc::error::TrySendError::Closed(job) => job,
                };
                job.fail(ResponseError::CoordinatorNotAvailable);
            }
        }
        !overflow
    }

    /// Ends the leadership: jobs still queued fail with NOT_COORDINATOR.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
    }
}

struct Writer {
    node: Arc<ClusterNode>,
    topic: &'static str,
    partition: i32,
    epoch: i32,
    retired: Arc<AtomicBool>,
}

impl Writer {
    async fn run(self, mut queue: mpsc::Receiver<WriteJob>, on_failure: impl Fn(ResponseError)) {
        let mut failed: Option<ResponseError> = None;
        while let Some(first) = queue.recv().await {
            let mut jobs = vec![first];
            while jobs.len() < WRITE_BATCH_JOBS {
                match queue.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            let mut tickets = Vec::with_capacity(jobs.len());
            // (Jobs hold what runs after them, which is not `Sync`: no borrow of them
            // lives across an await.)
            let batches: Vec<(Option<Bytes>, TxnAppend)> = jobs
                .iter()
                .map(|job| (job.batch.clone(), job.txn))
                .collect();
            for (batch, txn) in batches {
                if failed.is_none() && self.retired.load(Ordering::SeqCst) {
                    failed = Some(ResponseError::NotCoordinator);
                }
                let Some(batch) = batch.filter(|_| failed.is_none()) else {
                    tickets.push(None);
                    continue;
                };
                let submitted = self
                    .node
                    .submit_in_term(
                        self.topic,
                        self.partition,
                        vec![batch],
                        Wait::Commit,
                        Some(self.epoch as u64),
                        AppendOrigin::Coordinator,
                        txn,
                    )
                    .await;
                match submitted {
                    Ok(ticket) => tickets.push(Some(ticket)),
                    Err(_) => {
                        failed = Some(ResponseError::NotCoordinator);
                        tickets.push(None);
                    }
                }
            }
            let mut first_failure = None;
            for (job, ticket) in jobs.into_iter().zip(tickets) {
                let outcome = match (first_failure, ticket) {
                    (Some(e), _) => Err(e),
                    (None, None) => failed.map_or(Ok(()), Err),
                    // Planted bug: answered once proposed, committed or not.
                    (None, Some(_)) if crate::planted::on("group-ack-before-durable") => Ok(()),
                    (None, Some(ticket)) => match tokio::time::timeout(WRITE_TIMEOUT, ticket).await
                    {
                        Ok(Ok(Ok(_))) => Ok(()),
                        Ok(Ok(Err(
                            refused @ (ProduceError::Sequence(_) | ProduceError::TxnNotVerified),
                        ))) => {
                            // Refused for its producer before it was proposed (a stale
                            // epoch, or a verification a marker voided): nothing was
                            // written, the jobs after it stand.
                            job.fail(refused.kafka_error());
                            continue;
                        }
                        Ok(_) => Err(ResponseError::NotCoordinator),
                        Err(_) => Err(ResponseError::CoordinatorNotAvailable),
                    },
                };
                match outcome {
                    Ok(()) => {
                        for then in job.then {
                            then(Ok(()));
                        }
                    }
                    Err(e) => {
                        first_failure = Some(e);
                        job.fail(e);
                    }
                }
            }
            if let Some(e) = first_failure.or(failed) {
                failed = Some(e);
                if !self.retired.swap(true, Ordering::SeqCst) {
                    tracing::warn!(topic = self.topic, partition = self.partition, epoch = self.epoch, error = ?e,
                        "a coordinator write failed: the partition is loaded again from the log");
                    on_failure(e);
                }
            }
        }
    }
}

/// What following the leadership of a coordinator topic needs of a service's state:
/// its host (made once the topic exists, for its partition count), the partitions it
/// holds a writer for, and how it drops one partition's state.
pub trait HostingState {
    type Coordinator;
    type Host: DerefMut<Target = Shards<Self::Coordinator>>;
    fn host(&mut self) -> &mut Option<Self::Host>;
    /// Partitions with a writer here.
    fn held(&self) -> Vec<i32>;
    /// Drops `partition`'s state here: its shard, its writer (queued jobs fail), and
    /// whatever the service keeps beside them.
    fn resign(&mut self, partition: i32);
}

/// Drops the state of every partition held.
pub fn resign_all<S: HostingState>(state: &mut S) {
    for partition in state.held() {
        state.resign(partition);
    }
}

/// Brings `state`'s host in line with the partitions of `topic` (of `partitions`,
/// `None` while the topic does not exist) that this broker leads: a new partition count
/// makes a new host (`new_host`), a partition led in a new term starts loading, one no
/// longer led is resigned. Returns the (partition, epoch) leaderships to load.
pub fn follow_leadership<S: HostingState>(
    state: &mut S,
    node: &ClusterNode,
    topic: &str,
    partitions: Option<i32>,
    new_host: impl FnOnce(i32) -> S::Host,
) -> Vec<(i32, i32)> {
    let Some(partitions) = partitions else {
        // Not created yet (or gone): nothing is coordinated here.
        resign_all(state);
        *state.host() = None;
        return Vec::new();
    };
    if state.host().as_ref().map(|h| h.partitions()) != Some(partitions) {
        resign_all(state);
        *state.host() = Some(new_host(partitions));
    }
    let mut to_load = Vec::new();
    for partition in 0..partitions {
        let leading = leader_term(node, topic, partition);
        let held = state.host().as_ref().and_then(|h| h.epoch(partition));
        match (leading, held) {
            (Some(term), Some(epoch)) if term == epoch => {}
            (Some(term), _) => {
                state.resign(partition);
                if let Some(host) = state.host().as_mut() {
                    host.became_leader(partition, term);
                }
                to_load.push((partition, term));
            }
            (None, Some(_)) => state.resign(partition),
            (None, None) => {}
        }
    }
    to_load
}

/// Reads what a load of `partition` for the leadership of `epoch` replays, as `read`
/// returns it (`Ok(None)`: not readable yet), asking again every `tick` while
/// `still_wanted`; `None` once the leadership is no longer wanted. A read error is
/// logged once.
pub async fn read_for_load<T>(
    topic: &str,
    partition: i32,
    epoch: i32,
    tick: Duration,
    still_wanted: impl Fn() -> bool,
    mut read: impl FnMut() -> Result<Option<T>, String>,
) -> Option<T> {
    let mut warned = false;
    loop {
        if !still_wanted() {
            return None;
        }
        match read() {
            Ok(Some(records)) => return Some(records),
            Ok(None) => {}
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(topic, partition, epoch, error = %e, "could not read a coordinator partition to load it; retrying");
            }
            Err(_) => {}
        }
        tokio::time::sleep(tick).await;
    }
}

/// Creates a coordinator's internal topic, compacted (only the latest record of each key
/// matters), with `replication_factor` replicas at most the cluster's size. Like Kafka,
/// it waits (COORDINATOR_NOT_AVAILABLE) until that many brokers are up, so that a broker
/// starting late does not leave the topic with fewer replicas for good. Ok if it exists.
pub async fn create_internal_topic(
    node: &ClusterNode,
    topic: &str,
    partitions: i32,
    replication_factor: i16,
) -> Result<(), ApiError> {
    let cluster_size = node.config.peers.len().max(1);
    let replication_factor = (replication_factor.max(1) as usize).min(cluster_size) as i16;
    let live = node.with_image(|image| image.brokers.values().filter(|b| !b.fenced).count());
    if live < replication_factor as usize {
        return Err(ApiError::new(
            ResponseError::CoordinatorNotAvailable,
            format!("{topic} needs {replication_factor} live brokers; {live} are registered"),
        ));
    }
    let request = CreateTopic {
        name: topic.to_string(),
        partitions: Some(partitions),
        replication_factor: Some(replication_factor),
        assignments: None,
        configs: BTreeMap::from([("cleanup.policy".to_string(), "compact".to_string())]),
    };
    match node.create_topic(request).await {
        Ok(_) => {
            tracing::info!(partitions, replication_factor, "created {topic}");
            Ok(())
        }
        Err(e) if e.code == ResponseError::TopicAlreadyExists => Ok(()),
        Err(e) => Err(ApiError::new(
            ResponseError::CoordinatorNotAvailable,
            format!("creating {topic}: {}", e.message),
        )),
    }
}

/// The partition count of `topic`, once it exists.
pub fn partition_count(node: &ClusterNode, topic: &str) -> Option<i32> {
    node.with_image(|image| {
        image
            .topics
            .get(topic)
            .map(|t| t.partitions.len() as i32)
            .filter(|n| *n > 0)
    })
}

/// The live broker leading `topic`-`partition` (FindCoordinator's answer).
pub fn live_leader(node: &ClusterNode, topic: &str, partition: i32) -> Result<i32, ApiError> {
    node.with_image(|image| {
        let leader = image.partition(topic, partition).map_or(-1, |p| p.leader);
        match image.brokers.get(&leader) {
            Some(b) if !b.fenced => Ok(leader),
            _ => Err(ApiError::new(
                ResponseError::CoordinatorNotAvailable,
                format!("{topic}-{partition} has no leader yet"),
            )),
        }
    })
}

/// The Kafka listener address `broker` registered, if it is known and parses.
pub fn kafka_address(node: &ClusterNode, broker: i32) -> Option<std::net::SocketAddr> {
    let (host, port) =
        node.with_image(|image| image.brokers.get(&broker).map(|b| (b.host.clone(), b.port)))?;
    let port = u16::try_from(port).ok()?;
    format!("{host}:{port}").parse().ok()
}

/// The term in which this broker leads `topic`-`partition`, if it does.
pub fn leader_term(node: &ClusterNode, topic: &str, partition: i32) -> Option<i32> {
    node.replica(topic, partition)
        .map(|r| r.leader())
        .filter(|(leader, _)| *leader == node.config.node_id)
        .map(|(_, term)| i32::try_from(term).unwrap_or(i32::MAX))
}

/// Every committed batch of `topic`-`partition` (in chunks of whole batches), once this
/// broker, leading it in `epoch`, has committed an entry of that term (None before).
pub fn read_committed(
    node: &ClusterNode,
    topic: &str,
    partition: i32,
    epoch: i32,
) -> Result<Option<Vec<Bytes>>, String> {
    let Some(replica) = node.replica(topic, partition) else {
        return Ok(None);
    };
    let storage = replica.storage.lock();
    let commit = storage.hard_state().commit;
    // Planted bug: load whatever this leader knows committed, at once.
    if storage.term(commit).ok() != Some(epoch as u64)
        && !crate::planted::on("group-load-before-term-commit")
    {
        return Ok(None);
    }
    let Some(upper) = storage.position(commit).map(|p| p.next_offset) else {
        return Ok(None);
    };
    let log = storage.log();
    let mut offset = log.log_start_offset();
    let mut chunks = Vec::new();
    while offset < upper {
        let bytes = match log.read(offset, LOAD_READ_BYTES, upper, true) {
            Ok(bytes) => bytes,
            Err(e) => {
                if matches!(e, crate::log::ReadError::Corrupt { .. }) {
                    // Damage on this disk: the driver repairs the entry from a replica
                    // (this broker leads no more meanwhile), as for a fetch.
                    storage.mark_corrupt_from_offset(offset);
                }
                return Err(format!("reading at {offset}: {e}"));
            }
        };
        if bytes.is_empty() {
            // Committed entries cover every offset below `upper`: a hole is damage,
            // never the end of what there is to load.
            return Err(format!("nothing to read at {offset}, below {upper}"));
        }
        let mut position = 0;
        while position < bytes.len() {
            let header = BatchHeader::parse(&bytes[position..]).map_err(|e| e.to_string())?;
            offset = header.next_offset();
            position += header.size_bytes();
        }
        chunks.push(bytes);
    }
    Ok(Some(chunks))
}
