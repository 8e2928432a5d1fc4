//! One log segment: a `.log` file of RecordBatches with its `.index`, `.timeindex` and
//! `.txnindex` (aborted transactions, `txn_index.rs`).
//!
//! A segment is named by its base offset (20 digits, as Kafka does). It knows where its
//! batches start, the next offset after its last batch and the largest timestamp in it;
//! it can scan itself to rebuild its indexes or to cut off a torn or corrupt tail.

use super::batch::{self, BatchError, BatchHeader, BATCH_HEADER_SIZE};
use super::index::{OffsetEntry, OffsetIndex, TimeEntry, TimeIndex};
use super::txn_index::{self, AbortedTxn};
use crate::storage::{read_exact_at, read_to_vec, Storage, StorageFile, SyncHandle};
use bytes::{Bytes, BytesMut};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const LOG_SUFFIX: &str = ".log";
pub const INDEX_SUFFIX: &str = ".index";
pub const TIME_INDEX_SUFFIX: &str = ".timeindex";
pub const TXN_INDEX_SUFFIX: &str = ".txnindex";

/// File name stem of a segment: the base offset, zero-padded to 20 digits.
pub fn file_stem(base_offset: i64) -> String {
    format!("{base_offset:020}")
}

/// What a scan of a segment found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScanReport {
    pub valid_batches: u64,
    /// Bytes cut from the end because they were not a whole, CRC-valid batch.
    pub truncated_bytes: u64,
    pub reason: Option<String>,
}

/// Batches read from a segment: whole batches only, every CRC checked.
#[derive(Debug, Clone)]
pub struct SegmentRead {
    pub bytes: Bytes,
    /// Set when reading stopped at a batch whose CRC or framing failed.
    pub corrupt_at_position: Option<u64>,
}

pub struct Segment {
    pub base_offset: i64,
    log: Box<dyn StorageFile>,
    index_file: Box<dyn StorageFile>,
    time_index_file: Box<dyn StorageFile>,
    txn_index_file: Box<dyn StorageFile>,
    /// The `.txnindex` entries: one per ABORT marker in this segment, in offset order
    /// (as many as the segment's control batches at most).
    aborted_txns: Vec<AbortedTxn>,
    /// Whether `.txnindex` read back whole and within the segment when it was opened.
    txn_index_sound: bool,
    index: OffsetIndex,
    time_index: TimeIndex,
    next_offset: i64,
    /// Largest batch max timestamp in the segment, -1 when empty.
    max_timestamp_ms: i64,
    /// When the first batch was appended (or its timestamp, after a restart): drives segment.ms.
    first_batch_ms: Option<i64>,
    bytes_since_index_entry: u64,
    index_interval_bytes: u64,
}

fn txn_index_path(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(format!("{}{TXN_INDEX_SUFFIX}", file_stem(base_offset)))
}

fn paths(dir: &Path, base_offset: i64) -> (PathBuf, PathBuf, PathBuf) {
    let stem = file_stem(base_offset);
    (
        dir.join(format!("{stem}{LOG_SUFFIX}")),
        dir.join(format!("{stem}{INDEX_SUFFIX}")),
        dir.join(format!("{stem}{TIME_INDEX_SUFFIX}")),
    )
}

impl Segment {
    /// A segment over these files, knowing nothing of their contents yet.
    fn empty(
        base_offset: i64,
        log: Box<dyn StorageFile>,
        index_file: Box<dyn StorageFile>,
        time_index_file: Box<dyn StorageFile>,
        txn_index_file: Box<dyn StorageFile>,
        index_interval_bytes: u64,
    ) -> Segment {
        Segment {
            base_offset,
            log,
            index_file,
            time_index_file,
            txn_index_file,
            aborted_txns: Vec::new(),
            txn_index_sound: true,
            index: OffsetIndex::default(),
            time_index: TimeIndex::default(),
            next_offset: base_offset,
            max_timestamp_ms: -1,
            first_batch_ms: None,
            bytes_since_index_entry: 0,
            index_interval_bytes,
        }
    }

