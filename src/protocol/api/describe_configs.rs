//! DescribeConfigs: every topic config Strand knows with its effective value and source,
//! and the broker's (static) settings.

use super::create_topics::{SOURCE_DEFAULT, SOURCE_DYNAMIC_TOPIC};
use super::{code, str_bytes, RESOURCE_BROKER, RESOURCE_TOPIC};
use crate::broker::Broker;
use crate::log::config::{describe, effective_config, TOPIC_CONFIG_KEYS};
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse, ResponseKind};
use kafka_protocol::ResponseError;
use std::sync::Arc;

const SOURCE_STATIC_BROKER: i8 = 4;
const TYPE_BOOLEAN: i8 = 1;
const TYPE_STRING: i8 = 2;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;
const TYPE_DOUBLE: i8 = 6;
const TYPE_LIST: i8 = 7;

/// One described setting before filtering.
struct Entry {
    name: String,
    value: String,
    source: i8,
    config_type: i8,
    read_only: bool,
    doc: &'static str,
}

fn topic_config_type(name: &str) -> i8 {
    match name {
        "cleanup.policy" => TYPE_LIST,
        "min.cleanable.dirty.ratio" => TYPE_DOUBLE,
        "message.timestamp.type" | "compression.type" => TYPE_STRING,
        "segment.bytes" | "index.interval.bytes" | "max.message.bytes" | "min.insync.replicas" => {
            TYPE_INT
        }
        _ => TYPE_LONG,
    }
}

fn topic_entries(broker: &Broker, topic_name: &str) -> Result<Vec<Entry>, ResponseError> {
    let topic = broker
        .topic(topic_name)
        .ok_or(ResponseError::UnknownTopicOrPartition)?;
    let config = effective_config(&broker.config.log_defaults, &topic.configs)
        .map_err(|_| ResponseError::InvalidConfig)?;
    Ok(TOPIC_CONFIG_KEYS
        .iter()
        .map(|key| Entry {
            name: key.name.to_string(),
            value: describe(&config, key.name).unwrap_or_default(),
            source: if topic.configs.contains_key(key.name) {
                SOURCE_DYNAMIC_TOPIC
            } else {
                SOURCE_DEFAULT
            },
            config_type: topic_config_type(key.name),
            read_only: false,
            doc: key.doc,
        })
        .collect())
}

fn broker_entries(broker: &Broker) -> Vec<Entry> {
    let c = &broker.config;
    let d = &c.log_defaults;
    let entry = |name: &str, value: String, config_type: i8| Entry {
        name: name.to_string(),
        value,
        source: SOURCE_STATIC_BROKER,
        config_type,
        read_only: true,
        doc: "static broker setting (command line or config file)",
    };
    vec![
        entry("node.id", c.node_id.to_string(), TYPE_INT),
        entry("broker.id", c.node_id.to_string(), TYPE_INT),
        entry("log.dirs", c.data_dir.display().to_string(), TYPE_STRING),
        entry(
            "auto.create.topics.enable",
            c.auto_create_topics.to_string(),
            TYPE_BOOLEAN,
        ),
        entry("num.partitions", c.default_partitions.to_string(), TYPE_INT),
        entry(
            "socket.request.max.bytes",
            c.socket_request_max_bytes.to_string(),
            TYPE_INT,
        ),
        entry(
            "log.retention.check.interval.ms",
            c.retention_check_interval_ms.to_string(),
            TYPE_LONG,
        ),
        entry("log.segment.bytes", d.segment_bytes.to_string(), TYPE_INT),
        entry("log.roll.ms", d.segment_ms.to_string(), TYPE_LONG),
        entry("log.retention.ms", d.retention_ms.to_string(), TYPE_LONG),
        entry(
            "log.retention.bytes",
            d.retention_bytes.to_string(),
            TYPE_LONG,
        ),
        entry(
            "log.index.interval.bytes",
            d.index_interval_bytes.to_string(),
            TYPE_INT,
        ),
        entry(
            "message.max.bytes",
            d.max_message_bytes.to_string(),
            TYPE_INT,
        ),
    ]
}

pub fn handle(broker: &Arc<Broker>, version: i16, request: DescribeConfigsRequest) -> Reply {
    let results = request
        .resources
        .iter()
        .map(|resource| {
            let name = resource.resource_name.to_string();
            let entries = match resource.resource_type {
                RESOURCE_TOPIC => topic_entries(broker, &name),
                RESOURCE_BROKER if name.is_empty() || name == broker.config.node_id.to_string() => {
                    Ok(broker_entries(broker))
                }
                RESOURCE_BROKER => Err(ResponseError::InvalidRequest),
                _ => Err(ResponseError::InvalidRequest),
            };
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            let entries = match entries {
                Ok(entries) => entries,
                Err(e) => {
                    return result
                        .with_error_code(code(Some(e)))
                        .with_error_message(Some(str_bytes(&format!("cannot describe {name}"))))
                }
            };
            let wanted = |n: &str| {
                resource
                    .configuration_keys
                    .as_ref()
                    .map(|keys| keys.iter().any(|k| k.as_str() == n))
                    .unwrap_or(true)
            };
            let configs = entries
                .into_iter()
                .filter(|e| wanted(&e.name))
                .map(|e| {
                    let mut out = DescribeConfigsResourceResult::default()
                        .with_name(str_bytes(&e.name))
                        .with_value(Some(str_bytes(&e.value)))
                        .with_read_only(e.read_only)
                        .with_config_source(e.source);
                    if request.include_synonyms {
                        out = out.with_synonyms(vec![DescribeConfigsSynonym::default()
                            .with_name(str_bytes(&e.name))
                            .with_value(Some(str_bytes(&e.value)))
                            .with_source(e.source)]);
                    }
                    if version >= 3 {
                        out = out.with_config_type(e.config_type);
                        if request.include_documentation {
                            out = out.with_documentation(Some(str_bytes(e.doc)));
                        }
                    }
                    out
                })
                .collect();
            result.with_configs(configs)
        })
        .collect();
    Reply::Now(ResponseKind::DescribeConfigs(
        DescribeConfigsResponse::default().with_results(results),
    ))
}
