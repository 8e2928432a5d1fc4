//! RecordBatch v2 framing: reading the fixed header in place, checking CRC32C,
//! validating a producer's batch, and patching the two fields the broker owns.
//!
//! Batches are stored byte-for-byte as the producer sent them. The CRC covers
//! everything from `attributes` to the end, so `baseOffset` and
//! `partitionLeaderEpoch` can be rewritten without recomputing it.

use bytes::{Buf, Bytes};
use kafka_protocol::records::{Compression, RecordBatchDecoder};

/// Size of the fixed RecordBatch v2 header, up to and including `recordsCount`.
pub const BATCH_HEADER_SIZE: usize = 61;
/// `baseOffset` + `batchLength`: the bytes not counted by `batchLength`.
pub const LOG_OVERHEAD: usize = 12;
const PARTITION_LEADER_EPOCH_OFFSET: usize = 12;
const MAGIC_OFFSET: usize = 16;
const ATTRIBUTES_OFFSET: usize = 21;
/// Upper bound on records in one batch; bounds the memory validation may use.
pub const MAX_RECORDS_PER_BATCH: i32 = 1 << 20;
/// The smallest possible encoding of one record (length, attributes, deltas, key, value, headers).
const MIN_RECORD_SIZE: usize = 7;
/// Upper bound on the decompressed size of one batch's records: validation inflates a
/// compressed batch to check it, and a few KiB can claim GiBs (a decompression bomb).
pub const MAX_DECOMPRESSED_BATCH_BYTES: usize = 64 << 20;

/// The fixed header of one RecordBatch v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

/// Why a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch truncated: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("unsupported magic {0}")]
    UnsupportedMagic(i8),
    #[error("batch length {0} is invalid")]
    InvalidLength(i32),
    #[error("CRC32C mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("invalid records: {0}")]
    InvalidRecords(String),
    #[error("batch of {size} bytes exceeds max.message.bytes {max}")]
    TooLarge { size: usize, max: usize },
}

impl BatchError {
    /// The Kafka error this maps to in a produce response.
    pub fn kafka_error(&self) -> kafka_protocol::ResponseError {
        use kafka_protocol::ResponseError;
        match self {
            BatchError::UnsupportedMagic(_) => ResponseError::UnsupportedVersion,
            BatchError::InvalidRecords(_) => ResponseError::InvalidRecord,
            BatchError::TooLarge { .. } => ResponseError::MessageTooLarge,
            _ => ResponseError::CorruptMessage,
        }
    }
}

impl BatchHeader {
    /// Parses the header at the start of `buf` (which must hold at least the header).
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        if buf.len() < BATCH_HEADER_SIZE {
            return Err(BatchError::Truncated {
                needed: BATCH_HEADER_SIZE,
                available: buf.len(),
            });
        }
        let mut b = &buf[..BATCH_HEADER_SIZE];
        let header = BatchHeader {
            base_offset: b.get_i64(),
            batch_length: b.get_i32(),
            partition_leader_epoch: b.get_i32(),
            magic: b.get_i8(),
            crc: b.get_u32(),
            attributes: b.get_i16(),
            last_offset_delta: b.get_i32(),
            base_timestamp: b.get_i64(),
            max_timestamp: b.get_i64(),
            producer_id: b.get_i64(),
            producer_epoch: b.get_i16(),
            base_sequence: b.get_i32(),
            records_count: b.get_i32(),
        };
        if header.magic != 2 {
            return Err(BatchError::UnsupportedMagic(header.magic));
        }
        if (header.batch_length as i64) < (BATCH_HEADER_SIZE - LOG_OVERHEAD) as i64 {
            return Err(BatchError::InvalidLength(header.batch_length));
        }
        Ok(header)
    }

    /// Total size of the batch on the wire and on disk.
    pub fn size_bytes(&self) -> usize {
        LOG_OVERHEAD + self.batch_length as usize
    }

    /// Saturating: a header read from a corrupt segment may hold any values.
    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .saturating_add(self.last_offset_delta as i64)
    }

    pub fn next_offset(&self) -> i64 {
        self.last_offset().saturating_add(1)
    }

    /// Compression codec id (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    pub fn compression_codec(&self) -> i16 {
        self.attributes & 0x7
    }

    pub fn is_log_append_time(&self) -> bool {
        self.attributes & 0x8 != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }

    /// The batch's max timestamp as timestamp lookups, the time index and time-based
    /// retention see it: -1 for a control batch, whose records no consumer sees (a
    /// leader's LEADER_CHANGE carries the time of its election, not of any record).
    pub fn record_max_timestamp(&self) -> i64 {
        if self.is_control() {
            -1
        } else {
            self.max_timestamp
        }
    }
}

