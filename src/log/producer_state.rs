//! Producer state of one partition: for each producer id, its epoch and the sequence
//! numbers and offsets of its last five batches (Kafka's `ProducerStateManager`).
//!
//! It is a function of the log: every replica applies each batch it appends, in offset
//! order, with no checks (the leader checked before proposing), so replicas that hold the
//! same log hold the same state, and a new leader knows what the old one accepted. The
//! leader checks a batch against the state with [`ProducerEntry::check`]:
//! - a batch equal (same epoch, first and last sequence) to one of the last five is a
//!   duplicate: the producer is answered with the original's offsets (a retry);
//! - otherwise its first sequence must follow the producer's last one, or be 0 with a
//!   newer epoch (a KIP-360 epoch bump); a producer the state does not know may start at
//!   any sequence (its batches were removed by retention or it expired);
//! - an older epoch is refused (a zombie producer).
//!
//! Snapshots ([`ProducerStateMap::encode`]) carry the state as of an offset: the log
//! writes one at each segment roll, so that opening, truncating or a follower installing
//! a Raft snapshot rebuilds from the last one instead of from the log start.
//!
//! Plain Rust: no I/O, no clock (time comes as `now_ms`), deterministic iteration.

use super::batch::BatchHeader;
use super::txn_marker::TxnMarker;
use kafka_protocol::ResponseError;
use prost::Message;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// How many of a producer's batches are remembered for duplicate detection: a Kafka
/// idempotent producer keeps at most five requests in flight per partition.
pub const SEQUENCE_WINDOW_BATCHES: usize = 5;

/// `producer.id.expiration.ms`: Kafka's default, one day.
pub const DEFAULT_PRODUCER_ID_EXPIRATION_MS: i64 = 24 * 60 * 60 * 1000;

/// Largest snapshot accepted when reading one back (a corrupt length never allocates more).
pub const SNAPSHOT_MAX_BYTES: usize = 64 * 1024 * 1024;

/// One of a producer's recent batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMetadata {
    pub first_sequence: i32,
    pub last_sequence: i32,
    pub base_offset: i64,
    pub last_offset: i64,
}

/// What the partition knows about one producer id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerEntry {
    pub producer_epoch: i16,
    /// The producer's last batches of `producer_epoch`, oldest first (at most
    /// [`SEQUENCE_WINDOW_BATCHES`]); empty after an epoch bump by a transaction marker.
    pub batches: VecDeque<BatchMetadata>,
    /// The largest batch timestamp seen: the producer expires this long after it.
    pub last_timestamp_ms: i64,
    /// Epoch of the transaction coordinator that wrote the producer's last marker (-1: none).
    pub coordinator_epoch: i32,
    /// First offset of the producer's open transaction in this partition, if any.
    pub current_txn_first_offset: Option<i64>,
}

/// The leader's verdict on a batch from an idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// New: append it.
    Append,
    /// A retry of this batch, already in the log: answer with its offsets.
    Duplicate(BatchMetadata),
}

/// Why the leader refuses a producer's batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    #[error("producer epoch {got} is older than the current epoch {current}")]
    StaleEpoch { current: i16, got: i16 },
    #[error("out of order sequence number: expected {expected}, got {got}")]
    OutOfOrder { expected: i32, got: i32 },
    #[error("a batch from an idempotent producer must carry a sequence number")]
    NoSequence,
    #[error("a non-transactional batch from a producer whose transaction is open here")]
    NotTransactional,
}

impl SequenceError {
    pub fn kafka_error(&self) -> ResponseError {
        match self {
            SequenceError::StaleEpoch { .. } => ResponseError::InvalidProducerEpoch,
            SequenceError::OutOfOrder { .. } => ResponseError::OutOfOrderSequenceNumber,
            SequenceError::NoSequence => ResponseError::InvalidRecord,
            SequenceError::NotTransactional => ResponseError::InvalidTxnState,
        }
    }
}

/// Why the leader refuses a transaction marker (WriteTxnMarkers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MarkerError {
    #[error("marker producer epoch {got} is older than the current epoch {current}")]
    StaleEpoch { current: i16, got: i16 },
    #[error("coordinator epoch {got} is older than the last marker's {last}")]
    CoordinatorFenced { last: i32, got: i32 },
}

