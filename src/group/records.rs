//! The records of `__consumer_offsets`, as prost messages.
//!
//! Each record's key names what it is about: a group's committed offset for one
//! partition, or the group itself (its generation and members). Compaction keeps the
//! newest record per key, and a record with no value (a tombstone) deletes the key. The
//! coordinator of a group rebuilds its state by replaying these records in order. The
//! tags are part of the on-disk format: never reuse or renumber one.

use super::coordinator::CommittedOffset;
use bytes::Bytes;
use prost::Message;

#[derive(Clone, PartialEq, prost::Message)]
pub struct RecordKey {
    #[prost(string, tag = "1")]
    pub group: String,
    /// Set for an offset record, with `partition`; absent for the group's own record.
    #[prost(string, optional, tag = "2")]
    pub topic: Option<String>,
    #[prost(int32, tag = "3")]
    pub partition: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct OffsetValue {
    #[prost(int64, tag = "1")]
    pub offset: i64,
    #[prost(int32, tag = "2")]
    pub leader_epoch: i32,
    #[prost(string, tag = "3")]
    pub metadata: String,
    #[prost(int64, tag = "4")]
    pub commit_ms: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GroupValue {
    #[prost(int32, tag = "1")]
    pub generation_id: i32,
    #[prost(string, tag = "2")]
    pub protocol_type: String,
    #[prost(string, optional, tag = "3")]
    pub protocol_name: Option<String>,
    #[prost(string, optional, tag = "4")]
    pub leader: Option<String>,
    #[prost(message, repeated, tag = "5")]
    pub members: Vec<MemberValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MemberValue {
    #[prost(string, tag = "1")]
    pub member_id: String,
    #[prost(string, optional, tag = "2")]
    pub group_instance_id: Option<String>,
    #[prost(string, tag = "3")]
    pub client_id: String,
    #[prost(string, tag = "4")]
    pub client_host: String,
    #[prost(int32, tag = "5")]
    pub session_timeout_ms: i32,
    #[prost(int32, tag = "6")]
    pub rebalance_timeout_ms: i32,
    /// The member's metadata for the group's protocol.
    #[prost(bytes = "bytes", tag = "7")]
    pub subscription: Bytes,
    #[prost(bytes = "bytes", tag = "8")]
    pub assignment: Bytes,
}

/// A record of `__consumer_offsets`, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum GroupRecord {
    /// A committed offset (None: deleted).
    Offset {
        group: String,
        topic: String,
        partition: i32,
        value: Option<CommittedOffset>,
    },
    /// A group's generation and members (None: the group is deleted).
    Group {
        group: String,
        value: Option<GroupValue>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("undecodable record key: {0}")]
    Key(prost::DecodeError),
    #[error("undecodable record value: {0}")]
    Value(prost::DecodeError),
}

impl GroupRecord {
    /// The group the record is about (the key of its coordinator).
    pub fn group(&self) -> &str {
        match self {
            GroupRecord::Offset { group, .. } | GroupRecord::Group { group, .. } => group,
        }
    }

    /// The record's key and value (None: a tombstone), as stored.
    pub fn encode(&self) -> (Bytes, Option<Bytes>) {
        match self {
            GroupRecord::Offset {
                group,
                topic,
                partition,
                value,
            } => {
                let key = RecordKey {
                    group: group.clone(),
                    topic: Some(topic.clone()),
                    partition: *partition,
                };
                let value = value.as_ref().map(|c| {
                    OffsetValue {
                        offset: c.offset,
                        leader_epoch: c.leader_epoch,
                        metadata: c.metadata.clone(),
                        commit_ms: c.commit_ms,
                    }
                    .encode_to_vec()
                    .into()
                });
                (key.encode_to_vec().into(), value)
            }
            GroupRecord::Group { group, value } => {
                let key = RecordKey {
                    group: group.clone(),
                    topic: None,
                    partition: 0,
                };
                let value = value.as_ref().map(|v| v.encode_to_vec().into());
                (key.encode_to_vec().into(), value)
            }
        }
    }

    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<GroupRecord, RecordError> {
        let key = RecordKey::decode(key).map_err(RecordError::Key)?;
        Ok(match key.topic {
            Some(topic) => GroupRecord::Offset {
                group: key.group,
                topic,
                partition: key.partition,
                value: value
                    .map(OffsetValue::decode)
                    .transpose()
                    .map_err(RecordError::Value)?
                    .map(|v| CommittedOffset {
                        offset: v.offset,
                        leader_epoch: v.leader_epoch,
                        metadata: v.metadata,
                        commit_ms: v.commit_ms,
                    }),
            },
            None => GroupRecord::Group {
                group: key.group,
                value: value
                    .map(GroupValue::decode)
                    .transpose()
                    .map_err(RecordError::Value)?,
            },
        })
    }
}

/// One RecordBatch v2 holding `records` in order (what the coordinator appends to its
/// `__consumer_offsets` partition), uncompressed, stamped `now_ms`.
pub fn encode_batch(records: &[GroupRecord], now_ms: i64) -> Bytes {
    encode_records(records, None, now_ms)
}

/// A transaction's offset commit (TxnOffsetCommit): `records` as one *transactional*
/// batch of producer `producer_id` at `producer_epoch` (base sequence -1, as Kafka's
/// coordinator appends it), so the partition's producer state sees the transaction
/// open until its marker.
pub fn encode_txn_batch(
    records: &[GroupRecord],
    producer_id: i64,
    producer_epoch: i16,
    now_ms: i64,
) -> Bytes {
    assert!(producer_id >= 0, "a transactional batch has a producer id");
    assert!(
        producer_epoch >= 0,
        "a transactional batch has a producer epoch"
    );
    encode_records(records, Some((producer_id, producer_epoch)), now_ms)
}

fn encode_records(records: &[GroupRecord], producer: Option<(i64, i16)>, now_ms: i64) -> Bytes {
    use kafka_protocol::indexmap::IndexMap;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    assert!(!records.is_empty(), "a batch carries at least one record");
    let (producer_id, producer_epoch) = producer.unwrap_or((-1, -1));
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, record)| {
            let (key, value) = record.encode();
            Record {
                transactional: producer.is_some(),
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id,
                producer_epoch,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                // The encoder keeps records in one batch while `offset - sequence` stays
                // the same; the batch's base sequence is then -1 (no sequence: the
                // coordinator, not a client, appends it).
                sequence: i as i32 - 1,
                timestamp: now_ms,
                key: Some(key),
                value,
                headers: IndexMap::new(),
            }
        })
        .collect();
    let mut buf = bytes::BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("uncompressed records always encode");
    buf.freeze()
}

