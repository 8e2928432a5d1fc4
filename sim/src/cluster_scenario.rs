//! Three brokers replicating a partition through Raft, under madsim, with brokers
//! killed (unsynced writes dropped) and restarted while a producer writes.
//!
//! Exercises the replication engine directly (`strand::cluster::ClusterNode`): the
//! brokers talk Raft to each other over simulated TCP; the workload calls the engine's
//! produce on whichever broker leads the partition (the Kafka wire protocol is not in
//! this scenario's path; the single-broker scenario drives it).
//!
//! Invariants:
//! - `acked-durable`: every batch acknowledged at acks=all is, at the end, on every
//!   replica, at its acknowledged offset, with its contents.
//! - `replicas-agree`: every replica holds the same bytes at the same offsets below the
//!   high watermark.
//! - `progress`: with at most one broker down at a time, writes keep being acknowledged.
//! - `no-panic`, `time-limit`.

use crate::scenario::{panic_text, splitmix64, Options, Report, Violation};
use crate::trace::{hash_bytes, Trace};
use bytes::Bytes;
use madsim::rand::{thread_rng, Rng};
use madsim::runtime::{Handle, NodeHandle, Runtime};
use madsim::time::TimeHandle;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use strand::client::{decode_records, encode_batch};
use strand::cluster::{ClusterConfig, ClusterNode, Wait};
use strand::log::LogConfig;
use strand::metadata::CreateTopic;
use strand::replication::driver::DriverConfig;
use strand::storage::{MemoryStorage, Storage};

const BROKERS: u64 = 3;
const RAFT_PORT: u16 = 9093;
const TOPIC: &str = "replicated";
const TIME_LIMIT: Duration = Duration::from_secs(900);
const OP_TIMEOUT: Duration = Duration::from_secs(5);

fn violation(invariant: &'static str, detail: impl Into<String>) -> Violation {
    Violation {
        invariant,
        detail: detail.into(),
    }
}

fn broker_ip(id: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 1, id as u8))
}

/// What the brokers' init closures publish for the workload.
struct Shared {
    trace: Mutex<Trace>,
    nodes: Mutex<BTreeMap<u64, Arc<ClusterNode>>>,
    acked: AtomicU64,
}

impl Shared {
    fn event(&self, event: impl AsRef<str>) {
        let ns = TimeHandle::current().elapsed().as_nanos();
        self.trace.lock().unwrap().record(ns, event.as_ref());
    }

    fn node(&self, id: u64) -> Option<Arc<ClusterNode>> {
        self.nodes.lock().unwrap().get(&id).cloned()
    }
}

pub fn run_seed(seed: u64, options: &Options) -> Report {
    let mut runtime = Runtime::with_seed_and_config(seed, madsim::Config::default());
    runtime.set_time_limit(TIME_LIMIT);
    let shared = Arc::new(Shared {
        trace: Mutex::new(Trace::new(options.trace)),
        nodes: Mutex::default(),
        acked: AtomicU64::new(0),
    });
    let records = options.records;
    let outcome = {
        let shared = shared.clone();
        std::panic::catch_unwind(AssertUnwindSafe(|| {
            runtime.block_on(async move {
                let result = supervise(seed, records, shared.clone()).await;
                (result, TimeHandle::current().elapsed().as_millis())
            })
        }))
    };
    let (violation, sim_ms) = match outcome {
        Ok((Ok(()), ms)) => (None, ms),
        Ok((Err(v), ms)) => (Some(v), ms),
        Err(payload) => {
            let text = panic_text(payload.as_ref());
            let invariant = if text.contains("time limit exceeded") {
                "time-limit"
            } else {
                "no-panic"
            };
            let ms = shared.trace.lock().unwrap().last_sim_ns / 1_000_000;
            (Some(self::violation(invariant, text)), ms)
        }
    };
    if let Some(v) = &violation {
        let mut trace = shared.trace.lock().unwrap();
        let ns = trace.last_sim_ns;
        trace.record(ns, &format!("violation {}: {}", v.invariant, v.detail));
    }
    let (digest, events, last_events) = {
        let trace = shared.trace.lock().unwrap();
        (trace.digest(), trace.events(), trace.last_events())
    };
    if violation.is_some() {
        std::mem::forget(runtime);
    }
    Report {
        seed,
        sim_ms,
        records_acked: shared.acked.load(Ordering::Relaxed),
        digest,
        violation,
        events,
        faults_injected: 0,
        last_events,
    }
}

