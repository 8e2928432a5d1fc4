//! The idempotent producer workload: one producer per partition of its own topic gets a
//! producer id (InitProducerId), numbers its batches with sequence numbers, and sends
//! each batch again (same producer id, epoch and sequence) until it is acknowledged or
//! refused, across timeouts, lost answers and leader changes, as a Kafka idempotent
//! producer does. A refused sequence (OUT_OF_ORDER_SEQUENCE_NUMBER and the like) or a
//! batch that is never answered ends the producer id: the producer takes a new one and
//! the batch's records may or may not be in the log, but never twice.
//!
//! Invariants, on the converged logs:
//! - `idempotent-no-duplicates`: no record of an idempotent producer is stored twice.
//! - `idempotent-acked-kept`: every acknowledged record is at its acknowledged offset.
//! - `idempotent-in-order`: one producer id's records are stored in the order it sent
//!   them.

use super::{
    connect, converge_topic, create_extra_topic, image_leader, kafka_addr, violation, Logs, Shared,
    OP_TIMEOUT,
};
use bytes::Bytes;
use kafka_protocol::ResponseError;
use madsim::rand::{thread_rng, Rng};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use strand::client::{encode_producer_records, response_error, Client, ProducerFields};

pub(super) const IDEMPOTENT_TOPIC: &str = "sim-idempotent";
pub(super) const IDEMPOTENT_PARTITIONS: i32 = 2;

/// Sends of one batch before the producer gives it up (and its producer id).
const ATTEMPTS_PER_BATCH: u32 = 20;

/// Batches one producer sends at most.
const MAX_BATCHES: u64 = 2_000;

#[derive(Default)]
pub(super) struct IdempotentHistory {
    /// Acknowledged records: value → (partition, offset).
    acked: BTreeMap<String, (i32, i64)>,
    /// Every record sent: value → (producer id, the producer's batch number).
    sent: BTreeMap<String, (i64, u64)>,
    /// Batches given up (sent, never acknowledged).
    given_up: u64,
}

pub(super) async fn create_topic(shared: &Arc<Shared>) -> Result<(), super::Violation> {
    let configs = [("segment.bytes", "4096")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    create_extra_topic(shared, IDEMPOTENT_TOPIC, IDEMPOTENT_PARTITIONS, configs).await
}

async fn init_producer_id(shared: &Shared, rng: &mut impl Rng) -> Option<(i64, i16)> {
    let id = rng.gen_range(1..=shared.settings.brokers);
    let mut client = connect(kafka_addr(id)).await?;
    match tokio::time::timeout(OP_TIMEOUT * 4, client.init_producer_id(None, 60_000)).await {
        Ok(Ok(producer)) => Some(producer),
        _ => None,
    }
}

/// What one send of a batch came to.
pub(super) enum Sent {
    Acked(i64),
    /// The producer id's sequence state is broken for this batch: give it up.
    Refused(ResponseError),
    /// Unanswered or refused for a reason a retry can fix.
    Retry,
}

/// Sends `batch` of an idempotent (or, with `transactional_id`, transactional) producer
/// once, at Produce `version`, to the leader of `topic`-`partition`, connecting to it
/// first if need be.
pub(super) async fn send_once(
    shared: &Shared,
    connection: &mut Option<(u64, Client)>,
    (topic, partition): (&str, i32),
    batch: &Bytes,
    transactional_id: Option<&str>,
    version: i16,
) -> Sent {
    if connection.is_none() {
        let Some((leader, _)) = image_leader(shared, topic, partition) else {
            return Sent::Retry;
        };
        *connection = connect(kafka_addr(leader)).await.map(|c| (leader, c));
    }
    let Some((_, client)) = connection.as_mut() else {
        return Sent::Retry;
    };
    // Often shorter than a leader takes to notice it lost its quorum: the retry may
    // reach the same leader while the first send still waits there, as a Kafka
    // producer's retry after `request.timeout.ms` does.
    let timeout = Duration::from_millis(thread_rng().gen_range(200..=3_000));
    let result = tokio::time::timeout(
        timeout,
        client.produce_batch_at(
            topic,
            partition,
            batch.clone(),
            -1,
            transactional_id,
            version,
        ),
    )
    .await;
    match result {
        Ok(Ok(Some(offset))) => Sent::Acked(offset),
        Ok(Err(e)) => match response_error(&e) {
            Some(
                e @ (ResponseError::OutOfOrderSequenceNumber
                | ResponseError::UnknownProducerId
                | ResponseError::InvalidProducerEpoch
                | ResponseError::ProducerFenced
                | ResponseError::InvalidTxnState
                | ResponseError::TransactionAbortable
                | ResponseError::InvalidRecord),
            ) => Sent::Refused(e),
            _ => {
                *connection = None;
                Sent::Retry
            }
        },
        Ok(Ok(None)) | Err(_) => {
            *connection = None;
            Sent::Retry
        }
    }
}

/// One idempotent producer writing `partition` until the load stops.
pub(super) async fn producer_loop(shared: Arc<Shared>, partition: i32) {
    let mut rng = thread_rng();
    let mut producer: Option<(i64, i16, i32)> = None;
    let mut connection: Option<(u64, Client)> = None;
    let mut batch_no = 0u64;
    while !shared.stop_load.load(Ordering::Relaxed) && batch_no < MAX_BATCHES {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..=40))).await;
        let Some((producer_id, producer_epoch, sequence)) = producer else {
            producer = init_producer_id(&shared, &mut rng)
                .await
                .map(|(id, epoch)| (id, epoch, 0));
            if let Some((id, epoch, _)) = producer {
                shared.event(format!(
                    "idempotent p{partition}: producer id {id} epoch {epoch}"
                ));
            }
            continue;
        };
        let values: Vec<String> = (0..rng.gen_range(1..=shared.settings.max_batch_records))
            .map(|i| format!("i{partition}-{batch_no:06}-{i}"))
            .collect();
        let records: Vec<_> = values
            .iter()
            .map(|v| (None, Some(Bytes::from(v.clone())), strand::clock::now_ms()))
            .collect();
        let fields = ProducerFields {
            producer_id,
            producer_epoch,
            base_sequence: sequence,
            transactional: false,
        };
        let batch = encode_producer_records(
            &records,
            kafka_protocol::records::Compression::None,
            Some(fields),
        )
        .expect("encode a batch");
        {
            let mut history = shared.idempotent.lock().unwrap();
            for v in &values {
                history.sent.insert(v.clone(), (producer_id, batch_no));
            }
        }
        let mut outcome = Sent::Retry;
        for _ in 0..ATTEMPTS_PER_BATCH {
            outcome = send_once(
                &shared,
                &mut connection,
                (IDEMPOTENT_TOPIC, partition),
                &batch,
                None,
                9,
            )
            .await;
            if !matches!(outcome, Sent::Retry) || shared.stop_load.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(rng.gen_range(20..=200))).await;
        }
        match outcome {
            Sent::Acked(offset) => {
                let mut history = shared.idempotent.lock().unwrap();
                for (i, v) in values.iter().enumerate() {
                    history
                        .acked
                        .insert(v.clone(), (partition, offset + i as i64));
                }
                drop(history);
                shared.event(format!(
                    "idempotent p{partition} batch {batch_no} (producer {producer_id}, sequence {sequence}) acked at {offset}"
                ));
                let next = sequence.wrapping_add(values.len() as i32) & i32::MAX;
                producer = Some((producer_id, producer_epoch, next));
            }
            Sent::Refused(e) => {
                shared.event(format!(
                    "idempotent p{partition} batch {batch_no} (producer {producer_id}, sequence {sequence}) refused: {e:?}; a new producer id"
                ));
                shared.idempotent.lock().unwrap().given_up += 1;
                producer = None;
            }
            Sent::Retry => {
                shared.event(format!(
                    "idempotent p{partition} batch {batch_no} (producer {producer_id}, sequence {sequence}) given up; a new producer id"
                ));
                shared.idempotent.lock().unwrap().given_up += 1;
                producer = None;
            }
        }
        batch_no += 1;
    }
}

