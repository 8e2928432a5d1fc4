//! Metadata records in the metadata Raft group's log.
//!
//! The metadata log is a partition log like any other (KRaft does the same): each
//! proposal is one RecordBatch whose records' values are prost-encoded
//! [`MetadataRecord`]s. Control batches (a leader's no-op, configuration changes) carry
//! no metadata.

use super::records::MetadataRecord;
use bytes::Bytes;
use prost::Message;

#[derive(Debug, thiserror::Error)]
pub enum MetadataLogError {
    #[error("metadata batch: {0}")]
    Batch(String),
    #[error("metadata record: {0}")]
    Record(#[from] prost::DecodeError),
}

/// One batch holding `records`, ready to propose.
pub fn encode_batch(records: &[MetadataRecord], timestamp_ms: i64) -> Bytes {
    assert!(
        !records.is_empty(),
        "a proposal carries at least one record"
    );
    let values: Vec<_> = records
        .iter()
        .map(|r| (None, Some(Bytes::from(r.encode_to_vec())), timestamp_ms))
        .collect();
    crate::client::encode_records(&values, kafka_protocol::records::Compression::None)
        .expect("metadata records always encode")
}

/// The records in one stored batch of the metadata log (none for a control batch).
pub fn decode_batch(stored: &Bytes) -> Result<Vec<MetadataRecord>, MetadataLogError> {
    let header = crate::log::batch::parse_whole(stored)
        .map_err(|e| MetadataLogError::Batch(e.to_string()))?;
    if header.is_control() {
        return Ok(Vec::new());
    }
    let records = crate::client::decode_records(stored)
        .map_err(|e| MetadataLogError::Batch(e.to_string()))?;
    records
        .into_iter()
        .map(|r| Ok(MetadataRecord::decode(r.value.unwrap_or_default())?))
        .collect()
}
