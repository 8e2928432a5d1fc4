//! Sparse per-segment indexes, kept in memory and appended to their files.
//!
//! `.index`: 8-byte entries `(relative offset u32, file position u32)`, one every
//! `index.interval.bytes` of log, keyed by the base offset of the batch at that position.
//! `.timeindex`: 12-byte entries `(timestamp i64, relative offset u32)` meaning "every batch
//! before this relative offset has a max timestamp <= this timestamp".
//!
//! Both are derived data: recovery rebuilds them from the `.log` whenever they are
//! missing or fail [`OffsetIndex::validate`] / [`TimeIndex::validate`].

use crate::storage::StorageFile;
use bytes::Buf;
use std::io;

pub const OFFSET_ENTRY_SIZE: usize = 8;
pub const TIME_ENTRY_SIZE: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub timestamp_ms: i64,
    pub relative_offset: u32,
}

/// Offset → position index of one segment.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OffsetIndex {
    pub entries: Vec<OffsetEntry>,
}

impl OffsetIndex {
    pub fn decode(bytes: &[u8]) -> Option<OffsetIndex> {
        if bytes.len() % OFFSET_ENTRY_SIZE != 0 {
            return None;
        }
        let entries = bytes
            .chunks_exact(OFFSET_ENTRY_SIZE)
            .map(|mut c| OffsetEntry {
                relative_offset: c.get_u32(),
                position: c.get_u32(),
            })
            .collect();
        Some(OffsetIndex { entries })
    }

    pub fn encode_entry(entry: OffsetEntry) -> [u8; OFFSET_ENTRY_SIZE] {
        let mut out = [0u8; OFFSET_ENTRY_SIZE];
        out[..4].copy_from_slice(&entry.relative_offset.to_be_bytes());
        out[4..].copy_from_slice(&entry.position.to_be_bytes());
        out
    }

    /// Strictly increasing offsets and positions, every position inside the log.
    pub fn validate(&self, log_size_bytes: u64) -> bool {
        let increasing = self
            .entries
            .windows(2)
            .all(|w| w[0].relative_offset < w[1].relative_offset && w[0].position < w[1].position);
        increasing
            && self
                .entries
                .iter()
                .all(|e| (e.position as u64) < log_size_bytes)
    }

    /// Position to start scanning from for `relative_offset`: the last entry at or below it.
    pub fn lookup(&self, relative_offset: u32) -> u32 {
        self.lookup_entry(relative_offset).position
    }

    /// The last entry at or below `relative_offset` (offset 0 at position 0 if none): a
    /// batch starts at its position with its offset.
    pub fn lookup_entry(&self, relative_offset: u32) -> OffsetEntry {
        let i = self
            .entries
            .partition_point(|e| e.relative_offset <= relative_offset);
        if i == 0 {
            OffsetEntry {
                relative_offset: 0,
                position: 0,
            }
        } else {
            self.entries[i - 1]
        }
    }

    pub fn append(&mut self, file: &mut dyn StorageFile, entry: OffsetEntry) -> io::Result<()> {
        if let Some(last) = self.entries.last() {
            assert!(entry.relative_offset > last.relative_offset && entry.position > last.position);
        }
        file.append(&Self::encode_entry(entry))?;
        self.entries.push(entry);
        Ok(())
    }

    /// Drops entries at or past `position`.
    pub fn truncate_to_position(
        &mut self,
        file: &mut dyn StorageFile,
        position: u64,
    ) -> io::Result<()> {
        let keep = self
            .entries
            .partition_point(|e| (e.position as u64) < position);
        self.entries.truncate(keep);
        file.truncate((keep * OFFSET_ENTRY_SIZE) as u64)
    }
}

/// Timestamp → offset index of one segment.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TimeIndex {
    pub entries: Vec<TimeEntry>,
}

impl TimeIndex {
    pub fn decode(bytes: &[u8]) -> Option<TimeIndex> {
        if bytes.len() % TIME_ENTRY_SIZE != 0 {
            return None;
        }
        let entries = bytes
            .chunks_exact(TIME_ENTRY_SIZE)
            .map(|mut c| TimeEntry {
                timestamp_ms: c.get_i64(),
                relative_offset: c.get_u32(),
            })
            .collect();
        Some(TimeIndex { entries })
    }

