//! Every API at every advertised version: a realistic request goes through the real
//! dispatch against an in-memory broker, and the response must encode, decode back and
//! carry the request's correlation id. This catches fields set outside the versions
//! that carry them (the kafka-protocol encoder refuses those).

use super::dispatch::{dispatch, encode_response, DispatchError, Reply};
use super::versions::{PRODUCE_MIN_HANDLED_VERSION, SUPPORTED};
use crate::broker::Broker;
use crate::client::encode_batch;
use crate::config::BrokerConfig;
use crate::storage::MemoryStorage;
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::Compression;
use std::sync::Arc;

pub(super) fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

pub(super) async fn test_broker() -> Arc<Broker> {
    test_broker_with(|_| {}).await
}

/// [`test_broker`] with its config changed by `adjust` first.
pub(super) async fn test_broker_with(adjust: impl FnOnce(&mut BrokerConfig)) -> Arc<Broker> {
    let mut config = BrokerConfig {
        data_dir: "/data".into(),
        seed: Some(7),
        ..BrokerConfig::default()
    };
    adjust(&mut config);
    let broker = Broker::open(config, Arc::new(MemoryStorage::new()), None)
        .await
        .unwrap();
    let existing = crate::metadata::CreateTopic {
        name: "existing".into(),
        partitions: Some(2),
        ..Default::default()
    };
    broker.create_topic(existing, false).await.unwrap();
    broker
}

pub(super) fn frame(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    request: &RequestKind,
) -> Bytes {
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(s("test")));
    let mut buf = BytesMut::new();
    header
        .encode(&mut buf, api_key.request_header_version(version))
        .unwrap();
    request.encode(&mut buf, version).unwrap();
    buf.freeze()
}

