//! A small Kafka client used by Strand's own tests, benchmark and simulator workloads.
//!
//! It speaks the real protocol (kafka-protocol's messages over TCP) with fixed recent
//! versions, one request at a time. It is not a general-purpose client: no batching
//! across calls, no retries, no group membership (only the admin side of consumer
//! groups: find a coordinator, list, describe, fetch committed offsets).

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Message, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use kafka_protocol::ResponseError;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response frame the client accepts.
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

pub struct Client {
    stream: TcpStream,
    next_correlation_id: i32,
    client_id: StrBytes,
}

/// One record as a producer gives it and a consumer gets it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimpleRecord {
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
}

/// What one partition fetch returned.
#[derive(Debug, Clone)]
pub struct FetchedPartition {
    pub error: Option<ResponseError>,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    /// The user records (control batches left out).
    pub records: Vec<SimpleRecord>,
    /// Every whole batch of the response, control batches included, in order.
    pub batches: Vec<BatchExtent>,
}

/// The offsets one batch of a fetch response covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchExtent {
    pub base_offset: i64,
    /// Offset after the batch's last offset.
    pub next_offset: i64,
    pub is_control: bool,
}

/// The batches of a fetch response's records, in order; a partial batch at the end
/// (Kafka may cut the last one short) is left out.
pub fn batch_extents(bytes: &Bytes) -> Vec<BatchExtent> {
    let mut extents = Vec::new();
    let mut rest = &bytes[..];
    while let Ok(header) = crate::log::batch::BatchHeader::parse(rest) {
        if header.size_bytes() > rest.len() {
            break;
        }
        extents.push(BatchExtent {
            base_offset: header.base_offset,
            next_offset: header.next_offset(),
            is_control: header.is_control(),
        });
        rest = &rest[header.size_bytes()..];
    }
    extents
}

/// What one read_committed partition fetch returned.
#[derive(Debug, Clone)]
pub struct ReadCommittedPartition {
    pub error: Option<ResponseError>,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// The records a read_committed consumer delivers (see [`read_committed_records`]).
    pub records: Vec<SimpleRecord>,
    /// The offset after the last whole batch (None: no batch): the next fetch position.
    pub next_offset: Option<i64>,
}

/// The records of a read_committed fetch's `bytes` that a Kafka consumer delivers, given
/// the response's aborted transactions (producer id, first offset): control batches and
/// the batches of an aborted transaction are left out (a producer is aborted from its
/// first offset until its ABORT marker). Also the offset after the last whole batch.
pub fn read_committed_records(
    bytes: &Bytes,
    aborted: &[(i64, i64)],
) -> Result<(Vec<SimpleRecord>, Option<i64>)> {
    let mut pending = aborted.to_vec();
    pending.sort_by_key(|(_, first_offset)| std::cmp::Reverse(*first_offset));
    let mut aborting = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    let mut next_offset = None;
    let mut position = 0;
    while let Ok(header) = crate::log::batch::BatchHeader::parse(&bytes[position..]) {
        let end = position + header.size_bytes();
        if end > bytes.len() {
            break;
        }
        let batch = bytes.slice(position..end);
        position = end;
        next_offset = Some(header.next_offset());
        while let Some(&(producer_id, _)) = pending
            .last()
            .filter(|(_, first)| *first <= header.last_offset())
        {
            aborting.insert(producer_id);
            pending.pop();
        }
        if header.is_control() {
            let marker = crate::log::txn_marker::parse_marker(&batch, &header);
            if marker.is_some_and(|m| !m.commit) {
                aborting.remove(&header.producer_id);
            }
            continue;
        }
        if header.is_transactional() && aborting.contains(&header.producer_id) {
            continue;
        }
        out.extend(decode_records(&batch)?);
    }
    Ok((out, next_offset))
}

/// A Fetch (v12) of one partition from `offset` (read_uncommitted).
fn fetch_request(
    topic: &str,
    partition: i32,
    offset: i64,
    current_leader_epoch: i32,
    max_wait_ms: i32,
    max_bytes: i32,
) -> FetchRequest {
    let wanted = FetchPartition::default()
        .with_partition(partition)
        .with_fetch_offset(offset)
        .with_partition_max_bytes(max_bytes)
        .with_current_leader_epoch(current_leader_epoch)
        .with_log_start_offset(-1);
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(max_bytes)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(str_bytes(topic)))
            .with_partitions(vec![wanted])])
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// The Kafka error code a failed call was answered with, if that is why it failed (for
/// retry decisions: e.g. COORDINATOR_LOAD_IN_PROGRESS).
pub fn response_error(error: &anyhow::Error) -> Option<ResponseError> {
    error.downcast_ref::<ResponseError>().copied()
}

/// A broker as FindCoordinator or Metadata names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
}

impl std::fmt::Display for BrokerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// One partition of an OffsetFetch answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedOffset {
    pub topic: String,
    pub partition: i32,
    /// None: nothing committed (the wire's -1).
    pub committed_offset: Option<i64>,
    pub error: Option<ResponseError>,
}

