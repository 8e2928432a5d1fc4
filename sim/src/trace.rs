//! The event trace of one seed and its digest.
//!
//! Every observation the workload makes (produce acknowledgements, fetched offsets and
//! values, high watermarks, node kills and restarts) is recorded together with the
//! simulated time it was made at. The digest is a 64-bit FNV-1a hash over that sequence:
//! two runs of the same seed must produce the same digest, byte for byte.

#![cfg_attr(not(madsim), allow(dead_code))]

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

pub struct Trace {
    digest: u64,
    events: u64,
    last: std::collections::VecDeque<String>,
    /// Simulated nanoseconds since the start of the run at the latest event.
    pub last_sim_ns: u128,
    echo: bool,
}

impl Trace {
    pub fn new(echo: bool) -> Trace {
        Trace {
            digest: FNV_OFFSET,
            events: 0,
            last: std::collections::VecDeque::with_capacity(LAST_EVENTS),
            last_sim_ns: 0,
            echo,
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

    #[test]
    fn digest_depends_on_order_and_time() {
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
}