impl MarkerError {
    pub fn kafka_error(&self) -> ResponseError {
        match self {
            MarkerError::StaleEpoch { .. } => ResponseError::InvalidProducerEpoch,
            MarkerError::CoordinatorFenced { .. } => ResponseError::TransactionCoordinatorFenced,
        }
    }
}

/// The sequence number of a batch's last record: sequences wrap from `i32::MAX` to 0.
pub fn last_sequence(header: &BatchHeader) -> i32 {
    let delta = header.last_offset_delta.max(0);
    if header.base_sequence > i32::MAX - delta {
        header.base_sequence - (i32::MAX - delta) - 1
    } else {
        header.base_sequence + delta
    }
}

/// Whether `next` is the sequence right after `last`.
fn in_sequence(last: i32, next: i32) -> bool {
    (last == i32::MAX && next == 0) || (last < i32::MAX && next == last + 1)
}

impl ProducerEntry {
    /// A producer known by its epoch only (no batch yet).
    pub fn empty(producer_epoch: i16) -> ProducerEntry {
        ProducerEntry {
            producer_epoch,
            batches: VecDeque::new(),
            last_timestamp_ms: -1,
            coordinator_epoch: -1,
            current_txn_first_offset: None,
        }
    }

    /// The leader's check of a data batch from this producer (`entry` is what the state
    /// knows of its producer id, if anything).
    pub fn check(
        entry: Option<&ProducerEntry>,
        header: &BatchHeader,
    ) -> Result<Verdict, SequenceError> {
        debug_assert!(header.producer_id >= 0 && !header.is_control());
        if header.base_sequence < 0 {
            return Err(SequenceError::NoSequence);
        }
        // KIP-360: a producer this partition does not know may start anywhere.
        let Some(entry) = entry else {
            return Ok(Verdict::Append);
        };
        let epoch = header.producer_epoch;
        // Planted bug: a zombie producer's batch (an older epoch) is appended.
        if epoch < entry.producer_epoch && crate::planted::on("stale-epoch-produce-accepted") {
            return Ok(Verdict::Append);
        }
        if epoch < entry.producer_epoch {
            return Err(SequenceError::StaleEpoch {
                current: entry.producer_epoch,
                got: epoch,
            });
        }
        let first = header.base_sequence;
        if epoch > entry.producer_epoch {
            // A new epoch starts its sequences again at 0.
            return if first == 0 {
                Ok(Verdict::Append)
            } else {
                Err(SequenceError::OutOfOrder {
                    expected: 0,
                    got: first,
                })
            };
        }
        let last = last_sequence(header);
        if let Some(original) = entry
            .batches
            .iter()
            .find(|b| b.first_sequence == first && b.last_sequence == last)
        {
            return Ok(Verdict::Duplicate(*original));
        }
        match entry.batches.back() {
            Some(latest) if !in_sequence(latest.last_sequence, first) => {
                Err(SequenceError::OutOfOrder {
                    expected: latest.last_sequence.wrapping_add(1) & i32::MAX,
                    got: first,
                })
            }
            // As Kafka: while the producer's transaction is open here, every batch it
            // writes belongs to it (INVALID_TXN_STATE).
            _ if !header.is_transactional() && entry.current_txn_first_offset.is_some() => {
                Err(SequenceError::NotTransactional)
            }
            _ => Ok(Verdict::Append),
        }
    }

    /// The leader's check of a transaction marker for this producer (`entry`: what the
    /// state knows of it): a zombie producer's epoch, or a marker from a coordinator older
    /// than the one that wrote the producer's last marker, is fenced. A producer the
    /// partition does not know takes any marker (its transaction may hold no data here).
    pub fn check_marker(
        entry: Option<&ProducerEntry>,
        header: &BatchHeader,
        marker: TxnMarker,
    ) -> Result<(), MarkerError> {
        debug_assert!(header.producer_id >= 0 && header.is_control());
        let Some(entry) = entry else {
            return Ok(());
        };
        if header.producer_epoch < entry.producer_epoch {
            return Err(MarkerError::StaleEpoch {
                current: entry.producer_epoch,
                got: header.producer_epoch,
            });
        }
        if marker.coordinator_epoch < entry.coordinator_epoch {
            return Err(MarkerError::CoordinatorFenced {
                last: entry.coordinator_epoch,
                got: marker.coordinator_epoch,
            });
        }
        Ok(())
    }

