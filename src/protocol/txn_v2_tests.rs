//! Transaction version 2 (KIP-890 part 2) end to end on one broker, as a Kafka 4 client
//! drives it once ApiVersions finalizes `transaction.version` 2: no AddPartitionsToTxn
//! or AddOffsetsToTxn (Produce v12 and TxnOffsetCommit v5 add their partitions), EndTxn
//! v5 bumps the epoch, and a produce delayed from an ended transaction can never join
//! the next one (KAFKA-17754). Also TxnOffsetCommit below v5 is verified.

use super::txn_admin_tests::{error_of, retrying};
use super::txn_offset_tests::start;
use crate::client::{encode_batch, with_producer_fields, Client, ProducerFields};
use crate::storage::MemoryStorage;
use anyhow::Result;
use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::records::Compression;
use kafka_protocol::ResponseError;
use std::sync::Arc;
use std::time::Duration;

const TOPIC: &str = "tv2-out";
const GROUP: &str = "tv2-group";
const TXN_ID: &str = "tv2-app";

/// A transactional batch of one record `value` from `producer` at `sequence`.
fn batch(producer: (i64, i16), sequence: i32, value: &str) -> Bytes {
    let value = Bytes::copy_from_slice(value.as_bytes());
    let plain = encode_batch(&[(None, Some(value))], 1_000, Compression::None).unwrap();
    let fields = ProducerFields {
        producer_id: producer.0,
        producer_epoch: producer.1,
        base_sequence: sequence,
        transactional: true,
    };
    with_producer_fields(&plain, fields)
}

/// A transactional Produce of `version` to `partition` (acks=all).
async fn produce(
    client: &mut Client,
    version: i16,
    partition: i32,
    batch: Bytes,
) -> Result<Option<i64>> {
    client
        .produce_batch_at(TOPIC, partition, batch, -1, Some(TXN_ID), version)
        .await
}

/// A TxnOffsetCommit of `version` committing `offset` for partition 0 of the topic.
async fn txn_offset_commit(
    client: &mut Client,
    version: i16,
    producer: (i64, i16),
    offset: i64,
) -> Result<()> {
    let offsets = [(TOPIC, 0, offset)];
    client
        .txn_offset_commit_at(TXN_ID, producer, GROUP, &offsets, version)
        .await
}

/// EndTxn v5: the producer id and epoch the producer continues with.
async fn end_txn(client: &mut Client, producer: (i64, i16), commit: bool) -> Result<(i64, i16)> {
    client.end_txn_v2(TXN_ID, producer, commit).await
}

/// The transaction's state and its partitions, as DescribeTransactions tells them.
async fn described(client: &mut Client) -> (String, Vec<(String, i32)>) {
    let r = client.describe_transactions(&[TXN_ID]).await.unwrap();
    let state = &r.transaction_states[0];
    let mut partitions: Vec<(String, i32)> = state
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.topic.0.to_string(), *p)))
        .collect();
    partitions.sort();
    (state.transaction_state.to_string(), partitions)
}