/// Checks that `batch` (exactly one whole batch) carries a correct CRC32C.
pub fn verify_crc(batch: &[u8], header: &BatchHeader) -> Result<(), BatchError> {
    debug_assert_eq!(batch.len(), header.size_bytes());
    let computed = crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..]);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    Ok(())
}

/// Reads the header of the batch at the start of `buf` and checks the whole batch is present.
pub fn parse_whole(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(buf)?;
    if buf.len() < header.size_bytes() {
        return Err(BatchError::Truncated {
            needed: header.size_bytes(),
            available: buf.len(),
        });
    }
    Ok(header)
}

/// Splits a produce request's `records` into validated batches.
///
/// Every batch must be RecordBatch v2 with a correct CRC, a sane record count whose offset
/// deltas run 0..n-1 (matching `lastOffsetDelta`), and a create-time timestamp. The records
/// are decoded (decompressing if needed) only to check them; what is stored is the original
/// bytes.
pub fn validate_produce_records(
    records: &Bytes,
    max_batch_bytes: usize,
) -> Result<Vec<(BatchHeader, Bytes)>, BatchError> {
    let mut batches = Vec::new();
    let mut position = 0usize;
    if records.is_empty() {
        return Err(BatchError::InvalidRecords(
            "no record batch in produce request".into(),
        ));
    }
    while position < records.len() {
        let rest = &records[position..];
        if rest.len() >= MAGIC_OFFSET + 1 && rest[MAGIC_OFFSET] != 2 {
            return Err(BatchError::UnsupportedMagic(rest[MAGIC_OFFSET] as i8));
        }
        let header = parse_whole(rest)?;
        let size = header.size_bytes();
        if size > max_batch_bytes {
            return Err(BatchError::TooLarge {
                size,
                max: max_batch_bytes,
            });
        }
        let bytes = records.slice(position..position + size);
        verify_crc(&bytes, &header)?;
        validate_records(&bytes, &header)?;
        batches.push((header, bytes));
        position += size;
    }
    Ok(batches)
}

fn validate_records(batch: &Bytes, header: &BatchHeader) -> Result<(), BatchError> {
    let invalid = |msg: String| Err(BatchError::InvalidRecords(msg));
    if header.records_count <= 0 || header.records_count > MAX_RECORDS_PER_BATCH {
        return invalid(format!(
            "record count {} out of range",
            header.records_count
        ));
    }
    if header.last_offset_delta != header.records_count - 1 {
        return invalid(format!(
            "lastOffsetDelta {} with {} records",
            header.last_offset_delta, header.records_count
        ));
    }
    let body_len = batch.len() - BATCH_HEADER_SIZE;
    if header.compression_codec() == 0
        && (header.records_count as usize) * MIN_RECORD_SIZE > body_len
    {
        return invalid(format!(
            "{} records cannot fit in {body_len} bytes",
            header.records_count
        ));
    }
    if header.compression_codec() > 4 {
        return invalid(format!(
            "unknown compression codec {}",
            header.compression_codec()
        ));
    }
    if header.is_log_append_time() {
        return invalid("producers must send CreateTime timestamps".into());
    }
    if header.is_control() {
        return invalid("producers may not write control batches".into());
    }
    let mut buf = batch.clone();
    let set = decode_bounded(&mut buf, header)?;
    if buf.has_remaining() {
        return invalid("trailing bytes after batch".into());
    }
    if set.records.len() != header.records_count as usize {
        return invalid(format!(
            "header says {} records, found {}",
            header.records_count,
            set.records.len()
        ));
    }
    for (i, record) in set.records.iter().enumerate() {
        if record.offset != header.base_offset + i as i64 {
            return invalid(format!(
                "record {i} has offset delta {}",
                record.offset - header.base_offset
            ));
        }
    }
    Ok(())
}

