//! Transactions as a client and a coordinator see them on one broker: transactional
//! produce, WriteTxnMarkers (COMMIT for one producer, ABORT for another, fencing), and
//! what read_committed Fetch and ListOffsets answer before and after the markers.
//! The partition side alone: no coordinator, so KIP-890 verification is off here
//! (`txn_admin_tests` covers it).

use super::tests::{s, test_broker_with};
use super::txn_offset_tests::call;
use crate::broker::Broker;
use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::*;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use kafka_protocol::ResponseError;
use std::sync::Arc;

const TOPIC: &str = "existing";

/// A broker whose partitions take transactional batches without asking a coordinator.
async fn test_broker() -> Arc<Broker> {
    test_broker_with(|c| c.txns.transaction_partition_verification_enable = false).await
}

/// A transactional batch of one record from `producer_id`.
fn txn_batch(producer_id: i64, producer_epoch: i16, sequence: i32, value: &str) -> Bytes {
    let record = Record {
        transactional: true,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id,
        producer_epoch,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence,
        timestamp: 1_000,
        key: None,
        value: Some(Bytes::copy_from_slice(value.as_bytes())),
        headers: IndexMap::new(),
    };
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, [&record], &options).unwrap();
    buf.freeze()
}

/// Produces `batch` to partition 0 with acks=all; returns (error code, base offset).
async fn produce(broker: &Arc<Broker>, batch: Bytes, transactional: bool) -> (i16, i64) {
    use produce_request::*;
    let data = PartitionProduceData::default()
        .with_index(0)
        .with_records(Some(batch));
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5_000)
        .with_transactional_id(transactional.then(|| s("txn-app").into()))
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(s(TOPIC)))
            .with_partition_data(vec![data])]);
    let ResponseKind::Produce(r) =
        call(broker, ApiKey::Produce, 9, RequestKind::Produce(request)).await
    else {
        panic!("not a produce response")
    };
    let p = &r.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// One marker for partition 0 of `topic`: (producer id, epoch, commit, coordinator epoch).
fn marker(
    topic: &str,
    producer_id: i64,
    epoch: i16,
    commit: bool,
    coordinator_epoch: i32,
) -> write_txn_markers_request::WritableTxnMarker {
    use write_txn_markers_request::*;
    WritableTxnMarker::default()
        .with_producer_id(ProducerId(producer_id))
        .with_producer_epoch(epoch)
        .with_transaction_result(commit)
        .with_coordinator_epoch(coordinator_epoch)
        .with_topics(vec![WritableTxnMarkerTopic::default()
            .with_name(TopicName(s(topic)))
            .with_partition_indexes(vec![0])])
}

/// Sends the markers; returns each marker's (producer id, partition 0's error code).
async fn write_markers(
    broker: &Arc<Broker>,
    markers: Vec<write_txn_markers_request::WritableTxnMarker>,
) -> Vec<(i64, i16)> {
    let request = WriteTxnMarkersRequest::default().with_markers(markers);
    let ResponseKind::WriteTxnMarkers(r) = call(
        broker,
        ApiKey::WriteTxnMarkers,
        1,
        RequestKind::WriteTxnMarkers(request),
    )
    .await
    else {
        panic!("not a WriteTxnMarkers response")
    };
    r.markers
        .iter()
        .map(|m| (m.producer_id.0, m.topics[0].partitions[0].error_code))
        .collect()
}

/// What a fetch of partition 0 from `offset` answers at an isolation level.
struct Fetched {
    high_watermark: i64,
    last_stable_offset: i64,
    offsets: Vec<i64>,
    aborted: Option<Vec<(i64, i64)>>,
}

async fn fetch(broker: &Arc<Broker>, offset: i64, isolation_level: i8) -> Fetched {
    use fetch_request::*;
    let partition = FetchPartition::default()
        .with_partition(0)
        .with_fetch_offset(offset)
        .with_current_leader_epoch(-1)
        .with_log_start_offset(-1)
        .with_partition_max_bytes(1 << 20);
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_isolation_level(isolation_level)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(s(TOPIC)))
            .with_partitions(vec![partition])]);
    let ResponseKind::Fetch(r) = call(broker, ApiKey::Fetch, 12, RequestKind::Fetch(request)).await
    else {
        panic!("not a fetch response")
    };
    let p = &r.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    let records = crate::client::decode_records(p.records.as_ref().unwrap()).unwrap();
    Fetched {
        high_watermark: p.high_watermark,
        last_stable_offset: p.last_stable_offset,
        offsets: records.iter().map(|r| r.offset).collect(),
        aborted: p.aborted_transactions.as_ref().map(|a| {
            a.iter()
                .map(|t| (t.producer_id.0, t.first_offset))
                .collect()
        }),
    }
}

