//! `strand bench`: produce load against a running broker or cluster with the project's
//! client, to measure throughput and latency reproducibly (see docs/benchmarks.md).
//!
//! Each producer is one request at a time; request k of producer i goes to partition
//! (i + k * producers) mod partitions, sent to that partition's leader (from Metadata),
//! so every partition takes load whatever the two counts.

use crate::client::{encode_batch, with_producer_fields, Client, ProducerFields};
use anyhow::Context;
use bytes::Bytes;
use kafka_protocol::records::Compression;
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub broker: SocketAddr,
    /// Topic to produce to (created if missing).
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// Partitions of the topic when it is created.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Concurrent producer connections (each writes to partition `i % partitions`).
    #[arg(long, default_value_t = 4)]
    pub producers: usize,
    /// Record value size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub record_size_bytes: usize,
    /// Records per produce request (one batch).
    #[arg(long, default_value_t = 64)]
    pub records_per_batch: usize,
    /// Total records to produce across all producers.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// acks: -1 (all), 1 or 0.
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub acks: i16,
    /// Produce as idempotent producers (InitProducerId, sequence numbers per partition).
    #[arg(long)]
    pub idempotent: bool,
    /// Produce in transactions of this many requests each (0: none), as transactional
    /// producers (one transactional id per producer; AddPartitionsToTxn, then the
    /// batches, then EndTxn commit). Implies --idempotent.
    #[arg(long, default_value_t = 0)]
    pub transaction_batches: u64,
}

/// Sends of one transaction request (AddPartitionsToTxn, EndTxn) that the coordinator
/// answers with a retriable error (CONCURRENT_TRANSACTIONS while the previous
/// transaction's markers are written) before the bench gives up.
const MAX_TXN_RETRIES: u32 = 500;

/// A transactional producer's coordinator connection and identity.
struct Transactional {
    transactional_id: String,
    coordinator: Client,
    producer: (i64, i16),
}

impl Transactional {
    async fn start(bootstrap: SocketAddr, index: usize) -> anyhow::Result<Transactional> {
        let transactional_id = format!("strand-bench-{index}");
        let mut admin = Client::connect(bootstrap).await?;
        let mut attempt = 0;
        loop {
            let started = async {
                let found = admin
                    .find_transaction_coordinator(&transactional_id)
                    .await?;
                let addr = format!("{}:{}", found.host, found.port)
                    .to_socket_addrs()?
                    .next()
                    .context("coordinator address")?;
                let mut coordinator = Client::connect(addr).await?;
                let producer = coordinator
                    .init_producer_id(Some(&transactional_id), 60_000)
                    .await?;
                anyhow::Ok((coordinator, producer))
            }
            .await;
            match started {
                Ok((coordinator, producer)) => {
                    return Ok(Transactional {
                        transactional_id,
                        coordinator,
                        producer,
                    })
                }
                Err(_) if attempt < MAX_TXN_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e).context("InitProducerId"),
            }
        }
    }

    async fn add_partitions(&mut self, topic: &str, partitions: &[i32]) -> anyhow::Result<()> {
        let list: Vec<(String, i32)> = partitions.iter().map(|p| (topic.to_string(), *p)).collect();
        for attempt in 0.. {
            match self
                .coordinator
                .add_partitions_to_txn(&self.transactional_id, self.producer, &list)
                .await
            {
                Ok(()) => return Ok(()),
                Err(_) if attempt < MAX_TXN_RETRIES => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                Err(e) => return Err(e).context("AddPartitionsToTxn"),
            }
        }
        unreachable!()
    }

    async fn commit(&mut self) -> anyhow::Result<()> {
        for attempt in 0.. {
            match self
                .coordinator
                .end_txn(&self.transactional_id, self.producer, true)
                .await
            {
                Ok(()) => return Ok(()),
                Err(_) if attempt < MAX_TXN_RETRIES => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                Err(e) => return Err(e).context("EndTxn"),
            }
        }
        unreachable!()
    }
}

/// Sends of one request after a failure (a leader change) before the bench gives up.
const MAX_RETRIES: u32 = 50;

