//! The cluster node and its driver task (see the module comment in `mod.rs`).

use crate::clock;
use crate::error::ApiError;
use crate::log::config::effective_config;
use crate::log::LogConfig;
use crate::metadata::log_codec::{decode_batch, encode_batch};
use crate::metadata::records::{
    BrokerRef, MetadataRecord, PartitionChange, Record, RegisterBroker,
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

/// The Raft group of the cluster metadata log.
pub const METADATA_GROUP: &str = "__cluster_metadata-0";
/// Commands queued for the driver task before producers are pushed back.
const COMMAND_QUEUE: usize = 4096;
/// Inputs taken per wake-up before a round runs, so one round covers a burst.
const INPUTS_PER_ROUND: usize = 256;
/// Ticks between two runs of the leader balancer.
const BALANCE_EVERY_TICKS: u64 = 50;
/// How long an admin change waits for its record to be applied.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);

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
    pub seed: u64,
}

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
}

impl ProduceError {
    pub fn kafka_error(&self) -> ResponseError {
        match self {
            ProduceError::NotLeader { .. } | ProduceError::Superseded | ProduceError::Stopped => {
                ResponseError::NotLeaderOrFollower
            }
            ProduceError::UnknownPartition => ResponseError::UnknownTopicOrPartition,
            ProduceError::Storage(_) => ResponseError::KafkaStorageError,
        }
    }
}

/// A partition replica hosted on this broker.
pub struct Replica {
    pub topic: String,
    pub partition: i32,
    pub storage: ReplicaStorage,
    /// Offset after the last committed entry: consumers read below it.
    high_watermark: AtomicI64,
    leader: AtomicU64,
    term: AtomicU64,
}

impl Replica {
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark.load(Ordering::Acquire)
    }

    /// The leader this replica knows (0: none) and its term.
    pub fn leader(&self) -> (u64, u64) {
        (
            self.leader.load(Ordering::Acquire),
            self.term.load(Ordering::Acquire),
        )
    }
}

enum Command {
    Propose {
        group: GroupId,
        data: Vec<u8>,
        wait: Wait,
        reply: oneshot::Sender<Result<i64, ProduceError>>,
    },
    ProposeMetadata {
        records: Vec<MetadataRecord>,
    },
}

struct Pending {
    term: u64,
    wait: Wait,
    reply: oneshot::Sender<Result<i64, ProduceError>>,
}

pub struct ClusterNode {
    pub config: ClusterConfig,
    storage: Arc<dyn Storage>,
    incarnation_id: u64,
    image: RwLock<MetadataImage>,
    replicas: RwLock<BTreeMap<GroupId, Arc<Replica>>>,
    commands: mpsc::Sender<Command>,
    image_version: watch::Sender<i64>,
    data_version: watch::Sender<u64>,
    rng: Mutex<rand::rngs::StdRng>,
}

fn group_of(topic: &str, partition: i32) -> GroupId {
    format!("{topic}-{partition}")
}

impl ClusterNode {
    /// Opens the metadata replica (rebuilding the image from its committed records) and
    /// every partition replica the image places here, then starts the driver task, the
    /// peer listener and registration.
    pub async fn start(
        config: ClusterConfig,
        storage: Arc<dyn Storage>,
        raft_listener: TcpListener,
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
        let metadata_replica = ReplicaLog::open(
            storage.clone(),
            &config.data_dir.join(METADATA_GROUP),
            metadata_config,
            0,
            &voters,
        )?;
        let mut image = MetadataImage::new();
        replay_committed(&metadata_replica, &mut image)?;
        let fresh_metadata = metadata_replica.last_index() == 0;
        let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
        let mut driver = Driver::new(config.node_id, config.driver, rng.gen());
        driver
            .add_group(METADATA_GROUP.to_string(), metadata_replica)
            .map_err(to_io)?;
        if fresh_metadata && config.node_id == voters[0] {
            driver.campaign(METADATA_GROUP).map_err(to_io)?;
        }
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let node = Arc::new(ClusterNode {
            incarnation_id: rng.gen(),
            storage,
            image: RwLock::new(image),
            replicas: RwLock::new(BTreeMap::new()),
            commands,
            image_version: watch::channel(-1).0,
            data_version: watch::channel(0).0,
            rng: Mutex::new(rng),
            config,
        });
        node.reconcile(&mut driver)?;
        let transport = Transport::start(node.config.node_id, &node.config.peers);
        let (inbox_tx, inbox) = mpsc::channel(1024);
        tokio::spawn(serve_peers(raft_listener, inbox_tx));
        tokio::spawn(node.clone().run(driver, transport, inbox, command_rx));
        tokio::spawn(node.clone().register());
        Ok(node)
    }

    pub fn image(&self) -> MetadataImage {
        self.image.read().unwrap().clone()
    }

