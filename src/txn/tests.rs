//! The transaction coordinator driven as producers and brokers drive it: transactions
//! begun, committed, aborted, retried, fenced, timed out and carried over to a new
//! coordinator, with the clock moved by hand and every persisted record kept (through
//! its stored encoding) as the `__transaction_state` log a failover replays.

use super::coordinator::*;
use super::host::{partition_for, TxnCoordinatorHost};
use super::records::{decode_batches, encode_batch, TxnRecord};
use kafka_protocol::ResponseError;
use proptest::prelude::*;
use std::collections::BTreeSet;

const ID: &str = "txn-app";
const TIMEOUT_MS: i32 = 60_000;
const FIRST_PRODUCER_ID: i64 = 1_000;
const COORDINATOR_EPOCH: i32 = 5;

struct Harness {
    coordinator: TxnCoordinator,
    now_ms: i64,
    next_producer_id: i64,
    /// What the coordinator persisted, in order (its `__transaction_state` log).
    log: Vec<TxnRecord>,
    /// Markers asked for and not yet reported written.
    markers: Vec<WriteMarkers>,
}

fn tp(topic: &str, partition: i32) -> TopicPartition {
    TopicPartition::new(topic, partition)
}

fn pe(producer_id: i64, producer_epoch: i16) -> ProducerIdAndEpoch {
    ProducerIdAndEpoch {
        producer_id,
        producer_epoch,
    }
}

impl Harness {
    fn new() -> Harness {
        Harness {
            coordinator: TxnCoordinator::new(TxnConfig::default(), COORDINATOR_EPOCH),
            now_ms: 1_000_000,
            next_producer_id: FIRST_PRODUCER_ID,
            log: Vec::new(),
            markers: Vec::new(),
        }
    }

    /// Effects as the broker takes them: records through their stored encoding into the
    /// log; markers only after a record (the prepare they carry out).
    fn take(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Persist(record) => {
                    let (key, value) = record.encode();
                    let decoded = TxnRecord::decode(&key, value.as_deref()).unwrap();
                    assert_eq!(decoded, record);
                    self.log.push(decoded);
                }
                Effect::WriteMarkers(markers) => {
                    let prepared = self
                        .log
                        .iter()
                        .rev()
                        .find(|r| r.transactional_id == markers.transactional_id)
                        .and_then(|r| r.metadata.as_ref())
                        .expect("markers follow the prepare record");
                    let result = match markers.result {
                        TxnResult::Commit => TxnState::PrepareCommit,
                        TxnResult::Abort => TxnState::PrepareAbort,
                    };
                    assert_eq!(prepared.state, result);
                    assert_eq!(prepared.partitions, markers.partitions);
                    assert_eq!(prepared.producer_id, markers.producer_id);
                    assert_eq!(prepared.producer_epoch, markers.producer_epoch);
                    assert!(!markers.partitions.is_empty());
                    self.markers.push(markers);
                }
            }
        }
    }

    fn init_with(
        &mut self,
        id: &str,
        expected: Option<ProducerIdAndEpoch>,
    ) -> Result<ProducerIdAndEpoch, ResponseError> {
        let next = &mut self.next_producer_id;
        let mut allocate = || {
            *next += 1;
            Ok(*next - 1)
        };
        let (answer, effects) =
            self.coordinator
                .init_producer_id(id, TIMEOUT_MS, expected, &mut allocate, self.now_ms);
        self.take(effects);
        answer
    }

    fn init(&mut self, id: &str) -> Result<ProducerIdAndEpoch, ResponseError> {
        self.init_with(id, None)
    }

    fn add(
        &mut self,
        id: &str,
        producer: ProducerIdAndEpoch,
        partitions: &[TopicPartition],
        v2: bool,
    ) -> Result<(), ResponseError> {
        let (answer, effects) =
            self.coordinator
                .add_partitions(id, producer, partitions, v2, self.now_ms);
        self.take(effects);
        answer
    }

    fn end(
        &mut self,
        id: &str,
        producer: ProducerIdAndEpoch,
        result: TxnResult,
        v2: bool,
    ) -> EndTxnResponse {
        let next = &mut self.next_producer_id;
        let mut allocate = || {
            *next += 1;
            Ok(*next - 1)
        };
        let (answer, effects) =
            self.coordinator
                .end_txn(id, producer, result, v2, &mut allocate, self.now_ms);
        self.take(effects);
        answer
    }

    /// Every outstanding marker is written and reported.
    fn deliver_markers(&mut self) {
        for markers in std::mem::take(&mut self.markers) {
            let effects = self.coordinator.markers_written(&markers, self.now_ms);
            self.take(effects);
        }
    }

    fn tick(&mut self, advance_ms: i64) {
        self.now_ms += advance_ms;
        let effects = self.coordinator.tick(self.now_ms);
        self.take(effects);
    }

    /// The log as a new coordinator reads it back: one batch per record, decoded.
    fn read_back(&self) -> Vec<TxnRecord> {
        let mut records = Vec::new();
        for record in &self.log {
            let batch = encode_batch(std::slice::from_ref(record), self.now_ms);
            let (decoded, skipped) = decode_batches(&batch).unwrap();
            assert_eq!(skipped, 0);
            records.extend(decoded);
        }
        records
    }

    /// A coordinator rebuilt from the log alone.
    fn replayed(&self, coordinator_epoch: i32) -> TxnCoordinator {
        let mut replayed = TxnCoordinator::new(TxnConfig::default(), coordinator_epoch);
        for record in self.read_back() {
            replayed.replay(&record);
        }
        replayed
    }

    /// The partition's next leader takes over: it replays the log and carries out what
    /// was prepared. Markers asked of the old coordinator are forgotten (its channel
    /// died with it).
    fn fail_over(&mut self) {
        let epoch = self.coordinator.coordinator_epoch() + 1;
        self.coordinator = self.replayed(epoch);
        self.markers.clear();
        let effects = self.coordinator.pending_markers(self.now_ms);
        self.take(effects);
    }

    fn metadata(&self, id: &str) -> TxnMetadata {
        self.coordinator.transactions()[id].clone()
    }

    fn state(&self, id: &str) -> TxnState {
        self.metadata(id).state
    }

    /// The states the log recorded for `id`, in order (None: a tombstone).
    fn logged_states(&self, id: &str) -> Vec<Option<TxnState>> {
        self.log
            .iter()
            .filter(|r| r.transactional_id == id)
            .map(|r| r.metadata.as_ref().map(|m| m.state))
            .collect()
    }

    fn describe(&self, id: &str) -> Result<TxnDescription, ResponseError> {
        self.coordinator.describe(&[id.to_string()]).remove(0)
    }
}

