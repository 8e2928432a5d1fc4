//! FindCoordinator: advertised because librdkafka enables LZ4 only when it is listed.
//! Strand has no group or transaction coordinator yet, so every key gets
//! COORDINATOR_NOT_AVAILABLE (clients retry; consumers using assign() never need one).

use super::{code, str_bytes};
use crate::broker::Broker;
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{
    BrokerId, FindCoordinatorRequest, FindCoordinatorResponse, ResponseKind,
};
use kafka_protocol::ResponseError;
use std::sync::Arc;

pub fn handle(_broker: &Arc<Broker>, version: i16, request: FindCoordinatorRequest) -> Reply {
    let error = code(Some(ResponseError::CoordinatorNotAvailable));
    let message = Some(str_bytes(
        "Strand has no group or transaction coordinator yet",
    ));
    let response = if version >= 4 {
        let coordinators = request
            .coordinator_keys
            .into_iter()
            .map(|key| {
                Coordinator::default()
                    .with_key(key)
                    .with_node_id(BrokerId(-1))
                    .with_port(-1)
                    .with_error_code(error)
                    .with_error_message(message.clone())
            })
            .collect();
        FindCoordinatorResponse::default().with_coordinators(coordinators)
    } else {
        let response = FindCoordinatorResponse::default()
            .with_error_code(error)
            .with_node_id(BrokerId(-1))
            .with_port(-1);
        if version >= 1 {
            response.with_error_message(message)
        } else {
            response
        }
    };
    Reply::Now(ResponseKind::FindCoordinator(response))
}
