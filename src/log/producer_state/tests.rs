use super::*;
use proptest::prelude::*;

/// A data batch header of `records` records from `producer_id` at `base_offset`.
fn batch(
    producer_id: i64,
    epoch: i16,
    base_sequence: i32,
    records: i32,
    base_offset: i64,
) -> BatchHeader {
    BatchHeader {
        base_offset,
        batch_length: 100,
        partition_leader_epoch: 1,
        magic: 2,
        crc: 0,
        attributes: 0,
        last_offset_delta: records - 1,
        base_timestamp: 1_000,
        max_timestamp: 1_000 + base_offset,
        producer_id,
        producer_epoch: epoch,
        base_sequence,
        records_count: records,
    }
}

fn marker(producer_id: i64, epoch: i16, base_offset: i64) -> BatchHeader {
    let mut h = batch(producer_id, epoch, -1, 1, base_offset);
    h.attributes = 0x20 | 0x10;
    h
}

#[test]
fn a_retry_within_the_window_is_a_duplicate_with_the_original_offsets() {
    let mut state = ProducerStateMap::empty_at(0);
    for k in 0..5 {
        state.apply(&batch(7, 0, k * 10, 10, k as i64 * 10));
    }
    let entry = state.entry(7);
    let retry = batch(7, 0, 20, 10, -1);
    assert_eq!(
        ProducerEntry::check(entry, &retry),
        Ok(Verdict::Duplicate(BatchMetadata {
            first_sequence: 20,
            last_sequence: 29,
            base_offset: 20,
            last_offset: 29
        }))
    );
    assert_eq!(
        ProducerEntry::check(entry, &batch(7, 0, 50, 10, -1)),
        Ok(Verdict::Append)
    );
    // One more batch pushes the first out of the window: its retry is out of order.
    state.apply(&batch(7, 0, 50, 10, 50));
    assert_eq!(
        ProducerEntry::check(state.entry(7), &batch(7, 0, 0, 10, -1)),
        Err(SequenceError::OutOfOrder {
            expected: 60,
            got: 0
        })
    );
    assert_eq!(
        state.entry(7).unwrap().batches.len(),
        SEQUENCE_WINDOW_BATCHES
    );
}

#[test]
fn gaps_stale_epochs_and_epoch_bumps() {
    let mut state = ProducerStateMap::empty_at(0);
    // Unknown producers may start anywhere (KIP-360).
    assert_eq!(
        ProducerEntry::check(None, &batch(1, 3, 42, 1, -1)),
        Ok(Verdict::Append)
    );
    state.apply(&batch(1, 3, 42, 1, 0));
    let entry = state.entry(1);
    assert_eq!(
        ProducerEntry::check(entry, &batch(1, 3, 44, 1, -1)),
        Err(SequenceError::OutOfOrder {
            expected: 43,
            got: 44
        })
    );
    assert_eq!(
        ProducerEntry::check(entry, &batch(1, 2, 43, 1, -1)),
        Err(SequenceError::StaleEpoch { current: 3, got: 2 })
    );
    assert_eq!(
        ProducerEntry::check(entry, &batch(1, 4, 5, 1, -1)),
        Err(SequenceError::OutOfOrder {
            expected: 0,
            got: 5
        })
    );
    assert_eq!(
        ProducerEntry::check(entry, &batch(1, 4, 0, 1, -1)),
        Ok(Verdict::Append)
    );
    assert_eq!(
        ProducerEntry::check(entry, &batch(1, 3, -1, 1, -1)),
        Err(SequenceError::NoSequence)
    );
    state.apply(&batch(1, 4, 0, 1, 1));
    assert_eq!(state.entry(1).unwrap().producer_epoch, 4);
    assert_eq!(state.entry(1).unwrap().batches.len(), 1);
    assert_eq!(state.end_offset(), 2);
}

#[test]
fn sequences_wrap_after_i32_max() {
    let h = batch(1, 0, i32::MAX - 1, 4, 0);
    assert_eq!(last_sequence(&h), 1);
    let mut state = ProducerStateMap::empty_at(0);
    state.apply(&batch(1, 0, i32::MAX, 1, 0));
    assert_eq!(
        ProducerEntry::check(state.entry(1), &batch(1, 0, 0, 1, -1)),
        Ok(Verdict::Append)
    );
    assert!(ProducerEntry::check(state.entry(1), &batch(1, 0, 1, 1, -1)).is_err());
}

