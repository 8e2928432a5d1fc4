//! The transaction coordinator, as a state machine.
//!
//! Each transactional id has one [`TxnMetadata`]: its producer id and epoch, the
//! partitions of its ongoing transaction and a state from Kafka's table
//! ([`TxnState`]): `Empty` → `Ongoing` (partitions added) → `PrepareCommit` /
//! `PrepareAbort` (EndTxn: the decision is persisted, the client answered, markers go to
//! every partition) → `CompleteCommit` / `CompleteAbort` (every marker written).
//! `PrepareEpochFence` (an ongoing transaction is aborted with a bumped epoch, fencing
//! its producer) and `Dead` (an expired transactional id) are only passed through,
//! never stored. Every move is checked against Kafka's table of legal moves.
//!
//! The coordinator changes its state at once and returns what the caller must do as
//! ordered [`Effect`]s; the caller processes them in order, and nothing that follows an
//! [`Effect::Persist`] (a later effect, or the answer a call returns) is released before
//! that record is durable, as the group coordinator's records are. A failed write fails
//! every later one of that leadership and the partition is loaded again (its records
//! replayed), so state that was never persisted is never served. Because the answer a
//! call returns goes out only after every record queued before it, an answer never
//! shows state a failover could lose (KIP-890 part 1 depends on it: a partition
//! verified as part of a transaction must survive in the coordinator's log).
//!
//! What Kafka clients rely on, and this follows:
//! - KIP-98: InitProducerId fences older epochs; an ongoing transaction is aborted
//!   first (the client gets CONCURRENT_TRANSACTIONS and retries).
//! - KIP-360: a producer may recover with its current producer id and epoch (the epoch
//!   is bumped), and a retried InitProducerId gets the epoch it was given.
//! - KIP-890 part 2 (EndTxn v5, "transaction version 2"): the epoch is bumped at every
//!   commit or abort and returned in the EndTxn answer, so nothing of an earlier
//!   transaction can join a later one; when the epoch is exhausted a new producer id is
//!   taken at the prepare and used from the completion on.
//! - KIP-664: DescribeTransactions and ListTransactions (with KIP-994's duration filter
//!   and KIP-1152's transactional id pattern).

use super::records::TxnRecord;
use kafka_protocol::ResponseError;
use std::collections::{BTreeMap, BTreeSet};

/// Kafka's `RecordBatch.NO_PRODUCER_ID` / `NO_PRODUCER_EPOCH`.
pub const NO_PRODUCER_ID: i64 = -1;
pub const NO_PRODUCER_EPOCH: i16 = -1;

/// The internal topic whose partitions hold consumer group offsets: AddOffsetsToTxn
/// adds one of them to the transaction.
pub const OFFSETS_TOPIC: &str = crate::group::host::OFFSETS_TOPIC;

/// Where producer ids come from: the broker allocates them in blocks through its
/// metadata quorum; an error (e.g. COORDINATOR_LOAD_IN_PROGRESS while a block is being
/// fetched) is answered to the client, which retries.
pub type ProducerIdSource<'a> = &'a mut dyn FnMut() -> Result<i64, ResponseError>;

#[derive(Debug, Clone)]
pub struct TxnConfig {
    /// `transaction.max.timeout.ms`: the longest transaction timeout a producer may ask.
    pub transaction_max_timeout_ms: i32,
    /// `transactional.id.expiration.ms`: an idle transactional id (no transaction in
    /// progress) is removed after this long without an update.
    pub transactional_id_expiration_ms: i64,
}

impl Default for TxnConfig {
    fn default() -> Self {
        // Kafka's defaults.
        TxnConfig {
            transaction_max_timeout_ms: 900_000,
            transactional_id_expiration_ms: 7 * 24 * 60 * 60 * 1000,
        }
    }
}

/// Kafka's TransactionState, with its ids (as in Kafka's transaction log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
    Dead,
    PrepareEpochFence,
}

impl TxnState {
    pub const ALL: [TxnState; 8] = [
        TxnState::Empty,
        TxnState::Ongoing,
        TxnState::PrepareCommit,
        TxnState::PrepareAbort,
        TxnState::CompleteCommit,
        TxnState::CompleteAbort,
        TxnState::Dead,
        TxnState::PrepareEpochFence,
    ];

    /// The state's id in Kafka's transaction log (and in ours).
    pub fn id(self) -> u32 {
        match self {
            TxnState::Empty => 0,
            TxnState::Ongoing => 1,
            TxnState::PrepareCommit => 2,
            TxnState::PrepareAbort => 3,
            TxnState::CompleteCommit => 4,
            TxnState::CompleteAbort => 5,
            TxnState::Dead => 6,
            TxnState::PrepareEpochFence => 7,
        }
    }

    pub fn from_id(id: u32) -> Option<TxnState> {
        TxnState::ALL.into_iter().find(|s| s.id() == id)
    }

