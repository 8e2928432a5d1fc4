//! The controller: turns admin requests and broker liveness into metadata records.
//!
//! Sans-IO. It runs on the leader of the metadata quorum: requests are validated
//! against the current [`MetadataImage`] and become records to propose; time and
//! randomness come in as arguments. Nothing here changes the image: records change it
//! only once committed and applied, on every broker alike.
//!
//! Partition leaders are elected by each partition's own Raft group, not here: a new
//! leader reports itself and [`Controller::leader_elected`] records it, so every broker's
//! Metadata answers agree. The controller only asks for leadership to move back to a
//! partition's preferred replica ([`Controller::rebalance_leaders`]).

use super::image::MetadataImage;
use super::placement::{assign_replicas, PlacementError};
use super::records::*;
use crate::error::{validate_topic_name, ApiError, MAX_PARTITIONS_PER_TOPIC};
use crate::log::config::validate_topic_config;
use kafka_protocol::ResponseError;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// A broker that has not heartbeated for this long is fenced.
    pub session_timeout_ms: i64,
    /// Partitions of a topic created without a count.
    pub default_partitions: i32,
    /// Replication factor of a topic created without one.
    pub default_replication_factor: i16,
}

/// A topic creation as requested.
#[derive(Debug, Clone, Default)]
pub struct CreateTopic {
    pub name: String,
    /// None: the default.
    pub partitions: Option<i32>,
    /// None: the default.
    pub replication_factor: Option<i16>,
    /// Explicit replica lists, one per partition (then partitions and factor are None).
    pub assignments: Option<Vec<Vec<i32>>>,
    pub configs: BTreeMap<String, String>,
}

/// Randomness the caller draws from its seeded RNG for one placement.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlacementSeed {
    pub start_index: usize,
    pub shift: usize,
}

/// Something the controller wants done outside the metadata log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Ask the partition's Raft group to transfer leadership to `to`.
    TransferLeader {
        topic: String,
        partition: i32,
        to: i32,
    },
}

pub struct Controller {
    config: ControllerConfig,
    /// Last heartbeat per broker, as seen by this controller (not replicated).
    last_heartbeat_ms: BTreeMap<i32, i64>,
}

fn placement_error(e: PlacementError) -> ApiError {
    ApiError::new(ResponseError::InvalidReplicationFactor, e.to_string())
}

impl Controller {
    /// A controller that just took over at `now_ms`: every registered broker gets a full
    /// session before it can be fenced.
    pub fn new(config: ControllerConfig, image: &MetadataImage, now_ms: i64) -> Controller {
        let last_heartbeat_ms = image.brokers.keys().map(|id| (*id, now_ms)).collect();
        Controller {
            config,
            last_heartbeat_ms,
        }
    }

    pub fn create_topic(
        &self,
        image: &MetadataImage,
        request: &CreateTopic,
        topic_id: uuid::Uuid,
        seed: PlacementSeed,
    ) -> Result<MetadataRecord, ApiError> {
        validate_topic_name(&request.name)?;
        if image.topics.contains_key(&request.name) {
            return Err(ApiError::new(
                ResponseError::TopicAlreadyExists,
                format!("topic {} already exists", request.name),
            ));
        }
        let normalized = request.name.replace('.', "_");
        if image
            .topics
            .keys()
            .any(|t| t.replace('.', "_") == normalized)
        {
            return Err(ApiError::new(
                ResponseError::InvalidTopicException,
                format!(
                    "topic {} collides with an existing topic ('.' and '_')",
                    request.name
                ),
            ));
        }
        for (key, value) in &request.configs {
            validate_topic_config(key, value)
                .map_err(|e| ApiError::new(ResponseError::InvalidConfig, e.to_string()))?;
        }
        let replica_lists = match &request.assignments {
            Some(lists) => {
                if request.partitions.is_some() || request.replication_factor.is_some() {
                    return Err(ApiError::new(
                        ResponseError::InvalidRequest,
                        "give either assignments or partition count and replication factor",
                    ));
                }
                self.check_assignments(image, lists)?;
                lists.clone()
            }
            None => {
                let partitions = request.partitions.unwrap_or(self.config.default_partitions);
                let factor = request
                    .replication_factor
                    .unwrap_or(self.config.default_replication_factor);
                check_partition_count(partitions)?;
                if factor < 1 {
                    return Err(ApiError::new(
                        ResponseError::InvalidReplicationFactor,
                        format!("replication factor {factor} must be at least 1"),
                    ));
                }
                let brokers = image.live_brokers();
                assign_replicas(
                    &brokers,
                    0,
                    partitions as usize,
                    factor as usize,
                    seed.start_index,
                    seed.shift,
                )
                .map_err(placement_error)?
            }
        };
        check_partition_count(replica_lists.len() as i32)?;
        let partitions = replica_lists.into_iter().map(initial_partition).collect();
        let topic = TopicRecord {
            name: request.name.clone(),
            topic_id: topic_id.as_bytes().to_vec(),
            partitions,
            configs: request.configs.clone(),
        };
        Ok(MetadataRecord::new(Record::CreateTopic(topic)))
    }