#[test]
fn markers_end_transactions_and_bump_epochs() {
    let mut state = ProducerStateMap::empty_at(0);
    let mut h = batch(9, 0, 0, 2, 0);
    h.attributes = 0x10;
    state.apply(&h);
    assert_eq!(state.entry(9).unwrap().current_txn_first_offset, Some(0));
    // An open transaction keeps its producer from expiring.
    assert_eq!(state.remove_expired(i64::MAX / 2, 1), 0);
    state.apply(&marker(9, 1, 2));
    let entry = state.entry(9).unwrap();
    assert_eq!(entry.current_txn_first_offset, None);
    assert_eq!(entry.producer_epoch, 1);
    assert!(entry.batches.is_empty());
    assert_eq!(state.remove_expired(i64::MAX / 2, 1), 1);
    assert!(state.is_empty());
}

#[test]
fn expiry_follows_batch_timestamps() {
    let mut state = ProducerStateMap::empty_at(0);
    state.apply(&batch(1, 0, 0, 1, 0)); // max timestamp 1000
    state.apply(&batch(2, 0, 0, 1, 5000)); // max timestamp 6000
    assert_eq!(state.remove_expired(6_000, 5_000), 1);
    assert!(state.entry(1).is_none());
    assert!(state.entry(2).is_some());
}

#[test]
fn replay_skips_batches_already_covered() {
    let mut state = ProducerStateMap::empty_at(0);
    state.apply(&batch(1, 0, 0, 3, 0));
    let copy = state.clone();
    state.apply(&batch(1, 0, 0, 3, 0));
    assert_eq!(state, copy);
}

#[test]
fn a_corrupt_snapshot_does_not_decode() {
    let mut state = ProducerStateMap::empty_at(0);
    state.apply(&batch(1, 0, 0, 3, 0));
    let mut bytes = state.encode();
    assert_eq!(ProducerStateMap::decode(&bytes), Some(state));
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    assert_eq!(ProducerStateMap::decode(&bytes), None);
    assert_eq!(ProducerStateMap::decode(&bytes[..3]), None);
}

proptest! {
    /// Snapshots round-trip, and a state rebuilt from a snapshot plus the rest of the log
    /// equals the state built from the whole log.
    #[test]
    fn snapshot_then_replay_equals_full_replay(
        batches in proptest::collection::vec((0i64..4, 0i16..3, 1i32..5, any::<bool>()), 1..60),
        cut in 0usize..60,
    ) {
        let mut headers = Vec::new();
        let mut offset = 0;
        let mut next_sequence = [0i32; 4];
        for (producer, epoch, records, is_marker) in batches {
            let h = if is_marker {
                marker(producer, epoch, offset)
            } else {
                let h = batch(producer, epoch, next_sequence[producer as usize], records, offset);
                next_sequence[producer as usize] += records;
                h
            };
            offset = h.next_offset();
            headers.push(h);
        }
        let mut full = ProducerStateMap::empty_at(0);
        for h in &headers {
            full.apply(h);
        }
        let cut = cut.min(headers.len());
        let mut prefix = ProducerStateMap::empty_at(0);
        for h in &headers[..cut] {
            prefix.apply(h);
        }
        let mut rebuilt = ProducerStateMap::decode(&prefix.encode()).unwrap();
        prop_assert_eq!(&rebuilt, &prefix);
        // Replaying from a little before the snapshot point is harmless.
        for h in &headers[cut.saturating_sub(2)..] {
            rebuilt.apply(h);
        }
        prop_assert_eq!(rebuilt, full);
    }
}

/// The partition log keeps its producer state through reopening, truncation, retention
/// and a reset, rebuilding it from the snapshots written at each roll.
mod with_the_log {
    use super::super::ProducerStateMap;
    use crate::log::batch::{self, BatchHeader};
    use crate::log::{LogConfig, PartitionLog};
    use crate::storage::{MemoryStorage, Storage};
    use bytes::Bytes;
    use kafka_protocol::records::Compression;
    use std::path::Path;
    use std::sync::Arc;

    /// A producer's batch of `count` records with its producer fields set (CRC redone).
    fn producer_batch(
        producer_id: i64,
        epoch: i16,
        sequence: i32,
        count: usize,
    ) -> (BatchHeader, Bytes) {
        let mut bytes = batch::tests::make_batch(count, 1_000, Compression::None).to_vec();
        bytes[43..51].copy_from_slice(&producer_id.to_be_bytes());
        bytes[51..53].copy_from_slice(&epoch.to_be_bytes());
        bytes[53..57].copy_from_slice(&sequence.to_be_bytes());
        let crc = crc32c::crc32c(&bytes[21..]);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        let header = BatchHeader::parse(&bytes).unwrap();
        (header, Bytes::from(bytes))
    }

