//! Which transactional ids this broker coordinates: one [`TxnCoordinator`] per
//! `__transaction_state` partition it leads.
//!
//! A transactional id belongs to the partition `abs(javaHashCode(transactional.id)) %
//! partitions` (Kafka's rule, the same as for consumer groups). A partition's
//! coordinator exists only while this broker leads it: when leadership arrives it first
//! replays the partition's committed records (requests for its ids get
//! COORDINATOR_LOAD_IN_PROGRESS meanwhile), then carries out the markers of every
//! transaction the previous coordinator had prepared; when leadership goes, its state
//! is dropped and its ids get NOT_COORDINATOR. The leader epoch of the partition is the
//! coordinator epoch its markers carry. No I/O: the broker feeds it leadership changes
//! and the records it read.

use super::coordinator::{Effect, TxnConfig, TxnCoordinator};
use super::records::TxnRecord;
use crate::coordinator_shards::Shards;
use kafka_protocol::ResponseError;

/// The name of the internal topic.
pub const TRANSACTION_STATE_TOPIC: &str = "__transaction_state";

/// `transaction.state.log.num.partitions`' default.
pub const DEFAULT_PARTITIONS: i32 = 50;

/// The `__transaction_state` partition of a transactional id.
pub fn partition_for(transactional_id: &str, partitions: i32) -> i32 {
    crate::group::host::partition_for(transactional_id, partitions)
}

/// The transactions of the `__transaction_state` partitions led here. Dereferences to
/// its [`Shards`] (leadership, loading, serving).
pub struct TxnCoordinatorHost {
    config: TxnConfig,
    shards: Shards<TxnCoordinator>,
}

impl std::ops::Deref for TxnCoordinatorHost {
    type Target = Shards<TxnCoordinator>;
    fn deref(&self) -> &Self::Target {
        &self.shards
    }
}

impl std::ops::DerefMut for TxnCoordinatorHost {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.shards
    }
}

impl TxnCoordinatorHost {
    pub fn new(config: TxnConfig, partitions: i32) -> TxnCoordinatorHost {
        TxnCoordinatorHost {
            config,
            shards: Shards::new(partitions),
        }
    }

    pub fn partition_for(&self, transactional_id: &str) -> i32 {
        partition_for(transactional_id, self.partitions())
    }

    /// The partition's records, read back for the leadership of `epoch`: its ids are
    /// served from now on, and the returned effects complete what the previous
    /// coordinator prepared (markers to write, or records of transactions with nothing
    /// to mark). Records of another partition's ids are ignored. Stale loads (an
    /// earlier epoch, or a partition no longer led) change nothing.
    pub fn loaded(
        &mut self,
        partition: i32,
        epoch: i32,
        records: &[TxnRecord],
        now_ms: i64,
    ) -> Vec<Effect> {
        if !self.is_loading(partition, epoch) {
            return Vec::new();
        }
        let mut coordinator = Box::new(TxnCoordinator::new(self.config.clone(), epoch));
        for record in records {
            if partition_for(&record.transactional_id, self.partitions()) == partition {
                coordinator.replay(record);
            }
        }
        let effects = coordinator.pending_markers(now_ms);
        self.activate(partition, epoch, coordinator);
        effects
    }

    /// The coordinator of `transactional_id`'s partition, or the error a request for
    /// that id gets here.
    pub fn coordinator(
        &mut self,
        transactional_id: &str,
    ) -> Result<&mut TxnCoordinator, ResponseError> {
        let partition = partition_for(transactional_id, self.partitions());
        self.coordinator_of(partition)
    }
}
