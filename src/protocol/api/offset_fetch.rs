//! OffsetFetch: a group's committed offsets (v8+: several groups in one request). A
//! partition without one gets offset -1. With `require_stable` (v7+, KIP-447), a
//! partition whose offset is pending in an open transaction gets
//! UNSTABLE_OFFSET_COMMIT (the consumer retries) instead of the last committed one.

use super::{code, str_bytes};
use crate::broker::Broker;
use crate::group::coordinator::CommittedOffset;
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{OffsetFetchRequest, OffsetFetchResponse, ResponseKind};
use kafka_protocol::ResponseError;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Per partition: its committed offset, or why it is not given.
type Fetched = Result<Vec<((String, i32), PartitionOffset)>, ResponseError>;
type PartitionOffset = Result<Option<CommittedOffset>, ResponseError>;

/// The offsets by topic, in the order first met.
fn by_topic(
    fetched: Vec<((String, i32), PartitionOffset)>,
) -> Vec<(String, Vec<(i32, PartitionOffset)>)> {
    let mut order: Vec<String> = Vec::new();
    let mut topics: BTreeMap<String, Vec<(i32, PartitionOffset)>> = BTreeMap::new();
    for ((topic, partition), committed) in fetched {
        if !topics.contains_key(&topic) {
            order.push(topic.clone());
        }
        topics
            .entry(topic)
            .or_default()
            .push((partition, committed));
    }
    order
        .into_iter()
        .map(|t| {
            let partitions = topics.remove(&t).unwrap_or_default();
            (t, partitions)
        })
        .collect()
}

fn fetch(
    broker: &Broker,
    group_id: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
    require_stable: bool,
) -> Fetched {
    let asked: Option<Vec<(String, i32)>> = topics.map(|topics| {
        topics
            .into_iter()
            .flat_map(|(name, partitions)| partitions.into_iter().map(move |p| (name.clone(), p)))
            .collect()
    });
    let (fetched, unstable) = if require_stable {
        broker
            .groups
            .fetch_offsets_and_pending(group_id, asked.as_deref())?
    } else {
        let fetched = broker.groups.fetch_offsets(group_id, asked.as_deref())?;
        (fetched, Default::default())
    };
    Ok(fetched
        .into_iter()
        .map(|(key, committed)| {
            let offset = if unstable.contains(&key) {
                Err(ResponseError::UnstableOffsetCommit)
            } else {
                Ok(committed)
            };
            (key, offset)
        })
        .collect())
}

/// (offset, leader epoch, metadata, error) of one partition.
fn offset_fields(offset: &PartitionOffset) -> (i64, i32, String, i16) {
    match offset {
        Ok(Some(c)) => (c.offset, c.leader_epoch, c.metadata.clone(), 0),
        Ok(None) => (-1, -1, String::new(), 0),
        Err(e) => (-1, -1, String::new(), code(Some(*e))),
    }
}

pub fn handle(broker: &Arc<Broker>, version: i16, request: OffsetFetchRequest) -> Reply {
    if version >= 8 {
        let groups = request
            .groups
            .into_iter()
            .map(|group| {
                let topics = group.topics.map(|topics| {
                    topics
                        .into_iter()
                        .map(|t| (t.name.to_string(), t.partition_indexes))
                        .collect()
                });
                let entry =
                    OffsetFetchResponseGroup::default().with_group_id(group.group_id.clone());
                match fetch(broker, &group.group_id, topics, request.require_stable) {
                    Err(e) => entry.with_error_code(code(Some(e))),
                    Ok(fetched) => entry.with_topics(
                        by_topic(fetched)
                            .into_iter()
                            .map(|(name, partitions)| {
                                OffsetFetchResponseTopics::default()
                                    .with_name(str_bytes(&name).into())
                                    .with_partitions(
                                        partitions
                                            .into_iter()
                                            .map(|(index, committed)| {
                                                let (offset, epoch, metadata, error) =
                                                    offset_fields(&committed);
                                                OffsetFetchResponsePartitions::default()
                                                    .with_partition_index(index)
                                                    .with_error_code(error)
                                                    .with_committed_offset(offset)
                                                    .with_committed_leader_epoch(epoch)
                                                    .with_metadata(Some(str_bytes(&metadata)))
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    ),
                }
            })
            .collect();
        return Reply::Now(ResponseKind::OffsetFetch(
            OffsetFetchResponse::default().with_groups(groups),
        ));
    }
    let topics = request.topics.map(|topics| {
        topics
            .into_iter()
            .map(|t| (t.name.to_string(), t.partition_indexes))
            .collect()
    });
    let require_stable = version >= 7 && request.require_stable;
    let response = match fetch(broker, &request.group_id, topics.clone(), require_stable) {
        Err(e) if version >= 2 => OffsetFetchResponse::default().with_error_code(code(Some(e))),
        Err(e) => {
            // v1 has no top-level error: every partition asked carries it.
            let topics = topics
                .unwrap_or_default()
                .into_iter()
                .map(|(name, partitions)| {
                    OffsetFetchResponseTopic::default()
                        .with_name(str_bytes(&name).into())
                        .with_partitions(
                            partitions
                                .into_iter()
                                .map(|index| {
                                    OffsetFetchResponsePartition::default()
                                        .with_partition_index(index)
                                        .with_committed_offset(-1)
                                        .with_error_code(code(Some(e)))
                                })
                                .collect(),
                        )
                })
                .collect();
            OffsetFetchResponse::default().with_topics(topics)
        }
        Ok(fetched) => OffsetFetchResponse::default().with_topics(
            by_topic(fetched)
                .into_iter()
                .map(|(name, partitions)| {
                    OffsetFetchResponseTopic::default()
                        .with_name(str_bytes(&name).into())
                        .with_partitions(
                            partitions
                                .into_iter()
                                .map(|(index, committed)| {
                                    let (offset, epoch, metadata, error) =
                                        offset_fields(&committed);
                                    OffsetFetchResponsePartition::default()
                                        .with_partition_index(index)
                                        .with_error_code(error)
                                        .with_committed_offset(offset)
                                        .with_committed_leader_epoch(epoch)
                                        .with_metadata(Some(str_bytes(&metadata)))
                                })
                                .collect(),
                        )
                })
                .collect(),
        ),
    };
    Reply::Now(ResponseKind::OffsetFetch(response))
}
