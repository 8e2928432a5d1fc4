//! AlterConfigs: replaces a topic's whole set of config overrides. Broker settings are
//! static (command line and config file) and cannot be altered at run time.

use super::{code, config_map, str_bytes, RESOURCE_BROKER, RESOURCE_TOPIC};
use crate::broker::{ApiError, Broker};
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse, ResponseKind};
use kafka_protocol::ResponseError;
use std::sync::Arc;

/// The error for any attempt to change a resource other than a topic.
pub(crate) fn not_a_topic(resource_type: i8) -> ApiError {
    if resource_type == RESOURCE_BROKER {
        ApiError::new(
            ResponseError::InvalidRequest,
            "broker settings are static in Strand: change the config file and restart",
        )
    } else {
        ApiError::new(
            ResponseError::InvalidRequest,
            format!("unsupported resource type {resource_type}"),
        )
    }
}

pub async fn handle(broker: &Arc<Broker>, _version: i16, request: AlterConfigsRequest) -> Reply {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in &request.resources {
        let outcome = if resource.resource_type == RESOURCE_TOPIC {
            let configs = config_map(resource.configs.iter().map(|c| (&c.name, c.value.as_ref())));
            broker
                .node
                .set_topic_configs(&resource.resource_name, configs, request.validate_only)
                .await
        } else {
            Err(not_a_topic(resource.resource_type))
        };
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
    Reply::Now(ResponseKind::AlterConfigs(
        AlterConfigsResponse::default().with_responses(responses),
    ))
}
