//! Log compaction (`cleanup.policy=compact`), the pure part: given a partition's batches
//! below a clean point, which records survive and what each rewritten batch looks like.
//!
//! Plain Rust, no I/O and no clock: the partition log feeds it batches and writes the
//! results (`PartitionLog::clean`), the replicated trigger (`replication::compaction`)
//! decides the clean point and the time. Rules:
//! - Only records below the clean point (`clean_end_offset`, a batch boundary) are
//!   touched. A record with a key is dropped when a later record below the clean point
//!   has the same key, or when its key is one of the clean's deleted keys: keys whose
//!   latest record below the clean point is a tombstone (null value) with a timestamp
//!   before the delete horizon (the leader's clock minus `delete.retention.ms`), listed
//!   by the leader ([`KeyMap::expired_tombstones`]) and then dropped whole on every
//!   replica. A replica does not decide tombstones from its own copy: a follower that
//!   caught up may hold an older record of a key in its own, not yet cleaned part while
//!   the leader's cleaned batches it received no longer hold the tombstone that
//!   superseded it (found by the simulator); from its copy alone it would keep that
//!   record.
//! - Records of an aborted transaction (a transactional batch whose producer's next
//!   marker below the clean point is an ABORT) are all dropped, keys or not, and never
//!   count as a key's latest record; a transaction's records count only once its COMMIT
//!   marker is below the clean point ([`KeyMap`]).
//! - Other records without a key, control batches and everything at or above the clean
//!   point are never touched.
//! - A rewritten batch keeps its baseOffset, lastOffsetDelta, partitionLeaderEpoch,
//!   timestamps and producer fields; survivors keep their offsets (their offset deltas are
//!   copied unchanged). recordsCount, batchLength and the CRC32C are recomputed. A batch
//!   left with no record stays as an empty batch (RecordBatch v2 allows it; clients skip
//!   it), written uncompressed as Kafka writes empty batches: a Raft entry never goes away.
//! - Records are copied as raw bytes (parsed, never re-encoded), so headers, including
//!   duplicate header keys that `kafka-protocol`'s `Record` would collapse, stay exactly as
//!   produced. A compressed batch is decompressed, filtered and compressed again with the
//!   same codec.
//! - The output is a function of the input batch and the set of records dropped, and
//!   cleaning is idempotent: cleaning twice, or cleaning a batch that a later clean
//!   already cleaned, yields the same bytes. Every replica therefore serves the same
//!   batches once it applied the same clean commands, whichever of its batches came
//!   from a leader that had cleaned them further (the model property below checks it).
//!
//! Keys are remembered as a 128-bit prefix of their SHA-256 ([`key_hash`]): a collision
//! between two different keys (probability about n²/2^129 for n keys) would make the older
//! key's latest record look superseded and drop it, on every replica alike.

use super::batch::{self, read_varint, BatchHeader, BATCH_HEADER_SIZE};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::compression::{Compressor, Gzip, Lz4, Snappy, Zstd};
use std::collections::{BTreeMap, BTreeSet};

/// Bytes one key-map entry is counted as (a 16-byte hash, an 8-byte offset, and the
/// map's own overhead): `log.cleaner.dedupe.buffer.size` divided by this bounds the keys.
pub const KEY_MAP_ENTRY_BYTES: usize = 64;

/// Why a batch could not be read for cleaning (it is then left as it is).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot clean batch at offset {base_offset}: {reason}")]
pub struct CleanError {
    pub base_offset: i64,
    pub reason: String,
}

fn clean_err(header: &BatchHeader, reason: impl Into<String>) -> CleanError {
    CleanError {
        base_offset: header.base_offset,
        reason: reason.into(),
    }
}

/// A key's identity in the key map: the first 128 bits of its SHA-256.
pub fn key_hash(key: &[u8]) -> u128 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key);
    u128::from_be_bytes(digest[..16].try_into().expect("a SHA-256 has 32 bytes"))
}

/// The latest record of a key: its offset, and its timestamp if it is a tombstone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Latest {
    offset: i64,
    tombstone_timestamp_ms: Option<i64>,
}

/// Latest record of each key seen so far, bounded in the number of keys.
///
/// Transactional records join it only at their transaction's COMMIT marker: until then
/// they wait in `open_txns`, and an ABORT marker forgets them and records the aborted
/// range instead, whose records every clean then drops (as Kafka's cleaner: a record of
/// an aborted transaction never shadows an older record of its key, and goes). Without
/// this an aborted transactional offset commit in `__consumer_offsets` would shadow the
/// plain commit before it and, once cleaned, lose it. A transaction still open where
/// the walk ends shadows nothing and loses nothing; the next clean walks it again from
/// the log start.
#[derive(Debug, Clone)]
pub struct KeyMap {
    latest: BTreeMap<u128, Latest>,
    /// Per producer id, its open transaction: first offset and keys so far.
    open_txns: BTreeMap<i64, OpenTxn>,
    /// Aborted transactions: (producer id, first offset) → the ABORT marker's offset.
    aborted: BTreeMap<(i64, i64), i64>,
    /// Bounds the keys of `latest` and `open_txns` plus the aborted ranges.
    max_keys: usize,
}

