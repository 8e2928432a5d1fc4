//! The broker: the partitions it hosts, the topic registry, and the background work
//! (group commit, retention, recovery checkpoints, clean shutdown).
//!
//! Request handlers in `protocol::api` call into this; it calls into `log` and
//! `storage`. It never parses Kafka bytes itself.

pub mod group_commit;
pub mod metadata_store;
pub mod partition;

use crate::clock;
use crate::config::BrokerConfig;
use crate::log::config::{effective_config, validate_topic_config};
use crate::log::partition_log::partition_dir_name;
use crate::log::PartitionLog;
use crate::storage::Storage;
use group_commit::GroupCommit;
use kafka_protocol::ResponseError;
use metadata_store::{DirMeta, MetadataStore, TopicMeta, TopicsFile};
pub use partition::Partition;
use rand::{Rng, RngCore, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;

pub use crate::error::{validate_topic_name, ApiError, MAX_PARTITIONS_PER_TOPIC};

/// A topic as currently known: replaced whole (copy-on-write) when it changes.
pub struct Topic {
    pub name: String,
    pub id: uuid::Uuid,
    pub configs: BTreeMap<String, String>,
    pub partitions: Vec<Arc<Partition>>,
}

pub struct Broker {
    pub config: BrokerConfig,
    pub cluster_id: String,
    storage: Arc<dyn Storage>,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serialises topic creation, deletion and config changes.
    admin: Mutex<()>,
    pub group_commit: Arc<GroupCommit>,
    /// Bumped after every append; long-polling fetches wait on it.
    data_version: watch::Sender<u64>,
    rng: Mutex<rand::rngs::StdRng>,
    /// Set when a clean shutdown starts: produce answers NOT_LEADER_OR_FOLLOWER so that
    /// clients keep their records and retry once the broker is back.
    shutting_down: std::sync::atomic::AtomicBool,
}

impl Broker {
    /// Opens the data directory: loads topics, recovers every partition log (a full scan
    /// after the recovery point unless the last shutdown was clean) and removes leftovers
    /// of interrupted deletions.
    pub fn open(config: BrokerConfig, storage: Arc<dyn Storage>) -> io::Result<Arc<Broker>> {
        let seed = config.seed.unwrap_or_else(|| rand::rngs::OsRng.next_u64());
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let data_dir = config.data_dir.clone();
        storage.create_dir_all(&data_dir)?;
        let store = MetadataStore {
            storage: storage.as_ref(),
            data_dir: &data_dir,
        };
        let meta = match store.read_dir_meta()? {
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
            Some(meta) => meta,
            None => {
                let meta = DirMeta {
                    cluster_id: random_cluster_id(&mut rng),
                    node_id: config.node_id,
                };
                store.write_dir_meta(&meta)?;
                meta
            }
        };
        let clean = store.clean_shutdown_marker_exists();
        let checkpoint = store.read_checkpoint();
        let topics_file = store.read_topics()?;
        let mut topics = BTreeMap::new();
        let mut expected_dirs = BTreeSet::new();
        for (name, topic_meta) in &topics_file.topics {
            let log_config = effective_config(&config.log_defaults, &topic_meta.configs)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let mut partitions = Vec::new();
            for index in 0..topic_meta.partitions {
                let dir_name = partition_dir_name(name, index);
                let recovery_point = if clean {
                    i64::MAX
                } else {
                    checkpoint.get(&dir_name).copied().unwrap_or(0)
                };
                let (log, report) = PartitionLog::open(
                    storage.clone(),
                    &data_dir.join(&dir_name),
                    log_config.clone(),
                    recovery_point,
                )?;
                if report.truncated_bytes > 0 || report.segments_removed > 0 {
                    tracing::warn!(partition = %dir_name, ?report, "recovery cut a torn or corrupt tail");
                } else if report.segments_scanned > 0 {
                    tracing::info!(partition = %dir_name, scanned = report.segments_scanned, "recovered");
                }
                partitions.push(Arc::new(Partition::new(name.clone(), index, log)));
                expected_dirs.insert(dir_name);
            }
            let id = uuid::Uuid::parse_str(&topic_meta.id)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            topics.insert(
                name.clone(),
                Arc::new(Topic {
                    name: name.clone(),
                    id,
                    configs: topic_meta.configs.clone(),
                    partitions,
                }),
            );
        }
        remove_orphan_partition_dirs(storage.as_ref(), &data_dir, &expected_dirs)?;
        store.remove_clean_shutdown_marker()?;
        let broker = Arc::new(Broker {
            config,
            cluster_id: meta.cluster_id,
            storage,
            topics: RwLock::new(topics),
            admin: Mutex::new(()),
            group_commit: Arc::new(GroupCommit::default()),
            data_version: watch::channel(0).0,
            rng: Mutex::new(rng),
            shutting_down: Default::default(),
        });
        broker.write_checkpoint()?;
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

    /// Starts the background tasks: the group-commit flusher, retention, and checkpoints.
    pub fn start_background_tasks(self: &Arc<Self>) {
        tokio::spawn(self.group_commit.clone().run(self.config.flush_interval_ms));
        let broker = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(
                    broker.config.retention_check_interval_ms,
                ))
                .await;
                broker.apply_retention(clock::now_ms());
            }
        });
        let broker = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(
                    broker.config.recovery_checkpoint_interval_ms,
                ))
                .await;
                if let Err(e) = broker.write_checkpoint() {
                    tracing::warn!(error = %e, "could not write the recovery checkpoint");
                }
            }
        });
    }

    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().unwrap().get(name).cloned()
    }

    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.topics.read().unwrap().values().cloned().collect()
    }

    pub fn partition(&self, topic: &str, index: i32) -> Option<Arc<Partition>> {
        let topic = self.topic(topic)?;
        usize::try_from(index)
            .ok()
            .and_then(|i| topic.partitions.get(i).cloned())
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Tells long-polling fetches that new data may be there.
    pub fn data_appended(&self) {
        self.data_version.send_modify(|v| *v += 1);
    }

    pub fn subscribe_data(&self) -> watch::Receiver<u64> {
        self.data_version.subscribe()
    }

    /// The topic, created with defaults first if auto-creation is on.
    pub fn topic_or_auto_create(&self, name: &str, allow: bool) -> Result<Arc<Topic>, ApiError> {
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
        match self.create_topic(name, self.config.default_partitions, BTreeMap::new(), false) {
            Ok(topic) => Ok(topic),
            Err(e) if e.code == ResponseError::TopicAlreadyExists => self.topic(name).ok_or(e),
            Err(e) => Err(e),
        }
    }

    fn persist_topics(&self, topics: &BTreeMap<String, Arc<Topic>>) -> Result<(), ApiError> {
        let file = TopicsFile {
            topics: topics
                .iter()
                .map(|(name, t)| {
                    let meta = TopicMeta {
                        id: t.id.simple().to_string(),
                        partitions: t.partitions.len() as i32,
                        configs: t.configs.clone(),
                    };
                    (name.clone(), meta)
                })
                .collect(),
        };
        self.store().write_topics(&file).map_err(storage_error)
    }

    fn open_partitions(
        &self,
        name: &str,
        range: std::ops::Range<i32>,
        configs: &BTreeMap<String, String>,
    ) -> Result<Vec<Arc<Partition>>, ApiError> {
        let log_config = effective_config(&self.config.log_defaults, configs)
            .map_err(|e| ApiError::new(ResponseError::InvalidConfig, e.to_string()))?;
        range
            .map(|index| {
                let dir = self.config.data_dir.join(partition_dir_name(name, index));
                let (log, _) =
                    PartitionLog::open(self.storage.clone(), &dir, log_config.clone(), 0)
                        .map_err(storage_error)?;
                Ok(Arc::new(Partition::new(name.to_string(), index, log)))
            })
            .collect()
    }

    /// Creates a topic (or only checks that it could be created).
    pub fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<Arc<Topic>, ApiError> {
        validate_topic_name(name)?;
        if !(1..=MAX_PARTITIONS_PER_TOPIC).contains(&partitions) {
            return Err(ApiError::new(
                ResponseError::InvalidPartitions,
                format!("partition count must be in 1..={MAX_PARTITIONS_PER_TOPIC}"),
            ));
        }
        for (key, value) in &configs {
            validate_topic_config(key, value)
                .map_err(|e| ApiError::new(ResponseError::InvalidConfig, e.to_string()))?;
        }
        let _admin = self.admin.lock().unwrap();
        if self.topic(name).is_some() {
            return Err(ApiError::new(
                ResponseError::TopicAlreadyExists,
                format!("topic {name} already exists"),
            ));
        }
        let colliding = self
            .topics
            .read()
            .unwrap()
            .keys()
            .any(|t| t.replace('.', "_") == name.replace('.', "_"));
        if colliding {
            return Err(ApiError::new(
                ResponseError::InvalidTopicException,
                format!("topic {name} collides with an existing topic ('.' and '_')"),
            ));
        }
        let id = uuid::Uuid::from_bytes(self.rng.lock().unwrap().gen());
        let staged = Arc::new(Topic {
            name: name.to_string(),
            id,
            configs: configs.clone(),
            partitions: Vec::new(),
        });
        if validate_only {
            return Ok(staged);
        }
        let partitions = self.open_partitions(name, 0..partitions, &configs)?;
        let topic = Arc::new(Topic {
            partitions,
            ..Topic::clone_meta(&staged)
        });
        let mut next = self.topics.read().unwrap().clone();
        next.insert(name.to_string(), topic.clone());
        self.persist_topics(&next)?;
        *self.topics.write().unwrap() = next;
        tracing::info!(
            topic = name,
            partitions = topic.partitions.len(),
            "created topic"
        );
        Ok(topic)
    }

    /// Deletes a topic: first from the durable topic list, then its files.
    pub fn delete_topic(&self, name: &str) -> Result<(), ApiError> {
        let _admin = self.admin.lock().unwrap();
        let mut next = self.topics.read().unwrap().clone();
        let Some(topic) = next.remove(name) else {
            return Err(ApiError::new(
                ResponseError::UnknownTopicOrPartition,
                format!("unknown topic {name}"),
            ));
        };
        self.persist_topics(&next)?;
        *self.topics.write().unwrap() = next;
        for partition in &topic.partitions {
            let dir = self
                .config
                .data_dir
                .join(partition_dir_name(name, partition.index));
            if let Err(e) = self.storage.remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove a deleted partition; it is removed at next start");
            }
        }
        tracing::info!(topic = name, "deleted topic");
        self.data_appended(); // wake fetches so they notice
        Ok(())
    }

    /// Raises a topic's partition count.
    pub fn create_partitions(
        &self,
        name: &str,
        count: i32,
        validate_only: bool,
    ) -> Result<(), ApiError> {
        let _admin = self.admin.lock().unwrap();
        let Some(topic) = self.topic(name) else {
            return Err(ApiError::new(
                ResponseError::UnknownTopicOrPartition,
                format!("unknown topic {name}"),
            ));
        };
        let current = topic.partitions.len() as i32;
        if count <= current {
            return Err(ApiError::new(
                ResponseError::InvalidPartitions,
                format!("topic {name} has {current} partitions; the new count must be larger"),
            ));
        }
        if count > MAX_PARTITIONS_PER_TOPIC {
            return Err(ApiError::new(
                ResponseError::InvalidPartitions,
                format!("at most {MAX_PARTITIONS_PER_TOPIC} partitions"),
            ));
        }
        if validate_only {
            return Ok(());
        }
        let mut partitions = topic.partitions.clone();
        partitions.extend(self.open_partitions(name, current..count, &topic.configs)?);
        let updated = Arc::new(Topic {
            partitions,
            ..Topic::clone_meta(&topic)
        });
        let mut next = self.topics.read().unwrap().clone();
        next.insert(name.to_string(), updated);
        self.persist_topics(&next)?;
        *self.topics.write().unwrap() = next;
        Ok(())
    }

    /// Replaces a topic's config overrides.
    pub fn set_topic_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), ApiError> {
        for (key, value) in &configs {
            validate_topic_config(key, value)
                .map_err(|e| ApiError::new(ResponseError::InvalidConfig, e.to_string()))?;
        }
        let log_config = effective_config(&self.config.log_defaults, &configs)
            .map_err(|e| ApiError::new(ResponseError::InvalidConfig, e.to_string()))?;
        let _admin = self.admin.lock().unwrap();
        let Some(topic) = self.topic(name) else {
            return Err(ApiError::new(
                ResponseError::UnknownTopicOrPartition,
                format!("unknown topic {name}"),
            ));
        };
        if validate_only {
            return Ok(());
        }
        let updated = Arc::new(Topic {
            name: topic.name.clone(),
            id: topic.id,
            configs,
            partitions: topic.partitions.clone(),
        });
        let mut next = self.topics.read().unwrap().clone();
        next.insert(name.to_string(), updated);
        self.persist_topics(&next)?;
        *self.topics.write().unwrap() = next;
        for partition in &topic.partitions {
            partition.log().set_config(log_config.clone());
        }
        Ok(())
    }

    /// Deletes segments past retention in every partition.
    pub fn apply_retention(&self, now_ms: i64) {
        for topic in self.topics() {
            for partition in &topic.partitions {
                match partition.log().apply_retention(now_ms) {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(topic = %topic.name, partition = partition.index, segments = n, "retention deleted segments")
                    }
                    Err(e) => {
                        tracing::warn!(topic = %topic.name, partition = partition.index, error = %e, "retention failed")
                    }
                }
            }
        }
    }

    /// Rewrites the recovery-point checkpoint from every partition's recovery point.
    pub fn write_checkpoint(&self) -> io::Result<()> {
        let mut points = BTreeMap::new();
        for topic in self.topics() {
            for partition in &topic.partitions {
                points.insert(
                    partition_dir_name(&topic.name, partition.index),
                    partition.log().recovery_point(),
                );
            }
        }
        self.store().write_checkpoint(&points)
    }

    /// Clean shutdown: fsync every log and index, write the checkpoint, then the marker
    /// that lets the next start skip recovery.
    pub fn shutdown(&self) -> io::Result<()> {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let _admin = self.admin.lock().unwrap();
        for topic in self.topics() {
            for partition in &topic.partitions {
                partition.log().close()?;
            }
        }
        self.write_checkpoint()?;
        self.store().write_clean_shutdown_marker()?;
        tracing::info!("clean shutdown complete");
        Ok(())
    }
}

