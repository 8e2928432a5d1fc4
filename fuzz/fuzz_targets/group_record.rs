//! `group_record`: the records of `__consumer_offsets` (`strand::group::records`), as a
//! group coordinator taking over a partition reads them back.
//!
//! Input layout: `[key_len: u8][key: key_len bytes][has_value: u8][value: the rest]`;
//! `has_value` even means a tombstone (no value).
//!
//! Asserts: decoding never panics; a decoded record encodes to a key and value that
//! decode to the same record; a coordinator replays it (state assertions included)
//! without panicking, and then describes and lists its groups and fetches their offsets;
//! replayed as a transaction's record it is pending until its producer's marker.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strand::group::coordinator::{CoordinatorConfig, GroupCoordinator};
use strand::group::records::GroupRecord;

fuzz_target!(|data: &[u8]| {
    let Some((&key_len, rest)) = data.split_first() else {
        return;
    };
    let key_len = (key_len as usize).min(rest.len());
    let (key, rest) = rest.split_at(key_len);
    let value = match rest.split_first() {
        Some((flag, value)) if flag % 2 == 1 => Some(value),
        _ => None,
    };
    let Ok(record) = GroupRecord::decode(key, value) else {
        return;
    };
    let (key, value) = record.encode();
    let again = GroupRecord::decode(&key, value.as_deref()).expect("an encoded record decodes");
    assert_eq!(again, record, "a record changed through its encoding");
    let mut coordinator = GroupCoordinator::new(CoordinatorConfig::default(), 1);
    coordinator.replay(&record, 1_000);
    coordinator.replay(&again, 2_000);
    let group = record.group().to_string();
    let _ = coordinator.describe(&group);
    let _ = coordinator.list();
    let _ = coordinator.fetch_offsets(&group, None);
    let _ = coordinator.tick(1_000_000);
    // The same record written in a transaction: pending, then committed or aborted.
    coordinator.replay_pending_txn_offset(7, &record, 3_000);
    let _ = coordinator.pending_txn_partitions(&group);
    coordinator.complete_txn(7, key.len() % 2 == 0);
    assert!(coordinator.pending_txn_partitions(&group).is_empty());
    let _ = coordinator.fetch_offsets(&group, None);
});
