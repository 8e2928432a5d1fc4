//! KIP-890, the partition leader's side of the wire (Kafka's
//! `AddPartitionsToTxnManager`): before a transactional batch opens its producer's
//! transaction on a partition, the leader asks the transactional id's coordinator on
//! another broker with AddPartitionsToTxn v5 over the Kafka protocol (this broker's own
//! coordinator is asked directly: `protocol::api::produce::ask_coordinator`),
//! either whether the partition is in the ongoing transaction (`verify_only`, part 1:
//! Produce up to v11, TxnOffsetCommit up to v4) or, for a producer of transaction
//! version 2 (Produce v12+, TxnOffsetCommit v5+), to add it (part 2: such a producer
//! sends no AddPartitionsToTxn or AddOffsetsToTxn of its own).
//!
//! Requests are batched per coordinator broker: one task per coordinator keeps at most
//! one request in flight and sends everything queued meanwhile in the next one (one
//! entry per transactional id; a second producer of the same id, or the same producer
//! asking the other question, waits for the next request). Bounded: the queue per
//! coordinator ([`QUEUE_PER_COORDINATOR`]), the transactions per request, the time per
//! request ([`VERIFY_REQUEST_TIMEOUT`]); a task idle for [`SENDER_IDLE`] ends (the next
//! verification starts another).
//!
//! The coordinator's answer is translated into the error the request's version carries,
//! as Kafka 4 does ([`produce_error`]).

use super::coordinator_log;
use crate::client::{Client, TxnToVerify};
use crate::cluster::ClusterNode;
use crate::txn::host::{partition_for, TRANSACTION_STATE_TOPIC};
use kafka_protocol::ResponseError;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::oneshot;

/// Verifications waiting for one coordinator; more are answered NOT_ENOUGH_REPLICAS
/// (retriable) at once.
pub const QUEUE_PER_COORDINATOR: usize = 1024;
/// Transactions one request carries at most.
pub const TRANSACTIONS_PER_REQUEST_MAX: usize = 256;
/// How long connecting to the coordinator, or one request, may take.
pub const VERIFY_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A coordinator's task ends after this long without work.
pub const SENDER_IDLE: Duration = Duration::from_secs(60);

/// Produce v11 is the first whose clients know TRANSACTION_ABORTABLE (KIP-890).
pub const PRODUCE_FIRST_VERSION_WITH_ABORTABLE: i16 = 11;

/// What Kafka 4 answers a Produce (or a TxnOffsetCommit) whose verification or add
/// failed with `error` (the coordinator's answer, or why it could not be asked): a
/// retriable NOT_ENOUGH_REPLICAS when the coordinator could not answer (clients retry it
/// without refreshing metadata), INVALID_PRODUCER_EPOCH for a fenced producer,
/// INVALID_TXN_STATE for a partition not in the transaction, and TRANSACTION_ABORTABLE
/// only to clients that know it (`knows_abortable`: Produce v11+, TxnOffsetCommit v4+;
/// INVALID_TXN_STATE to the others).
pub fn produce_error(error: ResponseError, knows_abortable: bool) -> ResponseError {
    use ResponseError::*;
    match error {
        NetworkException
        | CoordinatorLoadInProgress
        | CoordinatorNotAvailable
        | NotCoordinator
        | ConcurrentTransactions
        | RequestTimedOut => NotEnoughReplicas,
        ProducerFenced => InvalidProducerEpoch,
        TransactionAbortable if knows_abortable => TransactionAbortable,
        TransactionAbortable | ClusterAuthorizationFailed => InvalidTxnState,
        other => other,
    }
}

/// What the leader asks of the coordinator for one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// Is it in the producer's ongoing transaction? (KIP-890 part 1)
    Verify,
    /// Add it to the producer's transaction, starting one if none is ongoing
    /// (transaction version 2).
    Add,
}

/// One partition to verify (or add) for one producer.
struct Job {
    transactional_id: String,
    producer: (i64, i16),
    partition: (String, i32),
    ask: Ask,
    reply: oneshot::Sender<Option<ResponseError>>,
}

pub struct TxnVerifier {
    node: Arc<ClusterNode>,
    /// The queue of each coordinator broker's task.
    senders: Mutex<BTreeMap<i32, mpsc::Sender<Job>>>,
}

impl TxnVerifier {
    pub fn new(node: Arc<ClusterNode>) -> TxnVerifier {
        TxnVerifier {
            node,
            senders: Mutex::default(),
        }
    }

