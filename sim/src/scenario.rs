//! One simulated run: a broker node, a client node, two crashes and restarts.
//!
//! Everything here runs inside one madsim runtime seeded with the run's seed: task
//! scheduling, network latency, simulated time, and every random choice the workload
//! makes (batch sizes, values, topic and broker settings, when the broker is killed).
//! The broker's disk is a [`MemoryStorage`] created outside the node, so it outlives the
//! node's kill; `crash()` then drops every write that was not fsynced.
//!
//! Round 1 (quiescent crash): create a topic, produce `records` records with acks=all,
//! read them all back, add an acks=1 tail, kill the broker while the client is idle,
//! crash the storage, restart, verify, append, verify.
//! Round 2 (crash under load): a producer mixing acks=all and acks=1 batches; the broker
//! is killed at a random moment (usually with a request in flight), then the same checks.
//!
//! Invariants (a violation fails the seed and names the invariant):
//! - `produce-succeeds`: without injected faults every request is answered without error.
//! - `ack-offsets-increase`: one producer on one partition gets base offsets that
//!   never overlap or go back (a leader's election takes offsets with its control
//!   batch, so there may be gaps; `no-gaps` checks they hold control batches).
//! - `fetch-succeeds`, `fetch-within-high-watermark`, `no-duplicates`, `no-gaps`,
//!   `fetch-makes-progress`, `log-start-offset`: a full read of the partition returns
//!   batches covering every offset from 0 below the high watermark exactly once, in
//!   order; every offset without a record lies in a control batch.
//! - `acked-readable` (before any crash): the log is exactly the acknowledged records.
//! - `acked-durable` (after a crash): every record acknowledged with acks=all, every
//!   record before it, and every record read back after an earlier restart is still
//!   there, at its offset, with its value.
//! - `no-invented-records` (after a crash): anything past that is a prefix of what was
//!   sent with acks=1 or was in flight (may be lost, must not be changed).
//! - `append-after-recovery`: a produce after the restart lands at the recovered log
//!   end and reads back.
//! - `broker-restarts`: the broker opens its crashed data directory and serves again.
//! - `no-panic`, `time-limit`: nothing panics; the run ends within the simulated time
//!   limit (a deadlock shows up as madsim's "no events" panic or as the time limit).

use crate::trace::{fnv1a, hash_bytes, Trace};
use bytes::Bytes;
use madsim::rand::{thread_rng, Rng};
use madsim::runtime::{Handle, NodeHandle, Runtime};
use madsim::time::TimeHandle;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use strand::broker::Broker;
use strand::client::{Client, SimpleRecord};
use strand::config::BrokerConfig;
use strand::storage::{MemoryStorage, Storage};
use tokio::net::TcpListener;

const BROKER_IP: [u8; 4] = [10, 0, 0, 1];
const CLIENT_IP: [u8; 4] = [10, 0, 0, 2];
const PORT: u16 = 9092;
const TOPIC: &str = "sim-topic";
const DATA_DIR: &str = "/data";

/// Simulated time the whole run may take.
const TIME_LIMIT: Duration = Duration::from_secs(600);
/// Bound on every single client request.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnection attempts after the restart, and the pause between two of them.
const CONNECT_ATTEMPTS: u32 = 50;
const CONNECT_PAUSE: Duration = Duration::from_millis(200);
/// Bound on the number of fetch requests of one full read.
const MAX_FETCH_ROUNDS: usize = 100_000;
const FETCH_MAX_BYTES: i32 = 64 * 1024;

pub struct Options {
    pub records: usize,
    /// Echo every traced event on stderr.
    pub trace: bool,
    /// Brokers in the cluster scenario (3 or 5).
    pub brokers: u64,
    /// Simulated seconds of faults and load in the cluster scenario (0: its default).
    pub sim_seconds: u64,
    /// The fault kinds switched on.
    pub faults: crate::faults::Faults,
    /// The planted bug to switch on (`planted-bugs` builds only).
    pub planted: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

fn violation(invariant: &'static str, detail: impl Into<String>) -> Violation {
    Violation {
        invariant,
        detail: detail.into(),
    }
}

pub struct Report {
    pub seed: u64,
    pub sim_ms: u128,
    pub records_acked: u64,
    pub digest: u64,
    pub violation: Option<Violation>,
    /// Events the trace recorded.
    pub events: u64,
    /// Faults injected (kills, partitions, disk faults, ...).
    pub faults_injected: u64,
    /// The last events before the end (the failure), oldest first.
    pub last_events: Vec<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.violation.is_none()
    }

