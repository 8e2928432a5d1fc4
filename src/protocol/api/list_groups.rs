//! ListGroups: the groups this broker coordinates (admin tools ask every broker),
//! filtered by state (v4+) and type (v5+: every group here is "classic").

use super::str_bytes;
use crate::broker::Broker;
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{ListGroupsRequest, ListGroupsResponse, ResponseKind};
use std::sync::Arc;

pub fn handle(broker: &Arc<Broker>, version: i16, request: ListGroupsRequest) -> Reply {
    let wanted_state = |state: &str| {
        request.states_filter.is_empty()
            || request
                .states_filter
                .iter()
                .any(|s| s.eq_ignore_ascii_case(state))
    };
    let wanted_type = request.types_filter.is_empty()
        || request
            .types_filter
            .iter()
            .any(|t| t.eq_ignore_ascii_case("classic"));
    let groups = broker
        .groups
        .list()
        .into_iter()
        .filter(|(_, _, state)| wanted_type && wanted_state(state.kafka_name()))
        .map(|(group_id, protocol_type, state)| {
            let mut listed = ListedGroup::default()
                .with_group_id(str_bytes(&group_id).into())
                .with_protocol_type(str_bytes(&protocol_type));
            if version >= 4 {
                listed = listed.with_group_state(str_bytes(state.kafka_name()));
            }
            if version >= 5 {
                listed = listed.with_group_type(str_bytes("classic"));
            }
            listed
        })
        .collect();
    Reply::Now(ResponseKind::ListGroups(
        ListGroupsResponse::default().with_groups(groups),
    ))
}
