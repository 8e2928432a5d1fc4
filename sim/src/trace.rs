//! The event trace of one seed and its digest.
//!
//! Every observation the workload makes (produce acknowledgements, fetched offsets and
//! values, high watermarks, node kills and restarts) is recorded together with the
//! simulated time it was made at. The digest is a 64-bit FNV-1a hash over that sequence:
//! two runs of the same seed must produce the same digest, byte for byte.
//!
//! A run may also write every event to a file (`--trace FILE`): the child process opens
//! the file sink with [`open_file_sink`] before the scenario builds its `Trace`, the trace
//! writes one line per event into it, and [`close_file_sink`] flushes it at the end. The
//! file never influences the digest.

#![cfg_attr(not(madsim), allow(dead_code))]

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a: fixed, seedless, the same on every platform and run.
pub fn fnv1a(state: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(state, |h, b| (h ^ *b as u64).wrapping_mul(FNV_PRIME))
}

pub fn hash_bytes(bytes: &[u8]) -> u64 {
    fnv1a(FNV_OFFSET, bytes)
}

/// How many of the latest events a trace keeps for a failure report.
pub const LAST_EVENTS: usize = 24;

/// The open `--trace FILE` of this process, if any: a process-wide slot so that the
/// scenarios keep building their trace with `Trace::new(echo)`.
static FILE_SINK: Mutex<Option<Arc<Mutex<FileSink>>>> = Mutex::new(None);

struct FileSink {
    out: BufWriter<File>,
    /// The first write error; reported by [`close_file_sink`].
    error: Option<io::Error>,
}

/// Creates (truncates) `path`; every `Trace` built afterwards in this process writes its
/// events into it.
pub fn open_file_sink(path: &Path) -> io::Result<()> {
    let file = File::create(path)?;
    let sink = FileSink {
        out: BufWriter::new(file),
        error: None,
    };
    *FILE_SINK.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(Mutex::new(sink)));
    Ok(())
}

/// Writes `line` (and a newline) to the file sink, if one is open.
pub fn file_sink_line(line: &str) {
    if let Some(sink) = FILE_SINK.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        sink.lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_line(line);
    }
}

/// Flushes and closes the file sink; the first error any write met, if one did.
pub fn close_file_sink() -> io::Result<()> {
    let Some(sink) = FILE_SINK.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return Ok(());
    };
    let mut sink = sink.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = sink.error.take() {
        return Err(e);
    }
    sink.out.flush()
}

impl FileSink {
    fn write_line(&mut self, line: &str) {
        if self.error.is_none() {
            if let Err(e) = writeln!(self.out, "{line}") {
                self.error = Some(e);
            }
        }
    }
}

pub struct Trace {
    digest: u64,
    events: u64,
    last: std::collections::VecDeque<String>,
    /// Simulated nanoseconds since the start of the run at the latest event.
    pub last_sim_ns: u128,
    echo: bool,
    /// The `--trace FILE` sink open when the trace was built.
    file: Option<Arc<Mutex<FileSink>>>,
}

impl Trace {
    pub fn new(echo: bool) -> Trace {
        Trace {
            digest: FNV_OFFSET,
            events: 0,
            last: std::collections::VecDeque::with_capacity(LAST_EVENTS),
            last_sim_ns: 0,
            echo,
            file: FILE_SINK.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }

    /// Records one event observed at `sim_ns` (simulated time since start).
    pub fn record(&mut self, sim_ns: u128, event: &str) {
        self.events += 1;
        self.last_sim_ns = sim_ns;
        self.digest = fnv1a(self.digest, &sim_ns.to_le_bytes());
        self.digest = fnv1a(self.digest, event.as_bytes());
        self.digest = fnv1a(self.digest, b"\n");
        if self.last.len() == LAST_EVENTS {
            self.last.pop_front();
        }
        self.last
            .push_back(format!("[sim {:.3} ms] {event}", sim_ns as f64 / 1e6));
        if self.echo {
            eprintln!(
                "[sim {:>10.3} ms] #{:<5} {event}",
                sim_ns as f64 / 1e6,
                self.events
            );
        }
        if let Some(file) = &self.file {
            // Exact simulated time, so that two traces of one seed can be diffed.
            let line = format!(
                "[sim {}.{:06} ms] #{} {event}",
                sim_ns / 1_000_000,
                sim_ns % 1_000_000,
                self.events
            );
            file.lock()
                .unwrap_or_else(|e| e.into_inner())
                .write_line(&line);
        }
    }

    pub fn digest(&self) -> u64 {
        self.digest
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    /// The latest events (at most [`LAST_EVENTS`]), oldest first.
    pub fn last_events(&self) -> Vec<String> {
        self.last.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_known_values() {
        assert_eq!(hash_bytes(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash_bytes(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    /// Tests that build a `Trace` hold this: the file sink is process-wide.
    static SINK_LOCK: Mutex<()> = Mutex::new(());

    #[test]
    fn digest_depends_on_order_and_time() {
        let _guard = SINK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut a = Trace::new(false);
        a.record(1, "x");
        a.record(2, "y");
        let mut b = Trace::new(false);
        b.record(1, "y");
        b.record(2, "x");
        let mut c = Trace::new(false);
        c.record(1, "x");
        c.record(3, "y");
        assert_ne!(a.digest(), b.digest());
        assert_ne!(a.digest(), c.digest());
    }

    #[test]
    fn file_sink_gets_every_event_and_leaves_the_digest_alone() {
        let _guard = SINK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let path = std::env::temp_dir().join(format!(
            "strand-sim-trace-test-{}.trace",
            std::process::id()
        ));
        let mut plain = Trace::new(false);
        plain.record(1_500_000, "a");
        plain.record(2_000_001, "b");
        open_file_sink(&path).unwrap();
        let mut filed = Trace::new(false);
        filed.record(1_500_000, "a");
        filed.record(2_000_001, "b");
        file_sink_line("# end");
        close_file_sink().unwrap();
        assert_eq!(plain.digest(), filed.digest());
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            text,
            "[sim 1.500000 ms] #1 a\n[sim 2.000001 ms] #2 b\n# end\n"
        );
    }
}
