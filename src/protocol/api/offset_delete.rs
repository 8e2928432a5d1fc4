//! OffsetDelete: removes a group's committed offsets for partitions of topics no member
//! is subscribed to (GROUP_SUBSCRIBED_TO_TOPIC otherwise).

use super::code;
use crate::broker::Broker;
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse, ResponseKind};
use std::sync::Arc;

pub fn handle(broker: &Arc<Broker>, _version: i16, request: OffsetDeleteRequest) -> Reply {
    let partitions: Vec<(String, i32)> = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.name.to_string(), p.partition_index))
        })
        .collect();
    let group_id = request.group_id.to_string();
    let broker = broker.clone();
    Reply::Later(Box::pin(async move {
        let response = match broker.groups.delete_offsets(&group_id, &partitions).await {
            Err(e) => OffsetDeleteResponse::default().with_error_code(code(Some(e))),
            Ok(errors) => {
                let mut errors = errors.into_iter();
                OffsetDeleteResponse::default().with_topics(
                    request
                        .topics
                        .into_iter()
                        .map(|t| {
                            OffsetDeleteResponseTopic::default()
                                .with_name(t.name)
                                .with_partitions(
                                    t.partitions
                                        .into_iter()
                                        .map(|p| {
                                            OffsetDeleteResponsePartition::default()
                                                .with_partition_index(p.partition_index)
                                                .with_error_code(code(errors.next().flatten()))
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                )
            }
        };
        ResponseKind::OffsetDelete(response)
    }))
}
