//! The log of one partition: an ordered series of segments, read by offset.
//!
//! Plain Rust over the [`Storage`] trait: no tasks, no clock (time comes in as `now_ms`),
//! no locks. The broker wraps it in a mutex; the simulator and fuzzers drive it directly.
//!
//! Invariants:
//! - segments are keyed by base offset and never overlap; only the last one is written;
//! - `log_end_offset` is the next offset to assign; every stored batch has offsets below it;
//! - `recovery_point <= log_end_offset`: everything below it has been fsynced;
//! - a read never returns a batch whose CRC32C does not verify.

use super::batch::{self, BatchHeader};
use super::config::LogConfig;
use super::segment::{
    self, ScanReport, Segment, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX, TXN_INDEX_SUFFIX,
};
use super::txn_index::AbortedTxn;
use super::txn_marker;
use crate::storage::{Storage, SyncHandle};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod clean;
mod producer_snapshots;
#[cfg(test)]
mod txn_tests;
pub use clean::{CleanFailure, CleanReport, CLEANED_SUFFIX};
pub use producer_snapshots::SNAPSHOT_SUFFIX;

use super::producer_state::ProducerStateMap;

/// Where the offsets of an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("offset {offset} is outside [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange {
        offset: i64,
        log_start_offset: i64,
        log_end_offset: i64,
    },
    #[error("corrupt batch at position {position} of segment {segment_base_offset}")]
    Corrupt {
        segment_base_offset: i64,
        position: u64,
    },
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// What recovery did when the log was opened.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    pub segments_scanned: usize,
    pub truncated_bytes: u64,
    pub segments_removed: usize,
    pub reasons: Vec<String>,
}

/// Durability work handed to a flusher: sync these, then call [`PartitionLog::flushed`].
pub struct FlushTicket {
    pub handles: Vec<Arc<dyn SyncHandle>>,
    pub up_to_offset: i64,
}

pub struct PartitionLog {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    config: LogConfig,
    segments: BTreeMap<i64, Segment>,
    log_end_offset: i64,
    recovery_point: i64,
    /// Set by [`PartitionLog::close`]: no more writes.
    closed: bool,
    /// Reads that found a corrupt batch (see [`PartitionLog::corrupt_reads`]).
    corrupt_reads: std::sync::atomic::AtomicU64,
    /// Every batch of the log applied, in order (`producer_state.end_offset() ==
    /// log_end_offset`).
    producer_state: ProducerStateMap,
}

