//! OffsetCommit: a group's committed offsets, answered once they are durable in
//! `__consumer_offsets`; an offset for a partition that does not exist is refused
//! (UNKNOWN_TOPIC_OR_PARTITION).

use super::code;
use crate::broker::Broker;
use crate::group::coordinator::OffsetCommitRequest as Commit;
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse, ResponseKind};
use kafka_protocol::ResponseError;
use std::sync::Arc;

pub fn handle(broker: &Arc<Broker>, _version: i16, request: OffsetCommitRequest) -> Reply {
    // (topic, partition) in request order, to answer in the same shape.
    let asked: Vec<(String, Vec<i32>)> = request
        .topics
        .iter()
        .map(|t| {
            (
                t.name.to_string(),
                t.partitions.iter().map(|p| p.partition_index).collect(),
            )
        })
        .collect();
    let commit = Commit {
        group_id: request.group_id.to_string(),
        member_id: request.member_id.to_string(),
        generation_id: request.generation_id_or_member_epoch,
        group_instance_id: request.group_instance_id.map(|s| s.to_string()),
        offsets: request
            .topics
            .into_iter()
            .flat_map(|t| {
                let name = t.name.to_string();
                t.partitions.into_iter().map(move |p| {
                    (
                        name.clone(),
                        p.partition_index,
                        p.committed_offset,
                        p.committed_leader_epoch,
                        p.committed_metadata
                            .map(|m| m.to_string())
                            .unwrap_or_default(),
                    )
                })
            })
            .collect(),
    };
    // As Kafka: an offset for a partition that does not exist is refused, the others
    // are committed.
    let known: Vec<bool> = broker.node.with_image(|image| {
        commit
            .offsets
            .iter()
            .map(|(topic, partition, ..)| image.partition(topic, *partition).is_some())
            .collect()
    });
    let mut commit = commit;
    let mut index = 0;
    commit.offsets.retain(|_| {
        index += 1;
        known[index - 1]
    });
    let broker = broker.clone();
    Reply::Later(Box::pin(async move {
        let mut committed = if commit.offsets.is_empty() {
            Vec::new()
        } else {
            broker.groups.commit_offsets(commit).await
        }
        .into_iter();
        let mut errors = known.into_iter().map(|known| {
            if known {
                committed.next().flatten()
            } else {
                Some(ResponseError::UnknownTopicOrPartition)
            }
        });
        let topics = asked
            .into_iter()
            .map(|(name, partitions)| {
                OffsetCommitResponseTopic::default()
                    .with_name(super::str_bytes(&name).into())
                    .with_partitions(
                        partitions
                            .into_iter()
                            .map(|index| {
                                OffsetCommitResponsePartition::default()
                                    .with_partition_index(index)
                                    .with_error_code(code(errors.next().flatten()))
                            })
                            .collect(),
                    )
            })
            .collect();
        ResponseKind::OffsetCommit(OffsetCommitResponse::default().with_topics(topics))
    }))
}
