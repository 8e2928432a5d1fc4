//! CreateTopics: validates names, partition counts, replication factor (this cluster has
//! one broker) and configs; `validate_only` checks without creating.

use super::{code, str_bytes};
use crate::broker::{ApiError, Broker};
use crate::log::config::{describe, effective_config, TOPIC_CONFIG_KEYS};
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse, ResponseKind};
use kafka_protocol::ResponseError;
use std::collections::BTreeMap;
use std::sync::Arc;

/// DescribeConfigs/CreateTopics config sources.
pub(crate) const SOURCE_DYNAMIC_TOPIC: i8 = 1;
pub(crate) const SOURCE_DEFAULT: i8 = 5;

pub fn handle(broker: &Arc<Broker>, version: i16, request: CreateTopicsRequest) -> Reply {
    let mut seen = BTreeMap::new();
    for topic in &request.topics {
        *seen.entry(topic.name.0.to_string()).or_insert(0) += 1;
    }
    let results = request
        .topics
        .iter()
        .map(|topic| {
            let name = topic.name.0.to_string();
            let base = CreatableTopicResult::default().with_name(topic.name.clone());
            if seen[&name] > 1 {
                return base
                    .with_error_code(code(Some(ResponseError::InvalidRequest)))
                    .with_error_message(Some(str_bytes("topic listed more than once")));
            }
            match create(broker, topic, request.validate_only) {
                Ok((id, partitions, configs)) => {
                    let mut result = base;
                    if version >= 5 {
                        result = result
                            .with_num_partitions(partitions)
                            .with_replication_factor(1)
                            .with_configs(Some(describe_all(broker, &configs)));
                    }
                    if version >= 7 {
                        result = result.with_topic_id(id);
                    }
                    result
                }
                Err(e) => base
                    .with_error_code(code(Some(e.code)))
                    .with_error_message(Some(str_bytes(&e.message))),
            }
        })
        .collect();
    Reply::Now(ResponseKind::CreateTopics(
        CreateTopicsResponse::default().with_topics(results),
    ))
}

fn create(
    broker: &Broker,
    topic: &CreatableTopic,
    validate_only: bool,
) -> Result<(uuid::Uuid, i32, BTreeMap<String, String>), ApiError> {
    let node = broker.config.node_id;
    let partitions = if !topic.assignments.is_empty() {
        if topic.num_partitions != -1 || topic.replication_factor != -1 {
            return Err(ApiError::new(
                ResponseError::InvalidRequest,
                "give either assignments or partition count and replication factor",
            ));
        }
        for (i, a) in topic.assignments.iter().enumerate() {
            if a.partition_index != i as i32
                || a.broker_ids.iter().map(|b| b.0).collect::<Vec<_>>() != vec![node]
            {
                return Err(ApiError::new(
                    ResponseError::InvalidReplicaAssignment,
                    format!("partitions must be numbered from 0 and placed on broker {node}"),
                ));
            }
        }
        topic.assignments.len() as i32
    } else {
        if !(topic.replication_factor == -1 || topic.replication_factor == 1) {
            return Err(ApiError::new(
                ResponseError::InvalidReplicationFactor,
                format!(
                    "replication factor {} is larger than the 1 available broker",
                    topic.replication_factor
                ),
            ));
        }
        if topic.num_partitions == -1 {
            broker.config.default_partitions
        } else {
            topic.num_partitions
        }
    };
    let mut configs = BTreeMap::new();
    for c in &topic.configs {
        if let Some(value) = &c.value {
            configs.insert(c.name.to_string(), value.to_string());
        }
    }
    let created = broker.create_topic(&topic.name.0, partitions, configs.clone(), validate_only)?;
    Ok((created.id, partitions, configs))
}

fn describe_all(
    broker: &Broker,
    overrides: &BTreeMap<String, String>,
) -> Vec<CreatableTopicConfigs> {
    let config = effective_config(&broker.config.log_defaults, overrides)
        .unwrap_or_else(|_| broker.config.log_defaults.clone());
    TOPIC_CONFIG_KEYS
        .iter()
        .map(|key| {
            let source = if overrides.contains_key(key.name) {
                SOURCE_DYNAMIC_TOPIC
            } else {
                SOURCE_DEFAULT
            };
            CreatableTopicConfigs::default()
                .with_name(str_bytes(key.name))
                .with_value(describe(&config, key.name).map(|v| str_bytes(&v)))
                .with_config_source(source)
        })
        .collect()
}
