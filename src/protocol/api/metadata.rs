//! Metadata: the live brokers, and each topic's partitions with their leader, leader
//! epoch, replicas and in-sync replicas, as this broker's metadata image has them.
//! Requesting an unknown topic creates it when auto-creation is on and the client
//! allows it.

use super::{code, str_bytes};
use crate::broker::Broker;
use crate::metadata::{MetadataImage, TopicInfo};
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, MetadataRequest, MetadataResponse, ResponseKind, TopicName,
};
use kafka_protocol::ResponseError;
use std::sync::Arc;

pub async fn handle(broker: &Arc<Broker>, version: i16, request: MetadataRequest) -> Reply {
    // v0: an empty list means all topics; v1+: null means all topics.
    let wanted: Option<Vec<String>> = match request.topics {
        Some(topics) if !(version == 0 && topics.is_empty()) => Some(
            topics
                .into_iter()
                .map(|t| t.name.map(|n| n.0.to_string()).unwrap_or_default())
                .collect(),
        ),
        _ => None,
    };
    let allow_auto_create = version < 4 || request.allow_auto_topic_creation;
    let mut topics = Vec::new();
    match wanted {
        None => {
            let image = broker.image();
            for topic in image.topics.values() {
                topics.push(describe_topic(&image, topic, version));
            }
        }
        Some(names) => {
            for name in &names {
                let described = match broker.topic_or_auto_create(name, allow_auto_create).await {
                    Ok(topic) => describe_topic(&broker.image(), &topic, version),
                    Err(e) => MetadataResponseTopic::default()
                        .with_name(Some(TopicName(str_bytes(name))))
                        .with_error_code(code(Some(e.code))),
                };
                topics.push(described);
            }
        }
    }
    let image = broker.image();
    let brokers = image
        .brokers
        .values()
        .filter(|b| !b.fenced)
        .map(|b| {
            let described = MetadataResponseBroker::default()
                .with_node_id(BrokerId(b.node_id))
                .with_host(str_bytes(&b.host))
                .with_port(b.port);
            if version >= 1 {
                described.with_rack(b.rack.as_deref().map(str_bytes))
            } else {
                described
            }
        })
        .collect();
    let mut response = MetadataResponse::default()
        .with_brokers(brokers)
        .with_topics(topics);
    if version >= 1 {
        response = response.with_controller_id(BrokerId(broker.controller_id()));
    }
    if version >= 2 {
        response =
            response.with_cluster_id(Some(str_bytes(image.cluster_id.as_deref().unwrap_or(""))));
    }
    Reply::Now(ResponseKind::Metadata(response))
}

fn describe_topic(image: &MetadataImage, topic: &TopicInfo, version: i16) -> MetadataResponseTopic {
    let partitions = topic
        .partitions
        .iter()
        .enumerate()
        .map(|(index, p)| {
            let ids = |list: &[i32]| list.iter().map(|b| BrokerId(*b)).collect::<Vec<_>>();
            // A leader that is unknown or fenced cannot serve: clients wait and retry.
            let leader_live = image.brokers.get(&p.leader).is_some_and(|b| !b.fenced);
            let offline: Vec<i32> = p
                .replicas
                .iter()
                .copied()
                .filter(|r| image.brokers.get(r).is_none_or(|b| b.fenced))
                .collect();
            let mut partition = MetadataResponsePartition::default()
                .with_partition_index(index as i32)
                .with_leader_id(BrokerId(if leader_live { p.leader } else { -1 }))
                .with_replica_nodes(ids(&p.replicas))
                .with_isr_nodes(ids(&p.isr));
            if !leader_live {
                partition =
                    partition.with_error_code(code(Some(ResponseError::LeaderNotAvailable)));
            }
            if version >= 5 {
                partition = partition.with_offline_replicas(ids(&offline));
            }
            if version >= 7 {
                partition = partition.with_leader_epoch(p.leader_epoch);
            }
            partition
        })
        .collect();
    let described = MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(&topic.name))))
        .with_is_internal(super::is_internal(&topic.name))
        .with_partitions(partitions);
    if version >= 10 {
        described.with_topic_id(topic.topic_id)
    } else {
        described
    }
}
