//! Applying a clean to a partition log: build the key map over the batches below the
//! clean point, then rewrite each sealed segment that has records to drop.
//!
//! Crash safety of one segment's rewrite: the cleaned batches go to `<base>.log.cleaned`,
//! which is fsynced; the segment's `.index` and `.timeindex` are removed and the directory
//! fsynced (a crash now leaves the old log without indexes: opening rebuilds them); the
//! cleaned file is renamed over `<base>.log` (atomic) and the directory fsynced; the
//! segment is reopened, which rebuilds both indexes from the new log, and fsynced. A
//! crash at any point leaves either the old or the new log, each with indexes that match
//! it or none; `PartitionLog::open` removes a leftover `.cleaned` file.

use super::PartitionLog;
use crate::log::batch::{self, BatchHeader};
use crate::log::cleaner::{self, KeyMap};
use crate::log::segment::{file_stem, Segment, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX};
use crate::log::ReadError;
use bytes::Bytes;
use std::collections::BTreeSet;
use std::io;
use std::path::PathBuf;

/// Suffix of a segment's log being rewritten by the cleaner.
pub const CLEANED_SUFFIX: &str = ".cleaned";

/// What one clean did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CleanReport {
    /// The offset cleaning reached: the clean point, or earlier when the key map filled.
    pub cleaned_end_offset: i64,
    pub segments_rewritten: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// Why a clean did not run.
#[derive(Debug, thiserror::Error)]
pub enum CleanFailure {
    /// A batch below the clean point failed its CRC (it is to be repaired, not cleaned).
    #[error("corrupt batch at offset {offset}")]
    Corrupt { offset: i64 },
    /// A batch could not be parsed for cleaning; nothing was changed.
    #[error("{0}")]
    Refused(String),
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

impl PartitionLog {
    /// Each whole batch lying in `[from_offset, to_offset)`, in order, CRC-checked, with
    /// its header; `visit` returns false to stop.
    pub fn visit_batches(
        &self,
        from_offset: i64,
        to_offset: i64,
        mut visit: impl FnMut(&BatchHeader, &Bytes) -> Result<bool, CleanFailure>,
    ) -> Result<(), CleanFailure> {
        for segment in self.segments.values() {
            if segment.next_offset() <= from_offset {
                continue;
            }
            if segment.base_offset >= to_offset {
                break;
            }
            let mut walked_to = segment.base_offset;
            for (position, header) in segment.headers()? {
                // Headers are read without their CRC: a batch must start where the one
                // before it ended, and is CRC-checked before anything is decided from
                // its offsets (a damaged lastOffsetDelta once ended a clean early, on
                // one replica only: found by the simulator).
                if header.base_offset != walked_to {
                    return Err(CleanFailure::Corrupt { offset: walked_to });
                }
                walked_to = header.next_offset();
                if header.base_offset < from_offset {
                    continue;
                }
                if header.base_offset >= to_offset {
                    return Ok(());
                }
                let bytes = read_whole(segment, position, &header)?;
                if header.next_offset() > to_offset {
                    return Ok(());
                }
                if !visit(&header, &bytes)? {
                    return Ok(());
                }
            }
            // A header the walk could not parse ends it early: damage, not the end.
            if walked_to != segment.next_offset() {
                return Err(CleanFailure::Corrupt { offset: walked_to });
            }
        }
        Ok(())
    }

    /// Cleans the records in `[clean_start_offset, clean_end_offset)` (see
    /// `log::cleaner`): keeps the latest record of each key, drops every record of the
    /// keys in `deleted_keys` (key hashes), never moves an offset or removes a batch.
    /// `clean_end_offset` must be a batch boundary at or below the committed end; an
    /// active segment that starts below it is rolled first (rolls are legal at any batch
    /// boundary, and only sealed segments are rewritten). The key map holds at most
    /// `max_keys` keys: when they do not all fit, cleaning stops at the batch that
    /// overflowed it.
    pub fn clean(
        &mut self,
        clean_start_offset: i64,
        clean_end_offset: i64,
        deleted_keys: &BTreeSet<u128>,
        max_keys: usize,
    ) -> Result<CleanReport, CleanFailure> {
        let start = clean_start_offset.max(self.log_start_offset());
        let mut report = CleanReport {
            cleaned_end_offset: start,
            ..Default::default()
        };
        if clean_end_offset <= start || self.closed {
            return Ok(report);
        }
        if clean_end_offset > self.log_end_offset {
            return Err(CleanFailure::Refused(format!(
                "clean point {clean_end_offset} is past the log end {}",
                self.log_end_offset
            )));
        }
        let mut keys = KeyMap::new(max_keys);
        let mut end = start;
        self.visit_batches(start, clean_end_offset, |header, bytes| {
            let fits = keys
                .add_batch(bytes)
                .map_err(|e| CleanFailure::Refused(e.to_string()))?;
            if fits {
                end = header.next_offset();
            }
            Ok(fits)
        })?;
        report.cleaned_end_offset = end;
        if self.active().base_offset < end {
            self.roll()?;
        }
        let bases: Vec<i64> = self
            .segments
            .range(..end)
            .map(|(base, _)| *base)
            .filter(|base| *base != self.active().base_offset)
            .collect();
        for base in bases {
            let (before, after) = self.clean_segment(base, start, end, &keys, deleted_keys)?;
            if before != after {
                report.segments_rewritten += 1;
            }
            report.bytes_before += before;
            report.bytes_after += after;
        }
        self.check_invariants();
        Ok(report)
    }

