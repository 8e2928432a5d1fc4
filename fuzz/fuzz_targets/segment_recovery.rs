//! `segment_recovery`: arbitrary bytes as segment files of one partition, then
//! `PartitionLog::open` with recovery point 0 (scan everything) and i64::MAX (after a
//! clean shutdown: trust indexes that validate, scan only their tails).
//!
//! Input layout: `[flags: u8][index.interval.bytes: u16 BE]` then 1 to 3 segments, each
//! `[base offset: u32 BE]`, when flags bit 3 is set `[len: u16 BE][.index bytes]
//! [len: u16 BE][.timeindex bytes]`, then `[len: u32 BE][.log bytes]` (the last
//! segment's `.log` is the rest of the input).
//! - flags bit 0: rewrite the CRC of every whole batch of each `.log` first;
//! - flags bits 1-2: number of segments - 1 (3 means 3 segments);
//! - flags bit 3: the input carries `.index`/`.timeindex` files (otherwise none exist).
//!
//! Checks, against an independent walk of the original bytes (own 61-byte header
//! parser + crc32c):
//! - never panics; opening never fails on an in-memory store;
//! - every `.log` left is a byte prefix of what was written;
//! - full scan (recovery point 0, or no index files): exactly the longest prefix of
//!   whole, CRC-valid, offset-ordered batches of each segment is kept, segments after a
//!   cut are removed, the log end offset is right, and every read returns exactly the
//!   batches an independent lookup expects;
//! - trusted indexes: every batch a read returns is whole, CRC-valid, present byte for
//!   byte in the original segment, in offset order, and below the log end offset.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use strand::log::{LogConfig, PartitionLog, ReadError};
use strand::storage::{read_to_vec, MemoryStorage, Storage};
use strand_fuzz::{fix_crcs, walk, Found, Reader};

const DIR: &str = "/data/t-0";

struct SegmentFiles {
    log: Vec<u8>,
    index: Option<Vec<u8>>,
    time_index: Option<Vec<u8>>,
}

fn stem(base: i64) -> String {
    format!("{base:020}")
}

fn write(storage: &MemoryStorage, name: &str, bytes: &[u8]) {
    let mut f = storage.open(&Path::new(DIR).join(name), true).unwrap();
    f.truncate(0).unwrap();
    f.append(bytes).unwrap();
    f.sync().unwrap();
}

/// The longest prefix of `log` that recovery may keep for a segment based at `base`:
/// whole batches with a correct CRC, each starting exactly where the one before it ended
/// (the first at the segment's base: a base offset lies outside the CRC), each of which
/// fits the segment (last offset representable, relative offsets within u32).
fn keepable(base: i64, log: &[u8]) -> (Vec<Found>, i64) {
    let (found, _) = walk(log);
    let mut next = base;
    let mut kept = Vec::new();
    for f in found {
        let h = f.header;
        if h.base_offset != next || h.last_offset_delta < 0 {
            break;
        }
        let Some(after) = h
            .base_offset
            .checked_add(h.last_offset_delta as i64)
            .and_then(|last| last.checked_add(1))
        else {
            break;
        };
        if after - 1 - base > u32::MAX as i64 {
            break;
        }
        next = after;
        kept.push(f);
    }
    (kept, next)
}

struct Expected {
    /// Surviving segments: base -> (kept batches, next offset).
    segments: BTreeMap<i64, (Vec<Found>, i64)>,
}