#[test]
fn a_transaction_commits_through_prepare_markers_and_completion() {
    let mut h = Harness::new();
    let producer = h.init(ID).unwrap();
    assert_eq!(producer, pe(FIRST_PRODUCER_ID, 0));
    assert_eq!(h.state(ID), TxnState::Empty);
    h.now_ms += 10;
    let start_ms = h.now_ms;
    h.add(ID, producer, &[tp("out", 0), tp("out", 1)], false)
        .unwrap();
    let (answer, effects) = h.coordinator.add_offsets(ID, producer, 7, false, h.now_ms);
    assert_eq!(answer, Ok(()));
    h.take(effects);
    // Adding what is already there changes nothing (and persists nothing).
    let logged = h.log.len();
    h.add(ID, producer, &[tp("out", 1)], false).unwrap();
    assert_eq!(h.log.len(), logged);

    let described = h.describe(ID).unwrap();
    assert_eq!(described.state, TxnState::Ongoing);
    assert_eq!(described.txn_start_timestamp_ms, start_ms);
    assert_eq!(described.txn_timeout_ms, TIMEOUT_MS);
    assert_eq!(described.topics["out"], vec![0, 1]);
    assert_eq!(described.topics[OFFSETS_TOPIC], vec![7]);

    h.now_ms += 10;
    let answer = h.end(ID, producer, TxnResult::Commit, false);
    assert_eq!(answer.error, None);
    // Version 1: no producer id or epoch in the answer.
    assert_eq!((answer.producer_id, answer.producer_epoch), (-1, -1));
    assert_eq!(h.state(ID), TxnState::PrepareCommit);
    assert_eq!(h.markers.len(), 1);
    let markers = h.markers[0].clone();
    assert_eq!(markers.transactional_id, ID);
    assert_eq!(markers.result, TxnResult::Commit);
    assert_eq!(
        (markers.producer_id, markers.producer_epoch),
        (FIRST_PRODUCER_ID, 0)
    );
    assert_eq!(markers.coordinator_epoch, COORDINATOR_EPOCH);
    let expected: BTreeSet<_> = [tp("out", 0), tp("out", 1), tp(OFFSETS_TOPIC, 7)].into();
    assert_eq!(markers.partitions, expected);

    h.deliver_markers();
    let metadata = h.metadata(ID);
    assert_eq!(metadata.state, TxnState::CompleteCommit);
    assert!(metadata.partitions.is_empty());
    assert_eq!(metadata.producer(), producer);
    use TxnState::*;
    assert_eq!(
        h.logged_states(ID),
        [Empty, Ongoing, Ongoing, PrepareCommit, CompleteCommit].map(Some)
    );
    // The next transaction starts from CompleteCommit with the same producer.
    h.add(ID, producer, &[tp("out", 2)], false).unwrap();
    assert_eq!(h.state(ID), TxnState::Ongoing);
}

#[test]
fn an_abort_writes_abort_markers_and_end_txn_retries_are_answered() {
    let mut h = Harness::new();
    let producer = h.init(ID).unwrap();
    h.add(ID, producer, &[tp("out", 0)], false).unwrap();
    assert_eq!(h.end(ID, producer, TxnResult::Abort, false).error, None);
    assert_eq!(h.state(ID), TxnState::PrepareAbort);
    assert_eq!(h.markers[0].result, TxnResult::Abort);
    // While the markers are written: the same end again waits, the other is refused,
    // and nothing can join the transaction.
    let again = h.end(ID, producer, TxnResult::Abort, false);
    assert_eq!(again.error, Some(ResponseError::ConcurrentTransactions));
    let other = h.end(ID, producer, TxnResult::Commit, false);
    assert_eq!(other.error, Some(ResponseError::InvalidTxnState));
    assert_eq!(
        h.add(ID, producer, &[tp("out", 1)], false),
        Err(ResponseError::ConcurrentTransactions)
    );
    assert_eq!(
        h.init(ID),
        Err(ResponseError::ConcurrentTransactions),
        "a new producer waits for the abort"
    );
    h.deliver_markers();
    assert_eq!(h.state(ID), TxnState::CompleteAbort);
    // A retry of the completed end succeeds; the other result is refused.
    let retry = h.end(ID, producer, TxnResult::Abort, false);
    assert_eq!(retry.error, None);
    let wrong = h.end(ID, producer, TxnResult::Commit, false);
    assert_eq!(wrong.error, Some(ResponseError::InvalidTxnState));
    assert_eq!(h.state(ID), TxnState::CompleteAbort);
}

