//! Writes the seed corpus in fuzz/seeds/<target>/ (small, valid inputs that start each
//! target deep in the format). Run from the repository root:
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --example make_seeds
//!
//! Regenerating rewrites the same files; seeds are committed, the corpus is not.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};
use kafka_protocol::records::Compression;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use strand::client::encode_records;
use strand::log::batch::validate_produce_records;
use strand::log::{LogConfig, PartitionLog};
use strand::protocol::versions::{PRODUCE_MIN_HANDLED_VERSION, SUPPORTED};
use strand::storage::{read_to_vec, MemoryStorage};

const CODECS: [(Compression, &str); 5] = [
    (Compression::None, "none"),
    (Compression::Gzip, "gzip"),
    (Compression::Snappy, "snappy"),
    (Compression::Lz4, "lz4"),
    (Compression::Zstd, "zstd"),
];

fn seeds_dir(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn put(target: &str, name: &str, bytes: &[u8]) {
    std::fs::write(seeds_dir(target).join(name), bytes).unwrap();
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn batch(count: usize, ts: i64, compression: Compression) -> Bytes {
    let records: Vec<_> = (0..count)
        .map(|i| {
            (
                Some(Bytes::from(format!("k{i}"))),
                Some(Bytes::from(format!("value-{i}"))),
                ts + i as i64,
            )
        })
        .collect();
    encode_records(&records, compression).unwrap()
}

fn record_batch() {
    for (c, name) in CODECS {
        let mut input = vec![0u8];
        input.extend_from_slice(&batch(3, 1_000, c));
        put("record_batch", &format!("{name}-3"), &input);
    }
    let mut two = vec![0u8];
    two.extend_from_slice(&batch(1, 5, Compression::None));
    two.extend_from_slice(&batch(2, 7, Compression::Lz4));
    put("record_batch", "two-batches", &two);
    // Mode 1: CRCs are rewritten by the target, so a stale CRC here still gets through.
    let mut stale = vec![1u8];
    let mut b = batch(2, 9, Compression::Snappy).to_vec();
    b[17] ^= 0xff;
    stale.extend_from_slice(&b);
    put("record_batch", "snappy-fix-crc", &stale);
}

fn segment_files(storage: &MemoryStorage, dir: &Path, base: i64) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let stem = format!("{base:020}");
    let read = |suffix: &str| {
        read_to_vec(storage, &dir.join(format!("{stem}{suffix}"))).unwrap_or_default()
    };
    (read(".log"), read(".index"), read(".timeindex"))
}

fn segment_recovery() {
    let storage = MemoryStorage::new();
    let dir = Path::new("/data/t-0");
    let config = LogConfig {
        index_interval_bytes: 64,
        segment_bytes: 700,
        ..LogConfig::default()
    };
    let (mut log, _) = PartitionLog::open(Arc::new(storage.clone()), dir, config, 0).unwrap();
    for i in 0..8 {
        let b = batch(1 + i % 3, 1_000 + i as i64 * 10, CODECS[i % 5].0);
        let batches = validate_produce_records(&b, 1 << 20).unwrap();
        log.append(&batches, 0, 1_000).unwrap();
    }
    log.sync_all().unwrap();
    let bases = log.segment_base_offsets();
    drop(log);
    let files: Vec<_> = bases
        .iter()
        .map(|b| (*b, segment_files(&storage, dir, *b)))
        .collect();
    let interval = 64u16.to_be_bytes();
    // One segment, no index files (full scan either way).
    let (base, (log0, index0, time0)) = &files[0];
    let mut one = vec![0u8, interval[0], interval[1]];
    one.extend_from_slice(&(*base as u32).to_be_bytes());
    one.extend_from_slice(log0);
    put("segment_recovery", "one-segment", &one);
    // The same with its index files (trusted with recovery point i64::MAX).
    let mut indexed = vec![8u8, interval[0], interval[1]];
    indexed.extend_from_slice(&(*base as u32).to_be_bytes());
    indexed.extend_from_slice(&(index0.len() as u16).to_be_bytes());
    indexed.extend_from_slice(index0);
    indexed.extend_from_slice(&(time0.len() as u16).to_be_bytes());
    indexed.extend_from_slice(time0);
    indexed.extend_from_slice(log0);
    put("segment_recovery", "one-segment-indexed", &indexed);
    // Up to three segments with their indexes.
    let n = files.len().min(3);
    let mut many = vec![8u8 | (((n - 1) as u8) << 1), interval[0], interval[1]];
    for (i, (base, (log, index, time))) in files.iter().take(n).enumerate() {
        many.extend_from_slice(&(*base as u32).to_be_bytes());
        many.extend_from_slice(&(index.len() as u16).to_be_bytes());
        many.extend_from_slice(index);
        many.extend_from_slice(&(time.len() as u16).to_be_bytes());
        many.extend_from_slice(time);
        if i + 1 < n {
            many.extend_from_slice(&(log.len() as u32).to_be_bytes());
        }
        many.extend_from_slice(log);
    }
    put("segment_recovery", "segments-indexed", &many);
    // A torn tail: the last batch cut in half.
    let mut torn = one.clone();
    torn.truncate(torn.len() - 20);
    put("segment_recovery", "torn-tail", &torn);
}

fn config() {
    put(
        "config",
        "full",
        b"\x00node-id = 3\nlisten = \"127.0.0.1:9092\"\nadvertised-listener = \"broker.example:19092\"\n\
data-dir = \"/var/lib/strand\"\nlog-level = \"info,strand=debug\"\nauto-create-topics-enable = false\n\
num-partitions = 3\nsocket-request-max-bytes = 1048576\nmax-in-flight-requests-per-connection = 8\n\
max-connections = 100\nretention-check-interval-ms = 1000\n\
recovery-checkpoint-interval-ms = 2000\n[topic-defaults]\n\"retention.ms\" = \"3600000\"\n\
\"segment.bytes\" = \"1048576\"\n\"cleanup.policy\" = \"delete\"\n",
    );
    put("config", "ipv6", b"\x00listen = \"[::1]:9093\"\n");
    put("config", "empty", b"\x00");
    put(
        "config",
        "topic",
        b"\x01segment.bytes=1024\nsegment.ms=60000\nretention.ms=-1\nretention.bytes=100000\n\
index.interval.bytes=4096\nmax.message.bytes=1000000\ncleanup.policy=delete\n\
message.timestamp.type=CreateTime\nmin.insync.replicas=1\ncompression.type=producer\n",
    );
    put(
        "config",
        "topic-bad",
        b"\x01retention.ms=-2\nno.such=1\nsegment.bytes= 77 \n",
    );
}

fn min_version(key: ApiKey, min: i16) -> i16 {
    if key == ApiKey::Produce {
        PRODUCE_MIN_HANDLED_VERSION
    } else {
        min
    }
}

/// A request with some content, using only fields that exist in `version`.
fn request_for(key: ApiKey, version: i16) -> RequestKind {
    let topic = |name: &str| TopicName(s(name));
    match key {
        ApiKey::Produce => {
            use produce_request::*;
            let data = vec![
                PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(batch(2, 1_000, Compression::None))),
                PartitionProduceData::default()
                    .with_index(1)
                    .with_records(Some(batch(1, 1_000, Compression::Zstd))),
            ];
            RequestKind::Produce(
                ProduceRequest::default()
                    .with_acks(if version % 2 == 0 { -1 } else { 1 })
                    .with_timeout_ms(1000)
                    .with_topic_data(vec![TopicProduceData::default()
                        .with_name(topic("existing"))
                        .with_partition_data(data)]),
            )
        }
        ApiKey::Fetch => {
            use fetch_request::*;
            let mut p = FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20);
            if version >= 9 {
                p = p.with_current_leader_epoch(-1);
            }
            if version >= 5 {
                p = p.with_log_start_offset(-1);
            }
            let mut r = FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(0)
                .with_min_bytes(1)
                .with_max_bytes(1 << 20)
                .with_topics(vec![FetchTopic::default()
                    .with_topic(topic("existing"))
                    .with_partitions(vec![p])]);
            if version >= 7 {
                r = r.with_session_epoch(-1);
            }
            RequestKind::Fetch(r)
        }
        ApiKey::ListOffsets => {
            use list_offsets_request::*;
            let p = ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(-1);
            RequestKind::ListOffsets(
                ListOffsetsRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_topics(vec![ListOffsetsTopic::default()
                        .with_name(topic("existing"))
                        .with_partitions(vec![p])]),
            )
        }
        ApiKey::Metadata => {
            use metadata_request::*;
            let topics = ["existing", "auto"]
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
                r.with_coordinator_keys(vec![s("g")])
            } else {
                r.with_key(s("g"))
            })
        }
        ApiKey::CreateTopics => {
            use create_topics_request::*;
            let config = CreatableTopicConfig::default()
                .with_name(s("retention.ms"))
                .with_value(Some(s("1000")));
            RequestKind::CreateTopics(
                CreateTopicsRequest::default()
                    .with_timeout_ms(1000)
                    .with_topics(vec![CreatableTopic::default()
                        .with_name(topic("new"))
                        .with_num_partitions(2)
                        .with_replication_factor(1)
                        .with_configs(vec![config])]),
            )
        }
        ApiKey::DeleteTopics => {
            use delete_topics_request::*;
            let r = DeleteTopicsRequest::default().with_timeout_ms(1000);
            RequestKind::DeleteTopics(if version >= 6 {
                r.with_topics(vec![
                    DeleteTopicState::default().with_name(Some(topic("existing")))
                ])
            } else {
                r.with_topic_names(vec![topic("existing")])
            })
        }
        ApiKey::DescribeConfigs => {
            use describe_configs_request::*;
            RequestKind::DescribeConfigs(DescribeConfigsRequest::default().with_resources(vec![
                    DescribeConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(s("existing")),
                    DescribeConfigsResource::default()
                        .with_resource_type(4)
                        .with_resource_name(s("1")),
                ]))
        }
        ApiKey::AlterConfigs => {
            use alter_configs_request::*;
            let configs = vec![AlterableConfig::default()
                .with_name(s("retention.ms"))
                .with_value(Some(s("5000")))];
            RequestKind::AlterConfigs(AlterConfigsRequest::default().with_resources(
                vec![AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s("existing"))
                .with_configs(configs)],
            ))
        }
        ApiKey::IncrementalAlterConfigs => {
            use incremental_alter_configs_request::*;
            let configs = vec![AlterableConfig::default()
                .with_name(s("segment.bytes"))
                .with_config_operation(0)
                .with_value(Some(s("100000")))];
            RequestKind::IncrementalAlterConfigs(
                IncrementalAlterConfigsRequest::default().with_resources(vec![
                    AlterConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(s("existing"))
                        .with_configs(configs),
                ]),
            )
        }
        ApiKey::CreatePartitions => {
            use create_partitions_request::*;
            RequestKind::CreatePartitions(
                CreatePartitionsRequest::default()
                    .with_timeout_ms(1000)
                    .with_topics(vec![CreatePartitionsTopic::default()
                        .with_name(topic("existing"))
                        .with_count(3)]),
            )
        }
        ApiKey::DescribeCluster => RequestKind::DescribeCluster(DescribeClusterRequest::default()),
        ApiKey::ApiVersions => RequestKind::ApiVersions(
            ApiVersionsRequest::default()
                .with_client_software_name(s("seed"))
                .with_client_software_version(s("1")),
        ),
        other => panic!("no seed request for {other:?}"),
    }
}

