//! Inputs the fuzzers (fuzz/, see docs/fuzzing.md) found, replayed through the same code
//! path as the target that found them, asserting the fixed behaviour.
//!
//! Each file under tests/fuzz-regressions/<target>/ is the exact input libFuzzer wrote
//! (layouts are documented at the top of each fuzz/fuzz_targets/<target>.rs). To add
//! one: copy the artifact there with a descriptive name; every file of a directory is
//! replayed by that directory's test, and a specific test may assert more about it.

use bytes::Bytes;
use std::collections::BTreeMap;

/// The broker binary's allocator (`strand::large_alloc`), so that these tests replay
/// hostile inputs the way the broker process meets them.
#[global_allocator]
static ALLOCATOR: strand::large_alloc::LazyLargeAllocator = strand::large_alloc::LazyLargeAllocator;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use strand::log::batch::{validate_produce_records, BatchError, MAX_DECOMPRESSED_BATCH_BYTES};
use strand::log::config::{describe, effective_config, validate_topic_config};
use strand::log::{LogConfig, PartitionLog};
use strand::storage::{read_to_vec, MemoryStorage, Storage};

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-regressions")
        .join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no regression inputs in {}", dir.display());
    out
}

fn input(target: &str, name: &str) -> Vec<u8> {
    inputs(target)
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no input {target}/{name}"))
        .1
}

// ---- the harnesses' input preparation (fuzz/src/lib.rs), repeated here ----

fn crc_of(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[21..])
}

fn batch_size(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < 61 || bytes[16] != 2 {
        return None;
    }
    let len = i32::from_be_bytes(bytes[8..12].try_into().unwrap());
    (len >= 49).then_some(12 + len as usize)
}

fn fix_crcs(bytes: &mut [u8]) {
    let mut position = 0;
    while let Some(size) = batch_size(&bytes[position..]) {
        if size > bytes.len() - position {
            return;
        }
        let batch = &mut bytes[position..position + size];
        let crc = crc_of(batch);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
        position += size;
    }
}

fn make_one_batch(bytes: &mut Vec<u8>) {
    if bytes.len() < 61 {
        bytes.resize(61, 0);
    }
    let len = (bytes.len() - 12) as i32;
    bytes[8..12].copy_from_slice(&len.to_be_bytes());
    bytes[16] = 2;
    let crc = crc_of(bytes);
    bytes[17..21].copy_from_slice(&crc.to_be_bytes());
}

// ---- record_batch ----

/// fuzz/fuzz_targets/record_batch.rs: `[mode][records]`.
fn record_batch(data: &[u8]) -> Result<usize, BatchError> {
    let (&mode, rest) = data.split_first().unwrap();
    let mut records = rest.to_vec();
    if mode & 2 != 0 {
        make_one_batch(&mut records);
    } else if mode & 1 != 0 {
        fix_crcs(&mut records);
    }
    let max = match (mode >> 2) & 3 {
        0 => 1_048_588,
        1 => 16 << 20,
        2 => 200,
        _ => usize::MAX,
    };
    validate_produce_records(&Bytes::from(records), max).map(|b| b.len())
}

/// A record claiming ~2^31 headers made kafka-protocol reserve 4.8 GB up front
/// (`IndexMap::with_capacity`), from a 193-byte produce. Now refused before decoding.
#[test]
fn record_header_count_bomb_is_refused() {
    let err = record_batch(&input("record_batch", "snappy-record-header-count-bomb")).unwrap_err();
    assert!(matches!(err, BatchError::InvalidRecords(_)), "{err:?}");
}

/// Hand-made: a raw snappy stream whose length header claims 4 GiB (the decompressor
/// allocates the claimed length before reading a byte).
#[test]
fn snappy_length_bomb_is_refused() {
    let err = record_batch(&input("record_batch", "snappy-raw-length-bomb")).unwrap_err();
    assert!(err.to_string().contains("decompress"), "{err}");
}