/// Decodes the batch at the start of `buf` with kafka-protocol, decompressing at most
/// [`MAX_DECOMPRESSED_BATCH_BYTES`] and refusing a record count above
/// [`MAX_RECORDS_PER_BATCH`] or records framed so that the decoder would over-allocate.
pub fn decode_bounded(
    buf: &mut Bytes,
    header: &BatchHeader,
) -> Result<kafka_protocol::records::RecordSet, BatchError> {
    if header.records_count > MAX_RECORDS_PER_BATCH {
        return Err(BatchError::InvalidRecords(format!(
            "record count {} out of range",
            header.records_count
        )));
    }
    RecordBatchDecoder::decode_with_custom_compression(
        buf,
        Some(|records: &mut Bytes, compression| {
            let records = decompress_bounded(records, compression)?;
            check_record_framing(&records, header)?;
            Ok(records)
        }),
    )
    .map_err(|e| BatchError::InvalidRecords(e.to_string()))
}

/// The records section of a batch (`body`: the bytes after the header), decompressed
/// with the batch's codec, never to more than [`MAX_DECOMPRESSED_BATCH_BYTES`].
pub(crate) fn decompress_records(mut body: Bytes, header: &BatchHeader) -> anyhow::Result<Bytes> {
    let compression = match header.compression_codec() {
        0 => Compression::None,
        1 => Compression::Gzip,
        2 => Compression::Snappy,
        3 => Compression::Lz4,
        4 => Compression::Zstd,
        other => anyhow::bail!("unknown compression codec {other}"),
    };
    decompress_bounded(&mut body, compression)
}

/// Output that refuses to grow past [`MAX_DECOMPRESSED_BATCH_BYTES`].
struct BoundedWriter(Vec<u8>);

impl std::io::Write for BoundedWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + data.len() > MAX_DECOMPRESSED_BATCH_BYTES {
            return Err(std::io::Error::other(format!(
                "records decompress to more than {MAX_DECOMPRESSED_BATCH_BYTES} bytes"
            )));
        }
        self.0.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Decompresses a batch's records the way kafka-protocol does, but never to more than
