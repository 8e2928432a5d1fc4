//! The transactional workload: two transactional producers (each its own transactional
//! id) write transactions to the partitions of their own topic as a Kafka transactional
//! producer does: FindCoordinator, InitProducerId, then per transaction
//! AddPartitionsToTxn, one transactional batch per partition (producer id, epoch,
//! sequences), AddOffsetsToTxn and a TxnOffsetCommit of the group `sim-txn-group` (the
//! offset is the transaction's number + 1; of the producer's own partition, or of the
//! last partition for a transaction meant to abort), and EndTxn, commit or (1 in 4)
//! abort. What
//! Kafka clients retry is retried, boundedly; a fatal error (fenced, or an answer that
//! never comes) ends the producer's epoch: it calls InitProducerId again, which aborts
//! (or completes) the open transaction, whose outcome is then unknown if its commit was
//! sent. Now and then a producer restarts in the middle of a transaction (a new
//! InitProducerId), and the old instance, a zombie, sends one more batch with its fenced
//! epoch after the new one wrote the partition. A reader polls every partition with
//! read_committed Fetch and filters aborted batches as a Kafka consumer does.
//!
//! Producer 1 speaks transaction version 2 (KIP-890 part 2), as a Kafka 4 client does
//! when the broker finalizes `transaction.version` 2: no AddPartitionsToTxn (Produce v12:
//! the partition leader adds the partition to the transaction) and no AddOffsetsToTxn
//! (TxnOffsetCommit v5: the group coordinator adds its partition); EndTxn v5 bumps the
//! epoch at every end and answers with the producer id and epoch to go on with (a new id
//! at epoch 0 once the epoch is exhausted), whose sequences start at 0 on every
//! partition; a retried EndTxn goes with the epoch it was first sent with.
//! NOT_ENOUGH_REPLICAS (the leader could not reach the coordinator, or the last
//! transaction's markers are still being written) is retried like a lost answer;
//! TRANSACTION_ABORTABLE aborts the transaction (EndTxn) and the producer goes on. After
//! 1 in 3 of its ends, a late batch (KAFKA-17754) follows: a batch of the epoch that
//! ended, with the sequence that epoch would have used next on a partition it wrote, as
//! a produce delayed in the network would arrive, sent once the next transaction's first
//! batch was acknowledged (so the ended transaction is complete, every marker written).
//!
//! Invariants:
//! - `txn-no-aborted-read`: no record of a transaction that was aborted (or whose commit
//!   was never sent) is read by a read_committed consumer, during the run or at the end.
//! - `txn-no-uncommitted-read`: no record of a transaction still open (EndTxn commit not
//!   sent) is read by the reader.
//! - `txn-zombie-fenced`: a batch of a fenced producer epoch is never acknowledged.
//! - `txn-late-batch-fenced`: a late batch of an epoch a version 2 EndTxn ended is never
//!   acknowledged, nor read by the read_committed reader (during the run or at the end):
//!   it would be a record of a transaction the producer never sent it in.
//! - `txn-lso-monotonic`: the last stable offset one connection to a broker reports for a
//!   partition never decreases, and every record read stays at its offset.
//! - `txn-lso-not-stuck`: after healing, with the producers stopped, the last stable
//!   offset of every partition reaches its high watermark within a bounded time (no
//!   hanging transaction).
//! - `txn-atomic-visibility`: every record of a transaction whose commit was acknowledged
//!   is visible on every partition it wrote; an unknown outcome shows all or none.
//! - `txn-no-duplicates`: every record is read at most once.
//! - `txn-offsets-iff-commit`: the group's committed offset of each producer is that of its
//!   last committed transaction (acknowledged, or unknown but visible), none if none.

use super::idempotent_workload::{send_once, Sent};
use super::{
    brokers_from_random, connect, create_extra_topic, image_leader, kafka_addr, violation, Shared,
    Violation, OP_TIMEOUT,
};
use bytes::Bytes;
use kafka_protocol::ResponseError;
use madsim::rand::{thread_rng, Rng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use strand::client::{encode_producer_records, response_error, Client, ProducerFields};

pub(super) const TXN_TOPIC: &str = "sim-txn";
pub(super) const TXN_PARTITIONS: i32 = 3;
pub(super) const TXN_PRODUCERS: usize = 2;
/// The producer that speaks transaction version 2 (KIP-890 part 2); the others speak 1.
const TXN_V2_PRODUCER: usize = 1;
const TXN_GROUP: &str = "sim-txn-group";
/// The partition of `TXN_TOPIC` whose group offset only transactions meant to abort
/// commit (every other transaction commits that of its producer's index).
const ABORTED_OFFSETS_PARTITION: i32 = TXN_PARTITIONS - 1;
/// The coordinator aborts a transaction left open this long (Kafka's default). At 10 s,
/// regression seed 1788 (all faults) read an aborted record: a transaction the
/// coordinator timed out while its producer still wrote showed up committed with the
/// producer's next one (open finding, docs/simulation.md).
const TXN_TIMEOUT_MS: i32 = 60_000;
/// Transactions one producer begins at most.
const MAX_TXNS: u64 = 400;
/// Sends of one request (to a coordinator or of one batch) before the producer gives up.
const ATTEMPTS_PER_REQUEST: u32 = 25;
/// After healing: how long the last stable offsets have to reach the high watermarks.
const LSO_LIMIT_MS: u64 = 90_000;
const READ_MAX_BYTES: i32 = 64 * 1024;

/// How far a transaction got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TxnEnd {
    /// No EndTxn commit sent (yet): its records must stay invisible.
    Open,
    /// Aborted (EndTxn abort sent, or ended by a new InitProducerId before any commit).
    Aborted,
    /// EndTxn commit sent, not answered: committed or aborted, all or nothing.
    CommitSent,
    /// EndTxn commit acknowledged.
    Committed,
}

