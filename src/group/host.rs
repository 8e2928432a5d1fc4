//! Which groups this broker coordinates: one [`GroupCoordinator`] per
//! `__consumer_offsets` partition it leads.
//!
//! A group belongs to the partition `abs(javaHashCode(group.id)) % partitions` (Kafka's
//! rule, so a group's partition is the same as on a Kafka cluster with as many
//! partitions). A partition's coordinator exists only while this broker leads it: when
//! leadership arrives it first replays the partition's committed records (requests for
//! its groups get COORDINATOR_LOAD_IN_PROGRESS meanwhile); when leadership goes, its
//! state is dropped and its groups get NOT_COORDINATOR, as Kafka answers. No I/O: the
//! broker feeds it leadership changes and the records it read.

use super::coordinator::{CoordinatorConfig, GroupCoordinator};
use super::records::LogEntry;
use kafka_protocol::ResponseError;
use std::collections::BTreeMap;

/// The name of the internal topic.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Java's `String.hashCode` over the UTF-16 code units of `s`.
pub fn java_hash_code(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    })
}

/// The `__consumer_offsets` partition of a group (Kafka's
/// `Utils.abs(groupId.hashCode) % partitions`, where `abs(i32::MIN)` is 0). The
/// transaction coordinator places transactional ids by the same rule.
pub fn partition_for(group_id: &str, partitions: i32) -> i32 {
    assert!(partitions > 0, "a coordinator topic has partitions");
    let hash = java_hash_code(group_id);
    let positive = if hash == i32::MIN { 0 } else { hash.abs() };
    positive % partitions
}

enum Shard {
    /// Leader since `epoch`, replaying the partition's records.
    Loading { epoch: i32 },
    Active {
        epoch: i32,
        coordinator: Box<GroupCoordinator>,
    },
}

pub struct CoordinatorHost {
    config: CoordinatorConfig,
    partitions: i32,
    seed: u64,
    shards: BTreeMap<i32, Shard>,
}

impl CoordinatorHost {
    pub fn new(config: CoordinatorConfig, partitions: i32, seed: u64) -> CoordinatorHost {
        assert!(partitions > 0, "the offsets topic has partitions");
        CoordinatorHost {
            config,
            partitions,
            seed,
            shards: BTreeMap::new(),
        }
    }

    pub fn partition_for(&self, group_id: &str) -> i32 {
        partition_for(group_id, self.partitions)
    }

    /// This broker leads `partition` from `epoch` on: its records are to be replayed
    /// (then [`Self::loaded`]). A later epoch of a partition being loaded starts over.
    pub fn became_leader(&mut self, partition: i32, epoch: i32) {
        let current = self.shards.get(&partition).map(|s| match s {
            Shard::Loading { epoch } | Shard::Active { epoch, .. } => *epoch,
        });
        if current.is_some_and(|e| e >= epoch) {
            return;
        }
        self.shards.insert(partition, Shard::Loading { epoch });
    }

    /// This broker no longer leads `partition`: its groups' state is dropped.
    pub fn resigned(&mut self, partition: i32) {
        self.shards.remove(&partition);
    }

    /// The partition's records and transaction markers, read back for the leadership
    /// of `epoch`, in log order: its groups are served from now on. Records of another
    /// partition's groups are ignored (a partition count that changed would put them
    /// elsewhere). Stale loads (an earlier epoch, or a partition no longer led) change
    /// nothing.
    pub fn loaded(&mut self, partition: i32, epoch: i32, entries: &[LogEntry], now_ms: i64) {
        if !matches!(self.shards.get(&partition), Some(Shard::Loading { epoch: e }) if *e == epoch)
        {
            return;
        }
        let seed = self.seed ^ (u64::from(partition as u32) << 32) ^ u64::from(epoch as u32);
        let mut coordinator = GroupCoordinator::new(self.config.clone(), seed);
        for entry in entries {
            let ours = match entry {
                LogEntry::Record { record, .. } => {
                    partition_for(record.group(), self.partitions) == partition
                }
                LogEntry::Marker { .. } => true,
            };
            if ours {
                coordinator.replay_entry(entry, now_ms);
            }
        }
        let coordinator = Box::new(coordinator);
        self.shards
            .insert(partition, Shard::Active { epoch, coordinator });
    }

