//! LeaveGroup: one member (v0-v2) or a batch of members by id or instance id (v3+).

use super::{code, str_bytes};
use crate::broker::Broker;
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse, ResponseKind};
use std::sync::Arc;

pub fn handle(broker: &Arc<Broker>, version: i16, request: LeaveGroupRequest) -> Reply {
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        request
            .members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|s| s.to_string()),
                )
            })
            .collect()
    } else {
        vec![(request.member_id.to_string(), None)]
    };
    let group_id = request.group_id.to_string();
    let broker = broker.clone();
    Reply::Later(Box::pin(async move {
        let response = match broker.groups.leave(&group_id, &members).await {
            Err(e) => LeaveGroupResponse::default().with_error_code(code(Some(e))),
            Ok(errors) if version >= 3 => LeaveGroupResponse::default().with_members(
                members
                    .iter()
                    .zip(errors)
                    .map(|((member_id, instance), error)| {
                        MemberResponse::default()
                            .with_member_id(str_bytes(member_id))
                            .with_group_instance_id(instance.as_deref().map(str_bytes))
                            .with_error_code(code(error))
                    })
                    .collect(),
            ),
            Ok(errors) => LeaveGroupResponse::default()
                .with_error_code(code(errors.into_iter().next().flatten())),
        };
        ResponseKind::LeaveGroup(response)
    }))
}
