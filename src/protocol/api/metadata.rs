//! Metadata: brokers, topics and partition leaders. Requesting an unknown topic creates
//! it when auto-creation is on and the client allows it.

use super::{code, str_bytes};
use crate::broker::{Broker, Topic};
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, MetadataRequest, MetadataResponse, ResponseKind, TopicName,
};
use std::sync::Arc;

pub fn handle(broker: &Arc<Broker>, version: i16, request: MetadataRequest) -> Reply {
    let node = BrokerId(broker.config.node_id);
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
    let topics = match wanted {
        None => broker
            .topics()
            .iter()
            .map(|t| describe_topic(t, node, version))
            .collect(),
        Some(names) => names
            .iter()
            .map(
                |name| match broker.topic_or_auto_create(name, allow_auto_create) {
                    Ok(topic) => describe_topic(&topic, node, version),
                    Err(e) => MetadataResponseTopic::default()
                        .with_name(Some(TopicName(str_bytes(name))))
                        .with_error_code(code(Some(e.code))),
                },
            )
            .collect(),
    };
    let brokers = vec![MetadataResponseBroker::default()
        .with_node_id(node)
        .with_host(str_bytes(&broker.config.advertised_host))
        .with_port(broker.config.advertised_port)];
    let mut response = MetadataResponse::default()
        .with_brokers(brokers)
        .with_topics(topics);
    if version >= 1 {
        response = response.with_controller_id(node);
    }
    if version >= 2 {
        response = response.with_cluster_id(Some(str_bytes(&broker.cluster_id)));
    }
    Reply::Now(ResponseKind::Metadata(response))
}

fn describe_topic(topic: &Topic, node: BrokerId, version: i16) -> MetadataResponseTopic {
    let partitions = topic
        .partitions
        .iter()
        .map(|p| {
            let partition = MetadataResponsePartition::default()
                .with_partition_index(p.index)
                .with_leader_id(node)
                .with_replica_nodes(vec![node])
                .with_isr_nodes(vec![node]);
            if version >= 7 {
                partition.with_leader_epoch(crate::broker::partition::SINGLE_NODE_LEADER_EPOCH)
            } else {
                partition
            }
        })
        .collect();
    let described = MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(&topic.name))))
        .with_partitions(partitions);
    if version >= 10 {
        described.with_topic_id(topic.id)
    } else {
        described
    }
}