#[test]
fn every_record_batch_regression_replays() {
    for (name, data) in inputs("record_batch") {
        assert!(record_batch(&data).is_err(), "{name} is accepted");
    }
}

/// The bound is a named constant: one byte over it is refused for every stream codec,
/// and a batch well under it still passes.
#[test]
fn decompressed_size_is_bounded_for_every_codec() {
    use kafka_protocol::records::Compression;
    for compression in [
        Compression::Gzip,
        Compression::Lz4,
        Compression::Zstd,
        Compression::Snappy,
    ] {
        let big = vec![(
            None,
            Some(Bytes::from(vec![0u8; MAX_DECOMPRESSED_BATCH_BYTES])),
            0,
        )];
        let batch = strand::client::encode_records(&big, compression).unwrap();
        assert!(
            batch.len() < MAX_DECOMPRESSED_BATCH_BYTES / 8,
            "{compression:?} compresses"
        );
        let err = validate_produce_records(&batch, usize::MAX).unwrap_err();
        assert!(
            err.to_string().contains("decompress"),
            "{compression:?}: {err}"
        );
        let ok = vec![(None, Some(Bytes::from(vec![7u8; 1 << 20])), 0)];
        let batch = strand::client::encode_records(&ok, compression).unwrap();
        validate_produce_records(&batch, usize::MAX).unwrap();
    }
}

// ---- segment_recovery ----

const DIR: &str = "/data/t-0";

struct Segments {
    files: BTreeMap<i64, (Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>)>,
    interval: u64,
}

/// fuzz/fuzz_targets/segment_recovery.rs's layout.
fn parse_segments(data: &[u8]) -> Segments {
    let mut rest = data;
    let mut take = |n: usize| {
        let n = n.min(rest.len());
        let (head, tail) = rest.split_at(n);
        rest = tail;
        head.to_vec()
    };
    let num = |b: Vec<u8>| b.iter().fold(0u64, |acc, x| acc << 8 | *x as u64);
    let flags = num(take(1)) as u8;
    let interval = num(take(2));
    let count = 1 + ((flags >> 1) & 3).min(2) as usize;
    let mut files = BTreeMap::new();
    for i in 0..count {
        let base = num(take(4)) as i64;
        let (index, time) = if flags & 8 != 0 {
            let n = num(take(2)) as usize;
            let index = take(n);
            let n = num(take(2)) as usize;
            (Some(index), Some(take(n)))
        } else {
            (None, None)
        };
        let mut log = if i + 1 == count {
            take(usize::MAX)
        } else {
            let n = num(take(4)) as usize;
            take(n)
        };
        if flags & 1 != 0 {
            fix_crcs(&mut log);
        }
        files.insert(base, (log, index, time));
    }
    Segments { files, interval }
}

fn open_segments(s: &Segments, recovery_point: i64) -> (MemoryStorage, PartitionLog) {
    let storage = MemoryStorage::new();
    let dir = Path::new(DIR);
    storage.create_dir_all(dir).unwrap();
    let write = |name: String, bytes: &[u8]| {
        let mut f = storage.open(&dir.join(name), true).unwrap();
        f.append(bytes).unwrap();
        f.sync().unwrap();
    };
    for (base, (log, index, time)) in &s.files {
        write(format!("{base:020}.log"), log);
        if let Some(i) = index {
            write(format!("{base:020}.index"), i);
        }
        if let Some(t) = time {
            write(format!("{base:020}.timeindex"), t);
        }
    }
    let config = LogConfig {
        index_interval_bytes: s.interval,
        ..LogConfig::default()
    };
    let (log, _) =
        PartitionLog::open(Arc::new(storage.clone()), dir, config, recovery_point).unwrap();
    (storage, log)
}