/// A request with real content, using only fields that exist in `version`.
fn request_for(key: ApiKey, version: i16) -> RequestKind {
    let topic = |name: &str| TopicName(s(name));
    match key {
        ApiKey::Produce => {
            use produce_request::*;
            let batch = encode_batch(
                &[(Some(Bytes::from("k")), Some(Bytes::from("v")))],
                1_000,
                Compression::None,
            )
            .unwrap();
            let partitions = vec![
                PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(batch)),
                PartitionProduceData::default()
                    .with_index(9)
                    .with_records(Some(Bytes::from_static(b"garbage"))),
            ];
            let topics = vec![TopicProduceData::default()
                .with_name(topic("existing"))
                .with_partition_data(partitions)];
            RequestKind::Produce(
                ProduceRequest::default()
                    .with_acks(1)
                    .with_timeout_ms(1000)
                    .with_topic_data(topics),
            )
        }
        ApiKey::Fetch => {
            use fetch_request::*;
            let p = |i: i32, offset: i64| {
                let mut p = FetchPartition::default()
                    .with_partition(i)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(1 << 20);
                if version >= 9 {
                    p = p.with_current_leader_epoch(-1);
                }
                if version >= 5 {
                    p = p.with_log_start_offset(-1);
                }
                p
            };
            let topics = vec![
                FetchTopic::default()
                    .with_topic(topic("existing"))
                    .with_partitions(vec![p(0, 0), p(1, 99)]),
                FetchTopic::default()
                    .with_topic(topic("missing"))
                    .with_partitions(vec![p(0, 0)]),
            ];
            let mut r = FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(0)
                .with_min_bytes(1)
                .with_max_bytes(1 << 20)
                .with_topics(topics);
            if version >= 7 {
                r = r.with_session_epoch(-1);
            }
            RequestKind::Fetch(r)
        }
        ApiKey::ListOffsets => {
            use list_offsets_request::*;
            let p = |i: i32, ts: i64| {
                let p = ListOffsetsPartition::default()
                    .with_partition_index(i)
                    .with_timestamp(ts);
                if version >= 4 {
                    p.with_current_leader_epoch(-1)
                } else {
                    p
                }
            };
            let partitions = vec![p(0, -1), p(0, -2), p(1, 500)];
            let partitions = if version >= 7 {
                [partitions, vec![p(0, -3)]].concat()
            } else {
                partitions
            };
            let topics = vec![ListOffsetsTopic::default()
                .with_name(topic("existing"))
                .with_partitions(partitions)];
            RequestKind::ListOffsets(
                ListOffsetsRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_topics(topics),
            )
        }
        ApiKey::Metadata => {
            use metadata_request::*;
            let names = ["existing", "auto-created", "bad name!"];
            let topics = names
                .iter()
                .map(|n| MetadataRequestTopic::default().with_name(Some(topic(n))))
                .collect();
            let mut r = MetadataRequest::default().with_topics(Some(topics));
            if version >= 4 {
                r = r.with_allow_auto_topic_creation(true);
            }
            RequestKind::Metadata(r)
        }
        ApiKey::FindCoordinator => {
            let r = FindCoordinatorRequest::default();
            RequestKind::FindCoordinator(if version >= 4 {
                r.with_coordinator_keys(vec![s("g1")])
            } else {
                r.with_key(s("g1"))
            })
        }
        ApiKey::CreateTopics => {
            use create_topics_request::*;
            let config = CreatableTopicConfig::default()
                .with_name(s("retention.ms"))
                .with_value(Some(s("1000")));
            let topics = vec![
                CreatableTopic::default()
                    .with_name(topic(&format!("new-{version}")))
                    .with_num_partitions(2)
                    .with_replication_factor(1)
                    .with_configs(vec![config]),
                CreatableTopic::default()
                    .with_name(topic("existing"))
                    .with_num_partitions(1)
                    .with_replication_factor(1),
                CreatableTopic::default()
                    .with_name(topic("rf3"))
                    .with_num_partitions(1)
                    .with_replication_factor(3),
            ];
            RequestKind::CreateTopics(
                CreateTopicsRequest::default()
                    .with_topics(topics)
                    .with_timeout_ms(1000),
            )
        }
        ApiKey::DeleteTopics => {
            use delete_topics_request::*;
            let r = DeleteTopicsRequest::default().with_timeout_ms(1000);
            RequestKind::DeleteTopics(if version >= 6 {
                r.with_topics(vec![
                    DeleteTopicState::default().with_name(Some(topic("missing")))
                ])
            } else {
                r.with_topic_names(vec![topic("missing")])
            })
        }
        ApiKey::DescribeConfigs => {
            use describe_configs_request::*;
            let resources = vec![
                DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s("existing")),
                DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s("missing")),
                DescribeConfigsResource::default()
                    .with_resource_type(4)
                    .with_resource_name(s("1")),
            ];
            let mut r = DescribeConfigsRequest::default()
                .with_resources(resources)
                .with_include_synonyms(true);
            if version >= 3 {
                r = r.with_include_documentation(true);
            }
            RequestKind::DescribeConfigs(r)
        }
        ApiKey::AlterConfigs => {
            use alter_configs_request::*;
            let configs = vec![AlterableConfig::default()
                .with_name(s("retention.ms"))
                .with_value(Some(s("5000")))];
            let resources = vec![
                AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s("existing"))
                    .with_configs(configs.clone()),
                AlterConfigsResource::default()
                    .with_resource_type(4)
                    .with_resource_name(s("1"))
                    .with_configs(configs),
            ];
            RequestKind::AlterConfigs(AlterConfigsRequest::default().with_resources(resources))
        }
        ApiKey::IncrementalAlterConfigs => {
            use incremental_alter_configs_request::*;
            let configs = vec![AlterableConfig::default()
                .with_name(s("segment.bytes"))
                .with_config_operation(0)
                .with_value(Some(s("100000")))];
            let resources = vec![AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s("existing"))
                .with_configs(configs)];
            RequestKind::IncrementalAlterConfigs(
                IncrementalAlterConfigsRequest::default().with_resources(resources),
            )
        }
        ApiKey::CreatePartitions => {
            use create_partitions_request::*;
            let topics = vec![CreatePartitionsTopic::default()
                .with_name(topic("existing"))
                .with_count(1)];
            RequestKind::CreatePartitions(
                CreatePartitionsRequest::default()
                    .with_topics(topics)
                    .with_timeout_ms(1000),
            )
        }
        ApiKey::DescribeCluster => {
            RequestKind::DescribeCluster(DescribeClusterRequest::default().with_endpoint_type(1))
        }
        ApiKey::ApiVersions => RequestKind::ApiVersions(ApiVersionsRequest::default()),
        ApiKey::OffsetForLeaderEpoch => offset_for_leader_epoch_request(1, -1),
        ApiKey::JoinGroup => {
            use join_group_request::*;
            RequestKind::JoinGroup(
                JoinGroupRequest::default()
                    .with_group_id(s("g1").into())
                    .with_session_timeout_ms(10_000)
                    .with_rebalance_timeout_ms(10_000)
                    .with_protocol_type(s("consumer"))
                    .with_protocols(vec![JoinGroupRequestProtocol::default()
                        .with_name(s("range"))
                        .with_metadata(Bytes::from_static(b"\x00\x00"))]),
            )
        }
        ApiKey::SyncGroup => RequestKind::SyncGroup(
            SyncGroupRequest::default()
                .with_group_id(s("g1").into())
                .with_member_id(s("m"))
                .with_generation_id(1),
        ),
        ApiKey::Heartbeat => RequestKind::Heartbeat(
            HeartbeatRequest::default()
                .with_group_id(s("g1").into())
                .with_member_id(s("m"))
                .with_generation_id(1),
        ),
        ApiKey::LeaveGroup => {
            let r = LeaveGroupRequest::default().with_group_id(s("g1").into());
            RequestKind::LeaveGroup(if version >= 3 {
                r.with_members(vec![
                    leave_group_request::MemberIdentity::default().with_member_id(s("m"))
                ])
            } else {
                r.with_member_id(s("m"))
            })
        }
        ApiKey::OffsetCommit => {
            use offset_commit_request::*;
            RequestKind::OffsetCommit(
                OffsetCommitRequest::default()
                    .with_group_id(s("g1").into())
                    .with_generation_id_or_member_epoch(-1)
                    .with_topics(vec![OffsetCommitRequestTopic::default()
                        .with_name(topic("existing"))
                        .with_partitions(vec![OffsetCommitRequestPartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(5)])]),
            )
        }
        ApiKey::OffsetFetch => {
            use offset_fetch_request::*;
            let r = OffsetFetchRequest::default();
            RequestKind::OffsetFetch(if version >= 8 {
                r.with_groups(vec![OffsetFetchRequestGroup::default()
                    .with_group_id(s("g1").into())
                    .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                        .with_name(topic("existing"))
                        .with_partition_indexes(vec![0])]))])
            } else {
                r.with_group_id(s("g1").into()).with_topics(Some(vec![
                    OffsetFetchRequestTopic::default()
                        .with_name(topic("existing"))
                        .with_partition_indexes(vec![0]),
                ]))
            })
        }
        ApiKey::ListGroups => RequestKind::ListGroups(ListGroupsRequest::default()),
        ApiKey::DescribeGroups => RequestKind::DescribeGroups(
            DescribeGroupsRequest::default().with_groups(vec![s("g1").into()]),
        ),
        ApiKey::DeleteGroups => RequestKind::DeleteGroups(
            DeleteGroupsRequest::default().with_groups_names(vec![s("g1").into()]),
        ),
        ApiKey::OffsetDelete => {
            use offset_delete_request::*;
            RequestKind::OffsetDelete(
                OffsetDeleteRequest::default()
                    .with_group_id(s("g1").into())
                    .with_topics(vec![OffsetDeleteRequestTopic::default()
                        .with_name(topic("existing"))
                        .with_partitions(vec![
                            OffsetDeleteRequestPartition::default().with_partition_index(0)
                        ])]),
            )
        }
        ApiKey::InitProducerId => RequestKind::InitProducerId(
            InitProducerIdRequest::default()
                .with_transaction_timeout_ms(60_000)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        ),
        ApiKey::AddPartitionsToTxn => {
            use add_partitions_to_txn_request::*;
            let topics = vec![AddPartitionsToTxnTopic::default()
                .with_name(topic("existing"))
                .with_partitions(vec![0])];
            let r = AddPartitionsToTxnRequest::default();
            RequestKind::AddPartitionsToTxn(if version >= 4 {
                r.with_transactions(vec![AddPartitionsToTxnTransaction::default()
                    .with_transactional_id(s("t1").into())
                    .with_producer_id(ProducerId(1))
                    .with_verify_only(true)
                    .with_topics(topics)])
            } else {
                r.with_v3_and_below_transactional_id(s("t1").into())
                    .with_v3_and_below_producer_id(ProducerId(1))
                    .with_v3_and_below_topics(topics)
            })
        }
        ApiKey::AddOffsetsToTxn => RequestKind::AddOffsetsToTxn(
            AddOffsetsToTxnRequest::default()
                .with_transactional_id(s("t1").into())
                .with_producer_id(ProducerId(1))
                .with_group_id(s("g1").into()),
        ),
        ApiKey::EndTxn => RequestKind::EndTxn(
            EndTxnRequest::default()
                .with_transactional_id(s("t1").into())
                .with_producer_id(ProducerId(1))
                .with_committed(true),
        ),
        ApiKey::TxnOffsetCommit => {
            use txn_offset_commit_request::*;
            RequestKind::TxnOffsetCommit(
                TxnOffsetCommitRequest::default()
                    .with_transactional_id(s("t1").into())
                    .with_group_id(s("g1").into())
                    .with_producer_id(ProducerId(1))
                    .with_topics(vec![TxnOffsetCommitRequestTopic::default()
                        .with_name(s("t").into())
                        .with_partitions(vec![
                            TxnOffsetCommitRequestPartition::default().with_committed_offset(1)
                        ])]),
            )
        }
        ApiKey::WriteTxnMarkers => {
            use write_txn_markers_request::*;
            RequestKind::WriteTxnMarkers(WriteTxnMarkersRequest::default().with_markers(vec![
                WritableTxnMarker::default()
                    .with_producer_id(ProducerId(1))
                    .with_producer_epoch(0)
                    .with_transaction_result(false)
                    .with_coordinator_epoch(0)
                    .with_topics(vec![WritableTxnMarkerTopic::default()
                        .with_name(topic("existing"))
                        .with_partition_indexes(vec![0])]),
            ]))
        }
        ApiKey::ListTransactions => RequestKind::ListTransactions(
            ListTransactionsRequest::default()
                .with_state_filters(vec![s("Ongoing")])
                .with_producer_id_filters(vec![ProducerId(1)])
                .with_duration_filter(if version >= 1 { 10 } else { -1 }),
        ),
        ApiKey::DescribeTransactions => RequestKind::DescribeTransactions(
            DescribeTransactionsRequest::default().with_transactional_ids(vec![s("t1").into()]),
        ),
        ApiKey::DescribeProducers => {
            use describe_producers_request::*;
            RequestKind::DescribeProducers(DescribeProducersRequest::default().with_topics(vec![
                TopicRequest::default()
                    .with_name(topic("existing"))
                    .with_partition_indexes(vec![0, 1]),
            ]))
        }
        other => panic!("no test request for {other:?}"),
    }
}

