//! OffsetCommit: a group's committed offsets, answered once they are durable in
//! `__consumer_offsets`; an offset for a partition that does not exist is refused
//! (UNKNOWN_TOPIC_OR_PARTITION). The request walk and the answer's shape are shared
//! with TxnOffsetCommit ([`OffsetsAsked`]).

use super::code;
use crate::broker::Broker;
use crate::group::coordinator::OffsetCommitRequest as Commit;
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse, ResponseKind};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use std::sync::Arc;

/// One offset to commit: (topic, partition, offset, leader epoch, metadata).
pub(super) type OffsetToCommit = (String, i32, i64, i32, String);

/// The offsets of an OffsetCommit or TxnOffsetCommit request, flattened in request
/// order, with the (topic, partitions) shape its answer must have.
pub(super) struct OffsetsAsked {
    shape: Vec<(String, Vec<i32>)>,
    /// The offsets of partitions that exist: what goes to the coordinator.
    pub to_commit: Vec<OffsetToCommit>,
    /// Whether each asked partition exists, in request order.
    known: Vec<bool>,
}

impl OffsetsAsked {
    /// `topics`: each topic's name and its (partition, offset, leader epoch, metadata),
    /// in request order. As Kafka, an offset for a partition that does not exist is
    /// refused and the others are committed.
    pub fn new(
        broker: &Broker,
        topics: impl Iterator<Item = (String, Vec<(i32, i64, i32, Option<StrBytes>)>)>,
    ) -> OffsetsAsked {
        let mut shape = Vec::new();
        let mut offsets = Vec::new();
        for (name, partitions) in topics {
            shape.push((name.clone(), partitions.iter().map(|p| p.0).collect()));
            offsets.extend(
                partitions
                    .into_iter()
                    .map(|(partition, offset, epoch, meta)| {
                        let metadata = meta.map(|m| m.to_string()).unwrap_or_default();
                        (name.clone(), partition, offset, epoch, metadata)
                    }),
            );
        }
        let known: Vec<bool> = broker.node.with_image(|image| {
            offsets
                .iter()
                .map(|(topic, partition, ..)| image.partition(topic, *partition).is_some())
                .collect()
        });
        let to_commit = offsets
            .into_iter()
            .zip(&known)
            .filter(|(_, known)| **known)
            .map(|(offset, _)| offset)
            .collect();
        OffsetsAsked {
            shape,
            to_commit,
            known,
        }
    }

    /// The answer's topics: `committed` holds the coordinator's result for each offset
    /// of [`Self::to_commit`]; a partition that does not exist gets
    /// UNKNOWN_TOPIC_OR_PARTITION. `partition` and `topic` build the response structs.
    pub fn answer<P, T>(
        self,
        committed: Vec<Option<ResponseError>>,
        partition: impl Fn(i32, i16) -> P,
        topic: impl Fn(StrBytes, Vec<P>) -> T,
    ) -> Vec<T> {
        let mut committed = committed.into_iter();
        let mut errors = self.known.into_iter().map(|known| {
            if known {
                committed.next().flatten()
            } else {
                Some(ResponseError::UnknownTopicOrPartition)
            }
        });
        self.shape
            .into_iter()
            .map(|(name, partitions)| {
                let partitions = partitions
                    .into_iter()
                    .map(|index| partition(index, code(errors.next().flatten())))
                    .collect();
                topic(super::str_bytes(&name), partitions)
            })
            .collect()
    }
}

pub fn handle(broker: &Arc<Broker>, _version: i16, request: OffsetCommitRequest) -> Reply {
    let mut asked = OffsetsAsked::new(
        broker,
        request.topics.into_iter().map(|t| {
            let partitions = t.partitions.into_iter().map(|p| {
                let metadata = p.committed_metadata;
                (
                    p.partition_index,
                    p.committed_offset,
                    p.committed_leader_epoch,
                    metadata,
                )
            });
            (t.name.to_string(), partitions.collect())
        }),
    );
    let commit = Commit {
        group_id: request.group_id.to_string(),
        member_id: request.member_id.to_string(),
        generation_id: request.generation_id_or_member_epoch,
        group_instance_id: request.group_instance_id.map(|s| s.to_string()),
        offsets: std::mem::take(&mut asked.to_commit),
    };
    let broker = broker.clone();
    Reply::Later(Box::pin(async move {
        let committed = if commit.offsets.is_empty() {
            Vec::new()
        } else {
            broker.groups.commit_offsets(commit).await
        };
        let topics = asked.answer(
            committed,
            |index, error_code| {
                OffsetCommitResponsePartition::default()
                    .with_partition_index(index)
                    .with_error_code(error_code)
            },
            |name, partitions| {
                OffsetCommitResponseTopic::default()
                    .with_name(name.into())
                    .with_partitions(partitions)
            },
        );
        ResponseKind::OffsetCommit(OffsetCommitResponse::default().with_topics(topics))
    }))
}