/// Every read returns whole CRC-valid batches whose offsets only go up.
fn check_reads(log: &PartitionLog) {
    let mut offset = log.log_start_offset();
    for _ in 0..64 {
        let Ok(bytes) = log.read(offset, 1 << 20, i64::MAX, true) else {
            break;
        };
        if bytes.is_empty() {
            break;
        }
        let mut position = 0;
        let mut next = offset;
        while position < bytes.len() {
            let rest = &bytes[position..];
            let size = batch_size(rest).expect("a read returned a torn batch");
            let stored = u32::from_be_bytes(rest[17..21].try_into().unwrap());
            assert_eq!(
                crc_of(&rest[..size]),
                stored,
                "a read returned a corrupt batch"
            );
            let base = i64::from_be_bytes(rest[..8].try_into().unwrap());
            let delta = i32::from_be_bytes(rest[23..27].try_into().unwrap()) as i64;
            if position > 0 {
                assert!(base >= next, "offsets go backwards within one read");
            }
            next = base + delta + 1;
            position += size;
        }
        offset = next;
    }
}

#[test]
fn every_segment_recovery_regression_replays() {
    for (name, data) in inputs("segment_recovery") {
        let s = parse_segments(&data);
        for recovery_point in [0, i64::MAX] {
            let (storage, log) = open_segments(&s, recovery_point);
            for path in storage.file_paths() {
                let file = path.file_name().unwrap().to_string_lossy().into_owned();
                if let Some(stem) = file.strip_suffix(".log") {
                    let now = read_to_vec(&storage, &path).unwrap();
                    let original = &s.files[&stem.parse::<i64>().unwrap()].0;
                    assert!(
                        original.starts_with(&now),
                        "{name}: kept bytes never written"
                    );
                }
            }
            check_reads(&log);
            let _ = log.offset_for_timestamp(0);
            let _ = log.max_timestamp_offset();
        }
    }
}

/// A batch whose baseOffset (outside the CRC) was 3314649325744685059 in a segment based
/// at 0 was kept: its offsets do not fit the u32 relative offsets of the index.
/// Recovery now cuts the segment before it.
#[test]
fn recovery_cuts_a_batch_whose_offsets_do_not_fit_the_segment() {
    let s = parse_segments(&input("segment_recovery", "offset-beyond-u32-relative"));
    let (storage, log) = open_segments(&s, 0);
    let kept = read_to_vec(&storage, &Path::new(DIR).join(format!("{:020}.log", 0))).unwrap();
    assert_eq!(
        kept.len(),
        184,
        "the two batches before the bad one are kept"
    );
    assert_eq!(log.log_end_offset(), 3);
}

/// With trusted indexes (clean shutdown) the unchecked part of a segment held batches
/// whose offsets go backwards; a read served them in one response.
#[test]
fn trusted_segment_reads_never_go_backwards() {
    let s = parse_segments(&input("segment_recovery", "trusted-offsets-go-backwards"));
    let (_, log) = open_segments(&s, i64::MAX);
    check_reads(&log);
}

/// offset_for_timestamp decoded a stored (CRC-valid) batch claiming ~2^31 records and
/// reserved 12 GB for them. Decoding is now bounded like produce validation.
#[test]
fn offset_for_timestamp_refuses_an_absurd_record_count() {
    let s = parse_segments(&input(
        "segment_recovery",
        "offset-for-timestamp-record-count-oom",
    ));
    for recovery_point in [0, i64::MAX] {
        let (_, log) = open_segments(&s, recovery_point);
        let _ = log.offset_for_timestamp(0);
    }
}

// ---- config ----

/// fuzz/fuzz_targets/config.rs, topic mode: every accepted value is what describe shows.
fn check_topic_lines(text: &str) {
    let defaults = LogConfig::default();
    for line in text.lines().take(16) {
        let (name, value) = line.split_once('=').unwrap_or((line, ""));
        if validate_topic_config(name, value).is_err() {
            continue;
        }
        let one = BTreeMap::from([(name.to_string(), value.to_string())]);
        let config = effective_config(&defaults, &one).unwrap();
        let shown = describe(&config, name).unwrap();
        match value.trim().parse::<i64>() {
            Ok(n) => assert_eq!(shown.parse::<i64>().ok(), Some(n), "{name}={value:?}"),
            // A list or a decimal has one canonical spelling: it must mean the same.
            Err(_) if matches!(name, "cleanup.policy" | "min.cleanable.dirty.ratio") => {
                let again = BTreeMap::from([(name.to_string(), shown.clone())]);
                assert_eq!(
                    effective_config(&defaults, &again).unwrap(),
                    config,
                    "{name}={value:?}"
                );
            }
            Err(_) => assert_eq!(shown, value, "{name}={value:?}"),
        }
    }
}

