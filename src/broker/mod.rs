//! The broker: what the Kafka request handlers in `protocol::api` talk to.
//!
//! A thin façade over this broker's [`ClusterNode`] (the metadata quorum, the hosted
//! partition replicas and the replication driver): a single broker is a cluster of one
//! voter, so every topic, partition leader and leader epoch comes from the metadata
//! image and every write goes through a partition's Raft group, whatever the cluster
//! size. Besides, the data directory's own files (node id, recovery checkpoint,
//! clean-shutdown marker) and the background work (retention, checkpoints).
//!
//! It never parses Kafka bytes itself.

pub mod coordinator_log;
pub mod groups;
pub mod metadata_store;
pub mod producer_ids;
pub mod txn_verifier;
pub mod txns;

use crate::clock;
use crate::cluster::{ClusterConfig, ClusterNode, RecoveryPoints};
use crate::config::BrokerConfig;
use crate::metadata::{CreateTopic, MetadataImage, TopicInfo};
use crate::replication::driver::DriverConfig;
use crate::storage::Storage;
use kafka_protocol::ResponseError;
use metadata_store::{DirMeta, MetadataStore};
use rand::RngCore;
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

pub use crate::error::{validate_topic_name, ApiError, MAX_PARTITIONS_PER_TOPIC};

/// How long a topic creation waits for its partitions' first leaders before answering
/// (clients retry on LEADER_NOT_AVAILABLE anyway; this only spares them the retry).
const AWAIT_LEADERS: Duration = Duration::from_secs(5);

pub struct Broker {
    pub config: BrokerConfig,
    pub node: Arc<ClusterNode>,
    /// The group coordinators this broker hosts.
    pub groups: Arc<groups::GroupService>,
    /// Producer ids for InitProducerId.
    pub producer_ids: Arc<producer_ids::ProducerIds>,
    /// The transaction coordinators this broker hosts.
    pub txns: Arc<txns::TxnService>,
    /// Asks transaction coordinators to verify transactional produce (KIP-890).
    pub txn_verifier: txn_verifier::TxnVerifier,
    storage: Arc<dyn Storage>,
    /// Set when a clean shutdown starts: produce answers NOT_LEADER_OR_FOLLOWER so that
    /// clients keep their records and retry once the broker is back.
    shutting_down: AtomicBool,
}

