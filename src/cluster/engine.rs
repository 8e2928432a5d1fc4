//! The cluster node and its driver task (see the module comment in `mod.rs`).

use super::metadata_reads::MetadataReads;
use crate::clock;
use crate::error::ApiError;
use crate::log::config::effective_config;
use crate::log::{LogConfig, ReadError};
use crate::metadata::log_codec::{decode_batch, encode_batch};
use crate::metadata::records::{
    AllocateProducerIds, BrokerRef, ClusterIdentity, MetadataRecord, PartitionChange, Record,
    RegisterBroker,
};
use crate::metadata::{Controller, ControllerConfig, CreateTopic, MetadataImage, PlacementSeed};
use crate::replication::driver::{
    Driver, DriverConfig, DriverError, GroupId, GroupMessage, RoundOutput,
};
use crate::replication::transport::{serve_peers, Transport};
use crate::replication::{ReplicaLog, ReplicaStorage};
use crate::storage::Storage;
use bytes::Bytes;
use kafka_protocol::ResponseError;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

mod compaction;
mod idempotence;
pub mod txn_verification;

use txn_verification::{TxnAppend, TxnVerifications};

/// The Raft group of the cluster metadata log.
pub const METADATA_GROUP: &str = "__cluster_metadata-0";
/// Commands queued for the driver task before producers are pushed back.
const COMMAND_QUEUE: usize = 4096;
/// Inputs taken per wake-up before a round runs, so one round covers a burst.
const INPUTS_PER_ROUND: usize = 256;
/// Ticks between two runs of the leader balancer.
const BALANCE_EVERY_TICKS: u64 = 50;
/// Ticks between two checks of the in-sync replicas of the partitions led here.
const ISR_CHECK_EVERY_TICKS: u64 = 10;
/// How long an admin change waits for its record to be applied.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a metadata read waits for the leader's read point before asking again, and
/// the pause before it does.
const READ_RETRY: Duration = Duration::from_secs(1);
const READ_RETRY_PAUSE: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub node_id: u64,
    /// Inter-broker (Raft) address of every voter, this broker included.
    pub peers: BTreeMap<u64, SocketAddr>,
    pub data_dir: PathBuf,
    pub log_defaults: LogConfig,
    /// Where Kafka clients reach this broker.
    pub kafka_host: String,
    pub kafka_port: i32,
    pub tick_ms: u64,
    pub driver: DriverConfig,
    pub default_partitions: i32,
    pub default_replication_factor: i16,
    /// A broker the metadata leader has not heard from for this long is fenced: Metadata
    /// stops naming it and nothing new is placed on it, until it is heard from again.
    pub session_timeout_ms: u64,
    pub seed: u64,
    /// Where each replica's recovery scan starts (by directory name; absent: 0, a full
    /// scan). `i64::MAX` for every replica after a clean shutdown.
    pub recovery_points: RecoveryPoints,
}

/// Recovery points read from the last checkpoint.
#[derive(Debug, Clone, Default)]
pub struct RecoveryPoints {
    /// The last shutdown was clean: no replica needs a scan.
    pub clean_shutdown: bool,
    pub by_dir: BTreeMap<String, i64>,
}

impl RecoveryPoints {
    fn get(&self, dir: &str) -> i64 {
        if self.clean_shutdown {
            i64::MAX
        } else {
            self.by_dir.get(dir).copied().unwrap_or(0)
        }
    }
}

/// File in each partition directory naming the topic id it belongs to, so that a
/// directory left from a deleted topic is never taken for a new topic of the same name.
const PARTITION_METADATA_FILE: &str = "partition.metadata";

/// In the data directory: `directory.id = N`, the id this disk registers with (see
/// `RegisterBroker::directory_id`), chosen when the directory is first used.
pub(super) const DIRECTORY_ID_FILE: &str = "directory.id";

/// Mixed into the broker's seed for the generator that picks a new directory id.
const DIRECTORY_ID_STREAM: u64 = 0x6469_7265_6374_6f72;

/// How long a producer waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// acks=all: committed by a quorum (each member fsynced).
    Commit,
    /// acks=1: persisted by the leader.
    LocalAppend,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProduceError {
    #[error("not the leader (leader: {leader})")]
    NotLeader { leader: u64 },
    #[error("unknown topic or partition")]
    UnknownPartition,
    #[error("the entry was replaced after a leader change")]
    Superseded,
    #[error("storage: {0}")]
    Storage(String),
    #[error("the broker is stopping")]
    Stopped,
    #[error("{0}")]
    Sequence(crate::log::producer_state::SequenceError),
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    #[error("{0}")]
    Marker(crate::log::producer_state::MarkerError),
    #[error("the partition was not verified to be in the producer's ongoing transaction")]
    TxnNotVerified,
}

impl ProduceError {
    pub fn kafka_error(&self) -> ResponseError {
        match self {
            ProduceError::NotLeader { .. } | ProduceError::Superseded | ProduceError::Stopped => {
                ResponseError::NotLeaderOrFollower
            }
            ProduceError::UnknownPartition => ResponseError::UnknownTopicOrPartition,
            ProduceError::Storage(_) => ResponseError::KafkaStorageError,
            ProduceError::Sequence(e) => e.kafka_error(),
            ProduceError::InvalidRecord(_) => ResponseError::InvalidRecord,
            ProduceError::Marker(e) => e.kafka_error(),
            ProduceError::TxnNotVerified => ResponseError::InvalidTxnState,
        }
    }
}

/// A partition replica hosted on this broker.
pub struct Replica {
    pub topic: String,
    pub topic_id: uuid::Uuid,
    pub partition: i32,
    pub storage: ReplicaStorage,
    /// Corrupt batches already logged (each is logged once).
    corruption_reported: Mutex<std::collections::BTreeSet<(i64, u64)>>,
    /// Offset after the last committed entry: consumers read below it.
    high_watermark: AtomicI64,
    leader: AtomicU64,
    term: AtomicU64,
}

impl Replica {
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark.load(Ordering::Acquire)
    }

    /// The last stable offset: `read_committed` consumers read below it (the oldest
    /// transaction not yet ended by a committed marker, else the high watermark). A
    /// function of the log and the high watermark, so every replica computes the same.
    pub fn last_stable_offset(&self) -> i64 {
        let high_watermark = self.high_watermark();
        self.storage.lock().log().last_stable_offset(high_watermark)
    }

    /// The leader this replica knows (0: none) and its term.
    pub fn leader(&self) -> (u64, u64) {
        (
            self.leader.load(Ordering::Acquire),
            self.term.load(Ordering::Acquire),
        )
    }

    /// The Kafka leader epoch: the Raft term (stamped as partitionLeaderEpoch on every
    /// batch the leader of that term appended).
    pub fn leader_epoch(&self) -> i32 {
        i32::try_from(self.term.load(Ordering::Acquire)).unwrap_or(i32::MAX)
    }

    /// Logs a corrupt batch the first time it is seen (reads keep refusing it).
    pub fn report_corruption(&self, segment_base_offset: i64, position: u64) {
        let mut seen = self
            .corruption_reported
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if seen.len() < 1024 && seen.insert((segment_base_offset, position)) {
            tracing::error!(topic = %self.topic, partition = self.partition, segment_base_offset, position,
                "corrupt record batch on disk: CRC32C mismatch; it will not be served");
        }
    }
}

/// Why a read or write cannot be served by this broker's replica of a partition.
pub fn check_leader_epoch(
    replica: &Replica,
    current_leader_epoch: i32,
) -> Result<(), ResponseError> {
    let epoch = replica.leader_epoch();
    match current_leader_epoch {
        -1 => Ok(()),
        e if e > epoch => Err(ResponseError::UnknownLeaderEpoch),
        e if e < epoch => Err(ResponseError::FencedLeaderEpoch),
        _ => Ok(()),
    }
}

/// Who appends a batch (Kafka's `AppendOrigin`): a client's idempotent batches must
/// carry sequence numbers; a coordinator appending to its internal topic (a
/// TxnOffsetCommit's transactional batch) writes none, and only its producer epoch is
/// checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOrigin {
    Client,
    Coordinator,
}

/// What the driver task checks before proposing a produce's batches.
struct ProposalChecks {
    /// Proposed only if this broker leads the group in this term (None: any term).
    in_term: Option<u64>,
    origin: AppendOrigin,
    txn: TxnAppend,
}