#[derive(Debug, Clone)]
struct OpenTxn {
    first_offset: i64,
    latest: BTreeMap<u128, Latest>,
}

impl KeyMap {
    pub fn new(max_keys: usize) -> KeyMap {
        assert!(max_keys > 0);
        KeyMap {
            latest: BTreeMap::new(),
            open_txns: BTreeMap::new(),
            aborted: BTreeMap::new(),
            max_keys,
        }
    }

    /// Entries held, counted against `max_keys`.
    fn entries(&self) -> usize {
        let open: usize = self.open_txns.values().map(|t| t.latest.len()).sum();
        self.latest.len() + open + self.aborted.len()
    }

    /// Whether `header`'s batch belongs to a transaction the walk saw aborted.
    pub fn is_aborted(&self, header: &BatchHeader) -> bool {
        if !header.is_transactional() || header.is_control() {
            return false;
        }
        let producer_id = header.producer_id;
        self.aborted
            .range((producer_id, i64::MIN)..=(producer_id, header.base_offset))
            .next_back()
            .is_some_and(|(_, marker_offset)| header.base_offset < *marker_offset)
    }

    /// A map bounded by `dedupe_buffer_bytes` of memory.
    pub fn with_buffer_bytes(dedupe_buffer_bytes: usize) -> KeyMap {
        KeyMap::new((dedupe_buffer_bytes / KEY_MAP_ENTRY_BYTES).max(1))
    }

    pub fn len(&self) -> usize {
        self.latest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }

    pub fn latest_offset(&self, key: &[u8]) -> Option<i64> {
        self.latest.get(&key_hash(key)).map(|l| l.offset)
    }

    /// Keys whose latest record is a tombstone stamped before `delete_horizon_ms`, in
    /// hash order, at most `limit` of them.
    pub fn expired_tombstones(&self, delete_horizon_ms: i64, limit: usize) -> Vec<u128> {
        self.latest
            .iter()
            .filter(|(_, l)| {
                l.tombstone_timestamp_ms
                    .is_some_and(|t| t < delete_horizon_ms)
            })
            .map(|(hash, _)| *hash)
            .take(limit)
            .collect()
    }

    /// Adds the keys of one batch (records in offset order). Returns false, leaving the
    /// map as it was, when they do not all fit: the clean point must then stay before
    /// this batch. Control batches add nothing.
    pub fn add_batch(&mut self, batch_bytes: &[u8]) -> Result<bool, CleanError> {
        let header = parse_checked(batch_bytes)?;
        if header.is_control() {
            return Ok(self.end_txn(batch_bytes, &header));
        }
        let records = decode_raw_records(batch_bytes, &header)?;
        let txn = header.is_transactional().then_some(header.producer_id);
        let target = match txn {
            Some(producer_id) => self.open_txns.get(&producer_id).map(|t| &t.latest),
            None => Some(&self.latest),
        };
        let new_keys: BTreeSet<u128> = records
            .iter()
            .filter_map(|r| r.key.as_deref().map(key_hash))
            .filter(|h| !target.is_some_and(|t| t.contains_key(h)))
            .collect();
        if self.entries() + new_keys.len() > self.max_keys {
            return Ok(false);
        }
        let target = match txn {
            Some(producer_id) => {
                let open = self.open_txns.entry(producer_id).or_insert(OpenTxn {
                    first_offset: header.base_offset,
                    latest: BTreeMap::new(),
                });
                &mut open.latest
            }
            None => &mut self.latest,
        };
        for record in &records {
            if let Some(key) = &record.key {
                let seen = Latest {
                    offset: record.offset,
                    tombstone_timestamp_ms: record.is_tombstone.then_some(record.timestamp_ms),
                };
                note_latest(target, key_hash(key), seen);
            }
        }
        Ok(true)
    }

    /// A control batch: a transaction marker ends its producer's open transaction
    /// (other control batches change nothing). False, leaving the map as it was, when
    /// an abort's range does not fit.
    fn end_txn(&mut self, batch_bytes: &[u8], header: &BatchHeader) -> bool {
        let Some(marker) = super::txn_marker::parse_marker(batch_bytes, header) else {
            return true;
        };
        if !header.is_transactional() || !self.open_txns.contains_key(&header.producer_id) {
            return true;
        }
        if !marker.commit && self.entries() + 1 > self.max_keys {
            return false;
        }
        let open = self
            .open_txns
            .remove(&header.producer_id)
            .expect("checked above");
        // Planted bug: an ABORT counts as a COMMIT (aborted records shadow older ones).
        if marker.commit || crate::planted::on("compaction-keeps-aborted-records") {
            for (hash, seen) in open.latest {
                note_latest(&mut self.latest, hash, seen);
            }
        } else {
            let range = (header.producer_id, open.first_offset);
            self.aborted.insert(range, header.base_offset);
        }
        true
    }
}

