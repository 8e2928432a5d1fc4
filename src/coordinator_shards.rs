//! The partitions of a coordinator topic (`__consumer_offsets`, `__transaction_state`)
//! that this broker leads, each with its coordinator: shared by the group and the
//! transaction coordinator hosts (`group::host`, `txn::host`).
//!
//! A partition's shard exists only while this broker leads it: when leadership of epoch
//! E arrives the shard is Loading (its committed records are being replayed; requests
//! for its keys get COORDINATOR_LOAD_IN_PROGRESS), then Active with the coordinator the
//! replay built; when leadership goes the shard is dropped and its keys get
//! NOT_COORDINATOR, as Kafka answers. Records written in one leadership are applied only
//! to the state of that same leadership ([`Shards::serving`]). No I/O.

use kafka_protocol::ResponseError;
use std::collections::BTreeMap;

enum Shard<C> {
    /// Leader since `epoch`, replaying the partition's records.
    Loading {
        epoch: i32,
    },
    Active {
        epoch: i32,
        coordinator: Box<C>,
    },
}

impl<C> Shard<C> {
    fn epoch(&self) -> i32 {
        match self {
            Shard::Loading { epoch } | Shard::Active { epoch, .. } => *epoch,
        }
    }
}

/// The led partitions of a coordinator topic of `partitions` partitions.
pub struct Shards<C> {
    partitions: i32,
    shards: BTreeMap<i32, Shard<C>>,
}

impl<C> Shards<C> {
    pub fn new(partitions: i32) -> Shards<C> {
        assert!(partitions > 0, "a coordinator topic has partitions");
        Shards {
            partitions,
            shards: BTreeMap::new(),
        }
    }

    /// The topic's partition count these shards were made for.
    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    /// This broker leads `partition` from `epoch` on: its records are to be replayed
    /// (then [`Self::activate`]). A later epoch of a partition being loaded starts over;
    /// an earlier or equal one changes nothing.
    pub fn became_leader(&mut self, partition: i32, epoch: i32) {
        assert!((0..self.partitions).contains(&partition));
        assert!(epoch >= 0, "a leader epoch");
        if self.epoch(partition).is_some_and(|e| e >= epoch) {
            return;
        }
        self.shards.insert(partition, Shard::Loading { epoch });
    }

    /// This broker no longer leads `partition`: its state is dropped.
    pub fn resigned(&mut self, partition: i32) {
        self.shards.remove(&partition);
    }

    /// Whether `partition` is being loaded for exactly the leadership of `epoch` (a load
    /// that is not is stale, and must change nothing).
    pub fn is_loading(&self, partition: i32, epoch: i32) -> bool {
        matches!(self.shards.get(&partition), Some(Shard::Loading { epoch: e }) if *e == epoch)
    }

    /// The load of `partition` for `epoch` is done: `coordinator` serves from now on.
    pub fn activate(&mut self, partition: i32, epoch: i32, coordinator: Box<C>) {
        assert!(
            self.is_loading(partition, epoch),
            "only the current load activates"
        );
        self.shards
            .insert(partition, Shard::Active { epoch, coordinator });
    }

    /// The leadership epoch `partition` is held for (loading or serving).
    pub fn epoch(&self, partition: i32) -> Option<i32> {
        self.shards.get(&partition).map(Shard::epoch)
    }

    /// The coordinator of `partition`, or the error a request for one of its keys gets
    /// here.
    pub fn coordinator_of(&mut self, partition: i32) -> Result<&mut C, ResponseError> {
        match self.shards.get_mut(&partition) {
            None => Err(ResponseError::NotCoordinator),
            Some(Shard::Loading { .. }) => Err(ResponseError::CoordinatorLoadInProgress),
            Some(Shard::Active { coordinator, .. }) => Ok(&mut **coordinator),
        }
    }

    /// The coordinator of `partition` if it serves for exactly `epoch`.
    pub fn serving(&mut self, partition: i32, epoch: i32) -> Option<&mut C> {
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

    /// Every coordinator serving now, by partition (to tick them, list their keys).
    pub fn active(&mut self) -> impl Iterator<Item = (i32, &mut C)> {
        self.shards.iter_mut().filter_map(|(p, s)| match s {
            Shard::Active { coordinator, .. } => Some((*p, &mut **coordinator)),
            Shard::Loading { .. } => None,
        })
    }
}