    /// Creates a new, empty segment.
    pub fn create(
        storage: &dyn Storage,
        dir: &Path,
        base_offset: i64,
        index_interval_bytes: u64,
    ) -> io::Result<Segment> {
        assert!(base_offset >= 0);
        let (log_path, index_path, time_path) = paths(dir, base_offset);
        let mut log = storage.open(&log_path, true)?;
        let mut index_file = storage.open(&index_path, true)?;
        let mut time_index_file = storage.open(&time_path, true)?;
        let mut txn_index_file = storage.open(&txn_index_path(dir, base_offset), true)?;
        // A leftover file from a crash before the segment was ever used.
        log.truncate(0)?;
        index_file.truncate(0)?;
        time_index_file.truncate(0)?;
        txn_index_file.truncate(0)?;
        Ok(Segment::empty(
            base_offset,
            log,
            index_file,
            time_index_file,
            txn_index_file,
            index_interval_bytes,
        ))
    }

    /// Opens an existing segment. With `trust_indexes`, indexes that validate are kept and
    /// only the tail after the last index entry is scanned; otherwise (or when an index is
    /// missing or invalid) the whole segment is scanned, a bad tail is cut off and both
    /// indexes are rebuilt.
    pub fn open(
        storage: &dyn Storage,
        dir: &Path,
        base_offset: i64,
        index_interval_bytes: u64,
        trust_indexes: bool,
    ) -> io::Result<(Segment, ScanReport)> {
        let (log_path, index_path, time_path) = paths(dir, base_offset);
        let log = storage.open(&log_path, false)?;
        let index_bytes = if storage.exists(&index_path) {
            read_to_vec(storage, &index_path).ok()
        } else {
            None
        };
        let time_bytes = if storage.exists(&time_path) {
            read_to_vec(storage, &time_path).ok()
        } else {
            None
        };
        let txn_path = txn_index_path(dir, base_offset);
        let txn_bytes = if storage.exists(&txn_path) {
            read_to_vec(storage, &txn_path).ok()
        } else {
            None
        };
        let index_file = storage.open(&index_path, true)?;
        let time_index_file = storage.open(&time_path, true)?;
        let txn_index_file = storage.open(&txn_path, true)?;
        let mut segment = Segment::empty(
            base_offset,
            log,
            index_file,
            time_index_file,
            txn_index_file,
            index_interval_bytes,
        );
        let loaded = match (trust_indexes, index_bytes, time_bytes) {
            (true, Some(i), Some(t)) => match (OffsetIndex::decode(&i), TimeIndex::decode(&t)) {
                (Some(i), Some(t)) if i.validate(segment.log.len()) => Some((i, t)),
                _ => None,
            },
            _ => None,
        };
        let report = match loaded {
            Some((index, time_index)) => {
                segment.index = index;
                segment.time_index = time_index;
                // The time index's last entry is the max timestamp of every batch before the
                // last offset-index entry; the scan of the tail below adds the rest.
                segment.max_timestamp_ms = segment
                    .time_index
                    .entries
                    .last()
                    .map(|e| e.timestamp_ms)
                    .unwrap_or(-1);
                let (start, start_offset) = segment
                    .index
                    .entries
                    .last()
                    .map(|e| (e.position as u64, base_offset + e.relative_offset as i64))
                    .unwrap_or((0, base_offset));
                // The scan goes on from the last indexed batch, which starts at its offset.
                segment.next_offset = start_offset;
                let report = segment.scan_from(start, false)?;
                let relative_next = (segment.next_offset - base_offset) as u64;
                if report.truncated_bytes > 0 || !segment.time_index.validate(relative_next) {
                    segment.rebuild()?
                } else {
                    report
                }
            }
            None => segment.rebuild()?,
        };
        segment.first_batch_ms = segment.first_batch_timestamp()?;
        let txns =
            txn_bytes.and_then(|b| txn_index::decode_all(&b, base_offset, segment.next_offset));
        segment.txn_index_sound = txns.is_some();
        segment.aborted_txns = txns.unwrap_or_default();
        Ok((segment, report))
    }