#[test]
fn end_txn_errors_are_kafkas() {
    let mut h = Harness::new();
    let unknown = h.end("nobody", pe(1, 0), TxnResult::Commit, false);
    assert_eq!(unknown.error, Some(ResponseError::InvalidProducerIdMapping));
    let empty_id = h.end("", pe(1, 0), TxnResult::Commit, false);
    assert_eq!(empty_id.error, Some(ResponseError::InvalidRequest));
    let producer = h.init(ID).unwrap();
    // Nothing ongoing: no commit, and (version 1) no abort.
    let commit = h.end(ID, producer, TxnResult::Commit, false);
    assert_eq!(commit.error, Some(ResponseError::InvalidTxnState));
    let abort = h.end(ID, producer, TxnResult::Abort, false);
    assert_eq!(abort.error, Some(ResponseError::InvalidTxnState));
    h.add(ID, producer, &[tp("out", 0)], false).unwrap();
    let other_id = pe(producer.producer_id + 1, 0);
    let mapping = h.end(ID, other_id, TxnResult::Commit, false);
    assert_eq!(mapping.error, Some(ResponseError::InvalidProducerIdMapping));
    let old_epoch = h.end(ID, pe(producer.producer_id, -1), TxnResult::Commit, false);
    assert_eq!(old_epoch.error, Some(ResponseError::ProducerFenced));
    assert_eq!(
        h.add(ID, other_id, &[tp("out", 1)], false),
        Err(ResponseError::InvalidProducerIdMapping)
    );
    assert_eq!(
        h.add("nobody", producer, &[tp("out", 1)], false),
        Err(ResponseError::InvalidProducerIdMapping)
    );
    assert_eq!(h.state(ID), TxnState::Ongoing, "errors change nothing");
}

#[test]
fn init_producer_id_checks_the_timeout_and_kip_360_expectations() {
    let mut h = Harness::new();
    let mut allocate = || Ok(1);
    for bad_ms in [0, -1, 900_001] {
        let (answer, effects) =
            h.coordinator
                .init_producer_id(ID, bad_ms, None, &mut allocate, h.now_ms);
        assert_eq!(answer, Err(ResponseError::InvalidTransactionTimeout));
        assert!(effects.is_empty());
    }
    let (answer, _) = h
        .coordinator
        .init_producer_id("", TIMEOUT_MS, None, &mut allocate, h.now_ms);
    assert_eq!(answer, Err(ResponseError::InvalidRequest));
    // Allocation failing (no block of ids yet) is the client's retriable error.
    let mut unavailable = || Err(ResponseError::CoordinatorLoadInProgress);
    let (answer, effects) =
        h.coordinator
            .init_producer_id(ID, TIMEOUT_MS, None, &mut unavailable, h.now_ms);
    assert_eq!(answer, Err(ResponseError::CoordinatorLoadInProgress));
    assert!(effects.is_empty() && h.coordinator.transactions().is_empty());

    let first = h.init(ID).unwrap();
    assert_eq!(first, pe(FIRST_PRODUCER_ID, 0));
    // KIP-360: the producer recovers with what it has: the epoch is bumped.
    let recovered = h.init_with(ID, Some(first)).unwrap();
    assert_eq!(recovered, pe(FIRST_PRODUCER_ID, 1));
    // Its retry (the answer was lost) gets the same epoch again.
    let retried = h.init_with(ID, Some(first)).unwrap();
    assert_eq!(retried, recovered);
    // Anything else is a fenced producer.
    assert_eq!(
        h.init_with(ID, Some(pe(FIRST_PRODUCER_ID, 7))),
        Err(ResponseError::ProducerFenced)
    );
    assert_eq!(
        h.init_with(ID, Some(pe(FIRST_PRODUCER_ID + 50, 1))),
        Err(ResponseError::ProducerFenced)
    );
    // A new producer (no expectation) bumps, and the recovery retry no longer works.
    assert_eq!(h.init(ID).unwrap(), pe(FIRST_PRODUCER_ID, 2));
    assert_eq!(
        h.init_with(ID, Some(first)),
        Err(ResponseError::ProducerFenced)
    );
    assert_eq!(
        h.next_producer_id,
        FIRST_PRODUCER_ID + 1,
        "one id allocated"
    );
}

#[test]
fn a_second_producer_fences_the_first_and_aborts_its_transaction() {
    let mut h = Harness::new();
    let first = h.init(ID).unwrap();
    h.add(ID, first, &[tp("out", 0), tp("out", 1)], false)
        .unwrap();
    // The new producer's InitProducerId aborts the ongoing transaction first.
    assert_eq!(h.init(ID), Err(ResponseError::ConcurrentTransactions));
    let metadata = h.metadata(ID);
    assert_eq!(metadata.state, TxnState::PrepareAbort);
    assert_eq!(metadata.producer_epoch, 1, "the epoch was bumped to fence");
    assert_eq!(metadata.last_producer_epoch, NO_PRODUCER_EPOCH);
    assert_eq!(h.markers.len(), 1);
    assert_eq!(h.markers[0].result, TxnResult::Abort);
    assert_eq!(
        h.markers[0].producer_epoch, 1,
        "the abort markers fence the old epoch on every partition"
    );
    // The first producer is fenced everywhere.
    let end = h.end(ID, first, TxnResult::Commit, false);
    assert_eq!(end.error, Some(ResponseError::ProducerFenced));
    assert_eq!(
        h.add(ID, first, &[tp("out", 2)], false),
        Err(ResponseError::ProducerFenced)
    );
    assert_eq!(
        h.coordinator.verify_partitions(ID, first, &[tp("out", 0)]),
        vec![Some(ResponseError::ProducerFenced)]
    );
    // The new producer retries until the abort completes.
    assert_eq!(h.init(ID), Err(ResponseError::ConcurrentTransactions));
    h.deliver_markers();
    assert_eq!(h.state(ID), TxnState::CompleteAbort);
    let second = h.init(ID).unwrap();
    assert_eq!(second, pe(first.producer_id, 2));
    assert_eq!(
        h.add(ID, first, &[tp("out", 0)], false),
        Err(ResponseError::ProducerFenced)
    );
    h.add(ID, second, &[tp("out", 0)], false).unwrap();
    use TxnState::*;
    assert_eq!(
        h.logged_states(ID),
        [Empty, Ongoing, PrepareAbort, CompleteAbort, Empty, Ongoing].map(Some)
    );
}

