//! `strand bench`: produce load against a running broker or cluster with the project's
//! client, to measure throughput and latency reproducibly (see docs/benchmarks.md).
//!
//! Each producer is one request at a time; request k of producer i goes to partition
//! (i + k * producers) mod partitions, sent to that partition's leader (from Metadata),
//! so every partition takes load whatever the two counts.

use crate::client::{encode_batch, Client};
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
        let (mut leaders, producers, partitions) = (
            leaders.clone(),
            args.producers as u64,
            args.partitions as u64,
        );
        tasks.push(tokio::spawn(async move {
            let mut clients: BTreeMap<SocketAddr, Client> = BTreeMap::new();
            let mut latencies = Vec::with_capacity(per_producer as usize);
            let mut retries = 0u64;
            for k in 0..per_producer {
                let partition = ((i as u64 + k * producers) % partitions) as i32;
                let t = Instant::now();
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
                            .produce_batch(&topic, partition, batch.clone(), acks)
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
        "records={} record_size_bytes={} records_per_batch={} producers={} partitions={} acks={} elapsed_s={:.2} records_per_s={:.0} MB_per_s={:.1} latency_ms_p50={:.2} latency_ms_p99={:.2} latency_ms_max={:.2} retries={retries}",
        records as u64, args.record_size_bytes, args.records_per_batch, args.producers, args.partitions, args.acks, elapsed, records / elapsed, bytes / elapsed / 1e6, pct(0.5), pct(0.99), pct(1.0)
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