    pub fn line(&self) -> String {
        format!(
            "seed={} outcome={} sim_ms={} events={} faults={} records_acked={} digest={:016x}",
            self.seed,
            if self.passed() { "pass" } else { "fail" },
            self.sim_ms,
            self.events,
            self.faults_injected,
            self.records_acked,
            self.digest
        )
    }
}

/// State shared by the supervisor, the broker node and the client node.
struct Shared {
    trace: Mutex<Trace>,
    broker_errors: Mutex<Vec<String>>,
    incarnations: AtomicU64,
    records_acked: AtomicU64,
}

impl Shared {
    fn event(&self, event: impl AsRef<str>) {
        let ns = TimeHandle::current().elapsed().as_nanos();
        self.trace.lock().unwrap().record(ns, event.as_ref());
    }

    fn broker_errors(&self) -> String {
        let errors = self.broker_errors.lock().unwrap();
        if errors.is_empty() {
            "none".into()
        } else {
            errors.join("; ")
        }
    }
}

/// Settings drawn once per seed from the simulator's RNG.
#[derive(Debug, Clone)]
struct Settings {
    checkpoint_interval_ms: u64,
    retention_check_interval_ms: u64,
    segment_bytes: u64,
    index_interval_bytes: u64,
    max_batch: usize,
    max_value_padding: usize,
}

pub(crate) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Runs one seed to completion and reports what happened.
pub fn run_seed(seed: u64, options: &Options) -> Report {
    // The runtime must exist before anything builds a HashMap on this thread: creating it
    // seeds std's hash keys from `seed`.
    let mut runtime = Runtime::with_seed_and_config(seed, madsim::Config::default());
    runtime.set_time_limit(TIME_LIMIT);
    init_logging();
    let shared = Arc::new(Shared {
        trace: Mutex::new(Trace::new(options.trace)),
        broker_errors: Mutex::new(Vec::new()),
        incarnations: AtomicU64::new(0),
        records_acked: AtomicU64::new(0),
    });
    let records = options.records;
    let outcome = {
        let shared = shared.clone();
        std::panic::catch_unwind(AssertUnwindSafe(|| {
            runtime.block_on(async move {
                let result = supervise(seed, records, shared.clone()).await;
                let sim_ms = TimeHandle::current().elapsed().as_millis();
                (result, sim_ms)
            })
        }))
    };
    let (violation, sim_ms) = match outcome {
        Ok((Ok(()), sim_ms)) => (None, sim_ms),
        Ok((Err(v), sim_ms)) => (Some(v), sim_ms),
        Err(payload) => {
            let text = panic_text(payload.as_ref());
            // The clock cannot be read after the unwind: the time limit, or the latest event.
            let (invariant, sim_ms) = if text.contains("time limit exceeded") {
                ("time-limit", TIME_LIMIT.as_millis())
            } else {
                (
                    "no-panic",
                    shared.trace.lock().unwrap().last_sim_ns / 1_000_000,
                )
            };
            (Some(violation(invariant, text)), sim_ms)
        }
    };
    if let Some(v) = &violation {
        // Part of the digest too: the same seed must fail the same way.
        let text = format!("violation {}: {}", v.invariant, v.detail);
        let mut trace = shared.trace.lock().unwrap();
        let ns = trace.last_sim_ns;
        trace.record(ns, &text);
    }
    let (digest, events, last_events) = {
        let trace = shared.trace.lock().unwrap();
        (trace.digest(), trace.events(), trace.last_events())
    };
    // A runtime that unwound may be in any state: do not run its destructors.
    if violation.is_some() {
        std::mem::forget(runtime);
    }
    Report {
        seed,
        sim_ms,
        records_acked: shared.records_acked.load(Ordering::Relaxed),
        digest,
        violation,
        events,
        faults_injected: shared
            .incarnations
            .load(Ordering::Relaxed)
            .saturating_sub(1),
        last_events,
    }
}