/// Waits (bounded) until the transaction is in `state`.
async fn await_state(client: &mut Client, state: &str) {
    for _ in 0..1000 {
        if described(client).await.0 == state {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the transaction never reached {state}");
}

/// The values a read_committed consumer reads from partition `partition`.
async fn read_committed(client: &mut Client, partition: i32) -> Vec<String> {
    let fetched = client
        .fetch_read_committed(TOPIC, partition, 0, -1, 1 << 20)
        .await
        .unwrap();
    assert_eq!(fetched.error, None);
    fetched
        .records
        .iter()
        .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
        .collect()
}

async fn committed_offset(client: &mut Client) -> Option<i64> {
    let partitions: &[i32] = &[0];
    let fetched = client
        .offset_fetch(GROUP, Some(&[(TOPIC, partitions)]))
        .await
        .unwrap();
    fetched[0].committed_offset
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_version_2_adds_partitions_itself_and_fences_late_produces() {
    let (broker, server) = start(Arc::new(MemoryStorage::new())).await;
    let topic = crate::metadata::CreateTopic {
        name: TOPIC.into(),
        partitions: Some(2),
        ..Default::default()
    };
    broker.create_topic(topic, false).await.unwrap();
    let mut client = Client::connect(broker.config.listen).await.unwrap();

    // What a Kafka 4 client checks before it uses transaction version 2.
    let versions = client
        .send(&ApiVersionsRequest::default(), 3)
        .await
        .unwrap();
    let finalized: Vec<(String, i16)> = versions
        .finalized_features
        .iter()
        .map(|f| (f.name.to_string(), f.max_version_level))
        .collect();
    assert_eq!(finalized, vec![("transaction.version".to_string(), 2)]);
    assert!(versions.finalized_features_epoch >= 0);
    let max_of = |key: ApiKey| {
        let found = versions.api_keys.iter().find(|k| k.api_key == key as i16);
        found.map(|k| k.max_version)
    };
    assert!(max_of(ApiKey::Produce) >= Some(12));
    assert!(max_of(ApiKey::TxnOffsetCommit) >= Some(5));
    assert!(max_of(ApiKey::EndTxn) >= Some(5));

    retrying(async || client.find_transaction_coordinator(TXN_ID).await)
        .await
        .unwrap();
    retrying(async || client.find_coordinator(GROUP).await)
        .await
        .unwrap();
    let first = retrying(async || client.init_producer_id(Some(TXN_ID), 60_000).await)
        .await
        .unwrap();

    // Transaction 1: two partitions and the group's offset, none added by the client.
    for partition in [0, 1] {
        let b = batch(first, 0, &format!("t1-p{partition}"));
        retrying(async || produce(&mut client, 12, partition, b.clone()).await)
            .await
            .unwrap();
    }
    retrying(async || txn_offset_commit(&mut client, 5, first, 10).await)
        .await
        .unwrap();
    let (state, partitions) = described(&mut client).await;
    assert_eq!(state, "Ongoing");
    assert_eq!(partitions.len(), 3, "{partitions:?}");
    assert_eq!(partitions[0].0, "__consumer_offsets");
    assert_eq!(&partitions[1..], &[(TOPIC.into(), 0), (TOPIC.into(), 1)]);
    let second = end_txn(&mut client, first, true).await.unwrap();
    assert_eq!(second, (first.0, first.1 + 1), "the epoch bumps at the end");
    await_state(&mut client, "CompleteCommit").await;
    assert_eq!(committed_offset(&mut client).await, Some(10));

    // Transaction 2 (the bumped epoch, sequences from 0) writes partition 0; a produce
    // of transaction 1 delayed in the network arrives now: with version 1 (no bump) it
    // would join transaction 2. Here it is fenced, and never read.
    retrying(async || produce(&mut client, 12, 0, batch(second, 0, "t2-p0")).await)
        .await
        .unwrap();
    let late = produce(&mut client, 12, 0, batch(first, 1, "late-t1")).await;
    assert_eq!(error_of(late), Some(ResponseError::InvalidProducerEpoch));
    let late_elsewhere = produce(&mut client, 12, 1, batch(first, 1, "late-t1")).await;
    assert_eq!(
        error_of(late_elsewhere),
        Some(ResponseError::InvalidProducerEpoch)
    );
    // A late offset commit of transaction 1 is fenced as well.
    let late_commit = txn_offset_commit(&mut client, 5, first, 99).await;
    assert_eq!(
        error_of(late_commit),
        Some(ResponseError::InvalidProducerEpoch)
    );
    let third = end_txn(&mut client, second, false).await.unwrap();
    assert_eq!(third, (first.0, first.1 + 2));
    await_state(&mut client, "CompleteAbort").await;
    // A retried EndTxn (the epoch it was sent with) gets the same answer.
    assert_eq!(end_txn(&mut client, second, false).await.unwrap(), third);

    assert_eq!(read_committed(&mut client, 0).await, vec!["t1-p0"]);
    assert_eq!(read_committed(&mut client, 1).await, vec!["t1-p1"]);
    assert_eq!(committed_offset(&mut client).await, Some(10));

    // Version 1's TxnOffsetCommit (v3) without AddOffsetsToTxn: the coordinator is asked
    // whether the offsets partition is in the transaction; it is not, so refused.
    let unverified = txn_offset_commit(&mut client, 3, third, 20).await;
    assert_eq!(error_of(unverified), Some(ResponseError::InvalidTxnState));
    let (state, _) = described(&mut client).await;
    assert_eq!(state, "CompleteAbort", "a verification adds nothing");
    // Produce v11 is version 1: verified, not added.
    let unadded = produce(&mut client, 11, 0, batch(third, 0, "t3-p0")).await;
    assert_eq!(error_of(unadded), Some(ResponseError::InvalidTxnState));
    assert_eq!(read_committed(&mut client, 0).await, vec!["t1-p0"]);
    server.abort();
}
