//! The partition log's side of transactions: `.txnindex` entries written as ABORT
//! markers are appended, listed for a read, rebuilt on recovery, truncated and deleted
//! with their segments, and right after a reset.

use super::*;
use crate::log::batch::tests::make_batch;
use crate::log::txn_index;
use crate::log::txn_marker::{build_marker_batch, TxnMarker};
use crate::storage::{read_to_vec, MemoryStorage};
use kafka_protocol::records::Compression;

const DIR: &str = "/p/t-0";

fn open(storage: &Arc<dyn Storage>, recovery_point: i64) -> PartitionLog {
    let config = LogConfig {
        segment_bytes: 500,
        ..LogConfig::default()
    };
    PartitionLog::open(storage.clone(), Path::new(DIR), config, recovery_point)
        .unwrap()
        .0
}

/// A transactional batch of two records from `producer_id` (CRC redone).
fn txn_batch(producer_id: i64, sequence: i32) -> (BatchHeader, Bytes) {
    let mut bytes = make_batch(2, 1_000, Compression::None).to_vec();
    bytes[21..23].copy_from_slice(&0x10i16.to_be_bytes());
    bytes[43..51].copy_from_slice(&producer_id.to_be_bytes());
    bytes[51..53].copy_from_slice(&0i16.to_be_bytes());
    bytes[53..57].copy_from_slice(&sequence.to_be_bytes());
    let crc = crc32c::crc32c(&bytes[21..]);
    bytes[17..21].copy_from_slice(&crc.to_be_bytes());
    (BatchHeader::parse(&bytes).unwrap(), Bytes::from(bytes))
}

/// A batch of one record from no producer.
fn plain() -> (BatchHeader, Bytes) {
    let bytes = make_batch(1, 1_000, Compression::None);
    (BatchHeader::parse(&bytes).unwrap(), bytes)
}

fn marker(producer_id: i64, commit: bool) -> (BatchHeader, Bytes) {
    let marker = TxnMarker {
        commit,
        coordinator_epoch: 1,
    };
    let bytes = build_marker_batch(producer_id, 0, marker, 1_000);
    (BatchHeader::parse(&bytes).unwrap(), bytes)
}

fn append(log: &mut PartitionLog, batch: (BatchHeader, Bytes)) -> i64 {
    log.append(&[batch], 1, 0).unwrap().base_offset
}

fn all_aborted(log: &PartitionLog) -> Vec<AbortedTxn> {
    log.aborted_txns(log.log_start_offset(), log.log_end_offset())
}

/// Producer 1 and 2 interleave over several segments; 1 aborts, 2 commits, then 3
/// aborts. Returns the offsets (first of 1, marker of 1, first of 3, marker of 3).
fn interleaved(log: &mut PartitionLog) -> [i64; 4] {
    let first_1 = append(log, txn_batch(1, 0));
    append(log, txn_batch(2, 0));
    for k in 1..4 {
        append(log, txn_batch(1, 2 * k));
        append(log, txn_batch(2, 2 * k));
    }
    let abort_1 = append(log, marker(1, false));
    append(log, marker(2, true));
    let first_3 = append(log, txn_batch(3, 0));
    append(log, txn_batch(3, 2));
    let abort_3 = append(log, marker(3, false));
    assert!(log.segment_count() > 2, "the test needs several segments");
    [first_1, abort_1, first_3, abort_3]
}

fn txn_index_path(base: i64) -> PathBuf {
    Path::new(DIR).join(format!("{}{TXN_INDEX_SUFFIX}", file_stem(base)))
}