#[test]
fn a_transaction_past_its_timeout_is_aborted_and_its_producer_fenced() {
    let mut h = Harness::new();
    let producer = h.init(ID).unwrap();
    h.add(ID, producer, &[tp("out", 0)], false).unwrap();
    h.tick(i64::from(TIMEOUT_MS));
    assert_eq!(
        h.state(ID),
        TxnState::Ongoing,
        "not before the timeout passed"
    );
    h.tick(1);
    let metadata = h.metadata(ID);
    assert_eq!(metadata.state, TxnState::PrepareAbort);
    assert_eq!(metadata.producer_epoch, 1);
    assert_eq!(h.markers[0].producer_epoch, 1);
    assert_eq!(h.markers[0].result, TxnResult::Abort);
    let end = h.end(ID, producer, TxnResult::Commit, false);
    assert_eq!(end.error, Some(ResponseError::ProducerFenced));
    h.deliver_markers();
    assert_eq!(h.state(ID), TxnState::CompleteAbort);
    assert_eq!(
        h.add(ID, producer, &[tp("out", 0)], false),
        Err(ResponseError::ProducerFenced)
    );
    let end = h.end(ID, producer, TxnResult::Abort, false);
    assert_eq!(end.error, Some(ResponseError::ProducerFenced));
    // Nothing more to abort.
    let logged = h.log.len();
    h.tick(i64::from(TIMEOUT_MS) * 2);
    assert_eq!(h.log.len(), logged);
}

#[test]
fn a_version_2_transaction_past_its_timeout_bumps_twice() {
    let mut h = Harness::new();
    let producer = h.init(ID).unwrap();
    h.add(ID, producer, &[tp("out", 0)], true).unwrap();
    h.tick(i64::from(TIMEOUT_MS) + 1);
    let metadata = h.metadata(ID);
    assert_eq!(metadata.producer_epoch, 2);
    assert_eq!(metadata.last_producer_epoch, 1);
    h.deliver_markers();
    // The producer's own abort (epoch + 1 would be a retry) is fenced, not a retry.
    let end = h.end(ID, producer, TxnResult::Abort, true);
    assert_eq!(end.error, Some(ResponseError::ProducerFenced));
}

#[test]
fn version_2_bumps_the_epoch_at_every_end_and_answers_retries() {
    let mut h = Harness::new();
    let producer = h.init(ID).unwrap();
    h.add(ID, producer, &[tp("out", 0)], true).unwrap();
    let answer = h.end(ID, producer, TxnResult::Commit, true);
    assert_eq!(answer.error, None);
    let bumped = pe(producer.producer_id, 1);
    assert_eq!(
        (answer.producer_id, answer.producer_epoch),
        (bumped.producer_id, 1)
    );
    assert_eq!(
        h.markers[0].producer_epoch, 1,
        "markers carry the bumped epoch"
    );
    // The retry (old epoch) waits while markers are written, succeeds afterwards.
    let retry = h.end(ID, producer, TxnResult::Commit, true);
    assert_eq!(retry.error, Some(ResponseError::ConcurrentTransactions));
    h.deliver_markers();
    let retry = h.end(ID, producer, TxnResult::Commit, true);
    assert_eq!(retry.error, None);
    assert_eq!(
        (retry.producer_id, retry.producer_epoch),
        (bumped.producer_id, 1)
    );
    // A retry with the other result, or a new commit with nothing ongoing, is refused.
    let wrong = h.end(ID, producer, TxnResult::Abort, true);
    assert_eq!(wrong.error, Some(ResponseError::InvalidTxnState));
    let commit = h.end(ID, bumped, TxnResult::Commit, true);
    assert_eq!(commit.error, Some(ResponseError::InvalidTxnState));
    // The old epoch can no longer add partitions.
    assert_eq!(
        h.add(ID, producer, &[tp("out", 0)], true),
        Err(ResponseError::ProducerFenced)
    );
    // Next transaction with the bumped epoch, aborted: bumped again.
    h.add(ID, bumped, &[tp("out", 1)], true).unwrap();
    let abort = h.end(ID, bumped, TxnResult::Abort, true);
    assert_eq!((abort.error, abort.producer_epoch), (None, 2));
    h.deliver_markers();
    // An abort with nothing ongoing (the client is unsure): bumped, nothing to mark.
    let markers = h.markers.len();
    let unsure = h.end(ID, pe(bumped.producer_id, 2), TxnResult::Abort, true);
    assert_eq!((unsure.error, unsure.producer_epoch), (None, 3));
    assert_eq!(h.markers.len(), markers);
    assert_eq!(h.state(ID), TxnState::CompleteAbort);
    // Its retry is answered with what the first answer said.
    let retry = h.end(ID, pe(bumped.producer_id, 2), TxnResult::Abort, true);
    assert_eq!((retry.error, retry.producer_epoch), (None, 3));
    assert_eq!(h.metadata(ID).producer_epoch, 3, "a retry bumps nothing");
    use TxnState::*;
    let tail: Vec<_> = h.logged_states(ID).into_iter().rev().take(2).collect();
    assert_eq!(tail, vec![Some(CompleteAbort), Some(PrepareAbort)]);
}