/// Turns the broker's log lines on when RUST_LOG is set. The subscriber is built on a
/// helper thread: its filter creates hash maps, and on the simulation's thread each new
/// map advances std's seeded hash keys, which would change every later map's iteration
/// order (raft-rs iterates its progress map when it broadcasts) and so the run.
pub(crate) fn init_logging() {
    if let Ok(filter) = std::env::var("RUST_LOG") {
        let _ = std::thread::spawn(move || {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_writer(std::io::stderr)
                .try_init();
        })
        .join();
    }
}

/// The supervisor: builds the nodes, runs the workload phases, kills and restarts.
async fn supervise(seed: u64, records: usize, shared: Arc<Shared>) -> Result<(), Violation> {
    let handle = Handle::current();
    let mut rng = thread_rng();
    let settings = Settings {
        checkpoint_interval_ms: rng.gen_range(50..=5000),
        retention_check_interval_ms: rng.gen_range(100..=30_000),
        segment_bytes: rng.gen_range(1024..=64 * 1024),
        index_interval_bytes: rng.gen_range(0..=4096),
        max_batch: rng.gen_range(1..=100),
        max_value_padding: rng.gen_range(0..=300),
    };
    shared.event(format!("seed {seed} settings {settings:?}"));

    let storage = MemoryStorage::new();
    let broker_node = {
        let storage = storage.clone();
        let shared = shared.clone();
        let settings = settings.clone();
        handle
            .create_node()
            .name("broker")
            .ip(BROKER_IP.into())
            .init(move || broker_main(seed, storage.clone(), settings.clone(), shared.clone()))
            .build()
    };
    let client_node = handle
        .create_node()
        .name("client")
        .ip(CLIENT_IP.into())
        .build();

    // Round 1 (quiescent crash): produce with acks=all, read everything back, add an
    // acks=1 tail, then kill the broker at a random moment while the client is idle.
    let phase1 = {
        let shared = shared.clone();
        let settings = settings.clone();
        client_node.spawn(async move { produce_phase(seed, records, settings, shared).await })
    };
    let written = phase1
        .await
        .map_err(|e| violation("no-panic", format!("client task: {e}")))??;
    let before_kill = Duration::from_millis(rng.gen_range(0..=2500));
    tokio::time::sleep(before_kill).await;
    shared.event(format!(
        "round 1: kill the broker {before_kill:?} after the client went idle"
    ));
    crash_and_restart(&handle, &broker_node, &storage, &shared, &mut rng).await;
    let written = verify_on(&client_node, seed, written, &settings, &shared, "round 1").await?;

    // Round 2 (crash under load): a producer mixing acks=all and acks=1 batches, and the
    // broker killed at a random moment, usually with a request in flight.
    let progress = Arc::new(Mutex::new(written));
    let load = {
        let shared = shared.clone();
        let settings = settings.clone();
        let progress = progress.clone();
        let extra = rng.gen_range(records / 2..=records).max(1);
        client_node.spawn(async move { load_phase(seed, extra, settings, progress, shared).await })
    };
    tokio::pin!(load);
    let window = Duration::from_millis(rng.gen_range(0..=400));
    let finished = tokio::select! {
        biased;
        result = &mut load => Some(result),
        _ = tokio::time::sleep(window) => None,
    };
    match finished {
        Some(result) => {
            result.map_err(|e| violation("no-panic", format!("client task: {e}")))??;
            tokio::time::sleep(window).await;
            shared.event(format!(
                "round 2: the load ended first; kill the broker at {window:?}"
            ));
        }
        None => shared.event(format!("round 2: kill the broker under load at {window:?}")),
    }
    // The client stops with the broker: whatever it had in flight is neither acknowledged
    // nor refused, so it counts as the tail (may be lost, must not be altered).
    load.abort();
    crash_and_restart(&handle, &broker_node, &storage, &shared, &mut rng).await;
    let written = progress.lock().unwrap().clone();
    verify_on(&client_node, seed, written, &settings, &shared, "round 2").await?;
    shared.event("done");
    Ok(())
}