    fn open(storage: &Arc<dyn Storage>, recovery_point: i64) -> PartitionLog {
        let config = LogConfig {
            segment_bytes: 600,
            ..LogConfig::default()
        };
        PartitionLog::open(storage.clone(), Path::new("/p/t-0"), config, recovery_point)
            .unwrap()
            .0
    }

    fn from_scratch(log: &PartitionLog) -> ProducerStateMap {
        let mut state = ProducerStateMap::empty_at(log.log_start_offset());
        for h in log.batch_headers().unwrap() {
            state.apply(&h);
        }
        state
    }

    #[test]
    fn producer_state_survives_reopen_truncation_retention_and_reset() {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let mut log = open(&storage, 0);
        let mut sequences = [0i32; 3];
        for k in 0..40 {
            let producer = k % 3;
            let b = producer_batch(producer as i64, 0, sequences[producer], 2);
            sequences[producer] += 2;
            log.append(&[b], 1, 0).unwrap();
        }
        assert!(log.segment_count() > 4, "the test needs several segments");
        let full = log.producer_state().clone();
        assert_eq!(full.len(), 3);
        assert_eq!(full, from_scratch(&log));
        log.sync_all().unwrap();
        drop(log);

        // Reopened after a crash (nothing trusted) and after a clean shutdown.
        for recovery_point in [0, i64::MAX] {
            let log = open(&storage, recovery_point);
            assert_eq!(log.producer_state(), &full);
        }

        // Truncation drops the state of the batches cut, back to the last snapshot.
        let mut log = open(&storage, i64::MAX);
        let middle = log.segment_base_offsets()[2] + 3;
        log.truncate_to(middle).unwrap();
        assert_eq!(log.producer_state(), &from_scratch(&log));
        assert_ne!(log.producer_state(), &full);

        // Retention deletes segments, not what they said about producers.
        let before = log.producer_state().clone();
        let start = log.segment_base_offsets()[2];
        log.delete_segments_below(start).unwrap();
        assert_eq!(log.log_start_offset(), start);
        assert_eq!(log.producer_state(), &before);
        drop(log);
        let log = open(&storage, 0);
        assert_eq!(log.producer_state(), &before);
        assert_eq!(log.producer_snapshot_at(start).map(|s| s.len()), Some(3));

        // A reset (a follower installing a Raft snapshot) takes the leader's state.
        let mut log = log;
        let end = log.log_end_offset() + 100;
        log.reset_to(end, Some(before.clone())).unwrap();
        let mut expected = before;
        expected.advance_to(end);
        assert_eq!(log.producer_state(), &expected);
        drop(log);
        assert_eq!(open(&storage, 0).producer_state(), &expected);
    }
}

/// A transactional data batch header.
fn txn_batch(producer_id: i64, base_sequence: i32, records: i32, base_offset: i64) -> BatchHeader {
    let mut h = batch(producer_id, 0, base_sequence, records, base_offset);
    h.attributes = 0x10;
    h
}

fn end(commit: bool, coordinator_epoch: i32) -> Option<TxnMarker> {
    Some(TxnMarker {
        commit,
        coordinator_epoch,
    })
}

#[test]
fn the_first_unstable_offset_follows_interleaved_transactions() {
    let mut state = ProducerStateMap::empty_at(0);
    state.apply(&batch(9, 0, 0, 5, 0)); // not transactional: stable
    assert_eq!(state.first_unstable_offset(5), None);
    state.apply(&txn_batch(1, 0, 2, 5)); // txn 1 opens at 5
    state.apply(&txn_batch(2, 0, 2, 7)); // txn 2 opens at 7
    state.apply(&txn_batch(1, 2, 2, 9)); // txn 1 goes on
    assert_eq!(state.first_open_txn_offset(), Some(5));
    assert_eq!(state.first_unstable_offset(11), Some(5));
    // Txn 1 ends at 11 (commit): stable only once its marker is committed.
    let done = state.apply_batch(&marker(1, 0, 11), end(true, 3)).unwrap();
    assert_eq!(
        (done.first_offset, done.last_offset, done.commit),
        (5, 11, true)
    );
    assert_eq!(state.first_open_txn_offset(), Some(7));
    assert_eq!(
        state.first_unstable_offset(11),
        Some(5),
        "marker not committed"
    );
    assert_eq!(state.first_unstable_offset(12), Some(7));
    // Txn 3 opens after, txn 2 aborts: txn 3 holds the LSO.
    state.apply(&txn_batch(3, 0, 1, 12));
    let done = state.apply_batch(&marker(2, 0, 13), end(false, 3)).unwrap();
    assert_eq!(
        (done.producer_id, done.first_offset, done.commit),
        (2, 7, false)
    );
    assert_eq!(state.first_unstable_offset(14), Some(12));
    state.prune_replicated(14);
    assert_eq!(state.unreplicated_txn_count(), 0);
    assert_eq!(state.first_unstable_offset(14), Some(12));
    state.apply_batch(&marker(3, 0, 14), end(true, 3));
    assert_eq!(state.first_unstable_offset(14), Some(12));
    assert_eq!(state.first_unstable_offset(15), None);
    assert_eq!(state.entry(1).unwrap().coordinator_epoch, 3);
    // A marker for a producer with nothing open here ends an empty transaction.
    let done = state.apply_batch(&marker(4, 0, 15), end(false, 3)).unwrap();
    assert_eq!((done.first_offset, done.last_offset), (15, 15));
}