enum Command {
    /// Batches of one produce request for one partition, proposed back to back.
    Propose {
        group: GroupId,
        batches: Vec<Bytes>,
        wait: Wait,
        /// Proposed only if this broker leads the group in this term (None: any term).
        in_term: Option<u64>,
        origin: AppendOrigin,
        /// The KIP-890 verification of a client's transactional batch.
        txn: TxnAppend,
        reply: oneshot::Sender<Result<i64, ProduceError>>,
    },
    ProposeMetadata {
        records: Vec<MetadataRecord>,
    },
    /// A linearizable read point of the metadata image (see `metadata_reads`): answered
    /// once the image applied everything the quorum had committed when it was asked.
    ReadMetadata {
        reply: oneshot::Sender<()>,
    },
    /// Stop the driver task (clean shutdown); answered once it stopped.
    Stop {
        done: oneshot::Sender<()>,
    },
}

/// A producer waiting for the last entry of its proposal.
struct Pending {
    term: u64,
    /// Raft index of the proposal's first entry (its offset is the answer).
    first_index: u64,
    wait: Wait,
    reply: oneshot::Sender<Result<i64, ProduceError>>,
    /// The proposal's batches, kept only for the planted bug `duplicate-on-retry`.
    #[cfg(feature = "planted-bugs")]
    batches: Vec<Bytes>,
}

/// Producers waiting, by (group, Raft index of the entry they wait for). Several may
/// wait for one entry: a retried idempotent batch waits for its original.
type PendingMap = BTreeMap<(GroupId, u64), Vec<Pending>>;

/// A producer's place in line: await it for the base offset.
pub type ProduceTicket = oneshot::Receiver<Result<i64, ProduceError>>;

pub struct ClusterNode {
    pub config: ClusterConfig,
    storage: Arc<dyn Storage>,
    incarnation_id: u64,
    image: RwLock<MetadataImage>,
    replicas: RwLock<BTreeMap<GroupId, Arc<Replica>>>,
    commands: mpsc::Sender<Command>,
    metadata_storage: ReplicaStorage,
    /// Leader of the metadata quorum as this broker knows it (0: none).
    metadata_leader: AtomicU64,
    image_version: watch::Sender<i64>,
    data_version: watch::Sender<u64>,
    /// Set once when the driver task gives up on a storage error: this broker's logs can
    /// no longer be trusted (after a failed fsync the data may never reach the disk), so
    /// the process must exit and restart from what is durable.
    failure: watch::Sender<Option<String>>,
    rng: Mutex<rand::rngs::StdRng>,
    /// See `DIRECTORY_ID_FILE`.
    directory_id: u64,
    /// Only the driver task touches it.
    metadata_reads: Mutex<MetadataReads>,
    /// KIP-890 verification guards of the partitions this broker leads: taken by the
    /// produce handler, checked and removed by the driver task.
    txn_verifications: Mutex<TxnVerifications>,
}