    pub fn replica(&self, topic: &str, partition: i32) -> Option<Arc<Replica>> {
        self.replicas
            .read()
            .unwrap()
            .get(&group_of(topic, partition))
            .cloned()
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
        let (reply, answer) = oneshot::channel();
        let command = Command::Propose {
            group: group_of(topic, partition),
            data: batch.to_vec(),
            wait,
            reply,
        };
        self.commands
            .send(command)
            .await
            .map_err(|_| ProduceError::Stopped)?;
        answer.await.map_err(|_| ProduceError::Stopped)?
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

    /// Creates a topic through the metadata log; returns once this broker applied it.
    pub async fn create_topic(&self, request: CreateTopic) -> Result<uuid::Uuid, ApiError> {
        let image = self.image();
        let (topic_id, seed) = {
            let mut rng = self.rng.lock().unwrap();
            (
                uuid::Uuid::from_bytes(rng.gen()),
                PlacementSeed {
                    start_index: rng.gen_range(0..1024),
                    shift: rng.gen_range(0..1024),
                },
            )
        };
        let record = self
            .controller(&image)
            .create_topic(&image, &request, topic_id, seed)?;
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
        };
        let me = BrokerRef {
            node_id: self.config.node_id as i32,
        };
        let records = vec![
            MetadataRecord::new(Record::RegisterBroker(registration)),
            MetadataRecord::new(Record::UnfenceBroker(me)),
        ];
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
                            .map(|_| ())
                    },
                    Some(records.clone()),
                )
                .await;
            if registered.is_ok() {
                tracing::info!(node_id, "registered with the cluster");
                return;
            }
        }
    }

    /// Hosts a replica for every partition the image places here, drops the others.
    fn reconcile(&self, driver: &mut Driver) -> io::Result<()> {
        let image = self.image.read().unwrap().clone();
        let me = self.config.node_id as i32;
        let mut replicas = self.replicas.write().unwrap();
        for topic in image.topics.values() {
            let log_config = effective_config(&self.config.log_defaults, &topic.configs)
                .unwrap_or_else(|_| self.config.log_defaults.clone());
            for (index, p) in topic.partitions.iter().enumerate() {
                let group = group_of(&topic.name, index as i32);
                if !p.replicas.contains(&me) || replicas.contains_key(&group) {
                    continue;
                }
                let voters: Vec<u64> = p.replicas.iter().map(|b| *b as u64).collect();
                let replica_log = ReplicaLog::open(
                    self.storage.clone(),
                    &self.config.data_dir.join(&group),
                    log_config.clone(),
                    0,
                    &voters,
                )?;
                let fresh = replica_log.last_index() == 0;
                let high_watermark = committed_offset(&replica_log);
                driver
                    .add_group(group.clone(), replica_log)
                    .map_err(to_io)?;
                // The preferred replica starts the first election, so leaders follow placement.
                if fresh && p.replicas[0] == me {
                    driver.campaign(&group).map_err(to_io)?;
                }
                let storage = driver.storage(&group).expect("just added").clone();
                let replica = Replica {
                    topic: topic.name.clone(),
                    partition: index as i32,
                    storage,
                    high_watermark: AtomicI64::new(high_watermark),
                    leader: AtomicU64::new(0),
                    term: AtomicU64::new(0),
                };
                replicas.insert(group, Arc::new(replica));
            }
        }
        let gone: Vec<GroupId> = replicas
            .values()
            .filter(|r| {
                image
                    .partition(&r.topic, r.partition)
                    .map(|p| !p.replicas.contains(&me))
                    .unwrap_or(true)
            })
            .map(|r| group_of(&r.topic, r.partition))
            .collect();
        for group in gone {
            replicas.remove(&group);
            driver.remove_group(&group);
            let dir = self.config.data_dir.join(&group);
            if let Err(e) = self.storage.remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove a dropped replica");
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
        let mut pending: BTreeMap<(GroupId, u64), Pending> = BTreeMap::new();
        let mut ticker = tokio::time::interval(Duration::from_millis(self.config.tick_ms));
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    driver.tick();
                    ticks += 1;
                    if ticks.is_multiple_of(BALANCE_EVERY_TICKS) {
                        self.balance_leaders(&mut driver);
                    }
                }
                Some((_, batch)) = inbox.recv() => {
                    for message in batch {
                        let _ = driver.step(message);
                    }
                }
                command = commands.recv() => match command {
                    Some(command) => self.handle(&mut driver, &mut pending, command),
                    None => return,
                },
            }
            for _ in 0..INPUTS_PER_ROUND {
                match (inbox.try_recv(), commands.try_recv()) {
                    (Err(_), Err(_)) => break,
                    (batch, command) => {
                        if let Ok((_, batch)) = batch {
                            for message in batch {
                                let _ = driver.step(message);
                            }
                        }
                        if let Ok(command) = command {
                            self.handle(&mut driver, &mut pending, command);
                        }
                    }
                }
            }
            let mut output = match driver.round(clock::now_ms()) {
                Ok(output) => output,
                Err(e) => {
                    // An fsync or write failed: nothing after it can be trusted (fsyncgate).
                    tracing::error!(error = %e, "replication round failed; this broker stops replicating");
                    for (_, p) in std::mem::take(&mut pending) {
                        let _ = p.reply.send(Err(ProduceError::Storage(e.to_string())));
                    }
                    return;
                }
            };
            for (to, batch) in std::mem::take(&mut output.outgoing) {
                transport.send(to, batch);
            }
            if let Err(e) = self.apply(&mut driver, &mut pending, output) {
                tracing::error!(error = %e, "applying committed entries failed; this broker stops replicating");
                return;
            }
        }
    }

    /// Moves leadership back to preferred replicas that are registered and unfenced.
    fn balance_leaders(&self, driver: &mut Driver) {
        let image = self.image.read().unwrap().clone();
        let replicas = self.replicas.read().unwrap().clone();
        driver.balance_leaders(|group| {
            let replica = replicas.get(group)?;
            let preferred = *image
                .partition(&replica.topic, replica.partition)?
                .replicas
                .first()?;
            image
                .brokers
                .get(&preferred)
                .filter(|b| !b.fenced)
                .map(|_| preferred as u64)
        });
    }

    fn handle(
        &self,
        driver: &mut Driver,
        pending: &mut BTreeMap<(GroupId, u64), Pending>,
        command: Command,
    ) {
        match command {
            Command::Propose {
                group,
                data,
                wait,
                reply,
            } => match driver.propose(&group, data) {
                Ok(index) => {
                    let term = driver.leader(&group).map(|(_, term)| term).unwrap_or(0);
                    pending.insert((group, index), Pending { term, wait, reply });
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
            },
            Command::ProposeMetadata { records } => {
                let batch = encode_batch(&records, clock::now_ms());
                if let Err(e) = driver.propose_anywhere(METADATA_GROUP, batch.to_vec()) {
                    tracing::debug!(error = %e, "metadata proposal dropped (no leader yet); it is retried");
                }
            }
        }
    }

    fn apply(
        &self,
        driver: &mut Driver,
        pending: &mut BTreeMap<(GroupId, u64), Pending>,
        output: RoundOutput,
    ) -> io::Result<()> {
        let mut image_changed = false;
        let mut data_changed = false;
        for c in &output.committed {
            if c.group == METADATA_GROUP {
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
            if let Some(replica) = self.replicas.read().unwrap().get(&c.group) {
                replica
                    .high_watermark
                    .fetch_max(c.next_offset, Ordering::AcqRel);
                data_changed = true;
            }
            if let Some(p) = pending.remove(&(c.group.clone(), c.index)) {
                p.answer(c.term, c.base_offset);
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
            .filter(|(_, p)| p.wait == Wait::LocalAppend)
            .map(|(k, _)| k.clone())
            .collect();
        for (group, index) in local {
            let position = driver
                .storage(&group)
                .and_then(|s| s.lock().position(index));
            if let Some(position) = position {
                let p = pending.remove(&(group, index)).expect("listed above");
                p.answer(position.term, position.base_offset);
            }
        }
        for change in &output.leader_changes {
            if change.group == METADATA_GROUP {
                continue;
            }
            let Some(replica) = self.replicas.read().unwrap().get(&change.group).cloned() else {
                continue;
            };
            replica.leader.store(change.leader, Ordering::Release);
            replica.term.store(change.term, Ordering::Release);
            if change.is_local_leader {
                let image = self.image.read().unwrap().clone();
                let Some(p) = image.partition(&replica.topic, replica.partition) else {
                    continue;
                };
                let record = PartitionChange {
                    topic: replica.topic.clone(),
                    partition: replica.partition,
                    leader: self.config.node_id as i32,
                    leader_epoch: change.term as i32,
                    isr: p.replicas.clone(),
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
        if data_changed {
            self.data_version.send_modify(|v| *v += 1);
        }
        Ok(())
    }
}

/// Applies every committed record of the metadata log to `image` (at start).
fn replay_committed(replica: &ReplicaLog, image: &mut MetadataImage) -> io::Result<()> {
    for index in replica.first_index()..=replica.hard_state().commit {
        let position = replica
            .position(index)
            .ok_or_else(|| io::Error::other("committed entry missing"))?;
        let stored = replica
            .log()
            .read_batch(position.base_offset)
            .map_err(|e| io::Error::other(e.to_string()))?;
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
        if let Err(e) = image.apply(base_offset + i as i64, record) {
            tracing::debug!(error = %e, "metadata record refused (identically on every broker)");
        }
    }
    Ok(())
}

impl Pending {
    /// Answers the producer: its entry committed (or persisted) at `base_offset` in
    /// `term`; an entry of another term took the index, so the batch was replaced.
    fn answer(self, term: u64, base_offset: i64) {
        let result = if self.term == term {
            Ok(base_offset)
        } else {
            Err(ProduceError::Superseded)
        };
        let _ = self.reply.send(result);
    }
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