/// A consumer's assignment (the `member_assignment` bytes of a group using the
/// "consumer" protocol: a version i16, then ConsumerProtocolAssignment of that version),
/// as topic -> partitions. Empty bytes (a member between a join and its sync) are no
/// partitions. A negative version or bytes that do not decode are an error.
pub fn decode_consumer_assignment(bytes: &[u8]) -> Result<Vec<(String, Vec<i32>)>> {
    use kafka_protocol::messages::ConsumerProtocolAssignment;
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    if bytes.len() < 2 {
        bail!("assignment of {} byte(s)", bytes.len());
    }
    let version = i16::from_be_bytes([bytes[0], bytes[1]]);
    if version < 0 {
        bail!("assignment version {version}");
    }
    // A newer version than the crate knows is read as its newest (versions add fields
    // at the end), as Kafka's consumers do.
    let version = version.min(ConsumerProtocolAssignment::VERSIONS.max);
    check_assignment_counts(&bytes[2..])?;
    let mut buf = Bytes::copy_from_slice(&bytes[2..]);
    let assignment = ConsumerProtocolAssignment::decode(&mut buf, version)?;
    Ok(assignment
        .assigned_partitions
        .into_iter()
        .map(|tp| (tp.topic.to_string(), tp.partitions))
        .collect())
}

/// Checks every count of a ConsumerProtocolAssignment (v0-v3 share one layout: an
/// array of (topic string, array of i32 partitions), then user data bytes) against the
/// bytes that follow it. kafka-protocol 0.18 reserves an array's claimed length before
/// reading a single element, so a garbled count could ask for gigabytes, which aborts
/// the process outside the broker binary's allocator (`crate::large_alloc`).
fn check_assignment_counts(mut rest: &[u8]) -> Result<()> {
    fn take<const N: usize>(rest: &mut &[u8]) -> Result<[u8; N]> {
        let (head, tail) = rest
            .split_first_chunk::<N>()
            .ok_or_else(|| anyhow!("assignment cut short"))?;
        *rest = tail;
        Ok(*head)
    }
    fn skip(rest: &mut &[u8], count: usize, size: usize) -> Result<()> {
        let bytes = count
            .checked_mul(size)
            .filter(|b| *b <= rest.len())
            .ok_or_else(|| anyhow!("assignment claims {count} items of {size} bytes"))?;
        *rest = &rest[bytes..];
        Ok(())
    }
    let topics = i32::from_be_bytes(take::<4>(&mut rest)?);
    // A topic takes at least 6 bytes: a name length and a partition count.
    let topics = usize::try_from(topics).map_err(|_| anyhow!("{topics} topics"))?;
    if topics > rest.len() / 6 {
        bail!("assignment claims {topics} topics in {} bytes", rest.len());
    }
    for _ in 0..topics {
        let name_len = i16::from_be_bytes(take::<2>(&mut rest)?);
        let name_len =
            usize::try_from(name_len).map_err(|_| anyhow!("topic name length {name_len}"))?;
        skip(&mut rest, name_len, 1)?;
        let partitions = i32::from_be_bytes(take::<4>(&mut rest)?);
        let partitions =
            usize::try_from(partitions).map_err(|_| anyhow!("{partitions} partitions"))?;
        skip(&mut rest, partitions, 4)?;
    }
    Ok(())
}

/// (topic, partition) pairs grouped by topic (topics in first-seen order), each made
/// into a request's topic entry by `entry`.
fn by_topic<T>(partitions: &[(String, i32)], entry: impl Fn(TopicName, Vec<i32>) -> T) -> Vec<T> {
    let mut topics: Vec<(&str, Vec<i32>)> = Vec::new();
    for (topic, partition) in partitions {
        match topics.iter_mut().find(|(t, _)| t == topic) {
            Some((_, ps)) => ps.push(*partition),
            None => topics.push((topic, vec![*partition])),
        }
    }
    topics
        .into_iter()
        .map(|(topic, ps)| entry(TopicName(str_bytes(topic)), ps))
        .collect()
}

fn txn_topics(
    partitions: &[(String, i32)],
) -> Vec<add_partitions_to_txn_request::AddPartitionsToTxnTopic> {
    by_topic(partitions, |name, ps| {
        add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
            .with_name(name)
            .with_partitions(ps)
    })
}

/// An error code as an optional error (an unknown code is UNKNOWN_SERVER_ERROR).
pub fn optional_error(code: i16) -> Option<ResponseError> {
    (code != 0)
        .then(|| ResponseError::try_from_code(code).unwrap_or(ResponseError::UnknownServerError))
}

/// One transaction of what a partition leader asks a coordinator (AddPartitionsToTxn
/// v4+): whether the partitions are in it (`verify_only`, KIP-890 part 1), or, for a
/// transaction version 2 producer, to add them (KIP-890 part 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnToVerify {
    pub transactional_id: String,
    pub producer: (i64, i16),
    pub partitions: Vec<(String, i32)>,
    pub verify_only: bool,
}

