//! TxnOffsetCommit (key 28, KIP-98; v3+ member fields from KIP-447): a transactional
//! producer commits a consumer group's offsets inside its transaction. It goes to the
//! group's coordinator, which appends them as a transactional batch of the producer to
//! `__consumer_offsets` and keeps them pending until the transaction's marker: they
//! become visible if and only if the transaction commits. As Kafka's coordinator
//! (without KIP-890 part 2), the transaction coordinator is not asked: the partition's
//! leader fences a stale producer epoch. An offset for a partition that does not exist
//! is refused (UNKNOWN_TOPIC_OR_PARTITION), as OffsetCommit does.

use super::offset_commit::OffsetsAsked;
use crate::broker::Broker;
use crate::group::coordinator::TxnOffsetCommitRequest as TxnCommit;
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{ResponseKind, TxnOffsetCommitRequest, TxnOffsetCommitResponse};
use std::sync::Arc;

pub fn handle(broker: &Arc<Broker>, _version: i16, request: TxnOffsetCommitRequest) -> Reply {
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
    let commit = TxnCommit {
        group_id: request.group_id.to_string(),
        producer_id: request.producer_id.0,
        producer_epoch: request.producer_epoch,
        // v0-2 carry no member fields: the defaults (empty, -1) skip the checks.
        member_id: request.member_id.to_string(),
        generation_id: request.generation_id,
        group_instance_id: request.group_instance_id.map(|s| s.to_string()),
        offsets: std::mem::take(&mut asked.to_commit),
    };
    let broker = broker.clone();
    Reply::Later(Box::pin(async move {
        let committed = if commit.offsets.is_empty() {
            Vec::new()
        } else {
            broker.groups.txn_commit_offsets(commit).await
        };
        let topics = asked.answer(
            committed,
            |index, error_code| {
                TxnOffsetCommitResponsePartition::default()
                    .with_partition_index(index)
                    .with_error_code(error_code)
            },
            |name, partitions| {
                TxnOffsetCommitResponseTopic::default()
                    .with_name(name.into())
                    .with_partitions(partitions)
            },
        );
        ResponseKind::TxnOffsetCommit(TxnOffsetCommitResponse::default().with_topics(topics))
    }))
}
