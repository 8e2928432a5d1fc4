//! AddPartitionsToTxn: a transactional producer adds partitions to its ongoing
//! transaction (v0-3, one transaction), or a partition leader asks whether partitions
//! are in one (v4+, `verify_only`: KIP-890 part 1). The transactional id's coordinator
//! answers (`broker::txns`).

use super::{code, str_bytes};
use crate::broker::Broker;
use crate::protocol::dispatch::Reply;
use crate::txn::coordinator::{ProducerIdAndEpoch, TopicPartition};
use kafka_protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
};
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, ResponseKind, TopicName, TransactionalId,
};
use kafka_protocol::ResponseError;
use std::sync::Arc;

/// Transactions one v4+ request may carry (Kafka has no limit; this bounds the work).
const MAX_TRANSACTIONS: usize = 1000;

fn partitions_of(topics: &[AddPartitionsToTxnTopic]) -> Vec<TopicPartition> {
    topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| TopicPartition::new(t.name.0.as_str(), *p))
        })
        .collect()
}

fn results(
    partitions: &[TopicPartition],
    errors: &[Option<ResponseError>],
) -> Vec<AddPartitionsToTxnTopicResult> {
    let mut topics: Vec<AddPartitionsToTxnTopicResult> = Vec::new();
    for (tp, error) in partitions.iter().zip(errors) {
        let result = AddPartitionsToTxnPartitionResult::default()
            .with_partition_index(tp.partition)
            .with_partition_error_code(code(*error));
        match topics.iter_mut().find(|t| t.name.0.as_str() == tp.topic) {
            Some(t) => t.results_by_partition.push(result),
            None => topics.push(
                AddPartitionsToTxnTopicResult::default()
                    .with_name(TopicName(str_bytes(&tp.topic)))
                    .with_results_by_partition(vec![result]),
            ),
        }
    }
    topics
}

/// One transaction's partitions: unknown topics or partitions are refused (the others
/// then get OPERATION_NOT_ATTEMPTED, as Kafka answers), else the coordinator decides.
async fn add_or_verify(
    broker: &Arc<Broker>,
    transactional_id: &TransactionalId,
    producer: ProducerIdAndEpoch,
    partitions: &[TopicPartition],
    verify_only: bool,
    transaction_v2: bool,
) -> Vec<Option<ResponseError>> {
    let unknown: Vec<bool> = broker.node.with_image(|image| {
        partitions
            .iter()
            .map(|tp| image.partition(&tp.topic, tp.partition).is_none())
            .collect()
    });
    if unknown.iter().any(|u| *u) {
        return unknown
            .iter()
            .map(|u| {
                Some(if *u {
                    ResponseError::UnknownTopicOrPartition
                } else {
                    ResponseError::OperationNotAttempted
                })
            })
            .collect();
    }
    if verify_only {
        return broker
            .txns
            .verify_partitions(transactional_id, producer, partitions.to_vec())
            .await;
    }
    let outcome = broker
        .txns
        .add_partitions(
            transactional_id,
            producer,
            partitions.to_vec(),
            transaction_v2,
        )
        .await;
    vec![outcome.err(); partitions.len()]
}

pub async fn handle(
    broker: &Arc<Broker>,
    version: i16,
    request: AddPartitionsToTxnRequest,
) -> Reply {
    let response = AddPartitionsToTxnResponse::default();
    if version <= 3 {
        let producer = ProducerIdAndEpoch {
            producer_id: request.v3_and_below_producer_id.0,
            producer_epoch: request.v3_and_below_producer_epoch,
        };
        let partitions = partitions_of(&request.v3_and_below_topics);
        let errors = add_or_verify(
            broker,
            &request.v3_and_below_transactional_id,
            producer,
            &partitions,
            false,
            false,
        )
        .await;
        return Reply::Now(ResponseKind::AddPartitionsToTxn(
            response.with_results_by_topic_v3_and_below(results(&partitions, &errors)),
        ));
    }
    if request.transactions.len() > MAX_TRANSACTIONS {
        return Reply::Now(ResponseKind::AddPartitionsToTxn(
            response.with_error_code(code(Some(ResponseError::InvalidRequest))),
        ));
    }
    let mut by_transaction = Vec::with_capacity(request.transactions.len());
    for transaction in &request.transactions {
        by_transaction.push(answer_one(broker, transaction).await);
    }
    Reply::Now(ResponseKind::AddPartitionsToTxn(
        response.with_results_by_transaction(by_transaction),
    ))
}

async fn answer_one(
    broker: &Arc<Broker>,
    transaction: &AddPartitionsToTxnTransaction,
) -> AddPartitionsToTxnResult {
    let producer = ProducerIdAndEpoch {
        producer_id: transaction.producer_id.0,
        producer_epoch: transaction.producer_epoch,
    };
    let partitions = partitions_of(&transaction.topics);
    let errors = add_or_verify(
        broker,
        &transaction.transactional_id,
        producer,
        &partitions,
        transaction.verify_only,
        true,
    )
    .await;
    AddPartitionsToTxnResult::default()
        .with_transactional_id(transaction.transactional_id.clone())
        .with_topic_results(results(&partitions, &errors))
}