#[test]
fn every_config_regression_replays() {
    for (_, data) in inputs("config") {
        let (&mode, rest) = data.split_first().unwrap();
        let text = String::from_utf8_lossy(rest);
        if mode % 2 == 1 {
            check_topic_lines(&text);
        } else {
            let _ = strand::config::BrokerConfig::build(Some(&text), &Default::default());
        }
    }
}

/// `advertised-listener = "[]:9092"` was accepted with an empty host (the emptiness check
/// ran before the IPv6 brackets were stripped): Metadata would advertise host "".
#[test]
fn advertised_listener_needs_a_host_inside_brackets() {
    let data = input("config", "advertised-listener-empty-brackets");
    let text = String::from_utf8_lossy(&data[1..]);
    let err = strand::config::BrokerConfig::build(Some(&text), &Default::default()).unwrap_err();
    assert!(err.contains("empty host"), "{err}");
    let ok = strand::config::BrokerConfig::build(
        Some("advertised-listener = \"[::1]:9092\"\n"),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(ok.advertised_host, "::1");
}

/// A non-ASCII `log-level` made tracing-subscriber's directive parser panic ("byte index
/// is not a char boundary") inside BrokerConfig::build. Now refused with a message.
#[test]
fn non_ascii_log_level_is_refused() {
    let data = input("config", "log-level-non-ascii-panics");
    let text = String::from_utf8_lossy(&data[1..]);
    let err = strand::config::BrokerConfig::build(Some(&text), &Default::default()).unwrap_err();
    assert!(err.contains("log-level"), "{err}");
}

/// A 155-byte `log-level` with span field filters took 88 s in `BrokerConfig::build`:
/// tracing-subscriber compiles `{field=value}` filters as regexes, and some are
/// pathological to build. Field filters are now refused with a message.
#[test]
fn log_level_field_filters_are_refused() {
    let data = input("config", "log-level-field-filter-regex-slow");
    let text = String::from_utf8_lossy(&data[1..]);
    let err = strand::config::BrokerConfig::build(Some(&text), &Default::default()).unwrap_err();
    assert!(err.contains("span field filters"), "{err}");
    let ok = strand::config::BrokerConfig::build(
        Some("log-level = \"info,strand[conn]=debug\"\n"),
        &Default::default(),
    );
    assert!(ok.is_ok(), "{ok:?}");
}

/// min.insync.replicas=2 was accepted and then described (DescribeConfigs) as "1".
#[test]
fn min_insync_replicas_is_described_as_set() {
    let overrides = BTreeMap::from([("min.insync.replicas".to_string(), "2".to_string())]);
    let config = effective_config(&LogConfig::default(), &overrides).unwrap();
    assert_eq!(describe(&config, "min.insync.replicas").unwrap(), "2");
}

/// segment.bytes above i32::MAX (an INT in Kafka) was accepted and clamped to u32::MAX,
/// so DescribeConfigs showed another value than the one set. Now refused.
#[test]
fn segment_bytes_is_never_clamped() {
    assert!(validate_topic_config("segment.bytes", "99999999999").is_err());
    assert!(validate_topic_config("segment.bytes", "2147483647").is_ok());
}

// ---- group_record ----

/// `__consumer_offsets` records the coordinator must replay without failing:
/// - `member-named-twice`: a group record naming one member twice, with two instance
///   ids, left an instance id pointing at no member, and the coordinator's next state
///   check failed. Static members are now rebuilt from the members as they end up.
/// - `generation-at-i32-max`: a group record of generation i32::MAX whose members then
///   expired: the next generation overflowed. It starts over at 1.
#[test]
fn damaged_group_records_replay() {
    use strand::group::coordinator::{CoordinatorConfig, GroupCoordinator};
    use strand::group::records::GroupRecord;
    for (name, data) in inputs("group_record") {
        // The target's layout: [key_len][key][has_value][value].
        let key_len = (data[0] as usize).min(data.len() - 1);
        let (key, rest) = data[1..].split_at(key_len);
        let value = rest
            .split_first()
            .filter(|(f, _)| *f % 2 == 1)
            .map(|(_, v)| v);
        let record = GroupRecord::decode(key, value).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut coordinator = GroupCoordinator::new(CoordinatorConfig::default(), 1);
        coordinator.replay(&record, 1_000);
        let _ = coordinator.tick(1_000_000);
        assert!(coordinator.describe(record.group()).is_some(), "{name}");
    }
}

// ---- roundtrip ----

/// Not Strand's: kafka-protocol 0.18 decodes a tagged field numbered 2^31 or more to a
/// negative key, which encoding then skips while still counting it (malformed output).
/// Strand never re-encodes a peer's message; this pins the input that showed it and that
/// decoding it is harmless. The `roundtrip` target leaves such inputs out.
#[test]
fn response_header_with_a_huge_tag_decodes() {
    use kafka_protocol::messages::ResponseHeader;
    use kafka_protocol::protocol::Decodable;
    let data = input("roundtrip", "response-header-tagged-field-above-i32");
    let mut buf = Bytes::copy_from_slice(&data[3..]);
    let header = ResponseHeader::decode(&mut buf, 1).unwrap();
    assert!(header.unknown_tagged_fields.keys().any(|tag| *tag < 0));
}

// ---- request ----

/// fuzz/fuzz_targets/request.rs: size-prefixed frames through the real dispatch against
/// a fresh in-memory broker; every answer must encode and decode back.
async fn replay_request(data: &[u8]) {
    use kafka_protocol::messages::{ResponseHeader, ResponseKind};
    use kafka_protocol::protocol::Decodable;
    use strand::protocol::dispatch::{dispatch, encode_response, Reply};
    let config = strand::config::BrokerConfig {
        data_dir: "/data".into(),
        seed: Some(1),
        ..Default::default()
    };
    let broker = strand::broker::Broker::open(config, Arc::new(MemoryStorage::new()), None)
        .await
        .unwrap();
    let existing = strand::metadata::CreateTopic {
        name: "existing".into(),
        partitions: Some(2),
        ..Default::default()
    };
    broker.create_topic(existing, false).await.unwrap();
    let mut rest = data;
    while rest.len() >= 4 {
        let size = i32::from_be_bytes(rest[..4].try_into().unwrap());
        let body = &rest[4..];
        let n = if size < 0 || size as usize > body.len() {
            body.len()
        } else {
            size as usize
        };
        let frame = Bytes::copy_from_slice(&body[..n]);
        rest = &body[n..];
        let Ok(pending) = dispatch(&broker, frame).await else {
            return;
        };
        let response = match pending.reply {
            Reply::Now(r) => r,
            Reply::Later(f) => f.await,
            Reply::Nothing => continue,
        };
        let mut bytes = encode_response(
            pending.correlation_id,
            pending.api_key,
            pending.version,
            &response,
        )
        .unwrap();
        let header = ResponseHeader::decode(
            &mut bytes,
            pending.api_key.response_header_version(pending.version),
        )
        .unwrap();
        assert_eq!(header.correlation_id, pending.correlation_id);
        ResponseKind::decode(pending.api_key, &mut bytes, pending.version).unwrap();
    }
}

#[tokio::test]
async fn every_request_regression_replays() {
    for (_, data) in inputs("request") {
        replay_request(&data).await;
    }
}

/// CreatePartitions to 5632 partitions took 41 s in the fuzzer: MemoryStorage::list_dir
/// scanned every file of the store for each partition opened (quadratic). It now visits
/// only the directory's own subtree; this replays in about a second.
#[tokio::test]
async fn creating_thousands_of_partitions_in_memory_is_fast() {
    let started = std::time::Instant::now();
    replay_request(&input("request", "create-partitions-5632-slow")).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < std::time::Duration::from_secs(60),
        "took {elapsed:?}"
    );
}