/// What a load replays from a `__consumer_offsets` partition, in log order.
#[derive(Debug, Clone, PartialEq)]
pub enum LogEntry {
    /// A group record; `producer_id` is set when it was written in a transaction
    /// (TxnOffsetCommit): it stays pending until that producer's marker.
    Record {
        producer_id: Option<i64>,
        record: GroupRecord,
    },
    /// A COMMIT (`commit`) or ABORT marker of a producer's transaction.
    Marker { producer_id: i64, commit: bool },
}

/// The entries of whole batches (as a partition read returns them).
#[derive(Debug, Default)]
pub struct DecodedBatches {
    /// Records and transaction markers, in log order.
    pub entries: Vec<LogEntry>,
    /// Records that were not group records (undecodable key or value).
    pub skipped: usize,
    /// The offset after the last batch (None: no batch).
    pub next_offset: Option<i64>,
}

/// The group records and transaction markers in `bytes` (whole batches as a partition
/// read returns them), in order; other control batches (leader changes) are skipped. A
/// record that does not decode is skipped and counted (the batch's CRC was checked by
/// the read, so only a record written by another program gets here). Damage in the
/// framing is an error, never a panic.
pub fn decode_batches(bytes: &Bytes) -> Result<DecodedBatches, String> {
    use crate::log::batch::{decode_bounded, parse_whole};
    use crate::log::txn_marker::parse_marker;
    let mut decoded = DecodedBatches::default();
    let mut position = 0;
    while position < bytes.len() {
        let header = parse_whole(&bytes[position..]).map_err(|e| e.to_string())?;
        let size_bytes = header.size_bytes();
        let batch = bytes.slice(position..position + size_bytes);
        position += size_bytes;
        decoded.next_offset = Some(header.next_offset());
        if header.is_control() {
            if let Some(marker) = parse_marker(&batch, &header) {
                decoded.entries.push(LogEntry::Marker {
                    producer_id: header.producer_id,
                    commit: marker.commit,
                });
            }
            continue;
        }
        let producer_id =
            (header.is_transactional() && header.producer_id >= 0).then_some(header.producer_id);
        let mut buf = batch;
        let set = decode_bounded(&mut buf, &header).map_err(|e| e.to_string())?;
        for record in set.records {
            let Some(key) = record.key.as_deref() else {
                decoded.skipped += 1;
                continue;
            };
            match GroupRecord::decode(key, record.value.as_deref()) {
                Ok(record) => decoded.entries.push(LogEntry::Record {
                    producer_id,
                    record,
                }),
                Err(_) => decoded.skipped += 1,
            }
        }
    }
    Ok(decoded)
}