    /// The name DescribeTransactions and ListTransactions report (and filter by).
    pub fn kafka_name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
            TxnState::Dead => "Dead",
            TxnState::PrepareEpochFence => "PrepareEpochFence",
        }
    }

    pub fn from_kafka_name(name: &str) -> Option<TxnState> {
        TxnState::ALL.into_iter().find(|s| s.kafka_name() == name)
    }

    /// Kafka's table of legal moves: whether a transaction in `previous` may move to
    /// `self`. (Transaction version 2 lets an abort start from Empty or Complete*: a
    /// client unsure of the server's state aborts, and the epoch is bumped.)
    pub fn can_follow(self, previous: TxnState) -> bool {
        use TxnState::*;
        match self {
            Empty => matches!(previous, Empty | CompleteCommit | CompleteAbort),
            Ongoing => matches!(previous, Ongoing | Empty | CompleteCommit | CompleteAbort),
            PrepareCommit => previous == Ongoing,
            PrepareAbort => matches!(
                previous,
                Ongoing | PrepareEpochFence | Empty | CompleteCommit | CompleteAbort
            ),
            CompleteCommit => previous == PrepareCommit,
            CompleteAbort => previous == PrepareAbort,
            Dead => matches!(previous, Empty | CompleteCommit | CompleteAbort),
            PrepareEpochFence => previous == Ongoing,
        }
    }

    /// Whether a transactional id in this state may expire (no transaction in flight).
    pub fn expiration_allowed(self) -> bool {
        matches!(
            self,
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
        )
    }

    /// Whether metadata in this state is ever persisted (the other two are passed
    /// through within one call).
    pub fn is_stored(self) -> bool {
        !matches!(self, TxnState::Dead | TxnState::PrepareEpochFence)
    }

    fn is_prepare(self) -> bool {
        matches!(self, TxnState::PrepareCommit | TxnState::PrepareAbort)
    }
}

/// How a transaction ends (the control marker written to its partitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TxnResult {
    Commit,
    Abort,
}

impl TxnResult {
    fn prepare_state(self) -> TxnState {
        match self {
            TxnResult::Commit => TxnState::PrepareCommit,
            TxnResult::Abort => TxnState::PrepareAbort,
        }
    }

    fn complete_state(self) -> TxnState {
        match self {
            TxnResult::Commit => TxnState::CompleteCommit,
            TxnResult::Abort => TxnState::CompleteAbort,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProducerIdAndEpoch {
    pub producer_id: i64,
    pub producer_epoch: i16,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: &str, partition: i32) -> TopicPartition {
        TopicPartition {
            topic: topic.to_string(),
            partition,
        }
    }
}

/// Kafka's `isEpochExhausted`: this epoch leaves no room for the bumps a transaction
/// needs, so the next one takes a new producer id.
pub fn epoch_exhausted(producer_epoch: i16) -> bool {
    producer_epoch >= i16::MAX - 1
}

/// One step up, never past `i16::MAX` (only a fence of an exhausted epoch reaches it;
/// the next InitProducerId then takes a new producer id).
fn bumped(producer_epoch: i16) -> i16 {
    producer_epoch.saturating_add(1)
}

/// What the coordinator knows of one transactional id; also the value of its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMetadata {
    pub producer_id: i64,
    /// The producer id before the last rotation (epoch exhausted), so a client retrying
    /// with it is recognised; NO_PRODUCER_ID if none.
    pub previous_producer_id: i64,
    /// Taken at a prepare (transaction version 2) whose bump exhausts the epoch: the
    /// producer id from the completion on. NO_PRODUCER_ID otherwise.
    pub next_producer_id: i64,
    pub producer_epoch: i16,
    /// The epoch before the last bump, so a retried call is recognised
    /// (NO_PRODUCER_EPOCH when a retry must not be accepted: a new producer fenced it).
    pub last_producer_epoch: i16,
    pub txn_timeout_ms: i32,
    pub state: TxnState,
    pub partitions: BTreeSet<TopicPartition>,
    /// When the transaction started (its first partition); -1 before any.
    pub txn_start_timestamp_ms: i64,
    pub txn_last_update_timestamp_ms: i64,
    /// The client speaks transaction version 2 (EndTxn v5+, KIP-890 part 2).
    pub transaction_v2: bool,
}

impl TxnMetadata {
    /// What a record may hold (checked when one is decoded; asserted after every call).
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.producer_id < 0 {
            return Err("a transactional id has a producer id");
        }
        if self.producer_epoch < NO_PRODUCER_EPOCH || self.last_producer_epoch < NO_PRODUCER_EPOCH {
            return Err("epochs are -1 or more");
        }
        if self.previous_producer_id < NO_PRODUCER_ID || self.next_producer_id < NO_PRODUCER_ID {
            return Err("other producer ids are -1 or an id");
        }
        if self.txn_timeout_ms <= 0 {
            return Err("the transaction timeout is positive");
        }
        if !self.state.is_stored() {
            return Err("Dead and PrepareEpochFence are never stored");
        }
        if !self.state.is_prepare() && self.next_producer_id != NO_PRODUCER_ID {
            return Err("only a prepared transaction has a next producer id");
        }
        let idle = matches!(
            self.state,
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
        );
        if idle && !self.partitions.is_empty() {
            return Err("only a transaction in progress has partitions");
        }
        Ok(())
    }

    fn check_invariants(&self) {
        if let Err(broken) = self.validate() {
            panic!("transaction metadata invariant: {broken}: {self:?}");
        }
    }

    /// Moves to `to`, asserting Kafka's table allows it.
    fn transition(&mut self, to: TxnState, now_ms: i64) {
        assert!(
            to.can_follow(self.state),
            "illegal transaction state transition {:?} -> {:?}",
            self.state,
            to
        );
        self.state = to;
        self.txn_last_update_timestamp_ms = now_ms;
    }