/// Keeps in `latest` the later of what it holds for `hash` and `seen`.
fn note_latest(latest: &mut BTreeMap<u128, Latest>, hash: u128, seen: Latest) {
    let entry = latest.entry(hash).or_insert(seen);
    if entry.offset < seen.offset {
        *entry = seen;
    }
}

/// One record of a batch, as stored: its raw bytes (length prefix included) and the
/// fields cleaning looks at.
#[derive(Debug, Clone)]
struct RawRecord {
    raw: Bytes,
    offset: i64,
    timestamp_ms: i64,
    key: Option<Bytes>,
    is_tombstone: bool,
}

fn parse_checked(batch_bytes: &[u8]) -> Result<BatchHeader, CleanError> {
    let header = batch::parse_whole(batch_bytes).map_err(|e| CleanError {
        base_offset: -1,
        reason: e.to_string(),
    })?;
    if header.size_bytes() != batch_bytes.len() {
        return Err(clean_err(&header, "not exactly one batch"));
    }
    batch::verify_crc(batch_bytes, &header).map_err(|e| clean_err(&header, e.to_string()))?;
    Ok(header)
}

/// Reads a varint-length-prefixed byte field (-1: null).
fn read_field(buf: &mut &[u8]) -> Option<Option<Bytes>> {
    let len = read_varint(buf, 5)?;
    if len < 0 {
        return Some(None);
    }
    let len = usize::try_from(len).ok()?;
    if len > buf.len() {
        return None;
    }
    let (field, rest) = buf.split_at(len);
    *buf = rest;
    Some(Some(Bytes::copy_from_slice(field)))
}

/// The records of a batch as raw bytes, decompressed (bounded) when needed. Checks what
/// cleaning relies on: the record count, offsets within the batch's range and in order.
fn decode_raw_records(
    batch_bytes: &[u8],
    header: &BatchHeader,
) -> Result<Vec<RawRecord>, CleanError> {
    let count = header.records_count;
    if !(0..=batch::MAX_RECORDS_PER_BATCH).contains(&count) {
        return Err(clean_err(header, format!("record count {count}")));
    }
    let body = Bytes::copy_from_slice(&batch_bytes[BATCH_HEADER_SIZE..]);
    let records = if count == 0 {
        Bytes::new()
    } else {
        batch::decompress_records(body, header).map_err(|e| clean_err(header, e.to_string()))?
    };
    let mut rest: &[u8] = &records;
    // Every record takes at least 7 bytes: a count larger than that is refused below,
    // and never reserved for.
    let mut out = Vec::with_capacity((count as usize).min(records.len() / 7));
    let mut previous_offset: Option<i64> = None;
    for i in 0..count {
        let bad = |what: &str| clean_err(header, format!("record {i}: {what}"));
        let before = rest;
        let size = read_varint(&mut rest, 5).ok_or_else(|| bad("length"))?;
        let size = usize::try_from(size).map_err(|_| bad("negative length"))?;
        if size > rest.len() {
            return Err(bad("torn"));
        }
        let prefix_len = before.len() - rest.len();
        let raw = Bytes::copy_from_slice(&before[..prefix_len + size]);
        let mut record = &rest[..size];
        rest = &rest[size..];
        record = record.get(1..).ok_or_else(|| bad("no attributes"))?;
        let timestamp_delta = read_varint(&mut record, 10).ok_or_else(|| bad("timestamp"))?;
        let offset_delta = read_varint(&mut record, 5).ok_or_else(|| bad("offset delta"))?;
        let offset = header
            .base_offset
            .checked_add(offset_delta)
            .filter(|o| previous_offset.is_none_or(|p| *o > p) && *o <= header.last_offset())
            .ok_or_else(|| bad("offset out of order or outside the batch"))?;
        previous_offset = Some(offset);
        let key = read_field(&mut record).ok_or_else(|| bad("key"))?;
        let value = read_field(&mut record).ok_or_else(|| bad("value"))?;
        out.push(RawRecord {
            raw,
            offset,
            timestamp_ms: header.base_timestamp.saturating_add(timestamp_delta),
            key,
            is_tombstone: value.is_none(),
        });
    }
    if !rest.is_empty() {
        return Err(clean_err(header, "trailing bytes after the records"));
    }
    Ok(out)
}

