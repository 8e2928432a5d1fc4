//! CreatePartitions: raises a topic's partition count.

use super::{code, str_bytes};
use crate::broker::{ApiError, Broker};
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse, ResponseKind};
use kafka_protocol::ResponseError;
use std::sync::Arc;

pub async fn handle(
    broker: &Arc<Broker>,
    _version: i16,
    request: CreatePartitionsRequest,
) -> Reply {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let outcome = if topic.assignments.is_some() {
            Err(ApiError::new(
                ResponseError::InvalidReplicaAssignment,
                "explicit assignments of new partitions are not supported: Strand places them",
            ))
        } else if let Err(e) = super::refuse_internal(&topic.name.0, "adding partitions to") {
            Err(e)
        } else {
            broker
                .node
                .create_partitions(&topic.name.0, topic.count, request.validate_only)
                .await
        };
        let result = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
        results.push(match outcome {
            Ok(()) => result,
            Err(e) => result
                .with_error_code(code(Some(e.code)))
                .with_error_message(Some(str_bytes(&e.message))),
        });
    }
    Reply::Now(ResponseKind::CreatePartitions(
        CreatePartitionsResponse::default().with_results(results),
    ))
}