    fn first_batch_timestamp(&self) -> io::Result<Option<i64>> {
        if self.log.len() < BATCH_HEADER_SIZE as u64 {
            return Ok(None);
        }
        Ok(self.read_header(0)?.map(|h| h.max_timestamp))
    }

    /// Scans the whole log, cutting off a bad tail, and rewrites both indexes.
    fn rebuild(&mut self) -> io::Result<ScanReport> {
        self.index = OffsetIndex::default();
        self.time_index = TimeIndex::default();
        self.index_file.truncate(0)?;
        self.time_index_file.truncate(0)?;
        self.next_offset = self.base_offset;
        self.max_timestamp_ms = -1;
        self.bytes_since_index_entry = 0;
        self.scan_from(0, true)
    }

    /// Walks the batches from `start` (a batch boundary), verifying each CRC, updating
    /// `next_offset` and `max_timestamp_ms`; adds index entries when `index` is set.
    /// Truncates the log at the first batch that is torn or corrupt.
    fn scan_from(&mut self, start: u64, index: bool) -> io::Result<ScanReport> {
        let mut report = ScanReport::default();
        let mut position = start;
        let len = self.log.len();
        let mut buf = Vec::new();
        while position < len {
            let header = match self.read_header(position)? {
                Some(h) => h,
                None => {
                    report.reason = Some(format!("torn header at position {position}"));
                    break;
                }
            };
            let size = header.size_bytes() as u64;
            if position + size > len {
                report.reason = Some(format!("torn batch at position {position}"));
                break;
            }
            // The batch's offsets must follow the previous batch's exactly (the base offset
            // is outside the CRC: a flipped bit there would shift every later offset), be
            // representable, and stay within a u32 of the segment's base (index entries
            // hold relative offsets).
            let fits_segment = header
                .base_offset
                .checked_add(header.last_offset_delta as i64)
                .is_some_and(|last| {
                    last < i64::MAX
                        && last
                            .checked_sub(self.base_offset)
                            .is_some_and(|relative| relative <= u32::MAX as i64)
                });
            if header.base_offset != self.next_offset
                || header.last_offset_delta < 0
                || !fits_segment
            {
                report.reason = Some(format!(
                    "offset {} out of order at position {position}",
                    header.base_offset
                ));
                break;
            }
            buf.resize(size as usize, 0);
            read_exact_at(self.log.as_ref(), position, &mut buf)?;
            if let Err(e) = batch::verify_crc(&buf, &header) {
                // Planted bug: a torn last batch is kept as if it were whole.
                let tail = position + size == len;
                if !(tail && crate::planted::on("trust-torn-tail")) {
                    report.reason = Some(format!("{e} at position {position}"));
                    break;
                }
            }
            if index {
                self.index_batch(&header, position)?;
            }
            self.next_offset = header.next_offset();
            self.max_timestamp_ms = self.max_timestamp_ms.max(header.record_max_timestamp());
            report.valid_batches += 1;
            position += size;
        }
        if position < len {
            report.truncated_bytes = len - position;
            self.log.truncate(position)?;
        }
        Ok(report)
    }

    /// Reads and parses the batch header at `position`; `None` when it is torn or invalid.
    fn read_header(&self, position: u64) -> io::Result<Option<BatchHeader>> {
        let mut header_buf = [0u8; BATCH_HEADER_SIZE];
        if position + BATCH_HEADER_SIZE as u64 > self.log.len() {
            return Ok(None);
        }
        read_exact_at(self.log.as_ref(), position, &mut header_buf)?;
        Ok(BatchHeader::parse(&header_buf).ok())
    }