/// Kills the broker node, drops every unsynced write, and restarts the node after a
/// random pause.
async fn crash_and_restart(
    handle: &Handle,
    broker_node: &NodeHandle,
    storage: &MemoryStorage,
    shared: &Shared,
    rng: &mut impl Rng,
) {
    handle.kill(broker_node.id());
    storage.crash();
    shared.event(format!(
        "broker killed, unsynced writes dropped: {} files remain",
        storage.file_paths().len()
    ));
    let down = Duration::from_millis(rng.gen_range(0..=1000));
    tokio::time::sleep(down).await;
    shared.event(format!("restart the broker after {down:?} down"));
    handle.restart(broker_node.id());
}

/// Runs [`verify_phase`] on the client node.
async fn verify_on(
    client_node: &NodeHandle,
    seed: u64,
    written: Written,
    settings: &Settings,
    shared: &Arc<Shared>,
    round: &'static str,
) -> Result<Written, Violation> {
    let shared = shared.clone();
    let settings = settings.clone();
    client_node
        .spawn(async move { verify_phase(seed, round, written, settings, shared).await })
        .await
        .map_err(|e| violation("no-panic", format!("client task: {e}")))?
}

/// The broker node's init task: runs again on every restart.
async fn broker_main(seed: u64, storage: MemoryStorage, settings: Settings, shared: Arc<Shared>) {
    let incarnation = shared.incarnations.fetch_add(1, Ordering::Relaxed);
    let config = BrokerConfig {
        node_id: 1,
        listen: SocketAddr::from(([0, 0, 0, 0], PORT)),
        advertised_host: std::net::Ipv4Addr::from(BROKER_IP).to_string(),
        advertised_port: PORT as i32,
        data_dir: PathBuf::from(DATA_DIR),
        recovery_checkpoint_interval_ms: settings.checkpoint_interval_ms,
        retention_check_interval_ms: settings.retention_check_interval_ms,
        seed: Some(splitmix64(seed ^ splitmix64(incarnation))),
        ..BrokerConfig::default()
    };
    let storage: Arc<dyn Storage> = Arc::new(storage);
    let broker = match Broker::open(config.clone(), storage, None).await {
        Ok(broker) => broker,
        Err(e) => {
            let message = format!("incarnation {incarnation}: Broker::open failed: {e}");
            shared.event(&message);
            shared.broker_errors.lock().unwrap().push(message);
            return;
        }
    };
    let listener = match TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            let message = format!("incarnation {incarnation}: bind {}: {e}", config.listen);
            shared.event(&message);
            shared.broker_errors.lock().unwrap().push(message);
            return;
        }
    };
    broker.start_background_tasks();
    shared.event(format!(
        "broker incarnation {incarnation} serving, cluster id {}",
        broker.cluster_id()
    ));
    strand::protocol::server::serve(broker, listener).await;
}

fn broker_addr() -> SocketAddr {
    SocketAddr::from((BROKER_IP, PORT))
}

/// Awaits `future` for at most [`OP_TIMEOUT`]; a client error becomes `invariant`.
async fn op<T, E: std::fmt::Display>(
    what: &str,
    invariant: &'static str,
    future: impl Future<Output = Result<T, E>>,
) -> Result<T, Violation> {
    match tokio::time::timeout(OP_TIMEOUT, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(violation(invariant, format!("{what}: {e:#}"))),
        Err(_) => Err(violation(
            invariant,
            format!("{what}: no answer within {OP_TIMEOUT:?} (simulated)"),
        )),
    }
}

