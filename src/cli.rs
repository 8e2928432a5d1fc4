//! Command-line interface: `strand broker`, `strand bench`, `strand groups` and
//! `strand dev`.

use crate::broker::Broker;
use crate::config::{BrokerConfig, Overrides};
use crate::protocol::server;
use crate::storage::{read_to_vec, RealStorage, Storage};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Debug, Parser)]
#[command(
    name = "strand",
    version,
    about = "A Kafka-compatible replicated commit log"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs a broker (defaults: listener 127.0.0.1:9092, data dir ./strand-data, node id 1).
    Broker(BrokerArgs),
    /// Measures produce throughput and latency against a running broker.
    Bench(crate::bench::BenchArgs),
    /// Lists or describes the consumer groups of a running cluster (like
    /// kafka-consumer-groups).
    ///
    /// `strand groups list` shows every group with its protocol type and state;
    /// `strand groups describe GROUP` its members, their assignments, and per partition
    /// the committed offset, the log end offset and the lag.
    #[command(subcommand)]
    Groups(crate::groups_cli::GroupsCommand),
    /// Development helpers.
    #[command(subcommand)]
    Dev(DevCommand),
}

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Runs a cluster of N brokers on loopback, one child process each (Ctrl-C or
    /// SIGTERM stops them all cleanly).
    Cluster(crate::dev_cluster::DevClusterArgs),
}

#[derive(Debug, clap::Args)]
pub struct BrokerArgs {
    /// TOML config file; flags override its settings.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on, IP:PORT.
    #[arg(long)]
    pub listen: Option<String>,
    /// Address clients are told to connect to, HOST:PORT (default: the listener).
    #[arg(long)]
    pub advertised_listener: Option<String>,
    /// Directory holding the logs and metadata.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// This broker's node id.
    #[arg(long)]
    pub node_id: Option<i32>,
    /// Log filter, e.g. `info` or `strand=debug`.
    #[arg(long)]
    pub log_level: Option<String>,
    /// Every broker of the cluster with its Raft address, `ID@IP:PORT,...` (this one
    /// included). Without it the broker is a cluster of its own.
    #[arg(long)]
    pub peers: Option<String>,
}

pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Broker(args) => run_broker(args),
        Command::Bench(args) => crate::bench::run(args),
        Command::Groups(command) => crate::groups_cli::run(command),
        Command::Dev(DevCommand::Cluster(args)) => crate::dev_cluster::run(args),
    }
}

fn run_broker(args: BrokerArgs) -> ExitCode {
    let storage = Arc::new(RealStorage::new());
    let file_text = match &args.config {
        Some(path) => match read_to_vec(storage.as_ref(), path).map(String::from_utf8) {
            Ok(Ok(text)) => Some(text),
            Ok(Err(_)) => return fail(&format!("config file {}: not UTF-8", path.display())),
            Err(e) => return fail(&format!("config file {}: {e}", path.display())),
        },
        None => None,
    };
    let overrides = Overrides {
        node_id: args.node_id,
        listen: args.listen,
        advertised_listener: args.advertised_listener.clone(),
        data_dir: args.data_dir,
        log_level: args.log_level,
        peers: args.peers,
    };
    let mut config = match BrokerConfig::build(file_text.as_deref(), &overrides) {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(config.listen).await {
            Ok(l) => l,
            Err(e) => return fail(&format!("listen {}: {e}", config.listen)),
        };
        if let Ok(bound) = listener.local_addr() {
            if config.listen.port() == 0 && args.advertised_listener.is_none() {
                config.advertised_port = bound.port() as i32;
            }
            config.listen = bound;
        }
        let raft_listener = if config.is_clustered() {
            let address = config.raft_listen.unwrap_or(config.peers[&config.node_id]);
            match tokio::net::TcpListener::bind(address).await {
                Ok(l) => Some(l),
                Err(e) => return fail(&format!("raft listener {address}: {e}")),
            }
        } else {
            None
        };
        if config.is_clustered() {
            tracing::info!(peers = ?config.peers, "joining the cluster; waiting for its metadata quorum");
        }
        let broker = match Broker::open(config, storage.clone() as Arc<dyn Storage>, raft_listener).await {
            Ok(b) => b,
            Err(e) => return fail(&format!("cannot open the data directory: {e}")),
        };
        broker.start_background_tasks();
        tracing::info!(listen = %broker.config.listen, data_dir = %broker.data_dir().display(), node_id = broker.config.node_id,
            cluster_id = %broker.cluster_id(), "strand broker started");
        let server = tokio::spawn(server::serve(broker.clone(), listener));
        tokio::select! {
            _ = wait_for_shutdown_signal() => {}
            why = broker.node.failed() => {
                // No clean shutdown: nothing written after the failure may be trusted,
                // and a restart recovers from what is durable (as after a power loss).
                server.abort();
                return fail(&format!("storage failure, exiting so that a restart recovers the logs: {why}"));
            }
        }
        tracing::info!("shutting down");
        server.abort();
        match broker.shutdown().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&format!("shutdown: {e}")),
        }
    })
}

pub(crate) async fn wait_for_shutdown_signal() {
    #[cfg(not(madsim))]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(madsim)]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("strand: {message}");
    ExitCode::FAILURE
}
