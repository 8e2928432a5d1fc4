//! The cluster as the metadata log describes it, after applying its records in order.
//!
//! Plain Rust, no I/O: every broker applies the same committed records to its own image
//! and so answers Metadata, routes requests and hosts replicas the same way. Applying is
//! deterministic; a record that does not fit the image (it can only come from a bug or a
//! corrupt log) is refused with an error and changes nothing, identically everywhere.

use super::records::{
    AllocateProducerIds, MetadataRecord, PartitionRecord, Record, RegisterBroker, TopicRecord,
};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
    pub incarnation_id: u64,
    /// See `RegisterBroker::directory_id`.
    pub directory_id: u64,
    /// Offset of the first registration with this `directory_id`: the disk has been
    /// part of the cluster since. A replica placed on the broker before it was held by
    /// an earlier disk.
    pub directory_since: i64,
    /// A fenced broker leads nothing and gets no new replicas.
    pub fenced: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub topic_id: uuid::Uuid,
    pub partitions: Vec<PartitionRecord>,
    /// Offset of the record that placed each partition (its index in `partitions`); the
    /// first is the topic's creation.
    pub placed_at: Vec<i64>,
    pub configs: BTreeMap<String, String>,
    /// Offset of the record that last set `configs` (the creation at first).
    pub configs_changed_at: i64,
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("empty record")]
    Empty,
    #[error("unknown broker {0}")]
    UnknownBroker(i32),
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    #[error("topic {0} already exists")]
    TopicExists(String),
    #[error("unknown partition {0}-{1}")]
    UnknownPartition(String, i32),
    #[error("invalid record: {0}")]
    Invalid(String),
    #[error("stale admin change: {0}")]
    Stale(String),
}

/// Brokers and topics, keyed in sorted order so iteration never depends on hashing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataImage {
    pub brokers: BTreeMap<i32, BrokerInfo>,
    pub topics: BTreeMap<String, TopicInfo>,
    /// Set by the first committed `ClusterIdentity` record, never changed after.
    pub cluster_id: Option<String>,
    /// Offset of the last record applied (-1 for none).
    pub last_applied_offset: i64,
    /// Where each deleted topic name was last deleted (a name created again leaves
    /// it), at most [`MetadataImage::MAX_DELETED_NAMES`]: a creation checked against an
    /// image from before the deletion is stale.
    deleted_at: BTreeMap<String, i64>,
    /// Deletions at or below this offset are forgotten: a creation checked against an
    /// image this old is stale whatever its name.
    deleted_forgotten_up_to: i64,
    /// The first producer id no block has been granted yet.
    pub next_producer_id: i64,
    /// The last [`MetadataImage::MAX_PRODUCER_ID_BLOCKS`] blocks granted: first id →
    /// (broker, incarnation). A broker uses a block only once it sees it here as its own.
    pub producer_id_blocks: BTreeMap<i64, (i32, u64)>,
}

fn check_partition(
    p: &PartitionRecord,
    brokers: &BTreeMap<i32, BrokerInfo>,
) -> Result<(), ApplyError> {
    let invalid = |why: String| Err(ApplyError::Invalid(why));
    if p.replicas.is_empty() {
        return invalid("a partition needs at least one replica".into());
    }
    let mut sorted = p.replicas.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != p.replicas.len() {
        return invalid(format!("duplicate replicas {:?}", p.replicas));
    }
    if let Some(b) = p.replicas.iter().find(|b| !brokers.contains_key(b)) {
        return Err(ApplyError::UnknownBroker(*b));
    }
    if p.leader != -1 && !p.replicas.contains(&p.leader) {
        return invalid(format!(
            "leader {} is not a replica of {:?}",
            p.leader, p.replicas
        ));
    }
    if !p.isr.iter().all(|b| p.replicas.contains(b)) {
        return invalid(format!(
            "in-sync set {:?} is not within replicas {:?}",
            p.isr, p.replicas
        ));
    }
    Ok(())
}

impl MetadataImage {
    pub fn new() -> MetadataImage {
        MetadataImage {
            last_applied_offset: -1,
            ..Default::default()
        }
    }

    /// Deleted topic names remembered at most (see `deleted_at`).
    pub const MAX_DELETED_NAMES: usize = 4096;

    /// Producer id blocks remembered (see `producer_id_blocks`).
    pub const MAX_PRODUCER_ID_BLOCKS: usize = 256;

    /// Largest producer id block a broker may take at once.
    pub const MAX_PRODUCER_ID_BLOCK_SIZE: i64 = 1_000_000;