fn offset_for_leader_epoch_request(leader_epoch: i32, current_leader_epoch: i32) -> RequestKind {
    use offset_for_leader_epoch_request::*;
    let partitions = vec![OffsetForLeaderPartition::default()
        .with_partition(0)
        .with_current_leader_epoch(current_leader_epoch)
        .with_leader_epoch(leader_epoch)];
    RequestKind::OffsetForLeaderEpoch(
        OffsetForLeaderEpochRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![OffsetForLeaderTopic::default()
                .with_topic(TopicName(s("existing")))
                .with_partitions(partitions)]),
    )
}

pub(super) async fn resolve(reply: Reply) -> Option<ResponseKind> {
    match reply {
        Reply::Now(r) => Some(r),
        Reply::Later(f) => Some(f.await),
        Reply::Nothing => None,
    }
}

fn decode_response(key: ApiKey, version: i16, mut bytes: Bytes) -> i32 {
    let header = ResponseHeader::decode(&mut bytes, key.response_header_version(version)).unwrap();
    ResponseKind::decode(key, &mut bytes, version)
        .unwrap_or_else(|e| panic!("{key:?} v{version} response does not decode: {e}"));
    header.correlation_id
}

#[tokio::test]
async fn every_api_at_every_advertised_version_answers() {
    let broker = test_broker().await;
    let mut correlation_id = 100;
    for supported in SUPPORTED {
        let min = if supported.key == ApiKey::Produce {
            PRODUCE_MIN_HANDLED_VERSION
        } else {
            supported.min
        };
        for version in min..=supported.max {
            correlation_id += 1;
            let request = request_for(supported.key, version);
            let pending = dispatch(
                &broker,
                frame(supported.key, version, correlation_id, &request),
            )
            .await
            .unwrap_or_else(|e| panic!("{:?} v{version}: {e}", supported.key));
            assert_eq!(pending.correlation_id, correlation_id);
            let response = resolve(pending.reply).await.expect("acks=1 answers");
            let bytes = encode_response(
                pending.correlation_id,
                pending.api_key,
                pending.version,
                &response,
            )
            .unwrap_or_else(|e| {
                panic!(
                    "{:?} v{version} response does not encode: {e}",
                    supported.key
                )
            });
            assert_eq!(
                decode_response(supported.key, pending.version, bytes),
                correlation_id
            );
        }
    }
}

