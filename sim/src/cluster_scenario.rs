//! The standard simulation: a cluster of 3 or 5 brokers (the real `Broker` with its Kafka
//! listener and Raft transport) under every fault kind, with Kafka clients on a node of
//! their own, and a checker over the whole history.
//!
//! Phases: the brokers form the metadata quorum and a topic is created; then for
//! `--sim-seconds` one producer and one consumer per partition run while the supervisor
//! injects the fault kinds switched on (`faults.rs`); then every fault heals (brokers
//! restarted, links unclogged, disk faults off) and the run must become live again.
//!
//! Fault model assumptions (what Raft tolerates): a minority of brokers may be down or
//! paused at once; faults that destroy fsynced data (wipes, bit flips, misdirected
//! writes) hit one broker only, the seed's "disk victim", and a wiped broker is given
//! quiet time to catch up before anything else is injected.
//!
//! Invariants (checked by the clients as they go, and over the history at the end):
//! - `acked-durable`: every batch acknowledged at acks=all is in the final log at its
//!   acknowledged offset with its values.
//! - `no-duplicates`: a value the producer sent once appears at most once in the log.
//! - `ack-order`: acknowledged batches found in the log lie in acknowledgement order.
//! - `no-invented-records`: every value read (during the run or at the end) was sent;
//!   a batch failing its CRC is never served (`corrupt-served`).
//! - `consistent-reads`: every read of one offset returns the same value, and the final
//!   log agrees with all of them.
//! - `consumer-order`: one fetch returns increasing offsets at or above the position.
//! - `one-leader-per-epoch`: no two brokers lead one partition in one epoch (from the
//!   replicas' own state and from Metadata answers).
//! - `replicas-agree`: after healing, every replica holds the same bytes below the
//!   high watermark.
//! - `liveness`: after healing, within a bounded simulated time every partition takes
//!   acks=all writes again and every replica converges.
//! - `no-panic`, `time-limit`.

use crate::faults::{FaultKind, Faults};
use crate::scenario::{panic_text, splitmix64, Options, Report, Violation};
use crate::trace::Trace;
use bytes::Bytes;
use madsim::net::NetSim;
use madsim::rand::{thread_rng, Rng};
use madsim::runtime::{Handle, NodeHandle, Runtime};
use madsim::task::NodeId;
use madsim::time::TimeHandle;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use strand::broker::Broker;
use strand::client::{decode_records, encode_batch, Client};
use strand::config::BrokerConfig;
use strand::log::LogConfig;
use strand::storage::{DiskFaults, MemoryStorage, Storage};
use tokio::net::TcpListener;

mod group_workload;
mod idempotent_workload;
mod txn_workload;

const RAFT_PORT: u16 = 9093;
const KAFKA_PORT: u16 = 9092;
const TOPIC: &str = "sim";
/// A compacted topic (`cleanup.policy=compact`, small segments) written with a few keys
/// while the faults run: its replicas must converge to identical bytes (cleaning is
/// replicated) and keep the latest acknowledged record of every key.
const COMPACTED_TOPIC: &str = "sim-compacted";
const COMPACTED_KEYS: u32 = 6;
const DATA_DIR: &str = "/data";
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 100);
/// Seconds of faults and load when `--sim-seconds` is not given.
const DEFAULT_FAULT_SECONDS: u64 = 20;
/// After healing: how long the cluster has to become live and converge.
const HEAL_LIMIT: Duration = Duration::from_secs(90);
const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// The most records one seed's producers may send (bounds the history).
const MAX_BATCHES_PER_PRODUCER: u64 = 5_000;

fn violation(invariant: &'static str, detail: impl Into<String>) -> Violation {
    Violation {
        invariant,
        detail: detail.into(),
    }
}

fn broker_ip(id: u64) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 1, id as u8)
}

fn kafka_addr(id: u64) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(broker_ip(id)), KAFKA_PORT)
}

/// One acknowledged produce.
#[derive(Debug, Clone)]
struct Ack {
    /// Simulated ms it arrived at.
    at_ms: u64,
    partition: i32,
    offset: i64,
    acks: i16,
    values: Vec<String>,
}

/// Everything the clients did and saw.
#[derive(Default)]
struct History {
    /// Every value sent (each exactly once), with its partition.
    sent: BTreeMap<String, i32>,
    /// Acknowledgements (acks=1 and acks=all), in the order they arrived.
    acks: Vec<Ack>,
    /// Every (partition, offset) a consumer read, with its value.
    reads: BTreeMap<(i32, i64), String>,
    /// (partition, leader epoch) -> the broker seen leading it.
    leaders: BTreeMap<(i32, i64), u64>,
    /// Topics created while faults ran whose creation (and every partition addition) a
    /// broker acknowledged, with their partition counts.
    topics: BTreeMap<String, i32>,
    /// Topics whose deletion a broker acknowledged (and not created again since).
    deleted: BTreeSet<String>,
    /// Topics whose last change was not answered before the load stopped: either state
    /// is right.
    uncertain: BTreeSet<String>,
    /// Topics a change was tried on without a definite answer: it may still take effect
    /// (see `admin_loop`), so no other change is made to them.
    frozen: BTreeSet<String>,
}

/// Settings drawn from the seed.
#[derive(Debug, Clone)]
struct Settings {
    brokers: u64,
    partitions: i32,
    fault_seconds: u64,
    segment_bytes: u64,
    index_interval_bytes: u64,
    fetch_max_bytes: i32,
    max_batch_records: usize,
    /// The broker whose disk may lose fsynced data (wipes, bit flips, misdirected writes).
    disk_victim: u64,
    /// Whether a fault kind damages synced bytes (bit flips, misdirected writes). Without
    /// one, a broker must never read a corrupt batch nor lose durable entries: crashes
    /// only tear unsynced writes, and recovery must cut those.
    damage_at_rest: bool,
    /// Seeds the broker's BUGGIFY points (`strand::buggify`) when this seed is buggified.
    buggify_seed: Option<u64>,
    /// Members of the consumer group (`group_workload`).
    group_members: usize,
}

struct Shared {
    trace: Mutex<Trace>,
    brokers: Mutex<BTreeMap<u64, Arc<Broker>>>,
    /// Brokers whose process ended on a storage failure, waiting to be restarted.
    failed: Mutex<BTreeSet<u64>>,
    history: Mutex<History>,
    group: Mutex<group_workload::GroupHistory>,
    idempotent: Mutex<idempotent_workload::IdempotentHistory>,
    txn: Mutex<txn_workload::TxnHistory>,
    /// Each broker's view of the metadata and of the partitions it leads, as last traced.
    views: Mutex<BTreeMap<String, String>>,
    /// The first violation a client task found.
    found: Mutex<Option<Violation>>,
    records_acked: AtomicU64,
    faults: AtomicU64,
    stop_load: AtomicBool,
    /// Stops the group's members (after the final checks).
    stop_group: AtomicBool,
    /// Simulated ms at which every fault was healed (0: not yet).
    healed_at_ms: AtomicU64,
    /// The compacted topic's latest acknowledged record per key: (offset, value).
    compacted_acks: Mutex<BTreeMap<String, (i64, Option<String>)>>,
    /// Keys of the compacted topic with a tombstone sent but never answered: it may have
    /// been written, and then cleaned away with everything before it.
    compacted_unanswered_tombstones: Mutex<BTreeSet<String>>,
    settings: Settings,
}

impl Shared {
    fn event(&self, event: impl AsRef<str>) {
        let ns = TimeHandle::current().elapsed().as_nanos();
        self.trace.lock().unwrap().record(ns, event.as_ref());
    }

    fn fault(&self, event: impl AsRef<str>) {
        self.faults.fetch_add(1, Ordering::Relaxed);
        self.event(format!("fault: {}", event.as_ref()));
    }

    fn broker(&self, id: u64) -> Option<Arc<Broker>> {
        self.brokers.lock().unwrap().get(&id).cloned()
    }

    fn report(&self, v: Violation) {
        let mut found = self.found.lock().unwrap();
        if found.is_none() {
            self.event(format!("violation found: {}: {}", v.invariant, v.detail));
            *found = Some(v);
        }
    }

    fn found(&self) -> Option<Violation> {
        self.found.lock().unwrap().clone()
    }

    /// Records who leads `partition` in `epoch`; two different leaders is a violation.
    fn saw_leader(&self, partition: i32, epoch: i64, leader: u64, source: &str) {
        if leader == 0 || epoch < 0 {
            return;
        }
        let previous = *self
            .history
            .lock()
            .unwrap()
            .leaders
            .entry((partition, epoch))
            .or_insert(leader);
        if previous != leader {
            self.report(violation(
                "one-leader-per-epoch",
                format!(
                    "partition {partition} epoch {epoch}: broker {previous} and broker {leader} ({source})"
                ),
            ));
        }
    }

    fn now_ms() -> u64 {
        TimeHandle::current().elapsed().as_millis() as u64
    }
}