    /// Applies a data batch of this producer (offsets assigned).
    pub fn apply_data(&mut self, header: &BatchHeader) {
        if header.producer_epoch != self.producer_epoch {
            self.producer_epoch = header.producer_epoch;
            self.batches.clear();
        }
        if header.base_sequence >= 0 {
            self.batches.push_back(BatchMetadata {
                first_sequence: header.base_sequence,
                last_sequence: last_sequence(header),
                base_offset: header.base_offset,
                last_offset: header.last_offset(),
            });
            while self.batches.len() > SEQUENCE_WINDOW_BATCHES {
                self.batches.pop_front();
            }
        }
        self.last_timestamp_ms = self.last_timestamp_ms.max(header.max_timestamp);
        if header.is_transactional() && self.current_txn_first_offset.is_none() {
            self.current_txn_first_offset = Some(header.base_offset);
        }
    }

    /// Applies a transaction marker (a control batch) of this producer: the transaction
    /// ends, and a newer epoch replaces the old one.
    pub fn apply_marker(&mut self, header: &BatchHeader, coordinator_epoch: i32) {
        if header.producer_epoch > self.producer_epoch {
            self.producer_epoch = header.producer_epoch;
            self.batches.clear();
        }
        self.coordinator_epoch = self.coordinator_epoch.max(coordinator_epoch);
        self.current_txn_first_offset = None;
        self.last_timestamp_ms = self.last_timestamp_ms.max(header.max_timestamp);
    }
}

/// A transaction that a marker ended in this partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompletedTxn {
    pub producer_id: i64,
    /// The transaction's first offset (the marker's own offset when it held no data here).
    pub first_offset: i64,
    /// The marker's offset.
    pub last_offset: i64,
    pub commit: bool,
}

/// The producer state of a partition as of `end_offset` (every batch below it applied).
///
/// It also keeps what the last stable offset needs, cheaply: the first offsets of the
/// open transactions (ordered), and the transactions ended by markers that may not be
/// committed yet (by marker offset). A transaction stays unstable until its marker is
/// below the high watermark: a new leader without the marker would see it open again,
/// and the LSO must never go back.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProducerStateMap {
    producers: BTreeMap<i64, ProducerEntry>,
    end_offset: i64,
    /// (first offset, producer id) of every open transaction.
    open_txns: BTreeSet<(i64, i64)>,
    /// Marker offset → first offset of transactions ended by a marker at or past the
    /// high watermark last passed to [`ProducerStateMap::prune_replicated`].
    unreplicated_txns: BTreeMap<i64, i64>,
}

impl ProducerStateMap {
    /// The state of a log that starts (empty) at `offset`.
    pub fn empty_at(offset: i64) -> ProducerStateMap {
        ProducerStateMap {
            end_offset: offset,
            ..Default::default()
        }
    }

    /// Offset after the last batch applied.
    pub fn end_offset(&self) -> i64 {
        self.end_offset
    }

