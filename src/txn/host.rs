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
use kafka_protocol::ResponseError;
use std::collections::BTreeMap;

/// The name of the internal topic.
pub const TRANSACTION_STATE_TOPIC: &str = "__transaction_state";

/// `transaction.state.log.num.partitions`' default.
pub const DEFAULT_PARTITIONS: i32 = 50;

/// The `__transaction_state` partition of a transactional id.
pub fn partition_for(transactional_id: &str, partitions: i32) -> i32 {
    crate::group::host::partition_for(transactional_id, partitions)
}

enum Shard {
    /// Leader since `epoch`, replaying the partition's records.
    Loading { epoch: i32 },
    Active {
        epoch: i32,
        coordinator: Box<TxnCoordinator>,
    },
}

impl Shard {
    fn epoch(&self) -> i32 {
        match self {
            Shard::Loading { epoch } | Shard::Active { epoch, .. } => *epoch,
        }
    }
}

pub struct TxnCoordinatorHost {
    config: TxnConfig,
    partitions: i32,
    shards: BTreeMap<i32, Shard>,
}

impl TxnCoordinatorHost {
    pub fn new(config: TxnConfig, partitions: i32) -> TxnCoordinatorHost {
        assert!(partitions > 0, "the transaction state topic has partitions");
        TxnCoordinatorHost {
            config,
            partitions,
            shards: BTreeMap::new(),
        }
    }

    pub fn partition_for(&self, transactional_id: &str) -> i32 {
        partition_for(transactional_id, self.partitions)
    }

    /// This broker leads `partition` from `epoch` on: its records are to be replayed
    /// (then [`Self::loaded`]). A later epoch of a partition being loaded starts over.
    pub fn became_leader(&mut self, partition: i32, epoch: i32) {
        assert!((0..self.partitions).contains(&partition));
        assert!(epoch >= 0, "a leader epoch");
        if self.epoch(partition).is_some_and(|e| e >= epoch) {
            return;
        }
        self.shards.insert(partition, Shard::Loading { epoch });
    }

    /// This broker no longer leads `partition`: its transactions' state is dropped.
    pub fn resigned(&mut self, partition: i32) {
        self.shards.remove(&partition);
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
        if !matches!(self.shards.get(&partition), Some(Shard::Loading { epoch: e }) if *e == epoch)
        {
            return Vec::new();
        }
        let mut coordinator = Box::new(TxnCoordinator::new(self.config.clone(), epoch));
        for record in records {
            if partition_for(&record.transactional_id, self.partitions) == partition {
                coordinator.replay(record);
            }
        }
        let effects = coordinator.pending_markers(now_ms);
        self.shards
            .insert(partition, Shard::Active { epoch, coordinator });
        effects
    }

    /// The coordinator of `transactional_id`'s partition, or the error a request for
    /// that id gets here.
    pub fn coordinator(
        &mut self,
        transactional_id: &str,
    ) -> Result<&mut TxnCoordinator, ResponseError> {
        let partition = partition_for(transactional_id, self.partitions);
        match self.shards.get_mut(&partition) {
            None => Err(ResponseError::NotCoordinator),
            Some(Shard::Loading { .. }) => Err(ResponseError::CoordinatorLoadInProgress),
            Some(Shard::Active { coordinator, .. }) => Ok(&mut **coordinator),
        }
    }

    /// The transaction state topic's partition count this host was made for.
    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    /// The leadership epoch this host holds `partition` for (loading or serving).
    pub fn epoch(&self, partition: i32) -> Option<i32> {
        self.shards.get(&partition).map(Shard::epoch)
    }

    /// The coordinator of `partition` if it serves for exactly `epoch` (markers
    /// written and records persisted in one leadership are reported only to the state
    /// of that leadership).
    pub fn serving(&mut self, partition: i32, epoch: i32) -> Option<&mut TxnCoordinator> {
        match self.shards.get_mut(&partition) {
            Some(Shard::Active {
                epoch: e,
                coordinator,
            }) if *e == epoch => Some(&mut **coordinator),
            _ => None,
        }
    }

    /// Whether a partition led here is still loading (ListTransactions then answers
    /// COORDINATOR_LOAD_IN_PROGRESS, as Kafka does).
    pub fn any_loading(&self) -> bool {
        self.shards
            .values()
            .any(|s| matches!(s, Shard::Loading { .. }))
    }

    /// Every coordinator serving now, by partition (to tick them, list transactions).
    pub fn active(&mut self) -> impl Iterator<Item = (i32, &mut TxnCoordinator)> {
        self.shards.iter_mut().filter_map(|(p, s)| match s {
            Shard::Active { coordinator, .. } => Some((*p, &mut **coordinator)),
            Shard::Loading { .. } => None,
        })
    }
}