    fn index_batch(&mut self, header: &BatchHeader, position: u64) -> io::Result<()> {
        if self.bytes_since_index_entry >= self.index_interval_bytes {
            let relative = (header.base_offset - self.base_offset) as u32;
            let entry = OffsetEntry {
                relative_offset: relative,
                position: position as u32,
            };
            self.index.append(self.index_file.as_mut(), entry)?;
            if self.max_timestamp_ms >= 0 {
                // Every batch before this one is no newer than the max seen so far.
                let time = TimeEntry {
                    timestamp_ms: self.max_timestamp_ms,
                    relative_offset: relative,
                };
                self.time_index
                    .append(self.time_index_file.as_mut(), time)?;
            }
            self.bytes_since_index_entry = 0;
        }
        self.bytes_since_index_entry += header.size_bytes() as u64;
        Ok(())
    }

    /// Appends one batch whose header already carries its final base offset.
    pub fn append(&mut self, batch: &[u8], header: &BatchHeader, now_ms: i64) -> io::Result<()> {
        assert_eq!(batch.len(), header.size_bytes());
        assert!(
            header.base_offset >= self.next_offset,
            "offsets must increase"
        );
        let position = self.log.len();
        assert!(
            position + batch.len() as u64 <= u32::MAX as u64,
            "segment larger than 4 GiB"
        );
        self.index_batch(header, position)?;
        self.log.append(batch)?;
        self.next_offset = header.next_offset();
        self.max_timestamp_ms = self.max_timestamp_ms.max(header.record_max_timestamp());
        self.first_batch_ms.get_or_insert(now_ms);
        Ok(())
    }

    pub fn size_bytes(&self) -> u64 {
        self.log.len()
    }

    pub fn is_empty(&self) -> bool {
        self.log.len() == 0
    }

    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    pub fn max_timestamp_ms(&self) -> i64 {
        self.max_timestamp_ms
    }

    pub fn first_batch_ms(&self) -> Option<i64> {
        self.first_batch_ms
    }

    /// Position and header of the first batch whose last offset is >= `offset`.
    pub fn find(&self, offset: i64) -> io::Result<Option<(u64, BatchHeader)>> {
        if offset >= self.next_offset {
            return Ok(None);
        }
        let relative =
            (offset.max(self.base_offset) - self.base_offset).min(u32::MAX as i64) as u32;
        let entry = self.index.lookup_entry(relative);
        let mut position = entry.position as u64;
        // Batches of a segment are contiguous from its base offset, and the base offset is
        // outside the CRC: a batch that does not start where the one before it ended is
        // damaged (a bit flip in its header), and the walk stops short of it.
        let mut expected = self.base_offset + entry.relative_offset as i64;
        while let Some(header) = self.read_header(position)? {
            if header.base_offset != expected {
                return Ok(None);
            }
            if header.last_offset() >= offset {
                return Ok(Some((position, header)));
            }
            expected = header.next_offset();
            position += header.size_bytes() as u64;
        }
        Ok(None)
    }