#[tokio::test]
async fn produce_then_fetch_returns_the_stored_batch() {
    let broker = test_broker().await;
    let request = request_for(ApiKey::Produce, 9);
    let pending = dispatch(&broker, frame(ApiKey::Produce, 9, 1, &request))
        .await
        .unwrap();
    let Some(ResponseKind::Produce(response)) = resolve(pending.reply).await else {
        panic!("not a produce response")
    };
    let partitions = &response.responses[0].partition_responses;
    assert_eq!(partitions[0].error_code, 0);
    // Offsets below it hold the leader's control batch (LEADER_CHANGE) of its election.
    let base_offset = partitions[0].base_offset;
    assert!(base_offset >= 1, "{base_offset}");
    assert_eq!(
        partitions[1].error_code,
        kafka_protocol::ResponseError::UnknownTopicOrPartition.code()
    );
    let pending = dispatch(
        &broker,
        frame(ApiKey::Fetch, 12, 2, &request_for(ApiKey::Fetch, 12)),
    )
    .await
    .unwrap();
    let Some(ResponseKind::Fetch(response)) = resolve(pending.reply).await else {
        panic!("not a fetch response")
    };
    let p0 = &response.responses[0].partitions[0];
    assert_eq!((p0.error_code, p0.high_watermark), (0, base_offset + 1));
    let records = crate::client::decode_records(p0.records.as_ref().unwrap()).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].offset, base_offset);
    assert_eq!(records[0].value.as_deref(), Some(&b"v"[..]));
    let p1 = &response.responses[0].partitions[1];
    assert_eq!(
        p1.error_code,
        kafka_protocol::ResponseError::OffsetOutOfRange.code()
    );
    assert_eq!(
        response.responses[1].partitions[0].error_code,
        kafka_protocol::ResponseError::UnknownTopicOrPartition.code()
    );
}

