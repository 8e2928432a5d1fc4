//! Produce: validate each partition's record batches and propose them to the
//! partition's Raft group on its leader; answer by acks: acks=0 never answers, acks=1
//! answers once the leader persisted the batches, acks=-1 (all) once a quorum persisted
//! and committed them. Nothing is proposed from a batch that fails validation. Batches of
//! idempotent producers are checked against the partition's producer state when the
//! leader proposes them (`cluster::engine::idempotence`): a retry is answered with its
//! original's offsets.
//!
//! Transactional batches (from a producer with a `transactional.id`) are accepted like
//! any idempotent producer's; each partition's first transactional batch opens the
//! producer's transaction there (the log's producer state), and a COMMIT or ABORT marker
//! (WriteTxnMarkers) ends it. Before a batch opens the producer's transaction on a
//! partition, [`verify_transactional`] asks the transaction coordinator whether the
//! partition was added to the ongoing transaction (KIP-890 part 1).

use super::{code, str_bytes};
use crate::broker::{txn_verifier, Broker};
use crate::cluster::{ProduceTicket, TxnAppend, Wait};
use crate::log::batch::{validate_produce_records, BatchHeader};
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, ResponseKind, TopicName};
use kafka_protocol::ResponseError;
use std::sync::Arc;
use std::time::Duration;

/// Outcome for one partition: refused now, or waiting for its ticket.
enum PartitionOutcome {
    Refused(ResponseError, String),
    Waiting(ProduceTicket),
}

pub async fn handle(broker: &Arc<Broker>, version: i16, request: ProduceRequest) -> Reply {
    let acks = request.acks;
    let transactional_id = request.transactional_id.as_ref().map(|t| t.0.to_string());
    let refuse_all = if broker.is_shutting_down() {
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
    let wait = if acks == -1 {
        Wait::Commit
    } else {
        Wait::LocalAppend
    };
    let mut topics = Vec::with_capacity(request.topic_data.len());
    for topic_data in request.topic_data {
        let name = topic_data.name.0.to_string();
        let topic = if refuse_all.is_some() {
            None
        } else {
            broker.topic_or_auto_create(&name, true).await.ok()
        };
        let mut outcomes = Vec::with_capacity(topic_data.partition_data.len());
        for data in topic_data.partition_data {
            let outcome = match (&refuse_all, &topic) {
                (Some((e, m)), _) => PartitionOutcome::Refused(*e, m.to_string()),
                (None, None) => PartitionOutcome::Refused(
                    ResponseError::UnknownTopicOrPartition,
                    "unknown topic or partition".into(),
                ),
                // Only the coordinators write their internal topics.
                (None, Some(_)) if super::is_internal(&name) => PartitionOutcome::Refused(
                    ResponseError::InvalidTopicException,
                    format!("cannot append to the internal topic {name}"),
                ),
                (None, Some(_)) => {
                    let target = Target {
                        transactional_id: transactional_id.as_deref(),
                        topic: &name,
                        partition: data.index,
                    };
                    propose(broker, target, data.records, wait).await
                }
            };
            outcomes.push((data.index, outcome));
        }
        topics.push((name, outcomes));
    }
    if acks == 0 {
        return Reply::Nothing;
    }
    let broker = broker.clone();
    let timeout_ms = request.timeout_ms.max(0) as u64;
    Reply::Later(Box::pin(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        let mut answered = Vec::with_capacity(topics.len());
        for (name, outcomes) in topics {
            let mut partitions = Vec::with_capacity(outcomes.len());
            for (index, outcome) in outcomes {
                let result = match outcome {
                    PartitionOutcome::Refused(e, m) => Err((e, m)),
                    PartitionOutcome::Waiting(ticket) => {
                        let remaining =
                            deadline.saturating_duration_since(tokio::time::Instant::now());
                        match tokio::time::timeout(remaining, ticket).await {
                            Ok(Ok(Ok(offset))) => Ok(offset),
                            Ok(Ok(Err(e))) => Err((e.kafka_error(), e.to_string())),
                            Ok(Err(_)) => Err((
                                ResponseError::NotLeaderOrFollower,
                                "the broker is stopping".to_string(),
                            )),
                            Err(_) => Err((
                                ResponseError::RequestTimedOut,
                                "not replicated in time".to_string(),
                            )),
                        }
                    }
                };
                let log_start_offset = broker
                    .node
                    .replica(&name, index)
                    .map(|r| r.storage.lock().log().log_start_offset())
                    .unwrap_or(-1);
                partitions.push((index, result, log_start_offset));
            }
            answered.push((name, partitions));
        }
        ResponseKind::Produce(response(version, answered))
    }))
}

/// Where a partition's records go, and for which transactional id (if any).
#[derive(Clone, Copy)]
struct Target<'a> {
    transactional_id: Option<&'a str>,
    topic: &'a str,
    partition: i32,
}