    /// Reads whole batches from `position` while they fit in `max_bytes` (the first one is
    /// returned even if larger, when `min_one`), stopping before any batch that reaches
    /// `upper_offset`. Every batch's CRC is verified; reading stops at a bad one.
    pub fn read(
        &self,
        position: u64,
        max_bytes: usize,
        upper_offset: i64,
        min_one: bool,
    ) -> io::Result<SegmentRead> {
        let mut end = position;
        let mut headers = Vec::new();
        let mut discontinuity_at = None;
        while let Some(header) = self.read_header(end)? {
            let size = header.size_bytes();
            if header.next_offset() > upper_offset || end + size as u64 > self.log.len() {
                // No batch straddles the upper offset (a high watermark or a last stable
                // offset: both batch boundaries), nor the file's end: a first batch that
                // seems to is damaged (a bit flip in its lastOffsetDelta or length), and
                // is reported, not silently left out (the simulator's seed 318).
                if headers.is_empty()
                    && header.base_offset < upper_offset
                    && !self.batch_sound(end, &header)?
                {
                    discontinuity_at = Some(end);
                }
                break;
            }
            // baseOffset is outside the CRC: a batch that does not follow the one before
            // it is damaged; it is reported as corrupt (if nothing before it is).
            if let Some((_, previous)) = headers.last() {
                let previous: &BatchHeader = previous;
                if header.base_offset != previous.next_offset() {
                    discontinuity_at = Some(end);
                    break;
                }
            }
            let taken = (end - position) as usize;
            if taken + size > max_bytes && !(min_one && headers.is_empty()) {
                break;
            }
            headers.push((end, header));
            end += size as u64;
        }
        let mut buf = BytesMut::zeroed((end - position) as usize);
        read_exact_at(self.log.as_ref(), position, &mut buf)?;
        let mut corrupt_at_position = None;
        let mut good_len = 0usize;
        for (batch_position, header) in headers {
            let start = (batch_position - position) as usize;
            let bytes = &buf[start..start + header.size_bytes()];
            // Re-parse from the bytes actually read: the header read earlier may differ.
            let ok = batch::parse_whole(bytes)
                .ok()
                .filter(|h| *h == header)
                .map(|h| batch::verify_crc(bytes, &h));
            // Planted bug: serve the batch without checking it.
            if !matches!(ok, Some(Ok(()))) && !crate::planted::on("skip-read-crc") {
                corrupt_at_position = Some(batch_position);
                break;
            }
            good_len = start + header.size_bytes();
        }
        buf.truncate(good_len);
        Ok(SegmentRead {
            bytes: buf.freeze(),
            corrupt_at_position: corrupt_at_position.or(discontinuity_at),
        })
    }

    /// Whether the batch at `position` (its header read there) is whole and passes its
    /// CRC check.
    fn batch_sound(&self, position: u64, header: &BatchHeader) -> io::Result<bool> {
        if position + header.size_bytes() as u64 > self.log.len() {
            return Ok(false);
        }
        let mut bytes = vec![0u8; header.size_bytes()];
        read_exact_at(self.log.as_ref(), position, &mut bytes)?;
        let sound = batch::parse_whole(&bytes)
            .ok()
            .filter(|h| h == header)
            .is_some_and(|h| batch::verify_crc(&bytes, &h).is_ok());
        // Planted bug: no batch is checked.
        Ok(sound || crate::planted::on("skip-read-crc"))
    }

    /// Scans batches from the time-index hint for the first whose max timestamp is >=
    /// `timestamp_ms`; returns its position and header.
    pub fn find_by_timestamp(&self, timestamp_ms: i64) -> io::Result<Option<(u64, BatchHeader)>> {
        if self.max_timestamp_ms < timestamp_ms {
            return Ok(None);
        }
        let start_relative = self.time_index.lookup(timestamp_ms);
        let start = self.find(self.base_offset + start_relative as i64)?;
        let Some((mut position, _)) = start else {
            return Ok(None);
        };
        while let Some(header) = self.read_header(position)? {
            if header.record_max_timestamp() >= timestamp_ms {
                return Ok(Some((position, header)));
            }
            position += header.size_bytes() as u64;
        }
        Ok(None)
    }

    /// Removes every batch at or after `offset` and rebuilds the indexes of what is left.
    /// Truncation is rare (a replica diverged), so a full rescan keeps it simple and safe.
    pub fn truncate_to(&mut self, offset: i64) -> io::Result<()> {
        let cut = match self.find(offset)? {
            Some((position, header)) if header.base_offset >= offset => position,
            Some((position, header)) => position + header.size_bytes() as u64,
            None if offset < self.next_offset => {
                // The walk met damage before `offset`: a rescan cuts the log there (and
                // then, if it still reaches past `offset`, the cut is made as asked).
                self.rebuild()?;
                if self.next_offset > offset {
                    return self.truncate_to(offset);
                }
                // The entries of ABORT markers the damage cut go too (kept, a later
                // marker's entry would come after one past the end: found by the
                // simulator's transactional workload, seed 14).
                return self.drop_aborted_txns_past_end();
            }
            None => return Ok(()),
        };
        self.log.truncate(cut)?;
        self.rebuild()?;
        if self.is_empty() {
            self.first_batch_ms = None;
        }
        self.drop_aborted_txns_past_end()
    }

