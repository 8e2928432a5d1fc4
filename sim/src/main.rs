//! `strand-sim`: deterministic simulation of a Strand broker under madsim.
//!
//! Build it with `RUSTFLAGS="--cfg madsim"` (see `sim/run`). Outside that cfg the binary
//! only explains how to build it, so `cargo build --workspace` keeps working.
//!
//! Every seed runs in a child process of its own (`strand-sim --run-one SEED`): the
//! simulator seeds process-wide state (std's `HashMap` keys) once per thread, so a seed
//! replayed alone must not be affected by the seeds that ran before it. The parent
//! collects one result line per seed, prints the replay command of every failure and a
//! closing `N passed, M failed` line.

mod faults;
mod trace;

#[cfg(madsim)]
mod cluster_scenario;
#[cfg(madsim)]
mod scenario;

use std::process::{Command, ExitCode, Stdio};

const USAGE: &str = "\
strand-sim: deterministic simulation of a Strand broker (madsim)

USAGE:
    sim/run [--scenario single|cluster] [--seed N | --seeds A..B] [--check-determinism] [--records N] [--trace]

OPTIONS:
    --scenario NAME       single: one broker behind the Kafka protocol, crashed and restarted
                          (default); cluster: three brokers replicating through Raft, killed
                          and restarted one at a time (records = batches to acknowledge)
    --seed N              run one seed
    --seeds A..B          run seeds A, A+1, ..., B-1 (start inclusive, end EXCLUSIVE);
                          A..=B includes B. Default: --seeds 1..21
    --check-determinism   run every seed twice and fail it if the two result lines differ
    --records N           acks=all records to produce per seed (default 1000)
    --trace               print every traced event of each seed to stderr
    -h, --help            this text

Per seed one line: seed=N outcome=pass|fail sim_ms=.. records_acked=.. digest=<hex>.
A failure is followed by the invariant it violated and the command that replays it.
The last line is `P passed, F failed`; the exit status is non-zero if any seed failed.
RUST_LOG (e.g. RUST_LOG=info) turns on the broker's own log lines on stderr.";

#[derive(Debug, Clone)]
struct Args {
    seeds: Vec<u64>,
    check_determinism: bool,
    records: usize,
    trace: bool,
    cluster: bool,
    /// Internal: run exactly this seed in this process and print its result.
    run_one: Option<u64>,
}

fn parse_range(s: &str) -> Result<Vec<u64>, String> {
    let (a, b, inclusive) = if let Some((a, b)) = s.split_once("..=") {
        (a, b, true)
    } else if let Some((a, b)) = s.split_once("..") {
        (a, b, false)
    } else {
        return Err(format!("--seeds expects A..B or A..=B, got {s:?}"));
    };
    let a: u64 = a
        .trim()
        .parse()
        .map_err(|_| format!("--seeds: bad start in {s:?}"))?;
    let b: u64 = b
        .trim()
        .parse()
        .map_err(|_| format!("--seeds: bad end in {s:?}"))?;
    let seeds: Vec<u64> = if inclusive {
        (a..=b).collect()
    } else {
        (a..b).collect()
    };
    if seeds.is_empty() {
        return Err(format!("--seeds {s}: empty range (the end is exclusive)"));
    }
    if seeds.len() > 1_000_000 {
        return Err(format!("--seeds {s}: more than 1,000,000 seeds"));
    }
    Ok(seeds)
}

/// Hand-rolled on purpose: the child must not build any `HashMap` before the simulated
/// runtime seeds std's hash keys, and an argument parser might.
fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        seeds: Vec::new(),
        check_determinism: false,
        records: 1000,
        trace: false,
        cluster: false,
        run_one: None,
    };
    let mut it = std::env::args().skip(1);
    let value = |it: &mut std::iter::Skip<std::env::Args>, flag: &str| {
        it.next().ok_or_else(|| format!("{flag} needs a value"))
    };
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let take = |it: &mut std::iter::Skip<std::env::Args>| match inline.clone() {
            Some(v) => Ok(v),
            None => value(it, &flag),
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--seed" => {
                let v = take(&mut it)?;
                let seed = v
                    .parse()
                    .map_err(|_| format!("--seed expects a number, got {v:?}"))?;
                args.seeds.push(seed);
            }
            "--seeds" => {
                let v = take(&mut it)?;
                args.seeds.extend(parse_range(&v)?);
            }
            "--check-determinism" => args.check_determinism = true,
            "--scenario" => {
                args.cluster = match take(&mut it)?.as_str() {
                    "single" => false,
                    "cluster" => true,
                    other => {
                        return Err(format!(
                            "--scenario expects single or cluster, got {other:?}"
                        ))
                    }
                }
            }
            "--trace" => args.trace = true,
            "--records" => {
                let v = take(&mut it)?;
                args.records = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=1_000_000).contains(n))
                    .ok_or_else(|| format!("--records expects 1..=1000000, got {v:?}"))?;
            }
            "--run-one" => {
                let v = take(&mut it)?;
                args.run_one = Some(
                    v.parse()
                        .map_err(|_| format!("--run-one: bad seed {v:?}"))?,
                );
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if args.seeds.is_empty() {
        args.seeds = (1..21).collect();
    }
    Ok(Some(args))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("strand-sim: {e}");
            return ExitCode::from(2);
        }
    };
    if cfg!(not(madsim)) {
        eprintln!(
            "strand-sim: this binary was built without --cfg madsim; build and run it with sim/run"
        );
        return ExitCode::from(2);
    }
    if let Some(seed) = args.run_one {
        return run_one(seed, &args);
    }
    run_all(&args)
}

