//! Replica placement: which brokers hold each partition, spread so that every broker
//! gets about the same number of replicas and of preferred leaderships.
//!
//! Kafka's rack-unaware scheme: partition p's first replica is broker
//! `(start + p) mod n`; the others follow at a shift that grows every n partitions, so
//! followers do not always sit next to the same leader. `start` and the initial shift
//! come from the caller's seeded RNG; the function itself is deterministic.

/// Why replicas could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error(
        "replication factor {replication_factor} is larger than the {available} available brokers"
    )]
    NotEnoughBrokers {
        replication_factor: usize,
        available: usize,
    },
    #[error("replication factor must be at least 1")]
    ZeroReplicationFactor,
}

/// Assigns replicas for `partition_count` partitions numbered from `first_partition`.
/// `brokers` must be sorted and distinct (the unfenced brokers).
pub fn assign_replicas(
    brokers: &[i32],
    first_partition: usize,
    partition_count: usize,
    replication_factor: usize,
    start_index: usize,
    initial_shift: usize,
) -> Result<Vec<Vec<i32>>, PlacementError> {
    let n = brokers.len();
    if replication_factor == 0 {
        return Err(PlacementError::ZeroReplicationFactor);
    }
    if replication_factor > n {
        return Err(PlacementError::NotEnoughBrokers {
            replication_factor,
            available: n,
        });
    }
    debug_assert!(
        brokers.windows(2).all(|w| w[0] < w[1]),
        "brokers must be sorted and distinct"
    );
    let mut assignments = Vec::with_capacity(partition_count);
    for p in first_partition..first_partition + partition_count {
        let first = (start_index + p) % n;
        // The shift advances once every n partitions; it is never 0 mod n.
        let shift = if n > 1 {
            1 + (initial_shift + p / n) % (n - 1)
        } else {
            0
        };
        let mut replicas = vec![brokers[first]];
        for j in 0..replication_factor - 1 {
            let index = if n > 1 {
                (first + 1 + (shift + j) % (n - 1)) % n
            } else {
                first
            };
            replicas.push(brokers[index]);
        }
        assert_eq!(replicas.len(), replication_factor);
        assignments.push(replicas);
    }
    Ok(assignments)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    proptest! {
        #[test]
        fn replicas_are_distinct_and_balanced(
            n in 1usize..8, partitions in 1usize..64, rf_pick in 0usize..8, start in 0usize..100, shift in 0usize..100,
        ) {
            let brokers: Vec<i32> = (1..=n as i32).collect();
            let rf = 1 + rf_pick % n;
            let assignments = assign_replicas(&brokers, 0, partitions, rf, start, shift).unwrap();
            prop_assert_eq!(assignments.len(), partitions);
            let mut leaders = BTreeMap::new();
            let mut replicas = BTreeMap::new();
            for a in &assignments {
                prop_assert_eq!(a.iter().collect::<BTreeSet<_>>().len(), rf, "duplicate replica in {:?}", a);
                *leaders.entry(a[0]).or_insert(0usize) += 1;
                for b in a {
                    *replicas.entry(*b).or_insert(0usize) += 1;
                }
            }
            // Preferred leaders differ by at most one partition between brokers.
            let (min, max) = (partitions / n, partitions.div_ceil(n));
            for b in &brokers {
                let l = leaders.get(b).copied().unwrap_or(0);
                prop_assert!(l >= min && l <= max, "broker {} leads {} of {} partitions", b, l, partitions);
            }
            // Replica counts stay within rf of each other.
            let counts: Vec<usize> = brokers.iter().map(|b| replicas.get(b).copied().unwrap_or(0)).collect();
            prop_assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= rf);
        }
    }

    #[test]
    fn too_few_brokers_is_an_error() {
        assert_eq!(
            assign_replicas(&[1, 2], 0, 3, 3, 0, 0),
            Err(PlacementError::NotEnoughBrokers {
                replication_factor: 3,
                available: 2
            })
        );
        assert_eq!(
            assign_replicas(&[1], 0, 1, 0, 0, 0),
            Err(PlacementError::ZeroReplicationFactor)
        );
    }

    #[test]
    fn three_brokers_three_partitions_spread_leaders() {
        let a = assign_replicas(&[1, 2, 3], 0, 3, 3, 0, 0).unwrap();
        let leaders: BTreeSet<i32> = a.iter().map(|r| r[0]).collect();
        assert_eq!(leaders.len(), 3);
    }
}
