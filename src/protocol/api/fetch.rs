//! Fetch: batches exactly as stored, from each requested offset, up to the high
//! watermark, within `max_bytes` and each partition's `partition_max_bytes` (the first
//! batch is always returned whole, as KIP-74 asks). If fewer than `min_bytes` are ready,
//! the request waits up to `max_wait_ms` for more. Fetch sessions are not kept: the
//! response's session id 0 tells clients to send full fetches.
//!
//! `isolation_level=1` (read_committed) reads only up to the last stable offset and
//! lists the aborted transactions (producer id, first offset) overlapping what it
//! returns, from the `.txnindex` of the segments read: the client drops their records.
//! Both levels report the last stable offset.

use super::code;
use crate::broker::Broker;
use crate::log::{PartitionLog, ReadError};
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::fetch_response::AbortedTransaction;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::ProducerId;
use kafka_protocol::messages::{FetchRequest, FetchResponse, ResponseKind};
use kafka_protocol::ResponseError;
use std::sync::Arc;
use std::time::Duration;

/// Upper bound on how long one fetch may wait, whatever the client asks.
const MAX_WAIT_MS_LIMIT: u64 = 30_000;

pub fn handle(broker: &Arc<Broker>, version: i16, request: FetchRequest) -> Reply {
    if request.session_id != 0 {
        let response = FetchResponse::default()
            .with_error_code(code(Some(ResponseError::FetchSessionIdNotFound)));
        return Reply::Now(ResponseKind::Fetch(response));
    }
    let mut data_version = broker.node.subscribe_data();
    let (response, ready) = read_once(broker, version, &request);
    let max_wait_ms = (request.max_wait_ms.max(0) as u64).min(MAX_WAIT_MS_LIMIT);
    if ready || max_wait_ms == 0 {
        return Reply::Now(ResponseKind::Fetch(response));
    }
    let broker = broker.clone();
    Reply::Later(Box::pin(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(max_wait_ms);
        let _ = response; // superseded by a fresh read once data arrives or time runs out
        let response = loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(remaining, data_version.changed()).await {
                Ok(Ok(())) => {
                    let (next, ready) = read_once(&broker, version, &request);
                    if ready {
                        break next;
                    }
                }
                _ => break read_once(&broker, version, &request).0,
            }
        };
        ResponseKind::Fetch(response)
    }))
}

/// Reads every requested partition once. Returns the response and whether it should be
/// sent now (enough bytes, or an error to report).
fn read_once(broker: &Broker, version: i16, request: &FetchRequest) -> (FetchResponse, bool) {
    let mut budget = request.max_bytes.max(0) as usize;
    let mut total_bytes = 0usize;
    let mut any_error = false;
    let read_committed = request.isolation_level == 1;
    let mut topics = Vec::with_capacity(request.topics.len());
    for fetch_topic in &request.topics {
        let name = fetch_topic.topic.0.to_string();
        let mut partitions = Vec::with_capacity(fetch_topic.partitions.len());
        for wanted in &fetch_topic.partitions {
            let mut data = PartitionData::default()
                .with_partition_index(wanted.partition)
                .with_high_watermark(-1)
                .with_last_stable_offset(-1)
                .with_log_start_offset(-1)
                .with_aborted_transactions(read_committed.then(Vec::new));
            let replica = match broker.node.leader_replica(
                &name,
                wanted.partition,
                wanted.current_leader_epoch,
            ) {
                Ok(replica) => replica,
                Err(e) => {
                    any_error = true;
                    partitions.push(data.with_error_code(code(Some(e))));
                    continue;
                }
            };
            let mut high_watermark = replica.high_watermark();
            let storage = replica.storage.lock();
            let log = storage.log();
            // Planted bug: serve up to the leader's log end, committed or not.
            if crate::planted::on("hw-before-commit") {
                high_watermark = log.log_end_offset();
            }
            let last_stable_offset = log.last_stable_offset(high_watermark);
            data = data
                .with_high_watermark(high_watermark)
                .with_last_stable_offset(last_stable_offset);
            if version >= 5 {
                data = data.with_log_start_offset(log.log_start_offset());
            }
            let max_bytes = budget.min(wanted.partition_max_bytes.max(0) as usize);
            let min_one = total_bytes == 0;
            let upper_offset = if read_committed {
                last_stable_offset
            } else {
                high_watermark
            };
            match log.read(wanted.fetch_offset, max_bytes, upper_offset, min_one) {
                Ok(bytes) => {
                    budget = budget.saturating_sub(bytes.len());
                    total_bytes += bytes.len();
                    // Planted bug: no aborted transactions listed.
                    if read_committed && !crate::planted::on("skip-aborted-list") {
                        let aborted = aborted_in(log, wanted.fetch_offset, &bytes);
                        data = data.with_aborted_transactions(Some(aborted));
                    }
                    data = data.with_records(Some(bytes));
                }
                Err(ReadError::OffsetOutOfRange { .. }) => {
                    any_error = true;
                    data = data.with_error_code(code(Some(ResponseError::OffsetOutOfRange)));
                }
                Err(ReadError::Corrupt {
                    segment_base_offset,
                    position,
                }) => {
                    storage.mark_corrupt_from_offset(wanted.fetch_offset);
                    drop(storage);
                    replica.report_corruption(segment_base_offset, position);
                    any_error = true;
                    data = data.with_error_code(code(Some(ResponseError::KafkaStorageError)));
                }
                Err(ReadError::Io(e)) => {
                    tracing::error!(topic = %name, partition = wanted.partition, error = %e, "read failed");
                    any_error = true;
                    data = data.with_error_code(code(Some(ResponseError::KafkaStorageError)));
                }
            }
            partitions.push(data);
        }
        topics.push(
            FetchableTopicResponse::default()
                .with_topic(fetch_topic.topic.clone())
                .with_partitions(partitions),
        );
    }
    let ready = any_error || total_bytes >= request.min_bytes.max(0) as usize || budget == 0;
    (FetchResponse::default().with_responses(topics), ready)
}

/// The aborted transactions overlapping the batches read from `fetch_offset` (the
/// range ends where the last batch returned does).
fn aborted_in(log: &PartitionLog, fetch_offset: i64, bytes: &[u8]) -> Vec<AbortedTransaction> {
    let Some(end_offset) = end_offset_of(bytes) else {
        return Vec::new();
    };
    log.aborted_txns(fetch_offset, end_offset)
        .into_iter()
        .map(|t| {
            AbortedTransaction::default()
                .with_producer_id(ProducerId(t.producer_id))
                .with_first_offset(t.first_offset)
        })
        .collect()
}

/// The offset after the last whole batch in `bytes` (batches as the log returns them).
fn end_offset_of(bytes: &[u8]) -> Option<i64> {
    let mut position = 0usize;
    let mut end = None;
    while let Ok(header) = crate::log::batch::BatchHeader::parse(&bytes[position..]) {
        end = Some(header.next_offset());
        position += header.size_bytes();
        if position >= bytes.len() {
            break;
        }
    }
    end
}