#[tokio::test]
async fn unsupported_api_versions_gets_error_35_with_v0_body() {
    let broker = test_broker().await;
    // Newer clients use the flexible header (v2) for ApiVersions v3+; older ones v1.
    for header_version in [1, 2] {
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::ApiVersions as i16)
            .with_request_api_version(99)
            .with_correlation_id(5);
        let mut buf = BytesMut::new();
        header.encode(&mut buf, header_version).unwrap();
        ApiVersionsRequest::default().encode(&mut buf, 3).unwrap();
        let pending = dispatch(&broker, buf.freeze()).await.unwrap();
        assert_eq!((pending.version, pending.correlation_id), (0, 5));
        let response = resolve(pending.reply).await.unwrap();
        let bytes = encode_response(5, ApiKey::ApiVersions, 0, &response).unwrap();
        let mut body = bytes.slice(4..);
        let decoded = ApiVersionsResponse::decode(&mut body, 0).unwrap();
        assert_eq!(decoded.error_code, 35);
        assert!(decoded
            .api_keys
            .iter()
            .any(|k| k.api_key == ApiKey::Produce as i16 && k.min_version == 0));
    }
}

#[tokio::test]
async fn bad_requests_close_the_connection() {
    let broker = test_broker().await;
    // Old Produce versions (magic 0/1 message sets) are advertised but refused.
    let old = frame(ApiKey::Produce, 3, 1, &request_for(ApiKey::Produce, 3));
    let mut patched = old.to_vec();
    patched[2..4].copy_from_slice(&2i16.to_be_bytes());
    assert!(matches!(
        dispatch(&broker, Bytes::from(patched)).await,
        Err(DispatchError::UnsupportedVersion { .. })
    ));
    // Unknown API key.
    let mut unknown = old.to_vec();
    unknown[0..2].copy_from_slice(&999i16.to_be_bytes());
    assert!(matches!(
        dispatch(&broker, Bytes::from(unknown)).await,
        Err(DispatchError::UnknownApi(999))
    ));
    // Truncated body.
    let cut = old.slice(..old.len() - 5);
    assert!(matches!(
        dispatch(&broker, cut).await,
        Err(DispatchError::BadBody { .. })
    ));
    // Too short for a header.
    assert!(dispatch(&broker, Bytes::from_static(b"\x00\x01"))
        .await
        .is_err());
}

