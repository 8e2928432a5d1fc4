//! Transactional offset commits end to end on one broker, as a consume-transform-produce
//! client drives them: InitProducerId with a transactional id, AddOffsetsToTxn,
//! TxnOffsetCommit, EndTxn; the markers travel over the broker's own Kafka listener
//! (the transaction coordinator sends WriteTxnMarkers to the partition leader), and
//! OffsetFetch shows the offset only once the transaction committed, also after a
//! restart; a fenced producer epoch is refused by the partition leader.

use super::dispatch::dispatch;
use super::tests::{frame, resolve, s};
use crate::broker::Broker;
use crate::config::BrokerConfig;
use crate::storage::MemoryStorage;
use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;
use std::sync::Arc;
use std::time::Duration;

const TOPIC: &str = "input";
const GROUP: &str = "txn-group";
const TXN_ID: &str = "txn-app";

/// A broker on `storage` serving Kafka on a loopback port (the markers need it).
pub(super) async fn start(
    storage: Arc<MemoryStorage>,
) -> (Arc<Broker>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let mut config = BrokerConfig {
        data_dir: "/data".into(),
        seed: Some(5),
        raft_tick_ms: 10,
        listen: address,
        advertised_host: "127.0.0.1".into(),
        advertised_port: i32::from(address.port()),
        ..BrokerConfig::default()
    };
    config.groups.offsets_topic_partitions = 3;
    let broker = Broker::open(config, storage, None).await.unwrap();
    broker.start_background_tasks();
    let server = tokio::spawn(super::server::serve(broker.clone(), listener));
    (broker, server)
}

pub(super) async fn call(
    broker: &Arc<Broker>,
    key: ApiKey,
    version: i16,
    request: RequestKind,
) -> ResponseKind {
    let pending = dispatch(broker, frame(key, version, 1, &request))
        .await
        .unwrap();
    resolve(pending.reply).await.expect("an answer")
}