async fn broker_main(
    id: u64,
    seed: u64,
    storage: MemoryStorage,
    shared: Arc<Shared>,
    incarnation: Arc<AtomicU64>,
) {
    let peers: BTreeMap<u64, SocketAddr> = (1..=BROKERS)
        .map(|b| (b, SocketAddr::new(broker_ip(b), RAFT_PORT)))
        .collect();
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], RAFT_PORT)))
        .await
        .expect("bind the Raft port");
    let config = ClusterConfig {
        node_id: id,
        peers,
        data_dir: "/data".into(),
        log_defaults: LogConfig {
            segment_bytes: 16 * 1024,
            ..LogConfig::default()
        },
        kafka_host: broker_ip(id).to_string(),
        kafka_port: 9092,
        tick_ms: 50,
        driver: DriverConfig::default(),
        default_partitions: 1,
        default_replication_factor: 3,
        session_timeout_ms: 9_000,
        seed: splitmix64(seed ^ (id << 32) ^ incarnation.fetch_add(1, Ordering::Relaxed)),
        recovery_points: Default::default(),
    };
    let storage: Arc<dyn Storage> = Arc::new(storage);
    let node = ClusterNode::start(config, storage, Some(listener))
        .await
        .expect("a broker restarts from its disk");
    shared.nodes.lock().unwrap().insert(id, node);
    std::future::pending::<()>().await;
}

