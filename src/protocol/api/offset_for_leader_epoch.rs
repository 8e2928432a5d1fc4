//! OffsetForLeaderEpoch: for a leader epoch a client last fetched in, the largest epoch at
//! or below it that the leader's log holds and the offset where that epoch ends (the
//! next epoch's first offset). A client whose position lies past that offset lost
//! records to a truncation (KIP-320). Leader epochs are Raft terms, read from the
//! partitionLeaderEpoch of the stored batches. Only the partition's leader answers; for
//! a consumer the current epoch ends at the high watermark (it never saw more).

use super::code;
use crate::broker::Broker;
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, ResponseKind,
};
use std::sync::Arc;

/// Kafka's "no such epoch / offset".
const UNDEFINED: i64 = -1;

pub fn handle(broker: &Arc<Broker>, _version: i16, request: OffsetForLeaderEpochRequest) -> Reply {
    let from_consumer = request.replica_id.0 < 0;
    let topics = request
        .topics
        .iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let base = EpochEndOffset::default()
                        .with_partition(p.partition)
                        .with_leader_epoch(UNDEFINED as i32)
                        .with_end_offset(UNDEFINED);
                    let replica = match broker.node.leader_replica(
                        &topic.topic.0,
                        p.partition,
                        p.current_leader_epoch,
                    ) {
                        Ok(replica) => replica,
                        Err(e) => return base.with_error_code(code(Some(e))),
                    };
                    if p.leader_epoch < 0 || p.leader_epoch > replica.leader_epoch() {
                        return base;
                    }
                    let found = replica
                        .storage
                        .lock()
                        .end_offset_for_epoch(p.leader_epoch as u64);
                    match found {
                        Some((epoch, end_offset)) => {
                            let end_offset = if from_consumer {
                                end_offset.min(replica.high_watermark())
                            } else {
                                end_offset
                            };
                            base.with_leader_epoch(epoch as i32)
                                .with_end_offset(end_offset)
                        }
                        None => base,
                    }
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic.clone())
                .with_partitions(partitions)
        })
        .collect();
    Reply::Now(ResponseKind::OffsetForLeaderEpoch(
        OffsetForLeaderEpochResponse::default().with_topics(topics),
    ))
}