impl Broker {
    /// Opens the data directory and starts this broker's cluster node: the metadata
    /// replica and every partition replica are recovered (a scan after each recovery
    /// point unless the last shutdown was clean), then it waits until the broker is
    /// registered with the metadata quorum.
    ///
    /// `raft_listener` accepts the other brokers' Raft connections (None for a cluster
    /// of one).
    pub async fn open(
        config: BrokerConfig,
        storage: Arc<dyn Storage>,
        raft_listener: Option<TcpListener>,
    ) -> io::Result<Arc<Broker>> {
        let data_dir = config.data_dir.clone();
        storage.create_dir_all(&data_dir)?;
        let store = MetadataStore {
            storage: storage.as_ref(),
            data_dir: &data_dir,
        };
        match store.read_dir_meta()? {
            Some(meta) if meta.node_id != config.node_id => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "data dir {} belongs to node {}, not node {}",
                        data_dir.display(),
                        meta.node_id,
                        config.node_id
                    ),
                ));
            }
            Some(_) => {}
            None => store.write_dir_meta(&DirMeta {
                node_id: config.node_id,
            })?,
        }
        let recovery_points = RecoveryPoints {
            clean_shutdown: store.clean_shutdown_marker_exists(),
            by_dir: store.read_checkpoint(),
        };
        let cluster_config = cluster_config(&config, recovery_points);
        let node =
            ClusterNode::start(cluster_config.clone(), storage.clone(), raft_listener).await?;
        // Past this point new appends may land: the next start must scan again.
        store.remove_clean_shutdown_marker()?;
        let groups = Arc::new(groups::GroupService::new(
            node.clone(),
            config.groups.clone(),
            config.raft_tick_ms,
            cluster_config.seed,
        ));
        let producer_ids = Arc::new(producer_ids::ProducerIds::default());
        let txns = Arc::new(txns::TxnService::new(
            node.clone(),
            config.txns.clone(),
            producer_ids.clone(),
            config.raft_tick_ms,
        ));
        let txn_verifier = txn_verifier::TxnVerifier::new(node.clone());
        let broker = Arc::new(Broker {
            config,
            node,
            groups,
            producer_ids,
            txns,
            txn_verifier,
            storage,
            shutting_down: AtomicBool::new(false),
        });
        broker.write_checkpoint()?;
        broker
            .node
            .wait_ready()
            .await
            .map_err(|e| io::Error::other(e.message))?;
        Ok(broker)
    }

    fn store(&self) -> MetadataStore<'_> {
        MetadataStore {
            storage: self.storage.as_ref(),
            data_dir: &self.config.data_dir,
        }
    }

    pub fn data_dir(&self) -> &PathBuf {
        &self.config.data_dir
    }

    /// Starts the background tasks: the group coordinators, retention, the log cleaner
    /// and recovery checkpoints.
    pub fn start_background_tasks(self: &Arc<Self>) {
        tokio::spawn(self.groups.clone().run());
        tokio::spawn(self.txns.clone().run());
        let broker = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(broker.config.log_cleaner_backoff_ms))
                    .await;
                if broker.is_shutting_down() {
                    return;
                }
                broker
                    .node
                    .run_cleaner(
                        clock::now_ms(),
                        broker.config.log_cleaner_dedupe_buffer_bytes,
                    )
                    .await;
            }
        });
        let broker = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(
                    broker.config.retention_check_interval_ms,
                ))
                .await;
                if broker.is_shutting_down() {
                    return;
                }
                broker.node.apply_retention(clock::now_ms());
                broker.node.expire_producers(
                    clock::now_ms(),
                    broker.config.txns.producer_id_expiration_ms,
                );
            }
        });
        let broker = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(
                    broker.config.recovery_checkpoint_interval_ms,
                ))
                .await;
                if broker.is_shutting_down() {
                    return;
                }
                if let Err(e) = broker.write_checkpoint() {
                    tracing::warn!(error = %e, "could not write the recovery checkpoint");
                }
            }
        });
    }

    /// The metadata image this broker has applied.
    pub fn image(&self) -> MetadataImage {
        self.node.image()
    }

    pub fn cluster_id(&self) -> String {
        self.node
            .with_image(|image| image.cluster_id.clone())
            .unwrap_or_default()
    }

    pub fn topic(&self, name: &str) -> Option<TopicInfo> {
        self.node
            .with_image(|image| image.topics.get(name).cloned())
    }

    /// The broker clients should send controller requests to: the metadata quorum's
    /// leader when it is a live broker, else this one (every broker forwards admin
    /// changes to the quorum, so either works).
    pub fn controller_id(&self) -> i32 {
        let leader = self.node.metadata_leader() as i32;
        let live = self
            .node
            .with_image(|image| image.brokers.get(&leader).is_some_and(|b| !b.fenced));
        if live {
            leader
        } else {
            self.config.node_id
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// The topic, created with defaults first if auto-creation is on.
    pub async fn topic_or_auto_create(
        &self,
        name: &str,
        allow: bool,
    ) -> Result<TopicInfo, ApiError> {
        if let Some(topic) = self.topic(name) {
            return Ok(topic);
        }
        if !(allow && self.config.auto_create_topics) {
            return Err(ApiError::new(
                ResponseError::UnknownTopicOrPartition,
                format!("unknown topic {name}"),
            ));
        }
        validate_topic_name(name)?;
        let request = CreateTopic {
            name: name.to_string(),
            ..Default::default()
        };
        match self.create_topic(request, false).await {
            Ok(_)
            | Err(ApiError {
                code: ResponseError::TopicAlreadyExists,
                ..
            }) => self.topic(name).ok_or_else(|| {
                ApiError::new(ResponseError::UnknownTopicOrPartition, "deleted meanwhile")
            }),
            Err(e) => Err(e),
        }
    }

    /// Creates a topic through the metadata quorum (or only checks that it could be
    /// created); returns its id once this broker applied it and, briefly bounded, once
    /// its partitions have leaders.
    pub async fn create_topic(
        &self,
        request: CreateTopic,
        validate_only: bool,
    ) -> Result<uuid::Uuid, ApiError> {
        if validate_only {
            self.node.validate_create_topic(&request)?;
            return Ok(uuid::Uuid::nil());
        }
        let name = request.name.clone();
        let id = self.node.create_topic(request).await?;
        tracing::info!(topic = %name, "created topic");
        self.node.await_leaders(&name, AWAIT_LEADERS).await;
        Ok(id)
    }

    /// Recovery point of every hosted replica, written atomically.
    pub fn write_checkpoint(&self) -> io::Result<()> {
        self.store().write_checkpoint(&self.node.recovery_points())
    }

    /// Clean shutdown: stop replicating, fsync every log and index, write the
    /// checkpoint, then the marker that lets the next start skip recovery.
    pub async fn shutdown(&self) -> io::Result<()> {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.groups.stop();
        self.txns.stop();
        self.node.stop().await;
        for (_, storage) in self.node.replica_storages() {
            storage.lock().close()?;
        }
        self.write_checkpoint()?;
        self.store().write_clean_shutdown_marker()?;
        tracing::info!("clean shutdown complete");
        Ok(())
    }
}

/// The cluster node's settings for this broker. Without peers it is a cluster of one
/// voter (whose Raft address is never dialled).
fn cluster_config(config: &BrokerConfig, recovery_points: RecoveryPoints) -> ClusterConfig {
    let node_id = config.node_id as u64;
    let peers: BTreeMap<u64, SocketAddr> = if config.peers.is_empty() {
        BTreeMap::from([(node_id, SocketAddr::from(([127, 0, 0, 1], 0)))])
    } else {
        config
            .peers
            .iter()
            .map(|(id, addr)| (*id as u64, *addr))
            .collect()
    };
    ClusterConfig {
        node_id,
        peers,
        data_dir: config.data_dir.clone(),
        log_defaults: config.log_defaults.clone(),
        kafka_host: config.advertised_host.clone(),
        kafka_port: config.advertised_port,
        tick_ms: config.raft_tick_ms,
        driver: DriverConfig::default(),
        default_partitions: config.default_partitions,
        default_replication_factor: config.default_replication_factor,
        session_timeout_ms: config.broker_session_timeout_ms,
        seed: config.seed.unwrap_or_else(|| rand::rngs::OsRng.next_u64()),
        recovery_points,
    }
}
