//! How a Raft entry is stored in a partition's log, so that the segment log *is* the
//! Raft log and every record is written once.
//!
//! - A normal entry carries one producer RecordBatch: stored as that batch, with
//!   `baseOffset` set to the log end offset where it lands and `partitionLeaderEpoch`
//!   set to the entry's term.
//! - An empty entry (the no-op a new leader appends) is stored as a one-record control
//!   batch of type LEADER_CHANGE, taking one offset (consumers skip control batches; Kafka
//!   allows such offset gaps). Its record value is the term (4 bytes, big-endian), so the
//!   term is also stored inside the CRC (the header's `partitionLeaderEpoch` is not).
//! - A configuration change (ConfChangeV2) is stored as a control batch of type VOTERS
//!   whose record value is the encoded change.
//! - A clean command (`replication::compaction`) is a normal entry whose data is already
//!   a control batch of type CLEAN, built by the leader (producers may not write control
//!   batches): stored as it is, read back as a normal entry carrying that batch. So is a
//!   transaction marker (COMMIT/ABORT, `log::txn_marker`), built by the leader for
//!   WriteTxnMarkers.
//!
//! Every replica persists the same entries after the same prefix, so every replica
//! assigns the same offsets: a Kafka offset is a deterministic function of the Raft log.

use crate::log::batch::{self, BatchHeader};
use crate::log::txn_marker;
use bytes::Bytes;
use kafka_protocol::records::{Record, RecordBatchDecoder};
use raft::eraftpb::{Entry, EntryType};

/// Control record type of the no-op a leader appends when its term starts.
pub const CONTROL_TYPE_LEADER_CHANGE: i16 = 2;
/// Control record type of a Raft configuration change.
pub const CONTROL_TYPE_VOTERS: i16 = 6;
/// Control record type of a replicated clean command (`replication::compaction`), a
/// Strand type outside Kafka's range: clients skip control batches of any type.
pub const CONTROL_TYPE_CLEAN: i16 = 0x5C01;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("entry {index}: {reason}")]
    Invalid { index: u64, reason: String },
}

fn invalid(index: u64, reason: impl Into<String>) -> EntryError {
    EntryError::Invalid {
        index,
        reason: reason.into(),
    }
}

pub(crate) fn control_batch(control_type: i16, value: &[u8]) -> Bytes {
    // Deterministic on every replica (the entry carries no time).
    batch::encode_control_batch(control_type, value, None, 0)
}

/// The batch to store for `entry`: its header (with base offset and epoch as stored) and bytes.
pub fn encode_entry(entry: &Entry, base_offset: i64) -> Result<(BatchHeader, Bytes), EntryError> {
    let term = i32::try_from(entry.term)
        .map_err(|_| invalid(entry.index, "term does not fit a leader epoch"))?;
    let bytes = match entry.get_entry_type() {
        // The no-op names its term in its value, inside the CRC: the header's epoch is
        // outside it, and the replica checks one against the other when it opens the log.
        EntryType::EntryNormal if entry.data.is_empty() => {
            control_batch(CONTROL_TYPE_LEADER_CHANGE, &term.to_be_bytes())
        }
        EntryType::EntryNormal => {
            // The leader validated the records on produce; every replica checks framing
            // and CRC again, so a batch corrupted on the way is never persisted and never
            // counts toward a quorum.
            let header =
                batch::parse_whole(&entry.data).map_err(|e| invalid(entry.index, e.to_string()))?;
            if header.size_bytes() != entry.data.len() {
                return Err(invalid(entry.index, "an entry holds exactly one batch"));
            }
            batch::verify_crc(&entry.data, &header)
                .map_err(|e| invalid(entry.index, e.to_string()))?;
            entry.data.clone()
        }
        EntryType::EntryConfChangeV2 => control_batch(CONTROL_TYPE_VOTERS, &entry.data),
        EntryType::EntryConfChange => {
            return Err(invalid(entry.index, "only ConfChangeV2 entries are used"))
        }
    };
    let mut patched = bytes.to_vec();
    batch::patch_header(&mut patched, base_offset, term);
    let header = batch::parse_whole(&patched).map_err(|e| invalid(entry.index, e.to_string()))?;
    Ok((header, Bytes::from(patched)))
}

