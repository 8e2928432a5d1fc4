//! `strand bench`: produce load against a running broker with the project's client, to
//! measure throughput and latency reproducibly (see docs/benchmarks.md).

use crate::client::{encode_batch, Client};
use bytes::Bytes;
use kafka_protocol::records::Compression;
use std::net::SocketAddr;
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
    let mut admin = Client::connect(args.broker).await?;
    if let Err(e) = admin.create_topic(&args.topic, args.partitions, &[]).await {
        if !e.to_string().contains("TopicAlreadyExists") {
            return Err(e);
        }
    }
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
        let (broker, topic, batch, acks) =
            (args.broker, args.topic.clone(), batch.clone(), args.acks);
        let partition = (i as i32) % args.partitions.max(1);
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(broker).await?;
            let mut latencies = Vec::with_capacity(per_producer as usize);
            for _ in 0..per_producer {
                let t = Instant::now();
                client
                    .produce_batch(&topic, partition, batch.clone(), acks)
                    .await?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies: Vec<Duration> = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let records = latencies.len() as f64 * args.records_per_batch as f64;
    let bytes = records * args.record_size_bytes as f64;
    let pct =
        |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1000.0;
    println!(
        "records={} record_size_bytes={} records_per_batch={} producers={} acks={} elapsed_s={:.2} records_per_s={:.0} MB_per_s={:.1} latency_ms_p50={:.2} latency_ms_p99={:.2} latency_ms_max={:.2}",
        records as u64, args.record_size_bytes, args.records_per_batch, args.producers, args.acks, elapsed, records / elapsed, bytes / elapsed / 1e6, pct(0.5), pct(0.99), pct(1.0)
    );
    Ok(())
}