    fn check_assignments(&self, image: &MetadataImage, lists: &[Vec<i32>]) -> Result<(), ApiError> {
        let bad = |why: String| Err(ApiError::new(ResponseError::InvalidReplicaAssignment, why));
        let Some(first) = lists.first() else {
            return bad("no partitions".into());
        };
        for list in lists {
            if list.is_empty() || list.len() != first.len() {
                return bad(format!(
                    "every partition needs the same, non-zero number of replicas: {list:?}"
                ));
            }
            let mut sorted = list.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if sorted.len() != list.len() {
                return bad(format!("duplicate broker in {list:?}"));
            }
            if let Some(b) = list.iter().find(|b| !image.brokers.contains_key(b)) {
                return bad(format!("unknown broker {b}"));
            }
        }
        Ok(())
    }

    pub fn delete_topic(
        &self,
        image: &MetadataImage,
        name: &str,
    ) -> Result<MetadataRecord, ApiError> {
        if !image.topics.contains_key(name) {
            return Err(ApiError::new(
                ResponseError::UnknownTopicOrPartition,
                format!("unknown topic {name}"),
            ));
        }
        Ok(MetadataRecord::new(Record::DeleteTopic(TopicRef {
            name: name.to_string(),
        })))
    }

    pub fn create_partitions(
        &self,
        image: &MetadataImage,
        name: &str,
        count: i32,
        seed: PlacementSeed,
    ) -> Result<MetadataRecord, ApiError> {
        let topic = image.topics.get(name).ok_or_else(|| {
            ApiError::new(
                ResponseError::UnknownTopicOrPartition,
                format!("unknown topic {name}"),
            )
        })?;
        let current = topic.partitions.len() as i32;
        if count <= current {
            return Err(ApiError::new(
                ResponseError::InvalidPartitions,
                format!("topic {name} has {current} partitions; the new count must be larger"),
            ));
        }
        check_partition_count(count)?;
        let factor = topic.partitions[0].replicas.len();
        let brokers = image.live_brokers();
        let lists = assign_replicas(
            &brokers,
            current as usize,
            (count - current) as usize,
            factor,
            seed.start_index,
            seed.shift,
        )
        .map_err(placement_error)?;
        let partitions = lists.into_iter().map(initial_partition).collect();
        Ok(MetadataRecord::new(Record::AddPartitions(AddPartitions {
            topic: name.to_string(),
            partitions,
        })))
    }

    pub fn set_topic_configs(
        &self,
        image: &MetadataImage,
        name: &str,
        configs: BTreeMap<String, String>,
    ) -> Result<MetadataRecord, ApiError> {
        if !image.topics.contains_key(name) {
            return Err(ApiError::new(
                ResponseError::UnknownTopicOrPartition,
                format!("unknown topic {name}"),
            ));
        }
        for (key, value) in &configs {
            validate_topic_config(key, value)
                .map_err(|e| ApiError::new(ResponseError::InvalidConfig, e.to_string()))?;
        }
        Ok(MetadataRecord::new(Record::SetTopicConfigs(
            SetTopicConfigs {
                topic: name.to_string(),
                configs,
            },
        )))
    }

