//! CreatePartitions: raises a topic's partition count.

use super::{code, str_bytes};
use crate::broker::{ApiError, Broker};
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse, ResponseKind};
use kafka_protocol::ResponseError;
use std::sync::Arc;

pub fn handle(broker: &Arc<Broker>, _version: i16, request: CreatePartitionsRequest) -> Reply {
    let node = broker.config.node_id;
    let results = request
        .topics
        .iter()
        .map(|topic| {
            let misplaced = topic
                .assignments
                .iter()
                .flatten()
                .any(|a| a.broker_ids.iter().any(|b| b.0 != node));
            let outcome = if misplaced {
                Err(ApiError::new(
                    ResponseError::InvalidReplicaAssignment,
                    format!("replicas can only be placed on broker {node}"),
                ))
            } else {
                broker.create_partitions(&topic.name.0, topic.count, request.validate_only)
            };
            let result = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
            match outcome {
                Ok(()) => result,
                Err(e) => result
                    .with_error_code(code(Some(e.code)))
                    .with_error_message(Some(str_bytes(&e.message))),
            }
        })
        .collect();
    Reply::Now(ResponseKind::CreatePartitions(
        CreatePartitionsResponse::default().with_results(results),
    ))
}
