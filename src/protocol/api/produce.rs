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
//! partition was added to the ongoing transaction (KIP-890 part 1, Produce up to v11)
//! or, for a producer of transaction version 2 (Produce v12+, which sends no
//! AddPartitionsToTxn), to add it (KIP-890 part 2).

use super::{code, str_bytes};
use crate::broker::txn_verifier::{self, Ask};
use crate::broker::Broker;
use crate::cluster::{ProduceTicket, TxnAppend, Wait};
use crate::log::batch::{validate_produce_records, BatchHeader};
use crate::protocol::dispatch::Reply;
use crate::txn::coordinator::{ProducerIdAndEpoch, TopicPartition};
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
                        version,
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

/// Produce v12 is the first of transaction version 2 (KIP-890 part 2): the leader adds
/// the partition to the transaction.
pub const FIRST_VERSION_OF_TRANSACTION_V2: i16 = 12;

/// Where a partition's records go, and for which transactional id (if any).
#[derive(Clone, Copy)]
struct Target<'a> {
    /// The request's version.
    version: i16,
    transactional_id: Option<&'a str>,
    topic: &'a str,
    partition: i32,
}

/// The check of a transactional batch before it is proposed: it comes from a producer
/// with a producer id and with its request's `transactional_id`, and `topic`-`partition`
/// is in the producer's ongoing transaction: verified (KIP-890 part 1, unless
/// `transaction.partition.verification.enable` is off) or, from Produce v12 on, added
/// (transaction version 2, always). Once the producer's transaction is open in the
/// partition's log, that is known here; otherwise a verification guard is taken and,
/// unless an earlier batch's verification already confirmed it, the coordinator asked
/// (`broker::txn_verifier`); the driver task appends the batch only if no marker voided
/// the guard meanwhile (`cluster::engine::txn_verification`).
/// A failure gets the error Kafka 4 gives the request's version
/// ([`txn_verifier::produce_error`]).
async fn verify_transactional(
    broker: &Broker,
    target: Target<'_>,
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
    let Some(transactional_id) = target.transactional_id else {
        return Err((
            ResponseError::InvalidRequest,
            "a transactional batch needs the request's transactional_id".into(),
        ));
    };
    let ask = if target.version >= FIRST_VERSION_OF_TRANSACTION_V2 {
        Ask::Add
    } else {
        Ask::Verify
    };
    // Planted bug `stale-epoch-produce-accepted` skips the verification too, as it
    // would otherwise refuse the stale epoch first.
    if ask == Ask::Verify
        && (!broker.config.txns.transaction_partition_verification_enable
            || crate::planted::on("stale-epoch-produce-accepted"))
    {
        return Ok(TxnAppend::Unchecked);
    }
    let producer = (header.producer_id, header.producer_epoch);
    let (topic, partition) = (target.topic, target.partition);
    ask_coordinator(broker, ask, transactional_id, producer, topic, partition)
        .await
        .map_err(|e| {
            let message = match ask {
                Ask::Verify => "could not be verified to be in the transaction",
                Ask::Add => "could not be added to the transaction",
            };
            (
                txn_verifier::produce_error(
                    e,
                    target.version >= txn_verifier::PRODUCE_FIRST_VERSION_WITH_ABORTABLE,
                ),
                format!("the partition {message}: {e:?}"),
            )
        })
}

/// `topic`-`partition` is in `producer`'s ongoing transaction: known from the log, or
/// confirmed by an earlier batch's question, or asked of the coordinator now (`ask`;
/// directly when this broker is the coordinator, else over the wire).
/// The guard the returned append carries is voided by any marker of the producer
/// written meanwhile. An error is the coordinator's (or why it could not be asked), or
/// NOT_LEADER_OR_FOLLOWER.
pub async fn ask_coordinator(
    broker: &Broker,
    ask: Ask,
    transactional_id: &str,
    producer: (i64, i16),
    topic: &str,
    partition: i32,
) -> Result<TxnAppend, ResponseError> {
    let (producer_id, producer_epoch) = producer;
    if broker
        .node
        .txn_open(topic, partition, producer_id, producer_epoch)
    {
        return Ok(TxnAppend::Checked { guard: None });
    }
    let (guard, confirmed) =
        broker
            .node
            .begin_txn_verification(topic, partition, producer_id, producer_epoch)?;
    if confirmed {
        return Ok(TxnAppend::Checked { guard: Some(guard) });
    }
    let coordinator = broker.txn_verifier.coordinator_of(transactional_id);
    let answer = if coordinator == Ok(broker.config.node_id) {
        ask_local(broker, ask, transactional_id, producer, topic, partition).await
    } else {
        let verifier = &broker.txn_verifier;
        verifier
            .ask(ask, transactional_id, producer, topic, partition)
            .await
    };
    match answer {
        None => {
            broker
                .node
                .confirm_txn_verification(topic, partition, producer_id, guard);
            Ok(TxnAppend::Checked { guard: Some(guard) })
        }
        Some(e) => Err(e),
    }
}

/// [`ask_coordinator`]'s question put to this broker's own transaction coordinator,
/// with no request on the wire: its answer, as the remote coordinator's would be.
async fn ask_local(
    broker: &Broker,
    ask: Ask,
    transactional_id: &str,
    producer: (i64, i16),
    topic: &str,
    partition: i32,
) -> Option<ResponseError> {
    let producer = ProducerIdAndEpoch {
        producer_id: producer.0,
        producer_epoch: producer.1,
    };
    let partitions = vec![TopicPartition::new(topic, partition)];
    match ask {
        Ask::Verify => {
            let answers = broker
                .txns
                .verify_partitions(transactional_id, producer, partitions)
                .await;
            answers.into_iter().next().flatten()
        }
        Ask::Add => broker
            .txns
            .add_partitions(transactional_id, producer, partitions, true)
            .await
            .err(),
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
        topic, partition, ..
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
        Some((header, _)) => match verify_transactional(broker, target, header).await {
            Ok(txn) => txn,
            Err((e, m)) => return Refused(e, m),
        },
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