async fn supervise(seed: u64, records: usize, shared: Arc<Shared>) -> Result<(), Violation> {
    let handle = Handle::current();
    let mut rng = thread_rng();
    let mut disks = BTreeMap::new();
    let mut brokers: BTreeMap<u64, NodeHandle> = BTreeMap::new();
    for id in 1..=BROKERS {
        let disk = MemoryStorage::new();
        let incarnation = Arc::new(AtomicU64::new(0));
        let node = {
            let (disk, shared) = (disk.clone(), shared.clone());
            handle
                .create_node()
                .name(format!("broker-{id}"))
                .ip(broker_ip(id))
                .init(move || {
                    broker_main(id, seed, disk.clone(), shared.clone(), incarnation.clone())
                })
                .build()
        };
        disks.insert(id, disk);
        brokers.insert(id, node);
    }
    let client = handle
        .create_node()
        .name("client")
        .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 100)))
        .build();
    // Wait for the nodes to come up and form the metadata quorum.
    let mut created = false;
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Some(node) = shared.node(1) else { continue };
        if node.image().live_brokers().len() as u64 == BROKERS {
            let request = CreateTopic {
                name: TOPIC.into(),
                partitions: Some(1),
                replication_factor: Some(3),
                ..Default::default()
            };
            let n = node.clone();
            let result = client
                .spawn(async move { n.create_topic(request).await })
                .await
                .map_err(|e| violation("no-panic", e.to_string()))?;
            created = result.is_ok();
            shared.event(format!("create topic: {result:?}"));
            if created {
                break;
            }
        }
    }
    if !created {
        return Err(violation(
            "progress",
            "the cluster never formed and created the topic",
        ));
    }

    // The producer: writes batches to whichever broker leads, remembering what was acked.
    let acked: Arc<Mutex<Vec<(i64, Bytes)>>> = Arc::default();
    let producer = {
        let (shared, acked) = (shared.clone(), acked.clone());
        client.spawn(async move {
            let mut rng = thread_rng();
            let mut n = 0usize;
            let mut attempts = 0usize;
            while n < records && attempts < records * 50 {
                attempts += 1;
                let leader = (1..=BROKERS).filter_map(|id| shared.node(id)).find(|node| {
                    node.replica(TOPIC, 0)
                        .map(|r| r.leader().0 == node.config.node_id)
                        .unwrap_or(false)
                });
                let Some(leader) = leader else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                // Paced, so that the broker kills land in the middle of the load.
                tokio::time::sleep(Duration::from_millis(rng.gen_range(0..=60))).await;
                let size = rng.gen_range(1..=8);
                let values: Vec<_> = (0..size)
                    .map(|i| (None, Some(Bytes::from(format!("r{n}-{i}")))))
                    .collect();
                let batch =
                    encode_batch(&values, 0, kafka_protocol::records::Compression::None).unwrap();
                match tokio::time::timeout(
                    OP_TIMEOUT,
                    leader.produce(TOPIC, 0, batch.clone(), Wait::Commit),
                )
                .await
                {
                    Ok(Ok(offset)) => {
                        acked.lock().unwrap().push((offset, batch));
                        shared.acked.fetch_add(size as u64, Ordering::Relaxed);
                        shared.event(format!(
                            "acked batch {n} at {offset} on broker {}",
                            leader.config.node_id
                        ));
                        n += 1;
                    }
                    Ok(Err(e)) => {
                        shared.event(format!("refused batch {n}: {e}"));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(_) => shared.event(format!("batch {n} timed out")),
                }
            }
            n
        })
    };
    // Faults: kill one broker at a time (power loss), restart it after a while.
    let kills = rng.gen_range(1..=4);
    for k in 0..kills {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..=3000))).await;
        // Half the time the partition's leader, otherwise anyone.
        let leader = (1..=BROKERS).find(|id| {
            shared
                .node(*id)
                .and_then(|n| n.replica(TOPIC, 0))
                .map(|r| r.leader().0 == *id)
                .unwrap_or(false)
        });
        let victim = match leader {
            Some(leader) if rng.gen_bool(0.5) => leader,
            _ => rng.gen_range(1..=BROKERS),
        };
        shared.event(format!("kill {k}: broker {victim}"));
        shared.nodes.lock().unwrap().remove(&victim);
        handle.kill(brokers[&victim].id());
        disks[&victim].crash();
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..=4000))).await;
        shared.event(format!("restart broker {victim}"));
        handle.restart(brokers[&victim].id());
    }
    let produced = producer
        .await
        .map_err(|e| violation("no-panic", e.to_string()))?;
    if produced < records {
        return Err(violation(
            "progress",
            format!("only {produced} of {records} batches acknowledged"),
        ));
    }
    // Let every replica catch up, then compare.
    let acked = acked.lock().unwrap().clone();
    let expected_end = acked
        .iter()
        .map(|(offset, batch)| {
            offset
                + strand::log::batch::parse_whole(batch)
                    .unwrap()
                    .records_count as i64
        })
        .max()
        .unwrap_or(0);
    let mut hws = BTreeMap::new();
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        hws = (1..=BROKERS)
            .filter_map(|id| Some((id, shared.node(id)?.replica(TOPIC, 0)?.high_watermark())))
            .collect();
        if hws.len() as u64 == BROKERS
            && hws.values().all(|hw| *hw >= expected_end)
            && hws.values().min() == hws.values().max()
        {
            break;
        }
    }
    shared.event(format!(
        "high watermarks {hws:?}, acknowledged up to {expected_end}"
    ));
    let mut logs = Vec::new();
    for id in 1..=BROKERS {
        let node = shared
            .node(id)
            .ok_or_else(|| violation("progress", format!("broker {id} did not come back")))?;
        let replica = node
            .replica(TOPIC, 0)
            .ok_or_else(|| violation("progress", format!("broker {id} lost its replica")))?;
        let hw = replica.high_watermark();
        if hw < expected_end {
            return Err(violation(
                "acked-durable",
                format!("broker {id} high watermark {hw} below acknowledged end {expected_end}"),
            ));
        }
        let storage = replica.storage.lock();
        let mut by_offset = BTreeMap::new();
        let mut offset = storage.log().log_start_offset();
        for _ in 0..1_000_000 {
            if offset >= hw {
                break;
            }
            let bytes = storage.log().read(offset, 1 << 20, hw, true).map_err(|e| {
                violation(
                    "acked-durable",
                    format!("broker {id} read at {offset}: {e}"),
                )
            })?;
            if bytes.is_empty() {
                return Err(violation(
                    "acked-durable",
                    format!("broker {id} returned nothing at {offset} below {hw}"),
                ));
            }
            let mut position = 0;
            while position < bytes.len() {
                let header = strand::log::batch::parse_whole(&bytes[position..]).unwrap();
                let batch = bytes.slice(position..position + header.size_bytes());
                by_offset.insert(header.base_offset, batch);
                offset = header.next_offset();
                position += header.size_bytes();
            }
        }
        logs.push((id, by_offset));
    }
    for (id, log) in &logs {
        if log != &logs[0].1 {
            return Err(violation(
                "replicas-agree",
                format!("broker {id} differs from broker {}", logs[0].0),
            ));
        }
    }
    let log = &logs[0].1;
    for (offset, batch) in &acked {
        let Some(stored) = log.get(offset) else {
            return Err(violation(
                "acked-durable",
                format!("no batch at acknowledged offset {offset}"),
            ));
        };
        let (want, got) = (
            decode_records(batch).unwrap(),
            decode_records(stored).unwrap(),
        );
        let values = |r: &Vec<strand::client::SimpleRecord>| {
            r.iter().map(|x| x.value.clone()).collect::<Vec<_>>()
        };
        if values(&want) != values(&got) {
            return Err(violation(
                "acked-durable",
                format!("batch at {offset} changed"),
            ));
        }
    }
    shared.event(format!(
        "verified {} batches, log digest {:016x}",
        acked.len(),
        log.values().fold(0, |h, b| h ^ hash_bytes(b))
    ));
    Ok(())
}