/// [`MAX_DECOMPRESSED_BATCH_BYTES`] (a few KiB of gzip, zstd or snappy can claim GiBs).
fn decompress_bounded(data: &mut Bytes, compression: Compression) -> anyhow::Result<Bytes> {
    use std::io::Write;
    let too_big = |n: usize| {
        anyhow::anyhow!("records decompress to {n} bytes, over {MAX_DECOMPRESSED_BATCH_BYTES}")
    };
    let input = data.split_off(0);
    let mut out = BoundedWriter(Vec::new());
    match compression {
        Compression::None => return Ok(input),
        Compression::Gzip => {
            let mut d = flate2::write::GzDecoder::new(&mut out);
            d.write_all(&input)?;
            d.finish()?;
        }
        Compression::Zstd => zstd::stream::copy_decode(input.reader(), &mut out)?,
        Compression::Lz4 => {
            std::io::copy(&mut lz4::Decoder::new(input.reader())?, &mut out)?;
        }
        Compression::Snappy => {
            const XERIAL: &[u8] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
            let Some(mut blocks) = input.strip_prefix(XERIAL) else {
                let n = snap::raw::decompress_len(&input)?;
                if n > MAX_DECOMPRESSED_BATCH_BYTES {
                    return Err(too_big(n));
                }
                return Ok(snap::raw::Decoder::new().decompress_vec(&input)?.into());
            };
            while !blocks.is_empty() {
                anyhow::ensure!(blocks.len() >= 4, "torn snappy block length");
                let n = u32::from_be_bytes(blocks[..4].try_into().unwrap()) as usize;
                anyhow::ensure!(blocks.len() - 4 >= n, "torn snappy block");
                let block = &blocks[4..4 + n];
                let len = snap::raw::decompress_len(block)?;
                if out.0.len() + len > MAX_DECOMPRESSED_BATCH_BYTES {
                    return Err(too_big(out.0.len() + len));
                }
                let start = out.0.len();
                out.0.resize(start + len, 0);
                snap::raw::Decoder::new().decompress(block, &mut out.0[start..])?;
                blocks = &blocks[4 + n..];
            }
        }
    }
    Ok(out.0.into())
}

/// Reads one zigzag varint of at most `max_bytes` bytes (RecordBatch v2 record fields).
/// A one-record control batch (base offset 0, patched at append): key = version 0 and
/// `control_type` (two int16s), value as given. `producer`: the (id, epoch) of a
/// transaction's marker (the batch is then transactional); None for the batches the
/// replication layer writes. Uncompressed, base sequence -1.
pub fn encode_control_batch(
    control_type: i16,
    value: &[u8],
    producer: Option<(i64, i16)>,
    timestamp_ms: i64,
) -> Bytes {
    use kafka_protocol::indexmap::IndexMap;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    let mut key = bytes::BytesMut::with_capacity(4);
    key.extend_from_slice(&0i16.to_be_bytes());
    key.extend_from_slice(&control_type.to_be_bytes());
    let (producer_id, producer_epoch) = producer.unwrap_or((-1, -1));
    let record = Record {
        transactional: producer.is_some(),
        control: true,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id,
        producer_epoch,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: timestamp_ms,
        key: Some(key.freeze()),
        value: Some(Bytes::copy_from_slice(value)),
        headers: IndexMap::new(),
    };
    let mut buf = bytes::BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        [&record],
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("a one-record control batch always encodes");
    buf.freeze()
}

pub(crate) fn read_varint(buf: &mut &[u8], max_bytes: usize) -> Option<i64> {
    let mut value = 0u64;
    for i in 0..max_bytes {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        value |= ((byte & 0x7f) as u64) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value >> 1) as i64 ^ -((value & 1) as i64));
        }
    }
    None
}

/// Walks the records before kafka-protocol decodes them, refusing what its decoder would
/// act on blindly: a header count larger than the record could hold (it reserves that
/// many entries up front) and offset or timestamp deltas that overflow an i64.
fn check_record_framing(records: &[u8], header: &BatchHeader) -> anyhow::Result<()> {
    let mut rest = records;
    for i in 0..header.records_count {
        let bad = |what: &str| anyhow::anyhow!("record {i}: {what}");
        let size = read_varint(&mut rest, 5).ok_or_else(|| bad("bad length"))?;
        let size = usize::try_from(size).map_err(|_| bad("negative length"))?;
        anyhow::ensure!(size <= rest.len(), bad("torn"));
        let (mut record, after) = rest.split_at(size);
        rest = after;
        record = record.get(1..).ok_or_else(|| bad("no attributes"))?;
        let timestamp_delta = read_varint(&mut record, 10).ok_or_else(|| bad("timestamp"))?;
        let offset_delta = read_varint(&mut record, 5).ok_or_else(|| bad("offset delta"))?;
        header
            .base_timestamp
            .checked_add(timestamp_delta)
            .ok_or_else(|| bad("timestamp overflows"))?;
        header
            .base_offset
            .checked_add(offset_delta)
            .ok_or_else(|| bad("offset overflows"))?;
        for field in ["key", "value"] {
            let len = read_varint(&mut record, 5).ok_or_else(|| bad(field))?;
            if len >= 0 {
                record = record.get(len as usize..).ok_or_else(|| bad(field))?;
            }
        }
        let headers = read_varint(&mut record, 5).ok_or_else(|| bad("header count"))?;
        // Every header takes at least two bytes (two length varints).
        anyhow::ensure!(headers as usize <= record.len() / 2, bad("header count"));
    }
    Ok(())
}

