//! SyncGroup: the leader hands in the assignment, every member waits for its own.

use super::{code, str_bytes};
use crate::broker::Broker;
use crate::group::coordinator::SyncRequest;
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::{ResponseKind, SyncGroupRequest, SyncGroupResponse};
use std::sync::Arc;

pub fn handle(broker: &Arc<Broker>, version: i16, request: SyncGroupRequest) -> Reply {
    let sync = SyncRequest {
        group_id: request.group_id.to_string(),
        member_id: request.member_id.to_string(),
        generation_id: request.generation_id,
        group_instance_id: request.group_instance_id.map(|s| s.to_string()),
        protocol_type: request.protocol_type.map(|s| s.to_string()),
        protocol_name: request.protocol_name.map(|s| s.to_string()),
        assignments: request
            .assignments
            .into_iter()
            .map(|a| (a.member_id.to_string(), a.assignment))
            .collect(),
    };
    let broker = broker.clone();
    Reply::Later(Box::pin(async move {
        let answer = broker.groups.sync(sync).await;
        let mut response = SyncGroupResponse::default()
            .with_error_code(code(answer.error))
            .with_assignment(answer.assignment);
        if version >= 5 {
            response = response
                .with_protocol_type(answer.protocol_type.map(|p| str_bytes(&p)))
                .with_protocol_name(answer.protocol_name.map(|p| str_bytes(&p)));
        }
        ResponseKind::SyncGroup(response)
    }))
}