pub fn run(args: BenchArgs) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match runtime.block_on(bench(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strand bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.producers > 0 && args.records_per_batch > 0,
        "producers and records-per-batch must be positive"
    );
    anyhow::ensure!(args.partitions > 0, "partitions must be positive");
    let mut admin = Client::connect(args.broker).await?;
    // A cluster that just started may not have every broker registered yet (too few for
    // the default replication factor): ask again for a while.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match admin.create_topic(&args.topic, args.partitions, &[]).await {
            Ok(()) => break,
            Err(e) if e.to_string().contains("TopicAlreadyExists") => break,
            Err(e)
                if e.to_string().contains("InvalidReplicationFactor")
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    }
    let leaders = partition_leaders(&mut admin, &args.topic, args.partitions).await?;
    let leaders_per_broker = leaders.values().fold(BTreeMap::new(), |mut count, addr| {
        *count.entry(*addr).or_insert(0) += 1;
        count
    });
    eprintln!("partition leaders per broker: {leaders_per_broker:?}");
    let value = Bytes::from(vec![b'x'; args.record_size_bytes]);
    let records: Vec<_> = (0..args.records_per_batch)
        .map(|_| (None, Some(value.clone())))
        .collect();
    let batch = encode_batch(&records, crate::clock::now_ms(), Compression::None)?;
    let batches_total = args.records.div_ceil(args.records_per_batch as u64);
    let per_producer = batches_total.div_ceil(args.producers as u64);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.producers {
        let (topic, batch, acks, bootstrap) =
            (args.topic.clone(), batch.clone(), args.acks, args.broker);
        let records_per_batch = args.records_per_batch as i32;
        let (mut leaders, producers, partitions) = (
            leaders.clone(),
            args.producers as u64,
            args.partitions as u64,
        );
        let idempotent = args.idempotent || args.transaction_batches > 0;
        let transaction_batches = args.transaction_batches;
        tasks.push(tokio::spawn(async move {
            let mut clients: BTreeMap<SocketAddr, Client> = BTreeMap::new();
            let mut latencies = Vec::with_capacity(per_producer as usize);
            let mut retries = 0u64;
            // (producer id, epoch) and the next sequence number per partition.
            let mut transactional = if transaction_batches > 0 {
                Some(Transactional::start(bootstrap, i).await?)
            } else {
                None
            };
            let producer = match (&transactional, idempotent) {
                (Some(t), _) => Some(t.producer),
                (None, true) => {
                    let mut client = Client::connect(bootstrap).await?;
                    Some(client.init_producer_id(None, 60_000).await?)
                }
                (None, false) => None,
            };
            let mut sequences: BTreeMap<i32, i32> = BTreeMap::new();
            let transactional_id = transactional.as_ref().map(|t| t.transactional_id.clone());
            let txn_id = transactional_id.as_deref();
            let partition_of = |k: u64| ((i as u64 + k * producers) % partitions) as i32;
            for k in 0..per_producer {
                let partition = partition_of(k);
                let t = Instant::now();
                if let Some(t) = transactional
                    .as_mut()
                    .filter(|_| k % transaction_batches == 0)
                {
                    let end = (k + transaction_batches).min(per_producer);
                    let mut in_txn: Vec<i32> = (k..end).map(partition_of).collect();
                    in_txn.sort_unstable();
                    in_txn.dedup();
                    t.add_partitions(&topic, &in_txn).await?;
                }
                let batch = match producer {
                    Some((producer_id, producer_epoch)) => {
                        let sequence = sequences.entry(partition).or_insert(0);
                        let fields = ProducerFields {
                            producer_id,
                            producer_epoch,
                            base_sequence: *sequence,
                            transactional: transaction_batches > 0,
                        };
                        *sequence = sequence.wrapping_add(records_per_batch) & i32::MAX;
                        with_producer_fields(&batch, fields)
                    }
                    None => batch.clone(),
                };
                // Like a Kafka client: a leader change answers NOT_LEADER_OR_FOLLOWER (or
                // drops the connection); refresh the leaders and send again, bounded.
                let mut attempt = 0;
                loop {
                    let leader = leaders[&partition];
                    let sent = async {
                        if !clients.contains_key(&leader) {
                            clients.insert(leader, Client::connect(leader).await?);
                        }
                        let client = clients.get_mut(&leader).expect("connected above");
                        client
                            .produce_batch_in(&topic, partition, batch.clone(), acks, txn_id)
                            .await
                    }
                    .await;
                    match sent {
                        Ok(_) => break,
                        Err(e) if attempt < MAX_RETRIES => {
                            attempt += 1;
                            retries += 1;
                            clients.remove(&leader);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            let mut admin = Client::connect(bootstrap).await?;
                            leaders = partition_leaders(&mut admin, &topic, partitions as i32)
                                .await
                                .with_context(|| format!("after {e:#}"))?;
                        }
                        Err(e) => {
                            return Err(e).with_context(|| {
                                format!("produce to partition {partition} on {leader}")
                            })
                        }
                    }
                }
                if let Some(txn) = transactional.as_mut() {
                    if (k + 1) % transaction_batches == 0 || k + 1 == per_producer {
                        txn.commit().await?;
                    }
                }
                latencies.push(t.elapsed());
            }
            anyhow::Ok((latencies, retries))
        }));
    }
    let mut latencies: Vec<Duration> = Vec::new();
    let mut retries = 0;
    for task in tasks {
        let (task_latencies, task_retries) = task.await??;
        latencies.extend(task_latencies);
        retries += task_retries;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let records = latencies.len() as f64 * args.records_per_batch as f64;
    let bytes = records * args.record_size_bytes as f64;
    let pct =
        |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1000.0;
    println!(
        "records={} record_size_bytes={} records_per_batch={} producers={} partitions={} acks={} idempotent={} transaction_batches={} elapsed_s={:.2} records_per_s={:.0} MB_per_s={:.1} latency_ms_p50={:.2} latency_ms_p99={:.2} latency_ms_max={:.2} retries={retries}",
        records as u64, args.record_size_bytes, args.records_per_batch, args.producers, args.partitions, args.acks, args.idempotent || args.transaction_batches > 0, args.transaction_batches, elapsed, records / elapsed, bytes / elapsed / 1e6, pct(0.5), pct(0.99), pct(1.0)
    );
    Ok(())
}

/// Each partition's leader address, waiting (bounded) until every partition has one.
async fn partition_leaders(
    admin: &mut Client,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<BTreeMap<i32, SocketAddr>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metadata = admin.metadata(Some(&[topic])).await?;
        let brokers: BTreeMap<i32, SocketAddr> = metadata
            .brokers
            .iter()
            .filter_map(|b| {
                (b.host.as_str(), b.port as u16)
                    .to_socket_addrs()
                    .ok()?
                    .next()
                    .map(|addr| (b.node_id.0, addr))
            })
            .collect();
        let leaders: BTreeMap<i32, SocketAddr> = metadata
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter())
            .filter_map(|p| Some((p.partition_index, *brokers.get(&p.leader_id.0)?)))
            .collect();
        if leaders.len() as i32 >= partitions {
            return Ok(leaders);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {partitions} partitions of {topic} have a leader",
            leaders.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