/// This disk's directory id (`DIRECTORY_ID_FILE`), chosen and written down when the
/// file is missing (a new or wiped disk) or unreadable (damage: a new id only makes more
/// replicas wait for a leader before they vote).
pub(super) fn directory_id(
    storage: &dyn Storage,
    data_dir: &std::path::Path,
    rng: &mut rand::rngs::StdRng,
) -> io::Result<u64> {
    let path = data_dir.join(DIRECTORY_ID_FILE);
    match crate::storage::read_to_vec(storage, &path) {
        Ok(contents) => {
            let parsed = std::str::from_utf8(&contents)
                .ok()
                .and_then(|text| text.trim().strip_prefix("directory.id = "))
                .and_then(|n| n.parse::<u64>().ok())
                .filter(|id| *id != 0);
            if let Some(id) = parsed {
                return Ok(id);
            }
            tracing::warn!(path = %path.display(), "unreadable directory id: choosing a new one");
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let id = rng.gen_range(1..=u64::MAX);
    storage.create_dir_all(data_dir)?;
    let contents = format!("directory.id = {id}\n");
    crate::storage::write_atomic(storage, &path, contents.as_bytes())?;
    Ok(id)
}

fn group_of(topic: &str, partition: i32) -> GroupId {
    format!("{topic}-{partition}")
}

impl ClusterNode {
    /// Opens the metadata replica (rebuilding the image from its committed records) and
    /// every partition replica the image places here, then starts the driver task, the
    /// peer listener and registration.
    ///
    /// `raft_listener` accepts the other voters' connections; a cluster of one needs none.
    pub async fn start(
        config: ClusterConfig,
        storage: Arc<dyn Storage>,
        raft_listener: Option<TcpListener>,
    ) -> io::Result<Arc<ClusterNode>> {
        assert!(
            config.peers.contains_key(&config.node_id),
            "this broker must be one of the voters"
        );
        let voters: Vec<u64> = config.peers.keys().copied().collect();
        let metadata_config = LogConfig {
            retention_ms: -1,
            retention_bytes: -1,
            ..config.log_defaults.clone()
        };
        let mut metadata_replica = ReplicaLog::open(
            storage.clone(),
            &config.data_dir.join(METADATA_GROUP),
            metadata_config,
            config.recovery_points.get(METADATA_GROUP),
            &voters,
        )?;
        let mut image = MetadataImage::new();
        replay_committed(&mut metadata_replica, &mut image, voters.len() > 1)?;
        let fresh_metadata = metadata_replica.last_index() == 0;
        let metadata_applied = metadata_replica.hard_state().commit;
        let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
        let mut driver = Driver::new(config.node_id, config.driver, rng.gen());
        driver
            .add_group(METADATA_GROUP.to_string(), metadata_replica)
            .map_err(to_io)?;
        // The first voter starts the first election; a voter alone needs no timeout.
        if (fresh_metadata && config.node_id == voters[0]) || voters.len() == 1 {
            driver.campaign(METADATA_GROUP).map_err(to_io)?;
        }
        let metadata_storage = driver.storage(METADATA_GROUP).expect("just added").clone();
        // Its own stream, so choosing it draws nothing from the broker's generator.
        let mut directory_rng =
            rand::rngs::StdRng::seed_from_u64(config.seed ^ DIRECTORY_ID_STREAM);
        let directory_id = directory_id(storage.as_ref(), &config.data_dir, &mut directory_rng)?;
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let node = Arc::new(ClusterNode {
            incarnation_id: rng.gen(),
            storage,
            image: RwLock::new(image),
            replicas: RwLock::new(BTreeMap::new()),
            commands,
            metadata_storage,
            metadata_leader: AtomicU64::new(0),
            image_version: watch::channel(-1).0,
            data_version: watch::channel(0).0,
            failure: watch::channel(None).0,
            rng: Mutex::new(rng),
            directory_id,
            metadata_reads: Mutex::new(MetadataReads::new(metadata_applied)),
            txn_verifications: Mutex::default(),
            config,
        });
        node.reconcile(&mut driver)?;
        // Directories the replayed image does not place here are not removed yet: the
        // image holds only what this replica knew committed when it stopped (the commit
        // index is persisted a round late, and damage can cut the log), so a topic created
        // just before may be missing from it while its replica here holds acknowledged
        // entries (found by the simulator: a restart deleted such a replica). Orphans are
        // removed once this broker's registration is applied (`register`): the image then
        // holds every record committed before it.
        let transport = Transport::start(node.config.node_id, &node.config.peers);
        let (inbox_tx, inbox) = mpsc::channel(1024);
        if let Some(listener) = raft_listener {
            tokio::spawn(serve_peers(listener, inbox_tx));
        }
        tokio::spawn(node.clone().run(driver, transport, inbox, command_rx));
        tokio::spawn(node.clone().register());
        Ok(node)
    }

    /// A copy of the whole metadata image (admin and Metadata answers).
    pub fn image(&self) -> MetadataImage {
        self.image.read().unwrap().clone()
    }

    /// Reads the metadata image in place (hot paths: copy only what they need).
    pub fn with_image<T>(&self, read: impl FnOnce(&MetadataImage) -> T) -> T {
        read(&self.image.read().unwrap())
    }

    /// How many reads found a corrupt batch in this broker's replica logs (metadata
    /// included) since they were opened: damage on the disk, repaired from peers.
    pub fn corrupt_reads(&self) -> u64 {
        let replicas: Vec<Arc<Replica>> = self.replicas.read().unwrap().values().cloned().collect();
        self.metadata_storage.lock().log().corrupt_reads()
            + replicas
                .iter()
                .map(|r| r.storage.lock().log().corrupt_reads())
                .sum::<u64>()
    }

    /// How many of this broker's replica logs (metadata included) came back from the
    /// disk without entries they had made durable (see `ReplicaLog::lost_barrier`).
    pub fn replicas_that_lost_entries(&self) -> usize {
        let replicas: Vec<Arc<Replica>> = self.replicas.read().unwrap().values().cloned().collect();
        usize::from(self.metadata_storage.lock().lost_barrier().is_some())
            + replicas
                .iter()
                .filter(|r| r.storage.lock().lost_barrier().is_some())
                .count()
    }

    pub fn replica(&self, topic: &str, partition: i32) -> Option<Arc<Replica>> {
        self.replicas
            .read()
            .unwrap()
            .get(&group_of(topic, partition))
            .cloned()
    }

    /// Leader of the metadata quorum as this broker knows it (0: none known).
    pub fn metadata_leader(&self) -> u64 {
        self.metadata_leader.load(Ordering::Acquire)
    }

    pub fn subscribe_image(&self) -> watch::Receiver<i64> {
        self.image_version.subscribe()
    }

    pub fn subscribe_data(&self) -> watch::Receiver<u64> {
        self.data_version.subscribe()
    }

    /// Appends one validated batch through the partition's Raft group (on its leader).
    pub async fn produce(
        &self,
        topic: &str,
        partition: i32,
        batch: Bytes,
        wait: Wait,
    ) -> Result<i64, ProduceError> {
        let ticket = self.submit(topic, partition, vec![batch], wait).await?;
        ticket.await.map_err(|_| ProduceError::Stopped)?
    }

    /// Queues validated batches for the partition's Raft group, proposed back to back in
    /// the order given (and after anything submitted before). Returns once queued; the
    /// ticket answers with the first batch's base offset when `wait` is met.
    pub async fn submit(
        &self,
        topic: &str,
        partition: i32,
        batches: Vec<Bytes>,
        wait: Wait,
    ) -> Result<ProduceTicket, ProduceError> {
        self.submit_in_term(
            topic,
            partition,
            batches,
            wait,
            None,
            AppendOrigin::Client,
            TxnAppend::Unchecked,
        )
        .await
    }

    /// [`ClusterNode::submit`] of a client's batch cleared by the KIP-890 check `txn`
    /// (see `txn_verification`).
    pub async fn submit_transactional(
        &self,
        topic: &str,
        partition: i32,
        batches: Vec<Bytes>,
        wait: Wait,
        txn: TxnAppend,
    ) -> Result<ProduceTicket, ProduceError> {
        let checks = ProposalChecks {
            in_term: None,
            origin: AppendOrigin::Client,
            txn,
        };
        self.queue_proposal(topic, partition, batches, wait, checks)
            .await
    }

    /// Whether the log of `topic`-`partition` holds an open transaction of the
    /// producer at `producer_epoch` (its next batches need no verification).
    pub fn txn_open(
        &self,
        topic: &str,
        partition: i32,
        producer_id: i64,
        producer_epoch: i16,
    ) -> bool {
        self.replica(topic, partition).is_some_and(|replica| {
            let storage = replica.storage.lock();
            storage
                .log()
                .producer_state()
                .entry(producer_id)
                .is_some_and(|e| {
                    e.producer_epoch == producer_epoch && e.current_txn_first_offset.is_some()
                })
        })
    }

    /// A KIP-890 verification guard for the producer on `topic`-`partition`, taken
    /// before asking the coordinator, and whether the coordinator already confirmed it
    /// (NOT_LEADER_OR_FOLLOWER unless this broker leads the partition).
    pub fn begin_txn_verification(
        &self,
        topic: &str,
        partition: i32,
        producer_id: i64,
        producer_epoch: i16,
    ) -> Result<(u64, bool), ResponseError> {
        let replica = self
            .replica(topic, partition)
            .ok_or(ResponseError::NotLeaderOrFollower)?;
        let (leader, term) = replica.leader();
        if leader != self.config.node_id {
            return Err(ResponseError::NotLeaderOrFollower);
        }
        let mut verifications = self
            .txn_verifications
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        Ok(verifications.begin(
            &group_of(topic, partition),
            producer_id,
            producer_epoch,
            term,
        ))
    }

    /// The coordinator confirmed `guard` (see [`ClusterNode::begin_txn_verification`]).
    pub fn confirm_txn_verification(
        &self,
        topic: &str,
        partition: i32,
        producer_id: i64,
        guard: u64,
    ) {
        let mut verifications = self
            .txn_verifications
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        verifications.confirm(&group_of(topic, partition), producer_id, guard);
    }

    /// [`ClusterNode::submit`], refused with `NotLeader` unless this broker leads the
    /// partition in `term` (when given): a writer whose state belongs to one leadership
    /// (a group coordinator) never appends in a later one, where another leader may have
    /// written in between. `origin`: a coordinator's own batches carry no sequence.
    /// `txn`: how a TxnOffsetCommit's batch was verified (KIP-890).
    pub async fn submit_in_term(
        &self,
        topic: &str,
        partition: i32,
        batches: Vec<Bytes>,
        wait: Wait,
        term: Option<u64>,
        origin: AppendOrigin,
        txn: TxnAppend,
    ) -> Result<ProduceTicket, ProduceError> {
        let checks = ProposalChecks {
            in_term: term,
            origin,
            txn,
        };
        self.queue_proposal(topic, partition, batches, wait, checks)
            .await
    }

    async fn queue_proposal(
        &self,
        topic: &str,
        partition: i32,
        batches: Vec<Bytes>,
        wait: Wait,
        checks: ProposalChecks,
    ) -> Result<ProduceTicket, ProduceError> {
        assert!(!batches.is_empty(), "a proposal carries at least one batch");
        let (reply, answer) = oneshot::channel();
        let ProposalChecks {
            in_term,
            origin,
            txn,
        } = checks;
        let command = Command::Propose {
            group: group_of(topic, partition),
            batches,
            wait,
            in_term,
            origin,
            txn,
            reply,
        };
        self.commands
            .send(command)
            .await
            .map_err(|_| ProduceError::Stopped)?;
        Ok(answer)
    }

    /// Why the driver task stopped on a storage error, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure.borrow().clone()
    }

    /// Waits until the driver task stops on a storage error; returns the error.
    pub async fn failed(&self) -> String {
        let mut failure = self.failure.subscribe();
        loop {
            if let Some(why) = failure.borrow_and_update().clone() {
                return why;
            }
            if failure.changed().await.is_err() {
                // The node is being dropped; there will be no failure to report.
                std::future::pending::<()>().await;
            }
        }
    }

    /// A (simulated) slow disk: an fsync pass takes time, and a crash may land in it.
    async fn fsync_latency(&self) {
        let latency = self.storage.sync_latency();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }

    /// [`ClusterNode::fail`], answering every waiting producer with the error first.
    fn fail_pending(&self, pending: &mut PendingMap, why: String) {
        for p in std::mem::take(pending).into_values().flatten() {
            let _ = p.reply.send(Err(ProduceError::Storage(why.clone())));
        }
        self.fail(why);
    }

    fn fail(&self, why: String) {
        tracing::error!(error = %why, "storage failure: this broker stops replicating and must restart");
        self.failure.send_if_modified(|failure| {
            if failure.is_none() {
                *failure = Some(why);
                true
            } else {
                false
            }
        });
    }

    /// Stops the driver task: no round runs after this returns, so every log can be
    /// closed. Producers still waiting are answered with `Stopped`.
    pub async fn stop(&self) {
        let (done, stopped) = oneshot::channel();
        if self.commands.send(Command::Stop { done }).await.is_ok() {
            let _ = stopped.await;
        }
    }

    /// Every hosted replica, the metadata log's included, by directory name.
    pub fn replica_storages(&self) -> Vec<(String, ReplicaStorage)> {
        let mut all = vec![(METADATA_GROUP.to_string(), self.metadata_storage.clone())];
        for (group, replica) in self.replicas.read().unwrap().iter() {
            all.push((group.clone(), replica.storage.clone()));
        }
        all
    }

    /// Each replica's recovery point (for the checkpoint file).
    pub fn recovery_points(&self) -> BTreeMap<String, i64> {
        self.replica_storages()
            .into_iter()
            .map(|(dir, storage)| {
                let point = storage.lock().log().recovery_point();
                (dir, point)
            })
            .collect()
    }

    /// Deletes segments past retention on every hosted replica (only committed data).
    pub fn apply_retention(&self, now_ms: i64) {
        let replicas: Vec<Arc<Replica>> = self.replicas.read().unwrap().values().cloned().collect();
        for replica in replicas {
            match replica.storage.lock().apply_retention(now_ms) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(topic = %replica.topic, partition = replica.partition, entries = n, "retention deleted segments")
                }
                Err(e) => {
                    tracing::warn!(topic = %replica.topic, partition = replica.partition, error = %e, "retention failed")
                }
            }
        }
    }

    /// Forgets, on every hosted replica, the producers silent for `expiration_ms`
    /// (`producer.id.expiration.ms`, by their batches' timestamps).
    pub fn expire_producers(&self, now_ms: i64, expiration_ms: i64) {
        let replicas: Vec<Arc<Replica>> = self.replicas.read().unwrap().values().cloned().collect();
        for replica in replicas {
            let expired = replica
                .storage
                .lock()
                .expire_producers(now_ms, expiration_ms);
            if expired > 0 {
                tracing::debug!(topic = %replica.topic, partition = replica.partition, expired, "producer ids expired");
            }
        }
    }

    /// The replica that serves reads and writes of a partition here: this broker must
    /// host it and lead it, and the client's leader epoch (-1: unchecked) must match.
    pub fn leader_replica(
        &self,
        topic: &str,
        partition: i32,
        current_leader_epoch: i32,
    ) -> Result<Arc<Replica>, ResponseError> {
        let Some(replica) = self.replica(topic, partition) else {
            let known = self
                .image
                .read()
                .unwrap()
                .partition(topic, partition)
                .is_some();
            return Err(if known {
                ResponseError::NotLeaderOrFollower
            } else {
                ResponseError::UnknownTopicOrPartition
            });
        };
        check_leader_epoch(&replica, current_leader_epoch)?;
        if replica.leader().0 != self.config.node_id {
            return Err(ResponseError::NotLeaderOrFollower);
        }
        Ok(replica)
    }

    async fn propose_metadata(&self, records: Vec<MetadataRecord>) -> Result<(), ApiError> {
        self.commands
            .send(Command::ProposeMetadata { records })
            .await
            .map_err(|_| ApiError::new(ResponseError::NotController, "the broker is stopping"))
    }

    /// Waits until `done` holds for the image (re-proposing with `retry` every second).
    async fn await_image<T>(
        &self,
        mut done: impl FnMut(&MetadataImage) -> Option<T>,
        retry: Option<Vec<MetadataRecord>>,
    ) -> Result<T, ApiError> {
        let mut version = self.subscribe_image();
        let deadline = tokio::time::Instant::now() + ADMIN_TIMEOUT;
        loop {
            if let Some(result) = done(&self.image.read().unwrap()) {
                return Ok(result);
            }
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return Err(ApiError::new(
                    ResponseError::RequestTimedOut,
                    "the metadata change did not commit in time",
                ));
            }
            match tokio::time::timeout(remaining.min(Duration::from_secs(1)), version.changed())
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    return Err(ApiError::new(
                        ResponseError::NotController,
                        "the broker is stopping",
                    ))
                }
                Err(_) => {
                    if let Some(records) = &retry {
                        self.propose_metadata(records.clone()).await?;
                    }
                }
            }
        }
    }

    /// Brings this broker's metadata image up to everything the metadata quorum had
    /// committed when it was called (a linearizable read through the leader), so that an
    /// admin request is checked against the cluster's metadata, not a lagging copy: a
    /// topic another broker just created exists, one it just deleted does not (found by
    /// the simulator, seed 110599: DeleteTopics answered "unknown topic" from a lagging
    /// image right after the topic's creation was acknowledged).
    pub async fn catch_up_image(&self) -> Result<(), ApiError> {
        let deadline = tokio::time::Instant::now() + ADMIN_TIMEOUT;
        loop {
            let (reply, answered) = oneshot::channel();
            if self
                .commands
                .send(Command::ReadMetadata { reply })
                .await
                .is_err()
            {
                return Err(ApiError::new(
                    ResponseError::NotController,
                    "the broker is stopping",
                ));
            }
            // No leader known, or the request lost with a leader change: ask again.
            if let Ok(Ok(())) = tokio::time::timeout(READ_RETRY, answered).await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::new(
                    ResponseError::RequestTimedOut,
                    "the metadata quorum gave no read point in time",
                ));
            }
            tokio::time::sleep(READ_RETRY_PAUSE).await;
        }
    }

    /// Creates a topic through the metadata log; returns once this broker applied it.
    pub async fn create_topic(&self, request: CreateTopic) -> Result<uuid::Uuid, ApiError> {
        self.catch_up_image().await?;
        let image = self.image();
        let topic_id = uuid::Uuid::from_bytes(self.rng.lock().unwrap().gen());
        let seed = self.placement_seed();
        let record = self
            .controller(&image)
            .create_topic(&image, &request, topic_id, seed)?
            .based_on(image.last_applied_offset);
        self.propose_metadata(vec![record.clone()]).await?;
        let name = request.name.clone();
        self.await_image(
            move |image| match image.topics.get(&name) {
                Some(t) if t.topic_id == topic_id => Some(Ok(topic_id)),
                Some(_) => Some(Err(ApiError::new(
                    ResponseError::TopicAlreadyExists,
                    format!("topic {name} already exists"),
                ))),
                None => None,
            },
            Some(vec![record]),
        )
        .await?
    }

    /// Takes a block of `count` producer ids for this broker through the metadata log:
    /// the block starts where the last granted one ended, and is this broker's once the
    /// image shows it granted to this incarnation (another broker may win the race for
    /// the same start: then it asks again, a few times).
    pub async fn allocate_producer_ids(&self, count: i64) -> Result<i64, ApiError> {
        const ATTEMPTS: usize = 8;
        let me = (self.config.node_id as i32, self.incarnation_id);
        for _ in 0..ATTEMPTS {
            self.catch_up_image().await?;
            let first = self.with_image(|image| image.next_producer_id);
            let record = MetadataRecord::new(Record::AllocateProducerIds(AllocateProducerIds {
                broker_id: me.0,
                incarnation_id: me.1,
                first_producer_id: first,
                count,
            }));
            self.propose_metadata(vec![record.clone()]).await?;
            let granted = self
                .await_image(
                    move |image| match image.producer_id_blocks.get(&first) {
                        Some(owner) => Some(*owner == me),
                        None if image.next_producer_id > first => Some(false),
                        None => None,
                    },
                    Some(vec![record]),
                )
                .await?;
            if granted {
                return Ok(first);
            }
        }
        Err(ApiError::new(
            ResponseError::CoordinatorNotAvailable,
            "no producer id block could be taken",
        ))
    }

    /// Checks a topic creation without making it.
    pub fn validate_create_topic(&self, request: &CreateTopic) -> Result<(), ApiError> {
        let image = self.image();
        self.controller(&image)
            .create_topic(&image, request, uuid::Uuid::nil(), PlacementSeed::default())
            .map(|_| ())
    }

    /// Waits (bounded) until every partition of a topic has a leader recorded.
    pub async fn await_leaders(&self, topic: &str, timeout: Duration) -> bool {
        let done = |image: &MetadataImage| {
            image
                .topics
                .get(topic)
                .filter(|t| t.partitions.iter().all(|p| p.leader_epoch > 0))
                .map(|_| ())
        };
        tokio::time::timeout(timeout, self.await_image(done, None))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false)
    }

    /// Deletes a topic through the metadata log; every replica of it is then dropped.
    pub async fn delete_topic(&self, name: &str) -> Result<uuid::Uuid, ApiError> {
        self.catch_up_image().await?;
        let image = self.image();
        let record = self
            .controller(&image)
            .delete_topic(&image, name)?
            .based_on(image.last_applied_offset);
        let topic_id = image.topics[name].topic_id;
        self.propose_metadata(vec![record.clone()]).await?;
        self.await_image(
            move |image| match image.topics.get(name) {
                Some(t) if t.topic_id == topic_id => None,
                _ => Some(topic_id),
            },
            Some(vec![record]),
        )
        .await
    }

    /// Raises a topic's partition count (or only checks that it could be raised).
    pub async fn create_partitions(
        &self,
        name: &str,
        count: i32,
        validate_only: bool,
    ) -> Result<(), ApiError> {
        self.catch_up_image().await?;
        let image = self.image();
        let seed = self.placement_seed();
        let record = self
            .controller(&image)
            .create_partitions(&image, name, count, seed)?
            .based_on(image.last_applied_offset);
        if validate_only {
            return Ok(());
        }
        self.propose_metadata(vec![record.clone()]).await?;
        let topic_id = image.topics[name].topic_id;
        self.await_image(
            move |image| match image.topics.get(name) {
                Some(t) if t.topic_id == topic_id && t.partitions.len() as i32 >= count => {
                    Some(Ok(()))
                }
                Some(t) if t.topic_id == topic_id => None,
                _ => Some(Err(ApiError::new(
                    ResponseError::UnknownTopicOrPartition,
                    format!("topic {name} was deleted"),
                ))),
            },
            Some(vec![record]),
        )
        .await?
    }

    /// Replaces a topic's config overrides (or only checks them).
    pub async fn set_topic_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), ApiError> {
        self.catch_up_image().await?;
        let image = self.image();
        let record = self
            .controller(&image)
            .set_topic_configs(&image, name, configs.clone())?
            .based_on(image.last_applied_offset);
        effective_config(&self.config.log_defaults, &configs)
            .map_err(|e| ApiError::new(ResponseError::InvalidConfig, e.to_string()))?;
        if validate_only {
            return Ok(());
        }
        self.propose_metadata(vec![record.clone()]).await?;
        self.await_image(
            move |image| match image.topics.get(name) {
                Some(t) if t.configs == configs => Some(Ok(())),
                Some(_) => None,
                None => Some(Err(ApiError::new(
                    ResponseError::UnknownTopicOrPartition,
                    format!("topic {name} was deleted"),
                ))),
            },
            Some(vec![record]),
        )
        .await?
    }

    fn placement_seed(&self) -> PlacementSeed {
        let mut rng = self.rng.lock().unwrap();
        PlacementSeed {
            start_index: rng.gen_range(0..1024),
            shift: rng.gen_range(0..1024),
        }
    }

    /// Waits until this broker is registered and the cluster has an id.
    pub async fn wait_ready(&self) -> Result<(), ApiError> {
        let node_id = self.config.node_id as i32;
        let incarnation = self.incarnation_id;
        loop {
            let ready = |image: &MetadataImage| {
                let registered = image
                    .brokers
                    .get(&node_id)
                    .is_some_and(|b| b.incarnation_id == incarnation && !b.fenced);
                (registered && image.cluster_id.is_some()).then_some(())
            };
            let awaited = tokio::select! {
                awaited = self.await_image(ready, None) => awaited,
                why = self.failed() => {
                    return Err(ApiError::new(
                        ResponseError::KafkaStorageError,
                        format!("storage failure while starting: {why}"),
                    ));
                }
            };
            match awaited {
                Ok(()) => return Ok(()),
                Err(e) if e.code == ResponseError::RequestTimedOut => {
                    tracing::info!("waiting for the metadata quorum");
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn controller(&self, image: &MetadataImage) -> Controller {
        let config = ControllerConfig {
            session_timeout_ms: i64::MAX,
            default_partitions: self.config.default_partitions,
            default_replication_factor: self.config.default_replication_factor,
        };
        Controller::new(config, image, 0)
    }

    /// Registers this broker (and unfences it) until the image shows it.
    async fn register(self: Arc<Self>) {
        let registration = RegisterBroker {
            node_id: self.config.node_id as i32,
            host: self.config.kafka_host.clone(),
            port: self.config.kafka_port,
            rack: None,
            incarnation_id: self.incarnation_id,
            directory_id: self.directory_id,
        };
        let me = BrokerRef {
            node_id: self.config.node_id as i32,
        };
        let mut records = vec![
            MetadataRecord::new(Record::RegisterBroker(registration)),
            MetadataRecord::new(Record::UnfenceBroker(me)),
        ];
        if self.image.read().unwrap().cluster_id.is_none() {
            let cluster_id = random_cluster_id(&mut *self.rng.lock().unwrap());
            records.insert(
                0,
                MetadataRecord::new(Record::ClusterIdentity(ClusterIdentity { cluster_id })),
            );
        }
        let incarnation = self.incarnation_id;
        let node_id = self.config.node_id as i32;
        loop {
            if self.propose_metadata(records.clone()).await.is_err() {
                return;
            }
            let registered = self
                .await_image(
                    |image| {
                        image
                            .brokers
                            .get(&node_id)
                            .filter(|b| b.incarnation_id == incarnation && !b.fenced)
                            .filter(|_| image.cluster_id.is_some())
                            .map(|_| ())
                    },
                    Some(records.clone()),
                )
                .await;
            if registered.is_ok() {
                tracing::info!(node_id, "registered with the cluster");
                if let Err(e) = self.remove_orphan_dirs() {
                    tracing::warn!(error = %e, "could not remove the directories of replicas this broker no longer hosts");
                }
                return;
            }
        }
    }

    /// The metadata offset from which this broker's disk has been part of the cluster
    /// (its first registration with its directory id), `i64::MAX` while the image does
    /// not hold one. A replica placed here before it, with no Raft state on this disk,
    /// was held by a disk that is gone (a wiped or replaced one).
    fn disk_joined_at(&self, image: &MetadataImage) -> i64 {
        image
            .brokers
            .get(&(self.config.node_id as i32))
            .filter(|b| b.directory_id == self.directory_id)
            .map_or(i64::MAX, |b| b.directory_since)
    }

    /// Hosts a replica for every partition the image places here, drops the others
    /// (and the replicas of a deleted topic whose name came back with a new id), and
    /// passes topic config changes on to the hosted logs.
    fn reconcile(&self, driver: &mut Driver) -> io::Result<()> {
        let image = self.image.read().unwrap().clone();
        let me = self.config.node_id as i32;
        let mut replicas = self.replicas.write().unwrap();
        let gone: Vec<GroupId> = replicas
            .iter()
            .filter(|(_, r)| {
                let placed_here = image
                    .partition(&r.topic, r.partition)
                    .is_some_and(|p| p.replicas.contains(&me));
                let same_topic = image
                    .topics
                    .get(&r.topic)
                    .is_some_and(|t| t.topic_id == r.topic_id);
                !(placed_here && same_topic)
            })
            .map(|(group, _)| group.clone())
            .collect();
        for group in gone {
            replicas.remove(&group);
            driver.remove_group(&group);
            let dir = self.config.data_dir.join(&group);
            if let Err(e) = self.storage.remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove a dropped replica; it is removed at next start");
            }
        }
        for topic in image.topics.values() {
            let log_config = effective_config(&self.config.log_defaults, &topic.configs)
                .unwrap_or_else(|_| self.config.log_defaults.clone());
            for (index, p) in topic.partitions.iter().enumerate() {
                let group = group_of(&topic.name, index as i32);
                if !p.replicas.contains(&me) {
                    continue;
                }
                if let Some(replica) = replicas.get(&group) {
                    let mut log = replica.storage.lock();
                    if *log.log().config() != log_config {
                        log.set_log_config(log_config.clone());
                    }
                    continue;
                }
                let dir = self.config.data_dir.join(&group);
                self.claim_partition_dir(&dir, topic.topic_id)?;
                let voters: Vec<u64> = p.replicas.iter().map(|b| *b as u64).collect();
                let replica_log = ReplicaLog::open(
                    self.storage.clone(),
                    &dir,
                    log_config.clone(),
                    self.config.recovery_points.get(&group),
                    &voters,
                )?;
                let fresh = replica_log.last_index() == 0;
                let placed_at = topic.placed_at.get(index).copied().unwrap_or(i64::MAX);
                let replaced_disk = fresh
                    && replica_log.unproven()
                    && voters.len() > 1
                    && placed_at < self.disk_joined_at(&image);
                let high_watermark = committed_offset(&replica_log);
                driver
                    .add_group(group.clone(), replica_log)
                    .map_err(to_io)?;
                if replaced_disk {
                    tracing::info!(group = %group, placed_at,
                        "placed here before this disk joined: votes for nobody until a leader brings it up to date");
                }
                driver
                    .set_replaced_disk(&group, replaced_disk)
                    .map_err(to_io)?;
                // The preferred replica starts the first election, so leaders follow
                // placement; a replica alone needs no election timeout.
                if (fresh && p.replicas[0] == me && !replaced_disk) || voters.len() == 1 {
                    driver.campaign(&group).map_err(to_io)?;
                }
                let storage = driver.storage(&group).expect("just added").clone();
                let replica = Replica {
                    topic: topic.name.clone(),
                    topic_id: topic.topic_id,
                    partition: index as i32,
                    storage,
                    corruption_reported: Mutex::default(),
                    high_watermark: AtomicI64::new(high_watermark),
                    leader: AtomicU64::new(0),
                    term: AtomicU64::new(0),
                };
                replicas.insert(group, Arc::new(replica));
            }
        }
        Ok(())
    }

    /// Makes `dir` the directory of `topic_id`'s partition: a directory left by an
    /// earlier topic of the same name (deleted while this broker was away) is wiped.
    fn claim_partition_dir(&self, dir: &std::path::Path, topic_id: uuid::Uuid) -> io::Result<()> {
        let file = dir.join(PARTITION_METADATA_FILE);
        let wanted = format!("topic_id = \"{}\"\n", topic_id.simple());
        match crate::storage::read_to_vec(self.storage.as_ref(), &file) {
            Ok(found) if found == wanted.as_bytes() => return Ok(()),
            Ok(_) => {
                tracing::info!(dir = %dir.display(), "removing the replica of an earlier topic of the same name");
                self.storage.remove_dir_all(dir)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if self.storage.list_dir(dir).is_ok() {
                    // A directory without the file: written by no finished creation.
                    self.storage.remove_dir_all(dir)?;
                }
            }
            Err(e) => return Err(e),
        }
        self.storage.create_dir_all(dir)?;
        crate::storage::write_atomic(self.storage.as_ref(), &file, wanted.as_bytes())
    }

    /// Removes partition directories that no hosted replica owns (a crash while a
    /// replica was being dropped, or a topic deleted while this broker was down).
    fn remove_orphan_dirs(&self) -> io::Result<()> {
        let data_dir = &self.config.data_dir;
        let hosted = self.replicas.read().unwrap();
        for name in self.storage.list_dir(data_dir)? {
            let looks_like_partition = name
                .rsplit_once('-')
                .is_some_and(|(_, p)| p.parse::<i32>().is_ok());
            let path = data_dir.join(&name);
            if looks_like_partition
                && name != METADATA_GROUP
                && !hosted.contains_key(&name)
                && self.storage.list_dir(&path).is_ok()
            {
                tracing::info!(dir = %path.display(), "removing the files of a replica this broker no longer hosts");
                self.storage.remove_dir_all(&path)?;
            }
        }
        Ok(())
    }

    async fn run(
        self: Arc<Self>,
        mut driver: Driver,
        transport: Transport,
        mut inbox: mpsc::Receiver<(u64, Vec<GroupMessage>)>,
        mut commands: mpsc::Receiver<Command>,
    ) {
        let mut pending: PendingMap = BTreeMap::new();
        let mut ticker = tokio::time::interval(Duration::from_millis(self.config.tick_ms));
        let mut refusals_logged = 0u32;
        // A round's results held back one round (BUGGIFY, simulation only).
        let mut delayed_apply: Option<RoundOutput> = None;
        // Tick at which this broker became the metadata leader (None: it is not).
        let mut metadata_leader_since: Option<u64> = None;
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    if let Err(e) = driver.tick().and_then(|()| driver.scrub()) {
                        self.fail_pending(&mut pending, format!("tick: {e}"));
                        return;
                    }
                    ticks += 1;
                    if ticks.is_multiple_of(BALANCE_EVERY_TICKS) {
                        self.balance_leaders(&mut driver);
                    }
                    if ticks.is_multiple_of(ISR_CHECK_EVERY_TICKS) {
                        self.record_isr_changes(&mut driver);
                        self.check_broker_sessions(&mut driver, &mut metadata_leader_since);
                    }
                }
                Some((sender, batch)) = inbox.recv() => {
                    if let Err(e) = step_batch(&mut driver, sender, batch, &mut refusals_logged) {
                        self.fail_pending(&mut pending, format!("taking a peer's message: {e}"));
                        return;
                    }
                }
                command = commands.recv() => match command {
                    Some(Command::Stop { done }) => {
                        stop(pending, done);
                        return;
                    }
                    Some(command) => self.handle(&mut driver, &mut pending, command),
                    None => return,
                },
            }
            for _ in 0..INPUTS_PER_ROUND {
                match (inbox.try_recv(), commands.try_recv()) {
                    (Err(_), Err(_)) => break,
                    (batch, command) => {
                        if let Ok((sender, batch)) = batch {
                            if let Err(e) =
                                step_batch(&mut driver, sender, batch, &mut refusals_logged)
                            {
                                self.fail_pending(
                                    &mut pending,
                                    format!("taking a peer's message: {e}"),
                                );
                                return;
                            }
                        }
                        match command {
                            Ok(Command::Stop { done }) => {
                                stop(pending, done);
                                return;
                            }
                            Ok(command) => self.handle(&mut driver, &mut pending, command),
                            Err(_) => {}
                        }
                    }
                }
            }
            let written = match driver.write_round(clock::now_ms()) {
                Ok(written) => written,
                Err(e) => {
                    self.fail_pending(&mut pending, format!("replication round: {e}"));
                    return;
                }
            };
            if written.needs_sync() {
                // A crash may land after the entries are written and before they are
                // durable.
                self.fsync_latency().await;
            }
            let synced = match driver.sync_entries(written) {
                Ok(synced) => synced,
                Err(e) => {
                    // An fsync or write failed: nothing after it can be trusted (fsyncgate).
                    self.fail_pending(&mut pending, format!("replication round: {e}"));
                    return;
                }
            };
            if synced.needs_sync() {
                // ... and after they are durable, before the records naming them are.
                self.fsync_latency().await;
            }
            let mut output = match driver.finish_round(synced) {
                Ok(output) => output,
                Err(e) => {
                    // An fsync or write failed: nothing after it can be trusted (fsyncgate).
                    self.fail_pending(&mut pending, format!("replication round: {e}"));
                    return;
                }
            };
            for (to, batch) in std::mem::take(&mut output.outgoing) {
                transport.send(to, batch);
            }
            // BUGGIFY: what committed is applied a round late now and then (answers to
            // producers, high watermarks, metadata records).
            if let Some(earlier) = delayed_apply.take() {
                output.prepend(earlier);
            }
            if crate::buggify::fire(0.05) {
                delayed_apply = Some(output);
                continue;
            }
            if let Err(e) = self.apply(&mut driver, &mut pending, output) {
                self.fail_pending(&mut pending, format!("applying committed entries: {e}"));
                return;
            }
        }
    }

    /// On the metadata leader: fences registered brokers it has not heard from (over any
    /// Raft group) within the session timeout, and unfences fenced ones heard from again.
    /// A new leader waits one session timeout first, so it has heard from everyone alive.
    fn check_broker_sessions(&self, driver: &mut Driver, leader_since: &mut Option<u64>) {
        let me = self.config.node_id;
        let leads = driver
            .leader(METADATA_GROUP)
            .is_some_and(|(leader, _)| leader == me)
            && driver.in_sync_replicas(METADATA_GROUP).is_some();
        if !leads {
            *leader_since = None;
            return;
        }
        let since = *leader_since.get_or_insert(driver.ticks());
        let session_ticks = (self.config.session_timeout_ms / self.config.tick_ms.max(1)).max(1);
        if driver.ticks().saturating_sub(since) < session_ticks {
            return;
        }
        let image = self.image.read().unwrap().clone();
        let mut records = Vec::new();
        for broker in image.brokers.values() {
            if broker.node_id as u64 == me {
                // Fenced by a previous leader while it was away, and leading now: it is
                // alive (found by the simulator: it never unfenced itself, and Metadata
                // showed its partitions without a leader for good).
                if broker.fenced {
                    tracing::info!(
                        node_id = broker.node_id,
                        "the metadata leader was fenced: unfencing itself"
                    );
                    records.push(MetadataRecord::new(Record::UnfenceBroker(BrokerRef {
                        node_id: broker.node_id,
                    })));
                }
                continue;
            }
            let heard = driver
                .ticks_since_heard(broker.node_id as u64)
                .is_some_and(|ticks| ticks < session_ticks);
            let node = BrokerRef {
                node_id: broker.node_id,
            };
            if !broker.fenced && !heard {
                tracing::warn!(
                    node_id = broker.node_id,
                    "broker session expired: fencing it"
                );
                records.push(MetadataRecord::new(Record::FenceBroker(node)));
            } else if broker.fenced && heard {
                tracing::info!(
                    node_id = broker.node_id,
                    "fenced broker heard from again: unfencing it"
                );
                records.push(MetadataRecord::new(Record::UnfenceBroker(node)));
            }
        }
        if !records.is_empty() {
            let batch = encode_batch(&records, clock::now_ms());
            let _ = driver.propose_anywhere(METADATA_GROUP, batch.to_vec());
        }
    }

    /// For every partition led here, records its leadership and in-sync replicas in the
    /// metadata log when the image says otherwise (Metadata's ISR then shows which
    /// replicas are caught up).
    fn record_isr_changes(&self, driver: &mut Driver) {
        let image = self.image.read().unwrap().clone();
        let replicas: Vec<Arc<Replica>> = self.replicas.read().unwrap().values().cloned().collect();
        let me = self.config.node_id as i32;
        let controller = self.controller(&image);
        let mut records = Vec::new();
        for replica in replicas {
            let group = group_of(&replica.topic, replica.partition);
            let Some(in_sync) = driver.in_sync_replicas(&group) else {
                continue;
            };
            let Some(p) = image.partition(&replica.topic, replica.partition) else {
                continue;
            };
            // In the order of the replica list, as Kafka shows it.
            let isr: Vec<i32> = p
                .replicas
                .iter()
                .copied()
                .filter(|r| in_sync.contains(&(*r as u64)))
                .collect();
            let (_, term) = replica.leader();
            let epoch = i32::try_from(term).unwrap_or(i32::MAX);
            // Also records this leadership itself when the image lacks it: the record
            // proposed at the election is dropped if the metadata group had no leader
            // at that moment (a broker leading both just died).
            if let Some(record) =
                controller.leader_elected(&image, &replica.topic, replica.partition, me, epoch, isr)
            {
                records.push(record);
            }
        }
        if !records.is_empty() {
            let batch = encode_batch(&records, clock::now_ms());
            let _ = driver.propose_anywhere(METADATA_GROUP, batch.to_vec());
        }
    }

    /// Moves leadership back to preferred replicas that are registered, unfenced and in
    /// sync.
    fn balance_leaders(&self, driver: &mut Driver) {
        let image = self.image.read().unwrap().clone();
        let replicas = self.replicas.read().unwrap().clone();
        driver.balance_leaders(|group| {
            let replica = replicas.get(group)?;
            let partition = image.partition(&replica.topic, replica.partition)?;
            let preferred = *partition.replicas.first()?;
            // Only to a preferred replica that is registered, unfenced and caught up.
            image
                .brokers
                .get(&preferred)
                .filter(|b| !b.fenced && partition.isr.contains(&preferred))
                .map(|_| preferred as u64)
        });
    }

    fn handle(&self, driver: &mut Driver, pending: &mut PendingMap, command: Command) {
        match command {
            Command::Stop { .. } => unreachable!("handled by the driver loop"),
            Command::Propose {
                group,
                batches,
                wait,
                in_term,
                origin,
                txn,
                reply,
            } => {
                if let Some(term) = in_term {
                    let me = self.config.node_id;
                    match driver.leader(&group) {
                        Some((leader, t)) if leader == me && t == term => {}
                        Some((leader, _)) => {
                            let _ = reply.send(Err(ProduceError::NotLeader { leader }));
                            return;
                        }
                        None => {
                            let _ = reply.send(Err(ProduceError::UnknownPartition));
                            return;
                        }
                    }
                }
                // Planted bug: acks=all waits only for the leader's own fsync.
                let wait = if crate::planted::on("ack-before-quorum") {
                    Wait::LocalAppend
                } else {
                    wait
                };
                let txn = idempotence::TxnCheck {
                    append: txn,
                    verifications: &self.txn_verifications,
                };
                match idempotence::check_producer_batches(driver, &group, &batches, origin, &txn) {
                    Ok(idempotence::ProducerCheck::Propose) => {}
                    Ok(duplicate) => {
                        self.answer_duplicate(pending, group, duplicate, wait, reply);
                        return;
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return;
                    }
                }
                #[cfg(feature = "planted-bugs")]
                let kept = batches.clone();
                match propose_all(driver, &group, batches) {
                    Ok((first_index, last_index)) => {
                        let term = driver.leader(&group).map(|(_, term)| term).unwrap_or(0);
                        let p = Pending {
                            term,
                            first_index,
                            wait,
                            reply,
                            #[cfg(feature = "planted-bugs")]
                            batches: kept,
                        };
                        pending.entry((group, last_index)).or_default().push(p);
                    }
                    Err(DriverError::NotLeader { leader, .. }) => {
                        let _ = reply.send(Err(ProduceError::NotLeader { leader }));
                    }
                    Err(DriverError::UnknownGroup(_)) => {
                        let _ = reply.send(Err(ProduceError::UnknownPartition));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(ProduceError::Storage(e.to_string())));
                    }
                }
            }
            Command::ProposeMetadata { records } => {
                let batch = encode_batch(&records, clock::now_ms());
                if let Err(e) = driver.propose_anywhere(METADATA_GROUP, batch.to_vec()) {
                    tracing::debug!(error = %e, "metadata proposal dropped (no leader yet); it is retried");
                }
            }
            Command::ReadMetadata { reply } => {
                let asked = self.metadata_reads.lock().unwrap().ask(reply);
                if let Some(context) = asked {
                    let _ = driver.read_index(METADATA_GROUP, context);
                }
            }
        }
    }

    /// Answers a retried idempotent batch with its original's offsets: now if the original
    /// already meets `wait`, else once it does (if a leader change replaces it instead,
    /// the producer is told to retry).
    fn answer_duplicate(
        &self,
        pending: &mut PendingMap,
        group: GroupId,
        duplicate: idempotence::ProducerCheck,
        wait: Wait,
        reply: oneshot::Sender<Result<i64, ProduceError>>,
    ) {
        use idempotence::ProducerCheck::*;
        let (index, term) = match duplicate {
            Propose => unreachable!("not a duplicate"),
            DuplicateWritten {
                base_offset,
                last_offset,
                entry,
            } => {
                let committed = self
                    .replicas
                    .read()
                    .unwrap()
                    .get(&group)
                    .is_some_and(|r| r.high_watermark() > last_offset);
                // Planted bug: a retry is acknowledged as soon as its original is in the
                // leader's log, committed or not.
                let committed = committed || crate::planted::on("duplicate-acked-before-commit");
                match entry {
                    Some(entry) if !committed && wait == Wait::Commit => entry,
                    _ => {
                        let _ = reply.send(Ok(base_offset));
                        return;
                    }
                }
            }
            DuplicateUnwritten { index, term } => (index, term),
        };
        let p = Pending {
            term,
            first_index: index,
            wait,
            reply,
            #[cfg(feature = "planted-bugs")]
            batches: Vec::new(),
        };
        pending.entry((group, index)).or_default().push(p);
    }

    fn apply(
        &self,
        driver: &mut Driver,
        pending: &mut PendingMap,
        output: RoundOutput,
    ) -> io::Result<()> {
        let mut image_changed = false;
        let mut data_changed = false;
        let mut metadata_applied = None;
        for c in &output.committed {
            if c.group == METADATA_GROUP {
                metadata_applied = Some(c.index);
                let storage = driver
                    .storage(METADATA_GROUP)
                    .expect("always hosted")
                    .clone();
                let stored = storage
                    .lock()
                    .log()
                    .read_batch(c.base_offset)
                    .map_err(|e| io::Error::other(e.to_string()))?;
                apply_metadata_batch(&mut self.image.write().unwrap(), c.base_offset, &stored)?;
                image_changed = true;
                continue;
            }
            // Cloned out first: the replica's storage is never locked under the map's lock.
            let replica = self.replicas.read().unwrap().get(&c.group).cloned();
            if let Some(replica) = replica {
                let previous = replica
                    .high_watermark
                    .fetch_max(c.next_offset, Ordering::AcqRel);
                let mut storage = replica.storage.lock();
                if storage.log().producer_state().unreplicated_txn_count() > 0 {
                    storage.prune_replicated_txns(previous.max(c.next_offset));
                }
                data_changed = true;
            }
            for p in pending
                .remove(&(c.group.clone(), c.index))
                .unwrap_or_default()
            {
                let base_offset = if p.first_index == c.index {
                    Some(c.base_offset)
                } else {
                    driver
                        .storage(&c.group)
                        .and_then(|s| s.lock().position(p.first_index))
                        .map(|position| position.base_offset)
                };
                p.answer(c.term, base_offset);
            }
        }
        for installed in &output.snapshots {
            if let Some(replica) = self.replicas.read().unwrap().get(&installed.group) {
                replica
                    .high_watermark
                    .fetch_max(installed.next_offset, Ordering::AcqRel);
            }
        }
        // acks=1: answered once the leader's own round persisted the entry.
        let local: Vec<(GroupId, u64)> = pending
            .iter()
            .filter(|(_, waiting)| waiting.iter().any(|p| p.wait == Wait::LocalAppend))
            .map(|(k, _)| k.clone())
            .collect();
        for (group, index) in local {
            let Some(storage) = driver.storage(&group) else {
                continue;
            };
            let log = storage.lock();
            if let Some(position) = log.position(index) {
                let key = (group.clone(), index);
                let waiting = pending.remove(&key).expect("listed above");
                let (answered, still): (Vec<_>, Vec<_>) = waiting
                    .into_iter()
                    .partition(|p| p.wait == Wait::LocalAppend);
                for p in answered {
                    let first = log.position(p.first_index).map(|f| f.base_offset);
                    p.answer(position.term, first);
                }
                if !still.is_empty() {
                    pending.insert(key, still);
                }
            }
        }
        for change in &output.leader_changes {
            if change.group == METADATA_GROUP {
                self.metadata_leader.store(change.leader, Ordering::Release);
                continue;
            }
            let Some(replica) = self.replicas.read().unwrap().get(&change.group).cloned() else {
                continue;
            };
            replica.leader.store(change.leader, Ordering::Release);
            replica.term.store(change.term, Ordering::Release);
            // Planted bug: on losing leadership, the batches still waiting for commit are
            // handed to the new leader, although they may still commit where they are.
            #[cfg(feature = "planted-bugs")]
            if crate::planted::on("duplicate-on-retry") && !change.is_local_leader {
                for ((group, _), p) in pending
                    .iter()
                    .flat_map(|(k, v)| v.iter().map(move |p| (k, p)))
                {
                    if *group == change.group && p.term < change.term {
                        for batch in &p.batches {
                            let _ = driver.propose_anywhere(group, batch.to_vec());
                        }
                    }
                }
            }
            if change.is_local_leader {
                // Only this partition's fields: a copy of the whole image per leader change
                // made the first elections of a topic quadratic in its partition count.
                let Some((leader_epoch, replicas)) = self.with_image(|image| {
                    image
                        .partition(&replica.topic, replica.partition)
                        .map(|p| (p.leader_epoch, p.replicas.clone()))
                }) else {
                    continue;
                };
                let record = PartitionChange {
                    topic: replica.topic.clone(),
                    partition: replica.partition,
                    leader: self.config.node_id as i32,
                    // Planted bug: the epoch is not bumped with the leader.
                    leader_epoch: if crate::planted::on("stale-leader-epoch") {
                        leader_epoch
                    } else {
                        change.term as i32
                    },
                    isr: replicas,
                };
                let batch = encode_batch(
                    &[MetadataRecord::new(Record::PartitionChange(record))],
                    clock::now_ms(),
                );
                let _ = driver.propose_anywhere(METADATA_GROUP, batch.to_vec());
            }
        }
        if image_changed {
            self.reconcile(driver)?;
            let applied = self.image.read().unwrap().last_applied_offset;
            self.image_version.send_replace(applied);
        }
        {
            let mut reads = self.metadata_reads.lock().unwrap();
            for read in output
                .read_indexes
                .iter()
                .filter(|r| r.group == METADATA_GROUP)
            {
                reads.answered(&read.context, read.index);
            }
            if let Some(index) = metadata_applied {
                reads.applied(index);
            }
        }
        if data_changed {
            self.data_version.send_modify(|v| *v += 1);
        }
        Ok(())
    }
}