/// A transactional id whose metadata is `metadata`, as if loaded from the log.
fn harness_with(metadata: TxnMetadata) -> Harness {
    let mut h = Harness::new();
    let record = TxnRecord {
        transactional_id: ID.into(),
        metadata: Some(metadata),
    };
    h.coordinator.replay(&record);
    h.log.push(record);
    h
}

fn ongoing_at(producer_epoch: i16, transaction_v2: bool, now_ms: i64) -> TxnMetadata {
    TxnMetadata {
        producer_id: 77,
        previous_producer_id: NO_PRODUCER_ID,
        next_producer_id: NO_PRODUCER_ID,
        producer_epoch,
        last_producer_epoch: NO_PRODUCER_EPOCH,
        txn_timeout_ms: TIMEOUT_MS,
        state: TxnState::Ongoing,
        partitions: [tp("out", 0)].into(),
        txn_start_timestamp_ms: now_ms,
        txn_last_update_timestamp_ms: now_ms,
        transaction_v2,
    }
}

#[test]
fn version_2_takes_a_new_producer_id_when_the_epoch_is_exhausted() {
    let mut h = harness_with(ongoing_at(i16::MAX - 1, true, 1_000_000));
    let old = pe(77, i16::MAX - 1);
    let answer = h.end(ID, old, TxnResult::Commit, true);
    assert_eq!(answer.error, None);
    // The producer continues with the new id at epoch 0 ...
    assert_eq!(
        (answer.producer_id, answer.producer_epoch),
        (FIRST_PRODUCER_ID, 0)
    );
    // ... while the markers close the old id at the last epoch.
    assert_eq!(
        (h.markers[0].producer_id, h.markers[0].producer_epoch),
        (77, i16::MAX)
    );
    assert_eq!(h.metadata(ID).next_producer_id, FIRST_PRODUCER_ID);
    h.deliver_markers();
    let metadata = h.metadata(ID);
    assert_eq!(metadata.producer(), pe(FIRST_PRODUCER_ID, 0));
    assert_eq!(metadata.previous_producer_id, 77);
    assert_eq!(metadata.next_producer_id, NO_PRODUCER_ID);
    // A retry with the old id and epoch is recognised.
    let retry = h.end(ID, old, TxnResult::Commit, true);
    assert_eq!(retry.error, None);
    assert_eq!(
        (retry.producer_id, retry.producer_epoch),
        (FIRST_PRODUCER_ID, 0)
    );
    h.add(ID, pe(FIRST_PRODUCER_ID, 0), &[tp("out", 0)], true)
        .unwrap();
    assert_eq!(
        h.add(ID, old, &[tp("out", 0)], true),
        Err(ResponseError::InvalidProducerIdMapping)
    );
}

#[test]
fn an_end_that_needs_a_producer_id_it_cannot_get_changes_nothing() {
    let mut h = harness_with(ongoing_at(i16::MAX - 1, true, 1_000_000));
    let before = h.metadata(ID);
    let mut unavailable = || Err(ResponseError::CoordinatorLoadInProgress);
    let (answer, effects) = h.coordinator.end_txn(
        ID,
        before.producer(),
        TxnResult::Commit,
        true,
        &mut unavailable,
        h.now_ms,
    );
    assert_eq!(answer.error, Some(ResponseError::CoordinatorLoadInProgress));
    assert!(effects.is_empty());
    assert_eq!(h.metadata(ID), before);
    // Version 1 needs no new id: the same end goes through.
    let answer = h.end(ID, before.producer(), TxnResult::Commit, false);
    assert_eq!(answer.error, None);
    assert_eq!(h.markers[0].producer_epoch, i16::MAX - 1);
}

#[test]
fn init_producer_id_takes_a_new_producer_id_when_the_epoch_is_exhausted() {
    let mut metadata = ongoing_at(i16::MAX - 1, false, 1_000_000);
    metadata.state = TxnState::CompleteCommit;
    metadata.partitions.clear();
    let mut h = harness_with(metadata);
    // A recovering producer with the exhausted epoch: a new id; its retry gets it too.
    let old = pe(77, i16::MAX - 1);
    let rotated = h.init_with(ID, Some(old)).unwrap();
    assert_eq!(rotated, pe(FIRST_PRODUCER_ID, 0));
    let metadata = h.metadata(ID);
    assert_eq!(metadata.previous_producer_id, 77);
    assert_eq!(metadata.last_producer_epoch, i16::MAX - 1);
    assert_eq!(h.init_with(ID, Some(old)).unwrap(), rotated);
    assert_eq!(
        h.next_producer_id,
        FIRST_PRODUCER_ID + 1,
        "one id allocated"
    );
    // The epoch counts up from 0 under the new id.
    assert_eq!(h.init(ID).unwrap(), pe(FIRST_PRODUCER_ID, 1));
}

#[test]
fn a_fence_at_the_exhausted_epoch_leads_to_a_new_producer_id() {
    let mut h = harness_with(ongoing_at(i16::MAX - 1, false, 1_000_000));
    assert_eq!(h.init(ID), Err(ResponseError::ConcurrentTransactions));
    assert_eq!(h.markers[0].producer_epoch, i16::MAX);
    h.deliver_markers();
    assert_eq!(h.init(ID).unwrap(), pe(FIRST_PRODUCER_ID, 0));
}