pub fn run_seed(seed: u64, options: &Options) -> Report {
    // One line per panic, no backtrace: the broker catches raft-rs panics on storage
    // failures by design, and symbolizing a backtrace each time costs more than the run.
    std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}")));
    let mut runtime = Runtime::with_seed_and_config(seed, madsim::Config::default());
    crate::scenario::init_logging();
    let fault_seconds = if options.sim_seconds == 0 {
        DEFAULT_FAULT_SECONDS
    } else {
        options.sim_seconds
    };
    runtime.set_time_limit(Duration::from_secs(fault_seconds) + Duration::from_secs(600));
    let shared_slot: Arc<Mutex<Option<Arc<Shared>>>> = Arc::default();
    let faults = options.faults.clone();
    let brokers = options.brokers.clamp(3, 5);
    let trace_echo = options.trace;
    let outcome = {
        let slot = shared_slot.clone();
        std::panic::catch_unwind(AssertUnwindSafe(|| {
            runtime.block_on(async move {
                let settings = draw_settings(brokers, fault_seconds, &faults);
                if let Some(seed) = settings.buggify_seed {
                    strand::buggify::enable(seed);
                }
                let shared = Arc::new(Shared {
                    trace: Mutex::new(Trace::new(trace_echo)),
                    brokers: Mutex::default(),
                    failed: Mutex::default(),
                    history: Mutex::default(),
                    group: Mutex::default(),
                    views: Mutex::default(),
                    found: Mutex::default(),
                    records_acked: AtomicU64::new(0),
                    faults: AtomicU64::new(0),
                    stop_load: AtomicBool::new(false),
                    stop_group: AtomicBool::new(false),
                    healed_at_ms: AtomicU64::new(0),
                    compacted_acks: Mutex::default(),
                    idempotent: Mutex::default(),
                    txn: Mutex::default(),
                    compacted_unanswered_tombstones: Mutex::default(),
                    settings,
                });
                *slot.lock().unwrap() = Some(shared.clone());
                shared.event(format!("settings {:?}, faults {faults}", shared.settings));
                let result = supervise(seed, &faults, shared.clone()).await;
                let result = match (result, shared.found()) {
                    (Ok(()), Some(v)) => Err(v),
                    (result, _) => result,
                };
                (result, TimeHandle::current().elapsed().as_millis())
            })
        }))
    };
    let shared = shared_slot.lock().unwrap().clone();
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
            let ms = shared
                .as_ref()
                .map(|s| s.trace.lock().unwrap().last_sim_ns / 1_000_000)
                .unwrap_or(0);
            (Some(self::violation(invariant, text)), ms)
        }
    };
    let (digest, events, last_events, acked, injected) = match &shared {
        Some(shared) => {
            let mut trace = shared.trace.lock().unwrap();
            if let Some(v) = &violation {
                let ns = trace.last_sim_ns;
                trace.record(ns, &format!("violation {}: {}", v.invariant, v.detail));
            }
            (
                trace.digest(),
                trace.events(),
                trace.last_events(),
                shared.records_acked.load(Ordering::Relaxed),
                shared.faults.load(Ordering::Relaxed),
            )
        }
        None => (0, 0, Vec::new(), 0, 0),
    };
    if violation.is_some() {
        // A runtime that unwound may be in any state: do not run its destructors.
        std::mem::forget(runtime);
    }
    Report {
        seed,
        sim_ms,
        records_acked: acked,
        digest,
        violation,
        events,
        faults_injected: injected,
        last_events,
    }
}

fn draw_settings(brokers: u64, fault_seconds: u64, faults: &Faults) -> Settings {
    let mut rng = thread_rng();
    let buggify = faults.on(FaultKind::Buggify) && rng.gen_bool(0.5);
    Settings {
        brokers,
        partitions: rng.gen_range(1..=3),
        fault_seconds,
        segment_bytes: if buggify {
            rng.gen_range(512..=4096)
        } else {
            rng.gen_range(16 * 1024..=256 * 1024)
        },
        index_interval_bytes: if buggify {
            rng.gen_range(1..=256)
        } else {
            4096
        },
        fetch_max_bytes: if buggify {
            rng.gen_range(64..=2048)
        } else {
            64 * 1024
        },
        max_batch_records: if buggify { 64 } else { 8 },
        disk_victim: rng.gen_range(1..=brokers),
        damage_at_rest: faults.on(FaultKind::Corrupt) || faults.on(FaultKind::Misdirect),
        buggify_seed: buggify.then(|| rng.gen()),
        group_members: rng.gen_range(2..=3),
    }
}

async fn broker_main(
    id: u64,
    seed: u64,
    storage: MemoryStorage,
    shared: Arc<Shared>,
    incarnation: Arc<AtomicU64>,
) {
    let incarnation = incarnation.fetch_add(1, Ordering::Relaxed);
    let settings = shared.settings.clone();
    let peers = (1..=settings.brokers)
        .map(|b| {
            (
                b as i32,
                SocketAddr::new(IpAddr::V4(broker_ip(b)), RAFT_PORT),
            )
        })
        .collect();
    let config = BrokerConfig {
        node_id: id as i32,
        listen: SocketAddr::from(([0, 0, 0, 0], KAFKA_PORT)),
        advertised_host: broker_ip(id).to_string(),
        advertised_port: KAFKA_PORT as i32,
        data_dir: PathBuf::from(DATA_DIR),
        log_defaults: LogConfig {
            segment_bytes: settings.segment_bytes,
            index_interval_bytes: settings.index_interval_bytes,
            ..LogConfig::default()
        },
        seed: Some(splitmix64(seed ^ (id << 40) ^ incarnation)),
        peers,
        raft_listen: Some(SocketAddr::from(([0, 0, 0, 0], RAFT_PORT))),
        default_replication_factor: 3,
        raft_tick_ms: 100,
        broker_session_timeout_ms: 3_000,
        log_cleaner_backoff_ms: 500,
        ..BrokerConfig::default()
    };
    let mut config = config;
    config.groups.offsets_topic_partitions = 3;
    // As few Raft groups as the offsets topic: 50 would double the run's CPU time.
    config.txns.transaction_state_partitions = 3;
    config.groups.coordinator.initial_rebalance_delay_ms = 1_000;
    let started: Result<(Arc<Broker>, TcpListener), String> = async {
        let raft = TcpListener::bind(config.raft_listen.unwrap())
            .await
            .map_err(|e| format!("bind raft: {e}"))?;
        let kafka = TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("bind kafka: {e}"))?;
        let storage: Arc<dyn Storage> = Arc::new(storage);
        let broker = Broker::open(config, storage, Some(raft))
            .await
            .map_err(|e| format!("open: {e}"))?;
        Ok((broker, kafka))
    }
    .await;
    let (broker, kafka) = match started {
        Ok(started) => started,
        Err(e) => {
            // A process that cannot start exits; the supervisor starts it again.
            shared.event(format!(
                "broker {id} incarnation {incarnation} failed to start: {e}"
            ));
            shared.failed.lock().unwrap().insert(id);
            return;
        }
    };
    broker.start_background_tasks();
    shared.brokers.lock().unwrap().insert(id, broker.clone());
    let raft_states: Vec<String> = broker
        .node
        .replica_storages()
        .into_iter()
        .map(|(group, storage)| {
            let log = storage.lock();
            let hs = log.hard_state();
            format!(
                "{group} term {} vote {} commit {} last {}",
                hs.term,
                hs.vote,
                hs.commit,
                log.last_index()
            )
        })
        .collect();
    shared.event(format!(
        "broker {id} incarnation {incarnation} serving ({})",
        raft_states.join("; ")
    ));
    let server = tokio::spawn(strand::protocol::server::serve(broker.clone(), kafka));
    let why = broker.node.failed().await;
    server.abort();
    shared.event(format!("broker {id} exits on a storage failure: {why}"));
    shared.brokers.lock().unwrap().remove(&id);
    shared.failed.lock().unwrap().insert(id);
}

/// A broker's node and its disk.
struct BrokerHost {
    node: NodeHandle,
    disk: MemoryStorage,
}

/// Faults in progress and when each heals (simulated ms).
#[derive(Default)]
struct Injected {
    down: BTreeMap<u64, u64>,
    paused: BTreeMap<u64, u64>,
    clogged: Vec<(NodeId, NodeId)>,
    clogged_until: u64,
    /// Swizzle: nodes clogged one by one, unclogged in reverse order from `clogged_until`.
    swizzled: Vec<NodeId>,
    loss_until: u64,
    latency_until: u64,
    disk_faults: BTreeMap<u64, u64>,
    /// Brokers whose disk is slow, until when.
    slow_disks: BTreeMap<u64, u64>,
    /// A wiped broker catching up: no new faults until it has (or the deadline passes).
    wiped_catch_up: Option<(u64, BTreeMap<String, u64>, u64)>,
}

impl Injected {
    fn unavailable(&self) -> BTreeSet<u64> {
        self.down
            .keys()
            .chain(self.paused.keys())
            .copied()
            .collect()
    }
}