/// EndTxn of `producer` (the same body at v4 and v5).
fn end_txn_request(transactional_id: &str, producer: (i64, i16), commit: bool) -> EndTxnRequest {
    EndTxnRequest::default()
        .with_transactional_id(TransactionalId(str_bytes(transactional_id)))
        .with_producer_id(ProducerId(producer.0))
        .with_producer_epoch(producer.1)
        .with_committed(commit)
}

fn check(code: i16) -> Result<()> {
    match ResponseError::try_from_code(code) {
        None if code == 0 => Ok(()),
        Some(e) => Err(anyhow!(e)),
        None => bail!("unknown error code {code}"),
    }
}

/// Encodes records as one RecordBatch v2 with the given compression, all with one timestamp.
pub fn encode_batch(
    records: &[(Option<Bytes>, Option<Bytes>)],
    timestamp_ms: i64,
    compression: Compression,
) -> Result<Bytes> {
    let records: Vec<_> = records
        .iter()
        .map(|(k, v)| (k.clone(), v.clone(), timestamp_ms))
        .collect();
    encode_records(&records, compression)
}

/// An idempotent or transactional producer's fields of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerFields {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub transactional: bool,
}

/// A copy of an encoded batch written by `producer` instead (its producer id, epoch,
/// base sequence and transactional bit set, the CRC computed again): cheaper than
/// encoding the records again for every sequence number.
pub fn with_producer_fields(batch: &Bytes, producer: ProducerFields) -> Bytes {
    // RecordBatch v2: crc at 17..21 covers 21.. (attributes at 21..23, producer id at
    // 43..51, epoch at 51..53, base sequence at 53..57).
    let mut bytes = batch.to_vec();
    let mut attributes = i16::from_be_bytes([bytes[21], bytes[22]]);
    if producer.transactional {
        attributes |= 0x10;
    } else {
        attributes &= !0x10;
    }
    bytes[21..23].copy_from_slice(&attributes.to_be_bytes());
    bytes[43..51].copy_from_slice(&producer.producer_id.to_be_bytes());
    bytes[51..53].copy_from_slice(&producer.producer_epoch.to_be_bytes());
    bytes[53..57].copy_from_slice(&producer.base_sequence.to_be_bytes());
    let crc = crc32c::crc32c(&bytes[21..]);
    bytes[17..21].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(bytes)
}

/// Encodes `(key, value, timestamp_ms)` records as one RecordBatch v2, as a
/// non-idempotent producer would.
pub fn encode_records(
    records: &[(Option<Bytes>, Option<Bytes>, i64)],
    compression: Compression,
) -> Result<Bytes> {
    encode_producer_records(records, compression, None)
}

/// Encodes records as one RecordBatch v2 written by `producer` (None: a producer that is
/// not idempotent).
pub fn encode_producer_records(
    records: &[(Option<Bytes>, Option<Bytes>, i64)],
    compression: Compression,
    producer: Option<ProducerFields>,
) -> Result<Bytes> {
    let (producer_id, producer_epoch, base_sequence, transactional) = match producer {
        Some(p) => (
            p.producer_id,
            p.producer_epoch,
            p.base_sequence,
            p.transactional,
        ),
        None => (-1, -1, -1, false),
    };
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, (key, value, timestamp_ms))| Record {
            transactional,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder starts a new batch whenever offset - sequence changes; keeping it
            // constant gives one batch whose baseSequence is the first record's (-1 for a
            // non-idempotent producer).
            sequence: if base_sequence < 0 {
                i as i32 - 1
            } else {
                base_sequence.wrapping_add(i as i32)
            },
            timestamp: *timestamp_ms,
            key: key.clone(),
            value: value.clone(),
            headers: IndexMap::new(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )?;
    Ok(buf.freeze())
}