    pub fn encode_entry(entry: TimeEntry) -> [u8; TIME_ENTRY_SIZE] {
        let mut out = [0u8; TIME_ENTRY_SIZE];
        out[..8].copy_from_slice(&entry.timestamp_ms.to_be_bytes());
        out[8..].copy_from_slice(&entry.relative_offset.to_be_bytes());
        out
    }

    /// Non-decreasing timestamps, strictly increasing offsets, offsets within the segment.
    pub fn validate(&self, relative_next_offset: u64) -> bool {
        let ordered = self.entries.windows(2).all(|w| {
            w[0].timestamp_ms <= w[1].timestamp_ms && w[0].relative_offset < w[1].relative_offset
        });
        ordered
            && self
                .entries
                .iter()
                .all(|e| (e.relative_offset as u64) <= relative_next_offset)
    }

    /// Relative offset from which to scan for the first record with timestamp >= `timestamp_ms`:
    /// every batch below it is known to be older than the target.
    pub fn lookup(&self, timestamp_ms: i64) -> u32 {
        let i = self
            .entries
            .partition_point(|e| e.timestamp_ms < timestamp_ms);
        if i == 0 {
            0
        } else {
            self.entries[i - 1].relative_offset
        }
    }

    pub fn append(&mut self, file: &mut dyn StorageFile, entry: TimeEntry) -> io::Result<()> {
        if let Some(last) = self.entries.last() {
            if entry.timestamp_ms < last.timestamp_ms
                || entry.relative_offset <= last.relative_offset
            {
                return Ok(()); // nothing new to say
            }
        }
        file.append(&Self::encode_entry(entry))?;
        self.entries.push(entry);
        Ok(())
    }

    /// Drops entries that describe offsets past `relative_offset`.
    pub fn truncate_to_offset(
        &mut self,
        file: &mut dyn StorageFile,
        relative_offset: u32,
    ) -> io::Result<()> {
        let keep = self
            .entries
            .partition_point(|e| e.relative_offset <= relative_offset);
        self.entries.truncate(keep);
        file.truncate((keep * TIME_ENTRY_SIZE) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_lookup_finds_floor_entry() {
        let index = OffsetIndex {
            entries: vec![
                OffsetEntry {
                    relative_offset: 10,
                    position: 100,
                },
                OffsetEntry {
                    relative_offset: 20,
                    position: 200,
                },
            ],
        };
        assert_eq!(index.lookup(0), 0);
        assert_eq!(index.lookup(9), 0);
        assert_eq!(index.lookup(10), 100);
        assert_eq!(index.lookup(19), 100);
        assert_eq!(index.lookup(25), 200);
        assert!(index.validate(201));
        assert!(!index.validate(200));
    }

    #[test]
    fn time_lookup_skips_older_batches() {
        let index = TimeIndex {
            entries: vec![
                TimeEntry {
                    timestamp_ms: 1_000,
                    relative_offset: 5,
                },
                TimeEntry {
                    timestamp_ms: 2_000,
                    relative_offset: 9,
                },
            ],
        };
        assert_eq!(index.lookup(500), 0);
        assert_eq!(index.lookup(1_000), 0);
        assert_eq!(index.lookup(1_001), 5);
        assert_eq!(index.lookup(5_000), 9);
    }

    #[test]
    fn encode_decode_roundtrip() {
        let e = OffsetEntry {
            relative_offset: 7,
            position: 99,
        };
        assert_eq!(
            OffsetIndex::decode(&OffsetIndex::encode_entry(e))
                .unwrap()
                .entries,
            vec![e]
        );
        let t = TimeEntry {
            timestamp_ms: -3,
            relative_offset: 1,
        };
        assert_eq!(
            TimeIndex::decode(&TimeIndex::encode_entry(t))
                .unwrap()
                .entries,
            vec![t]
        );
        assert!(OffsetIndex::decode(&[0u8; 7]).is_none());
    }
}
