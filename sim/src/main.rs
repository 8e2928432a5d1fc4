//! `strand-sim`: deterministic simulation of a Strand broker under madsim.
//!
//! Build it with `RUSTFLAGS="--cfg madsim"` (see `sim/run`). Outside that cfg the binary
//! only explains how to build it, so `cargo build --workspace` keeps working.
//!
//! Every seed runs in a child process of its own (`strand-sim --run-one SEED ...`): the
//! simulator seeds process-wide state (std's `HashMap` keys) once per thread, so a seed
//! replayed alone must not be affected by the seeds that ran before it. The parent runs up
//! to `--jobs` children at once, buffers their results and prints them in seed order (the
//! output does not depend on `--jobs`), the replay command of every failure and a closing
//! `N passed, M failed` line.

mod faults;
mod trace;

#[cfg(madsim)]
mod cluster_scenario;
#[cfg(madsim)]
mod scenario;

use std::collections::VecDeque;
use std::io::Read;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;

use faults::Faults;

const USAGE: &str = "\
strand-sim: deterministic simulation of a Strand broker (madsim)

USAGE:
    sim/run [--scenario single|cluster] [--seed N | --seeds A..B] [--shard K/N] [--jobs J]
            [--records N] [--brokers 3|5] [--sim-seconds S] [--faults LIST] [--planted NAME]
            [--check-determinism | --check-determinism-every K] [--trace [FILE]]
            [--until-fail] [--expect-fail]

SEEDS:
    --seed N              run seed N (may be repeated)
    --seeds A..B          run seeds A, A+1, ..., B-1 (start inclusive, end EXCLUSIVE);
                          A..=B includes B. Default: --seeds 1..21
    --shard K/N           run only the K-th of N shares of the seed list (K is 1-based:
                          1/N .. N/N): the seeds whose position in the list (0-based)
                          satisfies position % N == K-1. The N shares together are the list.
    --jobs J              run up to J seeds at once, each in its own process (1..=64,
                          default 1). The output is the same for every J.
    --until-fail          schedule no new seed after a failure; the output stops at the
                          first failing seed of the list (whatever J is)
    --expect-fail         the run is expected to catch a bug (a planted one): exit 0 iff
                          some seed failed, and end with `planted bug caught by seed S`
                          or `not caught in N seeds`