fn frame(key: ApiKey, version: i16, correlation_id: i32, request: &RequestKind) -> Vec<u8> {
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(s("seed")));
    let mut buf = BytesMut::new();
    header
        .encode(&mut buf, key.request_header_version(version))
        .unwrap();
    request.encode(&mut buf, version).unwrap();
    let mut out = (buf.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&buf);
    out
}

fn default_response(key: ApiKey) -> ResponseKind {
    match key {
        ApiKey::Produce => ResponseKind::Produce(Default::default()),
        ApiKey::Fetch => ResponseKind::Fetch(Default::default()),
        ApiKey::ListOffsets => ResponseKind::ListOffsets(Default::default()),
        ApiKey::Metadata => ResponseKind::Metadata(Default::default()),
        ApiKey::FindCoordinator => ResponseKind::FindCoordinator(Default::default()),
        ApiKey::ApiVersions => ResponseKind::ApiVersions(Default::default()),
        ApiKey::CreateTopics => ResponseKind::CreateTopics(Default::default()),
        ApiKey::DeleteTopics => ResponseKind::DeleteTopics(Default::default()),
        ApiKey::DescribeConfigs => ResponseKind::DescribeConfigs(Default::default()),
        ApiKey::AlterConfigs => ResponseKind::AlterConfigs(Default::default()),
        ApiKey::CreatePartitions => ResponseKind::CreatePartitions(Default::default()),
        ApiKey::IncrementalAlterConfigs => {
            ResponseKind::IncrementalAlterConfigs(Default::default())
        }
        ApiKey::DescribeCluster => ResponseKind::DescribeCluster(Default::default()),
        other => panic!("no default response for {other:?}"),
    }
}