    /// The producer id and epoch the producer holds now.
    pub fn producer(&self) -> ProducerIdAndEpoch {
        ProducerIdAndEpoch {
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
        }
    }
}

/// Markers to write: a COMMIT or ABORT control batch with this producer id and epoch
/// to each partition. Sent only once the record before it is durable; report them
/// written with [`TxnCoordinator::markers_written`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteMarkers {
    pub transactional_id: String,
    pub producer_id: i64,
    /// The marker's epoch: at least the epoch of every batch of the transaction, so the
    /// partitions fence anything older.
    pub producer_epoch: i16,
    /// The leader epoch of the `__transaction_state` partition this coordinator loaded:
    /// partition leaders refuse markers of an older coordinator.
    pub coordinator_epoch: i32,
    pub result: TxnResult,
    pub partitions: BTreeSet<TopicPartition>,
}

/// What the caller does, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Append to the transactional id's `__transaction_state` partition; every later
    /// effect, and the answer of the call, waits until it is durable.
    Persist(TxnRecord),
    /// Write these transaction markers (after the records before it are durable).
    WriteMarkers(WriteMarkers),
}

/// EndTxn's answer. With transaction version 2 a success carries the producer id and
/// epoch to use next; otherwise they are -1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndTxnResponse {
    pub error: Option<ResponseError>,
    pub producer_id: i64,
    pub producer_epoch: i16,
}

impl EndTxnResponse {
    fn error(error: ResponseError) -> EndTxnResponse {
        EndTxnResponse {
            error: Some(error),
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
        }
    }

    fn ok(answer: Option<ProducerIdAndEpoch>) -> EndTxnResponse {
        EndTxnResponse {
            error: None,
            producer_id: answer.map_or(NO_PRODUCER_ID, |p| p.producer_id),
            producer_epoch: answer.map_or(NO_PRODUCER_EPOCH, |p| p.producer_epoch),
        }
    }
}

/// A transaction as DescribeTransactions shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnDescription {
    pub transactional_id: String,
    pub state: TxnState,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub txn_timeout_ms: i32,
    pub txn_start_timestamp_ms: i64,
    /// Topic → partitions, in order.
    pub topics: BTreeMap<String, Vec<i32>>,
}

/// ListTransactions' filters (empty: no filter; `duration_filter_ms` < 0: none, as
/// the default is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFilter {
    pub states: Vec<String>,
    pub producer_ids: Vec<i64>,
    /// Only transactions running longer than this (KIP-994).
    pub duration_filter_ms: i64,
    /// Only transactional ids this pattern matches (KIP-1152).
    pub transactional_id_pattern: Option<TxnIdPattern>,
}

/// ListTransactions v2's transactional id pattern (KIP-1152): a regular expression the
/// whole id must match, as Java's `Matcher.matches` does in Kafka. Rust's regex syntax
/// covers Java's common one; what it lacks (look-around, back-references) is refused as
/// Kafka refuses an invalid pattern.
#[derive(Debug, Clone)]
pub struct TxnIdPattern {
    source: String,
    regex: regex::Regex,
}

impl TxnIdPattern {
    /// The longest pattern taken.
    pub const MAX_BYTES: usize = 1024;
    /// The compiled pattern's size bound.
    const COMPILED_MAX_BYTES: usize = 1 << 20;

    /// The pattern, or INVALID_REGULAR_EXPRESSION.
    pub fn new(source: &str) -> Result<TxnIdPattern, ResponseError> {
        if source.len() > Self::MAX_BYTES {
            return Err(ResponseError::InvalidRegularExpression);
        }
        let regex = regex::RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(Self::COMPILED_MAX_BYTES)
            .build()
            .map_err(|_| ResponseError::InvalidRegularExpression)?;
        Ok(TxnIdPattern {
            source: source.to_string(),
            regex,
        })
    }

    pub fn matches(&self, transactional_id: &str) -> bool {
        self.regex.is_match(transactional_id)
    }
}

impl PartialEq for TxnIdPattern {
    fn eq(&self, other: &TxnIdPattern) -> bool {
        self.source == other.source
    }
}

impl Eq for TxnIdPattern {}

impl ListFilter {
    /// The state filters that name no state (Kafka reports them back), in order.
    pub fn unknown_states(&self) -> Vec<String> {
        self.states
            .iter()
            .filter(|s| TxnState::from_kafka_name(s).is_none())
            .cloned()
            .collect()
    }
}