SCENARIO:
    --scenario NAME       single: one broker behind the Kafka protocol, crashed and restarted
                          (default); cluster: brokers replicating through Raft under faults
                          (records = batches to acknowledge)
    --records N           acks=all records to produce per seed (1..=1000000, default 1000)
    --brokers 3|5         brokers in the cluster scenario (default 3)
    --sim-seconds S       simulated seconds of faults and load (1..=3600; default: the
                          scenario's own)
    --faults LIST         fault kinds to inject: all (default), none, a list like
                          crash,partition, or all,-corrupt. Kinds: crash, pause, wipe,
                          partition, loss, latency, clog, corrupt, misdirect, disk-errors,
                          slow-disk, buggify
    --planted NAME        switch on the planted bug NAME (see --list-planted; an unknown
                          name is refused)
    --list-planted        print every planted bug (name, tab, what it breaks) and exit

CHECKS AND OUTPUT:
    --check-determinism   run every seed twice and fail it if the two runs print anything
                          different (the result line carries the digest of the whole
                          event trace)
    --check-determinism-every K
                          run only every K-th seed of the list twice: positions 0, K, 2K,
                          ... of the seeds this process runs (after --shard)
    --trace FILE          write every traced event to FILE (exact simulated time, one line
                          per event, the result line last as `# seed=...`). With several
                          seeds, seed S writes FILE.S; a determinism check's second run
                          writes <that name>.second. A relative FILE is relative to the
                          directory sim/run was started from. --trace=FILE takes any name.
    --trace               (no FILE) print every traced event on stderr
    -h, --help            this text

Per seed one line: seed=N outcome=pass|fail sim_ms=.. events=.. faults=.. records_acked=..
digest=<hex>. A failure is followed by the invariant it violated (`violated:`), the last
events before it (`event:`) and the exact command that replays it (`replay:`). The last
line is `P passed, F failed` (then, with --expect-fail, the caught/not caught line); the
exit status is non-zero if any seed failed (with --expect-fail: if none did).
RUST_LOG (e.g. RUST_LOG=info) turns on the broker's own log lines on stderr.";

const DEFAULT_RECORDS: usize = 1000;
const DEFAULT_BROKERS: u64 = 3;

#[derive(Debug, Clone)]
struct Args {
    /// The seeds this process runs, after `--shard`.
    seeds: Vec<u64>,
    /// Run every `check_every`-th seed of `seeds` twice (0: none, 1: all).
    check_every: usize,
    records: usize,
    /// `--trace` without a file: echo every event on stderr.
    echo: bool,
    /// `--trace FILE`.
    trace_file: Option<String>,
    cluster: bool,
    brokers: u64,
    /// 0: the scenario's default.
    sim_seconds: u64,
    faults: Faults,
    planted: Option<String>,
    jobs: usize,
    until_fail: bool,
    expect_fail: bool,
    /// Internal: run exactly this seed in this process and print its result.
    run_one: Option<u64>,
    /// `--list-planted`.
    list_planted: bool,
}

impl Default for Args {
    fn default() -> Args {
        Args {
            seeds: Vec::new(),
            check_every: 0,
            records: DEFAULT_RECORDS,
            echo: false,
            trace_file: None,
            cluster: false,
            brokers: DEFAULT_BROKERS,
            sim_seconds: 0,
            faults: Faults::all(),
            planted: None,
            jobs: 1,
            until_fail: false,
            expect_fail: false,
            run_one: None,
            list_planted: false,
        }
    }
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

/// `K/N` with 1 <= K <= N: (K, N).
fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("--shard expects K/N with 1 <= K <= N (K is 1-based), got {s:?}");
    let (k, n) = s.split_once('/').ok_or_else(bad)?;
    let k: usize = k.trim().parse().map_err(|_| bad())?;
    let n: usize = n.trim().parse().map_err(|_| bad())?;
    if k == 0 || n == 0 || k > n {
        return Err(bad());
    }
    Ok((k, n))
}

/// The K-th (1-based) of N shares of `seeds`: the positions `i` with `i % N == K - 1`.
fn shard(seeds: &[u64], k: usize, n: usize) -> Vec<u64> {
    seeds
        .iter()
        .enumerate()
        .filter(|(i, _)| i % n == k - 1)
        .map(|(_, &seed)| seed)
        .collect()
}

fn parse_number<T: std::str::FromStr + PartialOrd + Copy + std::fmt::Display>(
    flag: &str,
    v: &str,
    min: T,
    max: T,
) -> Result<T, String> {
    v.trim()
        .parse()
        .ok()
        .filter(|n| *n >= min && *n <= max)
        .ok_or_else(|| format!("{flag} expects {min}..={max}, got {v:?}"))
}

/// Hand-rolled on purpose: the child must not build any `HashMap` before the simulated
/// runtime seeds std's hash keys, and an argument parser might. `argv` excludes the
/// program name. `Ok(None)`: print the usage.
fn parse_args(argv: &[String]) -> Result<Option<Args>, String> {
    let mut args = Args::default();
    let mut shard_spec = None;
    let mut check_all = false;
    let mut check_every = None;
    let mut i = 0;
    while i < argv.len() {
        let arg = &argv[i];
        i += 1;
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut take = || -> Result<String, String> {
            if let Some(v) = inline.clone() {
                return Ok(v);
            }
            let v = argv
                .get(i)
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))?;
            i += 1;
            Ok(v)
        };
        match flag {
            "-h" | "--help" => return Ok(None),
            "--seed" => {
                let v = take()?;
                let seed = v
                    .parse()
                    .map_err(|_| format!("--seed expects a number, got {v:?}"))?;
                args.seeds.push(seed);
            }
            "--seeds" => {
                let v = take()?;
                args.seeds.extend(parse_range(&v)?);
            }
            "--shard" => shard_spec = Some(parse_shard(&take()?)?),
            "--jobs" => args.jobs = parse_number("--jobs", &take()?, 1, 64)?,
            "--until-fail" => args.until_fail = true,
            "--expect-fail" => args.expect_fail = true,
            "--check-determinism" => check_all = true,
            "--check-determinism-every" => {
                check_every = Some(parse_number(
                    "--check-determinism-every",
                    &take()?,
                    1,
                    1_000_000,
                )?)
            }
            "--scenario" => {
                args.cluster = match take()?.as_str() {
                    "single" => false,
                    "cluster" => true,
                    other => {
                        return Err(format!(
                            "--scenario expects single or cluster, got {other:?}"
                        ))
                    }
                }
            }
            "--records" => args.records = parse_number("--records", &take()?, 1, 1_000_000)?,
            "--brokers" => {
                let v = take()?;
                args.brokers = match v.trim() {
                    "3" => 3,
                    "5" => 5,
                    _ => return Err(format!("--brokers expects 3 or 5, got {v:?}")),
                }
            }
            "--sim-seconds" => args.sim_seconds = parse_number("--sim-seconds", &take()?, 1, 3600)?,
            "--faults" => args.faults = Faults::parse(&take()?)?,
            "--planted" => {
                let v = take()?;
                if v.trim().is_empty() {
                    return Err("--planted needs a bug name".into());
                }
                args.planted = Some(v);
            }
            "--list-planted" => args.list_planted = true,
            "--trace" => {
                // `--trace=FILE`, `--trace FILE` (a next argument that is not a flag), or
                // a bare `--trace` (echo on stderr).
                let file = match inline.clone() {
                    Some(v) => Some(v),
                    None => match argv.get(i) {
                        Some(next) if !next.starts_with('-') => {
                            i += 1;
                            Some(next.clone())
                        }
                        _ => None,
                    },
                };
                match file {
                    Some(f) if f.is_empty() => return Err("--trace= needs a file name".into()),
                    Some(f) => args.trace_file = Some(f),
                    None => args.echo = true,
                }
            }
            "--run-one" => {
                let v = take()?;
                args.run_one = Some(
                    v.parse()
                        .map_err(|_| format!("--run-one: bad seed {v:?}"))?,
                );
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if check_all && check_every.is_some() {
        return Err("--check-determinism and --check-determinism-every exclude each other".into());
    }
    args.check_every = if check_all {
        1
    } else {
        check_every.unwrap_or(0)
    };
    if args.seeds.is_empty() {
        args.seeds = (1..21).collect();
    }
    if let Some((k, n)) = shard_spec {
        args.seeds = shard(&args.seeds, k, n);
    }
    Ok(Some(args))
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
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
    if args.list_planted {
        for bug in strand::planted::BUGS {
            println!("{}\t{}", bug.name, bug.description);
        }
        return ExitCode::SUCCESS;
    }
    if let Some(name) = &args.planted {
        // Checked here, in the parent as in each child: a misspelt bug must not make every
        // seed "fail" and so look caught.
        if !strand::planted::NAMES.contains(&name.as_str()) {
            eprintln!(
                "strand-sim: --planted {name:?}: no such planted bug; the planted bugs are: {}",
                strand::planted::NAMES.join(", ")
            );
            return ExitCode::from(2);
        }
    }
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
    // Opening a file builds no HashMap: this may precede the runtime.
    if let Some(path) = &args.trace_file {
        if let Err(e) = trace::open_file_sink(std::path::Path::new(path)) {
            eprintln!("strand-sim: --trace {path}: {e}");
            return ExitCode::from(2);
        }
    }
    let options = scenario::Options {
        records: args.records,
        trace: args.echo,
        brokers: args.brokers,
        sim_seconds: args.sim_seconds,
        faults: args.faults.clone(),
        planted: args.planted.clone(),
    };
    // Process-wide, before the simulated runtime starts (one seed per process).
    strand::planted::set(options.planted.as_deref());
    let report = if args.cluster {
        cluster_scenario::run_seed(seed, &options)
    } else {
        scenario::run_seed(seed, &options)
    };
    if let Some(path) = &args.trace_file {
        trace::file_sink_line(&format!("# {}", report.line()));
        if let Some(v) = &report.violation {
            trace::file_sink_line(&format!("# violated: {}: {}", v.invariant, v.detail));
        }
        if let Err(e) = trace::close_file_sink() {
            eprintln!("strand-sim: --trace {path}: {e}");
        }
    }
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

/// `s` quoted for a POSIX shell when it needs to be.
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.,/:=+@%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The arguments, after `--seed S`, that give a run of one seed the same scenario as
/// this one: everything that is not at its default.
fn scenario_args(args: &Args) -> Vec<String> {
    let mut out = Vec::new();
    let mut push = |flag: &str, value: String| {
        out.push(flag.to_string());
        out.push(value);
    };
    if args.cluster {
        push("--scenario", "cluster".into());
    }
    if args.records != DEFAULT_RECORDS {
        push("--records", args.records.to_string());
    }
    if args.brokers != DEFAULT_BROKERS {
        push("--brokers", args.brokers.to_string());
    }
    if args.sim_seconds != 0 {
        push("--sim-seconds", args.sim_seconds.to_string());
    }
    if !args.faults.is_all() {
        push("--faults", args.faults.to_string());
    }
    if let Some(planted) = &args.planted {
        push("--planted", planted.clone());
    }
    out
}

/// The command that replays one seed exactly, from the workspace root. `checked`: the
/// seed ran twice (a determinism check), so the replay does too.
fn replay_command(seed: u64, args: &Args, checked: bool) -> String {
    let mut cmd = format!("sim/run --seed {seed}");
    for a in scenario_args(args) {
        cmd.push(' ');
        cmd.push_str(&shell_quote(&a));
    }
    if checked {
        cmd.push_str(" --check-determinism");
    }
    cmd
}

/// Whether the seed at `position` in the list runs twice.
fn checked(args: &Args, position: usize) -> bool {
    args.check_every != 0 && position.is_multiple_of(args.check_every)
}

/// Where run `run` (0 or 1) of `seed` writes its `--trace FILE`, if anywhere.
fn trace_path(args: &Args, seed: u64, run: usize) -> Option<String> {
    let base = args.trace_file.as_ref()?;
    let mut path = if args.seeds.len() == 1 {
        base.clone()
    } else {
        format!("{base}.{seed}")
    };
    if run == 1 {
        path.push_str(".second");
    }
    Some(path)
}

/// The arguments of the child process that runs run `run` of `seed`.
fn child_args(seed: u64, args: &Args, run: usize) -> Vec<String> {
    let mut out = vec!["--run-one".to_string(), seed.to_string()];
    out.extend(scenario_args(args));
    if args.echo {
        out.push("--trace".into());
    }
    if let Some(path) = trace_path(args, seed, run) {
        out.push(format!("--trace={path}"));
    }
    out
}

/// One child run: its stdout (result line and detail lines) and whether it passed.
#[derive(Debug, Clone)]
struct ChildRun {
    stdout: String,
    passed: bool,
}

fn harness_failure(seed: u64, why: &str) -> String {
    format!(
        "seed={seed} outcome=fail sim_ms=0 events=0 faults=0 records_acked=0 digest={:016x}\n  violated: harness: {why}\n",
        0u64
    )
}

/// A child's result, from its exit status and stdout.
fn child_result(seed: u64, status: std::process::ExitStatus, stdout: String) -> ChildRun {
    let has_line = stdout
        .lines()
        .next()
        .is_some_and(|l| l.starts_with(&format!("seed={seed} ")));
    if !has_line {
        return ChildRun {
            stdout: harness_failure(
                seed,
                &format!("the seed's process ended ({status}) without a result line"),
            ),
            passed: false,
        };
    }
    ChildRun {
        stdout,
        passed: status.success(),
    }
}

/// One process to run: run `run` (0, or 1 for a determinism check) of the seed at
/// `position` in the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Task {
    position: usize,
    run: usize,
}

struct Running {
    /// Unique among the children of this run (the reader thread reports it).
    id: u64,
    task: Task,
    child: Child,
}

/// Runs the tasks in up to `args.jobs` processes at once. `on_done` gets every finished
/// task (in completion order) and returns the first position no task is needed for any
/// more (`usize::MAX`: all are needed): queued tasks at or past it are dropped, running
/// ones killed.
fn run_tasks(args: &Args, tasks: Vec<Task>, mut on_done: impl FnMut(Task, ChildRun) -> usize) {
    let exe = std::env::current_exe();
    let mut queue: VecDeque<Task> = tasks.into();
    let mut running: Vec<Running> = Vec::new();
    let (tx, rx) = mpsc::channel::<(u64, String)>();
    let mut next_id = 0u64;
    let mut cutoff = usize::MAX;
    loop {
        queue.retain(|t| t.position < cutoff);
        while running.len() < args.jobs {
            let Some(task) = queue.pop_front() else { break };
            let seed = args.seeds[task.position];
            let spawned = match &exe {
                Ok(exe) => Command::new(exe)
                    .args(child_args(seed, args, task.run))
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .map_err(|e| format!("cannot start the seed's process: {e}")),
                Err(e) => Err(format!("cannot find own executable: {e}")),
            };
            let mut child = match spawned {
                Ok(child) => child,
                Err(why) => {
                    let stdout = harness_failure(seed, &why);
                    let result = ChildRun {
                        stdout,
                        passed: false,
                    };
                    cutoff = cutoff.min(on_done(task, result));
                    queue.retain(|t| t.position < cutoff);
                    continue;
                }
            };
            // A thread per child drains its stdout (a chatty child never blocks on a full
            // pipe) and reports when the child closed it. Threads are fine here: the
            // parent never enters the simulated runtime.
            let id = next_id;
            next_id += 1;
            let mut pipe = child.stdout.take().expect("stdout is piped");
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                let _ = tx.send((id, String::from_utf8_lossy(&bytes).into_owned()));
            });
            running.push(Running { id, task, child });
        }
        if running.is_empty() {
            break;
        }
        let (id, stdout) = rx.recv().expect("a running child's reader reports");
        // A killed child's report arrives after it was removed: ignore it.
        let Some(index) = running.iter().position(|r| r.id == id) else {
            continue;
        };
        let Running {
            task, mut child, ..
        } = running.remove(index);
        let seed = args.seeds[task.position];
        let result = match child.wait() {
            Ok(status) => child_result(seed, status, stdout),
            Err(e) => ChildRun {
                stdout: harness_failure(seed, &format!("cannot wait for the seed's process: {e}")),
                passed: false,
            },
        };
        cutoff = cutoff.min(on_done(task, result));
        running.retain_mut(|r| {
            if r.task.position < cutoff {
                return true;
            }
            let _ = r.child.kill();
            let _ = r.child.wait();
            false
        });
    }
}