/// Applies every committed record of the metadata log to `image` (at start). A corrupt
/// committed batch cuts the log there when other voters can replicate it again (the
/// broker starts, with the image of the records before it, and catches up); with no
/// other voter the broker cannot start.
pub(super) fn replay_committed(
    replica: &mut ReplicaLog,
    image: &mut MetadataImage,
    multi_voter: bool,
) -> io::Result<()> {
    for index in replica.first_index()..=replica.hard_state().commit {
        let position = replica
            .position(index)
            .ok_or_else(|| io::Error::other("committed entry missing"))?;
        let stored = match replica.log().read_batch(position.base_offset) {
            Ok(stored) => stored,
            Err(ReadError::Corrupt { .. }) if multi_voter => {
                tracing::error!(index, "corrupt committed batch in the metadata log: cutting the log there, to be replicated again");
                return replica.cut_at_damage(index);
            }
            Err(e) => return Err(io::Error::other(e.to_string())),
        };
        apply_metadata_batch(image, position.base_offset, &stored)?;
    }
    Ok(())
}

/// Applies the records of one committed metadata batch; a record that does not fit the
/// image is refused the same way on every broker.
fn apply_metadata_batch(
    image: &mut MetadataImage,
    base_offset: i64,
    stored: &Bytes,
) -> io::Result<()> {
    let records = decode_batch(stored).map_err(|e| io::Error::other(e.to_string()))?;
    for (i, record) in records.iter().enumerate() {
        let offset = base_offset + i as i64;
        if offset <= image.last_applied_offset {
            // Committed again after this replica repaired a corrupt entry: records
            // never change once committed, and this one is applied already.
            continue;
        }
        if let Err(e) = image.apply(offset, record) {
            tracing::debug!(error = %e, "metadata record refused (identically on every broker)");
        } else {
            tracing::trace!(offset, record = ?record, "metadata record applied");
        }
    }
    Ok(())
}

