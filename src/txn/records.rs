//! The records of `__transaction_state`, as prost messages.
//!
//! One key per transactional id; the value is the id's whole metadata as it is after a
//! change (Kafka's TransactionLogValue, plus the last epoch, so a retried call is still
//! recognised after a coordinator change). Compaction keeps the newest record per key,
//! and a record with no value (a tombstone) removes an expired id. The coordinator
//! rebuilds its state by replaying these records in order. The tags are part of the
//! on-disk format: never reuse or renumber one.

use super::coordinator::{TopicPartition, TxnMetadata, TxnState};
use bytes::Bytes;
use prost::Message;
use std::collections::BTreeSet;

#[derive(Clone, PartialEq, prost::Message)]
pub struct TxnKey {
    #[prost(string, tag = "1")]
    pub transactional_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TxnValue {
    #[prost(int64, tag = "1")]
    pub producer_id: i64,
    #[prost(int64, tag = "2")]
    pub previous_producer_id: i64,
    #[prost(int64, tag = "3")]
    pub next_producer_id: i64,
    /// An i16 on the wire of Kafka; checked when decoded.
    #[prost(int32, tag = "4")]
    pub producer_epoch: i32,
    #[prost(int32, tag = "5")]
    pub last_producer_epoch: i32,
    #[prost(int32, tag = "6")]
    pub txn_timeout_ms: i32,
    /// Kafka's TransactionState id ([`TxnState::id`]).
    #[prost(uint32, tag = "7")]
    pub state: u32,
    #[prost(message, repeated, tag = "8")]
    pub topics: Vec<TopicValue>,
    #[prost(int64, tag = "9")]
    pub txn_start_timestamp_ms: i64,
    #[prost(int64, tag = "10")]
    pub txn_last_update_timestamp_ms: i64,
    #[prost(bool, tag = "11")]
    pub transaction_v2: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TopicValue {
    #[prost(string, tag = "1")]
    pub topic: String,
    #[prost(int32, repeated, tag = "2")]
    pub partitions: Vec<i32>,
}

/// A record of `__transaction_state`, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct TxnRecord {
    pub transactional_id: String,
    /// None: a tombstone (the id expired).
    pub metadata: Option<TxnMetadata>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("undecodable record key: {0}")]
    Key(prost::DecodeError),
    #[error("undecodable record value: {0}")]
    Value(prost::DecodeError),
    #[error("invalid transaction metadata: {0}")]
    Invalid(&'static str),
}

impl From<&TxnMetadata> for TxnValue {
    fn from(m: &TxnMetadata) -> TxnValue {
        let mut topics: Vec<TopicValue> = Vec::new();
        for p in &m.partitions {
            match topics.last_mut() {
                Some(last) if last.topic == p.topic => last.partitions.push(p.partition),
                _ => topics.push(TopicValue {
                    topic: p.topic.clone(),
                    partitions: vec![p.partition],
                }),
            }
        }
        TxnValue {
            producer_id: m.producer_id,
            previous_producer_id: m.previous_producer_id,
            next_producer_id: m.next_producer_id,
            producer_epoch: i32::from(m.producer_epoch),
            last_producer_epoch: i32::from(m.last_producer_epoch),
            txn_timeout_ms: m.txn_timeout_ms,
            state: m.state.id(),
            topics,
            txn_start_timestamp_ms: m.txn_start_timestamp_ms,
            txn_last_update_timestamp_ms: m.txn_last_update_timestamp_ms,
            transaction_v2: m.transaction_v2,
        }
    }
}

impl TryFrom<TxnValue> for TxnMetadata {
    type Error = RecordError;

    /// Only metadata the coordinator could have written (a forged or damaged record is
    /// refused here rather than tripping an assertion later).
    fn try_from(v: TxnValue) -> Result<TxnMetadata, RecordError> {
        let epoch = |e: i32| i16::try_from(e).map_err(|_| RecordError::Invalid("epoch range"));
        let state = TxnState::from_id(v.state).ok_or(RecordError::Invalid("unknown state"))?;
        let partitions: BTreeSet<TopicPartition> = v
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| TopicPartition::new(&t.topic, *p))
            })
            .collect();
        let metadata = TxnMetadata {
            producer_id: v.producer_id,
            previous_producer_id: v.previous_producer_id,
            next_producer_id: v.next_producer_id,
            producer_epoch: epoch(v.producer_epoch)?,
            last_producer_epoch: epoch(v.last_producer_epoch)?,
            txn_timeout_ms: v.txn_timeout_ms,
            state,
            partitions,
            txn_start_timestamp_ms: v.txn_start_timestamp_ms,
            txn_last_update_timestamp_ms: v.txn_last_update_timestamp_ms,
            transaction_v2: v.transaction_v2,
        };
        metadata.validate().map_err(RecordError::Invalid)?;
        Ok(metadata)
    }
}

impl TxnRecord {
    /// The record's key and value (None: a tombstone), as stored.
    pub fn encode(&self) -> (Bytes, Option<Bytes>) {
        let key = TxnKey {
            transactional_id: self.transactional_id.clone(),
        };
        let value = self
            .metadata
            .as_ref()
            .map(|m| TxnValue::from(m).encode_to_vec().into());
        (key.encode_to_vec().into(), value)
    }

    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<TxnRecord, RecordError> {
        let key = TxnKey::decode(key).map_err(RecordError::Key)?;
        let metadata = match value {
            None => None,
            Some(bytes) => {
                let value = TxnValue::decode(bytes).map_err(RecordError::Value)?;
                Some(TxnMetadata::try_from(value)?)
            }
        };
        Ok(TxnRecord {
            transactional_id: key.transactional_id,
            metadata,
        })
    }
}

/// One RecordBatch v2 holding `records` in order (what the coordinator appends to its
/// `__transaction_state` partition), uncompressed, stamped `now_ms`.
pub fn encode_batch(records: &[TxnRecord], now_ms: i64) -> Bytes {
    assert!(!records.is_empty(), "a batch carries at least one record");
    let records: Vec<_> = records
        .iter()
        .map(|record| {
            let (key, value) = record.encode();
            (Some(key), value, now_ms)
        })
        .collect();
    crate::client::encode_records(&records, kafka_protocol::records::Compression::None)
        .expect("uncompressed records always encode")
}

/// The transaction records in `bytes` (whole batches as a partition read returns
/// them), in order; control batches are skipped. A record that does not decode is
/// skipped and counted (the batch's CRC was checked by the read, so only a record
/// written by another program gets here).
pub fn decode_batches(bytes: &Bytes) -> Result<(Vec<TxnRecord>, usize), String> {
    let stored = crate::client::decode_records(bytes).map_err(|e| e.to_string())?;
    let mut records = Vec::with_capacity(stored.len());
    let mut skipped = 0;
    for record in stored {
        let decoded = record
            .key
            .as_deref()
            .map(|key| TxnRecord::decode(key, record.value.as_deref()));
        match decoded {
            Some(Ok(decoded)) => records.push(decoded),
            _ => skipped += 1,
        }
    }
    Ok((records, skipped))
}