#[test]
fn pruning_never_changes_the_answer_at_or_above_its_high_watermark() {
    let mut state = ProducerStateMap::empty_at(0);
    let mut offset = 0;
    for k in 0..20i64 {
        let producer = k % 3;
        let h = if k % 4 == 3 {
            marker(producer, 0, offset)
        } else {
            txn_batch(producer, 0, 1, offset)
        };
        state.apply_batch(&h, end(k % 8 == 3, 0));
        offset = h.next_offset();
    }
    for high_watermark in 0..=offset {
        let mut pruned = state.clone();
        pruned.prune_replicated(high_watermark);
        for hw in high_watermark..=offset {
            assert_eq!(
                pruned.first_unstable_offset(hw),
                state.first_unstable_offset(hw)
            );
        }
    }
}

#[test]
fn open_and_ended_transactions_survive_a_snapshot() {
    let mut state = ProducerStateMap::empty_at(0);
    state.apply(&txn_batch(1, 0, 2, 0));
    state.apply(&txn_batch(2, 0, 2, 2));
    state.apply_batch(&marker(1, 0, 4), end(false, 2));
    let decoded = ProducerStateMap::decode(&state.encode()).unwrap();
    assert_eq!(decoded, state);
    assert_eq!(
        decoded.first_unstable_offset(4),
        Some(0),
        "marker at 4 not committed"
    );
    assert_eq!(decoded.first_unstable_offset(5), Some(2));
}

#[test]
fn markers_of_stale_producer_or_coordinator_epochs_are_fenced() {
    let mut state = ProducerStateMap::empty_at(0);
    let mut h = txn_batch(1, 0, 1, 0);
    h.producer_epoch = 2;
    state.apply(&h);
    state.apply_batch(&marker(1, 2, 1), end(true, 5));
    let entry = state.entry(1);
    let commit = |coordinator_epoch| TxnMarker {
        commit: true,
        coordinator_epoch,
    };
    assert_eq!(
        ProducerEntry::check_marker(entry, &marker(1, 1, -1), commit(5)),
        Err(MarkerError::StaleEpoch { current: 2, got: 1 })
    );
    assert_eq!(
        ProducerEntry::check_marker(entry, &marker(1, 2, -1), commit(4)),
        Err(MarkerError::CoordinatorFenced { last: 5, got: 4 })
    );
    assert_eq!(
        MarkerError::CoordinatorFenced { last: 5, got: 4 }.kafka_error(),
        ResponseError::TransactionCoordinatorFenced
    );
    assert_eq!(
        ProducerEntry::check_marker(entry, &marker(1, 3, -1), commit(5)),
        Ok(())
    );
    assert_eq!(
        ProducerEntry::check_marker(None, &marker(7, 0, -1), commit(0)),
        Ok(())
    );
}

#[test]
fn a_producer_with_an_open_transaction_writes_only_transactional_batches() {
    let mut state = ProducerStateMap::empty_at(0);
    state.apply(&txn_batch(1, 0, 2, 0));
    // As Kafka (INVALID_TXN_STATE): the next batch must belong to the open transaction.
    let plain = batch(1, 0, 2, 1, 2);
    assert_eq!(
        ProducerEntry::check(state.entry(1), &plain),
        Err(SequenceError::NotTransactional)
    );
    assert_eq!(
        SequenceError::NotTransactional.kafka_error(),
        ResponseError::InvalidTxnState
    );
    assert_eq!(
        ProducerEntry::check(state.entry(1), &txn_batch(1, 2, 1, 2)),
        Ok(Verdict::Append)
    );
    // Once the transaction's marker is written, a plain batch is fine again.
    state.apply_batch(&marker(1, 0, 2), end(false, 0)).unwrap();
    assert_eq!(
        ProducerEntry::check(state.entry(1), &batch(1, 0, 2, 1, 3)),
        Ok(Verdict::Append)
    );
}