/// Leader epochs are Raft terms: OffsetForLeaderEpoch ends the current epoch at the high
/// watermark (for a consumer), knows no epoch older than the log, and a client's epoch
/// that differs from the leader's is fenced (older) or unknown (newer) on every read.
#[tokio::test]
async fn leader_epochs_are_raft_terms() {
    let broker = test_broker().await;
    let request = request_for(ApiKey::Produce, 9);
    let pending = dispatch(&broker, frame(ApiKey::Produce, 9, 1, &request))
        .await
        .unwrap();
    let Some(ResponseKind::Produce(produced)) = resolve(pending.reply).await else {
        panic!("not a produce response")
    };
    let base_offset = produced.responses[0].partition_responses[0].base_offset;
    let term = broker.node.replica("existing", 0).unwrap().leader_epoch();
    assert!(term >= 1);
    let ask = |leader_epoch, current| {
        let broker = broker.clone();
        async move {
            let request = offset_for_leader_epoch_request(leader_epoch, current);
            let pending = dispatch(&broker, frame(ApiKey::OffsetForLeaderEpoch, 4, 7, &request))
                .await
                .unwrap();
            let Some(ResponseKind::OffsetForLeaderEpoch(r)) = resolve(pending.reply).await else {
                panic!("not an OffsetForLeaderEpoch response")
            };
            let p = &r.topics[0].partitions[0];
            (p.error_code, p.leader_epoch, p.end_offset)
        }
    };
    assert_eq!(ask(term, -1).await, (0, term, base_offset + 1));
    assert_eq!(ask(term, term).await, (0, term, base_offset + 1));
    assert_eq!(ask(0, -1).await, (0, -1, -1), "no epoch older than the log");
    assert_eq!(
        ask(term + 1, -1).await,
        (0, -1, -1),
        "no epoch newer than the leader's"
    );
    let fenced = kafka_protocol::ResponseError::FencedLeaderEpoch.code();
    let unknown = kafka_protocol::ResponseError::UnknownLeaderEpoch.code();
    assert_eq!(ask(term, term - 1).await.0, fenced);
    assert_eq!(ask(term, term + 1).await.0, unknown);

    for (current, expected) in [(term - 1, fenced), (term + 1, unknown), (term, 0)] {
        use fetch_request::*;
        let partitions = vec![FetchPartition::default()
            .with_partition(0)
            .with_current_leader_epoch(current)
            .with_fetch_offset(base_offset)
            .with_partition_max_bytes(1 << 20)];
        let request = RequestKind::Fetch(
            FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_bytes(1 << 20)
                .with_topics(vec![FetchTopic::default()
                    .with_topic(TopicName(s("existing")))
                    .with_partitions(partitions)]),
        );
        let pending = dispatch(&broker, frame(ApiKey::Fetch, 12, 8, &request))
            .await
            .unwrap();
        let Some(ResponseKind::Fetch(r)) = resolve(pending.reply).await else {
            panic!("not a fetch response")
        };
        assert_eq!(
            r.responses[0].partitions[0].error_code, expected,
            "fetch with leader epoch {current} (leader's {term})"
        );
    }
}

/// max.message.bytes is the topic's (from its config in the metadata log, applied to the
/// leader's log): a larger batch gets MESSAGE_TOO_LARGE, and nothing of it is stored.
#[tokio::test]
async fn batches_above_the_topics_max_message_bytes_are_refused() {
    let broker = test_broker().await;
    let small = crate::metadata::CreateTopic {
        name: "small".into(),
        partitions: Some(1),
        configs: [("max.message.bytes".to_string(), "1000".to_string())].into(),
        ..Default::default()
    };
    broker.create_topic(small, false).await.unwrap();
    let produce = |value: Vec<u8>| {
        let broker = broker.clone();
        async move {
            use produce_request::*;
            let batch = encode_batch(
                &[(None, Some(Bytes::from(value)))],
                1_000,
                Compression::None,
            )
            .unwrap();
            let request = RequestKind::Produce(
                ProduceRequest::default()
                    .with_acks(-1)
                    .with_timeout_ms(5000)
                    .with_topic_data(vec![TopicProduceData::default()
                        .with_name(TopicName(s("small")))
                        .with_partition_data(vec![PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(batch))])]),
            );
            let pending = dispatch(&broker, frame(ApiKey::Produce, 9, 3, &request))
                .await
                .unwrap();
            let Some(ResponseKind::Produce(r)) = resolve(pending.reply).await else {
                panic!("not a produce response")
            };
            r.responses[0].partition_responses[0].error_code
        }
    };
    assert_eq!(
        produce(vec![b'x'; 2000]).await,
        kafka_protocol::ResponseError::MessageTooLarge.code()
    );
    assert_eq!(produce(vec![b'x'; 100]).await, 0);
}