/// Connects and checks the broker answers, retrying a bounded number of times.
async fn connect(shared: &Shared, purpose: &str) -> Result<Client, Violation> {
    let mut last_error = String::new();
    for attempt in 1..=CONNECT_ATTEMPTS {
        let attempt_result: Result<Client, String> = async {
            let mut client = tokio::time::timeout(OP_TIMEOUT, Client::connect(broker_addr()))
                .await
                .map_err(|_| "connect timed out".to_string())?
                .map_err(|e| format!("{e:#}"))?;
            tokio::time::timeout(OP_TIMEOUT, client.api_versions())
                .await
                .map_err(|_| "ApiVersions timed out".to_string())?
                .map_err(|e| format!("ApiVersions: {e:#}"))?;
            Ok(client)
        }
        .await;
        match attempt_result {
            Ok(client) => {
                shared.event(format!("{purpose}: connected on attempt {attempt}"));
                return Ok(client);
            }
            Err(e) => last_error = e,
        }
        tokio::time::sleep(CONNECT_PAUSE).await;
    }
    Err(violation(
        "broker-restarts",
        format!(
            "{purpose}: no working connection after {CONNECT_ATTEMPTS} attempts \
             (last error: {last_error}; broker errors: {})",
            shared.broker_errors()
        ),
    ))
}

/// What the workload wrote, as the checks after a crash see it.
#[derive(Debug, Clone, Default)]
struct Written {
    /// Must survive any crash, in order: records acknowledged with acks=all (at their
    /// acknowledged offsets), everything written before such a record, and everything
    /// read back after a restart (a crash leaves only synced data, so what a restart
    /// shows was durable).
    durable: Vec<(i64, Bytes)>,
    /// Sent but not known durable, right after `durable`: acks=1 records (offset known
    /// from the acknowledgement) and batches in flight at the kill (offset unknown). A
    /// crash may drop any suffix of it, but not change it.
    tail: Vec<(Option<i64>, Bytes)>,
    /// No acknowledged batch may start below this offset: the end of the last
    /// acknowledged batch, or of the log as read after a restart.
    next_offset: i64,
}

impl Written {
    /// Records sent so far (numbers the values).
    fn count(&self) -> usize {
        self.durable.len() + self.tail.len()
    }

    /// Offset after the last durable record (0 when none).
    fn durable_end(&self) -> i64 {
        self.durable
            .last()
            .map(|(offset, _)| offset + 1)
            .unwrap_or(0)
    }
}

fn make_batch(
    seed: u64,
    first_index: usize,
    n: usize,
    settings: &Settings,
    rng: &mut impl Rng,
) -> Vec<(Option<Bytes>, Option<Bytes>)> {
    (0..n)
        .map(|j| {
            let i = first_index + j;
            let padding = rng.gen_range(0..=settings.max_value_padding);
            let mut value = format!("s{seed}-r{i:07}-{:016x}-", rng.gen::<u64>()).into_bytes();
            value.resize(value.len() + padding, b'a' + (i % 26) as u8);
            let key = rng
                .gen_bool(0.5)
                .then(|| Bytes::from(format!("k{}", i % 13)));
            (key, Some(Bytes::from(value)))
        })
        .collect()
}

/// Produces `n` new records as one batch with `acks`, keeping `written` up to date:
/// the batch is tail while in flight, and an acks=all acknowledgement makes everything
/// up to it durable.
#[allow(clippy::too_many_arguments)]
async fn produce_tracked(
    seed: u64,
    client: &mut Client,
    written: &Mutex<Written>,
    n: usize,
    acks: i16,
    settings: &Settings,
    rng: &mut impl Rng,
    shared: &Shared,
) -> Result<(), Violation> {
    let first = written.lock().unwrap().count();
    let batch = make_batch(seed, first, n, settings, rng);
    written.lock().unwrap().tail.extend(
        batch
            .iter()
            .map(|(_, v)| (None, v.clone().unwrap_or_default())),
    );
    let what = format!("produce acks={acks} records {first}..{}", first + n);
    shared.event(format!("send {what}"));
    let now_ms = strand::clock::now_ms();
    let base = op(
        &what,
        "produce-succeeds",
        client.produce(TOPIC, 0, &batch, now_ms, acks),
    )
    .await?
    .ok_or_else(|| violation("produce-succeeds", format!("{what}: no base offset")))?;
    shared.event(format!(
        "ack acks={acks} n={n} base={base} values={:016x}",
        values_hash(&batch)
    ));
    let mut written = written.lock().unwrap();
    if base < written.next_offset {
        return Err(violation(
            "ack-offsets-increase",
            format!(
                "{what}: base offset {base}, but offsets below {} were taken",
                written.next_offset
            ),
        ));
    }
    written.next_offset = base + n as i64;
    // This batch is the last `n` of the tail (one producer per `Written` at a time).
    let len = written.tail.len();
    for (j, entry) in written.tail[len - n..].iter_mut().enumerate() {
        entry.0 = Some(base + j as i64);
    }
    if acks == -1 {
        let tail = std::mem::take(&mut written.tail);
        let durable = tail
            .into_iter()
            .map(|(offset, value)| (offset.expect("acknowledged before"), value));
        written.durable.extend(durable);
        shared.records_acked.fetch_add(n as u64, Ordering::Relaxed);
    }
    Ok(())
}