    /// Asks `transactional_id`'s coordinator whether `topic`-`partition` is in the
    /// producer's ongoing transaction ([`Ask::Verify`]), or to add it ([`Ask::Add`]):
    /// None if it is (now), else the coordinator's error (or why it could not be
    /// asked), untranslated.
    pub async fn ask(
        &self,
        ask: Ask,
        transactional_id: &str,
        producer: (i64, i16),
        topic: &str,
        partition: i32,
    ) -> Option<ResponseError> {
        let coordinator = match self.coordinator_of(transactional_id) {
            Ok(coordinator) => coordinator,
            Err(e) => return Some(e),
        };
        let (reply, answer) = oneshot::channel();
        let job = Job {
            transactional_id: transactional_id.to_string(),
            producer,
            partition: (topic.to_string(), partition),
            ask,
            reply,
        };
        if let Err(e) = self.queue(coordinator, job) {
            return Some(e);
        }
        // The task answers within a request's time unless the queue is long; never wait
        // forever.
        match tokio::time::timeout(VERIFY_REQUEST_TIMEOUT * 4, answer).await {
            Ok(Ok(answer)) => answer,
            _ => Some(ResponseError::NetworkException),
        }
    }

    /// The broker leading the transactional id's `__transaction_state` partition.
    pub fn coordinator_of(&self, transactional_id: &str) -> Result<i32, ResponseError> {
        let partitions = coordinator_log::partition_count(&self.node, TRANSACTION_STATE_TOPIC)
            .ok_or(ResponseError::CoordinatorNotAvailable)?;
        let partition = partition_for(transactional_id, partitions);
        coordinator_log::live_leader(&self.node, TRANSACTION_STATE_TOPIC, partition)
            .map_err(|e| e.code)
    }

    fn queue(&self, coordinator: i32, job: Job) -> Result<(), ResponseError> {
        let mut senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        let job = match senders.get(&coordinator) {
            Some(sender) => match sender.try_send(job) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(_)) => return Err(ResponseError::CoordinatorNotAvailable),
                Err(TrySendError::Closed(job)) => job,
            },
            None => job,
        };
        let (sender, receiver) = mpsc::channel(QUEUE_PER_COORDINATOR);
        sender
            .try_send(job)
            .map_err(|_| ResponseError::NetworkException)?;
        senders.insert(coordinator, sender);
        tokio::spawn(send_loop(self.node.clone(), coordinator, receiver));
        Ok(())
    }
}

/// One coordinator's task: a request at a time, each carrying what queued meanwhile.
async fn send_loop(node: Arc<ClusterNode>, coordinator: i32, mut jobs: mpsc::Receiver<Job>) {
    let mut connection: Option<Client> = None;
    let mut deferred: VecDeque<Job> = VecDeque::new();
    loop {
        let first = match deferred.pop_front() {
            Some(job) => job,
            None => match tokio::time::timeout(SENDER_IDLE, jobs.recv()).await {
                Ok(Some(job)) => job,
                Ok(None) => return,
                Err(_) => {
                    // Idle: take no more, answer what is queued, then end.
                    jobs.close();
                    continue;
                }
            },
        };
        let mut batch: Vec<(TxnToVerify, Vec<Job>)> = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next {
            add_to_batch(&mut batch, &mut deferred, job);
            next = if batch.len() < TRANSACTIONS_PER_REQUEST_MAX {
                jobs.try_recv().ok()
            } else {
                None
            };
        }
        assert!(!batch.is_empty() && batch.len() <= TRANSACTIONS_PER_REQUEST_MAX);
        let transactions: Vec<TxnToVerify> = batch.iter().map(|(t, _)| t.clone()).collect();
        let answer = send(&node, coordinator, &mut connection, &transactions).await;
        for (txn, waiting) in batch {
            for job in waiting {
                let error = match &answer {
                    Err(e) => Some(*e),
                    Ok(results) => results
                        .iter()
                        .find(|(id, _)| *id == txn.transactional_id)
                        .and_then(|(_, partitions)| {
                            partitions.iter().find(|(tp, _)| *tp == job.partition)
                        })
                        .map_or(Some(ResponseError::UnknownServerError), |(_, e)| *e),
                };
                let _ = job.reply.send(error);
            }
        }
    }
}