/// OffsetCommit through the wire, with the group coordinator running: a partition that
/// does not exist is refused, the others are committed and read back by OffsetFetch.
/// `__consumer_offsets` can then be neither deleted nor given more partitions.
#[tokio::test]
async fn offsets_of_existing_partitions_are_committed_and_fetched_and_the_internal_topic_stays() {
    use kafka_protocol::ResponseError;
    let topic = |name: &str| TopicName(s(name));
    use offset_commit_request::*;
    let broker = test_broker().await;
    broker.start_background_tasks();
    let partition = |index: i32, offset: i64| {
        OffsetCommitRequestPartition::default()
            .with_partition_index(index)
            .with_committed_offset(offset)
    };
    let request = RequestKind::OffsetCommit(
        OffsetCommitRequest::default()
            .with_group_id(s("g1").into())
            .with_generation_id_or_member_epoch(-1)
            .with_topics(vec![
                OffsetCommitRequestTopic::default()
                    .with_name(topic("existing"))
                    .with_partitions(vec![partition(1, 7), partition(9, 3)]),
                OffsetCommitRequestTopic::default()
                    .with_name(topic("missing"))
                    .with_partitions(vec![partition(0, 5)]),
            ]),
    );
    let mut answered = None;
    for attempt in 0..500 {
        // The first attempts create __consumer_offsets and wait for its coordinator.
        let _ = broker.groups.find_coordinator("g1").await;
        let pending = dispatch(&broker, frame(ApiKey::OffsetCommit, 8, attempt, &request))
            .await
            .unwrap();
        let Some(ResponseKind::OffsetCommit(response)) = resolve(pending.reply).await else {
            panic!("not an OffsetCommit response")
        };
        let codes: Vec<i16> = response
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect();
        let loading = [
            ResponseError::NotCoordinator.code(),
            ResponseError::CoordinatorLoadInProgress.code(),
        ];
        if !loading.contains(&codes[0]) {
            answered = Some(codes);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let unknown = ResponseError::UnknownTopicOrPartition.code();
    assert_eq!(answered, Some(vec![0, unknown, unknown]));
    let key = [("existing".to_string(), 1)];
    let fetched = broker.groups.fetch_offsets("g1", Some(&key)).unwrap();
    assert_eq!(fetched[0].1.as_ref().map(|c| c.offset), Some(7));
    // The internal topic can be neither deleted nor grown.
    let delete = RequestKind::DeleteTopics(
        DeleteTopicsRequest::default()
            .with_topic_names(vec![topic("__consumer_offsets")])
            .with_timeout_ms(1000),
    );
    let pending = dispatch(&broker, frame(ApiKey::DeleteTopics, 4, 900, &delete))
        .await
        .unwrap();
    let Some(ResponseKind::DeleteTopics(response)) = resolve(pending.reply).await else {
        panic!("not a DeleteTopics response")
    };
    assert_eq!(
        response.responses[0].error_code,
        ResponseError::InvalidRequest.code()
    );
    let grow = RequestKind::CreatePartitions(
        CreatePartitionsRequest::default()
            .with_topics(vec![
                create_partitions_request::CreatePartitionsTopic::default()
                    .with_name(topic("__consumer_offsets"))
                    .with_count(99)
                    .with_assignments(None),
            ])
            .with_timeout_ms(1000),
    );
    let pending = dispatch(&broker, frame(ApiKey::CreatePartitions, 3, 901, &grow))
        .await
        .unwrap();
    let Some(ResponseKind::CreatePartitions(response)) = resolve(pending.reply).await else {
        panic!("not a CreatePartitions response")
    };
    assert_eq!(
        response.results[0].error_code,
        ResponseError::InvalidRequest.code()
    );
    assert!(broker.topic("__consumer_offsets").is_some());
}
