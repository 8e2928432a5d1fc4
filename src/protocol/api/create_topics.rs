//! CreateTopics: through the metadata quorum. Names, partition counts, replication
//! factors (at most the live brokers), explicit assignments and configs are checked by
//! the controller; `validate_only` checks without creating.

use super::{code, config_map, str_bytes};
use crate::broker::{ApiError, Broker};
use crate::log::config::{describe, effective_config, TOPIC_CONFIG_KEYS};
use crate::metadata::CreateTopic;
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

pub async fn handle(broker: &Arc<Broker>, version: i16, request: CreateTopicsRequest) -> Reply {
    let mut seen = BTreeMap::new();
    for topic in &request.topics {
        *seen.entry(topic.name.0.to_string()).or_insert(0) += 1;
    }
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let name = topic.name.0.to_string();
        let base = CreatableTopicResult::default().with_name(topic.name.clone());
        if seen[&name] > 1 {
            results.push(
                base.with_error_code(code(Some(ResponseError::InvalidRequest)))
                    .with_error_message(Some(str_bytes("topic listed more than once"))),
            );
            continue;
        }
        let result = match create(broker, topic, request.validate_only).await {
            Ok(id) => {
                let mut result = base;
                let configs = requested_configs(topic);
                if version >= 5 {
                    let (partitions, factor) = match broker.topic(&name) {
                        Some(t) if !request.validate_only => (
                            t.partitions.len() as i32,
                            t.partitions[0].replicas.len() as i16,
                        ),
                        _ => (topic.num_partitions, topic.replication_factor),
                    };
                    result = result
                        .with_num_partitions(partitions)
                        .with_replication_factor(factor)
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
        };
        results.push(result);
    }
    Reply::Now(ResponseKind::CreateTopics(
        CreateTopicsResponse::default().with_topics(results),
    ))
}

async fn create(
    broker: &Broker,
    topic: &CreatableTopic,
    validate_only: bool,
) -> Result<uuid::Uuid, ApiError> {
    let configs = requested_configs(topic);
    let assignments = (!topic.assignments.is_empty()).then(|| {
        let mut sorted: Vec<_> = topic.assignments.iter().collect();
        sorted.sort_by_key(|a| a.partition_index);
        sorted
            .iter()
            .map(|a| a.broker_ids.iter().map(|b| b.0).collect::<Vec<i32>>())
            .collect::<Vec<_>>()
    });
    if let Some(lists) = &assignments {
        let numbered = topic
            .assignments
            .iter()
            .map(|a| a.partition_index)
            .collect::<std::collections::BTreeSet<_>>();
        if numbered.len() != lists.len() || numbered.last() != Some(&(lists.len() as i32 - 1)) {
            return Err(ApiError::new(
                ResponseError::InvalidReplicaAssignment,
                "partitions must be numbered from 0 without gaps",
            ));
        }
    }
    let request = CreateTopic {
        name: topic.name.0.to_string(),
        partitions: (topic.num_partitions != -1).then_some(topic.num_partitions),
        replication_factor: (topic.replication_factor != -1).then_some(topic.replication_factor),
        assignments,
        configs,
    };
    broker.create_topic(request, validate_only).await
}

fn requested_configs(topic: &CreatableTopic) -> BTreeMap<String, String> {
    config_map(topic.configs.iter().map(|c| (&c.name, c.value.as_ref())))
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
