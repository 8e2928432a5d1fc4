//! `partition_log`: a structure-aware, differential target. An `arbitrary` sequence of
//! append / read / roll / retention / truncate / flush / crash-restart / config-change /
//! find-by-timestamp operations runs against the real `PartitionLog` on `MemoryStorage`
//! and against a model (a vector of batches), compared after every step.
//!
//! The ideas are those of tests/log_model.rs (proptest); this file stands alone.
//! Additions: any codec, any i64 timestamp, segment.ms rolls, config changes between
//! operations, and clock jumps.
//!
//! Checked after every step: the log end offset equals the model's; the log start is at
//! or before the model's first batch and retention only ever removes whole batches from
//! the front; appends land at the model's end; reads return whole CRC-valid batches whose
//! records (offset, value, timestamp) are exactly the model's from the requested offset
//! on, never more than one batch beyond max_bytes; offset_for_timestamp agrees with a
//! linear scan of the model; after a power loss exactly the fsynced prefix survives
//! (the log's own recovery point is the claim being checked).
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use kafka_protocol::records::Compression;
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::Arc;
use strand::client::{decode_records, encode_records};
use strand::log::batch::validate_produce_records;
use strand::log::{LogConfig, PartitionLog};
use strand::storage::{MemoryStorage, Storage};

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Ts {
    Small(u16),
    Any(i64),
}