impl TxnEnd {
    fn may_be_visible(self) -> bool {
        matches!(self, TxnEnd::CommitSent | TxnEnd::Committed)
    }
}

#[derive(Debug)]
struct Txn {
    end: TxnEnd,
    /// Every value of its batches sent, with its partition.
    values: Vec<(i32, String)>,
    /// Whether its TxnOffsetCommit was acknowledged.
    offset_committed: bool,
    /// The partition of `TXN_TOPIC` whose group offset it commits (-1: none sent).
    offset_partition: i32,
}

#[derive(Default)]
pub(super) struct TxnHistory {
    /// (producer, transaction number) → the transaction.
    txns: BTreeMap<(usize, u64), Txn>,
    /// Every value sent → its transaction.
    values: BTreeMap<String, (usize, u64)>,
    /// Values zombies sent: never to be read.
    zombie_values: BTreeSet<String>,
    /// Values of late batches (a version 2 producer's ended epoch): never to be read.
    late_values: BTreeSet<String>,
    /// What the reader read: (partition, offset) → value.
    reads: BTreeMap<(i32, i64), String>,
    restarts: u64,
    zombies_refused: u64,
    late_refused: u64,
}

impl TxnHistory {
    /// The invariant a read of `value` breaks, if any.
    fn check_read(&self, value: &str) -> Option<(&'static str, String)> {
        if self.zombie_values.contains(value) {
            return Some(("txn-zombie-fenced", format!("{value} of a zombie is read")));
        }
        if self.late_values.contains(value) {
            return Some((
                "txn-late-batch-fenced",
                format!("{value} of a late batch (an ended epoch) is read"),
            ));
        }
        let Some(key) = self.values.get(value) else {
            return Some(("no-invented-records", format!("{value} was never sent")));
        };
        match self.txns[key].end {
            TxnEnd::Open => Some((
                "txn-no-uncommitted-read",
                format!("{value} of open transaction {key:?} is read"),
            )),
            TxnEnd::Aborted => Some((
                "txn-no-aborted-read",
                format!("{value} of aborted transaction {key:?} is read"),
            )),
            TxnEnd::CommitSent | TxnEnd::Committed => None,
        }
    }
}

pub(super) async fn create_topic(shared: &Arc<Shared>) -> Result<(), Violation> {
    let configs = [("segment.bytes", "4096")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    create_extra_topic(shared, TXN_TOPIC, TXN_PARTITIONS, configs).await
}

/// Which coordinator a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coordinator {
    Transaction,
    Group,
}

/// A request to a coordinator.
#[derive(Debug, Clone)]
enum Call {
    InitProducerId,
    AddPartitions(Vec<i32>),
    AddOffsets,
    /// The offset for (TXN_TOPIC, partition).
    TxnOffsetCommit(i32, i64),
    EndTxn(bool),
}

impl Call {
    fn coordinator(&self) -> Coordinator {
        match self {
            Call::TxnOffsetCommit(..) => Coordinator::Group,
            _ => Coordinator::Transaction,
        }
    }
}

/// A failed call: its Kafka error code (None: unanswered) and what happened.
type CallError = (Option<ResponseError>, String);

/// Why a transaction stops before its end.
#[derive(Debug)]
enum Stop {
    /// The producer's epoch ends (fenced, or no answer): InitProducerId again.
    Fatal(String),
    /// TRANSACTION_ABORTABLE: the producer aborts the transaction (EndTxn) and goes on,
    /// as a Kafka 4 client does.
    Abortable(String),
}

impl Stop {
    fn why(&self) -> &str {
        match self {
            Stop::Fatal(why) | Stop::Abortable(why) => why,
        }
    }
}

/// A batch of the epoch a transaction version 2 producer's EndTxn ended, delayed in the
/// network: it arrives once the producer's next transaction has begun (KAFKA-17754).
#[derive(Debug)]
struct LateBatch {
    producer_id: i64,
    producer_epoch: i16,
    /// The next sequence the ended epoch would have used, per partition it wrote.
    sequences: BTreeMap<i32, i32>,
    /// The transaction that ended.
    txn_no: u64,
}