/// CreateTopics v3 for a topic of 9472 partitions hit the fuzzer's 60 s timeout (150 s
/// alone under the fuzz build, 50 s here): each partition's first leader change copied
/// the whole metadata image, 9472 partition records, to read that one partition's
/// replicas (quadratic). It now reads them in place: about 4 s here.
#[tokio::test]
async fn first_leaders_of_thousands_of_partitions_are_fast() {
    let started = std::time::Instant::now();
    replay_request(&input("request", "create-topics-9472-partitions-slow")).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < std::time::Duration::from_secs(20),
        "took {elapsed:?}"
    );
}

// ---- request / roundtrip: kafka-protocol's wire arrays ----

/// kafka-protocol 0.18 decodes a wire array with `Vec::with_capacity(claimed length)`
/// before checking the bytes exist, so a 58-byte AlterConfigs request asks for ~95 GB.
/// With the system allocator the process aborts; the broker's allocator
/// (`strand::large_alloc`, installed above as in the binary) maps such reservations
/// lazily, the decode fails on the short input and the request is refused.
#[tokio::test]
async fn huge_wire_array_claims_do_not_abort() {
    let config = strand::config::BrokerConfig {
        data_dir: "/data".into(),
        seed: Some(1),
        ..Default::default()
    };
    let broker = strand::broker::Broker::open(config, Arc::new(MemoryStorage::new()), None)
        .await
        .unwrap();
    let data = input("request", "alter-configs-array-length-oom");
    let frame = Bytes::copy_from_slice(&data[4..]);
    assert!(strand::protocol::dispatch::dispatch(&broker, frame)
        .await
        .is_err());
    let data = input("roundtrip", "create-topics-array-length-oom");
    let mut body = Bytes::copy_from_slice(&data[3..]);
    use kafka_protocol::protocol::Decodable;
    for version in 2..=7 {
        let _ = kafka_protocol::messages::CreateTopicsRequest::decode(&mut body.clone(), version);
    }
    body.clear();
}