impl Pending {
    /// Answers the producer: its last entry committed (or persisted) in `term`, and its
    /// first entry sits at `base_offset`. An entry of another term at the last index
    /// means the proposal was replaced after a leader change. (Same term at the last
    /// index means the same leader appended every entry of the proposal: log matching.)
    fn answer(self, term: u64, base_offset: Option<i64>) {
        let result = match base_offset {
            Some(base_offset) if self.term == term => Ok(base_offset),
            // Planted bug: the entry at the index was replaced after a leader change, and
            // the producer is told its batch sits at the offset the new entry took.
            Some(base_offset) if crate::planted::on("reuse-offset-after-leader-change") => {
                Ok(base_offset)
            }
            _ => Err(ProduceError::Superseded),
        };
        let _ = self.reply.send(result);
    }
}

/// Proposes every batch in order; returns the Raft indexes of the first and last.
/// When a later batch fails after an earlier one was proposed, the whole request fails
/// (the earlier batches may still commit, as a retried Kafka produce may duplicate).
fn propose_all(
    driver: &mut Driver,
    group: &str,
    batches: Vec<Bytes>,
) -> Result<(u64, u64), DriverError> {
    let mut first = None;
    let mut last = 0;
    for batch in batches {
        last = driver.propose(group, batch.to_vec())?;
        first.get_or_insert(last);
    }
    Ok((first.expect("at least one batch"), last))
}