async fn supervise(seed: u64, faults: &Faults, shared: Arc<Shared>) -> Result<(), Violation> {
    let handle = Handle::current();
    let settings = shared.settings.clone();
    let mut rng = thread_rng();
    let mut hosts: BTreeMap<u64, BrokerHost> = BTreeMap::new();
    for id in 1..=settings.brokers {
        let disk = MemoryStorage::new();
        let incarnation = Arc::new(AtomicU64::new(0));
        let node = {
            let (disk, shared) = (disk.clone(), shared.clone());
            handle
                .create_node()
                .name(format!("broker-{id}"))
                .ip(IpAddr::V4(broker_ip(id)))
                .init(move || {
                    broker_main(id, seed, disk.clone(), shared.clone(), incarnation.clone())
                })
                .build()
        };
        hosts.insert(id, BrokerHost { node, disk });
    }
    let client = handle
        .create_node()
        .name("client")
        .ip(IpAddr::V4(CLIENT_IP))
        .build();

    create_topic(&shared).await?;
    create_compacted_topic(&shared).await?;
    idempotent_workload::create_topic(&shared).await?;
    txn_workload::create_topic(&shared).await?;

    let mut load = Vec::new();
    {
        let s = shared.clone();
        load.push(client.spawn(async move { admin_loop(s).await }));
    }
    {
        let s = shared.clone();
        load.push(client.spawn(async move { compacted_produce_loop(s).await }));
    }
    for partition in 0..idempotent_workload::IDEMPOTENT_PARTITIONS {
        let s = shared.clone();
        load.push(
            client.spawn(async move { idempotent_workload::producer_loop(s, partition).await }),
        );
    }
    for index in 0..txn_workload::TXN_PRODUCERS {
        let s = shared.clone();
        load.push(client.spawn(async move { txn_workload::producer_loop(s, index).await }));
    }
    {
        let s = shared.clone();
        load.push(client.spawn(async move { txn_workload::reader_loop(s).await }));
    }
    let mut group_members = Vec::new();
    for index in 0..settings.group_members {
        let s = shared.clone();
        group_members
            .push(client.spawn(async move { group_workload::member_loop(s, index).await }));
    }
    for partition in 0..settings.partitions {
        let s = shared.clone();
        load.push(client.spawn(async move { produce_loop(s, partition).await }));
        let s = shared.clone();
        load.push(client.spawn(async move { consume_loop(s, partition).await }));
    }

    // Faults.
    let net = NetSim::current();
    let node_ids: Vec<NodeId> = hosts
        .values()
        .map(|h| h.node.id())
        .chain([client.id()])
        .collect();
    let fault_end_ms = Shared::now_ms() + settings.fault_seconds * 1000;
    let mut injected = Injected::default();
    let action_rate = rng.gen_range(0.05..0.4);
    loop {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(20..=200))).await;
        let now = Shared::now_ms();
        heal_due(&shared, &hosts, &net, &mut injected, now, false);
        restart_failed(&shared, &handle, &hosts, &mut injected, now, &mut rng);
        if let Some(v) = shared.found() {
            return Err(v);
        }
        observe_leaders(&shared);
        if now >= fault_end_ms {
            break;
        }
        if let Some(victim) = injected.wiped_catch_up.as_ref().map(|w| w.0) {
            if !caught_up(&shared, &mut injected) {
                continue;
            }
            shared.event(format!("wiped broker {victim} caught up"));
        }
        if !rng.gen_bool(action_rate) {
            continue;
        }
        inject_one(
            &shared,
            faults,
            &handle,
            &hosts,
            &net,
            &node_ids,
            &mut injected,
            now,
            &mut rng,
        );
    }

    // Heal everything, then the cluster must become live and converge.
    let now = Shared::now_ms();
    heal_due(&shared, &hosts, &net, &mut injected, u64::MAX, true);
    restart_failed(&shared, &handle, &hosts, &mut injected, now, &mut rng);
    for host in hosts.values() {
        host.disk.set_faults(DiskFaults::default(), 0);
    }
    shared.healed_at_ms.store(now.max(1), Ordering::Relaxed);
    shared.event("every fault healed");
    let deadline = now + HEAL_LIMIT.as_millis() as u64;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = Shared::now_ms();
        restart_failed(&shared, &handle, &hosts, &mut injected, u64::MAX, &mut rng);
        if let Some(v) = shared.found() {
            return Err(v);
        }
        observe_leaders(&shared);
        if writes_resumed(&shared) {
            break;
        }
        if now > deadline {
            return Err(violation(
                "liveness",
                format!(
                    "{:?} after healing, not every partition took an acks=all write",
                    HEAL_LIMIT
                ),
            ));
        }
    }
    shared.stop_load.store(true, Ordering::Relaxed);
    for task in load {
        task.await
            .map_err(|e| violation("no-panic", format!("client task: {e}")))?;
    }
    if let Some(v) = shared.found() {
        return Err(v);
    }
    // A broker may still stop on a storage failure while it repairs (damage found by an
    // append or a read): the process supervisor keeps restarting it, as during faults,
    // also while the topics are checked (a broker that stopped there kept its stale
    // image and failed seed 61880). The check runs on the client node: the supervisor's
    // own node has no network.
    // Bounded: the check gives up at `deadline` (a panicking check ends the wait too).
    let s = shared.clone();
    check_on_client(
        &client,
        "topic check",
        deadline + 60_000,
        async move { check_created_topics(&s, deadline).await },
        || restart_failed(&shared, &handle, &hosts, &mut injected, u64::MAX, &mut rng),
    )
    .await?;
    let logs = converge(&shared, deadline, || {
        restart_failed(&shared, &handle, &hosts, &mut injected, u64::MAX, &mut rng)
    })
    .await?;
    check_history(&shared, &logs)?;
    // A broker restarted just before the sim topic converged applies the compacted
    // topic's committed clean commands on its cleaner's next pass (every 500 ms).
    let compacted_deadline = deadline.max(Shared::now_ms() + 10_000);
    let compacted = converge_topic(&shared, COMPACTED_TOPIC, 1, compacted_deadline, || {
        restart_failed(&shared, &handle, &hosts, &mut injected, u64::MAX, &mut rng)
    })
    .await?;
    check_compacted(&shared, &compacted)?;
    let idempotent_deadline = deadline.max(Shared::now_ms() + 10_000);
    idempotent_workload::check(&shared, idempotent_deadline, || {
        restart_failed(&shared, &handle, &hosts, &mut injected, u64::MAX, &mut rng)
    })
    .await?;
    // Bounded: the check gives up after its own limits.
    let s = shared.clone();
    check_on_client(
        &client,
        "txn check",
        Shared::now_ms() + 300_000,
        async move { txn_workload::check(&s).await },
        || restart_failed(&shared, &handle, &hosts, &mut injected, u64::MAX, &mut rng),
    )
    .await?;
    // The group consumes every record of the final logs (from its committed offsets).
    loop {
        let missing = group_workload::missing_from_group(&shared, &logs);
        if let Some(v) = shared.found() {
            return Err(v);
        }
        let Some(missing) = missing else {
            break;
        };
        if Shared::now_ms() > deadline + 60_000 {
            return Err(violation("group-consumed-all", missing));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        restart_failed(&shared, &handle, &hosts, &mut injected, u64::MAX, &mut rng);
    }
    shared.stop_group.store(true, Ordering::Relaxed);
    for task in group_members {
        task.await
            .map_err(|e| violation("no-panic", format!("group member: {e}")))?;
    }
    if let Some(v) = shared.found() {
        return Err(v);
    }
    let syncs = shared.group.lock().unwrap().syncs;
    shared.event(format!(
        "the group consumed every record ({syncs} assignments)"
    ));
    Ok(())
}

/// Runs a final `check` on the client node (the supervisor's own node has no network),
/// calling `each_step` every 100 ms while it runs, until `wait_until_ms` at most.
async fn check_on_client(
    client: &NodeHandle,
    what: &str,
    wait_until_ms: u64,
    check: impl std::future::Future<Output = Result<(), Violation>> + Send + 'static,
    mut each_step: impl FnMut(),
) -> Result<(), Violation> {
    let checked = Arc::new(AtomicBool::new(false));
    let done = checked.clone();
    let task = client.spawn(async move {
        let result = check.await;
        done.store(true, Ordering::Relaxed);
        result
    });
    while !checked.load(Ordering::Relaxed) && Shared::now_ms() <= wait_until_ms {
        tokio::time::sleep(Duration::from_millis(100)).await;
        each_step();
    }
    task.await
        .map_err(|e| violation("no-panic", format!("{what} task: {e}")))?
}

/// Waits for the metadata quorum and every broker, then creates the topic.
async fn create_topic(shared: &Arc<Shared>) -> Result<(), Violation> {
    let settings = &shared.settings;
    for attempt in 0..600 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Some(broker) = shared.broker(1) else {
            continue;
        };
        if (broker.node.image().live_brokers().len() as u64) < settings.brokers {
            continue;
        }
        let request = strand::metadata::CreateTopic {
            name: TOPIC.into(),
            partitions: Some(settings.partitions),
            replication_factor: Some(3),
            ..Default::default()
        };
        match broker.node.create_topic(request).await {
            Ok(_) => {
                shared.event(format!("topic created (attempt {attempt})"));
                return Ok(());
            }
            Err(e) => shared.event(format!("create topic: {e:?}")),
        }
    }
    Err(violation(
        "liveness",
        "the cluster never formed and created the topic",
    ))
}