/// Whether a record below the clean point survives: see the module doc.
fn survives(record: &RawRecord, keys: &KeyMap, deleted_keys: &BTreeSet<u128>) -> bool {
    let Some(key) = &record.key else {
        return true;
    };
    let hash = key_hash(key);
    if deleted_keys.contains(&hash) {
        return false;
    }
    !matches!(keys.latest.get(&hash), Some(latest) if latest.offset > record.offset)
}

/// Cleans one batch lying wholly below the clean point, against `keys` (the latest offset
/// of every key below the clean point) and `deleted_keys` (key hashes whose records all
/// go). Every record of a batch of an aborted transaction ([`KeyMap::is_aborted`]) goes.
/// `Ok(None)`: nothing to drop, the batch stays as it is (so does every control batch).
/// Otherwise the rewritten batch.
pub fn clean_batch(
    batch_bytes: &[u8],
    keys: &KeyMap,
    deleted_keys: &BTreeSet<u128>,
) -> Result<Option<Bytes>, CleanError> {
    let header = parse_checked(batch_bytes)?;
    if header.is_control() {
        return Ok(None);
    }
    let records = decode_raw_records(batch_bytes, &header)?;
    let aborted = keys.is_aborted(&header);
    let kept: Vec<&RawRecord> = records
        .iter()
        .filter(|r| !aborted && survives(r, keys, deleted_keys))
        .collect();
    if kept.len() == records.len() {
        return Ok(None);
    }
    let mut raw = BytesMut::new();
    for record in &kept {
        raw.put_slice(&record.raw);
    }
    let rebuilt = rebuild_batch(batch_bytes, &header, kept.len() as i32, &raw)?;
    Ok(Some(rebuilt))
}

/// Compresses `raw` records with the batch's codec (kafka-protocol's compressors).
fn compress(header: &BatchHeader, raw: &[u8]) -> Result<Bytes, CleanError> {
    let mut out = BytesMut::new();
    let write = |buf: &mut BytesMut| -> anyhow::Result<()> {
        buf.put_slice(raw);
        Ok(())
    };
    let result = match header.compression_codec() {
        0 => {
            out.put_slice(raw);
            Ok(())
        }
        1 => Gzip::compress(&mut out, write),
        2 => Snappy::compress(&mut out, write),
        3 => Lz4::compress(&mut out, write),
        4 => Zstd::compress(&mut out, write),
        other => return Err(clean_err(header, format!("unknown codec {other}"))),
    };
    result.map_err(|e| clean_err(header, e.to_string()))?;
    Ok(out.freeze())
}

/// The batch with its records replaced by `raw` (`count` records, uncompressed bytes).
fn rebuild_batch(
    original: &[u8],
    header: &BatchHeader,
    count: i32,
    raw: &[u8],
) -> Result<Bytes, CleanError> {
    assert!(count >= 0 && count < header.records_count);
    let mut attributes = header.attributes;
    let body = if count == 0 {
        // An empty batch is written uncompressed, as Kafka writes them.
        attributes &= !0x7;
        Bytes::new()
    } else {
        compress(header, raw)?
    };
    let batch_length = (BATCH_HEADER_SIZE - batch::LOG_OVERHEAD + body.len()) as i32;
    let mut out = BytesMut::with_capacity(BATCH_HEADER_SIZE + body.len());
    out.put_slice(&original[..BATCH_HEADER_SIZE]);
    out[8..12].copy_from_slice(&batch_length.to_be_bytes());
    out[21..23].copy_from_slice(&attributes.to_be_bytes());
    out[57..61].copy_from_slice(&count.to_be_bytes());
    out.put_slice(&body);
    let crc = crc32c::crc32c(&out[21..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    let rebuilt = out.freeze();
    let new_header = batch::parse_whole(&rebuilt).expect("a rebuilt batch parses");
    assert_eq!(new_header.base_offset, header.base_offset);
    assert_eq!(new_header.last_offset_delta, header.last_offset_delta);
    assert_eq!(
        new_header.partition_leader_epoch,
        header.partition_leader_epoch
    );
    assert_eq!(new_header.records_count, count);
    assert!(batch::verify_crc(&rebuilt, &new_header).is_ok());
    Ok(rebuilt)
}

/// The records (offset, key, value-is-null) of a batch, for tests and checks.
pub fn record_summaries(batch_bytes: &[u8]) -> Result<Vec<(i64, Option<Bytes>, bool)>, CleanError> {
    let header = parse_checked(batch_bytes)?;
    if header.is_control() {
        return Ok(Vec::new());
    }
    Ok(decode_raw_records(batch_bytes, &header)?
        .into_iter()
        .map(|r| (r.offset, r.key, r.is_tombstone))
        .collect())
}

#[cfg(test)]
mod tests;