async fn produce_phase(
    seed: u64,
    records: usize,
    settings: Settings,
    shared: Arc<Shared>,
) -> Result<Written, Violation> {
    let mut rng = thread_rng();
    let mut client = connect(&shared, "round 1").await?;
    let configs = [
        ("segment.bytes", settings.segment_bytes.to_string()),
        (
            "index.interval.bytes",
            settings.index_interval_bytes.to_string(),
        ),
    ];
    let configs: Vec<(&str, &str)> = configs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    op(
        "create topic",
        "produce-succeeds",
        client.create_topic(TOPIC, 1, &configs),
    )
    .await?;
    shared.event(format!("created topic {TOPIC} {configs:?}"));

    let written = Mutex::new(Written::default());
    let mut acked = 0;
    while acked < records {
        let n = rng.gen_range(1..=settings.max_batch).min(records - acked);
        produce_tracked(
            seed,
            &mut client,
            &written,
            n,
            -1,
            &settings,
            &mut rng,
            &shared,
        )
        .await?;
        acked += n;
        if rng.gen_bool(0.3) {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..=20))).await;
        }
    }

    let (durable, acked_end) = {
        let written = written.lock().unwrap();
        (written.durable.clone(), written.next_offset)
    };
    let read = fetch_all(&mut client, &shared, "round 1 read").await?;
    if read.records.len() != durable.len() || read.high_watermark < acked_end {
        return Err(violation(
            "acked-readable",
            format!(
                "{} records below high watermark {} after {} acknowledged records ending at {}",
                read.records.len(),
                read.high_watermark,
                durable.len(),
                acked_end
            ),
        ));
    }
    compare_prefix(
        &read.records,
        &durable,
        "acked-readable",
        "before the crash",
    )?;

    // An acks=1 tail: acknowledged before it is fsynced, so the crash may drop any suffix.
    for _ in 0..rng.gen_range(0..=3) {
        let n = rng.gen_range(1..=settings.max_batch);
        produce_tracked(
            seed,
            &mut client,
            &written,
            n,
            1,
            &settings,
            &mut rng,
            &shared,
        )
        .await?;
    }
    Ok(written.into_inner().unwrap())
}

/// Round 2's producer: `records` more records in batches of random size, a quarter of
/// them with acks=1, until done or aborted by the kill.
async fn load_phase(
    seed: u64,
    records: usize,
    settings: Settings,
    written: Arc<Mutex<Written>>,
    shared: Arc<Shared>,
) -> Result<(), Violation> {
    let mut rng = thread_rng();
    let mut client = connect(&shared, "round 2 load").await?;
    let mut sent = 0;
    while sent < records {
        let n = rng.gen_range(1..=settings.max_batch).min(records - sent);
        let acks = if rng.gen_bool(0.25) { 1 } else { -1 };
        produce_tracked(
            seed,
            &mut client,
            &written,
            n,
            acks,
            &settings,
            &mut rng,
            &shared,
        )
        .await?;
        sent += n;
        if rng.gen_bool(0.3) {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..=20))).await;
        }
    }
    shared.event(format!("round 2 load: all {records} records sent"));
    Ok(())
}

