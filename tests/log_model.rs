//! The segmented partition log against a simple model: a vector of batches.
//!
//! proptest drives random sequences of append / read / roll / retention / truncate /
//! flush / restart (clean, unclean, and power loss that drops unsynced writes) against
//! `PartitionLog` on the in-memory storage, and checks after every step that the log
//! holds exactly what the model says, that reads return whole, CRC-valid batches in
//! order, and that lookups by timestamp agree with a linear scan of the model.

use bytes::Bytes;
use proptest::prelude::*;
use std::path::Path;
use std::sync::Arc;
use strand::client::{decode_records, encode_batch, encode_records};
use strand::log::batch::validate_produce_records;
use strand::log::{LogConfig, PartitionLog};
use strand::storage::{MemoryStorage, Storage};

#[derive(Debug, Clone)]
enum Op {
    Append { records: Vec<(u16, i64)> },
    Read { offset_pick: u16, max_bytes: u16 },
    Roll,
    Retention { now_advance_ms: i64 },
    Truncate { offset_pick: u16 },
    Flush,
    Restart { clean: bool, power_loss: bool },
    FindTimestamp { timestamp_ms: i64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec((0u16..300, 0i64..5_000), 1..6).prop_map(|records| Op::Append { records }),
        3 => (any::<u16>(), 1u16..2_000).prop_map(|(offset_pick, max_bytes)| Op::Read { offset_pick, max_bytes }),
        1 => Just(Op::Roll),
        1 => (0i64..20_000).prop_map(|now_advance_ms| Op::Retention { now_advance_ms }),
        1 => any::<u16>().prop_map(|offset_pick| Op::Truncate { offset_pick }),
        2 => Just(Op::Flush),
        1 => (any::<bool>(), any::<bool>()).prop_map(|(clean, power_loss)| Op::Restart { clean, power_loss }),
        2 => (0i64..6_000).prop_map(|timestamp_ms| Op::FindTimestamp { timestamp_ms }),
    ]
}

/// One batch as the model knows it.
#[derive(Debug, Clone)]
struct ModelBatch {
    base_offset: i64,
    /// (value, timestamp) per record.
    records: Vec<(Bytes, i64)>,
}

impl ModelBatch {
    fn next_offset(&self) -> i64 {
        self.base_offset + self.records.len() as i64
    }
}

struct Harness {
    storage: MemoryStorage,
    config: LogConfig,
    log: PartitionLog,
    batches: Vec<ModelBatch>,
    /// Everything below this offset has been fsynced.
    durable_offset: i64,
    now_ms: i64,
}