#[test]
fn aborted_transactions_are_indexed_and_listed_for_a_read() {
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let mut log = open(&storage, 0);
    let [first_1, abort_1, first_3, abort_3] = interleaved(&mut log);
    let aborted = all_aborted(&log);
    let pairs: Vec<(i64, i64, i64)> = aborted
        .iter()
        .map(|t| (t.producer_id, t.first_offset, t.last_offset))
        .collect();
    assert_eq!(pairs, vec![(1, first_1, abort_1), (3, first_3, abort_3)]);
    // Producer 2 was still open when 1 aborted: the entry's LSO says so.
    assert_eq!(aborted[0].last_stable_offset, first_1 + 2);
    assert_eq!(aborted[1].last_stable_offset, abort_3 + 1);
    // The entry is in the file of the segment holding the marker, in Kafka's format.
    let base = *log.segments.range(..=abort_1).next_back().unwrap().0;
    let bytes = read_to_vec(storage.as_ref(), &txn_index_path(base)).unwrap();
    assert_eq!(bytes.len(), txn_index::ENTRY_BYTES);
    assert_eq!(
        txn_index::decode_all(&bytes, base, i64::MAX),
        Some(vec![aborted[0]])
    );
    // A read of part of producer 1's transaction lists it; one after it does not.
    assert_eq!(log.aborted_txns(first_1 + 4, first_1 + 6), vec![aborted[0]]);
    assert_eq!(log.aborted_txns(abort_1 + 1, first_3), vec![]);
    assert_eq!(log.aborted_txns(first_3, first_3 + 1), vec![aborted[1]]);
}

#[test]
fn the_last_stable_offset_waits_for_open_transactions_and_uncommitted_markers() {
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let mut log = open(&storage, 0);
    append(&mut log, plain());
    assert_eq!(log.last_stable_offset(1), 1);
    let first = append(&mut log, txn_batch(1, 0));
    append(&mut log, txn_batch(1, 2));
    assert_eq!(log.last_stable_offset(log.log_end_offset()), first);
    assert_eq!(
        log.last_stable_offset(0),
        0,
        "never above the high watermark"
    );
    let abort = append(&mut log, marker(1, false));
    assert_eq!(log.last_stable_offset(abort), first, "marker not committed");
    assert_eq!(log.last_stable_offset(abort + 1), abort + 1);
    log.prune_replicated_txns(abort + 1);
    assert_eq!(log.last_stable_offset(abort + 1), abort + 1);
}

#[test]
fn the_txn_index_is_rebuilt_when_missing_torn_or_scanned() {
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let mut log = open(&storage, 0);
    interleaved(&mut log);
    let expected = all_aborted(&log);
    let bases = log.segment_base_offsets();
    log.sync_all().unwrap();
    drop(log);
    for base in &bases {
        let path = txn_index_path(*base);
        if storage.exists(&path) {
            storage.remove_file(&path).unwrap();
        }
    }
    for recovery_point in [i64::MAX, 0] {
        let log = open(&storage, recovery_point);
        assert_eq!(
            all_aborted(&log),
            expected,
            "recovery point {recovery_point}"
        );
    }
    // A torn entry (a crash in an append) is rebuilt even in a trusted segment.
    for base in &bases {
        let mut file = storage.open(&txn_index_path(*base), true).unwrap();
        if file.len() > 0 {
            file.truncate(file.len() - 3).unwrap();
        }
    }
    assert_eq!(all_aborted(&open(&storage, i64::MAX)), expected);
    // An entry lost from the active segment's file (not fsynced) is found by the scan.
    let last = *bases.last().unwrap();
    storage
        .open(&txn_index_path(last), true)
        .unwrap()
        .truncate(0)
        .unwrap();
    assert_eq!(all_aborted(&open(&storage, 0)), expected);
}

#[test]
fn truncation_and_retention_take_their_entries_along() {
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let mut log = open(&storage, 0);
    let [first_1, abort_1, _, abort_3] = interleaved(&mut log);
    log.truncate_to(abort_3).unwrap();
    let aborted = all_aborted(&log);
    assert_eq!(aborted.len(), 1);
    assert_eq!(aborted[0].first_offset, first_1);
    // Producer 3 is open again.
    assert!(log.last_stable_offset(log.log_end_offset()) < abort_3);
    drop(log);
    let mut log = open(&storage, 0);
    assert_eq!(all_aborted(&log), aborted);
    // Retention removes whole segments with their files.
    let bases = log.segment_base_offsets();
    let cut = bases[bases.len() - 1];
    log.delete_segments_below(cut).unwrap();
    for base in &bases[..bases.len() - 1] {
        assert!(!storage.exists(&txn_index_path(*base)));
    }
    assert!(all_aborted(&log).iter().all(|t| t.last_offset >= cut));
    let _ = abort_1;
}

