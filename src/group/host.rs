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
use crate::coordinator_shards::Shards;
use kafka_protocol::ResponseError;

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

/// The groups of the `__consumer_offsets` partitions led here. Dereferences to its
/// [`Shards`] (leadership, loading, serving).
pub struct CoordinatorHost {
    config: CoordinatorConfig,
    seed: u64,
    shards: Shards<GroupCoordinator>,
}

impl std::ops::Deref for CoordinatorHost {
    type Target = Shards<GroupCoordinator>;
    fn deref(&self) -> &Self::Target {
        &self.shards
    }
}

impl std::ops::DerefMut for CoordinatorHost {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.shards
    }
}

impl CoordinatorHost {
    pub fn new(config: CoordinatorConfig, partitions: i32, seed: u64) -> CoordinatorHost {
        CoordinatorHost {
            config,
            seed,
            shards: Shards::new(partitions),
        }
    }

    pub fn partition_for(&self, group_id: &str) -> i32 {
        partition_for(group_id, self.partitions())
    }

    /// The partition's records and transaction markers, read back for the leadership
    /// of `epoch`, in log order: its groups are served from now on. Records of another
    /// partition's groups are ignored (a partition count that changed would put them
    /// elsewhere). Stale loads (an earlier epoch, or a partition no longer led) change
    /// nothing.
    pub fn loaded(&mut self, partition: i32, epoch: i32, entries: &[LogEntry], now_ms: i64) {
        if !self.is_loading(partition, epoch) {
            return;
        }
        let seed = self.seed ^ (u64::from(partition as u32) << 32) ^ u64::from(epoch as u32);
        let mut coordinator = GroupCoordinator::new(self.config.clone(), seed);
        for entry in entries {
            let ours = match entry {
                LogEntry::Record { record, .. } => {
                    partition_for(record.group(), self.partitions()) == partition
                }
                LogEntry::Marker { .. } => true,
            };
            if ours {
                coordinator.replay_entry(entry, now_ms);
            }
        }
        self.activate(partition, epoch, Box::new(coordinator));
    }

    /// The coordinator of `group_id`'s partition, or the error a request for that
    /// group gets here.
    pub fn coordinator(&mut self, group_id: &str) -> Result<&mut GroupCoordinator, ResponseError> {
        let partition = partition_for(group_id, self.partitions());
        self.coordinator_of(partition)
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