/// Converges the topic's replicas and checks the invariants on the common logs.
pub(super) async fn check(
    shared: &Shared,
    deadline: u64,
    each_step: impl FnMut(),
) -> Result<(), super::Violation> {
    let logs = converge_topic(
        shared,
        IDEMPOTENT_TOPIC,
        IDEMPOTENT_PARTITIONS,
        deadline,
        each_step,
    )
    .await?;
    check_logs(shared, &logs)
}

fn check_logs(shared: &Shared, logs: &Logs) -> Result<(), super::Violation> {
    let history = shared.idempotent.lock().unwrap();
    let mut stored: BTreeMap<String, (i32, i64)> = BTreeMap::new();
    for (&partition, log) in logs {
        // (producer id → the last batch number stored) for the order check.
        let mut last_batch: BTreeMap<i64, u64> = BTreeMap::new();
        for bytes in log.values() {
            let records = strand::client::decode_records(bytes).map_err(|e| {
                violation(
                    "idempotent-acked-kept",
                    format!("a batch does not decode: {e:#}"),
                )
            })?;
            for r in records {
                let Some(value) = r.value.as_ref() else {
                    continue;
                };
                let value = String::from_utf8_lossy(value).to_string();
                let Some(&(producer_id, batch_no)) = history.sent.get(&value) else {
                    return Err(violation(
                        "idempotent-acked-kept",
                        format!("p{partition} offset {}: {value} was never sent", r.offset),
                    ));
                };
                if let Some((p, o)) = stored.insert(value.clone(), (partition, r.offset)) {
                    return Err(violation(
                        "idempotent-no-duplicates",
                        format!(
                            "{value} (producer {producer_id}) is stored twice: p{p} offset {o} and p{partition} offset {}",
                            r.offset
                        ),
                    ));
                }
                let last = last_batch.entry(producer_id).or_insert(batch_no);
                if batch_no < *last {
                    return Err(violation(
                        "idempotent-in-order",
                        format!(
                            "p{partition} offset {}: producer {producer_id}'s batch {batch_no} after its batch {last}",
                            r.offset
                        ),
                    ));
                }
                *last = batch_no;
            }
        }
    }
    for (value, &(partition, offset)) in &history.acked {
        if stored.get(value) != Some(&(partition, offset)) {
            return Err(violation(
                "idempotent-acked-kept",
                format!(
                    "{value} acknowledged at p{partition} offset {offset}, stored at {:?}",
                    stored.get(value)
                ),
            ));
        }
    }
    shared.event(format!(
        "idempotent topic: {} records stored, {} acknowledged, {} batches given up",
        stored.len(),
        history.acked.len(),
        history.given_up
    ));
    Ok(())
}
