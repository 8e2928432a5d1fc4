//! DescribeProducers (KIP-664): the active producers of each partition, from its
//! producer state on the partition leader: producer id and epoch, last sequence, last
//! timestamp, the epoch of the coordinator that wrote its last marker, and the first
//! offset of its open transaction (-1: none). NOT_LEADER_OR_FOLLOWER on a broker that
//! does not lead the partition, UNKNOWN_TOPIC_OR_PARTITION for one that does not exist.

use super::{code, str_bytes};
use crate::broker::Broker;
use crate::log::producer_state::ProducerEntry;
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::{
    DescribeProducersRequest, DescribeProducersResponse, ProducerId, ResponseKind,
};
use kafka_protocol::ResponseError;

/// Partitions one request may name (Kafka has no limit; this bounds the work).
const MAX_PARTITIONS: usize = 10_000;

fn producer(producer_id: i64, entry: &ProducerEntry) -> ProducerState {
    ProducerState::default()
        .with_producer_id(ProducerId(producer_id))
        .with_producer_epoch(i32::from(entry.producer_epoch))
        .with_last_sequence(entry.batches.back().map_or(-1, |b| b.last_sequence))
        .with_last_timestamp(entry.last_timestamp_ms)
        .with_coordinator_epoch(entry.coordinator_epoch)
        .with_current_txn_start_offset(entry.current_txn_first_offset.unwrap_or(-1))
}

/// One partition's answer.
fn describe(broker: &Broker, topic: &str, partition: i32) -> PartitionResponse {
    let response = PartitionResponse::default().with_partition_index(partition);
    let replica = match broker.node.leader_replica(topic, partition, -1) {
        Ok(replica) => replica,
        Err(e) => {
            return response
                .with_error_code(code(Some(e)))
                .with_error_message(Some(str_bytes(&format!("{e:?}"))))
        }
    };
    let storage = replica.storage.lock();
    let active = storage
        .log()
        .producer_state()
        .producers()
        .map(|(id, entry)| producer(id, entry))
        .collect();
    response.with_active_producers(active)
}

pub fn handle(broker: &Broker, _version: i16, request: DescribeProducersRequest) -> Reply {
    let count: usize = request
        .topics
        .iter()
        .map(|t| t.partition_indexes.len())
        .sum();
    let topics = request
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partition_indexes
                .iter()
                .map(|p| {
                    if count > MAX_PARTITIONS {
                        PartitionResponse::default()
                            .with_partition_index(*p)
                            .with_error_code(code(Some(ResponseError::InvalidRequest)))
                    } else {
                        describe(broker, t.name.0.as_str(), *p)
                    }
                })
                .collect();
            TopicResponse::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    Reply::Now(ResponseKind::DescribeProducers(
        DescribeProducersResponse::default().with_topics(topics),
    ))
}
