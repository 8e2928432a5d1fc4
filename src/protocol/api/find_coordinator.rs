//! FindCoordinator: the broker that coordinates a consumer group is the leader of the
//! group's `__consumer_offsets` partition, and the one that coordinates a transactional
//! id the leader of its `__transaction_state` partition (each topic created on the first
//! request for it). Other key types (share groups) get INVALID_REQUEST.

use super::{code, str_bytes};
use crate::broker::Broker;
use crate::error::ApiError;
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{
    BrokerId, FindCoordinatorRequest, FindCoordinatorResponse, ResponseKind,
};
use kafka_protocol::ResponseError;
use std::sync::Arc;

const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

/// The coordinator of one key: (node id, host, port).
async fn find(broker: &Broker, key: &str, key_type: i8) -> Result<(i32, String, i32), ApiError> {
    if key.is_empty() {
        return Err(ApiError::new(ResponseError::InvalidRequest, "empty key"));
    }
    let node_id = match key_type {
        KEY_TYPE_GROUP => broker.groups.find_coordinator(key).await?,
        KEY_TYPE_TRANSACTION => broker.txns.find_coordinator(key).await?,
        other => {
            return Err(ApiError::new(
                ResponseError::InvalidRequest,
                format!("unsupported coordinator key type {other}"),
            ))
        }
    };
    broker
        .node
        .with_image(|image| {
            image
                .brokers
                .get(&node_id)
                .map(|b| (node_id, b.host.clone(), b.port))
        })
        .ok_or_else(|| {
            ApiError::new(
                ResponseError::CoordinatorNotAvailable,
                "coordinator unknown",
            )
        })
}

pub async fn handle(broker: &Arc<Broker>, version: i16, request: FindCoordinatorRequest) -> Reply {
    let response = if version >= 4 {
        let mut coordinators = Vec::with_capacity(request.coordinator_keys.len());
        for key in request.coordinator_keys {
            let found = find(broker, &key, request.key_type).await;
            let entry = Coordinator::default().with_key(key);
            coordinators.push(match found {
                Ok((node_id, host, port)) => entry
                    .with_node_id(BrokerId(node_id))
                    .with_host(str_bytes(&host))
                    .with_port(port),
                Err(e) => entry
                    .with_node_id(BrokerId(-1))
                    .with_port(-1)
                    .with_error_code(code(Some(e.code)))
                    .with_error_message(Some(str_bytes(&e.message))),
            });
        }
        FindCoordinatorResponse::default().with_coordinators(coordinators)
    } else {
        let response = FindCoordinatorResponse::default();
        let (response, message) = match find(broker, &request.key, request.key_type).await {
            Ok((node_id, host, port)) => (
                response
                    .with_node_id(BrokerId(node_id))
                    .with_host(str_bytes(&host))
                    .with_port(port),
                None,
            ),
            Err(e) => (
                response
                    .with_error_code(code(Some(e.code)))
                    .with_node_id(BrokerId(-1))
                    .with_port(-1),
                Some(str_bytes(&e.message)),
            ),
        };
        if version >= 1 {
            response.with_error_message(message)
        } else {
            response
        }
    };
    Reply::Now(ResponseKind::FindCoordinator(response))
}
