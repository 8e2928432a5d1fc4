//! Planted bugs: deliberate mistakes, each switched on by name at run time, that prove the
//! simulator can see (docs/simulation.md, "Planted bugs").
//!
//! Each bug is one `if crate::planted::on("name") { ...wrong behaviour... }` at the place
//! in the code it breaks. The hooks exist only with the cargo feature `planted-bugs`, which
//! the simulation build (`sim/`) turns on and nothing else does: without it [`on`] is a
//! constant `false` and every hook compiles away. Even with the feature, a hook does
//! nothing until [`set`] names its bug; the simulator runs one seed per process, so the
//! selection is process-wide.
//!
//! To add a bug: a row in [`BUGS`], a hook where the code goes wrong, and a line in
//! `sim/planted-check` with the fault kinds that expose it.

/// One planted bug.
#[derive(Debug, Clone, Copy)]
pub struct Bug {
    pub name: &'static str,
    /// What the bug breaks, in one line.
    pub description: &'static str,
}

/// Every planted bug, with what it breaks.
pub const BUGS: [Bug; 25] = [
    Bug {
        name: "ack-before-quorum",
        description: "acks=all is answered once the leader's own write is fsynced, not at commit by a quorum",
    },
    Bug {
        name: "hw-before-commit",
        description: "Fetch serves (and reports as high watermark) the leader's log end instead of the committed offset",
    },
    Bug {
        name: "skip-read-crc",
        description: "segment reads do not verify the CRC32C of the batches they serve",
    },
    Bug {
        name: "trust-torn-tail",
        description: "segment recovery keeps a tail batch that fails its CRC (a torn write) instead of cutting it",
    },
    Bug {
        name: "vote-not-persisted",
        description: "a changed Raft hard state (term, vote) is not written before the messages that depend on it go out",
    },
    Bug {
        name: "skip-fsync",
        description: "the replication round writes entries and hard state but never fsyncs them",
    },
    Bug {
        name: "vote-without-log-check",
        description: "a replica grants its (pre-)vote without checking that the candidate's log is at least as up to date",
    },
    Bug {
        name: "skip-dir-fsync",
        description: "no directory fsync after creating a new segment or renaming a file into place",
    },
    Bug {
        name: "ignore-failed-fsync",
        description: "the replication round treats a failed fsync as success and carries on",
    },
    Bug {
        name: "reuse-offset-after-leader-change",
        description: "a producer waiting on an entry replaced after a leader change is acknowledged with the offset the new entry took",
    },
    Bug {
        name: "stale-leader-epoch",
        description: "a new partition leader is recorded in the metadata log under the epoch of the leader before it",
    },
    Bug {
        name: "duplicate-on-retry",
        description: "a leader re-proposes the batches still waiting for commit after a leader change, though they may commit already",
    },
    Bug {
        name: "group-generation-not-bumped",
        description: "a group's rebalances after its first generation keep that generation's id",
    },
    Bug {
        name: "group-ack-before-durable",
        description: "the group coordinator answers (and applies offset commits) as soon as its records are proposed, not once they are committed",
    },
    Bug {
        name: "group-load-before-term-commit",
        description: "a new group coordinator loads its partition before its leader committed an entry of its own term (it may miss records an earlier leader committed)",
    },
    Bug {
        name: "group-serve-before-load",
        description: "a new group coordinator serves its groups at once, from nothing, instead of first replaying its partition's records",
    },
    Bug {
        name: "forget-sequence-window-on-leader-change",
        description: "a new partition leader ignores the producer state its log holds for batches of earlier terms, so a retry of such a batch is appended again",
    },
    Bug {
        name: "duplicate-acked-before-commit",
        description: "a retried idempotent batch whose original is in the leader's log is acknowledged at once, though the original may not commit",
    },
    Bug {
        name: "producer-state-kept-on-truncation",
        description: "a replica whose divergent log tail is cut keeps what the cut batches told its producer state (a later leader takes a retry of a lost batch for a duplicate)",
    },
    Bug {
        name: "markers-to-some-partitions",
        description: "the transaction coordinator writes a transaction's marker to its first partition only, then completes the transaction",
    },
    Bug {
        name: "stale-epoch-produce-accepted",
        description: "a partition leader appends a transactional or idempotent batch of a producer epoch older than the one it knows (a fenced zombie's), without the KIP-890 verification that would refuse it first",
    },
    Bug {
        name: "lso-from-high-watermark",
        description: "the last stable offset is the high watermark: read_committed reads ignore open transactions",
    },
    Bug {
        name: "skip-aborted-list",
        description: "a read_committed Fetch lists no aborted transactions, so consumers keep aborted records",
    },
    Bug {
        name: "compaction-keeps-aborted-records",
        description: "log compaction treats an aborted transaction's records as committed: they shadow older records of their keys",
    },
    Bug {
        name: "end-txn-without-epoch-bump",
        description: "the transaction coordinator ends a transaction version 2 transaction (EndTxn v5) without bumping the producer epoch, and answers with the same epoch: a late batch of the ended transaction joins the next one (KAFKA-17754)",
    },
];

