//! JoinGroup: handed to the group's coordinator; the answer waits for the rebalance
//! (and for the new generation to be durable).

use super::{code, str_bytes};
use crate::broker::Broker;
use crate::group::coordinator::{JoinRequest, JoinResponse};
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse, ResponseKind};
use kafka_protocol::ResponseError;
use std::sync::Arc;

pub fn handle(
    broker: &Arc<Broker>,
    version: i16,
    request: JoinGroupRequest,
    client_id: String,
    client_host: String,
) -> Reply {
    let join = JoinRequest {
        group_id: request.group_id.to_string(),
        member_id: request.member_id.to_string(),
        group_instance_id: request.group_instance_id.map(|s| s.to_string()),
        client_id,
        client_host,
        session_timeout_ms: request.session_timeout_ms,
        // v0 has no rebalance timeout: the session timeout is used.
        rebalance_timeout_ms: if version >= 1 {
            request.rebalance_timeout_ms
        } else {
            request.session_timeout_ms
        },
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
        require_known_member_id: version >= 4,
    };
    if join.group_id.is_empty() {
        return Reply::Now(response(version, error(ResponseError::InvalidGroupId)));
    }
    let broker = broker.clone();
    Reply::Later(Box::pin(async move {
        response(version, broker.groups.join(join).await)
    }))
}

fn error(e: ResponseError) -> JoinResponse {
    crate::broker::groups::join_error(e)
}

fn response(version: i16, answer: JoinResponse) -> ResponseKind {
    let members = answer
        .members
        .into_iter()
        .map(|(member_id, instance, metadata)| {
            JoinGroupResponseMember::default()
                .with_member_id(str_bytes(&member_id))
                .with_group_instance_id(if version >= 5 {
                    instance.map(|i| str_bytes(&i))
                } else {
                    None
                })
                .with_metadata(metadata)
        })
        .collect();
    let mut response = JoinGroupResponse::default()
        .with_error_code(code(answer.error))
        .with_generation_id(answer.generation_id)
        .with_protocol_name(
            answer
                .protocol_name
                .map(|p| str_bytes(&p))
                .or_else(|| (version < 7).then(|| str_bytes(""))),
        )
        .with_leader(str_bytes(&answer.leader))
        .with_member_id(str_bytes(&answer.member_id))
        .with_members(members);
    if version >= 7 {
        response = response.with_protocol_type(answer.protocol_type.map(|p| str_bytes(&p)));
    }
    ResponseKind::JoinGroup(response)
}
