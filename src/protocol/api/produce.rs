//! Produce: validate each partition's record batches, append them, and answer by acks:
//! acks=0 never answers, acks=1 answers after the append, acks=-1 (all) answers after the
//! group-commit fsync that covers the append. Nothing is appended from a batch that fails
//! validation.

use super::{code, str_bytes};
use crate::broker::partition::{Partition, SINGLE_NODE_LEADER_EPOCH};
use crate::broker::Broker;
use crate::clock;
use crate::log::batch::validate_produce_records;
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, ResponseKind, TopicName};
use kafka_protocol::ResponseError;
use std::sync::Arc;
use std::time::Duration;

/// Outcome for one partition before the durability wait.
struct PartitionOutcome {
    index: i32,
    result: Result<i64, (ResponseError, String)>,
    log_start_offset: i64,
}

pub fn handle(broker: &Arc<Broker>, version: i16, request: ProduceRequest) -> Reply {
    let acks = request.acks;
    let refuse_all = if request.transactional_id.is_some() {
        Some((
            ResponseError::TransactionalIdAuthorizationFailed,
            "transactions are not supported yet",
        ))
    } else if broker.is_shutting_down() {
        Some((
            ResponseError::NotLeaderOrFollower,
            "the broker is shutting down",
        ))
    } else if !matches!(acks, -1..=1) {
        Some((
            ResponseError::InvalidRequiredAcks,
            "acks must be -1, 0 or 1",
        ))
    } else {
        None
    };
    let now_ms = clock::now_ms();
    let mut ticket = None;
    let mut appended = false;
    let mut topics = Vec::with_capacity(request.topic_data.len());
    for topic_data in request.topic_data {
        let name = topic_data.name.0.to_string();
        let topic = broker.topic_or_auto_create(&name, true);
        let mut outcomes = Vec::with_capacity(topic_data.partition_data.len());
        for data in topic_data.partition_data {
            let fail = |e: ResponseError, m: &str| PartitionOutcome {
                index: data.index,
                result: Err((e, m.to_string())),
                log_start_offset: -1,
            };
            if let Some((e, m)) = refuse_all {
                outcomes.push(fail(e, m));
                continue;
            }
            let partition = match &topic {
                Ok(t) => usize::try_from(data.index)
                    .ok()
                    .and_then(|i| t.partitions.get(i))
                    .cloned(),
                Err(_) => None,
            };
            let Some(partition) = partition else {
                outcomes.push(fail(
                    ResponseError::UnknownTopicOrPartition,
                    "unknown topic or partition",
                ));
                continue;
            };
            let outcome = append(&partition, data.records, now_ms);
            if outcome.is_ok() {
                appended = true;
                if acks == -1 {
                    ticket = Some(broker.group_commit.request(&partition));
                } else {
                    broker.group_commit.mark_dirty(&partition);
                }
            }
            let log_start_offset = partition.log().log_start_offset();
            outcomes.push(PartitionOutcome {
                index: data.index,
                result: outcome,
                log_start_offset,
            });
        }
        topics.push((name, outcomes));
    }
    if appended {
        broker.data_appended();
    }
    match (acks, ticket) {
        (0, _) => Reply::Nothing,
        (-1, Some(ticket)) => {
            let broker = broker.clone();
            let timeout_ms = request.timeout_ms.max(0) as u64;
            Reply::Later(Box::pin(async move {
                let waited = tokio::time::timeout(
                    Duration::from_millis(timeout_ms),
                    broker.group_commit.wait(ticket),
                )
                .await;
                let failure = match waited {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some((ResponseError::KafkaStorageError, e.to_string())),
                    Err(_) => Some((
                        ResponseError::RequestTimedOut,
                        "fsync did not complete in time".to_string(),
                    )),
                };
                ResponseKind::Produce(response(version, topics, failure))
            }))
        }
        _ => Reply::Now(ResponseKind::Produce(response(version, topics, None))),
    }
}

fn append(
    partition: &Arc<Partition>,
    records: Option<bytes::Bytes>,
    now_ms: i64,
) -> Result<i64, (ResponseError, String)> {
    let Some(records) = records else {
        return Err((ResponseError::InvalidRecord, "null records".into()));
    };
    // Validation decompresses and decodes: do it outside the partition lock.
    let max_message_bytes = partition.log().config().max_message_bytes as usize;
    let batches = validate_produce_records(&records, max_message_bytes).map_err(|e| {
        tracing::debug!(topic = %partition.topic, partition = partition.index, error = %e, "refused a record batch");
        (e.kafka_error(), e.to_string())
    })?;
    if batches.iter().any(|(h, _)| h.producer_id != -1) {
        // Idempotent and transactional producers need producer ids this broker never issued.
        return Err((
            ResponseError::UnknownProducerId,
            "idempotent producers are not supported yet".into(),
        ));
    }
    let info = partition.log().append(&batches, SINGLE_NODE_LEADER_EPOCH, now_ms).map_err(|e| {
        tracing::error!(topic = %partition.topic, partition = partition.index, error = %e, "append failed");
        (ResponseError::KafkaStorageError, e.to_string())
    })?;
    Ok(info.base_offset)
}

fn response(
    version: i16,
    topics: Vec<(String, Vec<PartitionOutcome>)>,
    failure: Option<(ResponseError, String)>,
) -> ProduceResponse {
    let responses = topics
        .into_iter()
        .map(|(name, outcomes)| {
            let partition_responses = outcomes
                .into_iter()
                .map(|o| {
                    let result = match (&o.result, &failure) {
                        (Ok(_), Some(f)) => Err(f.clone()),
                        _ => o.result,
                    };
                    let mut base = PartitionProduceResponse::default()
                        .with_index(o.index)
                        .with_log_append_time_ms(-1);
                    if version >= 5 {
                        base = base.with_log_start_offset(o.log_start_offset);
                    }
                    match result {
                        Ok(base_offset) => base.with_base_offset(base_offset),
                        Err((e, m)) if version >= 8 => base
                            .with_error_code(code(Some(e)))
                            .with_error_message(Some(str_bytes(&m)))
                            .with_base_offset(-1),
                        Err((e, _)) => base.with_error_code(code(Some(e))).with_base_offset(-1),
                    }
                })
                .collect();
            TopicProduceResponse::default()
                .with_name(TopicName(str_bytes(&name)))
                .with_partition_responses(partition_responses)
        })
        .collect();
    ProduceResponse::default().with_responses(responses)
}