impl PartitionLog {
    /// Opens (creating if needed) the log in `dir`. Segments at or after `recovery_point`
    /// are scanned batch by batch: a torn or corrupt tail is cut off, later segments are
    /// removed and indexes are rebuilt. Pass `i64::MAX` after a clean shutdown.
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: &Path,
        config: LogConfig,
        recovery_point: i64,
    ) -> io::Result<(PartitionLog, RecoveryReport)> {
        storage.create_dir_all(dir)?;
        let mut report = RecoveryReport::default();
        let names = storage.list_dir(dir)?;
        let mut bases = Vec::new();
        for name in &names {
            if let Some(stem) = name.strip_suffix(LOG_SUFFIX) {
                if let Ok(base) = stem.parse::<i64>() {
                    bases.push(base);
                }
            }
        }
        // A segment rewrite the cleaner did not finish (the old log is still in place), or
        // a snapshot write that did not finish (the previous snapshots are).
        for name in &names {
            if name.ends_with(clean::CLEANED_SUFFIX) || name.ends_with(".snapshot.tmp") {
                storage.remove_file(&dir.join(name))?;
            }
        }
        // Indexes without a log are leftovers from an interrupted delete.
        for name in &names {
            for suffix in [INDEX_SUFFIX, TIME_INDEX_SUFFIX, TXN_INDEX_SUFFIX] {
                if let Some(stem) = name.strip_suffix(suffix) {
                    if stem
                        .parse::<i64>()
                        .map(|b| !bases.contains(&b))
                        .unwrap_or(false)
                    {
                        storage.remove_file(&dir.join(name))?;
                    }
                }
            }
        }
        bases.sort_unstable();
        let mut segments = BTreeMap::new();
        let mut expected_next = None;
        let mut cut_rest = false;
        // The first segment whose `.txnindex` must be rebuilt from the log.
        let mut txn_rebuild_from: Option<i64> = None;
        for (i, &base) in bases.iter().enumerate() {
            let next_base = bases.get(i + 1).copied().unwrap_or(i64::MAX);
            let stale = expected_next.is_some_and(|n| base < n);
            if cut_rest || stale {
                Segment::open(
                    storage.as_ref(),
                    dir,
                    base,
                    config.index_interval_bytes,
                    false,
                )?
                .0
                .delete(storage.as_ref(), dir)?;
                report.segments_removed += 1;
                continue;
            }
            let trust = next_base <= recovery_point;
            let (segment, scan): (Segment, ScanReport) = Segment::open(
                storage.as_ref(),
                dir,
                base,
                config.index_interval_bytes,
                trust,
            )?;
            if !trust {
                report.segments_scanned += 1;
            }
            if !trust || !segment.txn_index_sound() {
                txn_rebuild_from.get_or_insert(base);
            }
            if scan.truncated_bytes > 0 {
                report.truncated_bytes += scan.truncated_bytes;
                report.reasons.push(format!(
                    "segment {base}: {}",
                    scan.reason.unwrap_or_default()
                ));
                cut_rest = true; // nothing after a bad batch can be trusted
            }
            if segment.next_offset() > next_base {
                cut_rest = true;
            }
            expected_next = Some(segment.next_offset());
            segments.insert(base, segment);
        }
        // Drop empty segments other than the last: a crash between roll and first append.
        let empty: Vec<i64> = segments
            .iter()
            .rev()
            .skip(1)
            .filter(|(_, s)| s.is_empty())
            .map(|(b, _)| *b)
            .collect();
        for base in empty {
            segments
                .remove(&base)
                .unwrap()
                .delete(storage.as_ref(), dir)?;
            report.segments_removed += 1;
        }
        if segments.is_empty() {
            let segment = Segment::create(storage.as_ref(), dir, 0, config.index_interval_bytes)?;
            segments.insert(0, segment);
            // A new file is durable only once its directory entry is: without this a
            // crash can take the whole log away, acknowledged batches included.
            storage.sync_dir(dir)?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                storage.sync_dir(parent)?;
            }
        }
        if report.segments_removed > 0 {
            storage.sync_dir(dir)?;
        }
        report.segments = segments.len();
        let log_end_offset = segments.values().next_back().unwrap().next_offset();
        let mut log = PartitionLog {
            storage,
            dir: dir.to_path_buf(),
            config,
            segments,
            log_end_offset,
            recovery_point: recovery_point.min(log_end_offset),
            closed: false,
            corrupt_reads: Default::default(),
            producer_state: ProducerStateMap::empty_at(0),
        };
        let txn_rebuild_from = txn_rebuild_from.filter(|b| log.segments.contains_key(b));
        log.rebuild_producer_state(txn_rebuild_from)?;
        log.check_invariants();
        Ok((log, report))
    }

    fn check_invariants(&self) {
        assert!(!self.segments.is_empty());
        assert_eq!(self.producer_state.end_offset(), self.log_end_offset);
        assert!(self.recovery_point <= self.log_end_offset);
        assert_eq!(self.active().next_offset(), self.log_end_offset);
        debug_assert!(self
            .segments
            .iter()
            .zip(self.segments.iter().skip(1))
            .all(|((_, a), (b, _))| a.next_offset() <= *b));
    }

    fn active(&self) -> &Segment {
        self.segments
            .values()
            .next_back()
            .expect("a log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .values_mut()
            .next_back()
            .expect("a log always has an active segment")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config;
    }

    pub fn log_start_offset(&self) -> i64 {
        *self.segments.keys().next().unwrap()
    }

    pub fn log_end_offset(&self) -> i64 {
        self.log_end_offset
    }

    pub fn recovery_point(&self) -> i64 {
        self.recovery_point
    }

    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(Segment::size_bytes).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Base offsets of the segments, oldest first.
    pub fn segment_base_offsets(&self) -> Vec<i64> {
        self.segments.keys().copied().collect()
    }

    /// Assigns offsets to `batches` (validated producer batches), patches each header in
    /// place with its base offset and `leader_epoch`, and appends them. All or nothing from
    /// the caller's view: on an I/O error the log is truncated back to where it was.
    pub fn append(
        &mut self,
        batches: &[(BatchHeader, Bytes)],
        leader_epoch: i32,
        now_ms: i64,
    ) -> io::Result<AppendInfo> {
        assert!(!batches.is_empty());
        if self.closed {
            return Err(io::Error::other("the log is closed for shutdown"));
        }
        let start = self.log_end_offset;
        let mut next = start;
        for (header, bytes) in batches {
            let mut patched = bytes.to_vec();
            batch::patch_header(&mut patched, next, leader_epoch);
            let mut patched_header = *header;
            patched_header.base_offset = next;
            patched_header.partition_leader_epoch = leader_epoch;
            self.maybe_roll(patched.len() as u64, now_ms)?;
            if let Err(e) = self.active_mut().append(&patched, &patched_header, now_ms) {
                let _ = self.truncate_to(start);
                return Err(e);
            }
            next = patched_header.next_offset();
            self.log_end_offset = next;
            let marker = (patched_header.is_control() && patched_header.producer_id >= 0)
                .then(|| txn_marker::parse_marker(&patched, &patched_header))
                .flatten();
            let completed = self.producer_state.apply_batch(&patched_header, marker);
            if let Some(txn) = completed.filter(|t| !t.commit) {
                let aborted =
                    self.aborted_entry(txn.producer_id, txn.first_offset, txn.last_offset);
                if let Err(e) = self.active_mut().append_aborted_txn(aborted) {
                    let _ = self.truncate_to(start);
                    return Err(e);
                }
            }
        }
        debug_assert!(
            self.segments.values().next_back().map(|s| s.next_offset())
                == Some(self.log_end_offset)
        );
        Ok(AppendInfo {
            base_offset: start,
            last_offset: next - 1,
        })
    }

    fn maybe_roll(&mut self, incoming_bytes: u64, now_ms: i64) -> io::Result<()> {
        let active = self.active();
        if active.is_empty() {
            return Ok(());
        }
        let full = active.size_bytes() + incoming_bytes > self.config.segment_bytes;
        let old = active
            .first_batch_ms()
            .map(|t| now_ms - t >= self.config.segment_ms)
            .unwrap_or(false);
        // BUGGIFY: a roll before one is due (rolls at any batch boundary are legal).
        if full || old || crate::buggify::fire(0.02) {
            self.roll()?;
        }
        Ok(())
    }

    /// Seals the active segment (if it holds anything) and starts a new one at the log end.
    pub fn roll(&mut self) -> io::Result<()> {
        if self.active().is_empty() {
            return Ok(());
        }
        let base = self.log_end_offset;
        let sealed = self.active_mut();
        sealed.sync_all()?;
        let segment = Segment::create(
            self.storage.as_ref(),
            &self.dir,
            base,
            self.config.index_interval_bytes,
        )?;
        // Planted bug: the new segment's directory entry is left to chance.
        if !crate::planted::on("skip-dir-fsync") {
            self.storage.sync_dir(&self.dir)?;
        }
        self.segments.insert(base, segment);
        // Everything in the sealed segment was just fsynced.
        self.recovery_point = self.recovery_point.max(base);
        // The producer state as of the new segment's base: rebuilding starts here.
        producer_snapshots::write(self.storage.as_ref(), &self.dir, &self.producer_state)?;
        self.check_invariants();
        Ok(())
    }

    /// Reads whole batches starting with the one that holds `offset`, up to `max_bytes`
    /// (at least one batch when `min_one`), never including offsets at or past `upper_offset`
    /// (the high watermark). Reading stays within one segment, as Kafka's does.
    pub fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        upper_offset: i64,
        min_one: bool,
    ) -> Result<Bytes, ReadError> {
        self.count_corrupt(self.read_unchecked(offset, max_bytes, upper_offset, min_one))
    }

    /// How many reads of this log found a corrupt batch since it was opened.
    pub fn corrupt_reads(&self) -> u64 {
        self.corrupt_reads
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn count_corrupt<T>(&self, result: Result<T, ReadError>) -> Result<T, ReadError> {
        if matches!(result, Err(ReadError::Corrupt { .. })) {
            self.corrupt_reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    fn read_unchecked(
        &self,
        offset: i64,
        max_bytes: usize,
        upper_offset: i64,
        min_one: bool,
    ) -> Result<Bytes, ReadError> {
        let upper_offset = upper_offset.min(self.log_end_offset);
        if offset < self.log_start_offset() || offset > self.log_end_offset {
            return Err(ReadError::OffsetOutOfRange {
                offset,
                log_start_offset: self.log_start_offset(),
                log_end_offset: self.log_end_offset,
            });
        }
        if offset >= upper_offset {
            return Ok(Bytes::new());
        }
        for (_, segment) in self
            .segments
            .range(..=offset)
            .next_back()
            .into_iter()
            .chain(self.segments.range(offset + 1..))
        {
            let Some((position, _)) = segment.find(offset)? else {
                if offset >= segment.base_offset && offset < segment.next_offset() {
                    // The offset is in this segment, but the walk to it met damage.
                    return Err(ReadError::Corrupt {
                        segment_base_offset: segment.base_offset,
                        position: 0,
                    });
                }
                continue;
            };
            let read = segment.read(position, max_bytes, upper_offset, min_one)?;
            if read.bytes.is_empty() {
                if let Some(position) = read.corrupt_at_position {
                    return Err(ReadError::Corrupt {
                        segment_base_offset: segment.base_offset,
                        position,
                    });
                }
            }
            return Ok(read.bytes);
        }
        Ok(Bytes::new())
    }

    /// The first offset whose record timestamp is >= `timestamp_ms`, with that timestamp.
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<(i64, i64)>, ReadError> {
        for segment in self.segments.values() {
            let Some((position, header)) = segment.find_by_timestamp(timestamp_ms)? else {
                continue;
            };
            let read = segment.read(position, header.size_bytes(), i64::MAX, true)?;
            if read.bytes.is_empty() {
                return Err(ReadError::Corrupt {
                    segment_base_offset: segment.base_offset,
                    position,
                });
            }
            let mut buf = read.bytes;
            // Bounded: a CRC-valid batch on disk may still claim absurd sizes.
            let set = batch::decode_bounded(&mut buf, &header).map_err(|_| ReadError::Corrupt {
                segment_base_offset: segment.base_offset,
                position,
            })?;
            let found = set
                .records
                .iter()
                .find(|r| r.timestamp >= timestamp_ms)
                .map(|r| (r.offset, r.timestamp));
            // The batch's max timestamp said some record qualifies; fall back to its first.
            return Ok(Some(
                found.unwrap_or((header.base_offset, header.max_timestamp)),
            ));
        }
        Ok(None)
    }

    /// Deletes whole old segments by `retention.ms` and `retention.bytes`; rolls an expired
    /// active segment first so that it can go too. Returns how many segments were deleted.
    pub fn apply_retention(&mut self, now_ms: i64) -> io::Result<usize> {
        let start = self.retention_start_offset(now_ms, i64::MAX)?;
        self.delete_segments_below(start)
    }

    /// Where the log would start after retention, deleting only segments that lie wholly
    /// below `upper_offset` (a replicated log passes its high watermark). Rolls an expired
    /// active segment that is wholly below it, so that it can go too; deletes nothing.
    pub fn retention_start_offset(&mut self, now_ms: i64, upper_offset: i64) -> io::Result<i64> {
        // A compact-only topic keeps its segments: the cleaner thins them instead.
        if self.closed || !self.config.cleanup_policy_delete {
            return Ok(self.log_start_offset());
        }
        let retention_ms = self.config.retention_ms;
        let expired = |s: &Segment| {
            // A segment holding only control batches has no record time (-1): it goes
            // by size only, never as if it were infinitely old.
            retention_ms >= 0
                && !s.is_empty()
                && s.max_timestamp_ms() >= 0
                && now_ms - s.max_timestamp_ms() > retention_ms
        };
        if expired(self.active()) && self.log_end_offset <= upper_offset {
            self.roll()?;
        }
        let segments: Vec<&Segment> = self.segments.values().collect();
        let mut remaining_bytes = self.size_bytes();
        let mut first_kept = 0;
        while first_kept + 1 < segments.len()
            && segments[first_kept + 1].base_offset <= upper_offset
        {
            let segment = segments[first_kept];
            let over_size = self.config.retention_bytes >= 0
                && remaining_bytes - segment.size_bytes() >= self.config.retention_bytes as u64;
            if !(expired(segment) || over_size) {
                break;
            }
            remaining_bytes -= segment.size_bytes();
            first_kept += 1;
        }
        Ok(segments[first_kept].base_offset)
    }

    /// Deletes every segment that ends at or before `offset` (a segment base offset).
    pub fn delete_segments_below(&mut self, offset: i64) -> io::Result<usize> {
        let mut deleted = 0;
        while self.segments.len() > 1
            && self
                .segments
                .keys()
                .nth(1)
                .map(|next| *next <= offset)
                .unwrap_or(false)
        {
            self.delete_oldest()?;
            deleted += 1;
        }
        Ok(deleted)
    }

    fn delete_oldest(&mut self) -> io::Result<()> {
        assert!(
            self.segments.len() > 1,
            "the active segment is never deleted"
        );
        let base = *self.segments.keys().next().unwrap();
        let segment = self.segments.remove(&base).unwrap();
        segment.delete(self.storage.as_ref(), &self.dir)?;
        self.storage.sync_dir(&self.dir)?;
        self.recovery_point = self.recovery_point.max(self.log_start_offset());
        // The snapshot at the new start stays: a follower that installs a Raft snapshot
        // of this log gets the producer state from it.
        producer_snapshots::remove_below(
            self.storage.as_ref(),
            &self.dir,
            self.log_start_offset(),
        )?;
        self.check_invariants();
        Ok(())
    }

    /// Replaces the whole log with an empty one starting at `offset` (a replica that
    /// installs a snapshot of a log whose start it is behind), whose producer state is
    /// `producer_state` (the leader's as of `offset`; empty when it has none). Durable on
    /// return.
    pub fn reset_to(
        &mut self,
        offset: i64,
        producer_state: Option<ProducerStateMap>,
    ) -> io::Result<()> {
        assert!(offset >= 0);
        let mut producer_state = producer_state
            .filter(|s| s.end_offset() <= offset)
            .unwrap_or_else(|| ProducerStateMap::empty_at(offset));
        producer_state.advance_to(offset);
        producer_snapshots::remove_above(self.storage.as_ref(), &self.dir, -1)?;
        producer_snapshots::write(self.storage.as_ref(), &self.dir, &producer_state)?;
        let fresh = Segment::create(
            self.storage.as_ref(),
            &self.dir,
            offset,
            self.config.index_interval_bytes,
        )?;
        let old = std::mem::replace(&mut self.segments, BTreeMap::from([(offset, fresh)]));
        for (base, segment) in old {
            if base != offset {
                segment.delete(self.storage.as_ref(), &self.dir)?;
            }
        }
        self.active_mut().sync_all()?;
        self.storage.sync_dir(&self.dir)?;
        self.log_end_offset = offset;
        self.recovery_point = offset;
        self.producer_state = producer_state;
        self.check_invariants();
        Ok(())
    }

    /// Removes every batch at or after `offset` (a replica's divergent tail).
    pub fn truncate_to(&mut self, offset: i64) -> io::Result<()> {
        assert!(offset >= 0);
        if offset >= self.log_end_offset {
            return Ok(());
        }
        // Everything that reads or may fail without harm comes before the cut: a
        // truncation that fails once durable leaves the caller's state records claiming
        // entries the log no longer holds.
        let producer_state = self.producer_state_at(offset)?;
        producer_snapshots::remove_above(self.storage.as_ref(), &self.dir, offset)?;
        while self.segments.len() > 1 && self.active().base_offset >= offset {
            let base = self.active().base_offset;
            self.segments
                .remove(&base)
                .unwrap()
                .delete(self.storage.as_ref(), &self.dir)?;
        }
        let active = self.active_mut();
        let cut = offset.max(active.base_offset);
        active.truncate_to(cut)?;
        // A truncation must not be undone by a crash: new data will take these offsets.
        active.sync_all()?;
        self.storage.sync_dir(&self.dir)?;
        self.log_end_offset = self.active().next_offset();
        // Sealed segments were synced when rolled, the active one just now.
        self.recovery_point = self.log_end_offset;
        #[cfg(feature = "planted-bugs")]
        let kept = self.producer_state.clone();
        if producer_state.end_offset() == self.log_end_offset {
            self.producer_state = producer_state;
        } else {
            // Cut inside a batch (never by a replica, whose cuts are entry boundaries).
            self.rebuild_producer_state(None)?;
        }
        // Planted bug: the producer state still holds the cut batches.
        #[cfg(feature = "planted-bugs")]
        if crate::planted::on("producer-state-kept-on-truncation") {
            self.producer_state = kept.rewound_to(self.log_end_offset);
        }
        self.check_invariants();
        Ok(())
    }

    /// The `.txnindex` entry of an ABORT marker just applied: its last stable offset is
    /// the oldest transaction still open, or the offset after the marker (Kafka's).
    fn aborted_entry(&self, producer_id: i64, first_offset: i64, last_offset: i64) -> AbortedTxn {
        AbortedTxn {
            producer_id,
            first_offset,
            last_offset,
            last_stable_offset: self
                .producer_state
                .first_open_txn_offset()
                .unwrap_or(last_offset + 1),
        }
    }

    /// The last stable offset given the high watermark: a `read_committed` consumer
    /// reads below it. The oldest transaction that is open (or whose marker is not
    /// committed), else the high watermark; never below the log start.
    pub fn last_stable_offset(&self, high_watermark: i64) -> i64 {
        // Planted bug: open transactions are ignored.
        if crate::planted::on("lso-from-high-watermark") {
            return high_watermark.max(self.log_start_offset());
        }
        let unstable = self.producer_state.first_unstable_offset(high_watermark);
        unstable
            .map_or(high_watermark, |u| u.min(high_watermark))
            .max(self.log_start_offset())
    }

    /// Forgets ended transactions whose markers are committed (below `high_watermark`).
    pub fn prune_replicated_txns(&mut self, high_watermark: i64) {
        self.producer_state.prune_replicated(high_watermark);
    }

    /// The aborted transactions that a read of `[start_offset, end_offset)` must list:
    /// every `.txnindex` entry overlapping it, from the segment holding `start_offset`
    /// on, until an entry whose last stable offset reaches `end_offset` (every
    /// transaction starting before it ended at or before that marker: Kafka's rule).
    pub fn aborted_txns(&self, start_offset: i64, end_offset: i64) -> Vec<AbortedTxn> {
        let mut out = Vec::new();
        if start_offset >= end_offset {
            return out;
        }
        let from = self
            .segments
            .range(..=start_offset)
            .next_back()
            .map_or(start_offset, |(base, _)| *base);
        for segment in self.segments.range(from..).map(|(_, s)| s) {
            for txn in segment.aborted_txns() {
                if txn.overlaps(start_offset, end_offset) {
                    out.push(*txn);
                }
                if txn.last_stable_offset >= end_offset {
                    return out;
                }
            }
        }
        out
    }

    /// What the log knows of its producers (every batch applied).
    pub fn producer_state(&self) -> &ProducerStateMap {
        &self.producer_state
    }

    /// Forgets producers silent for `expiration_ms` (`producer.id.expiration.ms`).
    pub fn expire_producers(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        self.producer_state.remove_expired(now_ms, expiration_ms)
    }

    /// The producer state snapshot at `offset` (a segment base), if one is on disk.
    pub fn producer_snapshot_at(&self, offset: i64) -> Option<ProducerStateMap> {
        producer_snapshots::read(self.storage.as_ref(), &self.dir, offset)
    }

    /// Rebuilds the producer state: the latest snapshot at or below the log end (the
    /// empty state at the log start without one), then every batch after it. Snapshots
    /// past the log end (a cut tail's) are removed. With `txn_rebuild_from` (a segment
    /// base), replays from a snapshot at or below it and rewrites the `.txnindex` of that
    /// segment and every later one.
    fn rebuild_producer_state(&mut self, txn_rebuild_from: Option<i64>) -> io::Result<()> {
        let storage = self.storage.clone();
        producer_snapshots::remove_above(storage.as_ref(), &self.dir, self.log_end_offset)?;
        let start = self.log_start_offset();
        let at_most = txn_rebuild_from.map_or(self.log_end_offset, |b| b.min(self.log_end_offset));
        let mut state = producer_snapshots::latest(storage.as_ref(), &self.dir, at_most)?
            .unwrap_or_else(|| ProducerStateMap::empty_at(start));
        state.advance_to(start);
        let bases: Vec<i64> = self.segments.keys().copied().collect();
        for base in bases {
            if self.segments[&base].next_offset() <= state.end_offset() {
                continue;
            }
            let aborted = self.replay_segment(base, &mut state, self.log_end_offset)?;
            if txn_rebuild_from.is_some_and(|from| base >= from) {
                let segment = self.segments.get_mut(&base).expect("listed above");
                segment.set_aborted_txns(aborted)?;
            }
        }
        // A log whose last batches were cut ends where its segments do.
        state.advance_to(self.log_end_offset);
        assert_eq!(
            state.end_offset(),
            self.log_end_offset,
            "producer state past the log end"
        );
        self.producer_state = state;
        Ok(())
    }

    /// The producer state as of `offset` (a batch boundary at or below the log end): the
    /// latest snapshot at or below it, then the batches from there up to it. Reads only.
    fn producer_state_at(&self, offset: i64) -> io::Result<ProducerStateMap> {
        let start = self.log_start_offset();
        let mut state = producer_snapshots::latest(self.storage.as_ref(), &self.dir, offset)?
            .unwrap_or_else(|| ProducerStateMap::empty_at(start));
        state.advance_to(start);
        let bases: Vec<i64> = self.segments.range(..offset).map(|(b, _)| *b).collect();
        for base in bases {
            if self.segments[&base].next_offset() > state.end_offset() {
                self.replay_segment(base, &mut state, offset)?;
            }
        }
        Ok(state)
    }

    /// Applies the batches of the segment at `base` that end at or below `upper` to
    /// `state` (those it already covers are skipped); returns the transactions they
    /// aborted, as `.txnindex` entries.
    fn replay_segment(
        &self,
        base: i64,
        state: &mut ProducerStateMap,
        upper: i64,
    ) -> io::Result<Vec<AbortedTxn>> {
        let segment = &self.segments[&base];
        let mut aborted = Vec::new();
        for (position, header) in segment.headers()? {
            // A damaged header (repaired later from a replica) may claim any offsets.
            if header.next_offset() > upper {
                break;
            }
            let marker = (header.is_control() && header.producer_id >= 0)
                .then(|| segment.read_batch_at(position, &header).ok())
                .flatten()
                .and_then(|bytes| txn_marker::parse_marker(&bytes, &header));
            if let Some(txn) = state.apply_batch(&header, marker).filter(|t| !t.commit) {
                aborted.push(AbortedTxn {
                    producer_id: txn.producer_id,
                    first_offset: txn.first_offset,
                    last_offset: txn.last_offset,
                    last_stable_offset: state
                        .first_open_txn_offset()
                        .unwrap_or(txn.last_offset + 1),
                });
            }
        }
        Ok(aborted)
    }

    /// Hands out what must be fsynced to make everything appended so far durable.
    pub fn begin_flush(&mut self) -> io::Result<FlushTicket> {
        // Sealed segments were synced when they were rolled: only the active one can be dirty.
        let handles = vec![self.active().log_sync_handle()?];
        Ok(FlushTicket {
            handles,
            up_to_offset: self.log_end_offset,
        })
    }

    /// Records that a flush ticket's syncs succeeded.
    pub fn flushed(&mut self, up_to_offset: i64) {
        let up_to_offset = up_to_offset.min(self.log_end_offset);
        self.recovery_point = self.recovery_point.max(up_to_offset);
    }

    /// Whether anything appended is not yet known durable.
    pub fn has_unflushed(&self) -> bool {
        self.recovery_point < self.log_end_offset
    }

    /// Makes everything durable and refuses further appends (clean shutdown).
    pub fn close(&mut self) -> io::Result<()> {
        self.closed = true;
        self.sync_all()
    }

    /// Makes every segment and index durable.
    pub fn sync_all(&mut self) -> io::Result<()> {
        for segment in self.segments.values_mut() {
            segment.sync_all()?;
        }
        self.recovery_point = self.log_end_offset;
        Ok(())
    }

    /// Deletes every file of this log and its directory.
    pub fn delete(self) -> io::Result<()> {
        let storage = self.storage.clone();
        let dir = self.dir.clone();
        drop(self);
        storage.remove_dir_all(&dir)
    }
}

/// Name of a partition's directory: `<topic>-<partition>`.
pub fn partition_dir_name(topic: &str, partition: i32) -> String {
    format!("{topic}-{partition}")
}

/// Re-exported for callers that name segment files (tests, tools).
pub use segment::file_stem;

impl PartitionLog {
    /// The offset and timestamp of the record with the largest timestamp (ListOffsets -3).
    pub fn max_timestamp_offset(&self) -> Result<Option<(i64, i64)>, ReadError> {
        let max = self
            .segments
            .values()
            .map(|s| s.max_timestamp_ms())
            .max()
            .unwrap_or(-1);
        if max < 0 {
            return Ok(None);
        }
        self.offset_for_timestamp(max)
    }
}

impl PartitionLog {
    /// Headers of every batch, oldest first (a replica rebuilds its Raft index from them).
    pub fn batch_headers(&self) -> io::Result<Vec<BatchHeader>> {
        let mut out = Vec::new();
        for segment in self.segments.values() {
            out.extend(segment.headers()?.into_iter().map(|(_, h)| h));
        }
        Ok(out)
    }

    /// The one batch whose base offset is `base_offset`, CRC-checked. `Corrupt` when the
    /// offset lies in a segment but no sound batch starts there (position 0 when the walk
    /// from the index found no batch at all).
    pub fn read_batch(&self, base_offset: i64) -> Result<Bytes, ReadError> {
        self.count_corrupt(self.read_batch_unchecked(base_offset))
    }

    fn read_batch_unchecked(&self, base_offset: i64) -> Result<Bytes, ReadError> {
        let not_found = || ReadError::OffsetOutOfRange {
            offset: base_offset,
            log_start_offset: self.log_start_offset(),
            log_end_offset: self.log_end_offset,
        };
        let (_, segment) = self
            .segments
            .range(..=base_offset)
            .next_back()
            .ok_or_else(not_found)?;
        if base_offset >= self.log_end_offset || base_offset < segment.base_offset {
            return Err(not_found());
        }
        // The offset lies in this segment: a walk that cannot find the batch starting there
        // went through damaged bytes (a torn or misdirected write, a bit flip in a length).
        let damaged = |position| ReadError::Corrupt {
            segment_base_offset: segment.base_offset,
            position,
        };
        let (position, header) = segment.find(base_offset)?.ok_or_else(|| damaged(0))?;
        if header.base_offset != base_offset {
            return Err(damaged(position));
        }
        let read = segment.read(position, header.size_bytes(), i64::MAX, true)?;
        if read.bytes.len() != header.size_bytes() {
            return Err(ReadError::Corrupt {
                segment_base_offset: segment.base_offset,
                position,
            });
        }
        Ok(read.bytes)
    }
}