/// What a full-scan recovery must leave, following the documented rules: scan each
/// segment in base order; a segment starting below the previous one's end is stale and
/// removed; after a cut (or a segment running into the next one's base) everything
/// later is removed; empty segments other than the last are dropped; an empty log gets
/// a fresh segment at 0.
fn expected(files: &BTreeMap<i64, SegmentFiles>) -> Expected {
    let bases: Vec<i64> = files.keys().copied().collect();
    let mut segments = BTreeMap::new();
    let mut expected_next: Option<i64> = None;
    let mut cut_rest = false;
    for (i, &base) in bases.iter().enumerate() {
        let next_base = bases.get(i + 1).copied().unwrap_or(i64::MAX);
        if cut_rest || expected_next.is_some_and(|n| base < n) {
            continue;
        }
        let log = &files[&base].log;
        let (kept, next) = keepable(base, log);
        let kept_len = kept.last().map(|f| f.end()).unwrap_or(0);
        if kept_len < log.len() || next > next_base {
            cut_rest = true;
        }
        expected_next = Some(next);
        segments.insert(base, (kept, next));
    }
    let last = segments.keys().next_back().copied();
    segments.retain(|b, (kept, _)| !kept.is_empty() || Some(*b) == last);
    if segments.is_empty() {
        segments.insert(0, (Vec::new(), 0));
    }
    Expected { segments }
}

fn setup(files: &BTreeMap<i64, SegmentFiles>) -> MemoryStorage {
    let storage = MemoryStorage::new();
    storage.create_dir_all(Path::new(DIR)).unwrap();
    for (base, f) in files {
        write(&storage, &format!("{}.log", stem(*base)), &f.log);
        if let Some(i) = &f.index {
            write(&storage, &format!("{}.index", stem(*base)), i);
        }
        if let Some(t) = &f.time_index {
            write(&storage, &format!("{}.timeindex", stem(*base)), t);
        }
    }
    storage
}

/// Splits what a read returned into batches (each must be whole and CRC-valid).
fn split(bytes: &Bytes) -> Vec<Found> {
    let (found, stop) = walk(bytes);
    assert_eq!(stop, None, "a read returned a torn or CRC-invalid batch");
    found
}