// ---- interbroker: the cluster of fuzz/src/interbroker.rs, repeated here ----

mod interbroker {
    //! Inputs in the raw-frame form the `interbroker` target writes with
    //! `INTERBROKER_DUMP` (operation 0 = a frame body into a broker; 4–11 the deliveries,
    //! rounds, ticks, proposals, campaigns and restarts of the target's table), replayed
    //! against the target's cluster: three brokers, groups `t-0` (led by 1) and `t-1`
    //! (led by 2), three batches committed in each.

    use super::inputs;
    use bytes::Bytes;
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::Arc;
    use strand::log::LogConfig;
    use strand::replication::driver::{Driver, DriverConfig, DriverError, GroupMessage};
    use strand::replication::transport::{decode_frame, encode_frame};
    use strand::replication::ReplicaLog;
    use strand::storage::MemoryStorage;

    const GROUPS: [&str; 2] = ["t-0", "t-1"];
    const NODES: [u64; 3] = [1, 2, 3];

    fn open_driver(id: u64, disk: &MemoryStorage) -> Driver {
        let mut driver = Driver::new(id, DriverConfig::default(), 1000 + id);
        for group in GROUPS {
            let config = LogConfig {
                segment_bytes: 512,
                ..LogConfig::default()
            };
            let dir = Path::new("/data").join(group);
            let replica =
                ReplicaLog::open(Arc::new(disk.clone()), &dir, config, 0, &NODES).unwrap();
            driver.add_group(group.to_string(), replica).unwrap();
        }
        driver
    }