impl Topic {
    /// A copy of everything but the partitions (which the caller supplies).
    fn clone_meta(topic: &Topic) -> Topic {
        Topic {
            name: topic.name.clone(),
            id: topic.id,
            configs: topic.configs.clone(),
            partitions: Vec::new(),
        }
    }
}

fn storage_error(e: io::Error) -> ApiError {
    tracing::error!(error = %e, "storage error");
    ApiError::new(ResponseError::KafkaStorageError, e.to_string())
}

fn random_cluster_id(rng: &mut impl Rng) -> String {
    // Kafka cluster ids are 16 random bytes in URL-safe base64 (22 characters).
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    (0..22)
        .map(|_| ALPHABET[rng.gen_range(0..64)] as char)
        .collect()
}

/// Removes partition directories that no topic owns (a crash during topic deletion).
fn remove_orphan_partition_dirs(
    storage: &dyn Storage,
    data_dir: &std::path::Path,
    expected: &BTreeSet<String>,
) -> io::Result<()> {
    for name in storage.list_dir(data_dir)? {
        let path = data_dir.join(&name);
        let looks_like_partition = name
            .rsplit_once('-')
            .map(|(_, p)| p.parse::<i32>().is_ok())
            .unwrap_or(false);
        if looks_like_partition && !expected.contains(&name) && storage.list_dir(&path).is_ok() {
            tracing::info!(dir = %path.display(), "removing the files of a deleted partition");
            storage.remove_dir_all(&path)?;
        }
    }
    Ok(())
}