/// After a restart: everything durable is there unchanged, anything more is a prefix of
/// the tail, and the log takes new records at its recovered end. Returns what is durable
/// from now on.
async fn verify_phase(
    seed: u64,
    round: &str,
    written: Written,
    settings: Settings,
    shared: Arc<Shared>,
) -> Result<Written, Violation> {
    let mut rng = thread_rng();
    let mut client = connect(&shared, &format!("{round} after the restart")).await?;
    let read = fetch_all(
        &mut client,
        &shared,
        &format!("{round} read after the restart"),
    )
    .await?;
    let durable_end = written.durable_end();
    let when = format!("{round}, after the crash and restart");
    if read.high_watermark < durable_end {
        return Err(violation(
            "acked-durable",
            format!(
                "{when}: high watermark {}, but offsets up to {} were durable",
                read.high_watermark,
                durable_end - 1,
            ),
        ));
    }
    compare_prefix(&read.records, &written.durable, "acked-durable", &when)?;
    let beyond = &read.records[written.durable.len()..];
    if beyond.len() > written.tail.len() {
        return Err(violation(
            "no-invented-records",
            format!(
                "{when}: {} records past the durable end, but only {} more were sent",
                beyond.len(),
                written.tail.len()
            ),
        ));
    }
    for (got, (offset, value)) in beyond.iter().zip(&written.tail) {
        let moved = offset.is_some_and(|offset| offset != got.offset);
        if moved || got.value.as_ref() != Some(value) {
            return Err(violation(
                "no-invented-records",
                format!(
                    "{when}: offset {} holds {}, but {} was sent there (acknowledged at {offset:?})",
                    got.offset,
                    show(got.value.as_ref()),
                    show(Some(value))
                ),
            ));
        }
    }
    shared.event(format!(
        "{round}: {} durable records intact, {} of {} tail records survived",
        written.durable.len(),
        beyond.len(),
        written.tail.len()
    ));

    // The log goes on from where recovery left it.
    let end = read.high_watermark;
    let now = Mutex::new(Written {
        durable: read
            .records
            .iter()
            .map(|r| (r.offset, r.value.clone().unwrap_or_default()))
            .collect(),
        tail: Vec::new(),
        next_offset: end,
    });
    let n = rng.gen_range(1..=settings.max_batch);
    produce_tracked(seed, &mut client, &now, n, -1, &settings, &mut rng, &shared)
        .await
        .map_err(|v| match v.invariant {
            "ack-offsets-increase" => violation(
                "append-after-recovery",
                format!("{} (the recovered log ends at {end})", v.detail),
            ),
            _ => v,
        })?;
    let now = now.into_inner().unwrap();
    let reread = fetch_all(&mut client, &shared, &format!("{round} final read")).await?;
    if reread.records.len() != now.durable.len() || reread.high_watermark < now.next_offset {
        return Err(violation(
            "append-after-recovery",
            format!(
                "{round}: {} records below high watermark {} after appending {n} records \
                 to a log of {end}",
                reread.records.len(),
                reread.high_watermark
            ),
        ));
    }
    compare_prefix(
        &reread.records,
        &now.durable,
        "append-after-recovery",
        &format!("{round}, after appending past the recovered end"),
    )?;
    Ok(now)
}

/// What one full read of the partition saw.
struct Read {
    records: Vec<SimpleRecord>,
    high_watermark: i64,
}

fn values_hash(batch: &[(Option<Bytes>, Option<Bytes>)]) -> u64 {
    batch.iter().fold(hash_bytes(b"batch"), |h, (k, v)| {
        let h = fnv1a(h, k.as_deref().unwrap_or(b"<none>"));
        fnv1a(h, v.as_deref().unwrap_or(b"<none>"))
    })
}

fn show(value: Option<&Bytes>) -> String {
    match value {
        None => "<null>".into(),
        Some(v) => {
            let text = String::from_utf8_lossy(v);
            if text.len() > 40 {
                format!("{:?}...({} bytes)", &text[..40], v.len())
            } else {
                format!("{text:?}")
            }
        }
    }
}