struct TxnProducer {
    shared: Arc<Shared>,
    index: usize,
    transactional_id: String,
    /// Transaction version 2 (KIP-890 part 2): no AddPartitionsToTxn or AddOffsetsToTxn
    /// (the partition leader and the group coordinator add to the transaction), Produce
    /// v12, TxnOffsetCommit v5, and EndTxn v5, whose answer is the producer id and epoch
    /// to go on with.
    v2: bool,
    coordinators: BTreeMap<&'static str, Client>,
    /// Producer id and epoch.
    producer: Option<(i64, i16)>,
    /// Next sequence per partition of this epoch.
    sequences: BTreeMap<i32, i32>,
    connections: BTreeMap<i32, Option<(u64, Client)>>,
    /// A fenced instance of this producer: (producer id, epoch, next sequences).
    zombie: Option<(i64, i16, BTreeMap<i32, i32>)>,
    /// Version 2: a batch of the last ended epoch, sent once the next transaction began.
    late: Option<LateBatch>,
}

impl TxnProducer {
    fn event(&self, text: impl AsRef<str>) {
        self.shared
            .event(format!("txn producer {}: {}", self.index, text.as_ref()));
    }

    /// Changes what the history holds of transaction `key`.
    fn update_txn(&self, key: (usize, u64), change: impl FnOnce(&mut Txn)) {
        let mut history = self.shared.txn.lock().unwrap();
        change(history.txns.get_mut(&key).expect("a transaction begun"));
    }

    /// A connection to the coordinator of `kind`, found by asking a random broker.
    async fn coordinator(&mut self, kind: Coordinator) -> Option<&mut Client> {
        let key = match kind {
            Coordinator::Transaction => "transaction",
            Coordinator::Group => "group",
        };
        if !self.coordinators.contains_key(key) {
            let mut rng = thread_rng();
            let id = brokers_from_random(&self.shared, &mut rng).next()?;
            let mut client = connect(kafka_addr(id)).await?;
            let found = match kind {
                Coordinator::Transaction => {
                    let find = client.find_transaction_coordinator(&self.transactional_id);
                    tokio::time::timeout(OP_TIMEOUT, find).await
                }
                Coordinator::Group => {
                    tokio::time::timeout(OP_TIMEOUT, client.find_coordinator(TXN_GROUP)).await
                }
            };
            let node = found.ok()?.ok()?;
            let coordinator = connect(kafka_addr(node.node_id as u64)).await?;
            self.coordinators.insert(key, coordinator);
        }
        self.coordinators.get_mut(key)
    }

    /// One send of `call`: its answer, or the error (with its Kafka error code if any).
    async fn call_once(&mut self, call: &Call) -> Result<Option<(i64, i16)>, CallError> {
        let producer = self.producer.unwrap_or((-1, -1));
        let transactional_id = self.transactional_id.clone();
        let v2 = self.v2;
        assert!(
            !(v2 && matches!(call, Call::AddPartitions(_) | Call::AddOffsets)),
            "a transaction version 2 producer adds nothing itself: {call:?}"
        );
        let Some(client) = self.coordinator(call.coordinator()).await else {
            return Err((None, "no coordinator".into()));
        };
        let timeout = Duration::from_millis(thread_rng().gen_range(1_000..=5_000));
        let result = match call {
            Call::InitProducerId => {
                let init = client.init_producer_id(Some(&transactional_id), TXN_TIMEOUT_MS);
                tokio::time::timeout(timeout, init)
                    .await
                    .map(|r| r.map(Some))
            }
            Call::AddPartitions(partitions) => {
                let list: Vec<(String, i32)> = partitions
                    .iter()
                    .map(|p| (TXN_TOPIC.to_string(), *p))
                    .collect();
                let add = client.add_partitions_to_txn(&transactional_id, producer, &list);
                tokio::time::timeout(timeout, add)
                    .await
                    .map(|r| r.map(|_| None))
            }
            Call::AddOffsets => {
                let add = client.add_offsets_to_txn(&transactional_id, producer, TXN_GROUP);
                tokio::time::timeout(timeout, add)
                    .await
                    .map(|r| r.map(|_| None))
            }
            Call::TxnOffsetCommit(partition, offset) => {
                let offsets = [(TXN_TOPIC, *partition, *offset)];
                let version = if v2 { 5 } else { 3 };
                let commit = client.txn_offset_commit_at(
                    &transactional_id,
                    producer,
                    TXN_GROUP,
                    &offsets,
                    version,
                );
                tokio::time::timeout(timeout, commit)
                    .await
                    .map(|r| r.map(|_| None))
            }
            Call::EndTxn(commit) if v2 => {
                let end = client.end_txn_v2(&transactional_id, producer, *commit);
                tokio::time::timeout(timeout, end)
                    .await
                    .map(|r| r.map(Some))
            }
            Call::EndTxn(commit) => {
                let end = client.end_txn(&transactional_id, producer, *commit);
                tokio::time::timeout(timeout, end)
                    .await
                    .map(|r| r.map(|_| None))
            }
        };
        match result {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err((response_error(&e), format!("{e:#}"))),
            Err(_) => Err((None, "timed out".into())),
        }
    }

