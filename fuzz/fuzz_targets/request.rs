//! `request`: raw request frames through the broker's real decode and dispatch
//! (`strand::protocol::dispatch::dispatch`, then `encode_response`) against a fresh
//! in-memory broker per input (`Broker::open` on `MemoryStorage`, seed 1: a cluster of
//! one voter; topic "existing" with 2 partitions and `__consumer_offsets` with 1 created up
//! front through its metadata log, and the group coordinator loaded; the broker's group
//! loop and driver task are stopped at the end of the input).
//!
//! Input layout: what a connection carries, up to 8 frames `[size: i32 BE][frame]`; a
//! size that is negative or runs past the input takes the rest of the input. Frames are
//! handled in order; the first `Err` ends the input (the connection would close).
//!
//! Asserts: never panics; every `Ok` names the frame's API key and correlation id and
//! its version (or 0 for ApiVersions' unsupported-version answer); only Produce may
//! answer nothing; a waiting reply resolves (time is paused and auto-advances, so the
//! replication rounds that commit a produce run); the response encodes, the
//! bytes decode back with kafka-protocol (header with the right correlation id, body
//! with nothing left over), and re-encoding the decoded response gives the same bytes.
#![no_main]

/// kafka-protocol pre-allocates wire arrays by their claimed length: see LazyHugeAlloc.
#[global_allocator]
static ALLOC: strand_fuzz::LazyHugeAlloc = strand_fuzz::LazyHugeAlloc;

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use strand::broker::Broker;
use strand::config::BrokerConfig;
use strand::metadata::CreateTopic;
use strand::protocol::dispatch::{dispatch, encode_response, Reply};
use strand::storage::MemoryStorage;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    })
}

fn frames(mut data: &[u8]) -> Vec<Bytes> {
    let mut out = Vec::new();
    while !data.is_empty() && out.len() < 8 {
        if data.len() < 4 {
            out.push(Bytes::copy_from_slice(data));
            break;
        }
        let size = i32::from_be_bytes(data[..4].try_into().unwrap());
        let rest = &data[4..];
        let n = if size < 0 || size as usize > rest.len() {
            rest.len()
        } else {
            size as usize
        };
        out.push(Bytes::copy_from_slice(&rest[..n]));
        data = &rest[n..];
    }
    out
}

async fn run(data: &[u8]) {
    let mut config = BrokerConfig {
        data_dir: "/data".into(),
        seed: Some(1),
        ..Default::default()
    };
    // One offsets partition, created up front, so that the group APIs reach a loaded
    // coordinator.
    config.groups.offsets_topic_partitions = 1;
    config.groups.coordinator.initial_rebalance_delay_ms = 0;
    let broker = Broker::open(config, Arc::new(MemoryStorage::new()), None)
        .await
        .expect("broker opens");
    let existing = CreateTopic {
        name: "existing".into(),
        partitions: Some(2),
        ..Default::default()
    };
    broker
        .create_topic(existing, false)
        .await
        .expect("topic created");
    tokio::spawn(broker.groups.clone().run());
    // Creates the topic, then waits (bounded; time is paused) for its leader and load.
    for _ in 0..1000 {
        let found = broker.groups.find_coordinator("g").await.is_ok();
        if found && broker.groups.describe("g").is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        broker.groups.describe("g").is_ok(),
        "the group coordinator never loaded"
    );
    handle_frames(&broker, data).await;
    // The group loop and the driver task would otherwise outlive the input.
    broker.groups.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    broker.node.stop().await;
}

async fn handle_frames(broker: &Arc<Broker>, data: &[u8]) {
    for frame in frames(data) {
        let head = (frame.len() >= 8).then(|| {
            (
                i16::from_be_bytes([frame[0], frame[1]]),
                i16::from_be_bytes([frame[2], frame[3]]),
                i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]),
            )
        });
        let Ok(pending) = dispatch(broker, frame).await else {
            return; // the connection closes
        };
        let (key, version, correlation_id) = head.expect("a frame under 8 bytes was answered");
        assert_eq!(pending.api_key as i16, key, "answered for another API");
        assert_eq!(
            pending.correlation_id, correlation_id,
            "correlation id changed"
        );
        assert!(
            pending.version == version
                || (pending.api_key == ApiKey::ApiVersions && pending.version == 0),
            "answer in v{} to a v{version} request",
            pending.version
        );
        let response = match pending.reply {
            Reply::Now(r) => r,
            Reply::Later(f) => tokio::time::timeout(Duration::from_secs(24 * 3600), f)
                .await
                .expect("a waiting reply never resolved"),
            Reply::Nothing => {
                assert_eq!(
                    pending.api_key,
                    ApiKey::Produce,
                    "only acks=0 produce answers nothing"
                );
                continue;
            }
        };
        let bytes = encode_response(
            pending.correlation_id,
            pending.api_key,
            pending.version,
            &response,
        )
        .unwrap_or_else(|e| {
            panic!(
                "{:?} v{} response does not encode: {e}\n{response:?}",
                pending.api_key, pending.version
            )
        });
        check_response(pending.api_key, pending.version, correlation_id, bytes);
    }
}

fn check_response(key: ApiKey, version: i16, correlation_id: i32, bytes: Bytes) {
    let mut buf = bytes.clone();
    let header_version = key.response_header_version(version);
    let header = ResponseHeader::decode(&mut buf, header_version)
        .unwrap_or_else(|e| panic!("{key:?} v{version} response header does not decode: {e}"));
    assert_eq!(
        header.correlation_id, correlation_id,
        "response carries another correlation id"
    );
    let body = ResponseKind::decode(key, &mut buf, version)
        .unwrap_or_else(|e| panic!("{key:?} v{version} response does not decode: {e}"));
    assert!(
        !buf.has_remaining(),
        "{key:?} v{version} response has trailing bytes"
    );
    let mut again = BytesMut::new();
    header.encode(&mut again, header_version).unwrap();
    body.encode(&mut again, version).unwrap();
    assert_eq!(
        again.freeze(),
        bytes,
        "{key:?} v{version} response does not re-encode to itself"
    );
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(run(data));
});
