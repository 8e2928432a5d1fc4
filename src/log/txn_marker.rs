//! Transaction markers: the COMMIT and ABORT control batches that end a producer's
//! transaction in a partition (KIP-98). The partition leader builds one for each marker
//! of a WriteTxnMarkers request, and every replica reads it back when it applies the
//! batch to its producer state, so both directions live here, as pure functions.
//!
//! A marker is a RecordBatch v2 with the control and transactional attributes, the
//! producer's id and epoch, base sequence -1 and exactly one record, built as Kafka's
//! `EndTransactionMarker` does: key = version (int16, 0) + control type (int16: 0
//! ABORT, 1 COMMIT); value = version (int16, 0) + coordinator epoch (int32).

use super::batch::{encode_control_batch, BatchHeader, BATCH_HEADER_SIZE};
use bytes::Bytes;

/// Control record type of an ABORT marker.
pub const CONTROL_TYPE_ABORT: i16 = 0;
/// Control record type of a COMMIT marker.
pub const CONTROL_TYPE_COMMIT: i16 = 1;

/// What a marker says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnMarker {
    /// COMMIT (true) or ABORT (false).
    pub commit: bool,
    /// Epoch of the transaction coordinator that wrote it.
    pub coordinator_epoch: i32,
}

/// The marker batch (base offset 0, patched at append) for a producer's transaction.
pub fn build_marker_batch(
    producer_id: i64,
    producer_epoch: i16,
    marker: TxnMarker,
    timestamp_ms: i64,
) -> Bytes {
    assert!(producer_id >= 0 && producer_epoch >= 0);
    let control_type = if marker.commit {
        CONTROL_TYPE_COMMIT
    } else {
        CONTROL_TYPE_ABORT
    };
    let mut value = [0u8; 6];
    value[2..].copy_from_slice(&marker.coordinator_epoch.to_be_bytes());
    encode_control_batch(
        control_type,
        &value,
        Some((producer_id, producer_epoch)),
        timestamp_ms,
    )
}

/// Reads a zigzag varint (at most `max_bytes` long) at `*at`.
fn read_varint(buf: &[u8], at: &mut usize, max_bytes: usize) -> Option<i64> {
    let mut rest = buf.get(*at..)?;
    let before = rest.len();
    let value = super::batch::read_varint(&mut rest, max_bytes)?;
    *at += before - rest.len();
    Some(value)
}

/// Takes a length-prefixed (varint) byte field at `*at`; `None` for null or malformed.
fn read_bytes<'a>(buf: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let len = usize::try_from(read_varint(buf, at, 5)?).ok()?;
    let field = buf.get(*at..at.checked_add(len)?)?;
    *at += len;
    Some(field)
}

/// The marker a control batch carries (`batch`: the whole batch, CRC already checked),
/// or `None` when it is not a transaction marker (another control type, compressed, not
/// one record, malformed). Reads the record's bytes directly: no allocation.
pub fn parse_marker(batch: &[u8], header: &BatchHeader) -> Option<TxnMarker> {
    if !header.is_control() || header.records_count != 1 || header.compression_codec() != 0 {
        return None;
    }
    let records = batch.get(BATCH_HEADER_SIZE..header.size_bytes())?;
    let mut at = 0;
    let _length = read_varint(records, &mut at, 5)?;
    let _attributes = records.get(at)?;
    at += 1;
    let _timestamp_delta = read_varint(records, &mut at, 10)?;
    let _offset_delta = read_varint(records, &mut at, 5)?;
    let key = read_bytes(records, &mut at)?;
    let value = read_bytes(records, &mut at)?;
    if key.len() < 4 || value.len() < 6 {
        return None;
    }
    let commit = match i16::from_be_bytes([key[2], key[3]]) {
        CONTROL_TYPE_ABORT => false,
        CONTROL_TYPE_COMMIT => true,
        _ => return None,
    };
    let coordinator_epoch = i32::from_be_bytes([value[2], value[3], value[4], value[5]]);
    Some(TxnMarker {
        commit,
        coordinator_epoch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::{parse_whole, verify_crc};

    #[test]
    fn a_marker_batch_is_built_as_kafka_does_and_reads_back() {
        for commit in [true, false] {
            let marker = TxnMarker {
                commit,
                coordinator_epoch: 7,
            };
            let batch = build_marker_batch(42, 3, marker, 1_000);
            let header = parse_whole(&batch).unwrap();
            verify_crc(&batch, &header).unwrap();
            assert!(header.is_control() && header.is_transactional());
            assert_eq!(
                (
                    header.producer_id,
                    header.producer_epoch,
                    header.base_sequence
                ),
                (42, 3, -1)
            );
            assert_eq!(header.records_count, 1);
            assert_eq!(parse_marker(&batch, &header), Some(marker));
            // Kafka's decoder sees the same record.
            let set =
                kafka_protocol::records::RecordBatchDecoder::decode(&mut batch.clone()).unwrap();
            let record = &set.records[0];
            let control_type = if commit { 1u8 } else { 0 };
            assert_eq!(record.key.as_deref(), Some(&[0, 0, 0, control_type][..]));
            assert_eq!(record.value.as_deref(), Some(&[0, 0, 0, 0, 0, 7][..]));
        }
    }

    #[test]
    fn other_control_batches_and_garbage_are_not_markers() {
        let leader_change = crate::replication::entry_codec::control_batch(2, &[0, 0, 0, 1]);
        let header = parse_whole(&leader_change).unwrap();
        assert_eq!(parse_marker(&leader_change, &header), None);
        let batch = build_marker_batch(
            1,
            0,
            TxnMarker {
                commit: true,
                coordinator_epoch: 0,
            },
            0,
        );
        let header = parse_whole(&batch).unwrap();
        for cut in 0..batch.len() {
            // A short buffer never panics.
            let _ = parse_marker(&batch[..cut], &header);
        }
    }
}
