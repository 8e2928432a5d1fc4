//! TxnOffsetCommit (key 28, KIP-98; v3+ member fields from KIP-447): a transactional
//! producer commits a consumer group's offsets inside its transaction. It goes to the
//! group's coordinator, which appends them as a transactional batch of the producer to
//! `__consumer_offsets` and keeps them pending until the transaction's marker: they
//! become visible if and only if the transaction commits. As Kafka's coordinator
//! (without KIP-890 part 2), the transaction coordinator is not asked: the partition's
//! leader fences a stale producer epoch. An offset for a partition that does not exist
//! is refused (UNKNOWN_TOPIC_OR_PARTITION), as OffsetCommit does.

use super::code;
use crate::broker::Broker;
use crate::group::coordinator::TxnOffsetCommitRequest as TxnCommit;
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{ResponseKind, TxnOffsetCommitRequest, TxnOffsetCommitResponse};
use kafka_protocol::ResponseError;
use std::sync::Arc;

/// The coordinator's request, with every offset asked in request order.
fn txn_commit(request: TxnOffsetCommitRequest) -> TxnCommit {
    TxnCommit {
        group_id: request.group_id.to_string(),
        producer_id: request.producer_id.0,
        producer_epoch: request.producer_epoch,
        // v0-2 carry no member fields: the defaults (empty, -1) skip the checks.
        member_id: request.member_id.to_string(),
        generation_id: request.generation_id,
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
    }
}

pub fn handle(broker: &Arc<Broker>, _version: i16, request: TxnOffsetCommitRequest) -> Reply {
    let asked: Vec<(String, Vec<i32>)> = request
        .topics
        .iter()
        .map(|t| {
            let partitions = t.partitions.iter().map(|p| p.partition_index).collect();
            (t.name.to_string(), partitions)
        })
        .collect();
    let mut commit = txn_commit(request);
    let known: Vec<bool> = broker.node.with_image(|image| {
        commit
            .offsets
            .iter()
            .map(|(topic, partition, ..)| image.partition(topic, *partition).is_some())
            .collect()
    });
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
            broker.groups.txn_commit_offsets(commit).await
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
                let partitions = partitions
                    .into_iter()
                    .map(|index| {
                        TxnOffsetCommitResponsePartition::default()
                            .with_partition_index(index)
                            .with_error_code(code(errors.next().flatten()))
                    })
                    .collect();
                TxnOffsetCommitResponseTopic::default()
                    .with_name(super::str_bytes(&name).into())
                    .with_partitions(partitions)
            })
            .collect();
        ResponseKind::TxnOffsetCommit(TxnOffsetCommitResponse::default().with_topics(topics))
    }))
}