/// Writes `base_offset` and `partition_leader_epoch` into a batch in place.
pub fn patch_header(batch: &mut [u8], base_offset: i64, partition_leader_epoch: i32) {
    assert!(batch.len() >= BATCH_HEADER_SIZE);
    batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
    batch[PARTITION_LEADER_EPOCH_OFFSET..PARTITION_LEADER_EPOCH_OFFSET + 4]
        .copy_from_slice(&partition_leader_epoch.to_be_bytes());
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kafka_protocol::records::Compression;

    /// Builds a batch of `count` records the way a producer would.
    pub fn make_batch(count: usize, timestamp_ms: i64, compression: Compression) -> Bytes {
        let records: Vec<_> = (0..count)
            .map(|i| {
                let key = Some(Bytes::from(format!("k{i}")));
                (
                    key,
                    Some(Bytes::from(format!("value-{i}"))),
                    timestamp_ms + i as i64,
                )
            })
            .collect();
        crate::client::encode_records(&records, compression).unwrap()
    }

    #[test]
    fn valid_batches_pass_for_every_codec() {
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let batch = make_batch(10, 1_000, compression);
            let batches = validate_produce_records(&batch, 1 << 20).unwrap();
            assert_eq!(batches.len(), 1);
            assert_eq!(batches[0].0.records_count, 10);
            assert_eq!(batches[0].0.last_offset_delta, 9);
        }
    }

    #[test]
    fn flipped_byte_is_corrupt() {
        let batch = make_batch(3, 1_000, Compression::None);
        for position in [BATCH_HEADER_SIZE + 2, ATTRIBUTES_OFFSET, batch.len() - 1] {
            let mut bad = batch.to_vec();
            bad[position] ^= 0x40;
            let err = validate_produce_records(&Bytes::from(bad), 1 << 20).unwrap_err();
            assert!(matches!(err, BatchError::CrcMismatch { .. }), "{err:?}");
        }
    }

    #[test]
    fn patching_keeps_crc_valid() {
        let batch = make_batch(3, 1_000, Compression::Lz4);
        let mut patched = batch.to_vec();
        patch_header(&mut patched, 12345, 7);
        let header = parse_whole(&patched).unwrap();
        assert_eq!(header.base_offset, 12345);
        assert_eq!(header.partition_leader_epoch, 7);
        verify_crc(&patched, &header).unwrap();
    }

    #[test]
    fn truncated_and_oversized_are_refused() {
        let batch = make_batch(3, 1_000, Compression::None);
        let cut = batch.slice(..batch.len() - 1);
        assert!(matches!(
            validate_produce_records(&cut, 1 << 20),
            Err(BatchError::Truncated { .. })
        ));
        assert!(matches!(
            validate_produce_records(&batch, 10),
            Err(BatchError::TooLarge { max: 10, .. })
        ));
        assert!(validate_produce_records(&Bytes::new(), 1 << 20).is_err());
    }

    #[test]
    fn old_magic_is_unsupported() {
        let mut batch = make_batch(1, 1_000, Compression::None).to_vec();
        batch[MAGIC_OFFSET] = 1;
        assert_eq!(
            validate_produce_records(&Bytes::from(batch), 1 << 20).unwrap_err(),
            BatchError::UnsupportedMagic(1)
        );
    }
}