/// What the parent knows about one seed of the list.
#[derive(Default)]
struct SeedRuns {
    first: Option<ChildRun>,
    second: Option<ChildRun>,
}

/// The text printed for one seed once all its runs are in, and whether it passed.
fn seed_block(seed: u64, args: &Args, checked: bool, runs: &SeedRuns) -> (String, bool) {
    let first = runs.first.as_ref().expect("complete");
    let mut out = first.stdout.clone();
    let mut ok = first.passed;
    let mut determinism_failed = false;
    if let Some(second) = &runs.second {
        if second.stdout != first.stdout {
            ok = false;
            determinism_failed = true;
            out.push_str(&format!(
                "  violated: determinism: the second run of seed {seed} printed something else:\n"
            ));
            for line in second.stdout.lines() {
                out.push_str(&format!("    second run: {line}\n"));
            }
        }
    }
    if !ok {
        let cmd = replay_command(seed, args, checked);
        out.push_str(&format!("  replay: {cmd}\n"));
        match (trace_path(args, seed, 0), determinism_failed) {
            (Some(a), true) => {
                let b = trace_path(args, seed, 1).expect("same --trace");
                out.push_str(&format!("  trace: {a} and {b} (diff them)\n"));
            }
            (Some(a), false) => out.push_str(&format!("  trace: {a}\n")),
            (None, _) => {
                let plain = replay_command(seed, args, false);
                out.push_str(&format!(
                    "  details: {plain} --trace seed-{seed}.trace   (broker log lines: RUST_LOG=info {plain})\n"
                ));
            }
        }
    }
    (out, ok)
}