    /// Sends `call` until it is answered, retrying what a Kafka client retries.
    async fn call(&mut self, call: Call) -> Result<Option<(i64, i16)>, Stop> {
        let mut last = String::new();
        for _ in 0..ATTEMPTS_PER_REQUEST {
            let (code, error) = match self.call_once(&call).await {
                Ok(answer) => return Ok(answer),
                Err(e) => e,
            };
            match code {
                Some(
                    e @ (ResponseError::ProducerFenced
                    | ResponseError::InvalidProducerEpoch
                    | ResponseError::InvalidProducerIdMapping
                    | ResponseError::InvalidTxnState
                    | ResponseError::TransactionCoordinatorFenced),
                ) => return Err(Stop::Fatal(format!("{call:?}: {e:?}"))),
                Some(e @ ResponseError::TransactionAbortable) => {
                    return Err(Stop::Abortable(format!("{call:?}: {e:?}")))
                }
                Some(
                    ResponseError::ConcurrentTransactions
                    | ResponseError::UnknownTopicOrPartition
                    | ResponseError::CoordinatorLoadInProgress
                    | ResponseError::NotEnoughReplicas,
                ) => {}
                _ => {
                    // Not answered, or not the coordinator: find it again.
                    let key = match call.coordinator() {
                        Coordinator::Transaction => "transaction",
                        Coordinator::Group => "group",
                    };
                    self.coordinators.remove(key);
                }
            }
            last = error;
            let pause = thread_rng().gen_range(50..=300);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        Err(Stop::Fatal(format!("{call:?} unanswered: {last}")))
    }

    /// Sends one batch of `values` to `partition` until it is acknowledged (at Produce
    /// v12 for a version 2 producer, which adds the partition to its transaction).
    async fn produce(
        &mut self,
        partition: i32,
        fields: ProducerFields,
        values: &[String],
    ) -> Result<i64, Stop> {
        let records: Vec<_> = values
            .iter()
            .map(|v| (None, Some(Bytes::from(v.clone())), strand::clock::now_ms()))
            .collect();
        let batch = encode_producer_records(
            &records,
            kafka_protocol::records::Compression::None,
            Some(fields),
        )
        .expect("encode a batch");
        let version = if self.v2 { 12 } else { 9 };
        let connection = self.connections.entry(partition).or_default();
        for _ in 0..ATTEMPTS_PER_REQUEST {
            let sent = send_once(
                &self.shared,
                connection,
                (TXN_TOPIC, partition),
                &batch,
                Some(&self.transactional_id),
                version,
            )
            .await;
            match sent {
                Sent::Acked(offset) => return Ok(offset),
                Sent::Refused(e @ ResponseError::TransactionAbortable) => {
                    return Err(Stop::Abortable(format!("p{partition}: {e:?}")))
                }
                Sent::Refused(e) => return Err(Stop::Fatal(format!("p{partition}: {e:?}"))),
                Sent::Retry => {
                    // NOT_ENOUGH_REPLICAS (also the coordinator's CONCURRENT_TRANSACTIONS
                    // while the last transaction's markers are written), a timeout, a
                    // leader change.
                    let pause = thread_rng().gen_range(20..=200);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }
        }
        Err(Stop::Fatal(format!("p{partition}: never acknowledged")))
    }

    /// A new producer epoch (InitProducerId, which ends what the last one left open).
    async fn init(&mut self) -> Result<(), Stop> {
        let previous = self.producer.take();
        let Some((id, epoch)) = self.call(Call::InitProducerId).await? else {
            return Err(Stop::Fatal("InitProducerId without an answer".into()));
        };
        self.event(format!("producer id {id} epoch {epoch}"));
        if let Some((old_id, old_epoch)) = previous {
            if old_id == id && old_epoch < epoch && self.zombie.is_none() {
                self.zombie = Some((old_id, old_epoch, self.sequences.clone()));
            }
        }
        self.producer = Some((id, epoch));
        self.sequences.clear();
        Ok(())
    }

    /// EndTxn of transaction `txn_no`. Version 2 goes on with the producer id and epoch
    /// the answer names, every sequence from 0 again, and now and then leaves a late batch
    /// of the epoch that ended (sent by [`TxnProducer::late_produce`]).
    async fn end(&mut self, commit: bool, txn_no: u64) -> Result<(), Stop> {
        let answer = self.call(Call::EndTxn(commit)).await?;
        if !self.v2 {
            assert_eq!(answer, None, "EndTxn v4 names no producer");
            return Ok(());
        }
        let Some(next) = answer else {
            return Err(Stop::Fatal(
                "EndTxn v5 without a producer id and epoch".into(),
            ));
        };
        let (producer_id, producer_epoch) = self.producer.expect("initialized");
        // A client takes what the coordinator gives: a coordinator that did not bump the
        // epoch is for the late batches to expose, not for this producer to notice.
        if !self.sequences.is_empty() && thread_rng().gen_range(0..3) == 0 {
            self.late = Some(LateBatch {
                producer_id,
                producer_epoch,
                sequences: self.sequences.clone(),
                txn_no,
            });
        }
        self.event(format!(
            "EndTxn v5 of transaction {txn_no}: producer id {producer_id} epoch {producer_epoch} → id {} epoch {}",
            next.0, next.1
        ));
        self.producer = Some(next);
        self.sequences.clear();
        Ok(())
    }

    /// The zombie (a fenced earlier instance) sends one batch to `partition`, which the
    /// current epoch wrote: it must be refused.
    async fn zombie_produce(&mut self, partition: i32, txn_no: u64) {
        let Some((producer_id, producer_epoch, sequences)) = self.zombie.take() else {
            return;
        };
        let value = format!("z{}-{txn_no:05}-p{partition}", self.index);
        self.shared
            .txn
            .lock()
            .unwrap()
            .zombie_values
            .insert(value.clone());
        let fields = ProducerFields {
            producer_id,
            producer_epoch,
            base_sequence: sequences.get(&partition).copied().unwrap_or(0),
            transactional: true,
        };
        match self.produce(partition, fields, &[value]).await {
            Ok(offset) => self.shared.report(violation(
                "txn-zombie-fenced",
                format!(
                    "p{partition}: a batch of producer {producer_id} epoch {producer_epoch} (fenced) acknowledged at offset {offset}"
                ),
            )),
            Err(stop) => {
                self.event(format!(
                    "zombie epoch {producer_epoch} refused: {}",
                    stop.why()
                ));
                self.shared.txn.lock().unwrap().zombies_refused += 1;
            }
        }
    }

    /// KAFKA-17754: a batch of the epoch the last EndTxn ended (the sequence that epoch
    /// would have used next on one of the partitions it wrote), delayed in the network,
    /// arrives now that the next transaction has begun. The next transaction's first
    /// batch was acknowledged, so the coordinator had completed the ended one: every
    /// marker is written, with the bumped epoch. The batch must be refused: taken, it
    /// would join (or start) a transaction the producer never sent it in.
    async fn late_produce(&mut self) {
        let Some(late) = self.late.take() else {
            return;
        };
        assert!(self.v2, "only version 2 producers leave late batches");
        let partitions: Vec<i32> = late.sequences.keys().copied().collect();
        assert!(
            !partitions.is_empty(),
            "a late batch of an epoch that wrote"
        );
        let partition = partitions[thread_rng().gen_range(0..partitions.len())];
        let value = format!("l{}-{:05}-p{partition}", self.index, late.txn_no);
        self.shared
            .txn
            .lock()
            .unwrap()
            .late_values
            .insert(value.clone());
        let (producer_id, producer_epoch) = (late.producer_id, late.producer_epoch);
        let fields = ProducerFields {
            producer_id,
            producer_epoch,
            base_sequence: late.sequences[&partition],
            transactional: true,
        };
        match self.produce(partition, fields, &[value]).await {
            Ok(offset) => self.shared.report(violation(
                "txn-late-batch-fenced",
                format!(
                    "p{partition}: a late batch of producer {producer_id} epoch {producer_epoch} (ended by transaction {}'s EndTxn) acknowledged at offset {offset}",
                    late.txn_no
                ),
            )),
            Err(stop) => {
                self.event(format!(
                    "late batch of epoch {producer_epoch} refused: {}",
                    stop.why()
                ));
                self.shared.txn.lock().unwrap().late_refused += 1;
            }
        }
    }

    /// One transaction; Err stops it before its end.
    async fn transaction(&mut self, txn_no: u64) -> Result<(), Stop> {
        let mut rng = thread_rng();
        let (producer_id, producer_epoch) = self.producer.expect("initialized");
        let mut partitions: Vec<i32> = (0..TXN_PARTITIONS).collect();
        // All partitions, or all but one.
        let skipped = rng.gen_range(0..=TXN_PARTITIONS as usize);
        if skipped < partitions.len() {
            partitions.remove(skipped);
        }
        let commit = rng.gen_range(0..4) != 0;
        let restart_at = (rng.gen_range(0..8) == 0).then(|| rng.gen_range(0..partitions.len()));
        let key = (self.index, txn_no);
        self.shared.txn.lock().unwrap().txns.insert(
            key,
            Txn {
                end: TxnEnd::Open,
                values: Vec::new(),
                offset_committed: false,
                offset_partition: -1,
            },
        );
        if !self.v2 {
            self.call(Call::AddPartitions(partitions.clone())).await?;
        }
        for (i, &partition) in partitions.iter().enumerate() {
            let values: Vec<String> = (0..rng.gen_range(1..=3))
                .map(|r| format!("t{}-{txn_no:05}-p{partition}-{r}", self.index))
                .collect();
            {
                let mut history = self.shared.txn.lock().unwrap();
                for v in &values {
                    history.values.insert(v.clone(), key);
                    history
                        .txns
                        .get_mut(&key)
                        .unwrap()
                        .values
                        .push((partition, v.clone()));
                }
            }
            let sequence = self.sequences.get(&partition).copied().unwrap_or(0);
            let fields = ProducerFields {
                producer_id,
                producer_epoch,
                base_sequence: sequence,
                transactional: true,
            };
            self.produce(partition, fields, &values).await?;
            self.sequences.insert(
                partition,
                sequence.wrapping_add(values.len() as i32) & i32::MAX,
            );
            self.zombie_produce(partition, txn_no).await;
            if i == 0 {
                self.late_produce().await;
            }
            if restart_at == Some(i) {
                // The application restarts in the middle of the transaction.
                self.shared.txn.lock().unwrap().restarts += 1;
                return Err(Stop::Fatal("restart".into()));
            }
        }
        if !self.v2 {
            self.call(Call::AddOffsets).await?;
        }
        // A transaction commits the offset of its producer's partition, except half of
        // those meant to abort: they commit that of the last partition, whose offset
        // must stay unset. The other half must never shadow the committed offset before
        // them (not live, and not once compaction cleaned `__consumer_offsets`).
        let offset_partition = if commit || txn_no % 2 == 0 {
            self.index as i32
        } else {
            ABORTED_OFFSETS_PARTITION
        };
        self.update_txn(key, |txn| txn.offset_partition = offset_partition);
        self.call(Call::TxnOffsetCommit(offset_partition, txn_no as i64 + 1))
            .await?;
        self.update_txn(key, |txn| {
            txn.offset_committed = true;
            if commit {
                txn.end = TxnEnd::CommitSent;
            }
        });
        self.end(commit, txn_no).await?;
        let end = if commit {
            TxnEnd::Committed
        } else {
            TxnEnd::Aborted
        };
        self.update_txn(key, |txn| txn.end = end);
        self.event(format!("transaction {txn_no} {end:?} ({partitions:?})"));
        Ok(())
    }

    /// After TRANSACTION_ABORTABLE: transaction `txn_no` is aborted (EndTxn abort) and the
    /// producer goes on with the same (version 1) or the next (version 2) epoch. Err: the
    /// epoch ends instead.
    async fn abort(&mut self, txn_no: u64, why: &str) -> Result<(), Stop> {
        let open = {
            let mut history = self.shared.txn.lock().unwrap();
            let txn = history.txns.get_mut(&(self.index, txn_no)).unwrap();
            let open = txn.end == TxnEnd::Open;
            if open {
                txn.end = TxnEnd::Aborted;
            }
            open
        };
        if !open {
            // Only a call before the commit is sent is ever abortable.
            return Err(Stop::Fatal(format!("{why} after the commit was sent")));
        }
        self.event(format!("transaction {txn_no} aborts ({why})"));
        match self.end(false, txn_no).await {
            Ok(()) => Ok(()),
            Err(stop) => Err(Stop::Fatal(format!("abort after {why}: {}", stop.why()))),
        }
    }
}

/// One transactional producer until the load stops (`index` 1 with transaction version
/// 2, the others version 1).
pub(super) async fn producer_loop(shared: Arc<Shared>, index: usize) {
    let mut producer = TxnProducer {
        shared: shared.clone(),
        index,
        transactional_id: format!("sim-txn-{index}"),
        v2: index == TXN_V2_PRODUCER,
        coordinators: BTreeMap::new(),
        producer: None,
        sequences: BTreeMap::new(),
        connections: BTreeMap::new(),
        zombie: None,
        late: None,
    };
    let mut txn_no = 0u64;
    let mut rounds = 0u64;
    while !shared.stop_load.load(Ordering::Relaxed) && txn_no < MAX_TXNS && rounds < 2 * MAX_TXNS {
        rounds += 1;
        let pause = thread_rng().gen_range(0..=60);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if producer.producer.is_none() {
            if let Err(stop) = producer.init().await {
                producer.event(format!("init failed: {}", stop.why()));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            continue;
        }
        let mut result = producer.transaction(txn_no).await;
        if let Err(Stop::Abortable(why)) = &result {
            let why = why.clone();
            result = producer.abort(txn_no, &why).await;
        }
        if let Err(stop) = result {
            let end = {
                let mut history = shared.txn.lock().unwrap();
                let txn = history.txns.get_mut(&(index, txn_no)).unwrap();
                if txn.end == TxnEnd::Open {
                    txn.end = TxnEnd::Aborted;
                }
                txn.end
            };
            producer.event(format!(
                "transaction {txn_no} ends the epoch ({}), {end:?}",
                stop.why()
            ));
            // InitProducerId with the current epoch: a new one, the open transaction
            // aborted (or its commit completed).
            if let Err(stop) = producer.init().await {
                producer.producer = None;
                producer.event(format!("init failed: {}", stop.why()));
            }
        }
        txn_no += 1;
    }
}

/// Reads every partition of the topic with read_committed Fetch until the load stops.
pub(super) async fn reader_loop(shared: Arc<Shared>) {
    let mut rng = thread_rng();
    let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
    // broker → (connection, partition → the highest last stable offset it reported).
    let mut connections: BTreeMap<u64, (Client, BTreeMap<i32, i64>)> = BTreeMap::new();
    while !shared.stop_load.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(20..=150))).await;
        let partition = rng.gen_range(0..TXN_PARTITIONS);
        let Some((leader, epoch)) = image_leader(&shared, TXN_TOPIC, partition) else {
            continue;
        };
        if !connections.contains_key(&leader) {
            let Some(client) = connect(kafka_addr(leader)).await else {
                continue;
            };
            connections.insert(leader, (client, BTreeMap::new()));
        }
        let (client, lsos) = connections.get_mut(&leader).unwrap();
        let position = positions.get(&partition).copied().unwrap_or(0);
        let fetched = tokio::time::timeout(
            OP_TIMEOUT,
            client.fetch_read_committed(TXN_TOPIC, partition, position, epoch, READ_MAX_BYTES),
        )
        .await;
        let Ok(Ok(fetched)) = fetched else {
            connections.remove(&leader);
            continue;
        };
        if fetched.error.is_some() {
            continue;
        }
        let highest = lsos.entry(partition).or_insert(fetched.last_stable_offset);
        if fetched.last_stable_offset < *highest {
            shared.report(violation(
                "txn-lso-monotonic",
                format!(
                    "p{partition}: broker {leader} reported last stable offset {} after {}",
                    fetched.last_stable_offset, highest
                ),
            ));
            return;
        }
        *highest = fetched.last_stable_offset;
        if let Some(v) = record_reads(&shared, partition, leader, &fetched.records) {
            shared.report(v);
            return;
        }
        if let Some(next) = fetched.next_offset.filter(|n| *n > position) {
            positions.insert(partition, next);
        }
    }
}