    /// The coordinator of `group_id`'s partition, or the error a request for that
    /// group gets here.
    pub fn coordinator(&mut self, group_id: &str) -> Result<&mut GroupCoordinator, ResponseError> {
        let partition = partition_for(group_id, self.partitions);
        match self.shards.get_mut(&partition) {
            None => Err(ResponseError::NotCoordinator),
            Some(Shard::Loading { .. }) => Err(ResponseError::CoordinatorLoadInProgress),
            Some(Shard::Active { coordinator, .. }) => Ok(&mut **coordinator),
        }
    }

    /// The offsets topic's partition count this host was made for.
    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    /// The leadership epoch this host holds `partition` for (loading or serving).
    pub fn epoch(&self, partition: i32) -> Option<i32> {
        self.shards.get(&partition).map(|s| match s {
            Shard::Loading { epoch } | Shard::Active { epoch, .. } => *epoch,
        })
    }

    /// The coordinator of `partition` if it serves for exactly `epoch` (records written
    /// in one leadership are applied only to the state of that leadership).
    pub fn serving(&mut self, partition: i32, epoch: i32) -> Option<&mut GroupCoordinator> {
        match self.shards.get_mut(&partition) {
            Some(Shard::Active {
                epoch: e,
                coordinator,
            }) if *e == epoch => Some(&mut **coordinator),
            _ => None,
        }
    }

    /// Every coordinator serving now, by partition (to tick them, list groups).
    pub fn active(&mut self) -> impl Iterator<Item = (i32, &mut GroupCoordinator)> {
        self.shards.iter_mut().filter_map(|(p, s)| match s {
            Shard::Active { coordinator, .. } => Some((*p, &mut **coordinator)),
            Shard::Loading { .. } => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::coordinator::{CommittedOffset, OffsetCommitRequest};
    use crate::group::records::GroupRecord;

    #[test]
    fn groups_map_to_partitions_as_in_kafka() {
        // Java: "".hashCode() == 0, "a".hashCode() == 97, "hello".hashCode() == 99162322,
        // "polygenelubricants".hashCode() == Integer.MIN_VALUE (Utils.abs gives 0).
        assert_eq!(java_hash_code(""), 0);
        assert_eq!(java_hash_code("a"), 97);
        assert_eq!(java_hash_code("hello"), 99_162_322);
        assert_eq!(java_hash_code("polygenelubricants"), i32::MIN);
        assert_eq!(partition_for("polygenelubricants", 50), 0);
        assert_eq!(partition_for("hello", 50), 99_162_322 % 50);
        // A negative hash: "Aa_negative" style; abs() then modulo.
        let negative = (0..1000)
            .map(|i| format!("group-{i}"))
            .find(|g| java_hash_code(g) < 0 && java_hash_code(g) != i32::MIN)
            .unwrap();
        assert_eq!(
            partition_for(&negative, 50),
            java_hash_code(&negative).abs() % 50
        );
    }

    #[test]
    fn only_a_loaded_leader_serves_its_groups() {
        let mut host = CoordinatorHost::new(CoordinatorConfig::default(), 4, 1);
        let group = "orders-app";
        let partition = host.partition_for(group);
        assert_eq!(
            host.coordinator(group).err(),
            Some(ResponseError::NotCoordinator)
        );
        host.became_leader(partition, 3);
        assert_eq!(
            host.coordinator(group).err(),
            Some(ResponseError::CoordinatorLoadInProgress)
        );
        let committed = GroupRecord::Offset {
            group: group.into(),
            topic: "t".into(),
            partition: 0,
            value: Some(CommittedOffset {
                offset: 17,
                leader_epoch: 1,
                metadata: String::new(),
                commit_ms: 5,
            }),
        };
        // A load for an earlier leadership changes nothing.
        let committed = LogEntry::Record {
            producer_id: None,
            record: committed,
        };
        host.loaded(partition, 2, std::slice::from_ref(&committed), 10);
        assert!(host.coordinator(group).is_err());
        host.loaded(partition, 3, &[committed], 10);
        let fetched = host.coordinator(group).unwrap().fetch_offsets(group, None);
        assert_eq!(fetched[0].1.as_ref().map(|c| c.offset), Some(17));
        let (errors, _) = host.coordinator(group).unwrap().commit_offsets(
            OffsetCommitRequest {
                group_id: group.into(),
                member_id: String::new(),
                generation_id: -1,
                group_instance_id: None,
                offsets: vec![("t".into(), 1, 3, -1, String::new())],
            },
            20,
        );
        assert_eq!(errors, vec![None]);
        assert_eq!(host.active().count(), 1);
        host.resigned(partition);
        assert_eq!(
            host.coordinator(group).err(),
            Some(ResponseError::NotCoordinator)
        );
        assert_eq!(host.active().count(), 0);
    }
}