fn check(
    files: &BTreeMap<i64, SegmentFiles>,
    recovery_point: i64,
    config: &LogConfig,
    probes: &[i64],
) {
    let storage = setup(files);
    let (log, report) = PartitionLog::open(
        Arc::new(storage.clone()),
        Path::new(DIR),
        config.clone(),
        recovery_point,
    )
    .unwrap_or_else(|e| panic!("open failed on an in-memory store: {e}"));
    let dir = Path::new(DIR);
    // Whatever is left of each .log is a byte prefix of what was written.
    let mut left = BTreeMap::new();
    for name in storage.list_dir(dir).unwrap() {
        if let Some(s) = name.strip_suffix(".log") {
            let base: i64 = s.parse().unwrap();
            let now = read_to_vec(&storage, &dir.join(&name)).unwrap();
            let original: &[u8] = files.get(&base).map(|f| &f.log[..]).unwrap_or(&[]);
            assert!(
                original.starts_with(&now),
                "segment {base}: recovery left bytes that were never written"
            );
            left.insert(base, now.len());
        }
    }
    assert_eq!(
        log.segment_base_offsets(),
        left.keys().copied().collect::<Vec<_>>(),
        "segments in memory and on disk differ"
    );
    let full_scan = recovery_point == 0 || files.values().all(|f| f.index.is_none());
    let end = log.log_end_offset();
    let start = log.log_start_offset();
    if full_scan {
        let want = expected(files);
        let kept: BTreeMap<i64, usize> = want
            .segments
            .iter()
            .map(|(b, (k, _))| (*b, k.last().map(|f| f.end()).unwrap_or(0)))
            .collect();
        assert_eq!(
            left, kept,
            "recovery kept something else than the valid prefix: {report:?}"
        );
        let want_end = want.segments.values().next_back().unwrap().1;
        assert_eq!(end, want_end, "log end offset");
        assert_eq!(
            start,
            *want.segments.keys().next().unwrap(),
            "log start offset"
        );
        // Every batch that must be readable, in log order, with its segment.
        let all: Vec<(i64, &[u8], Found)> = want
            .segments
            .iter()
            .flat_map(|(b, (k, _))| {
                let log = &files[b].log;
                k.iter().map(move |f| (*b, &log[f.position..f.end()], *f))
            })
            .collect();
        let mut offsets: Vec<i64> = probes.to_vec();
        offsets.extend([start, end, start.saturating_sub(1), end.saturating_add(1)]);
        for (_, _, f) in &all {
            offsets.push(f.header.base_offset);
            offsets.push(f.header.base_offset + f.header.last_offset_delta as i64);
        }
        for offset in offsets {
            for max_bytes in [1usize, 200, 1 << 20] {
                let result = log.read(offset, max_bytes, i64::MAX, true);
                if offset < start || offset > end {
                    assert!(matches!(result, Err(ReadError::OffsetOutOfRange { .. })));
                    continue;
                }
                let bytes =
                    result.unwrap_or_else(|e| panic!("read({offset}) of a recovered log: {e}"));
                let first = all.iter().position(|(_, _, f)| {
                    f.header.base_offset + f.header.last_offset_delta as i64 >= offset
                });
                let Some(first) = first else {
                    assert!(
                        bytes.is_empty(),
                        "read({offset}) past the last batch returned data"
                    );
                    continue;
                };
                let got = split(&bytes);
                assert!(
                    !got.is_empty(),
                    "read({offset}) returned nothing below the end"
                );
                let segment = all[first].0;
                let mut at = 0;
                for (i, g) in got.iter().enumerate() {
                    let (seg, want_bytes, _) = all.get(first + i).unwrap_or_else(|| {
                        panic!("read({offset}) returned more batches than exist")
                    });
                    assert_eq!(*seg, segment, "a read crossed a segment boundary");
                    assert_eq!(
                        &bytes[g.position..g.end()],
                        *want_bytes,
                        "read({offset}) batch {i}"
                    );
                    at = g.end();
                }
                assert!(
                    got.len() == 1 || at <= max_bytes,
                    "read went past max_bytes"
                );
            }
        }
    } else {
        // Trusted indexes: nothing before the last index entry was re-checked, but reads
        // verify every CRC; whatever they serve must really be in the segment.
        for &offset in probes.iter().chain([start, end].iter()) {
            let Ok(bytes) = log.read(offset, 1 << 20, i64::MAX, true) else {
                continue;
            };
            let mut previous_end = offset;
            for (i, g) in split(&bytes).iter().enumerate() {
                let h = g.header;
                let last = h.base_offset + h.last_offset_delta as i64;
                assert!(last < end, "read served offsets at or past the log end");
                if i == 0 {
                    assert!(
                        last >= offset,
                        "first batch ends before the requested offset"
                    );
                } else {
                    assert!(h.base_offset >= previous_end, "batches out of offset order");
                }
                previous_end = last + 1;
                let batch = &bytes[g.position..g.end()];
                // Bytes of a batch, not its (patched) base offset: compare from byte 8.
                let present = files
                    .values()
                    .any(|f| f.log.windows(batch.len()).any(|w| w == batch));
                assert!(present, "read served a batch that is in no segment");
            }
        }
    }
    let _ = log.offset_for_timestamp(0);
    let _ = log.max_timestamp_offset();
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let flags = r.u8();
    let interval = r.u16();
    let count = 1 + ((flags >> 1) & 3).min(2) as usize;
    let with_indexes = flags & 8 != 0;
    let mut files = BTreeMap::new();
    for i in 0..count {
        let base = r.u32() as i64;
        let (index, time_index) = if with_indexes {
            let n = r.u16() as usize;
            let index = r.bytes(n).to_vec();
            let n = r.u16() as usize;
            (Some(index), Some(r.bytes(n).to_vec()))
        } else {
            (None, None)
        };
        let mut log = if i + 1 == count {
            r.rest().to_vec()
        } else {
            let n = r.u32() as usize;
            r.bytes(n).to_vec()
        };
        if flags & 1 != 0 {
            fix_crcs(&mut log);
        }
        files.insert(
            base,
            SegmentFiles {
                log,
                index,
                time_index,
            },
        );
    }
    let config = LogConfig {
        index_interval_bytes: interval as u64,
        ..LogConfig::default()
    };
    let probes: Vec<i64> = files.keys().map(|b| b + (interval as i64 % 7)).collect();
    check(&files, 0, &config, &probes);
    check(&files, i64::MAX, &config, &probes);
});