    fn batch(tag: &str, records: usize) -> Bytes {
        let values: Vec<_> = (0..records.max(1))
            .map(|i| (None, Some(Bytes::from(format!("{tag}-{i}")))))
            .collect();
        strand::client::encode_batch(&values, 1_000, kafka_protocol::records::Compression::None)
            .unwrap()
    }

    #[derive(Default)]
    struct Cluster {
        drivers: BTreeMap<u64, Driver>,
        disks: BTreeMap<u64, MemoryStorage>,
        mail: Vec<(u64, u64, GroupMessage)>,
        now_ms: i64,
        refused: usize,
    }

    impl Cluster {
        fn start() -> Cluster {
            let mut c = Cluster::default();
            for id in NODES {
                let disk = MemoryStorage::new();
                c.drivers.insert(id, open_driver(id, &disk));
                c.disks.insert(id, disk);
            }
            c.drivers.get_mut(&1).unwrap().campaign(GROUPS[0]).unwrap();
            c.drivers.get_mut(&2).unwrap().campaign(GROUPS[1]).unwrap();
            c.settle();
            for i in 0..3 {
                for (leader, group) in [(1, GROUPS[0]), (2, GROUPS[1])] {
                    let data = batch(&format!("{group}/{i}"), 1 + i).to_vec();
                    c.drivers
                        .get_mut(&leader)
                        .unwrap()
                        .propose(group, data)
                        .unwrap();
                }
                c.settle();
            }
            for _ in 0..3 {
                c.tick();
                c.settle();
            }
            c
        }

        fn round(&mut self) -> bool {
            self.now_ms += 10;
            let mut moved = false;
            for (id, driver) in self.drivers.iter_mut() {
                let out = driver
                    .round(self.now_ms)
                    .unwrap_or_else(|e| panic!("round failed on broker {id}: {e}"));
                moved |= out.groups_synced > 0 || !out.outgoing.is_empty();
                for (to, batch) in out.outgoing {
                    self.mail.extend(batch.into_iter().map(|m| (*id, to, m)));
                }
            }
            moved
        }

        fn frame(&mut self, to: u64, body: &[u8]) {
            let Ok((sender, messages)) = decode_frame(body) else {
                return;
            };
            let driver = self.drivers.get_mut(&to).unwrap();
            for message in messages {
                match driver.step_from(sender, message) {
                    Err(DriverError::Refused { .. }) => self.refused += 1,
                    Err(DriverError::Io(e)) => panic!("{e}"),
                    _ => {}
                }
            }
        }

        fn deliver(&mut self, mail: Vec<(u64, u64, GroupMessage)>) {
            for (from, to, message) in mail {
                let frame = encode_frame(from, &[message]).unwrap();
                self.frame(to, &frame[4..]);
            }
        }

        fn settle(&mut self) {
            for _ in 0..64 {
                let moved = self.round();
                if !moved && self.mail.is_empty() {
                    return;
                }
                let mail = std::mem::take(&mut self.mail);
                self.deliver(mail);
            }
        }

        fn tick(&mut self) {
            self.drivers.values_mut().for_each(|d| d.tick().unwrap());
        }
    }

