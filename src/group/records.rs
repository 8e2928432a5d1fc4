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
    use kafka_protocol::indexmap::IndexMap;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    assert!(!records.is_empty(), "a batch carries at least one record");
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, record)| {
            let (key, value) = record.encode();
            Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                // The encoder keeps records in one batch while `offset - sequence` stays
                // the same; the batch's base sequence is then -1 (no producer id).
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

/// The group records in `bytes` (whole batches as a partition read returns them), in
/// order; control batches are skipped. A record that does not decode is skipped and
/// counted (the batch's CRC was checked by the read, so only a record written by another
/// program gets here).
pub fn decode_batches(bytes: &Bytes) -> Result<(Vec<GroupRecord>, usize), String> {
    use kafka_protocol::records::RecordBatchDecoder;
    let mut buf = bytes.clone();
    let sets = RecordBatchDecoder::decode_all(&mut buf).map_err(|e| e.to_string())?;
    let mut records = Vec::new();
    let mut skipped = 0;
    for set in sets {
        for record in set.records {
            if record.control {
                continue;
            }
            let Some(key) = record.key.as_deref() else {
                skipped += 1;
                continue;
            };
            match GroupRecord::decode(key, record.value.as_deref()) {
                Ok(decoded) => records.push(decoded),
                Err(_) => skipped += 1,
            }
        }
    }
    Ok((records, skipped))
}
