//! The fault kinds a run may inject, chosen with `--faults`.
//!
//! Each kind is switched on or off for the whole run; how often it fires (its rate) is
//! drawn from the seed by the scenario. `all` (the default) turns every kind on, `none`
//! turns every kind off; a list like `crash,partition` turns on only those, and
//! `all,-corrupt` everything but one.

#![cfg_attr(not(madsim), allow(dead_code))]

use std::collections::BTreeSet;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// Kill a broker at any moment (unsynced writes lost, some of them torn) and restart it.
    Crash,
    /// Pause a broker's node and resume it later (a stop-the-world GC, a SIGSTOP).
    Pause,
    /// Restart a broker with an empty disk (a replaced machine).
    Wipe,
    /// Network partitions: minority/majority, one-way, bridge.
    Partition,
    /// Packet loss on every link.
    Loss,
    /// Latency spikes on every link.
    Latency,
    /// Clogging of single links, and swizzle clogging (clog one by one, unclog in reverse).
    Clog,
    /// Bit flips in fsynced data of at most a minority of the replicas.
    Corrupt,
    /// Misdirected writes: data written at the wrong position.
    Misdirect,
    /// Read, write and fsync errors (EIO), ENOSPC; a failed fsync drops the dirty pages.
    DiskErrors,
    /// A slow disk: fsyncs take milliseconds to seconds.
    SlowDisk,
    /// BUGGIFY points inside the broker: tiny segments, forced rolls, small fetches.
    Buggify,
}

impl FaultKind {
    pub const ALL: [FaultKind; 12] = [
        FaultKind::Crash,
        FaultKind::Pause,
        FaultKind::Wipe,
        FaultKind::Partition,
        FaultKind::Loss,
        FaultKind::Latency,
        FaultKind::Clog,
        FaultKind::Corrupt,
        FaultKind::Misdirect,
        FaultKind::DiskErrors,
        FaultKind::SlowDisk,
        FaultKind::Buggify,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Crash => "crash",
            FaultKind::Pause => "pause",
            FaultKind::Wipe => "wipe",
            FaultKind::Partition => "partition",
            FaultKind::Loss => "loss",
            FaultKind::Latency => "latency",
            FaultKind::Clog => "clog",
            FaultKind::Corrupt => "corrupt",
            FaultKind::Misdirect => "misdirect",
            FaultKind::DiskErrors => "disk-errors",
            FaultKind::SlowDisk => "slow-disk",
            FaultKind::Buggify => "buggify",
        }
    }

    fn from_name(name: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// The set of fault kinds switched on for a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Faults(BTreeSet<FaultKind>);

impl Default for Faults {
    fn default() -> Self {
        Faults::all()
    }
}

impl Faults {
    pub fn all() -> Faults {
        Faults(FaultKind::ALL.into_iter().collect())
    }

    pub fn none() -> Faults {
        Faults(BTreeSet::new())
    }

    pub fn on(&self, kind: FaultKind) -> bool {
        self.0.contains(&kind)
    }

    pub fn is_all(&self) -> bool {
        self.0.len() == FaultKind::ALL.len()
    }

    /// Parses `all`, `none`, `crash,partition`, `all,-corrupt,-wipe`.
    pub fn parse(list: &str) -> Result<Faults, String> {
        let mut faults = Faults::none();
        for (i, item) in list.split(',').map(str::trim).enumerate() {
            match item {
                "all" => faults = Faults::all(),
                "none" if i == 0 => faults = Faults::none(),
                _ => {
                    let (remove, name) = match item.strip_prefix('-') {
                        Some(name) => (true, name),
                        None => (false, item),
                    };
                    let kind = FaultKind::from_name(name).ok_or_else(|| {
                        let known: Vec<_> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                        format!(
                            "--faults: unknown fault kind {name:?}; known: all, none, {}",
                            known.join(", ")
                        )
                    })?;
                    if remove {
                        faults.0.remove(&kind);
                    } else {
                        faults.0.insert(kind);
                    }
                }
            }
        }
        Ok(faults)
    }
}

/// `all`, `none`, or the kinds' names joined by commas: what `parse` reads back.
impl fmt::Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_all() {
            return f.write_str("all");
        }
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let names: Vec<_> = self.0.iter().map(|k| k.name()).collect();
        f.write_str(&names.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        assert!(Faults::parse("all").unwrap().is_all());
        assert_eq!(Faults::parse("none").unwrap(), Faults::none());
        let some = Faults::parse("crash,partition").unwrap();
        assert!(some.on(FaultKind::Crash) && some.on(FaultKind::Partition));
        assert!(!some.on(FaultKind::Corrupt));
        assert_eq!(Faults::parse(&some.to_string()).unwrap(), some);
        let most = Faults::parse("all,-corrupt").unwrap();
        assert!(!most.on(FaultKind::Corrupt) && most.on(FaultKind::Crash));
        assert_eq!(Faults::parse(&most.to_string()).unwrap(), most);
        assert!(Faults::parse("crash,bogus").is_err());
        assert_eq!(Faults::parse("all").unwrap().to_string(), "all");
    }
}
