//! `record_batch`: the produce-side validation of RecordBatches
//! (`strand::log::batch::validate_produce_records`) on arbitrary bytes, every codec.
//!
//! Input layout: `[mode: u8][records bytes...]`
//! - mode bit 0: rewrite the CRC of every whole batch first (so mutations reach the
//!   record decoder and the decompressors instead of dying at the checksum);
//! - mode bit 1: make the whole input one batch (fix `batchLength`, magic, CRC);
//! - mode bits 2-3: `max.message.bytes` = 1_048_588 | 16 MiB | 200 | usize::MAX.
//!
//! Asserts:
//! - never panics, and no single allocation above the fuzzer's -malloc_limit_mb
//!   (a decompression bomb is a crash);
//! - if any batch is torn, has another magic, or a wrong CRC32C (checked here with the
//!   crc32c crate), the input is refused;
//! - if accepted: the batches tile the input exactly, each header agrees with an
//!   independent parse, each is at most max.message.bytes, and each decodes with
//!   kafka-protocol's RecordBatchDecoder to `recordsCount` records with offsets
//!   base..base+count-1, `lastOffsetDelta` = count-1, no control/log-append-time flags.
#![no_main]

use bytes::{Buf, Bytes};
use kafka_protocol::records::RecordBatchDecoder;
use libfuzzer_sys::fuzz_target;
use strand::log::batch::validate_produce_records;
use strand_fuzz::{fix_crcs, make_one_batch, walk, RawHeader};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut records = rest.to_vec();
    if mode & 2 != 0 {
        make_one_batch(&mut records);
    } else if mode & 1 != 0 {
        fix_crcs(&mut records);
    }
    let max_batch_bytes = match (mode >> 2) & 3 {
        0 => 1_048_588,
        1 => 16 << 20,
        2 => 200,
        _ => usize::MAX,
    };
    let records = Bytes::from(records);
    let result = validate_produce_records(&records, max_batch_bytes);
    let (found, stop) = walk(&records);

    let Ok(batches) = result else {
        return;
    };
    assert!(!records.is_empty(), "accepted an empty records field");
    assert_eq!(
        stop,
        None,
        "accepted bytes whose framing or CRC is bad after {} good batches",
        found.len()
    );
    assert_eq!(
        batches.len(),
        found.len(),
        "batch count differs from an independent walk"
    );
    let mut end = 0;
    for ((header, bytes), f) in batches.iter().zip(&found) {
        assert_eq!(f.position, end, "batches do not tile the input");
        assert_eq!(
            &bytes[..],
            &records[f.position..f.end()],
            "batch bytes are not the input's"
        );
        end = f.end();
        let raw: RawHeader = f.header;
        assert_eq!(header.base_offset, raw.base_offset);
        assert_eq!(header.batch_length, raw.batch_length);
        assert_eq!(header.partition_leader_epoch, raw.partition_leader_epoch);
        assert_eq!(header.magic, 2);
        assert_eq!(header.crc, raw.crc);
        assert_eq!(header.attributes, raw.attributes);
        assert_eq!(header.last_offset_delta, raw.last_offset_delta);
        assert_eq!(header.base_timestamp, raw.base_timestamp);
        assert_eq!(header.max_timestamp, raw.max_timestamp);
        assert_eq!(header.producer_id, raw.producer_id);
        assert_eq!(header.producer_epoch, raw.producer_epoch);
        assert_eq!(header.base_sequence, raw.base_sequence);
        assert_eq!(header.records_count, raw.records_count);
        assert_eq!(header.size_bytes(), bytes.len());
        assert!(
            bytes.len() <= max_batch_bytes,
            "batch above max.message.bytes accepted"
        );
        assert!(raw.attributes & 0x7 <= 4, "unknown codec accepted");
        assert_eq!(raw.attributes & 0x8, 0, "LogAppendTime batch accepted");
        assert_eq!(raw.attributes & 0x20, 0, "control batch accepted");
        assert!(raw.records_count > 0, "empty batch accepted");
        assert_eq!(raw.last_offset_delta, raw.records_count - 1);
        // Independent CRC check (walk() already did it; say it once more, explicitly).
        assert_eq!(
            crc32c::crc32c(&bytes[21..]),
            raw.crc,
            "CRC32C does not verify"
        );
        // kafka-protocol's own decoder must agree with what was accepted.
        let mut buf = bytes.clone();
        let set = RecordBatchDecoder::decode(&mut buf)
            .unwrap_or_else(|e| panic!("accepted batch does not decode: {e}"));
        assert!(
            !buf.has_remaining(),
            "decoder left bytes in an accepted batch"
        );
        assert_eq!(set.records.len(), raw.records_count as usize);
        for (i, record) in set.records.iter().enumerate() {
            assert_eq!(
                record.offset,
                raw.base_offset.wrapping_add(i as i64),
                "record {i} offset"
            );
            assert!(!record.control);
        }
    }
    assert_eq!(
        end,
        records.len(),
        "accepted batches do not cover the input"
    );
});