fn run_all(args: &Args) -> ExitCode {
    if let Some(file) = &args.trace_file {
        let dir = std::path::Path::new(file).parent();
        if let Some(dir) = dir.filter(|d| !d.as_os_str().is_empty() && !d.is_dir()) {
            eprintln!(
                "strand-sim: --trace {file}: {} is not a directory",
                dir.display()
            );
            return ExitCode::from(2);
        }
    }
    let n = args.seeds.len();
    let mut tasks = Vec::new();
    for position in 0..n {
        tasks.push(Task { position, run: 0 });
        if checked(args, position) {
            tasks.push(Task { position, run: 1 });
        }
    }
    let mut runs: Vec<SeedRuns> = (0..n).map(|_| SeedRuns::default()).collect();
    let mut next_print = 0usize;
    let mut passed = 0usize;
    let mut failed = 0usize;
    let mut first_failure: Option<u64> = None;
    let mut stop = n;
    run_tasks(args, tasks, |task, result| {
        let slot = &mut runs[task.position];
        if task.run == 0 {
            slot.first = Some(result);
        } else {
            slot.second = Some(result);
        }
        // Print every seed, in list order, whose runs are all in.
        while next_print < stop {
            let complete = runs[next_print].first.is_some()
                && (!checked(args, next_print) || runs[next_print].second.is_some());
            if !complete {
                break;
            }
            let seed = args.seeds[next_print];
            let (text, ok) = seed_block(seed, args, checked(args, next_print), &runs[next_print]);
            print!("{text}");
            if ok {
                passed += 1;
            } else {
                failed += 1;
                first_failure.get_or_insert(seed);
                if args.until_fail {
                    stop = next_print + 1;
                }
            }
            // The outputs are no longer needed.
            runs[next_print] = SeedRuns::default();
            next_print += 1;
        }
        // With --until-fail a failure past the printed ones also ends the list there:
        // the seeds before it still run, so the output is that of --jobs 1.
        if args.until_fail && !(result_passed(&runs[task.position])) {
            stop = stop.min(task.position + 1);
        }
        if stop < n {
            stop
        } else {
            usize::MAX
        }
    });
    if args.check_every != 0 {
        let twice = (0..next_print).filter(|&p| checked(args, p)).count();
        println!("determinism: {twice} of {next_print} seeds run twice and compared");
    }
    if stop < n {
        println!(
            "stopped at the first failure (--until-fail): {} of {n} seeds not reported",
            n - stop
        );
    }
    println!("{passed} passed, {failed} failed");
    let caught = failed > 0;
    if args.expect_fail {
        match first_failure {
            Some(seed) => println!("planted bug caught by seed {seed}"),
            None => println!("not caught in {passed} seeds"),
        }
    }
    if caught != args.expect_fail {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Whether the runs in so far of a seed not yet printed show no failure.
fn result_passed(runs: &SeedRuns) -> bool {
    runs.first.as_ref().is_none_or(|r| r.passed) && runs.second.as_ref().is_none_or(|r| r.passed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Args {
        let argv: Vec<String> = line.split_whitespace().map(String::from).collect();
        parse_args(&argv).unwrap().unwrap()
    }

    fn parse_err(line: &str) -> String {
        let argv: Vec<String> = line.split_whitespace().map(String::from).collect();
        parse_args(&argv).unwrap_err()
    }

    #[test]
    fn seed_ranges() {
        assert_eq!(parse_range("1..4").unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_range("1..=3").unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_range("7..8").unwrap(), vec![7]);
        assert!(parse_range("5..5").is_err());
        assert!(parse_range("5").is_err());
        assert!(parse_range("a..3").is_err());
    }

    #[test]
    fn defaults() {
        let args = parse("");
        assert_eq!(args.seeds, (1..21).collect::<Vec<_>>());
        assert_eq!(args.jobs, 1);
        assert_eq!(args.check_every, 0);
        assert!(args.faults.is_all());
        assert_eq!((args.brokers, args.sim_seconds), (3, 0));
        assert!(args.planted.is_none() && args.trace_file.is_none() && !args.echo);
        assert!(parse_args(&["--help".to_string()]).unwrap().is_none());
    }

    #[test]
    fn shard_selection() {
        assert_eq!(parse("--seeds 1..10 --shard 1/3").seeds, vec![1, 4, 7]);
        assert_eq!(parse("--seeds 1..10 --shard 2/3").seeds, vec![2, 5, 8]);
        assert_eq!(parse("--shard=3/3 --seeds 1..10").seeds, vec![3, 6, 9]);
        assert_eq!(parse("--seeds 5..7 --shard 1/1").seeds, vec![5, 6]);
        // The shares together are the list, each seed once.
        let mut all: Vec<u64> = (1..=4)
            .flat_map(|k| parse(&format!("--seeds 10..=30 --shard {k}/4")).seeds)
            .collect();
        all.sort();
        assert_eq!(all, (10..=30).collect::<Vec<_>>());
        // More shares than seeds: some are empty.
        assert!(parse("--seed 5 --shard 2/3").seeds.is_empty());
        for bad in ["0/3", "4/3", "1/0", "1", "a/b"] {
            assert!(
                parse_err(&format!("--shard {bad}")).contains("--shard"),
                "{bad}"
            );
        }
    }

    #[test]
    fn numeric_flags_are_bounded() {
        assert_eq!(parse("--jobs 2").jobs, 2);
        assert!(parse_err("--jobs 0").contains("--jobs"));
        assert!(parse_err("--jobs 65").contains("--jobs"));
        assert_eq!(parse("--brokers 5").brokers, 5);
        assert!(parse_err("--brokers 4").contains("3 or 5"));
        assert_eq!(parse("--sim-seconds 3600").sim_seconds, 3600);
        assert!(parse_err("--sim-seconds 0").contains("--sim-seconds"));
        assert!(parse_err("--sim-seconds 3601").contains("--sim-seconds"));
        assert!(parse_err("--records").contains("needs a value"));
    }

    #[test]
    fn determinism_checks() {
        let all = parse("--seeds 1..5 --check-determinism");
        assert!((0..4).all(|p| checked(&all, p)));
        let every = parse("--seeds 1..8 --check-determinism-every 3");
        let picked: Vec<u64> = (0..7)
            .filter(|&p| checked(&every, p))
            .map(|p| every.seeds[p])
            .collect();
        assert_eq!(picked, vec![1, 4, 7]);
        let none = parse("--seeds 1..5");
        assert!((0..4).all(|p| !checked(&none, p)));
        assert!(parse_err("--check-determinism --check-determinism-every 2").contains("exclude"));
        assert!(parse_err("--check-determinism-every 0").contains("every"));
    }

    #[test]
    fn trace_file_or_echo() {
        let echo = parse("--trace --seed 3");
        assert!(echo.echo && echo.trace_file.is_none());
        let echo_last = parse("--seed 3 --trace");
        assert!(echo_last.echo && echo_last.trace_file.is_none());
        let file = parse("--trace /tmp/x.trace --seed 3");
        assert_eq!(file.trace_file.as_deref(), Some("/tmp/x.trace"));
        assert!(!file.echo);
        assert_eq!(trace_path(&file, 3, 0).as_deref(), Some("/tmp/x.trace"));
        assert_eq!(
            trace_path(&file, 3, 1).as_deref(),
            Some("/tmp/x.trace.second")
        );
        let inline = parse("--trace=-odd --seeds 1..3");
        assert_eq!(inline.trace_file.as_deref(), Some("-odd"));
        assert_eq!(trace_path(&inline, 2, 0).as_deref(), Some("-odd.2"));
        assert_eq!(trace_path(&parse("--seed 1"), 1, 0), None);
    }

    #[test]
    fn faults_pass_through_to_the_child() {
        let args = parse("--seed 4 --scenario cluster --faults crash,partition,-crash,loss");
        let child = child_args(4, &args, 0);
        let at = child.iter().position(|a| a == "--faults").unwrap();
        assert_eq!(child[at + 1], "partition,loss");
        // The child reads back the same set.
        let back = parse_args(&child).unwrap().unwrap();
        assert_eq!(back.faults, args.faults);
        assert_eq!(back.run_one, Some(4));
        assert!(back.cluster);
        // The default (all) is not passed at all.
        assert!(!child_args(4, &parse("--seed 4"), 0).contains(&"--faults".to_string()));
        assert!(parse_err("--faults crash,bogus").contains("unknown fault kind"));
    }

    #[test]
    fn child_gets_every_scenario_option() {
        let args = parse(
            "--seeds 1..4 --records 50 --brokers 5 --sim-seconds 90 --faults none \
             --planted skip-fsync --trace --trace out.trace --jobs 2 --until-fail",
        );
        let child = child_args(2, &args, 1);
        let back = parse_args(&child).unwrap().unwrap();
        assert_eq!(back.run_one, Some(2));
        assert_eq!(back.records, 50);
        assert_eq!(back.brokers, 5);
        assert_eq!(back.sim_seconds, 90);
        assert_eq!(back.faults, Faults::none());
        assert_eq!(back.planted.as_deref(), Some("skip-fsync"));
        assert!(back.echo);
        assert_eq!(back.trace_file.as_deref(), Some("out.trace.2.second"));
        // Runner-only flags stay in the parent.
        assert_eq!(back.jobs, 1);
        assert!(!back.until_fail);
    }

    #[test]
    fn replay_commands() {
        assert_eq!(
            replay_command(7, &parse("--seeds 1..9"), false),
            "sim/run --seed 7"
        );
        let args = parse(
            "--seeds 1..9 --scenario cluster --records 50 --brokers 5 --sim-seconds 120 \
             --faults all,-corrupt --planted it's --jobs 2 --shard 1/2 --trace t",
        );
        assert_eq!(
            replay_command(7, &args, true),
            "sim/run --seed 7 --scenario cluster --records 50 --brokers 5 --sim-seconds 120 \
             --faults crash,pause,wipe,partition,loss,latency,clog,misdirect,disk-errors,slow-disk,buggify \
             --planted 'it'\\''s' --check-determinism"
        );
        // Defaults are left out; the replay parses back to the same scenario.
        let args = parse(
            "--seeds 1..9 --scenario cluster --records 50 --brokers 5 --sim-seconds 120 \
             --faults all,-corrupt --planted bug-x --jobs 2 --shard 1/2 --trace t",
        );
        let replay = replay_command(7, &args, false);
        let argv: Vec<String> = replay
            .split_whitespace()
            .skip(1)
            .map(String::from)
            .collect();
        let back = parse_args(&argv).unwrap().unwrap();
        assert_eq!(back.seeds, vec![7]);
        assert_eq!(back.faults, args.faults);
        assert_eq!(
            (back.cluster, back.records, back.brokers, back.sim_seconds),
            (true, 50, 5, 120)
        );
        assert_eq!(back.planted.as_deref(), Some("bug-x"));
        assert_eq!((back.jobs, back.trace_file), (1, None));
    }

    #[test]
    fn planted_bugs_are_listed() {
        assert!(parse("--list-planted").list_planted);
        assert!(!parse("--seed 1").list_planted);
        // The names the runner accepts come from the strand crate.
        assert!(strand::planted::NAMES.contains(&"ack-before-quorum"));
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("crash,loss"), "crash,loss");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
