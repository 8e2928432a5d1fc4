//! ListOffsets: earliest (-2), latest (-1), the offset of the largest timestamp (-3),
//! or the first offset whose timestamp is at or after a given time (via `.timeindex`).

use super::code;
use crate::broker::partition::SINGLE_NODE_LEADER_EPOCH;
use crate::broker::Broker;
use crate::log::ReadError;
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse, ResponseKind};
use kafka_protocol::ResponseError;
use std::sync::Arc;

pub const LATEST_TIMESTAMP: i64 = -1;
pub const EARLIEST_TIMESTAMP: i64 = -2;
pub const MAX_TIMESTAMP: i64 = -3;

pub fn handle(broker: &Arc<Broker>, version: i16, request: ListOffsetsRequest) -> Reply {
    let topics = request
        .topics
        .iter()
        .map(|topic| {
            let name = topic.name.0.to_string();
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let mut base = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_timestamp(-1)
                        .with_offset(-1);
                    if version >= 4 {
                        base = base.with_leader_epoch(SINGLE_NODE_LEADER_EPOCH);
                    }
                    match lookup(
                        broker,
                        &name,
                        p.partition_index,
                        p.current_leader_epoch,
                        p.timestamp,
                    ) {
                        Ok(Some((offset, timestamp))) => {
                            base.with_offset(offset).with_timestamp(timestamp)
                        }
                        Ok(None) => base,
                        Err(e) => base.with_error_code(code(Some(e))),
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    Reply::Now(ResponseKind::ListOffsets(
        ListOffsetsResponse::default().with_topics(topics),
    ))
}

fn lookup(
    broker: &Broker,
    topic: &str,
    index: i32,
    current_leader_epoch: i32,
    timestamp: i64,
) -> Result<Option<(i64, i64)>, ResponseError> {
    let partition = broker
        .partition(topic, index)
        .ok_or(ResponseError::UnknownTopicOrPartition)?;
    if current_leader_epoch > SINGLE_NODE_LEADER_EPOCH {
        return Err(ResponseError::UnknownLeaderEpoch);
    }
    let log = partition.log();
    let found = match timestamp {
        LATEST_TIMESTAMP => Ok(Some((log.log_end_offset(), -1))),
        EARLIEST_TIMESTAMP => Ok(Some((log.log_start_offset(), -1))),
        MAX_TIMESTAMP => log.max_timestamp_offset(),
        t if t >= 0 => log.offset_for_timestamp(t),
        _ => return Err(ResponseError::InvalidRequest),
    };
    match found {
        Ok(found) => Ok(found),
        Err(ReadError::Corrupt {
            segment_base_offset,
            position,
        }) => {
            drop(log);
            partition.report_corruption(segment_base_offset, position);
            Err(ResponseError::KafkaStorageError)
        }
        Err(_) => Err(ResponseError::KafkaStorageError),
    }
}