#[test]
fn verify_partitions_answers_membership_without_adding() {
    let mut h = Harness::new();
    let producer = h.init(ID).unwrap();
    let asked = [tp("out", 0), tp("out", 1)];
    // Nothing ongoing: no partition is in a transaction.
    assert_eq!(
        h.coordinator.verify_partitions(ID, producer, &asked),
        vec![Some(ResponseError::InvalidTxnState); 2]
    );
    h.add(ID, producer, &[tp("out", 0)], true).unwrap();
    let logged = h.log.len();
    assert_eq!(
        h.coordinator.verify_partitions(ID, producer, &asked),
        vec![None, Some(ResponseError::InvalidTxnState)]
    );
    assert_eq!(h.log.len(), logged, "verification persists nothing");
    assert_eq!(h.metadata(ID).partitions.len(), 1, "nor adds");
    assert_eq!(
        h.coordinator
            .verify_partitions(ID, pe(producer.producer_id, 3), &asked),
        vec![Some(ResponseError::ProducerFenced); 2]
    );
    assert_eq!(
        h.coordinator.verify_partitions("nobody", producer, &asked),
        vec![Some(ResponseError::InvalidProducerIdMapping); 2]
    );
    assert_eq!(
        h.coordinator.verify_partitions("", producer, &asked),
        vec![Some(ResponseError::InvalidRequest); 2]
    );
    h.end(ID, producer, TxnResult::Commit, true);
    assert_eq!(
        h.coordinator
            .verify_partitions(ID, pe(producer.producer_id, 1), &asked[..1]),
        vec![Some(ResponseError::ConcurrentTransactions)]
    );
}

#[test]
fn a_new_coordinator_completes_what_the_old_one_prepared() {
    let mut h = Harness::new();
    let producer = h.init(ID).unwrap();
    h.add(ID, producer, &[tp("out", 0), tp("out", 3)], false)
        .unwrap();
    h.end(ID, producer, TxnResult::Commit, false);
    let old_markers = h.markers[0].clone();
    // The coordinator fails before the markers are written.
    h.fail_over();
    assert_eq!(h.state(ID), TxnState::PrepareCommit);
    assert_eq!(
        h.markers.len(),
        1,
        "the new coordinator writes the markers again"
    );
    let markers = h.markers[0].clone();
    assert_eq!(markers.coordinator_epoch, COORDINATOR_EPOCH + 1);
    assert_eq!(
        WriteMarkers {
            coordinator_epoch: COORDINATOR_EPOCH,
            ..markers.clone()
        },
        old_markers,
        "the same markers, from the new coordinator"
    );
    // The old coordinator's report changes nothing; the new one's completes.
    assert!(h
        .coordinator
        .markers_written(&old_markers, h.now_ms)
        .is_empty());
    assert_eq!(h.state(ID), TxnState::PrepareCommit);
    h.deliver_markers();
    assert_eq!(h.state(ID), TxnState::CompleteCommit);
    h.fail_over();
    assert!(h.markers.is_empty(), "nothing left to carry out");
    assert_eq!(h.state(ID), TxnState::CompleteCommit);
}

#[test]
fn the_host_loads_before_it_serves_and_resumes_markers() {
    let partitions = 8;
    let mut host = TxnCoordinatorHost::new(TxnConfig::default(), partitions);
    let partition = host.partition_for(ID);
    assert_eq!(partition, partition_for(ID, partitions));
    assert_eq!(
        partition,
        crate::group::host::java_hash_code(ID).abs() % partitions
    );
    assert_eq!(
        host.coordinator(ID).err(),
        Some(ResponseError::NotCoordinator)
    );
    host.became_leader(partition, 3);
    assert_eq!(
        host.coordinator(ID).err(),
        Some(ResponseError::CoordinatorLoadInProgress)
    );
    let mut prepared = ongoing_at(4, false, 1_000);
    prepared.state = TxnState::PrepareAbort;
    let records = vec![TxnRecord {
        transactional_id: ID.into(),
        metadata: Some(prepared),
    }];
    // A load for an earlier leadership changes nothing.
    assert!(host.loaded(partition, 2, &records, 2_000).is_empty());
    assert!(host.coordinator(ID).is_err());
    let effects = host.loaded(partition, 3, &records, 2_000);
    let [Effect::WriteMarkers(markers)] = effects.as_slice() else {
        panic!("one marker effect: {effects:?}");
    };
    assert_eq!(markers.coordinator_epoch, 3);
    assert_eq!((markers.producer_id, markers.producer_epoch), (77, 4));
    assert_eq!(markers.result, TxnResult::Abort);
    assert_eq!(host.epoch(partition), Some(3));
    assert!(host.serving(partition, 2).is_none());
    let effects = host
        .serving(partition, 3)
        .unwrap()
        .markers_written(markers, 2_001);
    assert_eq!(effects.len(), 1);
    assert_eq!(
        host.coordinator(ID).unwrap().transactions()[ID].state,
        TxnState::CompleteAbort
    );
    assert_eq!(host.active().count(), 1);
    host.resigned(partition);
    assert_eq!(
        host.coordinator(ID).err(),
        Some(ResponseError::NotCoordinator)
    );
}

#[test]
fn idle_transactional_ids_expire_and_busy_ones_do_not() {
    let mut h = Harness::new();
    let expiration_ms = TxnConfig::default().transactional_id_expiration_ms;
    let idle = h.init("idle").unwrap();
    let busy = h.init("busy").unwrap();
    h.add("busy", busy, &[tp("out", 0)], false).unwrap();
    h.end("busy", busy, TxnResult::Commit, false);
    // Markers not written: PrepareCommit must outlive the expiration.
    h.tick(expiration_ms - 1);
    assert!(h.coordinator.transactions().contains_key("idle"));
    h.tick(1);
    assert_eq!(
        h.describe("idle").err(),
        Some(ResponseError::TransactionalIdNotFound)
    );
    assert_eq!(h.logged_states("idle").last(), Some(&None), "a tombstone");
    assert_eq!(h.state("busy"), TxnState::PrepareCommit);
    // An expired id starts over: a new producer id.
    let again = h.init("idle").unwrap();
    assert_ne!(again.producer_id, idle.producer_id);
    assert_eq!(again.producer_epoch, 0);
    h.deliver_markers();
    h.tick(expiration_ms);
    assert!(!h.coordinator.transactions().contains_key("busy"));
}