/// Asks until the error code is not a retriable coordinator error (bounded).
async fn retrying<T>(mut ask: impl AsyncFnMut() -> (i16, T)) -> (i16, T) {
    let retriable = [
        ResponseError::CoordinatorNotAvailable,
        ResponseError::CoordinatorLoadInProgress,
        ResponseError::NotCoordinator,
        ResponseError::ConcurrentTransactions,
        ResponseError::UnknownTopicOrPartition,
    ]
    .map(|e| e.code());
    for _ in 0..1000 {
        let (error, answer) = ask().await;
        if !retriable.contains(&error) {
            return (error, answer);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("still refused after 1000 tries");
}

async fn find_coordinators(broker: &Arc<Broker>) {
    for (key_type, key) in [(0, GROUP), (1, TXN_ID)] {
        let request = FindCoordinatorRequest::default()
            .with_key(s(key))
            .with_key_type(key_type);
        let (error, _) = retrying(async || {
            let r = call(
                broker,
                ApiKey::FindCoordinator,
                3,
                RequestKind::FindCoordinator(request.clone()),
            )
            .await;
            let ResponseKind::FindCoordinator(r) = r else {
                panic!()
            };
            (r.error_code, ())
        })
        .await;
        assert_eq!(error, 0);
    }
}

async fn init_producer_id(broker: &Arc<Broker>) -> (i64, i16) {
    let request = InitProducerIdRequest::default()
        .with_transactional_id(Some(s(TXN_ID).into()))
        .with_transaction_timeout_ms(60_000);
    let (error, producer) = retrying(async || {
        let r = call(
            broker,
            ApiKey::InitProducerId,
            4,
            RequestKind::InitProducerId(request.clone()),
        )
        .await;
        let ResponseKind::InitProducerId(r) = r else {
            panic!()
        };
        (r.error_code, (r.producer_id.0, r.producer_epoch))
    })
    .await;
    assert_eq!(error, 0);
    producer
}

/// AddOffsetsToTxn then TxnOffsetCommit of `offset` for partition 0 of the input.
async fn commit_in_txn(broker: &Arc<Broker>, (producer_id, epoch): (i64, i16), offset: i64) {
    let add = AddOffsetsToTxnRequest::default()
        .with_transactional_id(s(TXN_ID).into())
        .with_producer_id(ProducerId(producer_id))
        .with_producer_epoch(epoch)
        .with_group_id(s(GROUP).into());
    let (error, _) = retrying(async || {
        let r = call(
            broker,
            ApiKey::AddOffsetsToTxn,
            3,
            RequestKind::AddOffsetsToTxn(add.clone()),
        )
        .await;
        let ResponseKind::AddOffsetsToTxn(r) = r else {
            panic!()
        };
        (r.error_code, ())
    })
    .await;
    assert_eq!(error, 0, "AddOffsetsToTxn");
    assert_eq!(
        txn_offset_commit(broker, (producer_id, epoch), offset).await,
        0,
        "TxnOffsetCommit"
    );
}

/// TxnOffsetCommit of `offset` for partition 0 of the input: its error code.
async fn txn_offset_commit(
    broker: &Arc<Broker>,
    (producer_id, epoch): (i64, i16),
    offset: i64,
) -> i16 {
    use txn_offset_commit_request::*;
    let commit = TxnOffsetCommitRequest::default()
        .with_transactional_id(s(TXN_ID).into())
        .with_group_id(s(GROUP).into())
        .with_producer_id(ProducerId(producer_id))
        .with_producer_epoch(epoch)
        .with_generation_id(-1)
        .with_topics(vec![TxnOffsetCommitRequestTopic::default()
            .with_name(s(TOPIC).into())
            .with_partitions(vec![TxnOffsetCommitRequestPartition::default()
                .with_partition_index(0)
                .with_committed_offset(offset)
                .with_committed_leader_epoch(-1)])]);
    let (error, _) = retrying(async || {
        let r = call(
            broker,
            ApiKey::TxnOffsetCommit,
            3,
            RequestKind::TxnOffsetCommit(commit.clone()),
        )
        .await;
        let ResponseKind::TxnOffsetCommit(r) = r else {
            panic!()
        };
        (r.topics[0].partitions[0].error_code, ())
    })
    .await;
    error
}

async fn end_txn(broker: &Arc<Broker>, (producer_id, epoch): (i64, i16), commit: bool) {
    let request = EndTxnRequest::default()
        .with_transactional_id(s(TXN_ID).into())
        .with_producer_id(ProducerId(producer_id))
        .with_producer_epoch(epoch)
        .with_committed(commit);
    let (error, _) = retrying(async || {
        let r = call(
            broker,
            ApiKey::EndTxn,
            3,
            RequestKind::EndTxn(request.clone()),
        )
        .await;
        let ResponseKind::EndTxn(r) = r else { panic!() };
        (r.error_code, ())
    })
    .await;
    assert_eq!(error, 0, "EndTxn");
}

/// OffsetFetch v7 of partition 0: (partition error code, committed offset).
async fn fetch_offset(broker: &Arc<Broker>, require_stable: bool) -> (i16, i64) {
    use offset_fetch_request::*;
    let request = OffsetFetchRequest::default()
        .with_group_id(s(GROUP).into())
        .with_require_stable(require_stable)
        .with_topics(Some(vec![OffsetFetchRequestTopic::default()
            .with_name(s(TOPIC).into())
            .with_partition_indexes(vec![0])]));
    let (_, answer) = retrying(async || {
        let r = call(
            broker,
            ApiKey::OffsetFetch,
            7,
            RequestKind::OffsetFetch(request.clone()),
        )
        .await;
        let ResponseKind::OffsetFetch(r) = r else {
            panic!()
        };
        match r.topics.first().and_then(|t| t.partitions.first()) {
            Some(p) if r.error_code == 0 => (0, (p.error_code, p.committed_offset)),
            _ => (r.error_code, (r.error_code, -1)),
        }
    })
    .await;
    answer
}

/// Polls OffsetFetch with `require_stable` until the partition is stable (the marker
/// reached the coordinator); returns the committed offset.
async fn stable_offset(broker: &Arc<Broker>) -> i64 {
    for _ in 0..1000 {
        match fetch_offset(broker, true).await {
            (0, offset) => return offset,
            (error, _) => assert_eq!(error, ResponseError::UnstableOffsetCommit.code()),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the offset never became stable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_offsets_show_if_and_only_if_the_transaction_commits() {
    let storage = Arc::new(MemoryStorage::new());
    let (broker, server) = start(storage.clone()).await;
    let input = crate::metadata::CreateTopic {
        name: TOPIC.into(),
        partitions: Some(1),
        ..Default::default()
    };
    broker.create_topic(input, false).await.unwrap();
    find_coordinators(&broker).await;
    let producer = init_producer_id(&broker).await;

    // Committed in a transaction: pending (unstable) until the marker.
    commit_in_txn(&broker, producer, 42).await;
    assert_eq!(
        fetch_offset(&broker, true).await.0,
        ResponseError::UnstableOffsetCommit.code()
    );
    assert_eq!(fetch_offset(&broker, false).await, (0, -1));
    end_txn(&broker, producer, true).await;
    assert_eq!(stable_offset(&broker).await, 42);

    // Aborted: the offset stays.
    commit_in_txn(&broker, producer, 50).await;
    end_txn(&broker, producer, false).await;
    assert_eq!(stable_offset(&broker).await, 42);

    // A transaction left open across a power loss: still pending after the reload,
    // and committed by the restarted coordinators.
    commit_in_txn(&broker, producer, 60).await;
    server.abort();
    drop(broker);
    storage.crash();
    let (broker, server) = start(storage.clone()).await;
    find_coordinators(&broker).await;
    assert_eq!(
        fetch_offset(&broker, true).await.0,
        ResponseError::UnstableOffsetCommit.code()
    );
    assert_eq!(fetch_offset(&broker, false).await, (0, 42));
    end_txn(&broker, producer, true).await;
    assert_eq!(stable_offset(&broker).await, 60);

    // A new InitProducerId bumps the epoch: once the partition has seen the new epoch,
    // the old one's TxnOffsetCommit is fenced by the leader (coordinator origin keeps
    // the epoch check), and the coordinator carries on.
    let successor = init_producer_id(&broker).await;
    assert_eq!(successor.0, producer.0);
    assert!(successor.1 > producer.1);
    commit_in_txn(&broker, successor, 70).await;
    assert_eq!(
        txn_offset_commit(&broker, producer, 99).await,
        ResponseError::InvalidProducerEpoch.code()
    );
    end_txn(&broker, successor, true).await;
    assert_eq!(stable_offset(&broker).await, 70);
    server.abort();
}