/// ListOffsets latest for partition 0 at an isolation level.
async fn latest(broker: &Arc<Broker>, isolation_level: i8) -> i64 {
    use list_offsets_request::*;
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_isolation_level(isolation_level)
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(s(TOPIC)))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_current_leader_epoch(-1)
                .with_timestamp(-1)])]);
    let ResponseKind::ListOffsets(r) = call(
        broker,
        ApiKey::ListOffsets,
        7,
        RequestKind::ListOffsets(request),
    )
    .await
    else {
        panic!("not a ListOffsets response")
    };
    let p = &r.topics[0].partitions[0];
    assert_eq!(p.error_code, 0);
    p.offset
}

#[tokio::test]
async fn read_committed_stops_at_open_transactions_and_lists_aborted_ones() {
    let broker = test_broker().await;
    let (e, a1) = produce(&broker, txn_batch(1, 0, 0, "a1"), true).await;
    assert_eq!(e, 0);
    let (_, b1) = produce(&broker, txn_batch(2, 0, 0, "b1"), true).await;
    let (_, a2) = produce(&broker, txn_batch(1, 0, 1, "a2"), true).await;
    assert!(a1 < b1 && b1 < a2);

    // Both transactions open: read_committed stops at the first one.
    let committed = fetch(&broker, 0, 1).await;
    assert_eq!(committed.last_stable_offset, a1);
    assert_eq!(committed.high_watermark, a2 + 1);
    assert!(committed.offsets.is_empty(), "{:?}", committed.offsets);
    assert_eq!(committed.aborted, Some(vec![]));
    let uncommitted = fetch(&broker, 0, 0).await;
    assert_eq!(uncommitted.offsets, vec![a1, b1, a2]);
    assert_eq!(uncommitted.last_stable_offset, a1);
    assert_eq!(uncommitted.aborted, None);
    assert_eq!(latest(&broker, 1).await, a1);
    assert_eq!(latest(&broker, 0).await, a2 + 1);

    // Producer 2 commits, producer 1 aborts.
    let answers = write_markers(
        &broker,
        vec![marker(TOPIC, 2, 0, true, 0), marker(TOPIC, 1, 0, false, 0)],
    )
    .await;
    assert_eq!(answers, vec![(2, 0), (1, 0)]);
    let (_, after) = produce(
        &broker,
        crate::client::encode_batch(
            &[(None, Some(Bytes::from("plain")))],
            1_000,
            Compression::None,
        )
        .unwrap(),
        false,
    )
    .await;

    let committed = fetch(&broker, 0, 1).await;
    assert_eq!(committed.last_stable_offset, after + 1);
    assert_eq!(committed.high_watermark, after + 1);
    assert_eq!(committed.offsets, vec![a1, b1, a2, after]);
    assert_eq!(committed.aborted, Some(vec![(1, a1)]));
    // A read after the aborted transaction does not list it.
    let later = fetch(&broker, after, 1).await;
    assert_eq!((later.offsets, later.aborted), (vec![after], Some(vec![])));
    assert_eq!(latest(&broker, 1).await, after + 1);
}

#[tokio::test]
async fn markers_of_stale_epochs_are_fenced() {
    let broker = test_broker().await;
    assert_eq!(produce(&broker, txn_batch(5, 1, 0, "x"), true).await.0, 0);
    let answers = write_markers(
        &broker,
        vec![
            marker(TOPIC, 5, 0, true, 3),
            marker("missing", 5, 1, true, 3),
            marker(TOPIC, 5, 1, true, 3),
            marker(TOPIC, 5, 1, false, 2),
        ],
    )
    .await;
    assert_eq!(
        answers,
        vec![
            (5, ResponseError::InvalidProducerEpoch.code()),
            (5, ResponseError::UnknownTopicOrPartition.code()),
            (5, 0),
            (5, ResponseError::TransactionCoordinatorFenced.code()),
        ]
    );
    // A transactional batch needs its request's transactional id.
    let (e, _) = produce(&broker, txn_batch(5, 1, 1, "y"), false).await;
    assert_eq!(e, ResponseError::InvalidRequest.code());
}