    /// Forgets the `.txnindex` entries of markers at or past the segment's end.
    fn drop_aborted_txns_past_end(&mut self) -> io::Result<()> {
        let next_offset = self.next_offset;
        let mut kept = std::mem::take(&mut self.aborted_txns);
        kept.retain(|t| t.last_offset < next_offset);
        self.set_aborted_txns(kept)
    }

    /// The aborted transactions whose ABORT markers are in this segment, in offset order.
    pub fn aborted_txns(&self) -> &[AbortedTxn] {
        &self.aborted_txns
    }

    /// Whether the `.txnindex` read back sound when the segment was opened (if not, the
    /// log rebuilds it with [`Segment::set_aborted_txns`]).
    pub fn txn_index_sound(&self) -> bool {
        self.txn_index_sound
    }

    /// Appends the entry of an ABORT marker just appended to this segment.
    pub fn append_aborted_txn(&mut self, txn: AbortedTxn) -> io::Result<()> {
        assert!(txn.last_offset >= self.base_offset && txn.last_offset < self.next_offset);
        assert!(self
            .aborted_txns
            .last()
            .is_none_or(|p| p.last_offset < txn.last_offset));
        self.txn_index_file.append(&txn.encode())?;
        self.aborted_txns.push(txn);
        Ok(())
    }

    /// Replaces the `.txnindex` with `txns` (rebuilt from the log).
    pub fn set_aborted_txns(&mut self, txns: Vec<AbortedTxn>) -> io::Result<()> {
        assert!(txns
            .iter()
            .all(|t| t.last_offset >= self.base_offset && t.last_offset < self.next_offset));
        self.txn_index_file.truncate(0)?;
        self.txn_index_file.append(&txn_index::encode_all(&txns))?;
        self.aborted_txns = txns;
        self.txn_index_sound = true;
        Ok(())
    }

    /// The whole batch at `position` (its header read there), CRC-checked.
    pub fn read_batch_at(&self, position: u64, header: &BatchHeader) -> io::Result<Bytes> {
        let read = self.read(position, header.size_bytes(), i64::MAX, true)?;
        if read.bytes.len() != header.size_bytes() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("corrupt batch at position {position}"),
            ));
        }
        Ok(read.bytes)
    }

    /// Every batch header in the segment, in order, with its position.
    pub fn headers(&self) -> io::Result<Vec<(u64, BatchHeader)>> {
        let mut out = Vec::new();
        let mut position = 0;
        while let Some(header) = self.read_header(position)? {
            out.push((position, header));
            position += header.size_bytes() as u64;
        }
        Ok(out)
    }

    /// Handles that make this segment's log durable.
    pub fn log_sync_handle(&self) -> io::Result<Arc<dyn SyncHandle>> {
        self.log.sync_handle()
    }

    /// Makes the log and every index durable.
    pub fn sync_all(&mut self) -> io::Result<()> {
        self.log.sync()?;
        self.index_file.sync()?;
        self.time_index_file.sync()?;
        self.txn_index_file.sync()
    }

    /// Deletes the segment's files (log first, so a crash leaves at most orphan indexes).
    pub fn delete(self, storage: &dyn Storage, dir: &Path) -> io::Result<()> {
        let (log_path, index_path, time_path) = paths(dir, self.base_offset);
        let txn_path = txn_index_path(dir, self.base_offset);
        drop(self);
        storage.remove_file(&log_path)?;
        for path in [index_path, time_path, txn_path] {
            if storage.exists(&path) {
                storage.remove_file(&path)?;
            }
        }
        Ok(())
    }
}

impl From<BatchError> for io::Error {
    fn from(e: BatchError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e.to_string())
    }
}
