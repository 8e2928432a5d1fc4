//! `cleaner`: log compaction's batch rewrite (`strand::log::cleaner`) and the clean
//! command decoder on arbitrary bytes, every codec.
//!
//! Input layout: `[mode: u8][horizon: u8][records bytes...]`
//! - mode bit 0: rewrite the CRC of every whole batch first; bit 1: make the whole input
//!   one batch (so mutations reach the record parser and the decompressors);
//! - mode bits 2-3: key map bound 1 | 4 | 64 | 2^20 keys;
//! - horizon: the delete horizon in ms (0..255; records' timestamps come from the input):
//!   the keys whose latest record is a tombstone older than it are the deleted keys.
//!
//! Asserts:
//! - never panics, no allocation above the fuzzer's -malloc_limit_mb;
//! - a rewritten batch keeps baseOffset, lastOffsetDelta, partitionLeaderEpoch,
//!   timestamps and producer fields, has fewer records, a valid CRC32C, and decodes with
//!   kafka-protocol's RecordBatchDecoder to records whose offsets are the original ones
//!   of the survivors (each inside the batch's range);
//! - cleaning is idempotent: the rewritten batch cleans to itself;
//! - `stored_clean_command` never panics, and only decodes a CRC-valid control batch.
#![no_main]

use bytes::{Buf, Bytes};
use kafka_protocol::records::RecordBatchDecoder;
use libfuzzer_sys::fuzz_target;
use strand::log::batch::{parse_whole, verify_crc};
use strand::log::cleaner::{clean_batch, record_summaries, KeyMap};
use strand::replication::entry_codec::stored_clean_command;
use strand_fuzz::{fix_crcs, make_one_batch, walk};

fuzz_target!(|data: &[u8]| {
    let [mode, horizon, rest @ ..] = data else {
        return;
    };
    let mut records = rest.to_vec();
    if mode & 2 != 0 {
        make_one_batch(&mut records);
    } else if mode & 1 != 0 {
        fix_crcs(&mut records);
    }
    let max_keys = [1, 4, 64, 1 << 20][((mode >> 2) & 3) as usize];
    let delete_horizon_ms = *horizon as i64;
    let records = Bytes::from(records);
    let (found, _) = walk(&records);
    let batches: Vec<Bytes> = found
        .iter()
        .map(|f| records.slice(f.position..f.end()))
        .collect();
    let mut keys = KeyMap::new(max_keys);
    for batch in &batches {
        if let Some(command) = stored_clean_command(batch) {
            let header = parse_whole(batch).expect("a decoded command parses");
            assert!(header.attributes & 0x20 != 0, "a clean command outside a control batch");
            assert!(verify_crc(batch, &header).is_ok());
            assert!(0 <= command.clean_start_offset && command.clean_start_offset < command.clean_end_offset);
        }
        match keys.add_batch(batch) {
            Ok(true) => {}
            Ok(false) | Err(_) => break,
        }
    }
    let deleted: std::collections::BTreeSet<u128> = keys
        .expired_tombstones(delete_horizon_ms, usize::MAX)
        .into_iter()
        .collect();
    for batch in &batches {
        let Ok(Some(cleaned)) = clean_batch(batch, &keys, &deleted) else {
            continue;
        };
        let before = parse_whole(batch).unwrap();
        let after = parse_whole(&cleaned).expect("a cleaned batch parses");
        assert_eq!(after.size_bytes(), cleaned.len());
        assert!(verify_crc(&cleaned, &after).is_ok(), "cleaned batch fails its CRC");
        assert_eq!(after.base_offset, before.base_offset);
        assert_eq!(after.last_offset_delta, before.last_offset_delta);
        assert_eq!(after.partition_leader_epoch, before.partition_leader_epoch);
        assert_eq!(after.base_timestamp, before.base_timestamp);
        assert_eq!(after.max_timestamp, before.max_timestamp);
        assert_eq!(after.producer_id, before.producer_id);
        assert_eq!(after.producer_epoch, before.producer_epoch);
        assert_eq!(after.base_sequence, before.base_sequence);
        assert!(after.records_count < before.records_count);
        let original: Vec<i64> = record_summaries(batch).unwrap().iter().map(|r| r.0).collect();
        let kept: Vec<i64> = record_summaries(&cleaned)
            .expect("a cleaned batch parses for cleaning")
            .iter()
            .map(|r| r.0)
            .collect();
        assert!(kept.iter().all(|o| original.contains(o)), "an offset moved");
        if after.records_count > 0 && before.attributes & 0x7 <= 4 {
            let mut buf = cleaned.clone();
            if let Ok(set) = RecordBatchDecoder::decode(&mut buf) {
                assert!(!buf.has_remaining());
                let decoded: Vec<i64> = set.records.iter().map(|r| r.offset).collect();
                assert_eq!(decoded, kept, "kafka-protocol reads other offsets");
            }
        }
        assert_eq!(
            clean_batch(&cleaned, &keys, &deleted).expect("cleans again"),
            None,
            "cleaning is not idempotent"
        );
    }
});
