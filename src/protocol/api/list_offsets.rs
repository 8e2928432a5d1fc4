//! ListOffsets: earliest (-2), latest (-1), the offset of the largest timestamp (-3),
//! or the first offset whose timestamp is at or after a given time (via `.timeindex`).
//! With `isolation_level=1` (read_committed, v2+), latest is the last stable offset and
//! lookups see only records below it.

use super::code;
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
    let read_committed = request.isolation_level == 1;
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
                    let wanted = Wanted {
                        index: p.partition_index,
                        current_leader_epoch: p.current_leader_epoch,
                        timestamp: p.timestamp,
                        read_committed,
                    };
                    match lookup(broker, &name, wanted) {
                        Ok((found, leader_epoch)) => {
                            if version >= 4 {
                                base = base.with_leader_epoch(leader_epoch);
                            }
                            match found {
                                Some((offset, timestamp)) => {
                                    base.with_offset(offset).with_timestamp(timestamp)
                                }
                                None => base,
                            }
                        }
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

/// What one partition of the request asks.
#[derive(Clone, Copy)]
struct Wanted {
    index: i32,
    current_leader_epoch: i32,
    timestamp: i64,
    read_committed: bool,
}

/// The offset (and its timestamp) a partition's leader answers, among committed records
/// only (below the high watermark; below the last stable offset for read_committed),
/// with the leader's epoch.
#[allow(clippy::type_complexity)]
fn lookup(
    broker: &Broker,
    topic: &str,
    wanted: Wanted,
) -> Result<(Option<(i64, i64)>, i32), ResponseError> {
    let replica = broker
        .node
        .leader_replica(topic, wanted.index, wanted.current_leader_epoch)?;
    let high_watermark = replica.high_watermark();
    let storage = replica.storage.lock();
    let log = storage.log();
    let upper_offset = if wanted.read_committed {
        log.last_stable_offset(high_watermark)
    } else {
        high_watermark
    };
    let committed = |found: Option<(i64, i64)>| found.filter(|(offset, _)| *offset < upper_offset);
    let found = match wanted.timestamp {
        LATEST_TIMESTAMP => Ok(Some((upper_offset, -1))),
        EARLIEST_TIMESTAMP => Ok(Some((log.log_start_offset(), -1))),
        MAX_TIMESTAMP => log.max_timestamp_offset().map(committed),
        t if t >= 0 => log.offset_for_timestamp(t).map(committed),
        _ => return Err(ResponseError::InvalidRequest),
    };
    match found {
        Ok(found) => Ok((found, replica.leader_epoch())),
        Err(ReadError::Corrupt {
            segment_base_offset,
            position,
        }) => {
            drop(storage);
            replica.report_corruption(segment_base_offset, position);
            Err(ResponseError::KafkaStorageError)
        }
        Err(_) => Err(ResponseError::KafkaStorageError),
    }
}