/// For a stored batch (CRC-checked): `Some(term named in it)` for a leader's no-op
/// (`Some(None)` for one written before no-ops named their term), `None` for any other
/// batch.
pub fn stored_leader_change(stored: &Bytes) -> Result<Option<Option<u64>>, EntryError> {
    let entry = decode_entry(stored, 0)?;
    let header = batch::parse_whole(stored).map_err(|e| invalid(0, e.to_string()))?;
    if !header.is_control() || entry.get_entry_type() != EntryType::EntryNormal {
        return Ok(None);
    }
    let mut buf = stored.slice(..header.size_bytes());
    let set = RecordBatchDecoder::decode(&mut buf).map_err(|e| invalid(0, e.to_string()))?;
    if control_type(&set.records, 0)? != CONTROL_TYPE_LEADER_CHANGE {
        return Ok(None);
    }
    let value = set
        .records
        .first()
        .and_then(|r| r.value.clone())
        .unwrap_or_default();
    Ok(Some(match value.len() {
        0 => None,
        4 => Some(u32::from_be_bytes(value[..].try_into().unwrap()) as u64),
        _ => return Err(invalid(0, "a no-op's value is its 4-byte term")),
    }))
}

/// The Raft entry stored as `stored` (one whole batch) at Raft index `index`.
pub fn decode_entry(stored: &Bytes, index: u64) -> Result<Entry, EntryError> {
    let header = batch::parse_whole(stored).map_err(|e| invalid(index, e.to_string()))?;
    batch::verify_crc(&stored[..header.size_bytes()], &header)
        .map_err(|e| invalid(index, e.to_string()))?;
    let mut entry = Entry::default();
    entry.index = index;
    entry.term = u64::try_from(header.partition_leader_epoch)
        .map_err(|_| invalid(index, "negative term"))?;
    if !header.is_control() {
        entry.set_entry_type(EntryType::EntryNormal);
        entry.data = stored.slice(..header.size_bytes());
        return Ok(entry);
    }
    let mut buf = stored.slice(..header.size_bytes());
    let set = RecordBatchDecoder::decode(&mut buf).map_err(|e| invalid(index, e.to_string()))?;
    let record = set
        .records
        .first()
        .ok_or_else(|| invalid(index, "empty control batch"))?;
    match control_type(&set.records, index)? {
        CONTROL_TYPE_LEADER_CHANGE => entry.set_entry_type(EntryType::EntryNormal),
        CONTROL_TYPE_CLEAN | txn_marker::CONTROL_TYPE_ABORT | txn_marker::CONTROL_TYPE_COMMIT => {
            entry.set_entry_type(EntryType::EntryNormal);
            entry.data = stored.slice(..header.size_bytes());
        }
        CONTROL_TYPE_VOTERS => {
            entry.set_entry_type(EntryType::EntryConfChangeV2);
            entry.data = record.value.clone().unwrap_or_default();
        }
        other => {
            return Err(invalid(
                index,
                format!("control type {other} is not a Raft entry"),
            ))
        }
    }
    Ok(entry)
}

/// The control type of a control batch's (first) record.
fn control_type(records: &[Record], index: u64) -> Result<i16, EntryError> {
    let key = records
        .first()
        .ok_or_else(|| invalid(index, "empty control batch"))?
        .key
        .as_ref()
        .filter(|k| k.len() >= 4)
        .ok_or_else(|| invalid(index, "control record without a key"))?;
    Ok(i16::from_be_bytes([key[2], key[3]]))
}

/// The clean command stored as `stored` (one whole batch), if it is one.
pub fn stored_clean_command(stored: &Bytes) -> Option<super::compaction::CleanCommand> {
    let header = batch::parse_whole(stored).ok()?;
    // Clean commands are written uncompressed: anything else is not one (and is never
    // inflated here: a few bytes of a compressed batch can claim gigabytes).
    if !header.is_control() || header.records_count != 1 || header.compression_codec() != 0 {
        return None;
    }
    batch::verify_crc(&stored[..header.size_bytes()], &header).ok()?;
    let mut buf = stored.slice(..header.size_bytes());
    let set = batch::decode_bounded(&mut buf, &header).ok()?;
    if control_type(&set.records, 0).ok()? != CONTROL_TYPE_CLEAN {
        return None;
    }
    super::compaction::CleanCommand::decode_value(set.records[0].value.as_deref()?)
}
