//! DescribeTransactions (KIP-664): for each transactional id, its transaction as the
//! coordinator hosted here holds it: state (Kafka's names), timeout, start time,
//! producer id and epoch, and the partitions in it. NOT_COORDINATOR when this broker
//! does not lead the id's `__transaction_state` partition, COORDINATOR_LOAD_IN_PROGRESS
//! while it loads, TRANSACTIONAL_ID_NOT_FOUND for an unknown id, INVALID_REQUEST for an
//! empty one.

use super::{code, str_bytes};
use crate::broker::Broker;
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::{
    DescribeTransactionsRequest, DescribeTransactionsResponse, ProducerId, ResponseKind, TopicName,
};

/// Ids one request may name (Kafka has no limit; this bounds the work).
const MAX_TRANSACTIONAL_IDS: usize = 10_000;

pub fn handle(broker: &Broker, _version: i16, request: DescribeTransactionsRequest) -> Reply {
    let ids: Vec<String> = request
        .transactional_ids
        .iter()
        .map(|t| t.0.to_string())
        .collect();
    let described = if ids.len() > MAX_TRANSACTIONAL_IDS {
        vec![Err(kafka_protocol::ResponseError::InvalidRequest); ids.len()]
    } else {
        broker.txns.describe(&ids)
    };
    let states = request
        .transactional_ids
        .into_iter()
        .zip(described)
        .map(|(id, result)| {
            let state = TransactionState::default()
                .with_transactional_id(id)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
                .with_transaction_timeout_ms(-1)
                .with_transaction_start_time_ms(-1);
            match result {
                Err(e) => state.with_error_code(code(Some(e))),
                Ok(d) => state
                    .with_transaction_state(str_bytes(d.state.kafka_name()))
                    .with_transaction_timeout_ms(d.txn_timeout_ms)
                    .with_transaction_start_time_ms(d.txn_start_timestamp_ms)
                    .with_producer_id(ProducerId(d.producer_id))
                    .with_producer_epoch(d.producer_epoch)
                    .with_topics(
                        d.topics
                            .iter()
                            .map(|(topic, partitions)| {
                                TopicData::default()
                                    .with_topic(TopicName(str_bytes(topic)))
                                    .with_partitions(partitions.clone())
                            })
                            .collect(),
                    ),
            }
        })
        .collect();
    Reply::Now(ResponseKind::DescribeTransactions(
        DescribeTransactionsResponse::default().with_transaction_states(states),
    ))
}