/// Checks and records what the reader read of `partition` from `leader`.
fn record_reads(
    shared: &Shared,
    partition: i32,
    leader: u64,
    records: &[strand::client::SimpleRecord],
) -> Option<Violation> {
    let mut history = shared.txn.lock().unwrap();
    for record in records {
        let value = value_of(record);
        let offset = record.offset;
        if let Some((invariant, detail)) = history.check_read(&value) {
            return Some(violation(
                invariant,
                format!("p{partition} offset {offset} (broker {leader}): {detail}"),
            ));
        }
        if let Some(before) = history.reads.insert((partition, offset), value.clone()) {
            if before != value {
                return Some(violation(
                    "txn-lso-monotonic",
                    format!("p{partition} offset {offset}: read {before}, then {value}"),
                ));
            }
        }
    }
    None
}

fn value_of(record: &strand::client::SimpleRecord) -> String {
    String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()).to_string()
}

/// One read_committed Fetch of `partition` from its leader (None: no answer).
async fn fetch_from_leader(
    shared: &Shared,
    partition: i32,
    offset: i64,
) -> Option<strand::client::ReadCommittedPartition> {
    let (leader, epoch) = image_leader(shared, TXN_TOPIC, partition)?;
    let mut client = connect(kafka_addr(leader)).await?;
    let fetch = client.fetch_read_committed(TXN_TOPIC, partition, offset, epoch, READ_MAX_BYTES);
    let fetched = tokio::time::timeout(OP_TIMEOUT, fetch).await.ok()?.ok()?;
    fetched.error.is_none().then_some(fetched)
}