impl Default for ListFilter {
    fn default() -> Self {
        ListFilter {
            states: Vec::new(),
            producer_ids: Vec::new(),
            duration_filter_ms: -1,
            transactional_id_pattern: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnListing {
    pub transactional_id: String,
    pub producer_id: i64,
    pub state: TxnState,
}

/// The transactional ids of the `__transaction_state` partition(s) this coordinator
/// leads, in the leadership of `coordinator_epoch`.
pub struct TxnCoordinator {
    config: TxnConfig,
    coordinator_epoch: i32,
    txns: BTreeMap<String, TxnMetadata>,
}

impl TxnCoordinator {
    pub fn new(config: TxnConfig, coordinator_epoch: i32) -> TxnCoordinator {
        assert!(config.transaction_max_timeout_ms > 0);
        assert!(config.transactional_id_expiration_ms > 0);
        assert!(coordinator_epoch >= 0, "a leader epoch");
        TxnCoordinator {
            config,
            coordinator_epoch,
            txns: BTreeMap::new(),
        }
    }

    pub fn coordinator_epoch(&self) -> i32 {
        self.coordinator_epoch
    }

    /// Every transactional id's metadata, by id.
    pub fn transactions(&self) -> &BTreeMap<String, TxnMetadata> {
        &self.txns
    }

    /// The record of `transactional_id` as it is now, to persist.
    fn persist(&self, transactional_id: &str, effects: &mut Vec<Effect>) {
        let metadata = self
            .txns
            .get(transactional_id)
            .expect("persisting a known id");
        metadata.check_invariants();
        effects.push(Effect::Persist(TxnRecord {
            transactional_id: transactional_id.to_string(),
            metadata: Some(metadata.clone()),
        }));
    }

    fn get_mut(&mut self, transactional_id: &str) -> &mut TxnMetadata {
        self.txns.get_mut(transactional_id).expect("a known id")
    }

    /// InitProducerId with a transactional id: the producer id and epoch to use, after
    /// the records before it are durable. `expected` is KIP-360's current producer id
    /// and epoch of a producer recovering from an error.
    pub fn init_producer_id(
        &mut self,
        transactional_id: &str,
        txn_timeout_ms: i32,
        expected: Option<ProducerIdAndEpoch>,
        allocate: ProducerIdSource,
        now_ms: i64,
    ) -> (Result<ProducerIdAndEpoch, ResponseError>, Vec<Effect>) {
        let mut effects = Vec::new();
        if transactional_id.is_empty() {
            return (Err(ResponseError::InvalidRequest), effects);
        }
        if txn_timeout_ms <= 0 || txn_timeout_ms > self.config.transaction_max_timeout_ms {
            return (Err(ResponseError::InvalidTransactionTimeout), effects);
        }
        if !self.txns.contains_key(transactional_id) {
            let producer_id = match allocate() {
                Ok(id) => id,
                Err(e) => return (Err(e), effects),
            };
            assert!(producer_id >= 0, "allocated producer ids are not negative");
            let metadata = TxnMetadata {
                producer_id,
                previous_producer_id: NO_PRODUCER_ID,
                next_producer_id: NO_PRODUCER_ID,
                producer_epoch: NO_PRODUCER_EPOCH,
                last_producer_epoch: NO_PRODUCER_EPOCH,
                txn_timeout_ms,
                state: TxnState::Empty,
                partitions: BTreeSet::new(),
                txn_start_timestamp_ms: -1,
                txn_last_update_timestamp_ms: now_ms,
                transaction_v2: false,
            };
            self.txns.insert(transactional_id.to_string(), metadata);
        }
        let answer = self.init_existing(
            transactional_id,
            txn_timeout_ms,
            expected,
            allocate,
            now_ms,
            &mut effects,
        );
        (answer, effects)
    }

    fn init_existing(
        &mut self,
        transactional_id: &str,
        txn_timeout_ms: i32,
        expected: Option<ProducerIdAndEpoch>,
        allocate: ProducerIdSource,
        now_ms: i64,
        effects: &mut Vec<Effect>,
    ) -> Result<ProducerIdAndEpoch, ResponseError> {
        let metadata = self.get_mut(transactional_id);
        // KIP-360: a recovering producer names the producer id it has; it must be this
        // id's (or one just created, or the previous one, exhausted, on a retry).
        let valid_producer = |e: &ProducerIdAndEpoch| {
            metadata.producer_epoch == NO_PRODUCER_EPOCH
                || e.producer_id == metadata.producer_id
                || (e.producer_id == metadata.previous_producer_id
                    && epoch_exhausted(e.producer_epoch))
        };
        if !expected.as_ref().is_none_or(valid_producer) {
            return Err(ResponseError::ProducerFenced);
        }
        match metadata.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                Err(ResponseError::ConcurrentTransactions)
            }
            TxnState::Ongoing => {
                // The ongoing transaction is aborted first, fencing its producer; the
                // client retries once the abort completes (the epoch is then bumped
                // again, or a new producer id taken if this exhausted it).
                self.fence_and_abort(transactional_id, now_ms, effects);
                Err(ResponseError::ConcurrentTransactions)
            }
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
                let rotate = epoch_exhausted(metadata.producer_epoch)
                    && expected.is_none_or(|e| e.producer_epoch == metadata.producer_epoch);
                if rotate {
                    let new_producer_id = allocate()?;
                    assert!(
                        new_producer_id >= 0,
                        "allocated producer ids are not negative"
                    );
                    metadata.last_producer_epoch = if expected.is_some() {
                        metadata.producer_epoch
                    } else {
                        NO_PRODUCER_EPOCH
                    };
                    metadata.previous_producer_id = metadata.producer_id;
                    metadata.producer_id = new_producer_id;
                    metadata.producer_epoch = 0;
                } else {
                    let (epoch, last) = Self::next_init_epochs(metadata, expected)?;
                    metadata.producer_epoch = epoch;
                    metadata.last_producer_epoch = last;
                }
                metadata.transition(TxnState::Empty, now_ms);
                metadata.txn_timeout_ms = txn_timeout_ms;
                metadata.partitions.clear();
                metadata.txn_start_timestamp_ms = -1;
                let answer = metadata.producer();
                self.persist(transactional_id, effects);
                Ok(answer)
            }
            TxnState::Dead | TxnState::PrepareEpochFence => {
                unreachable!("{:?} is never at rest", metadata.state)
            }
        }
    }

