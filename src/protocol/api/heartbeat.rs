//! Heartbeat: keeps a member's session alive; REBALANCE_IN_PROGRESS tells it to rejoin.

use super::code;
use crate::broker::Broker;
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse, ResponseKind};
use std::sync::Arc;

pub fn handle(broker: &Arc<Broker>, _version: i16, request: HeartbeatRequest) -> Reply {
    let error = broker.groups.heartbeat(
        &request.group_id,
        &request.member_id,
        request.generation_id,
        request.group_instance_id.as_deref(),
    );
    Reply::Now(ResponseKind::Heartbeat(
        HeartbeatResponse::default().with_error_code(code(error)),
    ))
}