/// Refused peer messages logged at warn before the rest go to debug.
const REFUSALS_LOGGED: u32 = 16;

/// Steps a batch of Raft messages that arrived from broker `sender`. A message the
/// driver refuses (a shape raft-rs cannot take, or not from its frame's sender) is
/// dropped; the first few are logged at warn, the rest at debug.
/// Steps a peer's batch of messages. Refusals are logged (bounded); a storage error is
/// returned: the broker must stop.
fn step_batch(
    driver: &mut Driver,
    sender: u64,
    batch: Vec<GroupMessage>,
    logged: &mut u32,
) -> Result<(), DriverError> {
    for message in batch {
        match driver.step_from(sender, message) {
            Err(e @ DriverError::Io(_)) => return Err(e),
            Err(e @ DriverError::Refused { .. }) if *logged < REFUSALS_LOGGED => {
                *logged += 1;
                tracing::warn!(sender, error = %e, "refused a peer's Raft message");
            }
            Err(e @ DriverError::Refused { .. }) => {
                tracing::debug!(sender, error = %e, "refused a peer's Raft message");
            }
            _ => {}
        }
    }
    Ok(())
}

/// Answers every waiting producer with `Stopped`, then the stop request.
fn stop(pending: PendingMap, done: oneshot::Sender<()>) {
    for p in pending.into_values().flatten() {
        let _ = p.reply.send(Err(ProduceError::Stopped));
    }
    let _ = done.send(());
}

/// Kafka cluster ids are 16 random bytes in URL-safe base64 (22 characters).
fn random_cluster_id(rng: &mut impl Rng) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    (0..22)
        .map(|_| ALPHABET[rng.gen_range(0..64)] as char)
        .collect()
}

/// Offset after the last committed entry of a replica (its high watermark at start).
fn committed_offset(replica: &ReplicaLog) -> i64 {
    let commit = replica.hard_state().commit;
    replica
        .position(commit)
        .map(|p| p.next_offset)
        .unwrap_or_else(|| replica.log().log_start_offset())
}

fn to_io(e: DriverError) -> io::Error {
    io::Error::other(e.to_string())
}