/// After healing, with the producers stopped: the last stable offsets reach the high
/// watermarks, then everything read_committed shows is checked.
pub(super) async fn check(shared: &Shared) -> Result<(), Violation> {
    let lso_deadline = Shared::now_ms() + LSO_LIMIT_MS;
    let mut visible: BTreeMap<i32, BTreeMap<i64, String>> = BTreeMap::new();
    for partition in 0..TXN_PARTITIONS {
        let high_watermark = loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let fetched = fetch_from_leader(shared, partition, 0).await;
            let last = fetched
                .as_ref()
                .map(|f| (f.last_stable_offset, f.high_watermark));
            if let Some((_, hw)) = last.filter(|(lso, hw)| lso == hw) {
                break hw;
            }
            if Shared::now_ms() > lso_deadline {
                return Err(violation(
                    "txn-lso-not-stuck",
                    format!(
                        "p{partition}: {LSO_LIMIT_MS} ms after the producers stopped, (last stable offset, high watermark) is {last:?}"
                    ),
                ));
            }
        };
        let read = visible.entry(partition).or_default();
        let mut offset = 0;
        while offset < high_watermark {
            let Some(fetched) = fetch_from_leader(shared, partition, offset).await else {
                if Shared::now_ms() > lso_deadline + LSO_LIMIT_MS {
                    return Err(violation(
                        "liveness",
                        format!("p{partition} of {TXN_TOPIC} not readable at offset {offset}"),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            shared.event(format!(
                "txn check p{partition}: read_committed fetch at {offset}: {} records, next {:?}, last stable offset {}, high watermark {}, log start {}",
                fetched.records.len(),
                fetched.next_offset,
                fetched.last_stable_offset,
                fetched.high_watermark,
                fetched.log_start_offset
            ));
            for r in fetched.records {
                read.insert(r.offset, value_of(&r));
            }
            match fetched.next_offset {
                Some(next) if next > offset => offset = next,
                _ => break,
            }
        }
    }
    check_visible(shared, &visible)?;
    check_offsets(shared, &visible).await
}

fn check_visible(
    shared: &Shared,
    visible: &BTreeMap<i32, BTreeMap<i64, String>>,
) -> Result<(), Violation> {
    let history = shared.txn.lock().unwrap();
    let mut seen: BTreeMap<&str, (i32, i64)> = BTreeMap::new();
    for (&partition, records) in visible {
        for (&offset, value) in records {
            if let Some((invariant, detail)) = history.check_read(value) {
                return Err(violation(
                    invariant,
                    format!("p{partition} offset {offset} at the end: {detail}"),
                ));
            }
            if let Some((p, o)) = seen.insert(value, (partition, offset)) {
                return Err(violation(
                    "txn-no-duplicates",
                    format!("{value} at p{p} offset {o} and p{partition} offset {offset}"),
                ));
            }
        }
    }
    for (&(partition, offset), value) in &history.reads {
        if visible.get(&partition).and_then(|r| r.get(&offset)) != Some(value) {
            return Err(violation(
                "txn-lso-monotonic",
                format!(
                    "p{partition} offset {offset}: {value} was read during the run, at the end {:?}",
                    visible.get(&partition).and_then(|r| r.get(&offset))
                ),
            ));
        }
    }
    let mut counts: BTreeMap<TxnEnd, u64> = BTreeMap::new();
    for (key, txn) in &history.txns {
        *counts.entry(txn.end).or_default() += 1;
        if !txn.end.may_be_visible() {
            continue;
        }
        let shown: Vec<&(i32, String)> = txn
            .values
            .iter()
            .filter(|(_, v)| seen.contains_key(v.as_str()))
            .collect();
        let all = shown.len() == txn.values.len();
        if !all && (txn.end == TxnEnd::Committed || !shown.is_empty()) {
            return Err(violation(
                "txn-atomic-visibility",
                format!(
                    "transaction {key:?} ({:?}): {} of its records {:?} visible: {shown:?}",
                    txn.end,
                    shown.len(),
                    txn.values
                ),
            ));
        }
    }
    shared.event(format!(
        "txn topic: {} records visible, transactions {counts:?}, {} restarts, {} zombie batches refused, {} late batches refused",
        seen.len(),
        history.restarts,
        history.zombies_refused,
        history.late_refused
    ));
    Ok(())
}

/// The group's committed offset for each producer's partition must be that of its last
/// committed transaction, and none for the partition of the aborted ones.
async fn check_offsets(
    shared: &Shared,
    visible: &BTreeMap<i32, BTreeMap<i64, String>>,
) -> Result<(), Violation> {
    // Per partition: the offset of the last transaction that committed one there.
    let expected = {
        let history = shared.txn.lock().unwrap();
        let shown: BTreeSet<&str> = visible
            .values()
            .flat_map(|r| r.values().map(String::as_str))
            .collect();
        let is_visible = |v: &str| shown.contains(v);
        let mut expected: BTreeMap<i32, Option<i64>> = BTreeMap::new();
        for index in 0..TXN_PRODUCERS {
            let partition = index as i32;
            let txns = history.txns.range((index, 0)..(index + 1, 0));
            let mut last = None;
            for ((_, no), t) in txns.filter(|(_, t)| t.offset_partition == partition) {
                let offset = *no as i64 + 1;
                let visible_commit = t.end == TxnEnd::Committed
                    || (t.end == TxnEnd::CommitSent
                        && t.values.first().is_some_and(|(_, v)| is_visible(v)));
                if t.offset_committed && visible_commit {
                    last = Some(offset);
                }
            }
            expected.insert(partition, last);
        }
        expected.insert(ABORTED_OFFSETS_PARTITION, None);
        expected
    };
    let partitions: Vec<i32> = expected.keys().copied().collect();
    let deadline = Shared::now_ms() + LSO_LIMIT_MS;
    let mut rng = thread_rng();
    let mut last_error = String::new();
    while Shared::now_ms() <= deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some(id) = brokers_from_random(shared, &mut rng).next() else {
            continue;
        };
        let Some(mut client) = connect(kafka_addr(id)).await else {
            continue;
        };
        let Ok(Ok(node)) =
            tokio::time::timeout(OP_TIMEOUT, client.find_coordinator(TXN_GROUP)).await
        else {
            continue;
        };
        let Some(mut coordinator) = connect(kafka_addr(node.node_id as u64)).await else {
            continue;
        };
        let topics = [(TXN_TOPIC, &partitions[..])];
        let fetched = tokio::time::timeout(
            OP_TIMEOUT,
            coordinator.offset_fetch_stable(TXN_GROUP, Some(&topics)),
        )
        .await;
        let offsets = match fetched {
            Ok(Ok(offsets)) => offsets,
            Ok(Err(e)) => {
                last_error = format!("{e:#}");
                continue;
            }
            Err(_) => continue,
        };
        if let Some(e) = offsets.iter().find_map(|o| o.error) {
            last_error = format!("{e:?}");
            continue; // UNSTABLE_OFFSET_COMMIT and the like: ask again
        }
        let got: BTreeMap<i32, Option<i64>> = offsets
            .iter()
            .map(|o| (o.partition, o.committed_offset))
            .collect();
        if got != expected {
            return Err(violation(
                "txn-offsets-iff-commit",
                format!("committed offsets (partition → offset) {got:?}, expected {expected:?}"),
            ));
        }
        shared.event(format!("txn group offsets {got:?} as expected"));
        return Ok(());
    }
    Err(violation(
        "liveness",
        format!("OffsetFetch of {TXN_GROUP} never answered after healing: {last_error}"),
    ))
}