    /// Rewrites one sealed segment if any of its batches in `[start, end)` has records to
    /// drop. Returns its size before and after.
    fn clean_segment(
        &mut self,
        base: i64,
        start: i64,
        end: i64,
        keys: &KeyMap,
        deleted_keys: &BTreeSet<u128>,
    ) -> Result<(u64, u64), CleanFailure> {
        let segment = &self.segments[&base];
        let size_before = segment.size_bytes();
        let next_offset = segment.next_offset();
        let in_range = |h: &BatchHeader| h.base_offset >= start && h.next_offset() <= end;
        let headers = segment.headers()?;
        // The walk must cover the whole segment: a header it could not parse would
        // otherwise end the rewritten segment early and lose every batch after it.
        let walked_bytes: u64 = headers.iter().map(|(_, h)| h.size_bytes() as u64).sum();
        let walked_next = headers.last().map_or(base, |(_, h)| h.next_offset());
        if walked_bytes != size_before || walked_next != next_offset {
            return Err(CleanFailure::Corrupt {
                offset: walked_next,
            });
        }
        // Clean in memory one batch at a time; a segment without changes is left alone.
        let mut cleaned = Vec::new();
        for (position, header) in &headers {
            if !in_range(header) {
                continue;
            }
            let bytes = read_whole(segment, *position, header)?;
            if let Some(new) = cleaner::clean_batch(&bytes, keys, deleted_keys)
                .map_err(|e| CleanFailure::Refused(e.to_string()))?
            {
                cleaned.push((*position, new));
            }
        }
        if cleaned.is_empty() {
            return Ok((size_before, size_before));
        }
        let stem = file_stem(base);
        let log_path = self.dir.join(format!("{stem}{LOG_SUFFIX}"));
        let temp_path = self.dir.join(format!("{stem}{LOG_SUFFIX}{CLEANED_SUFFIX}"));
        let mut temp = self.storage.open(&temp_path, true)?;
        temp.truncate(0)?;
        let mut replacements = cleaned.into_iter().peekable();
        for (position, header) in &headers {
            match replacements.peek() {
                Some((p, _)) if p == position => {
                    let (_, new) = replacements.next().expect("peeked");
                    temp.append(&new)?;
                }
                _ => temp.append(&read_whole(segment, *position, header)?)?,
            }
        }
        temp.sync()?;
        let size_after = temp.len();
        drop(temp);
        let index_paths: Vec<PathBuf> = [INDEX_SUFFIX, TIME_INDEX_SUFFIX]
            .iter()
            .map(|suffix| self.dir.join(format!("{stem}{suffix}")))
            .collect();
        // The old segment's handles go first: from here on it is reopened from disk.
        drop(self.segments.remove(&base));
        for path in &index_paths {
            if self.storage.exists(path) {
                self.storage.remove_file(path)?;
            }
        }
        self.storage.sync_dir(&self.dir)?;
        self.storage.rename(&temp_path, &log_path)?;
        self.storage.sync_dir(&self.dir)?;
        let (mut segment, scan) = Segment::open(
            self.storage.as_ref(),
            &self.dir,
            base,
            self.config.index_interval_bytes,
            false,
        )?;
        segment.sync_all()?;
        self.storage.sync_dir(&self.dir)?;
        let reopened_next = segment.next_offset();
        self.segments.insert(base, segment);
        if scan.truncated_bytes > 0 || reopened_next != next_offset {
            // What was just written and fsynced does not read back: the disk is failing.
            return Err(CleanFailure::Io(io::Error::other(format!(
                "cleaned segment {base} reads back ending at {reopened_next}, not {next_offset}"
            ))));
        }
        Ok((size_before, size_after))
    }
}

/// The whole batch at `position`, CRC-checked.
fn read_whole(
    segment: &Segment,
    position: u64,
    header: &BatchHeader,
) -> Result<Bytes, CleanFailure> {
    let read = segment.read(position, header.size_bytes(), i64::MAX, true)?;
    let bytes = read.bytes;
    let ok = bytes.len() == header.size_bytes()
        && batch::parse_whole(&bytes).is_ok_and(|h| h == *header);
    if !ok {
        return Err(CleanFailure::Corrupt {
            offset: header.base_offset,
        });
    }
    Ok(bytes)
}

impl From<ReadError> for CleanFailure {
    fn from(e: ReadError) -> CleanFailure {
        match e {
            ReadError::Corrupt {
                segment_base_offset,
                ..
            } => CleanFailure::Corrupt {
                offset: segment_base_offset,
            },
            ReadError::Io(e) => CleanFailure::Io(e),
            other => CleanFailure::Refused(other.to_string()),
        }
    }
}