/// Creates the compacted topic (one partition, three replicas, small segments, a low
/// dirty ratio, a short tombstone retention) once the sim topic exists.
async fn create_compacted_topic(shared: &Arc<Shared>) -> Result<(), Violation> {
    let configs: BTreeMap<String, String> = [
        ("cleanup.policy", "compact"),
        ("segment.bytes", "2048"),
        ("min.cleanable.dirty.ratio", "0.2"),
        ("delete.retention.ms", "2000"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    create_extra_topic(shared, COMPACTED_TOPIC, 1, configs).await
}

/// Creates a topic of a workload beside the main one (three replicas), through broker 1.
async fn create_extra_topic(
    shared: &Arc<Shared>,
    name: &str,
    partitions: i32,
    configs: BTreeMap<String, String>,
) -> Result<(), Violation> {
    for attempt in 0..600 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Some(broker) = shared.broker(1) else {
            continue;
        };
        let request = strand::metadata::CreateTopic {
            name: name.into(),
            partitions: Some(partitions),
            replication_factor: Some(3),
            configs: configs.clone(),
            ..Default::default()
        };
        match broker.node.create_topic(request).await {
            Ok(_) => {
                shared.event(format!("topic {name} created (attempt {attempt})"));
                return Ok(());
            }
            Err(e) => shared.event(format!("create topic {name}: {e:?}")),
        }
    }
    Err(violation(
        "liveness",
        format!("topic {name} was never created"),
    ))
}

/// Writes keyed records (a tombstone now and then) to the compacted topic with acks=all
/// and remembers the latest acknowledged record of each key.
async fn compacted_produce_loop(shared: Arc<Shared>) {
    let mut rng = thread_rng();
    let mut connection: Option<Client> = None;
    let mut batch_no = 0u64;
    while !shared.stop_load.load(Ordering::Relaxed) && batch_no < MAX_BATCHES_PER_PRODUCER {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(10..=80))).await;
        if connection.is_none() {
            let leader = (1..=shared.settings.brokers)
                .find_map(|id| shared.broker(id))
                .and_then(|b| {
                    b.node
                        .with_image(|image| image.partition(COMPACTED_TOPIC, 0).map(|p| p.leader))
                })
                .filter(|leader| *leader > 0);
            let Some(leader) = leader else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            connection = connect(kafka_addr(leader as u64)).await;
            if connection.is_none() {
                continue;
            }
        }
        let client = connection.as_mut().expect("connected above");
        let records: Vec<(String, Option<String>)> = (0..rng.gen_range(1..=3))
            .map(|i| {
                let key = format!("key-{}", rng.gen_range(0..COMPACTED_KEYS));
                let value = (rng.gen_range(0..10) != 0).then(|| format!("c-{batch_no:06}-{i}"));
                (key, value)
            })
            .collect();
        batch_no += 1;
        let encoded: Vec<(Option<Bytes>, Option<Bytes>)> = records
            .iter()
            .map(|(k, v)| (Some(Bytes::from(k.clone())), v.clone().map(Bytes::from)))
            .collect();
        let result = tokio::time::timeout(
            OP_TIMEOUT,
            client.produce(COMPACTED_TOPIC, 0, &encoded, strand::clock::now_ms(), -1),
        )
        .await;
        match result {
            Ok(Ok(Some(offset))) => {
                let mut acks = shared.compacted_acks.lock().unwrap();
                for (i, (key, value)) in records.into_iter().enumerate() {
                    let at = offset + i as i64;
                    let latest = acks.entry(key).or_insert((at, value.clone()));
                    if latest.0 <= at {
                        *latest = (at, value);
                    }
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err(_)) | Err(_) => {
                connection = None;
                let mut unanswered = shared.compacted_unanswered_tombstones.lock().unwrap();
                for (key, value) in records {
                    if value.is_none() {
                        unanswered.insert(key);
                    }
                }
            }
        }
    }
}

/// After convergence: the compacted topic's latest acknowledged record of every key is
/// still there at its offset, unless a later record of the key (one whose answer was
/// lost) is, or it is a tombstone that cleaning may drop (`compaction-keeps-latest`).
fn check_compacted(shared: &Shared, logs: &Logs) -> Result<(), Violation> {
    let log = logs.get(&0).cloned().unwrap_or_default();
    let mut records = Vec::new();
    let mut batches = 0usize;
    for bytes in log.values() {
        batches += 1;
        let decoded = strand::client::decode_records(bytes).map_err(|e| {
            violation(
                "compaction-keeps-latest",
                format!("a batch does not decode: {e:#}"),
            )
        })?;
        records.extend(decoded);
    }
    let acks = shared.compacted_acks.lock().unwrap().clone();
    let unanswered = shared
        .compacted_unanswered_tombstones
        .lock()
        .unwrap()
        .clone();
    for (key, (offset, value)) in &acks {
        let key_bytes = Bytes::from(key.clone());
        let later = records
            .iter()
            .any(|r| r.key.as_ref() == Some(&key_bytes) && r.offset > *offset);
        let at = records.iter().find(|r| r.offset == *offset);
        let kept = match at {
            Some(r) => {
                r.key.as_ref() == Some(&key_bytes)
                    && r.value.as_deref() == value.as_deref().map(str::as_bytes)
            }
            None => false,
        };
        let never_there = !records.iter().any(|r| r.key.as_ref() == Some(&key_bytes));
        if !(kept || later || value.is_none() || (never_there && unanswered.contains(key))) {
            return Err(violation(
                "compaction-keeps-latest",
                format!("{key}: its latest acknowledged record at offset {offset} ({value:?}) is gone, and no later one of the key is there"),
            ));
        }
    }
    shared.event(format!(
        "compacted topic: {} records in {batches} batches, {} keys acknowledged",
        records.len(),
        acks.len()
    ));
    Ok(())
}

