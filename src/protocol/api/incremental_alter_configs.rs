//! IncrementalAlterConfigs: SET and DELETE of individual topic configs, and APPEND and
//! SUBTRACT of the one list config (`cleanup.policy`): items are added once, removed if
//! present, and the resulting list is validated like a SET (an empty one is refused).

use super::alter_configs::not_a_topic;
use super::{code, str_bytes, RESOURCE_TOPIC};
use crate::broker::{ApiError, Broker};
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::incremental_alter_configs_request::AlterConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, ResponseKind,
};
use kafka_protocol::ResponseError;
use std::sync::Arc;

const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

/// The topic configs that are lists (APPEND and SUBTRACT apply to them only).
const LIST_CONFIGS: &[&str] = &["cleanup.policy"];

/// `current` (a comma-separated list) with `items` appended (once each) or subtracted.
fn edit_list(current: &str, items: &str, append: bool) -> String {
    let mut list: Vec<&str> = current
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .collect();
    for item in items.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        if append && !list.contains(&item) {
            list.push(item);
        } else if !append {
            list.retain(|i| *i != item);
        }
    }
    list.join(",")
}

pub async fn handle(
    broker: &Arc<Broker>,
    _version: i16,
    request: IncrementalAlterConfigsRequest,
) -> Reply {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in &request.resources {
        let outcome = apply(broker, resource, request.validate_only).await;
        let response = AlterConfigsResourceResponse::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name.clone());
        responses.push(match outcome {
            Ok(()) => response,
            Err(e) => response
                .with_error_code(code(Some(e.code)))
                .with_error_message(Some(str_bytes(&e.message))),
        });
    }
    Reply::Now(ResponseKind::IncrementalAlterConfigs(
        IncrementalAlterConfigsResponse::default().with_responses(responses),
    ))
}

async fn apply(
    broker: &Broker,
    resource: &AlterConfigsResource,
    validate_only: bool,
) -> Result<(), ApiError> {
    if resource.resource_type != RESOURCE_TOPIC {
        return Err(not_a_topic(resource.resource_type));
    }
    let name = resource.resource_name.to_string();
    let topic = broker.topic(&name).ok_or_else(|| {
        ApiError::new(
            ResponseError::UnknownTopicOrPartition,
            format!("unknown topic {name}"),
        )
    })?;
    let mut configs = topic.configs.clone();
    for change in &resource.configs {
        let key = change.name.to_string();
        match (change.config_operation, &change.value) {
            (OP_SET, Some(value)) => {
                configs.insert(key, value.to_string());
            }
            (OP_SET, None) => {
                return Err(ApiError::new(
                    ResponseError::InvalidConfig,
                    format!("SET of {key} needs a value"),
                ))
            }
            (OP_DELETE, _) => {
                configs.remove(&key);
            }
            (op @ (OP_APPEND | OP_SUBTRACT), Some(value))
                if LIST_CONFIGS.contains(&key.as_str()) =>
            {
                let current = match configs.get(&key) {
                    Some(v) => v.clone(),
                    None => crate::log::config::describe(&broker.config.log_defaults, &key)
                        .unwrap_or_default(),
                };
                configs.insert(key, edit_list(&current, value, op == OP_APPEND));
            }
            (op, _) => {
                return Err(ApiError::new(
                    ResponseError::InvalidConfig,
                    format!("operation {op} on {key} is not supported"),
                ))
            }
        }
    }
    broker
        .node
        .set_topic_configs(&name, configs, validate_only)
        .await
}

#[cfg(test)]
mod tests {
    use super::edit_list;

    #[test]
    fn list_edits() {
        assert_eq!(edit_list("delete", "compact", true), "delete,compact");
        assert_eq!(
            edit_list("delete,compact", "compact", true),
            "delete,compact"
        );
        assert_eq!(edit_list("delete,compact", "delete", false), "compact");
        assert_eq!(edit_list("compact", "compact", false), "");
    }
}