    fn allocate_producer_ids(&mut self, block: &AllocateProducerIds) -> Result<(), ApplyError> {
        if !(1..=Self::MAX_PRODUCER_ID_BLOCK_SIZE).contains(&block.count) {
            return Err(ApplyError::Invalid(format!(
                "producer id block of {} ids",
                block.count
            )));
        }
        if block.first_producer_id != self.next_producer_id {
            return Err(ApplyError::Stale(format!(
                "producer id block at {} asked, the next free id is {}",
                block.first_producer_id, self.next_producer_id
            )));
        }
        if !self.brokers.contains_key(&block.broker_id) {
            return Err(ApplyError::UnknownBroker(block.broker_id));
        }
        let end = block
            .first_producer_id
            .checked_add(block.count)
            .ok_or_else(|| ApplyError::Invalid("producer ids exhausted".into()))?;
        self.next_producer_id = end;
        self.producer_id_blocks.insert(
            block.first_producer_id,
            (block.broker_id, block.incarnation_id),
        );
        while self.producer_id_blocks.len() > Self::MAX_PRODUCER_ID_BLOCKS {
            self.producer_id_blocks.pop_first();
        }
        Ok(())
    }

    /// Applies the record at `offset` of the metadata log.
    pub fn apply(&mut self, offset: i64, record: &MetadataRecord) -> Result<(), ApplyError> {
        assert!(
            offset > self.last_applied_offset,
            "metadata records are applied once, in order"
        );
        self.last_applied_offset = offset;
        let change = record.record.as_ref().ok_or(ApplyError::Empty)?;
        if let Some(based_on) = record.based_on_offset {
            if let Some(why) = self.changed_since(based_on, change) {
                return Err(ApplyError::Stale(why));
            }
        }
        match change {
            Record::RegisterBroker(r) => {
                self.register(offset, r);
                Ok(())
            }
            Record::ClusterIdentity(c) => {
                if c.cluster_id.is_empty() {
                    return Err(ApplyError::Invalid("empty cluster id".into()));
                }
                self.cluster_id.get_or_insert_with(|| c.cluster_id.clone());
                Ok(())
            }
            Record::FenceBroker(b) => self.set_fenced(b.node_id, true),
            Record::UnfenceBroker(b) => self.set_fenced(b.node_id, false),
            Record::CreateTopic(t) => self.create_topic(offset, t),
            Record::DeleteTopic(t) => {
                self.topics
                    .remove(&t.name)
                    .ok_or_else(|| ApplyError::UnknownTopic(t.name.clone()))?;
                self.deleted_at.insert(t.name.clone(), offset);
                if self.deleted_at.len() > Self::MAX_DELETED_NAMES {
                    let (oldest, at) = self
                        .deleted_at
                        .iter()
                        .min_by_key(|(_, at)| **at)
                        .map(|(name, at)| (name.clone(), *at))
                        .expect("not empty");
                    self.deleted_at.remove(&oldest);
                    self.deleted_forgotten_up_to = self.deleted_forgotten_up_to.max(at);
                }
                Ok(())
            }
            Record::AddPartitions(a) => {
                for p in &a.partitions {
                    check_partition(p, &self.brokers)?;
                }
                let topic = self
                    .topics
                    .get_mut(&a.topic)
                    .ok_or_else(|| ApplyError::UnknownTopic(a.topic.clone()))?;
                topic.partitions.extend(a.partitions.iter().cloned());
                topic.placed_at.resize(topic.partitions.len(), offset);
                Ok(())
            }
            Record::SetTopicConfigs(c) => {
                let topic = self
                    .topics
                    .get_mut(&c.topic)
                    .ok_or_else(|| ApplyError::UnknownTopic(c.topic.clone()))?;
                topic.configs = c.configs.clone();
                topic.configs_changed_at = offset;
                Ok(())
            }
            Record::AllocateProducerIds(block) => self.allocate_producer_ids(block),
            Record::PartitionChange(c) => {
                let topic = self
                    .topics
                    .get_mut(&c.topic)
                    .ok_or_else(|| ApplyError::UnknownTopic(c.topic.clone()))?;
                let partition = usize::try_from(c.partition)
                    .ok()
                    .and_then(|i| topic.partitions.get_mut(i))
                    .ok_or_else(|| ApplyError::UnknownPartition(c.topic.clone(), c.partition))?;
                if c.leader_epoch < partition.leader_epoch {
                    return Err(ApplyError::Invalid(format!(
                        "leader epoch {} goes back from {}",
                        c.leader_epoch, partition.leader_epoch
                    )));
                }
                let changed = PartitionRecord {
                    replicas: partition.replicas.clone(),
                    isr: c.isr.clone(),
                    leader: c.leader,
                    leader_epoch: c.leader_epoch,
                };
                check_partition(&changed, &self.brokers)?;
                *partition = changed;
                Ok(())
            }
        }
    }