    pub fn entry(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    /// Every known producer, by producer id.
    pub fn producers(&self) -> impl Iterator<Item = (i64, &ProducerEntry)> {
        self.producers.iter().map(|(id, e)| (*id, e))
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Applies the next batch of the log (its offsets assigned); a control batch of a
    /// producer is taken for an ABORT marker of an unknown coordinator epoch (see
    /// [`ProducerStateMap::apply_batch`]).
    pub fn apply(&mut self, header: &BatchHeader) -> Option<CompletedTxn> {
        self.apply_batch(header, None)
    }

    /// Applies the next batch of the log (its offsets assigned), with what its control
    /// record says when it is a transaction marker ([`super::txn_marker::parse_marker`]).
    /// Batches already covered (below `end_offset`) are skipped, so replaying from a
    /// snapshot is safe. Returns the transaction a marker ended.
    pub fn apply_batch(
        &mut self,
        header: &BatchHeader,
        marker: Option<TxnMarker>,
    ) -> Option<CompletedTxn> {
        if header.base_offset < self.end_offset {
            return None;
        }
        self.end_offset = header.next_offset();
        if header.producer_id < 0 {
            return None;
        }
        let producer_id = header.producer_id;
        let entry = self
            .producers
            .entry(producer_id)
            .or_insert_with(|| ProducerEntry::empty(header.producer_epoch));
        let open_before = entry.current_txn_first_offset;
        if !header.is_control() {
            entry.apply_data(header);
            if let (None, Some(first)) = (open_before, entry.current_txn_first_offset) {
                assert!(self.open_txns.insert((first, producer_id)));
            }
            return None;
        }
        // A control batch of a producer is a marker; one that cannot be read (never
        // written by a leader) ends the transaction as an abort: nothing is exposed.
        let marker = marker.unwrap_or(TxnMarker {
            commit: false,
            coordinator_epoch: -1,
        });
        entry.apply_marker(header, marker.coordinator_epoch);
        assert!(entry.current_txn_first_offset.is_none());
        let first_offset = match open_before {
            Some(first) => {
                assert!(self.open_txns.remove(&(first, producer_id)));
                first
            }
            None => header.base_offset,
        };
        assert!(first_offset <= header.base_offset);
        self.unreplicated_txns
            .insert(header.base_offset, first_offset);
        Some(CompletedTxn {
            producer_id,
            first_offset,
            last_offset: header.base_offset,
            commit: marker.commit,
        })
    }

    /// The first offset of the oldest open transaction, if any.
    pub fn first_open_txn_offset(&self) -> Option<i64> {
        self.open_txns.first().map(|(first, _)| *first)
    }

    /// The first offset a `read_committed` consumer may not read yet, given the high
    /// watermark: the oldest open transaction, or one whose marker is not committed.
    pub fn first_unstable_offset(&self, high_watermark: i64) -> Option<i64> {
        let unreplicated = self
            .unreplicated_txns
            .range(high_watermark..)
            .map(|(_, first)| *first)
            .min();
        match (self.first_open_txn_offset(), unreplicated) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Forgets the ended transactions whose markers are below `high_watermark`
    /// (committed: every later leader has them). Never changes
    /// [`ProducerStateMap::first_unstable_offset`] for a high watermark at or above it.
    pub fn prune_replicated(&mut self, high_watermark: i64) {
        self.unreplicated_txns = self.unreplicated_txns.split_off(&high_watermark);
    }

    /// How many ended transactions wait for their markers to commit.
    pub fn unreplicated_txn_count(&self) -> usize {
        self.unreplicated_txns.len()
    }

    /// Moves the end past offsets that carry no batch (a log reset to a later start).
    pub fn advance_to(&mut self, offset: i64) {
        self.end_offset = self.end_offset.max(offset);
    }

    /// The same producers with the end moved back (only the planted bug
    /// `producer-state-kept-on-truncation` does this).
    #[cfg(feature = "planted-bugs")]
    pub fn rewound_to(mut self, offset: i64) -> ProducerStateMap {
        self.end_offset = offset;
        self
    }

    /// Forgets producers silent for `expiration_ms` (by their batches' timestamps) that
    /// have no open transaction. Returns how many went.
    pub fn remove_expired(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers.retain(|_, e| {
            e.current_txn_first_offset.is_some()
                || now_ms.saturating_sub(e.last_timestamp_ms) < expiration_ms
        });
        before - self.producers.len()
    }

    /// The snapshot bytes: a CRC32C (big-endian) of the encoded state, then the state.
    pub fn encode(&self) -> Vec<u8> {
        let snapshot = ProducerSnapshot {
            end_offset: self.end_offset,
            unreplicated_txns: self
                .unreplicated_txns
                .iter()
                .map(|(last, first)| SnapshotTxn {
                    first_offset: *first,
                    last_offset: *last,
                })
                .collect(),
            producers: self
                .producers
                .iter()
                .map(|(id, e)| SnapshotProducer {
                    producer_id: *id,
                    producer_epoch: e.producer_epoch as i32,
                    last_timestamp_ms: e.last_timestamp_ms,
                    coordinator_epoch: e.coordinator_epoch,
                    current_txn_first_offset: e.current_txn_first_offset,
                    batches: e
                        .batches
                        .iter()
                        .map(|b| SnapshotBatch {
                            first_sequence: b.first_sequence,
                            last_sequence: b.last_sequence,
                            base_offset: b.base_offset,
                            last_offset: b.last_offset,
                        })
                        .collect(),
                })
                .collect(),
        };
        let body = snapshot.encode_to_vec();
        let mut out = Vec::with_capacity(body.len() + 4);
        out.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Reads snapshot bytes back; `None` for anything torn, corrupt or malformed.
    pub fn decode(bytes: &[u8]) -> Option<ProducerStateMap> {
        if bytes.len() < 4 || bytes.len() > SNAPSHOT_MAX_BYTES {
            return None;
        }
        let (crc, body) = bytes.split_at(4);
        if crc32c::crc32c(body).to_be_bytes() != crc {
            return None;
        }
        let snapshot = ProducerSnapshot::decode(body).ok()?;
        let mut producers = BTreeMap::new();
        for p in snapshot.producers {
            let producer_epoch = i16::try_from(p.producer_epoch).ok()?;
            if p.batches.len() > SEQUENCE_WINDOW_BATCHES {
                return None;
            }
            let batches = p
                .batches
                .iter()
                .map(|b| BatchMetadata {
                    first_sequence: b.first_sequence,
                    last_sequence: b.last_sequence,
                    base_offset: b.base_offset,
                    last_offset: b.last_offset,
                })
                .collect();
            let entry = ProducerEntry {
                producer_epoch,
                batches,
                last_timestamp_ms: p.last_timestamp_ms,
                coordinator_epoch: p.coordinator_epoch,
                current_txn_first_offset: p.current_txn_first_offset,
            };
            producers.insert(p.producer_id, entry);
        }
        let open_txns = producers
            .iter()
            .filter_map(|(id, e)| Some((e.current_txn_first_offset?, *id)))
            .collect();
        let mut unreplicated_txns = BTreeMap::new();
        for t in snapshot.unreplicated_txns {
            if t.first_offset > t.last_offset || t.last_offset >= snapshot.end_offset {
                return None;
            }
            unreplicated_txns.insert(t.last_offset, t.first_offset);
        }
        Some(ProducerStateMap {
            producers,
            end_offset: snapshot.end_offset,
            open_txns,
            unreplicated_txns,
        })
    }
}

// The snapshot format; the tags are on disk (and in Raft snapshots): never renumber one.
#[derive(Clone, PartialEq, prost::Message)]
struct ProducerSnapshot {
    #[prost(int64, tag = "1")]
    end_offset: i64,
    #[prost(message, repeated, tag = "2")]
    producers: Vec<SnapshotProducer>,
    #[prost(message, repeated, tag = "3")]
    unreplicated_txns: Vec<SnapshotTxn>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SnapshotTxn {
    #[prost(int64, tag = "1")]
    first_offset: i64,
    #[prost(int64, tag = "2")]
    last_offset: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SnapshotProducer {
    #[prost(int64, tag = "1")]
    producer_id: i64,
    #[prost(int32, tag = "2")]
    producer_epoch: i32,
    #[prost(int64, tag = "3")]
    last_timestamp_ms: i64,
    #[prost(int32, tag = "4")]
    coordinator_epoch: i32,
    #[prost(int64, optional, tag = "5")]
    current_txn_first_offset: Option<i64>,
    #[prost(message, repeated, tag = "6")]
    batches: Vec<SnapshotBatch>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SnapshotBatch {
    #[prost(int32, tag = "1")]
    first_sequence: i32,
    #[prost(int32, tag = "2")]
    last_sequence: i32,
    #[prost(int64, tag = "3")]
    base_offset: i64,
    #[prost(int64, tag = "4")]
    last_offset: i64,
}

#[cfg(test)]
mod tests;