/// `records` must start with exactly `expected` (offset and value, in order).
fn compare_prefix(
    records: &[SimpleRecord],
    expected: &[(i64, Bytes)],
    invariant: &'static str,
    when: &str,
) -> Result<(), Violation> {
    for (i, (offset, value)) in expected.iter().enumerate() {
        let Some(got) = records.get(i) else {
            return Err(violation(
                invariant,
                format!(
                    "{when}: acknowledged offset {offset} is missing (the read ended after {} records)",
                    records.len()
                ),
            ));
        };
        if got.offset != *offset {
            return Err(violation(
                invariant,
                format!(
                    "{when}: record #{i} has offset {}, expected {offset}",
                    got.offset
                ),
            ));
        }
        if got.value.as_ref() != Some(value) {
            return Err(violation(
                invariant,
                format!(
                    "{when}: offset {offset} holds {}, but {} was acknowledged there",
                    show(got.value.as_ref()),
                    show(Some(value))
                ),
            ));
        }
    }
    Ok(())
}

/// Reads the whole partition from offset 0 up to its high watermark.
async fn fetch_all(client: &mut Client, shared: &Shared, label: &str) -> Result<Read, Violation> {
    let mut records: Vec<SimpleRecord> = Vec::new();
    let mut next = 0i64;
    let mut digest = hash_bytes(label.as_bytes());
    for _ in 0..MAX_FETCH_ROUNDS {
        let fetch_at = next;
        let what = format!("{label}: fetch at offset {fetch_at}");
        let fetched = op(
            &what,
            "fetch-succeeds",
            client.fetch(TOPIC, 0, fetch_at, 0, FETCH_MAX_BYTES),
        )
        .await?;
        if let Some(error) = fetched.error {
            return Err(violation(
                "fetch-succeeds",
                format!("{what}: error {error:?}"),
            ));
        }
        if fetched.log_start_offset != 0 {
            return Err(violation(
                "log-start-offset",
                format!(
                    "{what}: log start offset {} (nothing should ever be deleted)",
                    fetched.log_start_offset
                ),
            ));
        }
        let hw = fetched.high_watermark;
        // Batches (control ones too) must cover the offsets without a hole.
        let mut covered_to = next;
        for batch in &fetched.batches {
            if batch.next_offset <= covered_to {
                continue; // earlier batches: Kafka sends whole batches
            }
            if batch.base_offset > covered_to {
                return Err(violation(
                    "no-gaps",
                    format!(
                        "{what}: a batch starts at {} but offsets from {covered_to} are in none",
                        batch.base_offset
                    ),
                ));
            }
            if batch.next_offset > hw {
                return Err(violation(
                    "fetch-within-high-watermark",
                    format!(
                        "{what}: a batch ends at {} past the high watermark {hw}",
                        batch.next_offset
                    ),
                ));
            }
            covered_to = batch.next_offset;
        }
        let mut last_record = records.last().map(|r| r.offset).unwrap_or(-1);
        for record in fetched.records {
            if record.offset < fetch_at {
                continue; // earlier records of the batch holding fetch_at
            }
            if record.offset >= hw {
                return Err(violation(
                    "fetch-within-high-watermark",
                    format!(
                        "{what}: offset {} at or past the high watermark {hw}",
                        record.offset
                    ),
                ));
            }
            if record.offset <= last_record {
                return Err(violation(
                    "no-duplicates",
                    format!(
                        "{what}: offset {} returned after {last_record}",
                        record.offset
                    ),
                ));
            }
            if record.offset >= covered_to {
                return Err(violation(
                    "no-gaps",
                    format!("{what}: record at {} outside every batch", record.offset),
                ));
            }
            last_record = record.offset;
            digest = fnv1a(digest, &record.offset.to_le_bytes());
            digest = fnv1a(digest, record.value.as_deref().unwrap_or(b"<null>"));
            records.push(record);
        }
        let progressed = covered_to > next;
        next = covered_to;
        if next >= hw {
            shared.event(format!(
                "{label}: offsets 0..{next} hw={hw} records={digest:016x}"
            ));
            return Ok(Read {
                records,
                high_watermark: hw,
            });
        }
        if !progressed {
            return Err(violation(
                "fetch-makes-progress",
                format!("{what}: no batch although the high watermark is {hw}"),
            ));
        }
    }
    Err(violation(
        "fetch-makes-progress",
        format!("{label}: not done after {MAX_FETCH_ROUNDS} fetches"),
    ))
}