/// Adds `job` to its transactional id's entry of `batch` (or a new one); a job of
/// another producer of an id already in the batch, or asking the other question, waits
/// in `deferred`.
fn add_to_batch(batch: &mut Vec<(TxnToVerify, Vec<Job>)>, deferred: &mut VecDeque<Job>, job: Job) {
    match batch
        .iter_mut()
        .find(|(t, _)| t.transactional_id == job.transactional_id)
    {
        Some((t, waiting))
            if t.producer == job.producer && t.verify_only == (job.ask == Ask::Verify) =>
        {
            if !t.partitions.contains(&job.partition) {
                t.partitions.push(job.partition.clone());
            }
            waiting.push(job);
        }
        Some(_) => deferred.push_back(job),
        None => {
            let txn = TxnToVerify {
                transactional_id: job.transactional_id.clone(),
                producer: job.producer,
                partitions: vec![job.partition.clone()],
                verify_only: job.ask == Ask::Verify,
            };
            batch.push((txn, vec![job]));
        }
    }
}

type Results = Vec<(String, Vec<((String, i32), Option<ResponseError>)>)>;

/// One verification request to `coordinator` (connecting first if needed); a failed
/// connection is dropped and the next request connects again.
async fn send(
    node: &ClusterNode,
    coordinator: i32,
    connection: &mut Option<Client>,
    transactions: &[TxnToVerify],
) -> Result<Results, ResponseError> {
    if connection.is_none() {
        let address = coordinator_log::kafka_address(node, coordinator)
            .ok_or(ResponseError::CoordinatorNotAvailable)?;
        match tokio::time::timeout(VERIFY_REQUEST_TIMEOUT, Client::connect(address)).await {
            Ok(Ok(client)) => *connection = Some(client),
            _ => return Err(ResponseError::NetworkException),
        }
    }
    let client = connection.as_mut().expect("connected above");
    let sent = client.verify_txn_partitions(transactions);
    match tokio::time::timeout(VERIFY_REQUEST_TIMEOUT, sent).await {
        Ok(Ok(results)) => Ok(results),
        Ok(Err(e)) => match crate::client::response_error(&e) {
            Some(code) => Err(code),
            None => {
                *connection = None;
                Err(ResponseError::NetworkException)
            }
        },
        Err(_) => {
            *connection = None;
            Err(ResponseError::NetworkException)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, producer: (i64, i16), partition: i32) -> Job {
        Job {
            transactional_id: id.into(),
            producer,
            partition: ("t".into(), partition),
            ask: Ask::Verify,
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn a_batch_has_one_entry_per_transactional_id() {
        let mut batch = Vec::new();
        let mut deferred = VecDeque::new();
        add_to_batch(&mut batch, &mut deferred, job("a", (1, 0), 0));
        add_to_batch(&mut batch, &mut deferred, job("a", (1, 0), 1));
        add_to_batch(&mut batch, &mut deferred, job("a", (1, 0), 1));
        add_to_batch(&mut batch, &mut deferred, job("b", (2, 0), 0));
        add_to_batch(&mut batch, &mut deferred, job("a", (1, 1), 0));
        let add = Job {
            ask: Ask::Add,
            ..job("a", (1, 0), 2)
        };
        add_to_batch(&mut batch, &mut deferred, add);
        assert_eq!(batch.len(), 2);
        assert_eq!(
            batch[0].0.partitions,
            vec![("t".to_string(), 0), ("t".to_string(), 1)]
        );
        assert_eq!(batch[0].1.len(), 3);
        assert!(batch[0].0.verify_only);
        assert_eq!(deferred.len(), 2);
        assert_eq!(deferred[0].producer, (1, 1));
        assert_eq!(deferred[1].ask, Ask::Add);
    }

    #[test]
    fn coordinator_errors_become_produce_errors_as_kafka_translates_them() {
        use ResponseError::*;
        for retriable in [
            NetworkException,
            CoordinatorLoadInProgress,
            CoordinatorNotAvailable,
            NotCoordinator,
            ConcurrentTransactions,
        ] {
            assert_eq!(produce_error(retriable, true), NotEnoughReplicas);
        }
        assert_eq!(produce_error(ProducerFenced, false), InvalidProducerEpoch);
        assert_eq!(produce_error(TransactionAbortable, false), InvalidTxnState);
        assert_eq!(
            produce_error(TransactionAbortable, true),
            TransactionAbortable
        );
        assert_eq!(produce_error(InvalidTxnState, true), InvalidTxnState);
        assert_eq!(
            produce_error(InvalidProducerIdMapping, true),
            InvalidProducerIdMapping
        );
    }
}