impl Ts {
    fn ms(self) -> i64 {
        match self {
            Ts::Small(v) => v as i64,
            // Within ±2^61: kafka-protocol's encoder (the project client's) computes
            // timestamp deltas with plain `-`, which overflows for extreme pairs.
            Ts::Any(v) => v >> 2,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

#[derive(Arbitrary, Debug, Clone)]
struct Config {
    segment_bytes: u16,
    segment_ms: Option<u16>,
    retention_ms: Option<u16>,
    retention_bytes: Option<u16>,
    index_interval_bytes: u16,
}

impl Config {
    fn log_config(&self) -> LogConfig {
        LogConfig {
            segment_bytes: 14 + (self.segment_bytes % 4000) as u64,
            segment_ms: self
                .segment_ms
                .map(|v| 1 + v as i64)
                .unwrap_or(LogConfig::default().segment_ms),
            retention_ms: self.retention_ms.map(|v| v as i64).unwrap_or(-1),
            retention_bytes: self
                .retention_bytes
                .map(|v| (v % 8000) as i64)
                .unwrap_or(-1),
            index_interval_bytes: (self.index_interval_bytes % 1200) as u64,
            ..LogConfig::default()
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum Op {
    Append {
        records: Vec<(u8, Ts)>,
        codec: Codec,
    },
    Read {
        offset_pick: u16,
        max_bytes: u16,
    },
    Roll,
    Retention {
        advance_ms: u16,
    },
    Truncate {
        pick: u16,
    },
    Flush,
    Restart {
        clean: bool,
        power_loss: bool,
    },
    FindTimestamp {
        ts: Ts,
    },
    Advance {
        ms: u32,
    },
    SetConfig(Config),
}

#[derive(Arbitrary, Debug)]
struct Input {
    config: Config,
    ops: Vec<Op>,
}

#[derive(Debug, Clone)]
struct ModelBatch {
    base_offset: i64,
    records: Vec<(Bytes, i64)>,
}

impl ModelBatch {
    fn next_offset(&self) -> i64 {
        self.base_offset + self.records.len() as i64
    }
}

const DIR: &str = "/data/t-0";

struct Harness {
    storage: MemoryStorage,
    config: LogConfig,
    log: PartitionLog,
    batches: Vec<ModelBatch>,
    durable_offset: i64,
    now_ms: i64,
}

impl Harness {
    fn new(config: LogConfig) -> Harness {
        let storage = MemoryStorage::new();
        let (log, _) =
            PartitionLog::open(Arc::new(storage.clone()), Path::new(DIR), config.clone(), 0)
                .unwrap();
        Harness {
            storage,
            config,
            log,
            batches: Vec::new(),
            durable_offset: 0,
            now_ms: 10_000,
        }
    }

    fn end_offset(&self) -> i64 {
        self.batches
            .last()
            .map(|b| b.next_offset())
            .unwrap_or_else(|| self.log.log_start_offset())
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Append { records, codec } => {
                if records.is_empty() {
                    return;
                }
                let values: Vec<(Bytes, i64)> = records
                    .iter()
                    .take(8)
                    .enumerate()
                    .map(|(i, (n, ts))| {
                        (
                            Bytes::from(format!("{i}-{}", "v".repeat(*n as usize))),
                            ts.ms(),
                        )
                    })
                    .collect();
                let compression = match codec {
                    Codec::None => Compression::None,
                    Codec::Gzip => Compression::Gzip,
                    Codec::Snappy => Compression::Snappy,
                    Codec::Lz4 => Compression::Lz4,
                    Codec::Zstd => Compression::Zstd,
                };
                let encoded: Vec<_> = values
                    .iter()
                    .map(|(v, ts)| (None, Some(v.clone()), *ts))
                    .collect();
                let batch = encode_records(&encoded, compression).unwrap();
                let batches = validate_produce_records(&batch, 1 << 20).unwrap_or_else(|e| {
                    panic!("a batch from the project's encoder is refused: {e}")
                });
                assert_eq!(batches.len(), 1);
                let info = self.log.append(&batches, 0, self.now_ms).unwrap();
                assert_eq!(
                    info.base_offset,
                    self.end_offset(),
                    "append landed elsewhere"
                );
                assert_eq!(info.last_offset, info.base_offset + values.len() as i64 - 1);
                self.batches.push(ModelBatch {
                    base_offset: info.base_offset,
                    records: values,
                });
            }
            Op::Read {
                offset_pick,
                max_bytes,
            } => self.check_read(*offset_pick, *max_bytes as usize),
            Op::Roll => self.log.roll().unwrap(),
            Op::Retention { advance_ms } => {
                self.now_ms += *advance_ms as i64;
                self.retention();
            }
            Op::Truncate { pick } => {
                if self.batches.is_empty() {
                    return;
                }
                let i = *pick as usize % self.batches.len();
                let offset = self.batches[i].base_offset;
                self.log.truncate_to(offset).unwrap();
                self.batches.truncate(i);
                self.durable_offset = self.durable_offset.min(self.end_offset());
            }
            Op::Flush => {
                let ticket = self.log.begin_flush().unwrap();
                for handle in &ticket.handles {
                    handle.sync().unwrap();
                }
                self.log.flushed(ticket.up_to_offset);
                self.durable_offset = self.durable_offset.max(ticket.up_to_offset);
            }
            Op::Restart { clean, power_loss } => self.restart(*clean, *power_loss),
            Op::FindTimestamp { ts } => self.check_timestamp(ts.ms()),
            Op::Advance { ms } => self.now_ms += *ms as i64,
            Op::SetConfig(c) => {
                self.config = c.log_config();
                self.log.set_config(self.config.clone());
            }
        }
        // Rolls fsync the sealed segment; the log reports that as its recovery point, and
        // a later power loss checks the claim.
        self.durable_offset = self.durable_offset.max(self.log.recovery_point());
        self.check_shape();
    }

    fn retention(&mut self) {
        let before = self.log.log_start_offset();
        let segments_before = self.log.segment_count();
        let deleted = self.log.apply_retention(self.now_ms).unwrap();
        let start = self.log.log_start_offset();
        assert!(start >= before, "log start went backwards");
        assert!(
            start == self.end_offset() || self.batches.iter().any(|b| b.base_offset == start),
            "log start {start} is not a batch boundary"
        );
        self.batches.retain(|b| b.base_offset >= start);
        if start > before {
            assert!(deleted > 0);
        }
        assert!(self.log.segment_count() + deleted <= segments_before + 1);
        if self.config.retention_bytes < 0 && self.config.retention_ms < 0 {
            assert_eq!(deleted, 0, "retention deleted with no retention configured");
        }
        self.durable_offset = self.durable_offset.max(start);
    }

    fn restart(&mut self, clean: bool, power_loss: bool) {
        let recovery_point = if clean && !power_loss {
            self.log.sync_all().unwrap();
            self.durable_offset = self.end_offset();
            i64::MAX
        } else {
            self.log.recovery_point()
        };
        if power_loss {
            self.storage.crash();
            let durable = self.durable_offset;
            self.batches.retain(|b| b.next_offset() <= durable);
        }
        let storage: Arc<dyn Storage> = Arc::new(self.storage.clone());
        let (log, report) =
            PartitionLog::open(storage, Path::new(DIR), self.config.clone(), recovery_point)
                .unwrap();
        self.log = log;
        assert_eq!(
            self.log.log_end_offset(),
            self.end_offset(),
            "after restart (clean={clean}, power_loss={power_loss}): {report:?}"
        );
        if !power_loss {
            assert_eq!(
                report.truncated_bytes, 0,
                "recovery cut synced or intact data: {report:?}"
            );
        }
    }

    fn check_shape(&self) {
        assert_eq!(
            self.log.log_end_offset(),
            self.end_offset(),
            "log end offset"
        );
        assert!(self.log.recovery_point() <= self.log.log_end_offset());
        if let Some(first) = self.batches.first() {
            assert!(
                self.log.log_start_offset() <= first.base_offset,
                "lost the model's first batch"
            );
        }
    }

    fn check_timestamp(&self, timestamp_ms: i64) {
        let expected = self
            .batches
            .iter()
            .flat_map(|b| {
                b.records
                    .iter()
                    .enumerate()
                    .map(move |(i, (_, ts))| (b.base_offset + i as i64, *ts))
            })
            .find(|(_, ts)| *ts >= timestamp_ms);
        let found = self.log.offset_for_timestamp(timestamp_ms).unwrap();
        assert_eq!(found, expected, "offset_for_timestamp({timestamp_ms})");
    }

    fn check_read(&self, offset_pick: u16, max_bytes: usize) {
        let start = self.log.log_start_offset();
        let end = self.end_offset();
        let offset = start + (offset_pick as i64) % (end - start + 1);
        let bytes = self.log.read(offset, max_bytes, end, true).unwrap();
        if offset == end {
            assert!(bytes.is_empty());
            return;
        }
        assert!(
            !bytes.is_empty(),
            "read at {offset} below the end returned nothing"
        );
        let records = decode_records(&bytes).unwrap();
        let first_batch = self
            .batches
            .iter()
            .position(|b| b.next_offset() > offset)
            .unwrap();
        let expected: Vec<(i64, Bytes, i64)> = self.batches[first_batch..]
            .iter()
            .flat_map(|b| {
                b.records
                    .iter()
                    .enumerate()
                    .map(move |(i, (v, ts))| (b.base_offset + i as i64, v.clone(), *ts))
            })
            .collect();
        assert!(records.len() <= expected.len());
        assert_eq!(
            records.first().map(|r| r.offset),
            Some(self.batches[first_batch].base_offset)
        );
        for (got, want) in records.iter().zip(expected.iter()) {
            assert_eq!(
                (got.offset, got.value.clone().unwrap(), got.timestamp_ms),
                want.clone()
            );
        }
        let batch_count = validate_produce_records(&bytes, usize::MAX)
            .map(|b| b.len())
            .unwrap_or(0);
        assert!(
            batch_count >= 1,
            "a read returned bytes that are not whole valid batches"
        );
        if batch_count > 1 {
            assert!(
                bytes.len() <= max_bytes,
                "more than one batch beyond max_bytes"
            );
        }
    }
}

fuzz_target!(|input: Input| {
    let mut harness = Harness::new(input.config.log_config());
    for op in input.ops.iter().take(64) {
        harness.apply(op);
    }
    for pick in 0..8u16 {
        harness.check_read(pick.wrapping_mul(97), 700);
    }
});
