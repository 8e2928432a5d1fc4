//! `strand dev cluster --brokers N`: N brokers on loopback for trying a cluster out, each
//! a child process of this one running `strand broker` with its own node id, ports and
//! data directory, all listed in every broker's `--peers`.
//!
//! Broker `i` (1-based) listens for Kafka clients on `base-port + i - 1` and for Raft
//! traffic on `base-port + 1000 + i - 1`, and keeps its data in `DATA_DIR/i`. Ctrl-C or
//! SIGTERM stops every broker with SIGTERM (a clean shutdown), SIGKILL after 30 s; the
//! children also get SIGTERM if this process dies.

use std::path::PathBuf;
use std::process::{Child, Command, ExitCode};
use std::time::Duration;

/// How long a broker gets to shut down cleanly before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Offset of the Raft ports from the Kafka ports.
const RAFT_PORT_OFFSET: u16 = 1000;

#[derive(Debug, clap::Args)]
pub struct DevClusterArgs {
    /// Number of brokers.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=9))]
    pub brokers: u16,
    /// Kafka port of broker 1; broker i uses base-port + i - 1.
    #[arg(long, default_value_t = 9092)]
    pub base_port: u16,
    /// Parent of the brokers' data directories (one subdirectory per node id).
    #[arg(long, default_value = "./strand-dev")]
    pub data_dir: PathBuf,
    /// Log filter handed to every broker.
    #[arg(long)]
    pub log_level: Option<String>,
}

pub fn run(args: DevClusterArgs) -> ExitCode {
    let brokers = args.brokers;
    let Some(last_raft_port) = args.base_port.checked_add(RAFT_PORT_OFFSET + brokers - 1) else {
        eprintln!(
            "strand: --base-port {} leaves no room for the Raft ports",
            args.base_port
        );
        return ExitCode::FAILURE;
    };
    debug_assert!(last_raft_port > args.base_port);
    let kafka_port = |id: u16| args.base_port + id - 1;
    let raft_port = |id: u16| args.base_port + RAFT_PORT_OFFSET + id - 1;
    let peers = (1..=brokers)
        .map(|id| format!("{id}@127.0.0.1:{}", raft_port(id)))
        .collect::<Vec<_>>()
        .join(",");
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("strand: cannot find this executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("strand: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut children: Vec<(u16, Child)> = Vec::new();
    for id in 1..=brokers {
        let mut command = Command::new(&exe);
        command
            .arg("broker")
            .arg("--node-id")
            .arg(id.to_string())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", kafka_port(id)))
            .arg("--data-dir")
            .arg(args.data_dir.join(id.to_string()))
            .arg("--peers")
            .arg(&peers);
        if let Some(level) = &args.log_level {
            command.arg("--log-level").arg(level);
        }
        stop_with_parent(&mut command);
        match command.spawn() {
            Ok(child) => children.push((id, child)),
            Err(e) => {
                eprintln!("strand: cannot start broker {id}: {e}");
                runtime.block_on(stop_all(&mut children));
                return ExitCode::FAILURE;
            }
        }
    }
    let bootstrap = (1..=brokers)
        .map(|id| format!("127.0.0.1:{}", kafka_port(id)))
        .collect::<Vec<_>>()
        .join(",");
    eprintln!("strand: {brokers} brokers starting; bootstrap servers {bootstrap}");
    runtime.block_on(async {
        tokio::select! {
            _ = crate::cli::wait_for_shutdown_signal() => {}
            _ = all_exited(&mut children) => {}
        }
        eprintln!("strand: stopping the brokers");
        stop_all(&mut children).await;
    });
    ExitCode::SUCCESS
}

/// Returns once every broker exited (reporting each exit as it happens).
async fn all_exited(children: &mut [(u16, Child)]) {
    let mut exited = vec![false; children.len()];
    while exited.iter().any(|e| !e) {
        for (i, (id, child)) in children.iter_mut().enumerate() {
            if !exited[i] {
                if let Ok(Some(status)) = child.try_wait() {
                    eprintln!("strand: broker {id} exited: {status}");
                    exited[i] = true;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGTERM to every broker still running, then SIGKILL to any that outlives the timeout.
async fn stop_all(children: &mut [(u16, Child)]) {
    for (_, child) in children.iter() {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    for (id, child) in children.iter_mut() {
        let deadline = std::time::Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if std::time::Instant::now() >= deadline => {
                    eprintln!("strand: broker {id} did not stop in {STOP_TIMEOUT:?}; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// Makes the child get SIGTERM when this process dies, so no broker outlives the cluster.
fn stop_with_parent(command: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe and only sets a flag of the child process.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
    }
}