const DIR: &str = "/data/t-0";

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

    fn value(n: u16, offset_hint: usize) -> Bytes {
        Bytes::from(format!("{offset_hint}-{}", "v".repeat(n as usize)))
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Append { records } => {
                let values: Vec<(Bytes, i64)> = records
                    .iter()
                    .enumerate()
                    .map(|(i, (n, ts))| (Self::value(*n, i), *ts))
                    .collect();
                // One record per timestamp: encode record by record timestamps via separate deltas.
                let batch = encode_with_timestamps(&values);
                let batches = validate_produce_records(&batch, 1 << 20).unwrap();
                let info = self.log.append(&batches, 0, self.now_ms).unwrap();
                assert_eq!(info.base_offset, self.end_offset());
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
            Op::Retention { now_advance_ms } => {
                self.now_ms += now_advance_ms;
                let before = self.log.log_start_offset();
                let rolled_or_deleted = self.log.apply_retention(self.now_ms).unwrap();
                let start = self.log.log_start_offset();
                assert!(start >= before);
                assert!(
                    start == self.end_offset()
                        || self.batches.iter().any(|b| b.base_offset == start),
                    "log start {start} is not a batch boundary"
                );
                self.batches.retain(|b| b.base_offset >= start);
                if start > before {
                    assert!(rolled_or_deleted > 0);
                }
                self.durable_offset = self.durable_offset.max(start);
            }
            Op::Truncate { offset_pick } => {
                if self.batches.is_empty() {
                    return;
                }
                let i = *offset_pick as usize % self.batches.len();
                let offset = self.batches[i].base_offset;
                self.log.truncate_to(offset).unwrap();
                self.batches.truncate(i);
                assert_eq!(
                    self.log.log_end_offset(),
                    self.end_offset().max(offset.min(self.log.log_end_offset()))
                );
                self.durable_offset = self.durable_offset.min(self.end_offset());
            }
            Op::Flush => {
                let ticket = self.log.begin_flush().unwrap();
                for handle in &ticket.handles {
                    handle.sync().unwrap();
                }
                self.log.flushed(ticket.up_to_offset);
                self.durable_offset = ticket.up_to_offset;
            }
            Op::Restart { clean, power_loss } => self.restart(*clean, *power_loss),
            Op::FindTimestamp { timestamp_ms } => {
                let expected = self
                    .batches
                    .iter()
                    .flat_map(|b| {
                        b.records
                            .iter()
                            .enumerate()
                            .map(move |(i, (_, ts))| (b.base_offset + i as i64, *ts))
                    })
                    .find(|(_, ts)| ts >= timestamp_ms);
                let found = self.log.offset_for_timestamp(*timestamp_ms).unwrap();
                assert_eq!(found, expected, "offset_for_timestamp({timestamp_ms})");
            }
        }
        // Rolls (explicit, by size, or by retention) fsync the sealed segment; the log
        // reports that as its recovery point, and a power loss below checks the claim.
        self.durable_offset = self.durable_offset.max(self.log.recovery_point());
        self.check_shape();
    }

    fn restart(&mut self, clean: bool, power_loss: bool) {
        let recovery_point = if clean && !power_loss {
            self.log.sync_all().unwrap();
            self.durable_offset = self.end_offset();
            i64::MAX
        } else {
            self.log.recovery_point()
        };
        let storage: Arc<dyn Storage> = Arc::new(self.storage.clone());
        if power_loss {
            self.storage.crash();
            // Only what was fsynced survives.
            let durable = self.durable_offset;
            self.batches.retain(|b| b.next_offset() <= durable);
        }
        let (log, report) =
            PartitionLog::open(storage, Path::new(DIR), self.config.clone(), recovery_point)
                .unwrap();
        self.log = log;
        assert_eq!(
            self.log.log_end_offset(),
            self.end_offset(),
            "after restart (clean={clean}, power_loss={power_loss}): {report:?}"
        );
    }

    fn check_shape(&self) {
        assert_eq!(self.log.log_end_offset(), self.end_offset());
        if let Some(first) = self.batches.first() {
            assert!(self.log.log_start_offset() <= first.base_offset);
        }
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
        for (got, want) in records.iter().zip(expected.iter()) {
            assert_eq!(
                (got.offset, got.value.clone().unwrap(), got.timestamp_ms),
                want.clone()
            );
        }
        let batch_count = validate_produce_records(&bytes, 1 << 30)
            .map(|b| b.len())
            .unwrap_or(0);
        assert!(batch_count >= 1);
        if batch_count > 1 {
            assert!(
                bytes.len() <= max_bytes,
                "more than one batch beyond max_bytes"
            );
        }
    }
}

/// A batch whose records carry the given timestamps.
fn encode_with_timestamps(values: &[(Bytes, i64)]) -> Bytes {
    let records: Vec<_> = values
        .iter()
        .map(|(v, ts)| (None, Some(v.clone()), *ts))
        .collect();
    encode_records(&records, kafka_protocol::records::Compression::None).unwrap()
}

fn small_config() -> impl Strategy<Value = LogConfig> {
    (
        200u64..3_000,
        0u64..600,
        prop_oneof![Just(-1i64), 1_000i64..30_000],
        prop_oneof![Just(-1i64), 500i64..5_000],
    )
        .prop_map(
            |(segment_bytes, index_interval_bytes, retention_ms, retention_bytes)| LogConfig {
                segment_bytes,
                index_interval_bytes,
                retention_ms,
                retention_bytes,
                ..LogConfig::default()
            },
        )
}