    /// The (epoch, last epoch) an InitProducerId gives when the epoch is not exhausted:
    /// a bump, or (a retry of a call that bumped) the same epoch again.
    fn next_init_epochs(
        metadata: &TxnMetadata,
        expected: Option<ProducerIdAndEpoch>,
    ) -> Result<(i16, i16), ResponseError> {
        let current = metadata.producer_epoch;
        match expected.map(|e| e.producer_epoch) {
            None => {
                assert!(!epoch_exhausted(current));
                Ok((current + 1, NO_PRODUCER_EPOCH))
            }
            Some(e) if current == NO_PRODUCER_EPOCH || e == current => {
                assert!(!epoch_exhausted(current));
                Ok((current + 1, current))
            }
            Some(e) if e == metadata.last_producer_epoch => {
                Ok((current, metadata.last_producer_epoch))
            }
            Some(_) => Err(ResponseError::ProducerFenced),
        }
    }

    /// Aborts the ongoing transaction of `transactional_id` on the coordinator's own
    /// initiative (a new producer, or a timeout): the epoch is bumped (PrepareEpochFence),
    /// so the producer's later requests and batches are fenced, and the abort prepared.
    fn fence_and_abort(&mut self, transactional_id: &str, now_ms: i64, effects: &mut Vec<Effect>) {
        let metadata = self.get_mut(transactional_id);
        assert_eq!(metadata.state, TxnState::Ongoing);
        metadata.transition(TxnState::PrepareEpochFence, now_ms);
        metadata.producer_epoch = bumped(metadata.producer_epoch);
        // No retry of the fenced producer's calls is accepted.
        metadata.last_producer_epoch = NO_PRODUCER_EPOCH;
        metadata.transition(TxnState::PrepareAbort, now_ms);
        if metadata.transaction_v2 {
            // Version 2 bumps at every end: a second bump, so the fenced producer's own
            // EndTxn (epoch + 1 = the fencing epoch) is not taken for a retry.
            metadata.last_producer_epoch = metadata.producer_epoch;
            metadata.producer_epoch = bumped(metadata.producer_epoch);
        }
        self.persist(transactional_id, effects);
        self.send_markers(transactional_id, now_ms, effects);
    }

    /// After the prepare record: markers to the transaction's partitions, or, with none,
    /// the completion at once (nothing to mark).
    fn send_markers(&mut self, transactional_id: &str, now_ms: i64, effects: &mut Vec<Effect>) {
        let metadata = &self.txns[transactional_id];
        let result = match metadata.state {
            TxnState::PrepareCommit => TxnResult::Commit,
            TxnState::PrepareAbort => TxnResult::Abort,
            other => panic!("markers are sent only for a prepared transaction, not {other:?}"),
        };
        if metadata.partitions.is_empty() {
            self.complete(transactional_id, now_ms, effects);
            return;
        }
        effects.push(Effect::WriteMarkers(WriteMarkers {
            transactional_id: transactional_id.to_string(),
            producer_id: metadata.producer_id,
            producer_epoch: metadata.producer_epoch,
            coordinator_epoch: self.coordinator_epoch,
            result,
            partitions: metadata.partitions.clone(),
        }));
    }

    /// Every marker is written: the transaction is complete (and with a producer id
    /// taken at the prepare, the producer continues with it at epoch 0).
    fn complete(&mut self, transactional_id: &str, now_ms: i64, effects: &mut Vec<Effect>) {
        let metadata = self.get_mut(transactional_id);
        let to = match metadata.state {
            TxnState::PrepareCommit => TxnState::CompleteCommit,
            _ => TxnState::CompleteAbort,
        };
        metadata.transition(to, now_ms);
        if metadata.next_producer_id != NO_PRODUCER_ID {
            metadata.previous_producer_id = metadata.producer_id;
            metadata.producer_id = metadata.next_producer_id;
            metadata.producer_epoch = 0;
            metadata.next_producer_id = NO_PRODUCER_ID;
        }
        metadata.partitions.clear();
        self.persist(transactional_id, effects);
    }

    /// The checks AddPartitionsToTxn, AddOffsetsToTxn and the verification share: this
    /// producer owns the transactional id, and no end is in flight.
    fn check_producer(
        &self,
        transactional_id: &str,
        producer: ProducerIdAndEpoch,
    ) -> Result<&TxnMetadata, ResponseError> {
        if transactional_id.is_empty() {
            return Err(ResponseError::InvalidRequest);
        }
        let metadata = self
            .txns
            .get(transactional_id)
            .ok_or(ResponseError::InvalidProducerIdMapping)?;
        if metadata.producer_id != producer.producer_id {
            return Err(ResponseError::InvalidProducerIdMapping);
        }
        if metadata.producer_epoch != producer.producer_epoch {
            return Err(ResponseError::ProducerFenced);
        }
        if metadata.state.is_prepare() {
            return Err(ResponseError::ConcurrentTransactions);
        }
        Ok(metadata)
    }

