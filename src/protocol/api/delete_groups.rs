//! DeleteGroups: an empty group and its committed offsets, once the deletion is durable.

use super::code;
use crate::broker::Broker;
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse, ResponseKind};
use std::sync::Arc;

pub fn handle(broker: &Arc<Broker>, _version: i16, request: DeleteGroupsRequest) -> Reply {
    let broker = broker.clone();
    Reply::Later(Box::pin(async move {
        let names: Vec<String> = request.groups_names.iter().map(|g| g.to_string()).collect();
        let outcomes = broker.groups.delete_groups(&names).await;
        let results = request
            .groups_names
            .into_iter()
            .zip(outcomes)
            .map(|(group_id, error)| {
                DeletableGroupResult::default()
                    .with_group_id(group_id)
                    .with_error_code(code(error))
            })
            .collect();
        ResponseKind::DeleteGroups(DeleteGroupsResponse::default().with_results(results))
    }))
}