proptest! {
    // 256 cases by default; PROPTEST_CASES=N runs more.
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn log_matches_model(config in small_config(), ops in prop::collection::vec(op(), 1..60)) {
        let mut harness = Harness::new(config);
        for op in &ops {
            harness.apply(op);
        }
        // Finally every offset is readable and agrees with the model.
        for pick in 0..8u16 {
            harness.check_read(pick * 97, 700);
        }
    }

    /// Cutting the last segment at any byte leaves exactly the whole batches before the cut.
    #[test]
    fn recovery_after_truncated_tail(batch_sizes in prop::collection::vec(1usize..8, 1..12), cut_pick in any::<u32>()) {
        let storage = MemoryStorage::new();
        let config = LogConfig::default();
        let (mut log, _) = PartitionLog::open(Arc::new(storage.clone()), Path::new(DIR), config.clone(), 0).unwrap();
        let mut ends = vec![(0u64, 0i64)]; // (byte position, next offset) after each batch
        for (i, n) in batch_sizes.iter().enumerate() {
            let values: Vec<_> = (0..*n).map(|j| (None, Some(Bytes::from(format!("b{i}r{j}"))))).collect();
            let batch = encode_batch(&values, 1_000, kafka_protocol::records::Compression::None).unwrap();
            let info = log.append(&validate_produce_records(&batch, 1 << 20).unwrap(), 0, 1_000).unwrap();
            ends.push((log.size_bytes(), info.last_offset + 1));
        }
        log.sync_all().unwrap();
        drop(log);
        let total = ends.last().unwrap().0;
        let cut = cut_pick as u64 % (total + 1);
        let path = Path::new(DIR).join("00000000000000000000.log");
        let mut file = storage.open(&path, false).unwrap();
        file.truncate(cut).unwrap();
        file.sync().unwrap();
        let (log, report) = PartitionLog::open(Arc::new(storage.clone()), Path::new(DIR), config, 0).unwrap();
        let (kept_bytes, kept_offset) = *ends.iter().rev().find(|(pos, _)| *pos <= cut).unwrap();
        prop_assert_eq!(log.log_end_offset(), kept_offset);
        prop_assert_eq!(log.size_bytes(), kept_bytes);
        prop_assert_eq!(report.truncated_bytes, cut - kept_bytes);
        if kept_offset > 0 {
            let records = decode_records(&log.read(0, 1 << 20, i64::MAX, true).unwrap()).unwrap();
            prop_assert_eq!(records.len() as i64, kept_offset);
        }
    }

    /// A flipped bit anywhere in a batch is never served: after a clean restart reads stop
    /// before the bad batch; after an unclean one recovery cuts the log there.
    #[test]
    fn corrupt_batches_are_never_served(batches in 2usize..8, flip_pick in any::<u32>(), bit in 0u8..8, clean in any::<bool>()) {
        let storage = MemoryStorage::new();
        let config = LogConfig::default();
        let (mut log, _) = PartitionLog::open(Arc::new(storage.clone()), Path::new(DIR), config.clone(), 0).unwrap();
        let mut starts = Vec::new();
        let mut produced = Vec::new();
        for i in 0..batches {
            starts.push(log.size_bytes());
            let values: Vec<_> = (0..3).map(|j| (None, Some(Bytes::from(format!("b{i}r{j}"))))).collect();
            produced.extend(values.iter().map(|(_, v)| v.clone().unwrap()));
            let batch = encode_batch(&values, 1_000, kafka_protocol::records::Compression::None).unwrap();
            log.append(&validate_produce_records(&batch, 1 << 20).unwrap(), 0, 1_000).unwrap();
        }
        log.sync_all().unwrap();
        let total = log.size_bytes();
        drop(log);
        // Flip a bit anywhere from `magic` on (baseOffset and partitionLeaderEpoch are
        // outside the CRC by design; batchLength is covered by the framing checks).
        starts.push(total);
        let batch_index = flip_pick as usize % batches;
        let batch_size = starts[batch_index + 1] - starts[batch_index];
        let within = 16 + (flip_pick as u64 / batches as u64) % (batch_size - 16);
        let position = starts[batch_index] + within;
        let path = Path::new(DIR).join("00000000000000000000.log");
        let file = storage.open(&path, false).unwrap();
        let mut byte = [0u8; 1];
        strand::storage::read_exact_at(file.as_ref(), position, &mut byte).unwrap();
        prop_assert!(storage.corrupt(&path, position as usize, &[byte[0] ^ (1 << bit)]));
        let recovery_point = if clean { i64::MAX } else { 0 };
        let (log, _) = PartitionLog::open(Arc::new(storage.clone()), Path::new(DIR), config, recovery_point).unwrap();
        // Read everything reachable, batch by batch.
        let mut offset = log.log_start_offset();
        let mut served = Vec::new();
        for _ in 0..(batches * 2) {
            match log.read(offset, 1 << 20, i64::MAX, true) {
                Ok(bytes) if bytes.is_empty() => break,
                Ok(bytes) => {
                    let records = decode_records(&bytes).unwrap();
                    offset = records.last().unwrap().offset + 1;
                    served.extend(records.into_iter().map(|r| r.value.unwrap()));
                }
                Err(_) => break,
            }
        }
        let good_records = batch_index * 3;
        prop_assert!(served.len() <= good_records, "served records from or after the corrupt batch");
        prop_assert_eq!(&served[..], &produced[..served.len()]);
        prop_assert_eq!(served.len(), good_records, "lost records before the corrupt batch");
    }
}