/// The check of a transactional batch before it is proposed: it comes from a producer
/// with a producer id and with its request's `transactional_id`, and (KIP-890 part 1,
/// unless `transaction.partition.verification.enable` is off) `topic`-`partition` is in
/// the producer's ongoing transaction. Once the producer's transaction is open in the
/// partition's log, that is known here; otherwise a verification guard is taken and,
/// unless an earlier batch's verification already confirmed it, the coordinator asked
/// (`broker::txn_verifier`); the driver task appends the batch only if no marker voided
/// the guard meanwhile (`cluster::engine::txn_verification`).
/// A failed verification gets the error Kafka 4 gives Produce below v12:
/// INVALID_TXN_STATE (not in the transaction), INVALID_PRODUCER_EPOCH (fenced), or the
/// retriable NOT_ENOUGH_REPLICAS (the coordinator could not answer).
async fn verify_transactional(
    broker: &Broker,
    transactional_id: Option<&str>,
    topic: &str,
    partition: i32,
    header: &BatchHeader,
) -> Result<TxnAppend, (ResponseError, String)> {
    if !header.is_transactional() {
        return Ok(TxnAppend::Unchecked);
    }
    if header.producer_id < 0 || header.producer_epoch < 0 {
        return Err((
            ResponseError::InvalidRecord,
            "a transactional batch carries a producer id and epoch".into(),
        ));
    }
    let Some(transactional_id) = transactional_id else {
        return Err((
            ResponseError::InvalidRequest,
            "a transactional batch needs the request's transactional_id".into(),
        ));
    };
    // Planted bug `stale-epoch-produce-accepted` skips the verification too, as it
    // would otherwise refuse the stale epoch first.
    if !broker.config.txns.transaction_partition_verification_enable
        || crate::planted::on("stale-epoch-produce-accepted")
    {
        return Ok(TxnAppend::Unchecked);
    }
    let (producer_id, producer_epoch) = (header.producer_id, header.producer_epoch);
    if broker
        .node
        .txn_open(topic, partition, producer_id, producer_epoch)
    {
        return Ok(TxnAppend::Checked { guard: None });
    }
    let (guard, confirmed) = broker
        .node
        .begin_txn_verification(topic, partition, producer_id, producer_epoch)
        .map_err(|e| (e, "this broker does not lead the partition".to_string()))?;
    if confirmed {
        return Ok(TxnAppend::Checked { guard: Some(guard) });
    }
    let producer = (producer_id, producer_epoch);
    match broker
        .txn_verifier
        .verify(transactional_id, producer, topic, partition)
        .await
    {
        None => {
            broker
                .node
                .confirm_txn_verification(topic, partition, producer_id, guard);
            Ok(TxnAppend::Checked { guard: Some(guard) })
        }
        Some(e) => Err((
            txn_verifier::produce_error(e),
            format!("the partition could not be verified to be in the transaction: {e:?}"),
        )),
    }
}

/// Validates one partition's records and queues them on its leader.
async fn propose(
    broker: &Broker,
    target: Target<'_>,
    records: Option<bytes::Bytes>,
    wait: Wait,
) -> PartitionOutcome {
    use PartitionOutcome::Refused;
    let Target {
        transactional_id,
        topic,
        partition,
    } = target;
    let max_message_bytes = match broker.node.leader_replica(topic, partition, -1) {
        // The log's config is the topic's effective config (kept up to date).
        Ok(replica) => replica.storage.lock().log().config().max_message_bytes as usize,
        Err(e) => return Refused(e, "this broker does not lead the partition".into()),
    };
    let Some(records) = records else {
        return Refused(ResponseError::InvalidRecord, "null records".into());
    };
    let batches = match validate_produce_records(&records, max_message_bytes) {
        Ok(batches) => batches,
        Err(e) => {
            tracing::debug!(topic, partition, error = %e, "refused a record batch");
            return Refused(e.kafka_error(), e.to_string());
        }
    };
    // A producer sends one batch per partition (the leader's check refuses more).
    let txn = match batches.first() {
        Some((header, _)) => {
            match verify_transactional(broker, transactional_id, topic, partition, header).await {
                Ok(txn) => txn,
                Err((e, m)) => return Refused(e, m),
            }
        }
        None => TxnAppend::Unchecked,
    };
    let batches = batches.into_iter().map(|(_, bytes)| bytes).collect();
    match broker
        .node
        .submit_transactional(topic, partition, batches, wait, txn)
        .await
    {
        Ok(ticket) => PartitionOutcome::Waiting(ticket),
        Err(e) => Refused(e.kafka_error(), e.to_string()),
    }
}

type Answered = (i32, Result<i64, (ResponseError, String)>, i64);

fn response(version: i16, topics: Vec<(String, Vec<Answered>)>) -> ProduceResponse {
    let responses = topics
        .into_iter()
        .map(|(name, outcomes)| {
            let partition_responses = outcomes
                .into_iter()
                .map(|(index, result, log_start_offset)| {
                    let mut base = PartitionProduceResponse::default()
                        .with_index(index)
                        .with_log_append_time_ms(-1);
                    if version >= 5 {
                        base = base.with_log_start_offset(log_start_offset);
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