#[test]
fn a_reset_follower_lists_a_transaction_that_began_before_its_start() {
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let mut leader = open(&storage, 0);
    let first = append(&mut leader, txn_batch(1, 0));
    append(&mut leader, txn_batch(1, 2));
    let reset_at = leader.log_end_offset();
    let state = leader.producer_state().clone();

    let follower_storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let mut follower = open(&follower_storage, 0);
    follower.reset_to(reset_at, Some(state)).unwrap();
    assert_eq!(
        follower.last_stable_offset(reset_at),
        reset_at,
        "clamped to the log start"
    );
    append(&mut follower, txn_batch(1, 4));
    let abort = append(&mut follower, marker(1, false));
    let aborted = follower.aborted_txns(reset_at, follower.log_end_offset());
    assert_eq!(aborted.len(), 1);
    assert_eq!(
        (aborted[0].first_offset, aborted[0].last_offset),
        (first, abort)
    );
    drop(follower);
    assert_eq!(all_aborted(&open(&follower_storage, 0)), aborted);
}

mod model {
    use super::*;
    use proptest::prelude::*;

    /// What the log should list: every aborted transaction (producer, first offset,
    /// marker offset), built from the appends alone; and the oldest open transaction's
    /// first offset.
    fn run(ops: &[(i64, u8)], log: &mut PartitionLog) -> (Vec<(i64, i64, i64)>, Option<i64>) {
        let mut open: BTreeMap<i64, i64> = BTreeMap::new();
        let mut sequences: BTreeMap<i64, i32> = BTreeMap::new();
        let mut aborted = Vec::new();
        for &(producer, op) in ops {
            match op {
                0 | 1 => {
                    let commit = op == 1;
                    let offset = append(log, marker(producer, commit));
                    let first = open.remove(&producer).unwrap_or(offset);
                    if !commit {
                        aborted.push((producer, first, offset));
                    }
                }
                2 => {
                    append(log, plain());
                }
                _ => {
                    let sequence = sequences.entry(producer).or_insert(0);
                    let offset = append(log, txn_batch(producer, *sequence));
                    *sequence += 2;
                    open.entry(producer).or_insert(offset);
                }
            }
        }
        (aborted, open.values().min().copied())
    }

    fn list_txn_indexes(storage: &Arc<dyn Storage>) -> Vec<PathBuf> {
        storage
            .list_dir(Path::new(DIR))
            .unwrap()
            .into_iter()
            .filter(|n| n.ends_with(TXN_INDEX_SUFFIX))
            .map(|n| Path::new(DIR).join(n))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any read's aborted list is exactly the aborted transactions overlapping it,
        /// before and after recovery rebuilds every `.txnindex`, and the LSO (the whole
        /// log committed) is the oldest open transaction's first offset.
        #[test]
        fn aborted_lists_match_the_model(
            ops in proptest::collection::vec((1i64..4, 0u8..7), 1..60),
            ranges in proptest::collection::vec((0i64..200, 0i64..40), 8),
        ) {
            let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
            let mut log = open(&storage, 0);
            let (expected, oldest_open) = run(&ops, &mut log);
            let end = log.log_end_offset();
            let check = |log: &PartitionLog| -> Result<(), TestCaseError> {
                for &(start, len) in &ranges {
                    let start = start.min(end);
                    let stop = (start + len).min(end);
                    let listed: Vec<(i64, i64, i64)> = log
                        .aborted_txns(start, stop)
                        .iter()
                        .map(|t| (t.producer_id, t.first_offset, t.last_offset))
                        .collect();
                    let want: Vec<(i64, i64, i64)> = expected
                        .iter()
                        .copied()
                        .filter(|(_, first, last)| start < stop && *last >= start && *first < stop)
                        .collect();
                    prop_assert_eq!(listed, want, "range [{}, {})", start, stop);
                }
                Ok(())
            };
            check(&log)?;
            let lso = log.last_stable_offset(end);
            prop_assert_eq!(lso, oldest_open.unwrap_or(end));
            drop(log);
            for path in list_txn_indexes(&storage) {
                storage.remove_file(&path).unwrap();
            }
            let log = open(&storage, 0);
            check(&log)?;
            prop_assert_eq!(log.last_stable_offset(end), lso);
        }
    }
}