/// Decodes every batch in `bytes` (CRCs checked by the decoder).
pub fn decode_records(bytes: &Bytes) -> Result<Vec<SimpleRecord>> {
    let mut buf = bytes.clone();
    let mut out = Vec::new();
    for set in RecordBatchDecoder::decode_all(&mut buf)? {
        // Control batches (leader changes, transaction markers) hold no user records.
        for r in set.records.into_iter().filter(|r| !r.control) {
            out.push(SimpleRecord {
                offset: r.offset,
                timestamp_ms: r.timestamp,
                key: r.key,
                value: r.value,
            });
        }
    }
    Ok(out)
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Result<Client> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        let _ = stream.set_nodelay(true);
        Ok(Client {
            stream,
            next_correlation_id: 1,
            client_id: str_bytes("strand-client"),
        })
    }

    async fn write_request<R: Request>(&mut self, request: &R, version: i16) -> Result<i32> {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(self.client_id.clone()));
        let mut body = BytesMut::new();
        header.encode(&mut body, R::header_version(version))?;
        request.encode(&mut body, version)?;
        self.stream
            .write_all(&(body.len() as i32).to_be_bytes())
            .await?;
        self.stream.write_all(&body).await?;
        self.stream.flush().await?;
        Ok(correlation_id)
    }

    async fn read_response<R: Request>(
        &mut self,
        correlation_id: i32,
        version: i16,
    ) -> Result<R::Response> {
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).await?;
        let size = i32::from_be_bytes(size);
        if size < 0 || size as usize > MAX_RESPONSE_BYTES {
            bail!("response frame size {size} out of range");
        }
        let mut frame = BytesMut::zeroed(size as usize);
        self.stream.read_exact(&mut frame).await?;
        let mut frame = frame.freeze();
        let header = ResponseHeader::decode(&mut frame, R::Response::header_version(version))?;
        if header.correlation_id != correlation_id {
            bail!(
                "correlation id {} != {}",
                header.correlation_id,
                correlation_id
            );
        }
        R::Response::decode(&mut frame, version)
    }

    /// Sends a request and waits for its response.
    pub async fn send<R: Request>(&mut self, request: &R, version: i16) -> Result<R::Response> {
        let id = self.write_request(request, version).await?;
        self.read_response::<R>(id, version).await
    }

    pub async fn api_versions(&mut self) -> Result<ApiVersionsResponse> {
        let request = ApiVersionsRequest::default()
            .with_client_software_name(str_bytes("strand-client"))
            .with_client_software_version(str_bytes("0"));
        let response = self.send(&request, 3).await?;
        check(response.error_code)?;
        Ok(response)
    }

    pub async fn metadata(&mut self, topics: Option<&[&str]>) -> Result<MetadataResponse> {
        self.metadata_request(topics, true).await
    }

    /// Metadata that never creates a topic: a missing one is answered
    /// UNKNOWN_TOPIC_OR_PARTITION (as an admin tool asks).
    pub async fn metadata_without_creation(
        &mut self,
        topics: Option<&[&str]>,
    ) -> Result<MetadataResponse> {
        self.metadata_request(topics, false).await
    }

    async fn metadata_request(
        &mut self,
        topics: Option<&[&str]>,
        allow_auto_topic_creation: bool,
    ) -> Result<MetadataResponse> {
        let topics = topics.map(|ts| {
            ts.iter()
                .map(|t| MetadataRequestTopic::default().with_name(Some(TopicName(str_bytes(t)))))
                .collect()
        });
        let request = MetadataRequest::default()
            .with_topics(topics)
            .with_allow_auto_topic_creation(allow_auto_topic_creation);
        self.send(&request, 12).await
    }

    /// FindCoordinator (v3) for a consumer group.
    pub async fn find_coordinator(&mut self, group_id: &str) -> Result<BrokerAddress> {
        const KEY_TYPE_GROUP: i8 = 0;
        self.find_coordinator_of(group_id, KEY_TYPE_GROUP).await
    }

    /// The coordinator of a transactional id.
    pub async fn find_transaction_coordinator(
        &mut self,
        transactional_id: &str,
    ) -> Result<BrokerAddress> {
        const KEY_TYPE_TRANSACTION: i8 = 1;
        self.find_coordinator_of(transactional_id, KEY_TYPE_TRANSACTION)
            .await
    }

    async fn find_coordinator_of(&mut self, key: &str, key_type: i8) -> Result<BrokerAddress> {
        let request = FindCoordinatorRequest::default()
            .with_key(str_bytes(key))
            .with_key_type(key_type);
        let response = self.send(&request, 3).await?;
        check(response.error_code)?;
        Ok(BrokerAddress {
            node_id: response.node_id.0,
            host: response.host.to_string(),
            port: response.port,
        })
    }

    /// AddPartitionsToTxn (v3, a client's): the first error, if any.
    pub async fn add_partitions_to_txn(
        &mut self,
        transactional_id: &str,
        producer: (i64, i16),
        partitions: &[(String, i32)],
    ) -> Result<()> {
        let topics = txn_topics(partitions);
        let request = AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(TransactionalId(str_bytes(transactional_id)))
            .with_v3_and_below_producer_id(ProducerId(producer.0))
            .with_v3_and_below_producer_epoch(producer.1)
            .with_v3_and_below_topics(topics);
        let response = self.send(&request, 3).await?;
        check(response.error_code)?;
        for topic in &response.results_by_topic_v3_and_below {
            for p in &topic.results_by_partition {
                check(p.partition_error_code)?;
            }
        }
        Ok(())
    }

    /// EndTxn (v4: the epoch stays).
    pub async fn end_txn(
        &mut self,
        transactional_id: &str,
        producer: (i64, i16),
        commit: bool,
    ) -> Result<()> {
        let request = end_txn_request(transactional_id, producer, commit);
        let response = self.send(&request, 4).await?;
        check(response.error_code)
    }

    /// EndTxn v5 (transaction version 2, KIP-890 part 2): every end bumps the epoch. Returns
    /// the producer id and epoch to use from now on (the epoch + 1, or a new producer id at
    /// epoch 0 once the epoch is exhausted). A retry goes with the epoch it was first sent
    /// with.
    pub async fn end_txn_v2(
        &mut self,
        transactional_id: &str,
        producer: (i64, i16),
        commit: bool,
    ) -> Result<(i64, i16)> {
        let request = end_txn_request(transactional_id, producer, commit);
        let response = self.send(&request, 5).await?;
        check(response.error_code)?;
        let next = (response.producer_id.0, response.producer_epoch);
        if next.0 < 0 || next.1 < 0 {
            bail!("EndTxn v5 answered without a producer id and epoch: {next:?}");
        }
        Ok(next)
    }

    /// ListGroups (v4, with each group's state): the groups this broker coordinates.
    pub async fn list_groups(&mut self) -> Result<Vec<list_groups_response::ListedGroup>> {
        let response = self.send(&ListGroupsRequest::default(), 4).await?;
        check(response.error_code)?;
        Ok(response.groups)
    }

    /// DescribeGroups (v5) for one group, asked of its coordinator. A group the
    /// coordinator does not know comes back in state "Dead" with no members.
    pub async fn describe_group(
        &mut self,
        group_id: &str,
    ) -> Result<describe_groups_response::DescribedGroup> {
        let request =
            DescribeGroupsRequest::default().with_groups(vec![GroupId(str_bytes(group_id))]);
        let response = self.send(&request, 5).await?;
        let group = response
            .groups
            .into_iter()
            .find(|g| g.group_id.to_string() == group_id)
            .ok_or_else(|| anyhow!("DescribeGroups response without group {group_id}"))?;
        check(group.error_code)?;
        Ok(group)
    }

    /// OffsetFetch (v7) of a group's committed offsets, asked of its coordinator:
    /// `topics` None asks for every partition the group committed.
    pub async fn offset_fetch(
        &mut self,
        group_id: &str,
        topics: Option<&[(&str, &[i32])]>,
    ) -> Result<Vec<FetchedOffset>> {
        self.offset_fetch_of(group_id, topics, false).await
    }

    /// [`Client::offset_fetch`] with `require_stable`: a partition with a transactional
    /// offset not yet decided is answered UNSTABLE_OFFSET_COMMIT (KIP-447).
    pub async fn offset_fetch_stable(
        &mut self,
        group_id: &str,
        topics: Option<&[(&str, &[i32])]>,
    ) -> Result<Vec<FetchedOffset>> {
        self.offset_fetch_of(group_id, topics, true).await
    }

    async fn offset_fetch_of(
        &mut self,
        group_id: &str,
        topics: Option<&[(&str, &[i32])]>,
        require_stable: bool,
    ) -> Result<Vec<FetchedOffset>> {
        use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
        let topics = topics.map(|ts| {
            ts.iter()
                .map(|(name, partitions)| {
                    OffsetFetchRequestTopic::default()
                        .with_name(TopicName(str_bytes(name)))
                        .with_partition_indexes(partitions.to_vec())
                })
                .collect()
        });
        let request = OffsetFetchRequest::default()
            .with_group_id(GroupId(str_bytes(group_id)))
            .with_topics(topics)
            .with_require_stable(require_stable);
        let response = self.send(&request, 7).await?;
        check(response.error_code)?;
        Ok(response
            .topics
            .into_iter()
            .flat_map(|t| {
                let topic = t.name.to_string();
                t.partitions.into_iter().map(move |p| FetchedOffset {
                    topic: topic.clone(),
                    partition: p.partition_index,
                    committed_offset: (p.committed_offset >= 0).then_some(p.committed_offset),
                    error: ResponseError::try_from_code(p.error_code),
                })
            })
            .collect())
    }

    pub async fn create_topic(
        &mut self,
        name: &str,
        partitions: i32,
        configs: &[(&str, &str)],
    ) -> Result<()> {
        let configs = configs
            .iter()
            .map(|(k, v)| {
                CreatableTopicConfig::default()
                    .with_name(str_bytes(k))
                    .with_value(Some(str_bytes(v)))
            })
            .collect();
        let topic = CreatableTopic::default()
            .with_name(TopicName(str_bytes(name)))
            .with_num_partitions(partitions)
            .with_replication_factor(-1)
            .with_configs(configs);
        let request = CreateTopicsRequest::default()
            .with_topics(vec![topic])
            .with_timeout_ms(30_000);
        let response = self.send(&request, 7).await?;
        let result = response
            .topics
            .first()
            .ok_or_else(|| anyhow!("empty CreateTopics response"))?;
        check(result.error_code)
    }

    /// Raises a topic's partition count to `count` (Strand places the new partitions).
    pub async fn create_partitions(&mut self, name: &str, count: i32) -> Result<()> {
        let topic = create_partitions_request::CreatePartitionsTopic::default()
            .with_name(TopicName(str_bytes(name)))
            .with_count(count);
        let request = CreatePartitionsRequest::default()
            .with_topics(vec![topic])
            .with_timeout_ms(30_000);
        let response = self.send(&request, 3).await?;
        let result = response
            .results
            .first()
            .ok_or_else(|| anyhow!("empty CreatePartitions response"))?;
        check(result.error_code)
    }

    /// Deletes a topic by name.
    pub async fn delete_topic(&mut self, name: &str) -> Result<()> {
        let request = DeleteTopicsRequest::default()
            .with_topic_names(vec![TopicName(str_bytes(name))])
            .with_timeout_ms(30_000);
        let response = self.send(&request, 5).await?;
        let result = response
            .responses
            .first()
            .ok_or_else(|| anyhow!("empty DeleteTopics response"))?;
        check(result.error_code)
    }

    /// Produces one encoded batch; returns its base offset (None for acks=0).
    pub async fn produce_batch(
        &mut self,
        topic: &str,
        partition: i32,
        batch: Bytes,
        acks: i16,
    ) -> Result<Option<i64>> {
        self.produce_batch_in(topic, partition, batch, acks, None)
            .await
    }

    /// [`Client::produce_batch`] by a transactional producer (`transactional_id`), whose
    /// batch is transactional.
    pub async fn produce_batch_in(
        &mut self,
        topic: &str,
        partition: i32,
        batch: Bytes,
        acks: i16,
        transactional_id: Option<&str>,
    ) -> Result<Option<i64>> {
        self.produce_batch_at(topic, partition, batch, acks, transactional_id, 9)
            .await
    }

    /// [`Client::produce_batch_in`] at Produce `version` (3..=12; 13 names topics by id).
    /// A transactional batch at v12 is a transaction version 2 producer's: the leader adds
    /// the partition to the transaction itself (KIP-890 part 2), no AddPartitionsToTxn.
    pub async fn produce_batch_at(
        &mut self,
        topic: &str,
        partition: i32,
        batch: Bytes,
        acks: i16,
        transactional_id: Option<&str>,
        version: i16,
    ) -> Result<Option<i64>> {
        assert!(
            (3..=12).contains(&version),
            "Produce v{version}: this client names topics, v3..=12"
        );
        let data = PartitionProduceData::default()
            .with_index(partition)
            .with_records(Some(batch));
        let topic_data = TopicProduceData::default()
            .with_name(TopicName(str_bytes(topic)))
            .with_partition_data(vec![data]);
        let request = ProduceRequest::default()
            .with_transactional_id(transactional_id.map(|t| TransactionalId(str_bytes(t))))
            .with_acks(acks)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![topic_data]);
        if acks == 0 {
            self.write_request(&request, version).await?;
            return Ok(None);
        }
        let response = self.send(&request, version).await?;
        let p = response
            .responses
            .first()
            .and_then(|t| t.partition_responses.first())
            .ok_or_else(|| anyhow!("empty Produce response"))?;
        check(p.error_code)?;
        Ok(Some(p.base_offset))
    }

    /// A producer id and epoch for an idempotent (or, with an id, transactional) producer.
    pub async fn init_producer_id(
        &mut self,
        transactional_id: Option<&str>,
        transaction_timeout_ms: i32,
    ) -> Result<(i64, i16)> {
        let request = InitProducerIdRequest::default()
            .with_transactional_id(transactional_id.map(|t| TransactionalId(str_bytes(t))))
            .with_transaction_timeout_ms(transaction_timeout_ms)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        let response = self.send(&request, 4).await?;
        check(response.error_code)?;
        Ok((response.producer_id.0, response.producer_epoch))
    }

    /// WriteTxnMarkers (one marker): the error of each (topic, partition), in order.
    pub async fn write_txn_markers(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        coordinator_epoch: i32,
        partitions: &[(String, i32)],
    ) -> Result<Vec<((String, i32), Option<ResponseError>)>> {
        use write_txn_markers_request::{WritableTxnMarker, WritableTxnMarkerTopic};
        let topics = by_topic(partitions, |name, ps| {
            WritableTxnMarkerTopic::default()
                .with_name(name)
                .with_partition_indexes(ps)
        });
        let marker = WritableTxnMarker::default()
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(producer_epoch)
            .with_transaction_result(commit)
            .with_coordinator_epoch(coordinator_epoch)
            .with_topics(topics);
        let request = WriteTxnMarkersRequest::default().with_markers(vec![marker]);
        let response = self.send(&request, 1).await?;
        let mut out = Vec::new();
        for marker in &response.markers {
            for topic in &marker.topics {
                for p in &topic.partitions {
                    let error = optional_error(p.error_code);
                    out.push(((topic.name.0.to_string(), p.partition_index), error));
                }
            }
        }
        Ok(out)
    }

    /// AddPartitionsToTxn v5 as a partition leader sends it to a transaction
    /// coordinator (KIP-890; each transaction `verify_only` or not): per transactional
    /// id, the error of each (topic, partition). A request-level error fails the call.
    pub async fn verify_txn_partitions(
        &mut self,
        transactions: &[TxnToVerify],
    ) -> Result<Vec<(String, Vec<((String, i32), Option<ResponseError>)>)>> {
        use add_partitions_to_txn_request::AddPartitionsToTxnTransaction;
        let transactions = transactions
            .iter()
            .map(|t| {
                AddPartitionsToTxnTransaction::default()
                    .with_transactional_id(TransactionalId(str_bytes(&t.transactional_id)))
                    .with_producer_id(ProducerId(t.producer.0))
                    .with_producer_epoch(t.producer.1)
                    .with_verify_only(t.verify_only)
                    .with_topics(txn_topics(&t.partitions))
            })
            .collect();
        let request = AddPartitionsToTxnRequest::default().with_transactions(transactions);
        let response = self.send(&request, 5).await?;
        check(response.error_code)?;
        Ok(response
            .results_by_transaction
            .iter()
            .map(|t| {
                let partitions = t
                    .topic_results
                    .iter()
                    .flat_map(|topic| {
                        topic.results_by_partition.iter().map(|p| {
                            let tp = (topic.name.0.to_string(), p.partition_index);
                            (tp, optional_error(p.partition_error_code))
                        })
                    })
                    .collect();
                (t.transactional_id.0.to_string(), partitions)
            })
            .collect())
    }

    /// ListTransactions (v1) with its filters (empty: none; `duration_filter_ms` -1:
    /// none).
    pub async fn list_transactions(
        &mut self,
        states: &[&str],
        producer_ids: &[i64],
        duration_filter_ms: i64,
    ) -> Result<ListTransactionsResponse> {
        let request = ListTransactionsRequest::default()
            .with_state_filters(states.iter().map(|s| str_bytes(s)).collect())
            .with_producer_id_filters(producer_ids.iter().map(|p| ProducerId(*p)).collect())
            .with_duration_filter(duration_filter_ms);
        self.send(&request, 1).await
    }

    /// DescribeTransactions (v0).
    pub async fn describe_transactions(
        &mut self,
        transactional_ids: &[&str],
    ) -> Result<DescribeTransactionsResponse> {
        let request = DescribeTransactionsRequest::default().with_transactional_ids(
            transactional_ids
                .iter()
                .map(|t| TransactionalId(str_bytes(t)))
                .collect(),
        );
        self.send(&request, 0).await
    }

    /// DescribeProducers (v0) of the given partitions.
    pub async fn describe_producers(
        &mut self,
        partitions: &[(String, i32)],
    ) -> Result<DescribeProducersResponse> {
        use describe_producers_request::TopicRequest;
        let topics = by_topic(partitions, |name, ps| {
            TopicRequest::default()
                .with_name(name)
                .with_partition_indexes(ps)
        });
        let request = DescribeProducersRequest::default().with_topics(topics);
        self.send(&request, 0).await
    }

    /// Produces key/value records as one batch.
    pub async fn produce(
        &mut self,
        topic: &str,
        partition: i32,
        records: &[(Option<Bytes>, Option<Bytes>)],
        timestamp_ms: i64,
        acks: i16,
    ) -> Result<Option<i64>> {
        let batch = encode_batch(records, timestamp_ms, Compression::None)?;
        self.produce_batch(topic, partition, batch, acks).await
    }

    pub async fn fetch(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_wait_ms: i32,
        max_bytes: i32,
    ) -> Result<FetchedPartition> {
        let request = fetch_request(topic, partition, offset, -1, max_wait_ms, max_bytes);
        let p = self.fetch_one(&request).await?;
        let (records, batches) = match &p.records {
            Some(bytes) if p.error_code == 0 => (decode_records(bytes)?, batch_extents(bytes)),
            _ => (Vec::new(), Vec::new()),
        };
        Ok(FetchedPartition {
            error: ResponseError::try_from_code(p.error_code),
            high_watermark: p.high_watermark,
            log_start_offset: p.log_start_offset,
            records,
            batches,
        })
    }

    /// A read_committed Fetch (isolation_level 1) of one partition from its leader of
    /// `current_leader_epoch` (-1: any), its records filtered as a Kafka consumer does.
    pub async fn fetch_read_committed(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        current_leader_epoch: i32,
        max_bytes: i32,
    ) -> Result<ReadCommittedPartition> {
        let request = fetch_request(topic, partition, offset, current_leader_epoch, 0, max_bytes)
            .with_isolation_level(1);
        let p = self.fetch_one(&request).await?;
        let aborted: Vec<(i64, i64)> = p
            .aborted_transactions
            .iter()
            .flatten()
            .map(|a| (a.producer_id.0, a.first_offset))
            .collect();
        let (records, next_offset) = match &p.records {
            Some(bytes) if p.error_code == 0 => read_committed_records(bytes, &aborted)?,
            _ => (Vec::new(), None),
        };
        Ok(ReadCommittedPartition {
            error: ResponseError::try_from_code(p.error_code),
            high_watermark: p.high_watermark,
            last_stable_offset: p.last_stable_offset,
            log_start_offset: p.log_start_offset,
            records,
            next_offset,
        })
    }

    /// Sends a Fetch (v12) of one partition; its partition's answer.
    async fn fetch_one(&mut self, request: &FetchRequest) -> Result<fetch_response::PartitionData> {
        let response = self.send(request, 12).await?;
        check(response.error_code)?;
        response
            .responses
            .into_iter()
            .next()
            .and_then(|t| t.partitions.into_iter().next())
            .ok_or_else(|| anyhow!("empty Fetch response"))
    }

    /// AddOffsetsToTxn (v3): the group's offsets partition joins the transaction.
    pub async fn add_offsets_to_txn(
        &mut self,
        transactional_id: &str,
        producer: (i64, i16),
        group_id: &str,
    ) -> Result<()> {
        let request = AddOffsetsToTxnRequest::default()
            .with_transactional_id(TransactionalId(str_bytes(transactional_id)))
            .with_producer_id(ProducerId(producer.0))
            .with_producer_epoch(producer.1)
            .with_group_id(GroupId(str_bytes(group_id)));
        let response = self.send(&request, 3).await?;
        check(response.error_code)
    }

    /// TxnOffsetCommit (v3, no member fields) of `(topic, partition, offset)`s, asked of
    /// the group's coordinator: the first error, if any.
    pub async fn txn_offset_commit(
        &mut self,
        transactional_id: &str,
        producer: (i64, i16),
        group_id: &str,
        offsets: &[(&str, i32, i64)],
    ) -> Result<()> {
        self.txn_offset_commit_at(transactional_id, producer, group_id, offsets, 3)
            .await
    }

    /// [`Client::txn_offset_commit`] at `version` (3..=5). At v5 (transaction version 2)
    /// the group coordinator adds the group's offsets partition to the transaction
    /// itself: no AddOffsetsToTxn before it.
    pub async fn txn_offset_commit_at(
        &mut self,
        transactional_id: &str,
        producer: (i64, i16),
        group_id: &str,
        offsets: &[(&str, i32, i64)],
        version: i16,
    ) -> Result<()> {
        use txn_offset_commit_request::{
            TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
        };
        assert!(
            (3..=5).contains(&version),
            "TxnOffsetCommit v{version}: this client sends v3..=5"
        );
        let mut topics: Vec<TxnOffsetCommitRequestTopic> = Vec::new();
        for (topic, partition, offset) in offsets {
            let p = TxnOffsetCommitRequestPartition::default()
                .with_partition_index(*partition)
                .with_committed_offset(*offset);
            match topics.iter_mut().find(|t| t.name.0.as_str() == *topic) {
                Some(t) => t.partitions.push(p),
                None => topics.push(
                    TxnOffsetCommitRequestTopic::default()
                        .with_name(TopicName(str_bytes(topic)))
                        .with_partitions(vec![p]),
                ),
            }
        }
        let request = TxnOffsetCommitRequest::default()
            .with_transactional_id(TransactionalId(str_bytes(transactional_id)))
            .with_group_id(GroupId(str_bytes(group_id)))
            .with_producer_id(ProducerId(producer.0))
            .with_producer_epoch(producer.1)
            .with_topics(topics);
        let response = self.send(&request, version).await?;
        for topic in &response.topics {
            for p in &topic.partitions {
                check(p.error_code)?;
            }
        }
        Ok(())
    }

    /// ListOffsets for one partition: -1 latest, -2 earliest, or a timestamp.
    pub async fn list_offset(
        &mut self,
        topic: &str,
        partition: i32,
        timestamp: i64,
    ) -> Result<i64> {
        let p = ListOffsetsPartition::default()
            .with_partition_index(partition)
            .with_timestamp(timestamp)
            .with_current_leader_epoch(-1);
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(TopicName(str_bytes(topic)))
                .with_partitions(vec![p])]);
        let response = self.send(&request, 7).await?;
        let p = response
            .topics
            .first()
            .and_then(|t| t.partitions.first())
            .ok_or_else(|| anyhow!("empty ListOffsets response"))?;
        check(p.error_code)?;
        Ok(p.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::batch::patch_header;
    use crate::log::txn_marker::{build_marker_batch, TxnMarker};

    fn at(batch: Bytes, base_offset: i64) -> Vec<u8> {
        let mut bytes = batch.to_vec();
        patch_header(&mut bytes, base_offset, 0);
        bytes
    }

    fn txn_batch(producer_id: i64, value: &str) -> Bytes {
        let fields = ProducerFields {
            producer_id,
            producer_epoch: 0,
            base_sequence: 0,
            transactional: true,
        };
        let records = [(None, Some(Bytes::from(value.to_string())), 0)];
        encode_producer_records(&records, Compression::None, Some(fields)).unwrap()
    }

    #[test]
    fn read_committed_leaves_out_aborted_transactions_until_their_marker() {
        let abort = TxnMarker {
            commit: false,
            coordinator_epoch: 0,
        };
        let commit = TxnMarker {
            commit: true,
            coordinator_epoch: 0,
        };
        let mut bytes = Vec::new();
        bytes.extend(at(txn_batch(7, "aborted"), 0));
        bytes.extend(at(txn_batch(8, "committed"), 1));
        bytes.extend(at(build_marker_batch(7, 0, abort, 0), 2));
        bytes.extend(at(build_marker_batch(8, 0, commit, 0), 3));
        bytes.extend(at(txn_batch(7, "next"), 4));
        let bytes = Bytes::from(bytes);
        let values = |records: Vec<SimpleRecord>| -> Vec<Bytes> {
            records.into_iter().filter_map(|r| r.value).collect()
        };
        let (records, next) = read_committed_records(&bytes, &[(7, 0)]).unwrap();
        assert_eq!(values(records), vec!["committed", "next"]);
        assert_eq!(next, Some(5));
        // Without the aborted list, a consumer keeps everything.
        let (records, _) = read_committed_records(&bytes, &[]).unwrap();
        assert_eq!(values(records), vec!["aborted", "committed", "next"]);
    }
}
