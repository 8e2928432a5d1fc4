//! A partition as the broker hosts it: its log behind a lock, and its identity.
//!
//! On a single node the leader epoch is 0 and the high watermark is the log end
//! offset; replication (issue 4) turns this into a Raft group's replica.

use crate::log::{FlushTicket, PartitionLog};
use std::collections::BTreeSet;
use std::io;
use std::sync::{Mutex, MutexGuard};

pub struct Partition {
    pub topic: String,
    pub index: i32,
    log: Mutex<PartitionLog>,
    corruption_reported: Mutex<BTreeSet<(i64, u64)>>,
}

/// Leader epoch of every partition of a single-node broker.
pub const SINGLE_NODE_LEADER_EPOCH: i32 = 0;

impl Partition {
    pub fn new(topic: String, index: i32, log: PartitionLog) -> Partition {
        Partition {
            topic,
            index,
            log: Mutex::new(log),
            corruption_reported: Mutex::default(),
        }
    }

    pub fn key(&self) -> (String, i32) {
        (self.topic.clone(), self.index)
    }

    /// Locks the log. Never hold this across an `.await`.
    pub fn log(&self) -> MutexGuard<'_, PartitionLog> {
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The offset consumers may read up to (exclusive).
    pub fn high_watermark(&self) -> i64 {
        self.log().log_end_offset()
    }

    pub fn begin_flush(&self) -> io::Result<FlushTicket> {
        self.log().begin_flush()
    }

    pub fn flushed(&self, up_to_offset: i64) {
        self.log().flushed(up_to_offset)
    }
}

impl Partition {
    /// Logs a corrupt batch the first time it is seen (reads keep refusing it).
    pub fn report_corruption(&self, segment_base_offset: i64, position: u64) {
        let mut seen = self
            .corruption_reported
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if seen.len() < 1024 && seen.insert((segment_base_offset, position)) {
            tracing::error!(topic = %self.topic, partition = self.index, segment_base_offset, position,
                "corrupt record batch on disk: CRC32C mismatch; it will not be served");
        }
    }
}
