//! WriteTxnMarkers (key 27): a transaction coordinator asks the leaders of a
//! transaction's partitions to end it there. For each marker and partition, the leader
//! builds a COMMIT or ABORT control batch (`log::txn_marker`) and proposes it through
//! the partition's Raft group with acks=all semantics; each partition is answered once
//! its marker is committed, or with why it was not written. The leader fences stale
//! producer and coordinator epochs before proposing (`cluster::engine::idempotence`).
//! A marker that commits on a `__consumer_offsets` partition is handed to the group
//! coordinators before the answer (`GroupService::marker_committed`): the pending
//! transactional offsets of its producer become visible or are dropped.

use super::code;
use crate::broker::Broker;
use crate::cluster::{ProduceTicket, Wait};
use crate::group::host::OFFSETS_TOPIC;
use crate::log::txn_marker::{build_marker_batch, TxnMarker};
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::write_txn_markers_request::WritableTxnMarker;
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{ResponseKind, WriteTxnMarkersRequest, WriteTxnMarkersResponse};
use kafka_protocol::ResponseError;
use std::sync::Arc;
use std::time::Duration;

/// How long a marker may take to commit before its partition is answered
/// REQUEST_TIMED_OUT (the request has no timeout of its own; the coordinator retries).
const MARKER_COMMIT_TIMEOUT_MS: u64 = 30_000;

/// Markers and partitions one request may name (a coordinator sends a few at a time).
const PARTITIONS_PER_REQUEST_MAX: usize = 10_000;

/// Where one partition's marker stands.
enum Outcome {
    Refused(ResponseError),
    Waiting(ProduceTicket),
}

pub async fn handle(broker: &Arc<Broker>, _version: i16, request: WriteTxnMarkersRequest) -> Reply {
    let partitions: usize = request
        .markers
        .iter()
        .flat_map(|m| m.topics.iter())
        .map(|t| t.partition_indexes.len())
        .sum();
    let too_many = partitions > PARTITIONS_PER_REQUEST_MAX;
    let mut markers = Vec::with_capacity(request.markers.len());
    for marker in &request.markers {
        let mut topics = Vec::with_capacity(marker.topics.len());
        for topic in &marker.topics {
            let name = topic.name.0.to_string();
            let mut outcomes = Vec::with_capacity(topic.partition_indexes.len());
            for &partition in &topic.partition_indexes {
                let outcome = if too_many {
                    Outcome::Refused(ResponseError::InvalidRequest)
                } else {
                    propose(broker, marker, &name, partition).await
                };
                outcomes.push((partition, outcome));
            }
            topics.push((topic.name.clone(), outcomes));
        }
        markers.push((marker.producer_id, marker.transaction_result, topics));
    }
    let broker = broker.clone();
    Reply::Later(Box::pin(async move {
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(MARKER_COMMIT_TIMEOUT_MS);
        let mut results = Vec::with_capacity(markers.len());
        for (producer_id, commit, topics) in markers {
            let mut topic_results = Vec::with_capacity(topics.len());
            for (name, outcomes) in topics {
                let mut partitions = Vec::with_capacity(outcomes.len());
                for (index, outcome) in outcomes {
                    let settled = settle(outcome, deadline).await;
                    if let (Ok(marker_offset), true) = (settled, name.0.as_str() == OFFSETS_TOPIC) {
                        broker
                            .groups
                            .marker_committed(index, marker_offset, producer_id.0, commit);
                    }
                    let error = settled.err();
                    partitions.push(
                        WritableTxnMarkerPartitionResult::default()
                            .with_partition_index(index)
                            .with_error_code(code(error)),
                    );
                }
                topic_results.push(
                    WritableTxnMarkerTopicResult::default()
                        .with_name(name)
                        .with_partitions(partitions),
                );
            }
            results.push(
                WritableTxnMarkerResult::default()
                    .with_producer_id(producer_id)
                    .with_topics(topic_results),
            );
        }
        ResponseKind::WriteTxnMarkers(WriteTxnMarkersResponse::default().with_markers(results))
    }))
}

/// Builds one partition's marker and queues it on this broker, its leader.
async fn propose(
    broker: &Broker,
    marker: &WritableTxnMarker,
    topic: &str,
    partition: i32,
) -> Outcome {
    if broker.is_shutting_down() {
        return Outcome::Refused(ResponseError::NotLeaderOrFollower);
    }
    if marker.producer_id.0 < 0 || marker.producer_epoch < 0 {
        return Outcome::Refused(ResponseError::InvalidProducerEpoch);
    }
    if let Err(e) = broker.node.leader_replica(topic, partition, -1) {
        return Outcome::Refused(e);
    }
    let txn_marker = TxnMarker {
        commit: marker.transaction_result,
        coordinator_epoch: marker.coordinator_epoch,
    };
    let batch = build_marker_batch(
        marker.producer_id.0,
        marker.producer_epoch,
        txn_marker,
        crate::clock::now_ms(),
    );
    match broker
        .node
        .submit(topic, partition, vec![batch], Wait::Commit)
        .await
    {
        Ok(ticket) => Outcome::Waiting(ticket),
        Err(e) => Outcome::Refused(e.kafka_error()),
    }
}

/// The offset of one partition's marker once it committed, or why it failed or timed out.
async fn settle(outcome: Outcome, deadline: tokio::time::Instant) -> Result<i64, ResponseError> {
    let ticket = match outcome {
        Outcome::Refused(e) => return Err(e),
        Outcome::Waiting(ticket) => ticket,
    };
    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
    match tokio::time::timeout(remaining, ticket).await {
        Ok(Ok(Ok(marker_offset))) => Ok(marker_offset),
        Ok(Ok(Err(e))) => Err(e.kafka_error()),
        Ok(Err(_)) => Err(ResponseError::NotLeaderOrFollower),
        Err(_) => Err(ResponseError::RequestTimedOut),
    }
}