fn request_and_roundtrip() {
    for (index, supported) in SUPPORTED.iter().enumerate() {
        let key = supported.key;
        let min = min_version(key, supported.min);
        for version in min..=supported.max {
            let name = format!("{key:?}-v{version}");
            let request = request_for(key, version);
            let framed = frame(key, version, 1000 + version as i32, &request);
            put("request", &name, &framed);
            let selector = [index as u8, (version - min) as u8];
            let mut body = selector.to_vec();
            body.push(0);
            body.extend_from_slice(&framed[4..][request_header_len(key, version)..]);
            put("roundtrip", &format!("{name}-request"), &body);
            let mut response = BytesMut::new();
            default_response(key)
                .encode(&mut response, version)
                .unwrap();
            let mut resp = selector.to_vec();
            resp.push(1);
            resp.extend_from_slice(&response);
            put("roundtrip", &format!("{name}-response"), &resp);
            let mut header = selector.to_vec();
            header.push(2);
            header.extend_from_slice(&framed[4..][..request_header_len(key, version)]);
            put("roundtrip", &format!("{name}-request-header"), &header);
        }
    }
    // A connection: produce, then fetch it back, then list offsets.
    let mut conversation = frame(ApiKey::Produce, 9, 1, &request_for(ApiKey::Produce, 9));
    conversation.extend(frame(ApiKey::Fetch, 12, 2, &request_for(ApiKey::Fetch, 12)));
    conversation.extend(frame(
        ApiKey::ListOffsets,
        7,
        3,
        &request_for(ApiKey::ListOffsets, 7),
    ));
    put("request", "produce-fetch-list", &conversation);
    // A long poll (max_wait 500 ms, min_bytes 1 on an empty partition): time is paused.
    let long_poll = match request_for(ApiKey::Fetch, 11) {
        RequestKind::Fetch(r) => RequestKind::Fetch(r.with_max_wait_ms(500)),
        _ => unreachable!(),
    };
    put(
        "request",
        "fetch-long-poll",
        &frame(ApiKey::Fetch, 11, 4, &long_poll),
    );
}