#[test]
fn list_transactions_filters_by_state_producer_and_duration() {
    let mut h = Harness::new();
    let a = h.init("a").unwrap();
    let b = h.init("b").unwrap();
    h.init("c").unwrap();
    h.add("a", a, &[tp("out", 0)], false).unwrap();
    h.now_ms += 5_000;
    h.add("b", b, &[tp("out", 0)], false).unwrap();
    h.end("b", b, TxnResult::Commit, false);
    h.now_ms += 1_000;
    let ids = |filter: &ListFilter, now_ms: i64| {
        let (listed, unknown) = h.coordinator.list(filter, now_ms);
        let ids: Vec<String> = listed.into_iter().map(|l| l.transactional_id).collect();
        (ids, unknown)
    };
    let all = ListFilter::default();
    assert_eq!(ids(&all, h.now_ms).0, vec!["a", "b", "c"]);
    let ongoing = ListFilter {
        states: vec!["Ongoing".into(), "Bogus".into()],
        ..all.clone()
    };
    assert_eq!(
        ids(&ongoing, h.now_ms),
        (vec!["a".into()], vec!["Bogus".into()])
    );
    let prepared = ListFilter {
        states: vec!["PrepareCommit".into(), "Ongoing".into()],
        producer_ids: vec![b.producer_id],
        ..all.clone()
    };
    assert_eq!(ids(&prepared, h.now_ms).0, vec!["b"]);
    // Running longer than 5.5 s: only a (6 s); b started 1 s ago.
    let long = ListFilter {
        states: vec!["Ongoing".into(), "PrepareCommit".into()],
        duration_filter_ms: 5_500,
        ..all.clone()
    };
    assert_eq!(ids(&long, h.now_ms).0, vec!["a"]);
    // A pattern matches whole ids.
    let pattern = |source: &str| ListFilter {
        transactional_id_pattern: Some(TxnIdPattern::new(source).unwrap()),
        ..all.clone()
    };
    assert_eq!(ids(&pattern("[ab]"), h.now_ms).0, vec!["a", "b"]);
    assert_eq!(ids(&pattern("c|a"), h.now_ms).0, vec!["a", "c"]);
    assert_eq!(ids(&pattern(""), h.now_ms).0, Vec::<String>::new());
    assert_eq!(ids(&pattern(".*"), h.now_ms).0, vec!["a", "b", "c"]);
    for invalid in ["(", "a(?=b)", &"a".repeat(TxnIdPattern::MAX_BYTES + 1)] {
        assert_eq!(
            TxnIdPattern::new(invalid).unwrap_err(),
            ResponseError::InvalidRegularExpression
        );
    }
    let listed = h.coordinator.list(&ongoing, h.now_ms).0;
    assert_eq!(listed[0].producer_id, a.producer_id);
    assert_eq!(listed[0].state, TxnState::Ongoing);
}

#[test]
fn records_round_trip_and_forged_ones_are_refused() {
    let mut h = Harness::new();
    let producer = h.init(ID).unwrap();
    h.add(ID, producer, &[tp("a", 1), tp("a", 0), tp("b", 2)], true)
        .unwrap();
    h.log.push(TxnRecord {
        transactional_id: "gone".into(),
        metadata: None,
    });
    let batch = encode_batch(&h.log, h.now_ms);
    let (decoded, skipped) = decode_batches(&batch).unwrap();
    assert_eq!((decoded, skipped), (h.log.clone(), 0));

    let valid = ongoing_at(3, false, 1);
    let forged = |change: &dyn Fn(&mut super::records::TxnValue)| {
        use prost::Message;
        let mut value = super::records::TxnValue::from(&valid);
        change(&mut value);
        let key = super::records::TxnKey {
            transactional_id: ID.into(),
        };
        TxnRecord::decode(&key.encode_to_vec(), Some(&value.encode_to_vec()))
    };
    assert!(forged(&|_| {}).is_ok());
    assert!(forged(&|v| v.producer_epoch = 40_000).is_err());
    assert!(forged(&|v| v.last_producer_epoch = -2).is_err());
    assert!(forged(&|v| v.state = TxnState::Dead.id()).is_err());
    assert!(forged(&|v| v.state = TxnState::PrepareEpochFence.id()).is_err());
    assert!(forged(&|v| v.state = 99).is_err());
    assert!(
        forged(&|v| v.state = TxnState::Empty.id()).is_err(),
        "partitions"
    );
    assert!(forged(&|v| v.producer_id = -1).is_err());
    assert!(forged(&|v| v.txn_timeout_ms = 0).is_err());
    assert!(forged(&|v| v.next_producer_id = 5).is_err(), "not prepared");
    assert!(TxnRecord::decode(b"\xff\xff", None).is_err());
}