const COUNT: usize = BUGS.len();

const NAMES_ARRAY: [&str; COUNT] = {
    let mut names = [""; COUNT];
    let mut i = 0;
    while i < COUNT {
        names[i] = BUGS[i].name;
        i += 1;
    }
    names
};

/// The name of every planted bug, in the order of [`BUGS`].
pub const NAMES: &[&str] = &NAMES_ARRAY;

/// The description of bug `name`, if it is one.
pub fn description(name: &str) -> Option<&'static str> {
    BUGS.iter().find(|b| b.name == name).map(|b| b.description)
}

#[cfg(feature = "planted-bugs")]
mod selection {
    use super::NAMES;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// 0: no bug; i + 1: `NAMES[i]`.
    static SELECTED: AtomicUsize = AtomicUsize::new(0);

    fn index(name: &str) -> usize {
        NAMES
            .iter()
            .position(|n| *n == name)
            .unwrap_or_else(|| panic!("unknown planted bug {name:?}"))
    }

    pub fn on(name: &str) -> bool {
        // The name is checked even when nothing is selected: a misspelt hook must not
        // silently never fire.
        let i = index(name);
        SELECTED.load(Ordering::Relaxed) == i + 1
    }

    pub fn set(name: Option<&str>) {
        let value = name.map(|n| index(n) + 1).unwrap_or(0);
        SELECTED.store(value, Ordering::Relaxed);
    }

    pub fn selected() -> Option<&'static str> {
        match SELECTED.load(Ordering::Relaxed) {
            0 => None,
            i => Some(NAMES[i - 1]),
        }
    }
}

/// Whether the planted bug `name` is switched on. Always `false` (a constant) in a build
/// without the `planted-bugs` feature.
#[cfg(feature = "planted-bugs")]
#[inline]
pub fn on(name: &str) -> bool {
    selection::on(name)
}

/// Whether the planted bug `name` is switched on. Always `false` (a constant) in a build
/// without the `planted-bugs` feature.
#[cfg(not(feature = "planted-bugs"))]
#[inline(always)]
pub const fn on(_name: &str) -> bool {
    false
}

/// Switches on the planted bug `name` for the whole process (`None`: none). Panics on a
/// name not in [`NAMES`], and on any name in a build without the `planted-bugs` feature.
pub fn set(name: Option<&str>) {
    #[cfg(feature = "planted-bugs")]
    selection::set(name);
    #[cfg(not(feature = "planted-bugs"))]
    if let Some(name) = name {
        panic!("planted bug {name:?}: this build has no planted bugs (feature planted-bugs)");
    }
}

/// The planted bug switched on, if any.
pub fn selected() -> Option<&'static str> {
    #[cfg(feature = "planted-bugs")]
    return selection::selected();
    #[cfg(not(feature = "planted-bugs"))]
    None
}

/// Whether this build has the hooks at all.
pub const ENABLED: bool = cfg!(feature = "planted-bugs");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_on_unless_set() {
        assert_eq!(selected(), None);
        for name in NAMES {
            assert!(!on(name), "{name} is on though nothing was set");
        }
    }

    #[test]
    fn names_are_unique_and_described() {
        for (i, bug) in BUGS.iter().enumerate() {
            assert_eq!(NAMES[i], bug.name);
            assert!(!bug.description.is_empty());
            assert!(
                bug.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'-'),
                "{}",
                bug.name
            );
            assert_eq!(NAMES.iter().filter(|n| **n == bug.name).count(), 1);
            assert_eq!(description(bug.name), Some(bug.description));
        }
        assert_eq!(description("no-such-bug"), None);
    }

    #[cfg(not(feature = "planted-bugs"))]
    #[test]
    fn without_the_feature_on_is_a_constant() {
        // Evaluated by the compiler: `on` is a constant false without the feature.
        const _: () = assert!(!on("ack-before-quorum") && !ENABLED);
        set(None);
        assert!(std::panic::catch_unwind(|| set(Some("ack-before-quorum"))).is_err());
    }
}