fn request_header_len(key: ApiKey, version: i16) -> usize {
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(1000 + version as i32)
        .with_client_id(Some(s("seed")));
    let mut buf = BytesMut::new();
    header
        .encode(&mut buf, key.request_header_version(version))
        .unwrap();
    buf.len()
}

fn partition_log() {
    // `arbitrary` input: any bytes are a valid sequence of operations.
    put("partition_log", "ops-a", &(0u8..=255).collect::<Vec<_>>());
    put(
        "partition_log",
        "ops-b",
        &(0u8..=255).rev().cycle().take(600).collect::<Vec<_>>(),
    );
    put("partition_log", "ops-c", &[0u8; 64]);
}

/// `interbroker`: real frames (`encode_frame` output) recorded from the target's own
/// cluster right after its setup, so that they fit the state every run starts in: the
/// appends and responses of one more proposal per group, heartbeats, and the vote
/// requests and answers of broker 3 campaigning for `t-0`. Each seed is raw-frame
/// operations (tag 0, receiving broker - 1, u16 length, the frame body); `sequence`
/// puts several of them between deliveries and ticks.
fn interbroker() {
    use raft::eraftpb::MessageType;
    use std::collections::BTreeSet;
    use strand::replication::transport::decode_frame;
    use strand_fuzz::interbroker::{batch, Cluster, GROUPS};

    let mut cluster = Cluster::start(false);
    cluster.recorded = Some(Vec::new());
    for (leader, group) in [(1u64, GROUPS[0]), (2, GROUPS[1])] {
        cluster
            .drivers
            .get_mut(&leader)
            .unwrap()
            .propose(group, batch("seed", 2).to_vec())
            .unwrap();
    }
    cluster.settle();
    for _ in 0..3 {
        cluster.tick();
        cluster.settle();
    }
    cluster
        .drivers
        .get_mut(&3)
        .unwrap()
        .campaign(GROUPS[0])
        .unwrap();
    cluster.settle();
    let recorded = cluster.recorded.take().unwrap();
    let op = |to: u64, frame: &[u8]| {
        let mut out = vec![0u8, (to - 1) as u8];
        out.extend_from_slice(&frame[..4][2..]);
        out.extend_from_slice(&frame[4..]);
        out
    };
    let mut seen = BTreeSet::new();
    let mut sequence = Vec::new();
    for (to, frame) in &recorded {
        assert!(frame.len() - 4 <= u16::MAX as usize);
        let (_, messages) = decode_frame(&frame[4..]).unwrap();
        let kinds: Vec<MessageType> = messages.iter().map(|m| m.message.get_msg_type()).collect();
        let with_entries = messages.iter().any(|m| !m.message.entries.is_empty());
        let name = format!(
            "{}{}",
            format!("{:?}", kinds[0])
                .trim_start_matches("Msg")
                .to_lowercase(),
            if with_entries { "-entries" } else { "" }
        );
        if seen.insert(name.clone()) {
            put("interbroker", &name, &op(*to, frame));
            sequence.extend(op(*to, frame));
            sequence.extend([7, 4, 8]);
        }
    }
    put("interbroker", "sequence", &sequence);
}

fn main() {
    interbroker();
    record_batch();
    segment_recovery();
    config();
    request_and_roundtrip();
    partition_log();
    println!("seeds written under {}", seeds_dir("").display());
}
