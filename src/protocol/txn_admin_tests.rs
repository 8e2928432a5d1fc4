//! KIP-890 part 1 and the KIP-664 admin APIs on one broker serving Kafka on a loopback
//! port, driven with Strand's own client: a transactional batch for a partition that
//! was never added to the producer's transaction is refused (INVALID_TXN_STATE) and
//! nothing is written; once AddPartitionsToTxn added it, it is appended (the partition
//! leader asked the coordinator over the Kafka protocol). DescribeTransactions,
//! ListTransactions (with and without filters) and DescribeProducers answer from the
//! coordinator and the partitions' producer state; a broker that leads no
//! `__transaction_state` partition answers NOT_COORDINATOR, one that does not lead a
//! partition NOT_LEADER_OR_FOLLOWER.

use super::txn_offset_tests::{call, start};
use crate::client::{encode_batch, response_error, with_producer_fields, Client, ProducerFields};
use crate::storage::MemoryStorage;
use anyhow::Result;
use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::records::Compression;
use kafka_protocol::ResponseError;
use std::sync::Arc;
use std::time::Duration;

const TOPIC: &str = "txn-out";
const TXN_ID: &str = "txn-admin";
const TXN_TIMEOUT_MS: i32 = 60_000;

/// Retries a call while it fails with a retriable coordinator error (bounded).
pub(super) async fn retrying<T>(mut call: impl AsyncFnMut() -> Result<T>) -> Result<T> {
    let retriable = [
        ResponseError::CoordinatorNotAvailable,
        ResponseError::CoordinatorLoadInProgress,
        ResponseError::NotCoordinator,
        ResponseError::ConcurrentTransactions,
        ResponseError::NotEnoughReplicas,
    ];
    for _ in 0..1000 {
        match call().await {
            Err(e) if response_error(&e).is_some_and(|c| retriable.contains(&c)) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
    panic!("still refused after 1000 tries");
}

/// One transactional (or only idempotent) batch of `producer` at `sequence`.
fn batch(producer: (i64, i16), sequence: i32, transactional: bool) -> Bytes {
    let plain = encode_batch(&[(None, Some(Bytes::from("v")))], 1_000, Compression::None).unwrap();
    with_producer_fields(
        &plain,
        ProducerFields {
            producer_id: producer.0,
            producer_epoch: producer.1,
            base_sequence: sequence,
            transactional,
        },
    )
}

async fn produce_txn(
    client: &mut Client,
    partition: i32,
    producer: (i64, i16),
    sequence: i32,
) -> Result<Option<i64>> {
    let batch = batch(producer, sequence, true);
    client
        .produce_batch_in(TOPIC, partition, batch, -1, Some(TXN_ID))
        .await
}

pub(super) fn error_of<T>(result: Result<T>) -> Option<ResponseError> {
    result
        .err()
        .map(|e| response_error(&e).expect("a Kafka error"))
}

async fn describe(
    client: &mut Client,
    id: &str,
) -> describe_transactions_response::TransactionState {
    let r = client.describe_transactions(&[id]).await.unwrap();
    assert_eq!(r.transaction_states.len(), 1);
    r.transaction_states.into_iter().next().unwrap()
}

/// ListTransactions' (transactional id, producer id, state) triples and unknown filters.
async fn list(
    client: &mut Client,
    states: &[&str],
    producer_ids: &[i64],
    duration_filter_ms: i64,
) -> (Vec<(String, i64, String)>, Vec<String>) {
    let r = client
        .list_transactions(states, producer_ids, duration_filter_ms)
        .await
        .unwrap();
    assert_eq!(r.error_code, 0);
    let listed = r
        .transaction_states
        .iter()
        .map(|t| {
            (
                t.transactional_id.0.to_string(),
                t.producer_id.0,
                t.transaction_state.to_string(),
            )
        })
        .collect();
    let unknown = r
        .unknown_state_filters
        .iter()
        .map(|s| s.to_string())
        .collect();
    (listed, unknown)
}

/// DescribeProducers of partitions 0 and 1: per partition, (error, producers as
/// (producer id, epoch, last sequence, coordinator epoch, txn start offset)).
async fn producers(client: &mut Client) -> Vec<(i16, Vec<(i64, i32, i32, i32, i64)>)> {
    let partitions = [(TOPIC.to_string(), 0), (TOPIC.to_string(), 1)];
    let r = client.describe_producers(&partitions).await.unwrap();
    r.topics[0]
        .partitions
        .iter()
        .map(|p| {
            let active = p
                .active_producers
                .iter()
                .map(|a| {
                    (
                        a.producer_id.0,
                        a.producer_epoch,
                        a.last_sequence,
                        a.coordinator_epoch,
                        a.current_txn_start_offset,
                    )
                })
                .collect();
            (p.error_code, active)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_and_the_transaction_admin_apis() {
    let (broker, server) = start(Arc::new(MemoryStorage::new())).await;
    let topic = crate::metadata::CreateTopic {
        name: TOPIC.into(),
        partitions: Some(2),
        ..Default::default()
    };
    broker.create_topic(topic, false).await.unwrap();
    let mut client = Client::connect(broker.config.listen).await.unwrap();
    retrying(async || client.find_transaction_coordinator(TXN_ID).await)
        .await
        .unwrap();
    let producer = retrying(async || client.init_producer_id(Some(TXN_ID), TXN_TIMEOUT_MS).await)
        .await
        .unwrap();

    // Never added to the transaction: refused, nothing written.
    let refused = produce_txn(&mut client, 0, producer, 0).await;
    assert_eq!(error_of(refused), Some(ResponseError::InvalidTxnState));
    assert_eq!(producers(&mut client).await, vec![(0, vec![]), (0, vec![])]);
    let described = describe(&mut client, TXN_ID).await;
    assert_eq!(described.error_code, 0);
    assert_eq!(described.transaction_state.as_str(), "Empty");

    // Added: accepted, and the next batch too (the transaction is open there now).
    client
        .add_partitions_to_txn(TXN_ID, producer, &[(TOPIC.to_string(), 0)])
        .await
        .unwrap();
    let first = produce_txn(&mut client, 0, producer, 0)
        .await
        .unwrap()
        .unwrap();
    let second = produce_txn(&mut client, 0, producer, 1)
        .await
        .unwrap()
        .unwrap();
    assert!(second > first);
    // Partition 1 is not in the transaction.
    let other = produce_txn(&mut client, 1, producer, 0).await;
    assert_eq!(error_of(other), Some(ResponseError::InvalidTxnState));

    // An idempotent producer on partition 1.
    let idempotent = client.init_producer_id(None, TXN_TIMEOUT_MS).await.unwrap();
    client
        .produce_batch(TOPIC, 1, batch(idempotent, 0, false), -1)
        .await
        .unwrap();
    let (pid, epoch) = (producer.0, i32::from(producer.1));
    assert_eq!(
        producers(&mut client).await,
        vec![
            (0, vec![(pid, epoch, 1, -1, first)]),
            (0, vec![(idempotent.0, i32::from(idempotent.1), 0, -1, -1)]),
        ]
    );

    // DescribeTransactions: the ongoing transaction, and an unknown id.
    let described = describe(&mut client, TXN_ID).await;
    assert_eq!(described.error_code, 0);
    assert_eq!(described.transaction_state.as_str(), "Ongoing");
    assert_eq!(described.producer_id.0, producer.0);
    assert_eq!(described.producer_epoch, producer.1);
    assert_eq!(described.transaction_timeout_ms, TXN_TIMEOUT_MS);
    assert!(described.transaction_start_time_ms > 0);
    assert_eq!(described.topics.len(), 1);
    assert_eq!(described.topics[0].topic.0.as_str(), TOPIC);
    assert_eq!(described.topics[0].partitions, vec![0]);
    let unknown = describe(&mut client, "never-seen").await;
    assert_eq!(
        unknown.error_code,
        ResponseError::TransactionalIdNotFound.code()
    );

    // ListTransactions: all, by state, by producer id, by duration, unknown states.
    let ongoing = (TXN_ID.to_string(), producer.0, "Ongoing".to_string());
    assert_eq!(
        list(&mut client, &[], &[], -1).await,
        (vec![ongoing.clone()], vec![])
    );
    assert_eq!(
        list(&mut client, &["Ongoing", "Empty"], &[], -1).await,
        (vec![ongoing.clone()], vec![])
    );
    assert_eq!(
        list(&mut client, &["CompleteCommit"], &[], -1).await,
        (vec![], vec![])
    );
    assert_eq!(
        list(&mut client, &[], &[producer.0], -1).await,
        (vec![ongoing.clone()], vec![])
    );
    assert_eq!(
        list(&mut client, &[], &[producer.0 + 1000], -1).await,
        (vec![], vec![])
    );
    assert_eq!(
        list(&mut client, &[], &[], 3_600_000).await,
        (vec![], vec![])
    );
    assert_eq!(
        list(&mut client, &["Bogus"], &[], -1).await,
        (vec![], vec!["Bogus".to_string()])
    );

    // Commit: the coordinator completes, the partition's transaction ends.
    client.end_txn(TXN_ID, producer, true).await.unwrap();
    let mut state = String::new();
    for _ in 0..1000 {
        state = describe(&mut client, TXN_ID)
            .await
            .transaction_state
            .to_string();
        if state == "CompleteCommit" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(state, "CompleteCommit");
    let after = producers(&mut client).await;
    assert_eq!(after[0].1.len(), 1);
    let (_, _, _, coordinator_epoch, txn_start) = after[0].1[0];
    assert!(coordinator_epoch >= 0);
    assert_eq!(txn_start, -1);
    assert_eq!(
        list(&mut client, &["CompleteCommit"], &[], -1)
            .await
            .0
            .len(),
        1
    );

    // The next transaction starts without the partition: refused again.
    let late = produce_txn(&mut client, 0, producer, 2).await;
    assert_eq!(error_of(late), Some(ResponseError::InvalidTxnState));
    server.abort();
}

#[tokio::test]
async fn a_broker_without_the_coordinator_or_the_partition_says_so() {
    // No `__transaction_state` here: this broker coordinates no transactional id.
    let broker = super::tests::test_broker().await;
    let request = DescribeTransactionsRequest::default()
        .with_transactional_ids(vec![super::tests::s(TXN_ID).into()]);
    let response = call(
        &broker,
        ApiKey::DescribeTransactions,
        0,
        RequestKind::DescribeTransactions(request),
    )
    .await;
    let ResponseKind::DescribeTransactions(r) = response else {
        panic!("not a DescribeTransactions response")
    };
    assert_eq!(
        r.transaction_states[0].error_code,
        ResponseError::NotCoordinator.code()
    );
    // DescribeProducers of a partition that does not exist.
    use describe_producers_request::TopicRequest;
    let request = DescribeProducersRequest::default().with_topics(vec![TopicRequest::default()
        .with_name(TopicName(super::tests::s("existing")))
        .with_partition_indexes(vec![0, 7])]);
    let response = call(
        &broker,
        ApiKey::DescribeProducers,
        0,
        RequestKind::DescribeProducers(request),
    )
    .await;
    let ResponseKind::DescribeProducers(r) = response else {
        panic!("not a DescribeProducers response")
    };
    let errors: Vec<i16> = r.topics[0]
        .partitions
        .iter()
        .map(|p| p.error_code)
        .collect();
    assert_eq!(
        errors,
        vec![0, ResponseError::UnknownTopicOrPartition.code()]
    );
}