    /// AddPartitionsToTxn (a client's, v0-3, or a broker adding a partition for a
    /// transaction version 2 producer): the partitions join the transaction, which
    /// starts if none is ongoing. One error for the whole request.
    pub fn add_partitions(
        &mut self,
        transactional_id: &str,
        producer: ProducerIdAndEpoch,
        partitions: &[TopicPartition],
        transaction_v2: bool,
        now_ms: i64,
    ) -> (Result<(), ResponseError>, Vec<Effect>) {
        let mut effects = Vec::new();
        let metadata = match self.check_producer(transactional_id, producer) {
            Ok(metadata) => metadata,
            Err(e) => return (Err(e), effects),
        };
        let ongoing = metadata.state == TxnState::Ongoing;
        if ongoing && partitions.iter().all(|p| metadata.partitions.contains(p)) {
            return (Ok(()), effects);
        }
        let metadata = self.get_mut(transactional_id);
        metadata.transition(TxnState::Ongoing, now_ms);
        if !ongoing {
            metadata.txn_start_timestamp_ms = now_ms;
        }
        metadata.partitions.extend(partitions.iter().cloned());
        metadata.transaction_v2 = transaction_v2;
        self.persist(transactional_id, &mut effects);
        (Ok(()), effects)
    }

    /// AddOffsetsToTxn: the group's `__consumer_offsets` partition (the caller computes
    /// it from the group id) joins the transaction.
    pub fn add_offsets(
        &mut self,
        transactional_id: &str,
        producer: ProducerIdAndEpoch,
        offsets_partition: i32,
        transaction_v2: bool,
        now_ms: i64,
    ) -> (Result<(), ResponseError>, Vec<Effect>) {
        let partition = TopicPartition::new(OFFSETS_TOPIC, offsets_partition);
        self.add_partitions(
            transactional_id,
            producer,
            &[partition],
            transaction_v2,
            now_ms,
        )
    }

    /// AddPartitionsToTxn v4+ with `verify_only` (KIP-890 part 1): a partition leader
    /// asks whether each partition is in the ongoing transaction before it accepts a
    /// transactional batch. Nothing changes. Each partition's error (None: it is).
    pub fn verify_partitions(
        &self,
        transactional_id: &str,
        producer: ProducerIdAndEpoch,
        partitions: &[TopicPartition],
    ) -> Vec<Option<ResponseError>> {
        match self.check_producer(transactional_id, producer) {
            Err(e) => vec![Some(e); partitions.len()],
            Ok(metadata) => partitions
                .iter()
                .map(|p| {
                    let added =
                        metadata.state == TxnState::Ongoing && metadata.partitions.contains(p);
                    (!added).then_some(ResponseError::InvalidTxnState)
                })
                .collect(),
        }
    }

    /// EndTxn: commit or abort the ongoing transaction. `transaction_v2`: EndTxn v5+,
    /// the epoch is bumped and the next producer id and epoch returned. Retries of an
    /// end that completed are answered with success, as Kafka does.
    pub fn end_txn(
        &mut self,
        transactional_id: &str,
        producer: ProducerIdAndEpoch,
        result: TxnResult,
        transaction_v2: bool,
        allocate: ProducerIdSource,
        now_ms: i64,
    ) -> (EndTxnResponse, Vec<Effect>) {
        let mut effects = Vec::new();
        if transactional_id.is_empty() {
            return (
                EndTxnResponse::error(ResponseError::InvalidRequest),
                effects,
            );
        }
        let Some(metadata) = self.txns.get(transactional_id) else {
            let error = ResponseError::InvalidProducerIdMapping;
            return (EndTxnResponse::error(error), effects);
        };
        let decision = if transaction_v2 {
            Self::end_decision_v2(metadata, producer, result)
        } else {
            Self::end_decision_v1(metadata, producer, result)
        };
        let answer = match decision {
            Err(e) => EndTxnResponse::error(e),
            Ok(EndDecision::AlreadyDone) => {
                EndTxnResponse::ok(transaction_v2.then(|| metadata.producer()))
            }
            Ok(EndDecision::Prepare) => {
                let prepared = self.prepare_end(
                    transactional_id,
                    result,
                    transaction_v2,
                    allocate,
                    now_ms,
                    &mut effects,
                );
                match prepared {
                    Ok(next) => EndTxnResponse::ok(transaction_v2.then_some(next)),
                    Err(e) => EndTxnResponse::error(e),
                }
            }
        };
        (answer, effects)
    }

    /// Transaction version 1: the producer's epoch must be the current one; a retry is
    /// recognised by the state alone.
    fn end_decision_v1(
        metadata: &TxnMetadata,
        producer: ProducerIdAndEpoch,
        result: TxnResult,
    ) -> Result<EndDecision, ResponseError> {
        if metadata.producer_id != producer.producer_id {
            return Err(ResponseError::InvalidProducerIdMapping);
        }
        if metadata.producer_epoch != producer.producer_epoch {
            return Err(ResponseError::ProducerFenced);
        }
        Self::end_by_state(metadata.state, result, true)
    }