#[cfg(madsim)]
fn run_one(seed: u64, args: &Args) -> ExitCode {
    let options = scenario::Options {
        records: args.records,
        trace: args.trace,
        brokers: 3,
        sim_seconds: 0,
        faults: faults::Faults::all(),
        planted: None,
    };
    let report = if args.cluster {
        cluster_scenario::run_seed(seed, &options)
    } else {
        scenario::run_seed(seed, &options)
    };
    println!("{}", report.line());
    if let Some(v) = &report.violation {
        println!("  violated: {}: {}", v.invariant, v.detail);
        for event in &report.last_events {
            println!("  event: {event}");
        }
    }
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(not(madsim))]
fn run_one(_seed: u64, _args: &Args) -> ExitCode {
    unreachable!("main refuses to run without --cfg madsim")
}

/// The command that replays one seed exactly, from the workspace root.
fn replay_command(seed: u64, args: &Args) -> String {
    let mut cmd = format!("sim/run --seed {seed}");
    if args.cluster {
        cmd.push_str(" --scenario cluster");
    }
    if args.records != 1000 {
        cmd.push_str(&format!(" --records {}", args.records));
    }
    if args.check_determinism {
        cmd.push_str(" --check-determinism");
    }
    cmd
}

/// One child run: its stdout (result line and detail lines) and whether it passed.
struct ChildRun {
    stdout: String,
    passed: bool,
}

fn spawn_child(seed: u64, args: &Args) -> ChildRun {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            return ChildRun {
                stdout: harness_failure(seed, &format!("cannot find own executable: {e}")),
                passed: false,
            }
        }
    };
    let mut cmd = Command::new(exe);
    cmd.arg("--run-one")
        .arg(seed.to_string())
        .arg("--records")
        .arg(args.records.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if args.trace {
        cmd.arg("--trace");
    }
    if args.cluster {
        cmd.arg("--scenario").arg("cluster");
    }
    match cmd.output() {
        Ok(out) => {
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let has_line = stdout
                .lines()
                .next()
                .map(|l| l.starts_with(&format!("seed={seed} ")))
                .unwrap_or(false);
            if !has_line {
                return ChildRun {
                    stdout: harness_failure(
                        seed,
                        &format!(
                            "the seed's process ended ({}) without a result line",
                            out.status
                        ),
                    ),
                    passed: false,
                };
            }
            ChildRun {
                stdout,
                passed: out.status.success(),
            }
        }
        Err(e) => ChildRun {
            stdout: harness_failure(seed, &format!("cannot start the seed's process: {e}")),
            passed: false,
        },
    }
}

fn harness_failure(seed: u64, why: &str) -> String {
    format!(
        "seed={seed} outcome=fail sim_ms=0 events=0 faults=0 records_acked=0 digest={:016x}\n  violated: harness: {why}\n",
        0u64
    )
}

fn run_all(args: &Args) -> ExitCode {
    let mut passed = 0usize;
    let mut failed = 0usize;
    for &seed in &args.seeds {
        let first = spawn_child(seed, args);
        let mut ok = first.passed;
        print!("{}", first.stdout);
        if args.check_determinism {
            let second = spawn_child(seed, args);
            if second.stdout != first.stdout {
                ok = false;
                println!(
                    "  violated: determinism: the second run of seed {seed} printed something else:"
                );
                for line in second.stdout.lines() {
                    println!("    second run: {line}");
                }
            }
        }
        if ok {
            passed += 1;
        } else {
            failed += 1;
            let cmd = replay_command(seed, args);
            println!("  replay: {cmd}");
            println!("  details: {cmd} --trace   (broker log lines: RUST_LOG=info {cmd})");
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn seed_ranges() {
        assert_eq!(parse_range("1..4").unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_range("1..=3").unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_range("7..8").unwrap(), vec![7]);
        assert!(parse_range("5..5").is_err());
        assert!(parse_range("5").is_err());
        assert!(parse_range("a..3").is_err());
    }
}