    fn register(&mut self, offset: i64, r: &RegisterBroker) {
        let known = self.brokers.get(&r.node_id);
        let fenced = known
            .map(|b| b.fenced || b.incarnation_id != r.incarnation_id)
            .unwrap_or(true);
        let directory_since = known
            .filter(|b| b.directory_id == r.directory_id && r.directory_id != 0)
            .map_or(offset, |b| b.directory_since);
        self.brokers.insert(
            r.node_id,
            BrokerInfo {
                node_id: r.node_id,
                host: r.host.clone(),
                port: r.port,
                rack: r.rack.clone(),
                incarnation_id: r.incarnation_id,
                directory_id: r.directory_id,
                directory_since,
                fenced,
            },
        );
    }

    fn set_fenced(&mut self, node_id: i32, fenced: bool) -> Result<(), ApplyError> {
        let broker = self
            .brokers
            .get_mut(&node_id)
            .ok_or(ApplyError::UnknownBroker(node_id))?;
        broker.fenced = fenced;
        Ok(())
    }

    fn create_topic(&mut self, offset: i64, t: &TopicRecord) -> Result<(), ApplyError> {
        if self.topics.contains_key(&t.name) {
            return Err(ApplyError::TopicExists(t.name.clone()));
        }
        let topic_id = uuid::Uuid::from_slice(&t.topic_id)
            .map_err(|_| ApplyError::Invalid("topic id must be 16 bytes".into()))?;
        if t.partitions.is_empty() {
            return Err(ApplyError::Invalid(
                "a topic needs at least one partition".into(),
            ));
        }
        for p in &t.partitions {
            check_partition(p, &self.brokers)?;
        }
        let info = TopicInfo {
            name: t.name.clone(),
            topic_id,
            partitions: t.partitions.clone(),
            placed_at: vec![offset; t.partitions.len()],
            configs: t.configs.clone(),
            configs_changed_at: offset,
        };
        self.topics.insert(t.name.clone(), info);
        self.deleted_at.remove(&t.name);
        Ok(())
    }

    /// Why an admin change checked against the image at `based_on` no longer holds, if
    /// it does not: what it depends on changed after that offset. Such a change may
    /// commit late or twice (a broker proposes it again while it waits, and a proposal
    /// thought lost with a leader change can still commit); applied anyway, a creation
    /// brought a deleted topic back and added partitions were added twice (found by the
    /// simulator, seed 110510). Changes to a topic that does not exist (or exists, for a
    /// creation) are left to the record's own checks.
    fn changed_since(&self, based_on: i64, change: &Record) -> Option<String> {
        let topic = |name: &str| self.topics.get(name);
        let (name, changed_at) = match change {
            Record::CreateTopic(t) => {
                if based_on < self.deleted_forgotten_up_to {
                    return Some(format!(
                        "topic {} was checked at {based_on}, before the deletions still remembered",
                        t.name
                    ));
                }
                (&t.name, *self.deleted_at.get(&t.name)?)
            }
            // Another topic of the same name, created since.
            Record::DeleteTopic(t) => (&t.name, *topic(&t.name)?.placed_at.first()?),
            // Partitions added since (or another topic of the same name).
            Record::AddPartitions(a) => (&a.topic, *topic(&a.topic)?.placed_at.iter().max()?),
            Record::SetTopicConfigs(c) => (&c.topic, topic(&c.topic)?.configs_changed_at),
            _ => return None,
        };
        (changed_at > based_on).then(|| {
            format!("topic {name} changed at offset {changed_at}, after {based_on} that the change was checked against")
        })
    }

    /// Unfenced brokers, sorted by id: where new replicas may go.
    pub fn live_brokers(&self) -> Vec<i32> {
        self.brokers
            .values()
            .filter(|b| !b.fenced)
            .map(|b| b.node_id)
            .collect()
    }

    pub fn partition(&self, topic: &str, partition: i32) -> Option<&PartitionRecord> {
        usize::try_from(partition)
            .ok()
            .and_then(|i| self.topics.get(topic)?.partitions.get(i))
    }
}