    /// Transaction version 2: every end bumped the epoch, so a retry comes with the
    /// epoch before the bump (or, after an overflow, the previous producer id at the
    /// last epoch it had), and the current epoch means a new end (Kafka's table).
    fn end_decision_v2(
        metadata: &TxnMetadata,
        producer: ProducerIdAndEpoch,
        result: TxnResult,
    ) -> Result<EndDecision, ResponseError> {
        let epoch = producer.producer_epoch;
        let retry_on_overflow = metadata.previous_producer_id == producer.producer_id
            && epoch == i16::MAX - 1
            && metadata.producer_epoch == 0;
        let retry_on_bump = i32::from(metadata.producer_epoch) == i32::from(epoch) + 1;
        if metadata.producer_id != producer.producer_id && !retry_on_overflow {
            return Err(ResponseError::InvalidProducerIdMapping);
        }
        let current = epoch == metadata.producer_epoch && !retry_on_overflow;
        let valid_epoch = match metadata.state {
            TxnState::Ongoing | TxnState::Empty => current,
            TxnState::PrepareCommit | TxnState::PrepareAbort => retry_on_bump,
            TxnState::CompleteCommit | TxnState::CompleteAbort => {
                retry_on_bump || retry_on_overflow || current
            }
            TxnState::Dead | TxnState::PrepareEpochFence => {
                unreachable!("{:?} is never at rest", metadata.state)
            }
        };
        if !valid_epoch {
            return Err(ResponseError::ProducerFenced);
        }
        let retry = retry_on_bump || retry_on_overflow;
        match (metadata.state, result) {
            // Not a retry: an abort the client sends when unsure of the server's state.
            // The epoch is bumped so nothing in flight from before can join later.
            (TxnState::Empty, TxnResult::Abort) => Ok(EndDecision::Prepare),
            (TxnState::CompleteCommit, TxnResult::Abort)
            | (TxnState::CompleteAbort, TxnResult::Abort)
                if !retry =>
            {
                Ok(EndDecision::Prepare)
            }
            (TxnState::CompleteCommit, TxnResult::Commit) if !retry => {
                Err(ResponseError::InvalidTxnState)
            }
            (state, result) => Self::end_by_state(state, result, retry),
        }
    }