    /// Replays one input; returns how many messages the driver refused.
    fn replay(data: &[u8]) -> usize {
        let mut c = Cluster::start();
        let mut rest = data;
        let byte = |rest: &mut &[u8]| {
            let b = rest.first().copied().unwrap_or(0);
            *rest = rest.get(1..).unwrap_or(&[]);
            b
        };
        let node = |b: u8| NODES[b as usize % 3];
        for _ in 0..64 {
            if rest.is_empty() {
                break;
            }
            match byte(&mut rest) % 12 {
                0 => {
                    let to = node(byte(&mut rest));
                    let len = u16::from_be_bytes([byte(&mut rest), byte(&mut rest)]) as usize;
                    let len = len.min(rest.len());
                    let (body, tail) = rest.split_at(len);
                    rest = tail;
                    c.frame(to, body);
                }
                4 => {
                    let mail = std::mem::take(&mut c.mail);
                    c.deliver(mail);
                }
                op @ (5 | 6) => {
                    let which = u16::from_be_bytes([byte(&mut rest), byte(&mut rest)]) as usize;
                    if !c.mail.is_empty() {
                        let k = which % c.mail.len();
                        let mail = c.mail.remove(k);
                        if op == 5 {
                            c.deliver(vec![mail]);
                        }
                    }
                }
                7 => {
                    c.round();
                }
                8 => c.tick(),
                9 => {
                    let (g, records) = (byte(&mut rest), byte(&mut rest));
                    let group = GROUPS[g as usize % 2];
                    for id in NODES {
                        let d = c.drivers.get_mut(&id).unwrap();
                        if d.leader(group).map(|(l, _)| l) == Some(id) {
                            let data = batch("fuzz", 1 + records as usize % 4).to_vec();
                            let _ = d.propose(group, data);
                            break;
                        }
                    }
                }
                10 => {
                    let (n, g) = (byte(&mut rest), byte(&mut rest));
                    let _ = c
                        .drivers
                        .get_mut(&node(n))
                        .unwrap()
                        .campaign(GROUPS[g as usize % 2]);
                }
                11 => {
                    let (n, p) = (node(byte(&mut rest)), byte(&mut rest));
                    c.drivers.remove(&n);
                    if p % 2 == 1 {
                        c.disks[&n].crash();
                    }
                    let driver = open_driver(n, &c.disks[&n]);
                    c.drivers.insert(n, driver);
                }
                _ => panic!("operations 1-3 are written out as raw frames"),
            }
        }
        for _ in 0..40 {
            c.tick();
            c.settle();
        }
        c.refused
    }

    #[test]
    fn every_interbroker_regression_replays() {
        for (name, data) in inputs("interbroker") {
            eprintln!("interbroker/{name}");
            let refused = replay(&data);
            assert!(refused > 0, "{name}: the driver refused nothing");
        }
    }
}

// ---- cleaner ----

/// fuzz/fuzz_targets/cleaner.rs: `[mode][horizon][records]`: the key map over the whole
/// batches, then every batch cleaned; a rewritten batch keeps its offsets and cleans to
/// itself.
fn cleaner(data: &[u8]) {
    use strand::log::cleaner::{clean_batch, KeyMap};
    let [mode, horizon, rest @ ..] = data else {
        return;
    };
    let mut records = rest.to_vec();
    if mode & 2 != 0 {
        make_one_batch(&mut records);
    } else if mode & 1 != 0 {
        fix_crcs(&mut records);
    }
    let mut batches = Vec::new();
    let mut position = 0;
    while let Some(size) = batch_size(&records[position..]) {
        if size > records.len() - position {
            break;
        }
        batches.push(records[position..position + size].to_vec());
        position += size;
    }
    let mut keys = KeyMap::new([1, 4, 64, 1 << 20][((mode >> 2) & 3) as usize]);
    for batch in &batches {
        let _ = strand::replication::entry_codec::stored_clean_command(&Bytes::from(batch.clone()));
        if !matches!(keys.add_batch(batch), Ok(true)) {
            break;
        }
    }
    let deleted = keys
        .expired_tombstones(*horizon as i64, usize::MAX)
        .into_iter()
        .collect();
    for batch in &batches {
        if let Ok(Some(cleaned)) = clean_batch(batch, &keys, &deleted) {
            assert_eq!(cleaned[..8], batch[..8], "base offset moved");
            assert_eq!(clean_batch(&cleaned, &keys, &deleted).unwrap(), None);
        }
    }
}

/// `base-offset-i64-min`: a batch whose base offset is i64::MIN: "the offset before the
/// first record" overflowed (a panic with overflow checks). `compressed-control-batch-bomb`:
/// a gzip control batch that the clean-command decoder inflated to 3.4 GB.
#[test]
fn every_cleaner_regression_replays() {
    for (_, data) in inputs("cleaner") {
        cleaner(&data);
    }
}