/// Each broker's own view of who leads what, for `one-leader-per-epoch`; changes of
/// each broker's metadata image of the topic go into the trace.
fn observe_leaders(shared: &Shared) {
    let brokers: Vec<_> = shared.brokers.lock().unwrap().values().cloned().collect();
    if !shared.settings.damage_at_rest {
        for broker in &brokers {
            let id = broker.node.config.node_id;
            let checks = [
                (
                    "no-loss-without-damage",
                    broker.node.replicas_that_lost_entries() as u64,
                    "replica log(s) came back without entries they had made durable",
                ),
                (
                    "no-corruption-without-damage",
                    broker.node.corrupt_reads(),
                    "read(s) found a corrupt batch: recovery kept a torn or unsynced write",
                ),
            ];
            for (invariant, count, what) in checks {
                if count > 0 {
                    shared.report(violation(
                        invariant,
                        format!("broker {id}: {count} {what}, though no fault damaged synced data"),
                    ));
                }
            }
        }
    }
    for broker in brokers {
        let me = broker.node.config.node_id;
        let view = broker.node.with_image(|image| {
            format!(
                "metadata leader {:?}, {TOPIC}: {:?}",
                broker.node.metadata_leader(),
                image.topics.get(TOPIC).map(|t| &t.partitions)
            )
        });
        let changed = shared
            .views
            .lock()
            .unwrap()
            .insert(me.to_string(), view.clone())
            != Some(view.clone());
        if changed {
            shared.event(format!("broker {me} sees {view}"));
        }
        for partition in 0..shared.settings.partitions {
            if let Some(replica) = broker.node.replica(TOPIC, partition) {
                let (leader, term) = replica.leader();
                if leader == me {
                    let key = format!("{me}/p{partition}");
                    let claim = format!("term {term}");
                    let new_claim =
                        shared.views.lock().unwrap().insert(key, claim.clone()) != Some(claim);
                    if new_claim {
                        shared.event(format!("broker {me} leads p{partition} in term {term}"));
                    }
                    shared.saw_leader(partition, term as i64, me, "replica state");
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn inject_one(
    shared: &Shared,
    faults: &Faults,
    handle: &Handle,
    hosts: &BTreeMap<u64, BrokerHost>,
    net: &NetSim,
    node_ids: &[NodeId],
    injected: &mut Injected,
    now: u64,
    rng: &mut impl Rng,
) {
    let kinds: Vec<FaultKind> = FaultKind::ALL
        .into_iter()
        .filter(|k| faults.on(*k) && *k != FaultKind::Buggify)
        .collect();
    if kinds.is_empty() {
        return;
    }
    let kind = kinds[rng.gen_range(0..kinds.len())];
    let brokers = shared.settings.brokers;
    let minority = (brokers - 1) / 2;
    let unavailable = injected.unavailable();
    let available: Vec<u64> = (1..=brokers).filter(|b| !unavailable.contains(b)).collect();
    let victim = shared.settings.disk_victim;
    match kind {
        FaultKind::Crash if (unavailable.len() as u64) < minority => {
            let id = available[rng.gen_range(0..available.len())];
            kill(shared, handle, hosts, id, rng);
            let down = rng.gen_range(50..=4000);
            injected.down.insert(id, now + down);
            shared.fault(format!("crash broker {id} for {down} ms"));
        }
        FaultKind::Pause if (unavailable.len() as u64) < minority => {
            let id = available[rng.gen_range(0..available.len())];
            handle.pause(hosts[&id].node.id());
            let paused = rng.gen_range(50..=6000);
            injected.paused.insert(id, now + paused);
            shared.fault(format!("pause broker {id} for {paused} ms"));
        }
        FaultKind::Wipe
            if unavailable.is_empty()
                && injected.clogged.is_empty()
                && injected.swizzled.is_empty() =>
        {
            // The cluster is whole: remember how far every group has committed, so the
            // wiped broker can be given quiet time until it holds that much again.
            let Some(committed) = committed_elsewhere(shared, victim) else {
                return;
            };
            kill(shared, handle, hosts, victim, rng);
            hosts[&victim].disk.wipe();
            handle.restart(hosts[&victim].node.id());
            injected.wiped_catch_up = Some((victim, committed, now + 60_000));
            shared.fault(format!("wipe broker {victim}'s disk and restart it"));
        }
        FaultKind::Partition if injected.clogged.is_empty() && injected.swizzled.is_empty() => {
            let n = node_ids.len();
            let shape = rng.gen_range(0..4);
            let mut side: Vec<bool> = (0..n).map(|_| rng.gen_bool(0.5)).collect();
            if side.iter().all(|s| *s) || side.iter().all(|s| !*s) {
                side[rng.gen_range(0..n)] ^= true;
            }
            let bridge = rng.gen_range(0..n);
            let mut links = Vec::new();
            for a in 0..n {
                for b in 0..n {
                    if a == b || side[a] == side[b] {
                        continue;
                    }
                    let cut = match shape {
                        // One-way: only from side A to side B.
                        0 => side[a],
                        // Bridge: one node still talks to both sides.
                        1 => a != bridge && b != bridge,
                        _ => true,
                    };
                    if cut {
                        links.push((node_ids[a], node_ids[b]));
                    }
                }
            }
            for &(a, b) in &links {
                net.clog_link(a, b);
            }
            let lasts = rng.gen_range(100..=5000);
            injected.clogged = links;
            injected.clogged_until = now + lasts;
            let names = ["one-way", "bridge", "symmetric", "symmetric"];
            shared.fault(format!(
                "{} partition {side:?} (bridge node {bridge}) for {lasts} ms",
                names[shape]
            ));
        }
        FaultKind::Clog if injected.clogged.is_empty() && injected.swizzled.is_empty() => {
            if rng.gen_bool(0.5) {
                let a = node_ids[rng.gen_range(0..node_ids.len())];
                let b = node_ids[rng.gen_range(0..node_ids.len())];
                if a == b {
                    return;
                }
                net.clog_link(a, b);
                let lasts = rng.gen_range(100..=3000);
                injected.clogged = vec![(a, b)];
                injected.clogged_until = now + lasts;
                shared.fault(format!("clog link {a} -> {b} for {lasts} ms"));
            } else {
                // Swizzle: clog a random subset of nodes one by one; they unclog in
                // reverse order when it heals.
                let mut order: Vec<NodeId> = node_ids.to_vec();
                for i in (1..order.len()).rev() {
                    order.swap(i, rng.gen_range(0..=i));
                }
                order.truncate(rng.gen_range(1..=order.len().div_ceil(2)));
                for id in &order {
                    net.clog_node(*id);
                }
                let lasts = rng.gen_range(100..=3000);
                injected.swizzled = order.clone();
                injected.clogged_until = now + lasts;
                shared.fault(format!("swizzle-clog nodes {order:?} for {lasts} ms"));
            }
        }
        FaultKind::Loss if injected.loss_until == 0 => {
            let rate = rng.gen_range(0.005..0.15);
            net.update_config(|c| c.packet_loss_rate = rate);
            let lasts = rng.gen_range(500..=5000);
            injected.loss_until = now + lasts;
            shared.fault(format!("packet loss {rate:.3} for {lasts} ms"));
        }
        FaultKind::Latency if injected.latency_until == 0 => {
            let high = rng.gen_range(20..=800);
            net.update_config(|c| {
                c.send_latency = Duration::from_millis(1)..Duration::from_millis(high)
            });
            let lasts = rng.gen_range(500..=5000);
            injected.latency_until = now + lasts;
            shared.fault(format!("latency up to {high} ms for {lasts} ms"));
        }
        FaultKind::Corrupt => {
            let disk = &hosts[&victim].disk;
            let logs: Vec<PathBuf> = disk
                .file_paths()
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .collect();
            if logs.is_empty() {
                return;
            }
            let path = &logs[rng.gen_range(0..logs.len())];
            if let Some(at) = disk.flip_bit(path, rng.gen()) {
                shared.fault(format!(
                    "flip a bit of broker {victim}'s {} at byte {at}",
                    path.display()
                ));
            }
        }
        FaultKind::Misdirect if !injected.disk_faults.contains_key(&victim) => {
            let rates = DiskFaults {
                misdirect: rng.gen_range(0.01..0.2),
                ..DiskFaults::default()
            };
            hosts[&victim].disk.set_faults(rates, rng.gen());
            let lasts = rng.gen_range(50..=1000);
            injected.disk_faults.insert(victim, now + lasts);
            shared.fault(format!(
                "misdirected writes on broker {victim} ({:.3}) for {lasts} ms",
                rates.misdirect
            ));
        }
        FaultKind::DiskErrors => {
            let id = rng.gen_range(1..=brokers);
            if injected.disk_faults.contains_key(&id) {
                return;
            }
            let rates = DiskFaults {
                read_error: rng.gen_range(0.0..0.002),
                write_error: rng.gen_range(0.0..0.01),
                sync_error: rng.gen_range(0.0..0.05),
                no_space: rng.gen_range(0.0..0.01),
                misdirect: 0.0,
            };
            hosts[&id].disk.set_faults(rates, rng.gen());
            let lasts = rng.gen_range(50..=3000);
            injected.disk_faults.insert(id, now + lasts);
            shared.fault(format!(
                "disk errors on broker {id} {rates:?} for {lasts} ms"
            ));
        }
        FaultKind::SlowDisk => {
            let id = rng.gen_range(1..=brokers);
            if injected.slow_disks.contains_key(&id) {
                return;
            }
            // Every fsync pass of the broker's replication round takes this long, so
            // a crash can land between a round's writes and their fsync.
            let min_ms = rng.gen_range(1..=10);
            let max_ms = rng.gen_range(min_ms..=200);
            hosts[&id].disk.set_sync_latency_ms(min_ms, max_ms);
            let lasts = rng.gen_range(500..=8000);
            injected.slow_disks.insert(id, now + lasts);
            shared.fault(format!(
                "slow disk on broker {id}: fsync {min_ms}..={max_ms} ms for {lasts} ms"
            ));
        }
        _ => {}
    }
}

fn kill(
    shared: &Shared,
    handle: &Handle,
    hosts: &BTreeMap<u64, BrokerHost>,
    id: u64,
    rng: &mut impl Rng,
) {
    shared.brokers.lock().unwrap().remove(&id);
    handle.kill(hosts[&id].node.id());
    // The power goes with the process: some unsynced pages reach the disk, torn.
    hosts[&id].disk.crash_torn(rng.gen());
}

/// Ends the faults whose time is up (all of them with `all`).
fn heal_due(
    shared: &Shared,
    hosts: &BTreeMap<u64, BrokerHost>,
    net: &NetSim,
    injected: &mut Injected,
    now: u64,
    all: bool,
) {
    let handle = Handle::current();
    for (id, until) in injected.down.clone() {
        if now >= until {
            injected.down.remove(&id);
            handle.restart(hosts[&id].node.id());
            shared.event(format!("restart broker {id}"));
        }
    }
    for (id, until) in injected.paused.clone() {
        if now >= until {
            injected.paused.remove(&id);
            handle.resume(hosts[&id].node.id());
            shared.event(format!("resume broker {id}"));
        }
    }
    if (all || now >= injected.clogged_until)
        && (!injected.clogged.is_empty() || !injected.swizzled.is_empty())
    {
        for (a, b) in std::mem::take(&mut injected.clogged) {
            net.unclog_link(a, b);
        }
        for id in std::mem::take(&mut injected.swizzled).into_iter().rev() {
            net.unclog_node(id);
        }
        shared.event("network healed");
    }
    if injected.loss_until != 0 && (all || now >= injected.loss_until) {
        injected.loss_until = 0;
        net.update_config(|c| c.packet_loss_rate = 0.0);
        shared.event("packet loss over");
    }
    if injected.latency_until != 0 && (all || now >= injected.latency_until) {
        injected.latency_until = 0;
        net.update_config(|c| c.send_latency = Duration::from_millis(1)..Duration::from_millis(10));
        shared.event("latency back to normal");
    }
    for (id, until) in injected.disk_faults.clone() {
        if all || now >= until {
            injected.disk_faults.remove(&id);
            hosts[&id].disk.set_faults(DiskFaults::default(), 0);
            shared.event(format!("disk faults on broker {id} over"));
        }
    }
    for (id, until) in injected.slow_disks.clone() {
        if all || now >= until {
            injected.slow_disks.remove(&id);
            hosts[&id].disk.set_sync_latency_ms(0, 0);
            shared.event(format!("disk of broker {id} fast again"));
        }
    }
    if all {
        injected.wiped_catch_up = None;
    }
}

/// Brokers whose process ended on a storage failure: power-cycle and restart them (a
/// process supervisor would). The restart waits a little, as a real one does.
fn restart_failed(
    shared: &Shared,
    handle: &Handle,
    hosts: &BTreeMap<u64, BrokerHost>,
    injected: &mut Injected,
    now: u64,
    rng: &mut impl Rng,
) {
    let failed: Vec<u64> = std::mem::take(&mut *shared.failed.lock().unwrap())
        .into_iter()
        .collect();
    for id in failed {
        if injected.down.contains_key(&id) {
            continue;
        }
        kill(shared, handle, hosts, id, rng);
        let down = rng.gen_range(100..=2000);
        injected.down.insert(id, now.saturating_add(down));
        if now == u64::MAX {
            // Healing: restart at once.
            injected.down.remove(&id);
            handle.restart(hosts[&id].node.id());
        }
        shared.event(format!(
            "broker {id} power-cycled after its storage failure"
        ));
    }
}

/// The Raft commit index of every group on the brokers other than `victim`, taken as the
/// maximum over them; None if some broker is not running.
fn committed_elsewhere(shared: &Shared, victim: u64) -> Option<BTreeMap<String, u64>> {
    let mut committed = BTreeMap::new();
    for id in 1..=shared.settings.brokers {
        let broker = shared.broker(id)?;
        if id == victim {
            continue;
        }
        for (group, storage) in broker.node.replica_storages() {
            let commit = storage.lock().hard_state().commit;
            let entry = committed.entry(group).or_insert(0);
            *entry = (*entry).max(commit);
        }
    }
    Some(committed)
}

fn caught_up(shared: &Shared, injected: &mut Injected) -> bool {
    let Some((victim, committed, deadline)) = &injected.wiped_catch_up else {
        return true;
    };
    let done = Shared::now_ms() > *deadline
        || shared.broker(*victim).is_some_and(|broker| {
            let mine: BTreeMap<String, u64> = broker
                .node
                .replica_storages()
                .into_iter()
                .map(|(group, storage)| {
                    let last = storage.lock().last_index();
                    (group, last)
                })
                .collect();
            committed
                .iter()
                .all(|(group, commit)| mine.get(group).is_some_and(|last| last >= commit))
        });
    if done {
        injected.wiped_catch_up = None;
    }
    done
}

/// The leader of `topic`-`partition` and its leader epoch, as some live broker's image
/// says (None: no leader known).
fn image_leader(shared: &Shared, topic: &str, partition: i32) -> Option<(u64, i32)> {
    (1..=shared.settings.brokers)
        .find_map(|id| shared.broker(id))
        .and_then(|b| {
            b.node.with_image(|image| {
                image
                    .partition(topic, partition)
                    .map(|p| (p.leader, p.leader_epoch))
            })
        })
        .filter(|(leader, _)| *leader > 0)
        .map(|(leader, epoch)| (leader as u64, epoch))
}

/// Connects to `addr`, bounded by [`OP_TIMEOUT`].
async fn connect(addr: SocketAddr) -> Option<Client> {
    tokio::time::timeout(OP_TIMEOUT, Client::connect(addr))
        .await
        .ok()?
        .ok()
}

/// Every broker id once, starting from a random one (the order clients ask them in).
fn brokers_from_random(shared: &Shared, rng: &mut impl Rng) -> impl Iterator<Item = u64> {
    let brokers = shared.settings.brokers;
    let first = rng.gen_range(1..=brokers);
    (0..brokers).map(move |k| (first + k - 1) % brokers + 1)
}

/// Asks brokers in turn who leads `partition`; returns (leader, epoch).
async fn find_leader(shared: &Shared, partition: i32, rng: &mut impl Rng) -> Option<(u64, i64)> {
    for id in brokers_from_random(shared, rng) {
        let Some(mut client) = connect(kafka_addr(id)).await else {
            continue;
        };
        let Ok(Ok(response)) =
            tokio::time::timeout(OP_TIMEOUT, client.metadata(Some(&[TOPIC]))).await
        else {
            continue;
        };
        let found = response
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter())
            .find(|p| p.partition_index == partition && p.error_code == 0 && p.leader_id.0 > 0);
        if let Some(p) = found {
            let (leader, epoch) = (p.leader_id.0 as u64, p.leader_epoch as i64);
            shared.saw_leader(
                partition,
                epoch,
                leader,
                &format!("Metadata from broker {id}"),
            );
            return Some((leader, epoch));
        }
    }
    None
}

/// Topic changes (creations, partition additions, deletions) the admin task makes at most.
const MAX_ADMIN_OPS: u32 = 12;

/// A topic change the admin task makes.
#[derive(Debug, Clone)]
enum AdminOp {
    Create { name: String, partitions: i32 },
    AddPartitions { name: String, to: i32 },
    Delete { name: String },
}

impl AdminOp {
    fn name(&self) -> &str {
        match self {
            AdminOp::Create { name, .. }
            | AdminOp::AddPartitions { name, .. }
            | AdminOp::Delete { name, .. } => name,
        }
    }

    /// The next change, drawn from what is known to exist: a new topic, more partitions
    /// for a topic, a deletion, or a deleted topic's name created again.
    fn draw(rng: &mut impl Rng, history: &History, created: u32) -> AdminOp {
        let open = |name: &String| !history.frozen.contains(name);
        let topics: Vec<(&String, &i32)> = history.topics.iter().filter(|(n, _)| open(n)).collect();
        let deleted: Vec<&String> = history.deleted.iter().filter(|n| open(n)).collect();
        let partitions = rng.gen_range(1..=3);
        match rng.gen_range(0..20) {
            0..=4 if !topics.is_empty() => {
                let (name, from) = topics[rng.gen_range(0..topics.len())];
                AdminOp::AddPartitions {
                    name: name.clone(),
                    to: from + rng.gen_range(1..=2),
                }
            }
            5..=7 if !topics.is_empty() => {
                let (name, _) = topics[rng.gen_range(0..topics.len())];
                AdminOp::Delete { name: name.clone() }
            }
            8..=9 if !deleted.is_empty() => AdminOp::Create {
                name: deleted[rng.gen_range(0..deleted.len())].clone(),
                partitions,
            },
            _ => AdminOp::Create {
                name: format!("extra-{created}"),
                partitions,
            },
        }
    }
}

/// Changes topics while the faults run (CreateTopics, CreatePartitions, DeleteTopics to
/// a random broker, which forwards them to the metadata leader), and records each change
/// a broker acknowledged. A change is tried again until it is answered.
///
/// An attempt that got no definite answer (a timeout, a lost connection, or any error:
/// most can come after the record was proposed) may still take effect at any later time
/// (a paused broker resumes and runs it, as Kafka would): after one, no other change is
/// made to that name, so that only repeats of the same change can land late; on a
/// retry, "already exists" (creation), "the count must be larger" (partitions) and
/// "unknown topic" (deletion) then mean an earlier attempt went through. The same answer
/// with no such attempt before contradicts what the brokers acknowledged
/// (`admin-answers`).
async fn admin_loop(shared: Arc<Shared>) {
    let mut rng = thread_rng();
    let mut created = 0u32;
    for _ in 0..MAX_ADMIN_OPS {
        if shared.stop_load.load(Ordering::Relaxed) {
            break;
        }
        let op = AdminOp::draw(&mut rng, &shared.history.lock().unwrap(), created);
        if matches!(&op, AdminOp::Create { name, .. } if *name == format!("extra-{created}")) {
            created += 1;
        }
        let name = op.name().to_string();
        shared
            .history
            .lock()
            .unwrap()
            .uncertain
            .insert(name.clone());
        let done = loop {
            if shared.stop_load.load(Ordering::Relaxed) {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(rng.gen_range(500..=3000))).await;
            let id = rng.gen_range(1..=shared.settings.brokers);
            let Some(mut client) = connect(kafka_addr(id)).await else {
                continue;
            };
            use kafka_protocol::ResponseError as E;
            let (call, went_through_before) = match &op {
                AdminOp::Create { name, partitions } => (
                    tokio::time::timeout(OP_TIMEOUT, client.create_topic(name, *partitions, &[]))
                        .await,
                    E::TopicAlreadyExists,
                ),
                AdminOp::AddPartitions { name, to, .. } => (
                    tokio::time::timeout(OP_TIMEOUT, client.create_partitions(name, *to)).await,
                    E::InvalidPartitions,
                ),
                AdminOp::Delete { name, .. } => (
                    tokio::time::timeout(OP_TIMEOUT, client.delete_topic(name)).await,
                    E::UnknownTopicOrPartition,
                ),
            };
            let code = match &call {
                Ok(Ok(())) => break true,
                Ok(Err(e)) => e.downcast_ref::<E>().copied(),
                Err(_) => None,
            };
            let frozen = shared.history.lock().unwrap().frozen.contains(&name);
            if code == Some(went_through_before) {
                if frozen {
                    break true;
                }
                shared.report(violation(
                    "admin-answers",
                    format!("{op:?} via broker {id}: {went_through_before:?}, with every earlier change to the topic acknowledged"),
                ));
                break false;
            }
            match &call {
                Ok(Err(e)) => shared.event(format!("{op:?} via broker {id}: {e:#}")),
                _ => shared.event(format!("{op:?} via broker {id}: timed out")),
            }
            // Most errors can come after the record was proposed (a timeout waiting for
            // it, a broker stopping): taken as no definite answer, all of them.
            shared.history.lock().unwrap().frozen.insert(name.clone());
        };
        if !done {
            break;
        }
        shared.event(format!("{op:?} acknowledged"));
        let mut history = shared.history.lock().unwrap();
        history.uncertain.remove(&name);
        match op {
            AdminOp::Create { name, partitions } => {
                history.deleted.remove(&name);
                history.topics.insert(name, partitions);
            }
            AdminOp::AddPartitions { name, to } => {
                history.topics.insert(name, to);
            }
            AdminOp::Delete { name } => {
                history.topics.remove(&name);
                history.deleted.insert(name);
            }
        }
    }
}

/// After healing: every topic whose creation was acknowledged is in every broker's
/// metadata with its partitions (`topics-durable`), and each of its partitions elects a
/// leader and takes an acks=all write (`liveness`); every topic whose deletion was
/// acknowledged is gone from every broker's metadata and no broker hosts a replica of
/// it any more (`topics-durable`).
async fn check_created_topics(shared: &Shared, deadline: u64) -> Result<(), Violation> {
    let (created, deleted) = {
        let history = shared.history.lock().unwrap();
        let known = |name: &String| !history.uncertain.contains(name);
        let created: BTreeMap<String, i32> = history
            .topics
            .iter()
            .filter(|(name, _)| known(name))
            .map(|(name, partitions)| (name.clone(), *partitions))
            .collect();
        let deleted: Vec<String> = history
            .deleted
            .iter()
            .filter(|n| known(n))
            .cloned()
            .collect();
        (created, deleted)
    };
    for name in deleted {
        loop {
            let left = (1..=shared.settings.brokers).find_map(|id| {
                let broker = shared.broker(id)?;
                if broker
                    .node
                    .with_image(|image| image.topics.contains_key(&name))
                {
                    return Some(format!("broker {id} still has it in its metadata"));
                }
                let prefix = format!("{name}-");
                broker
                    .node
                    .replica_storages()
                    .into_iter()
                    .map(|(group, _)| group)
                    .find(|group| {
                        group
                            .strip_prefix(&prefix)
                            .is_some_and(|p| p.parse::<i32>().is_ok())
                    })
                    .map(|group| format!("broker {id} still hosts replica {group}"))
            });
            let Some(left) = left else {
                shared.event(format!("topic {name}: deleted everywhere"));
                break;
            };
            if Shared::now_ms() > deadline {
                return Err(violation(
                    "topics-durable",
                    format!("topic {name} was deleted; after healing {left}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for (name, partitions) in created {
        let mut written = BTreeSet::new();
        loop {
            let missing = (1..=shared.settings.brokers).find_map(|id| {
                let broker = shared.broker(id)?;
                let count = broker
                    .node
                    .with_image(|image| image.topics.get(&name).map(|t| t.partitions.len() as i32));
                (count != Some(partitions)).then_some((id, count))
            });
            if missing.is_none() {
                for partition in 0..partitions {
                    if written.contains(&partition) {
                        continue;
                    }
                    let leader = shared.broker(1).and_then(|b| {
                        b.node.with_image(|image| {
                            image.topics.get(&name).and_then(|t| {
                                t.partitions
                                    .get(partition as usize)
                                    .map(|p| p.leader)
                                    .filter(|l| *l > 0)
                            })
                        })
                    });
                    let Some(leader) = leader else { continue };
                    let Some(mut client) = connect(kafka_addr(leader as u64)).await else {
                        continue;
                    };
                    let record = [(None, Some(Bytes::from(format!("{name}-{partition}"))))];
                    let acked = tokio::time::timeout(
                        OP_TIMEOUT,
                        client.produce(&name, partition, &record, strand::clock::now_ms(), -1),
                    )
                    .await;
                    if matches!(acked, Ok(Ok(Some(_)))) {
                        written.insert(partition);
                    }
                }
                if written.len() as i32 == partitions {
                    shared.event(format!("topic {name}: every partition took a write"));
                    break;
                }
            }
            if Shared::now_ms() > deadline {
                return Err(match missing {
                    Some((id, count)) => violation(
                        "topics-durable",
                        format!(
                            "topic {name} was created with {partitions} partitions; broker {id} has {count:?} after healing"
                        ),
                    ),
                    None => violation(
                        "liveness",
                        format!(
                            "topic {name}: partitions {:?} of {partitions} took no acks=all write after healing",
                            (0..partitions).filter(|p| !written.contains(p)).collect::<Vec<_>>()
                        ),
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// One producer per partition: batches of unique values, acks drawn per batch, one
/// request in flight, a new leader looked up after any error.
async fn produce_loop(shared: Arc<Shared>, partition: i32) {
    let mut rng = thread_rng();
    let mut connection: Option<(u64, Client)> = None;
    let mut batch_no = 0u64;
    while !shared.stop_load.load(Ordering::Relaxed) && batch_no < MAX_BATCHES_PER_PRODUCER {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..=40))).await;
        if connection.is_none() {
            let Some((leader, _)) = find_leader(&shared, partition, &mut rng).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            connection = connect(kafka_addr(leader)).await.map(|c| (leader, c));
            if connection.is_none() {
                continue;
            }
        }
        let (leader, client) = connection.as_mut().expect("connected above");
        let records = rng.gen_range(1..=shared.settings.max_batch_records);
        let values: Vec<String> = (0..records)
            .map(|i| format!("p{partition}-{batch_no:06}-{i}"))
            .collect();
        batch_no += 1;
        let acks: i16 = match rng.gen_range(0..10) {
            0 => 0,
            1 | 2 => 1,
            _ => -1,
        };
        let batch = encode_batch(
            &values
                .iter()
                .map(|v| (None, Some(Bytes::from(v.clone()))))
                .collect::<Vec<_>>(),
            // Record time now: a batch stamped 1970 would be deleted by time retention.
            strand::clock::now_ms(),
            kafka_protocol::records::Compression::None,
        )
        .expect("encode a batch");
        {
            let mut history = shared.history.lock().unwrap();
            for v in &values {
                history.sent.insert(v.clone(), partition);
            }
        }
        let result = tokio::time::timeout(
            OP_TIMEOUT,
            client.produce_batch(TOPIC, partition, batch, acks),
        )
        .await;
        match result {
            Ok(Ok(Some(offset))) => {
                shared
                    .records_acked
                    .fetch_add(values.len() as u64, Ordering::Relaxed);
                shared.event(format!(
                    "p{partition} batch {} acks={acks} acked at {offset} by broker {leader}",
                    batch_no - 1
                ));
                let mut history = shared.history.lock().unwrap();
                history.acks.push(Ack {
                    at_ms: Shared::now_ms(),
                    partition,
                    offset,
                    acks,
                    values,
                });
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                shared.event(format!(
                    "p{partition} batch {} refused: {e:#}",
                    batch_no - 1
                ));
                connection = None;
            }
            Err(_) => {
                shared.event(format!("p{partition} batch {} timed out", batch_no - 1));
                connection = None;
            }
        }
    }
}

/// One consumer per partition: follows the high watermark from offset 0, now and then
/// seeking back to re-read, checking every answer against what was seen before.
async fn consume_loop(shared: Arc<Shared>, partition: i32) {
    let mut rng = thread_rng();
    let mut connection: Option<(u64, Client)> = None;
    let mut position = 0i64;
    while !shared.stop_load.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(10..=200))).await;
        if connection.is_none() {
            let Some((leader, _)) = find_leader(&shared, partition, &mut rng).await else {
                continue;
            };
            connection = connect(kafka_addr(leader)).await.map(|c| (leader, c));
        }
        let Some((leader, client)) = connection.as_mut() else {
            continue;
        };
        let leader = *leader;
        if rng.gen_bool(0.05) {
            position = rng.gen_range(0..=position);
        }
        let fetched = tokio::time::timeout(
            OP_TIMEOUT,
            client.fetch(
                TOPIC,
                partition,
                position,
                100,
                shared.settings.fetch_max_bytes,
            ),
        )
        .await;
        let fetched = match fetched {
            Err(_) => {
                connection = None;
                continue;
            }
            Ok(Err(e)) => {
                if e.root_cause().downcast_ref::<std::io::Error>().is_none() {
                    shared.report(violation(
                        "corrupt-served",
                        format!("p{partition} fetch at {position}: {e:#}"),
                    ));
                }
                connection = None;
                continue;
            }
            Ok(Ok(fetched)) => fetched,
        };
        if let Some(error) = fetched.error {
            if error == kafka_protocol::ResponseError::OffsetOutOfRange {
                position = fetched.log_start_offset.max(0);
            }
            connection = None;
            continue;
        }
        if let (Some(first), Some(end)) = (fetched.records.first(), fetched.records.last()) {
            shared.event(format!(
                "p{partition} fetched at {position} from broker {leader}: offsets {}..={} (hw {})",
                first.offset, end.offset, fetched.high_watermark
            ));
        }
        let mut last = position - 1;
        for record in fetched.records.iter().filter(|r| r.offset >= position) {
            if record.offset <= last {
                shared.report(violation(
                    "consumer-order",
                    format!("p{partition}: offset {} after {last}", record.offset),
                ));
            }
            if record.offset >= fetched.high_watermark {
                shared.report(violation(
                    "fetch-within-high-watermark",
                    format!(
                        "p{partition}: offset {} at or above the high watermark {}",
                        record.offset, fetched.high_watermark
                    ),
                ));
            }
            last = record.offset;
            let value = record
                .value
                .as_ref()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            record_read(&shared, partition, record.offset, &value);
        }
        if let Some(batch) = fetched.batches.last() {
            position = position.max(batch.next_offset);
        }
    }
}

/// Checks one record a consumer read (`no-invented-records`, `consistent-reads`) and
/// remembers it; false when it is not a record that was sent there.
fn record_read(shared: &Shared, partition: i32, offset: i64, value: &str) -> bool {
    let mut history = shared.history.lock().unwrap();
    if history.sent.get(value) != Some(&partition) {
        drop(history);
        shared.report(violation(
            "no-invented-records",
            format!("p{partition} offset {offset}: {value:?} was never sent here"),
        ));
        return false;
    }
    let seen = history
        .reads
        .entry((partition, offset))
        .or_insert_with(|| value.to_string())
        .clone();
    drop(history);
    if seen != value {
        shared.report(violation(
            "consistent-reads",
            format!("p{partition} offset {offset}: read {seen:?} before, {value:?} now"),
        ));
    }
    true
}

/// After healing: has every partition taken an acks=all write since?
fn writes_resumed(shared: &Shared) -> bool {
    let healed = shared.healed_at_ms.load(Ordering::Relaxed);
    let history = shared.history.lock().unwrap();
    let mut resumed = BTreeSet::new();
    for ack in history.acks.iter().rev() {
        if ack.at_ms < healed {
            break;
        }
        if ack.acks == -1 {
            resumed.insert(ack.partition);
        }
    }
    resumed.len() as i32 == shared.settings.partitions
}

/// Every replica's committed log of every partition, once they converge.
type Logs = BTreeMap<i32, BTreeMap<i64, Bytes>>;

async fn converge(
    shared: &Shared,
    deadline: u64,
    mut each_step: impl FnMut(),
) -> Result<Logs, Violation> {
    let settings = &shared.settings;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        each_step();
        let why = match replicas_identical(shared) {
            Ok(logs) => return Ok(logs),
            Err(e) => e,
        };
        if Shared::now_ms() > deadline {
            return Err(violation(
                "liveness",
                format!(
                    "replicas of {} brokers did not converge after healing: {why}",
                    settings.brokers
                ),
            ));
        }
    }
}

/// [`converge`] for any topic.
async fn converge_topic(
    shared: &Shared,
    topic: &str,
    partitions: i32,
    deadline: u64,
    mut each_step: impl FnMut(),
) -> Result<Logs, Violation> {
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        each_step();
        let why = match replicas_identical_of(shared, topic, partitions) {
            Ok(logs) => return Ok(logs),
            Err(e) => e,
        };
        if Shared::now_ms() > deadline {
            return Err(violation(
                "liveness",
                format!("replicas of {topic} did not converge after healing: {why}"),
            ));
        }
    }
}

/// Ok with the common logs when every broker holds every replica with the same high
/// watermark and the same batches below it.
fn replicas_identical(shared: &Shared) -> Result<Logs, String> {
    replicas_identical_of(shared, TOPIC, shared.settings.partitions)
}

/// [`replicas_identical`] for any topic of `partitions` partitions.
fn replicas_identical_of(shared: &Shared, topic: &str, partitions: i32) -> Result<Logs, String> {
    let settings = &shared.settings;
    let mut result = Logs::new();
    for partition in 0..partitions {
        let mut first: Option<(u64, BTreeMap<i64, Bytes>)> = None;
        let mut hws: BTreeMap<u64, i64> = BTreeMap::new();
        // The partition's replicas, as the metadata says (with 5 brokers, 3 of them).
        let any = (1..=settings.brokers)
            .find_map(|id| shared.broker(id))
            .ok_or("no broker is running")?;
        let replicas: Vec<u64> = any.node.with_image(|image| {
            image
                .topics
                .get(topic)
                .and_then(|t| t.partitions.get(partition as usize))
                .map(|p| p.replicas.iter().map(|r| *r as u64).collect())
                .unwrap_or_default()
        });
        if replicas.is_empty() {
            return Err(format!("p{partition} has no replicas in the metadata"));
        }
        for id in replicas {
            let broker = shared
                .broker(id)
                .ok_or(format!("broker {id} is not running"))?;
            let replica = broker
                .node
                .replica(topic, partition)
                .ok_or(format!("broker {id} has no replica of p{partition}"))?;
            let hw = replica.high_watermark();
            let storage = replica.storage.lock();
            // A follower may keep an uncommitted tail from an older term that no append
            // has overwritten yet (legal in Raft, never served): only what lies below the
            // high watermark must agree, and every replica's high watermark must match.
            if let Some((first_id, first_hw)) = hws.first_key_value().map(|(k, v)| (*k, *v)) {
                if first_hw != hw {
                    return Err(format!(
                        "p{partition}: broker {id} high watermark {hw}, broker {first_id} {first_hw}"
                    ));
                }
            }
            hws.insert(id, hw);
            if storage.log().log_end_offset() < hw {
                return Err(format!(
                    "broker {id} p{partition}: log end {} below the high watermark {hw}",
                    storage.log().log_end_offset()
                ));
            }
            let mut log = BTreeMap::new();
            let mut offset = storage.log().log_start_offset();
            while offset < hw {
                let bytes = storage
                    .log()
                    .read(offset, 1 << 20, hw, true)
                    .map_err(|e| format!("broker {id} p{partition} read at {offset}: {e}"))?;
                if bytes.is_empty() {
                    return Err(format!(
                        "broker {id} p{partition}: nothing at {offset} below {hw}"
                    ));
                }
                let mut at = 0;
                while at < bytes.len() {
                    let header = strand::log::batch::parse_whole(&bytes[at..])
                        .map_err(|e| format!("broker {id} p{partition} at {offset}: {e}"))?;
                    log.insert(
                        header.base_offset,
                        bytes.slice(at..at + header.size_bytes()),
                    );
                    offset = header.next_offset();
                    at += header.size_bytes();
                }
            }
            drop(storage);
            match &first {
                None => first = Some((id, log)),
                Some((first_id, first_log)) => {
                    if first_log.len() != log.len() || *first_log != log {
                        // Different lengths may still be converging; different bytes at
                        // one offset never are.
                        for (offset, batch) in &log {
                            if let Some(other) = first_log.get(offset) {
                                if other != batch {
                                    let show = |b: &Bytes| {
                                        strand::log::batch::parse_whole(b)
                                            .map(|h| format!("{h:?}"))
                                            .unwrap_or_else(|e| e.to_string())
                                    };
                                    return Err(format!(
                                        "DIVERGED: p{partition} offset {offset}: broker {id} holds {}, broker {first_id} holds {}",
                                        show(batch),
                                        show(other)
                                    ));
                                }
                            }
                        }
                        return Err(format!(
                            "p{partition}: broker {id} holds {} batches, broker {first_id} {}",
                            log.len(),
                            first_log.len()
                        ));
                    }
                }
            }
        }
        result.insert(partition, first.map(|(_, log)| log).unwrap_or_default());
    }
    Ok(result)
}

/// The checks over the whole history against the converged logs.
fn check_history(shared: &Shared, logs: &Logs) -> Result<(), Violation> {
    let history = shared.history.lock().unwrap();
    let mut at: BTreeMap<(i32, i64), String> = BTreeMap::new();
    for (partition, log) in logs {
        for batch in log.values() {
            let records = decode_records(batch).map_err(|e| {
                violation(
                    "corrupt-served",
                    format!("p{partition}: a committed batch: {e:#}"),
                )
            })?;
            for record in records {
                let value = record
                    .value
                    .map(|v| String::from_utf8_lossy(&v).into_owned())
                    .unwrap_or_default();
                if history.sent.get(&value) != Some(partition) {
                    return Err(violation(
                        "no-invented-records",
                        format!(
                            "p{partition} offset {}: {value:?} was never sent here",
                            record.offset
                        ),
                    ));
                }
                at.insert((*partition, record.offset), value);
            }
        }
    }
    let mut where_is: BTreeMap<&str, (i32, i64)> = BTreeMap::new();
    for ((partition, offset), value) in &at {
        if let Some((p, o)) = where_is.insert(value, (*partition, *offset)) {
            return Err(violation(
                "no-duplicates",
                format!("{value:?} at p{p} offset {o} and at p{partition} offset {offset}"),
            ));
        }
    }
    for ((partition, offset), value) in &history.reads {
        if at.get(&(*partition, *offset)) != Some(value) {
            return Err(violation(
                "consistent-reads",
                format!(
                    "p{partition} offset {offset} was read as {value:?}; the final log has {:?}",
                    at.get(&(*partition, *offset))
                ),
            ));
        }
    }
    let mut last_acked: BTreeMap<i32, i64> = BTreeMap::new();
    for ack in &history.acks {
        let found = ack
            .values
            .iter()
            .enumerate()
            .all(|(i, v)| at.get(&(ack.partition, ack.offset + i as i64)) == Some(v));
        if !found {
            if ack.acks == -1 {
                return Err(violation(
                    "acked-durable",
                    format!(
                        "p{} batch {:?}.. acknowledged (acks=all) at offset {} is not there (found {:?})",
                        ack.partition,
                        ack.values.first(),
                        ack.offset,
                        at.get(&(ack.partition, ack.offset))
                    ),
                ));
            }
            continue;
        }
        let last = last_acked.entry(ack.partition).or_insert(-1);
        if ack.offset <= *last {
            return Err(violation(
                "ack-order",
                format!(
                    "p{}: a batch acknowledged later lies at {} , before {}",
                    ack.partition, ack.offset, *last
                ),
            ));
        }
        *last = ack.offset;
    }
    shared.event(format!(
        "checked {} acknowledgements, {} reads, {} records in the final logs",
        history.acks.len(),
        history.reads.len(),
        at.len()
    ));
    Ok(())
}