#[test]
fn the_transition_table_is_kafkas() {
    use TxnState::*;
    let legal: BTreeSet<(TxnState, TxnState)> = [
        (Empty, Empty),
        (CompleteCommit, Empty),
        (CompleteAbort, Empty),
        (Ongoing, Ongoing),
        (Empty, Ongoing),
        (CompleteCommit, Ongoing),
        (CompleteAbort, Ongoing),
        (Ongoing, PrepareCommit),
        (Ongoing, PrepareAbort),
        (PrepareEpochFence, PrepareAbort),
        (Empty, PrepareAbort),
        (CompleteCommit, PrepareAbort),
        (CompleteAbort, PrepareAbort),
        (PrepareCommit, CompleteCommit),
        (PrepareAbort, CompleteAbort),
        (Empty, Dead),
        (CompleteCommit, Dead),
        (CompleteAbort, Dead),
        (Ongoing, PrepareEpochFence),
    ]
    .into();
    for from in TxnState::ALL {
        for to in TxnState::ALL {
            assert_eq!(
                to.can_follow(from),
                legal.contains(&(from, to)),
                "{from:?} -> {to:?}"
            );
        }
        assert_eq!(TxnState::from_id(from.id()), Some(from));
        assert_eq!(TxnState::from_kafka_name(from.kafka_name()), Some(from));
    }
}

/// One step of a random run (indexes pick a transactional id of three).
#[derive(Debug, Clone)]
enum Op {
    Init {
        id: usize,
        recover: bool,
    },
    Add {
        id: usize,
        partition: i32,
        v2: bool,
    },
    AddOffsets {
        id: usize,
        partition: i32,
    },
    End {
        id: usize,
        commit: bool,
        v2: bool,
        stale: bool,
    },
    Markers {
        which: usize,
    },
    Tick {
        advance_ms: i64,
    },
    FailOver,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3usize, any::<bool>()).prop_map(|(id, recover)| Op::Init { id, recover }),
        (0..3usize, 0..4i32, any::<bool>()).prop_map(|(id, partition, v2)| Op::Add {
            id,
            partition,
            v2
        }),
        (0..3usize, 0..2i32).prop_map(|(id, partition)| Op::AddOffsets { id, partition }),
        (
            0..3usize,
            any::<bool>(),
            any::<bool>(),
            prop::bool::weighted(0.2)
        )
            .prop_map(|(id, commit, v2, stale)| Op::End {
                id,
                commit,
                v2,
                stale
            }),
        (0..4usize).prop_map(|which| Op::Markers { which }),
        prop_oneof![
            Just(1_000i64),
            Just(i64::from(TIMEOUT_MS) + 1),
            Just(TxnConfig::default().transactional_id_expiration_ms)
        ]
        .prop_map(|advance_ms| Op::Tick { advance_ms }),
        Just(Op::FailOver),
    ]
}

const IDS: [&str; 3] = ["alpha", "beta", "gamma"];

/// What each producer last heard: its producer id and epoch.
fn apply(h: &mut Harness, producers: &mut [Option<ProducerIdAndEpoch>; 3], op: &Op) {
    match *op {
        Op::Init { id, recover } => {
            let expected = if recover { producers[id] } else { None };
            if let Ok(p) = h.init_with(IDS[id], expected) {
                producers[id] = Some(p);
            }
        }
        Op::Add { id, partition, v2 } => {
            let p = producers[id].unwrap_or(pe(0, 0));
            let _ = h.add(IDS[id], p, &[tp("out", partition)], v2);
        }
        Op::AddOffsets { id, partition } => {
            let p = producers[id].unwrap_or(pe(0, 0));
            let (_, effects) = h
                .coordinator
                .add_offsets(IDS[id], p, partition, false, h.now_ms);
            h.take(effects);
        }
        Op::End {
            id,
            commit,
            v2,
            stale,
        } => {
            let mut p = producers[id].unwrap_or(pe(0, 0));
            if stale {
                p.producer_epoch -= 1;
            }
            let result = if commit {
                TxnResult::Commit
            } else {
                TxnResult::Abort
            };
            let answer = h.end(IDS[id], p, result, v2);
            if v2 && answer.error.is_none() {
                producers[id] = Some(pe(answer.producer_id, answer.producer_epoch));
            }
        }
        Op::Markers { which } => {
            if which < h.markers.len() {
                let markers = h.markers.remove(which);
                let effects = h.coordinator.markers_written(&markers, h.now_ms);
                h.take(effects);
            }
        }
        Op::Tick { advance_ms } => h.tick(advance_ms),
        Op::FailOver => h.fail_over(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every state the coordinator serves is what its log says: after any step, a
    /// coordinator rebuilt from the persisted records alone holds the same metadata
    /// and describes every id the same way.
    #[test]
    fn replaying_the_log_rebuilds_the_same_state(
        ops in prop::collection::vec(op(), 1..60),
        near_exhaustion in any::<bool>(),
    ) {
        let mut h = Harness::new();
        let mut producers = [None; 3];
        if near_exhaustion {
            // "alpha" starts a few bumps short of the last epoch: the rotations to a
            // new producer id (InitProducerId, EndTxn v5) happen within a run.
            let mut metadata = ongoing_at(i16::MAX - 4, false, h.now_ms);
            metadata.state = TxnState::CompleteCommit;
            metadata.partitions.clear();
            let record = TxnRecord {
                transactional_id: IDS[0].into(),
                metadata: Some(metadata.clone()),
            };
            h.coordinator.replay(&record);
            h.log.push(record);
            producers[0] = Some(metadata.producer());
        }
        for op in &ops {
            apply(&mut h, &mut producers, op);
            let replayed = h.replayed(h.coordinator.coordinator_epoch());
            prop_assert_eq!(replayed.transactions(), h.coordinator.transactions());
            let ids: Vec<String> = IDS.iter().map(|s| s.to_string()).collect();
            prop_assert_eq!(replayed.describe(&ids), h.coordinator.describe(&ids));
        }
    }
}