    /// The answer to an end in `state` (both versions agree from here).
    fn end_by_state(
        state: TxnState,
        result: TxnResult,
        retry: bool,
    ) -> Result<EndDecision, ResponseError> {
        match state {
            TxnState::Ongoing => Ok(EndDecision::Prepare),
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                if state == result.prepare_state() {
                    Err(ResponseError::ConcurrentTransactions)
                } else {
                    Err(ResponseError::InvalidTxnState)
                }
            }
            TxnState::CompleteCommit | TxnState::CompleteAbort => {
                if state == result.complete_state() && retry {
                    Ok(EndDecision::AlreadyDone)
                } else {
                    Err(ResponseError::InvalidTxnState)
                }
            }
            TxnState::Empty => Err(ResponseError::InvalidTxnState),
            TxnState::Dead | TxnState::PrepareEpochFence => {
                unreachable!("{state:?} is never at rest")
            }
        }
    }

    /// Ongoing (or, version 2, idle) → PrepareCommit / PrepareAbort, persisted, then the
    /// markers. Returns the producer id and epoch the producer continues with.
    fn prepare_end(
        &mut self,
        transactional_id: &str,
        result: TxnResult,
        transaction_v2: bool,
        allocate: ProducerIdSource,
        now_ms: i64,
        effects: &mut Vec<Effect>,
    ) -> Result<ProducerIdAndEpoch, ResponseError> {
        let metadata = &self.txns[transactional_id];
        let next_producer_id = if transaction_v2 && epoch_exhausted(metadata.producer_epoch) {
            let id = allocate()?;
            assert!(id >= 0, "allocated producer ids are not negative");
            id
        } else {
            NO_PRODUCER_ID
        };
        let metadata = self.get_mut(transactional_id);
        let no_partitions_added = metadata.state != TxnState::Ongoing;
        metadata.transition(result.prepare_state(), now_ms);
        // Planted bug: version 2 ends without the bump, so the ended transaction's epoch
        // stays current and its late batches are taken into the next transaction.
        if transaction_v2 && !crate::planted::on("end-txn-without-epoch-bump") {
            metadata.last_producer_epoch = metadata.producer_epoch;
            metadata.producer_epoch = bumped(metadata.producer_epoch);
        }
        if no_partitions_added {
            // An abort with no transaction: it starts and ends now.
            metadata.txn_start_timestamp_ms = now_ms;
        }
        metadata.next_producer_id = next_producer_id;
        metadata.transaction_v2 = transaction_v2;
        let next = if next_producer_id != NO_PRODUCER_ID {
            ProducerIdAndEpoch {
                producer_id: next_producer_id,
                producer_epoch: 0,
            }
        } else {
            metadata.producer()
        };
        self.persist(transactional_id, effects);
        self.send_markers(transactional_id, now_ms, effects);
        Ok(next)
    }

    /// Every marker of `markers` is written: the transaction completes (persisted).
    /// Markers of an earlier prepare or another coordinator's change nothing.
    pub fn markers_written(&mut self, markers: &WriteMarkers, now_ms: i64) -> Vec<Effect> {
        let mut effects = Vec::new();
        let Some(metadata) = self.txns.get(&markers.transactional_id) else {
            return effects;
        };
        let current = markers.coordinator_epoch == self.coordinator_epoch
            && metadata.state == markers.result.prepare_state()
            && metadata.producer_id == markers.producer_id
            && metadata.producer_epoch == markers.producer_epoch;
        if current {
            self.complete(&markers.transactional_id, now_ms, &mut effects);
        }
        effects
    }

    /// The markers of every prepared transaction, for a coordinator that just loaded
    /// its partition: what the previous coordinator decided is carried out (prepared
    /// transactions with no partitions complete at once).
    pub fn pending_markers(&mut self, now_ms: i64) -> Vec<Effect> {
        let mut effects = Vec::new();
        let prepared: Vec<String> = self
            .txns
            .iter()
            .filter(|(_, m)| m.state.is_prepare())
            .map(|(id, _)| id.clone())
            .collect();
        for transactional_id in prepared {
            self.send_markers(&transactional_id, now_ms, &mut effects);
        }
        effects
    }

    /// Advances the clock: transactions ongoing past their timeout are aborted (their
    /// producer fenced), and idle transactional ids not updated for
    /// `transactional_id_expiration_ms` are removed (a tombstone).
    pub fn tick(&mut self, now_ms: i64) -> Vec<Effect> {
        let mut effects = Vec::new();
        let timed_out: Vec<String> = self
            .txns
            .iter()
            .filter(|(_, m)| {
                m.state == TxnState::Ongoing
                    && m.txn_start_timestamp_ms
                        .saturating_add(i64::from(m.txn_timeout_ms))
                        < now_ms
            })
            .map(|(id, _)| id.clone())
            .collect();
        for transactional_id in timed_out {
            self.fence_and_abort(&transactional_id, now_ms, &mut effects);
        }
        let expiration_ms = self.config.transactional_id_expiration_ms;
        let expired: Vec<String> = self
            .txns
            .iter()
            .filter(|(_, m)| {
                m.state.expiration_allowed()
                    && m.txn_last_update_timestamp_ms <= now_ms.saturating_sub(expiration_ms)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for transactional_id in expired {
            self.get_mut(&transactional_id)
                .transition(TxnState::Dead, now_ms);
            self.txns.remove(&transactional_id);
            effects.push(Effect::Persist(TxnRecord {
                transactional_id,
                metadata: None,
            }));
        }
        effects
    }

    /// Applies a record of `__transaction_state` (loading a partition: every record in
    /// order). A record holds the whole metadata, so the last one of an id wins; a
    /// tombstone removes it.
    pub fn replay(&mut self, record: &TxnRecord) {
        match &record.metadata {
            Some(metadata) => {
                metadata.check_invariants();
                self.txns
                    .insert(record.transactional_id.clone(), metadata.clone());
            }
            None => {
                self.txns.remove(&record.transactional_id);
            }
        }
    }

    /// DescribeTransactions: each id's transaction, or its error.
    pub fn describe(
        &self,
        transactional_ids: &[String],
    ) -> Vec<Result<TxnDescription, ResponseError>> {
        transactional_ids
            .iter()
            .map(|id| {
                if id.is_empty() {
                    return Err(ResponseError::InvalidRequest);
                }
                // A Dead transaction is being expired: not found, as Kafka answers.
                let m = self
                    .txns
                    .get(id)
                    .filter(|m| m.state != TxnState::Dead)
                    .ok_or(ResponseError::TransactionalIdNotFound)?;
                let mut topics: BTreeMap<String, Vec<i32>> = BTreeMap::new();
                for p in &m.partitions {
                    topics.entry(p.topic.clone()).or_default().push(p.partition);
                }
                Ok(TxnDescription {
                    transactional_id: id.clone(),
                    state: m.state,
                    producer_id: m.producer_id,
                    producer_epoch: m.producer_epoch,
                    txn_timeout_ms: m.txn_timeout_ms,
                    txn_start_timestamp_ms: m.txn_start_timestamp_ms,
                    topics,
                })
            })
            .collect()
    }

    /// ListTransactions: the transactions every filter lets through, by id, and the
    /// state filters that name no state (Kafka reports them back).
    pub fn list(&self, filter: &ListFilter, now_ms: i64) -> (Vec<TxnListing>, Vec<String>) {
        let unknown = filter.unknown_states();
        let states: BTreeSet<TxnState> = filter
            .states
            .iter()
            .filter_map(|s| TxnState::from_kafka_name(s))
            .collect();
        let listed = self
            .txns
            .iter()
            .filter(|(_, m)| m.state != TxnState::Dead)
            .filter(|(_, m)| filter.states.is_empty() || states.contains(&m.state))
            .filter(|(_, m)| {
                filter.producer_ids.is_empty() || filter.producer_ids.contains(&m.producer_id)
            })
            .filter(|(_, m)| {
                filter.duration_filter_ms < 0
                    || now_ms.saturating_sub(m.txn_start_timestamp_ms) > filter.duration_filter_ms
            })
            .filter(|(id, _)| {
                let pattern = filter.transactional_id_pattern.as_ref();
                pattern.is_none_or(|p| p.matches(id))
            })
            .map(|(id, m)| TxnListing {
                transactional_id: id.clone(),
                producer_id: m.producer_id,
                state: m.state,
            })
            .collect();
        (listed, unknown)
    }
}

/// What an EndTxn does, decided before anything changes.
enum EndDecision {
    /// A retry of an end that completed: success, nothing changes.
    AlreadyDone,
    /// The end starts now.
    Prepare,
}
