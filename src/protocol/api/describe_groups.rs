//! DescribeGroups: state, protocol and members (with their subscriptions and
//! assignments) of each group. A group this coordinator does not know is "Dead" (v6+:
//! GROUP_ID_NOT_FOUND), as Kafka answers.

use super::{code, str_bytes};
use crate::broker::Broker;
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse, ResponseKind};
use kafka_protocol::ResponseError;
use std::sync::Arc;

pub fn handle(broker: &Arc<Broker>, version: i16, request: DescribeGroupsRequest) -> Reply {
    let groups = request
        .groups
        .into_iter()
        .map(|group_id| {
            let entry = DescribedGroup::default().with_group_id(group_id.clone());
            match broker.groups.describe(&group_id) {
                Err(e) => entry.with_error_code(code(Some(e))),
                Ok(None) => {
                    let entry = entry.with_group_state(str_bytes("Dead"));
                    if version >= 6 {
                        entry
                            .with_error_code(code(Some(ResponseError::GroupIdNotFound)))
                            .with_error_message(Some(str_bytes(&format!(
                                "group {} not found",
                                &*group_id
                            ))))
                    } else {
                        entry
                    }
                }
                Ok(Some(group)) => entry
                    .with_group_state(str_bytes(group.state.kafka_name()))
                    .with_protocol_type(str_bytes(&group.protocol_type))
                    .with_protocol_data(str_bytes(&group.protocol_name))
                    .with_members(
                        group
                            .members
                            .into_iter()
                            .map(|m| {
                                DescribedGroupMember::default()
                                    .with_member_id(str_bytes(&m.member_id))
                                    .with_group_instance_id(if version >= 4 {
                                        m.group_instance_id.as_deref().map(str_bytes)
                                    } else {
                                        None
                                    })
                                    .with_client_id(str_bytes(&m.client_id))
                                    .with_client_host(str_bytes(&m.client_host))
                                    .with_member_metadata(m.metadata)
                                    .with_member_assignment(m.assignment)
                            })
                            .collect(),
                    ),
            }
        })
        .collect();
    Reply::Now(ResponseKind::DescribeGroups(
        DescribeGroupsResponse::default().with_groups(groups),
    ))
}