    /// A broker (re)starting: registered, and fenced until its first heartbeat.
    pub fn register_broker(&mut self, registration: RegisterBroker, now_ms: i64) -> MetadataRecord {
        self.last_heartbeat_ms.insert(registration.node_id, now_ms);
        MetadataRecord::new(Record::RegisterBroker(registration))
    }

    /// A heartbeat; unfences a registered broker that was fenced.
    pub fn heartbeat(
        &mut self,
        image: &MetadataImage,
        node_id: i32,
        now_ms: i64,
    ) -> Result<Option<MetadataRecord>, ApiError> {
        let broker = image.brokers.get(&node_id).ok_or_else(|| {
            ApiError::new(
                ResponseError::BrokerIdNotRegistered,
                format!("broker {node_id} is not registered"),
            )
        })?;
        self.last_heartbeat_ms.insert(node_id, now_ms);
        Ok(broker
            .fenced
            .then(|| MetadataRecord::new(Record::UnfenceBroker(BrokerRef { node_id }))))
    }

    /// Fences every unfenced broker whose session expired.
    pub fn expire_sessions(&self, image: &MetadataImage, now_ms: i64) -> Vec<MetadataRecord> {
        image
            .brokers
            .values()
            .filter(|b| !b.fenced)
            .filter(|b| {
                self.last_heartbeat_ms
                    .get(&b.node_id)
                    .map(|t| now_ms - t > self.config.session_timeout_ms)
                    .unwrap_or(true)
            })
            .map(|b| MetadataRecord::new(Record::FenceBroker(BrokerRef { node_id: b.node_id })))
            .collect()
    }

    /// A partition's Raft group elected `leader` in `leader_epoch` (its term) with this
    /// in-sync set. Recorded only if it is news: a newer epoch, or a changed set.
    pub fn leader_elected(
        &self,
        image: &MetadataImage,
        topic: &str,
        partition: i32,
        leader: i32,
        leader_epoch: i32,
        isr: Vec<i32>,
    ) -> Option<MetadataRecord> {
        let current = image.partition(topic, partition)?;
        let news = leader_epoch > current.leader_epoch
            || (leader_epoch == current.leader_epoch
                && leader == current.leader
                && isr != current.isr);
        if !news || !current.replicas.contains(&leader) {
            return None;
        }
        Some(MetadataRecord::new(Record::PartitionChange(
            PartitionChange {
                topic: topic.to_string(),
                partition,
                leader,
                leader_epoch,
                isr,
            },
        )))
    }

    /// Leadership moves back to each partition's preferred replica (its first) when that
    /// broker is alive and in sync: at most `limit` moves at a time.
    pub fn rebalance_leaders(&self, image: &MetadataImage, limit: usize) -> Vec<Effect> {
        let mut effects = Vec::new();
        for topic in image.topics.values() {
            for (index, p) in topic.partitions.iter().enumerate() {
                if effects.len() >= limit {
                    return effects;
                }
                let preferred = p.replicas[0];
                let alive = image
                    .brokers
                    .get(&preferred)
                    .map(|b| !b.fenced)
                    .unwrap_or(false);
                if p.leader != preferred && alive && p.isr.contains(&preferred) {
                    effects.push(Effect::TransferLeader {
                        topic: topic.name.clone(),
                        partition: index as i32,
                        to: preferred,
                    });
                }
            }
        }
        effects
    }
}

fn check_partition_count(count: i32) -> Result<(), ApiError> {
    if !(1..=MAX_PARTITIONS_PER_TOPIC).contains(&count) {
        return Err(ApiError::new(
            ResponseError::InvalidPartitions,
            format!("partition count must be in 1..={MAX_PARTITIONS_PER_TOPIC}"),
        ));
    }
    Ok(())
}

/// A new partition: led by its preferred replica, every replica in sync, epoch 0.
fn initial_partition(replicas: Vec<i32>) -> PartitionRecord {
    PartitionRecord {
        leader: replicas[0],
        isr: replicas.clone(),
        replicas,
        leader_epoch: 0,
    }
}
