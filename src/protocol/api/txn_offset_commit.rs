//! TxnOffsetCommit (key 28, KIP-98; v3+ member fields from KIP-447): a transactional
//! producer commits a consumer group's offsets inside its transaction. It goes to the
//! group's coordinator, which appends them as a transactional batch of the producer to
//! `__consumer_offsets` and keeps them pending until the transaction's marker: they
//! become visible if and only if the transaction commits. An offset for a partition
//! that does not exist is refused (UNKNOWN_TOPIC_OR_PARTITION), as OffsetCommit does.
//!
//! KIP-890, as for Produce: before the batch opens the producer's transaction on the
//! group's `__consumer_offsets` partition, the transaction coordinator is asked whether
//! that partition is in the ongoing transaction (v0-4, after the client's
//! AddOffsetsToTxn; unless `transaction.partition.verification.enable` is off), or to add
//! it (v5+, transaction version 2: the client sends no AddOffsetsToTxn). The batch
//! carries the verification's guard, so a commit that arrives after its transaction's
//! marker is refused instead of staying pending.

use super::offset_commit::OffsetsAsked;
use super::produce::ask_coordinator;
use crate::broker::txn_verifier::{produce_error, Ask};
use crate::broker::Broker;
use crate::cluster::TxnAppend;
use crate::group::coordinator::TxnOffsetCommitRequest as TxnCommit;
use crate::group::host::OFFSETS_TOPIC;
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{ResponseKind, TxnOffsetCommitRequest, TxnOffsetCommitResponse};
use kafka_protocol::ResponseError;
use std::sync::Arc;

/// TxnOffsetCommit v5 is the first of transaction version 2 (the group coordinator adds
/// the offsets partition to the transaction).
pub const FIRST_VERSION_OF_TRANSACTION_V2: i16 = 5;
/// TxnOffsetCommit v4 is the first whose clients know TRANSACTION_ABORTABLE.
const FIRST_VERSION_WITH_ABORTABLE: i16 = 4;

/// The error a TxnOffsetCommit of `version` gets when its verification (or add) failed
/// with the coordinator's `error`: as Produce's ([`produce_error`]), then as Kafka's
/// group coordinator answers write errors (a retriable error asks the client to find
/// the coordinator again).
fn verification_error(error: ResponseError, version: i16) -> ResponseError {
    use ResponseError::*;
    match produce_error(error, version >= FIRST_VERSION_WITH_ABORTABLE) {
        NotEnoughReplicas | RequestTimedOut | UnknownTopicOrPartition => CoordinatorNotAvailable,
        NotLeaderOrFollower => NotCoordinator,
        other => other,
    }
}

/// How the commit's batch is cleared with the transaction coordinator (KIP-890).
async fn verify(
    broker: &Broker,
    version: i16,
    transactional_id: &str,
    group_id: &str,
    producer: (i64, i16),
) -> Result<TxnAppend, ResponseError> {
    let ask = if version >= FIRST_VERSION_OF_TRANSACTION_V2 {
        Ask::Add
    } else if broker.config.txns.transaction_partition_verification_enable {
        Ask::Verify
    } else {
        return Ok(TxnAppend::Unchecked);
    };
    let partition = broker.groups.offsets_partition(group_id)?;
    ask_coordinator(
        broker,
        ask,
        transactional_id,
        producer,
        OFFSETS_TOPIC,
        partition,
    )
    .await
    .map_err(|e| verification_error(e, version))
}

pub fn handle(broker: &Arc<Broker>, version: i16, request: TxnOffsetCommitRequest) -> Reply {
    let transactional_id = request.transactional_id.to_string();
    let mut asked = OffsetsAsked::new(
        broker,
        request.topics.into_iter().map(|t| {
            let partitions = t.partitions.into_iter().map(|p| {
                let metadata = p.committed_metadata;
                (
                    p.partition_index,
                    p.committed_offset,
                    p.committed_leader_epoch,
                    metadata,
                )
            });
            (t.name.to_string(), partitions.collect())
        }),
    );
    let commit = TxnCommit {
        group_id: request.group_id.to_string(),
        producer_id: request.producer_id.0,
        producer_epoch: request.producer_epoch,
        // v0-2 carry no member fields: the defaults (empty, -1) skip the checks.
        member_id: request.member_id.to_string(),
        generation_id: request.generation_id,
        group_instance_id: request.group_instance_id.map(|s| s.to_string()),
        offsets: std::mem::take(&mut asked.to_commit),
    };
    let broker = broker.clone();
    Reply::Later(Box::pin(async move {
        let committed = if commit.offsets.is_empty() {
            Vec::new()
        } else {
            let producer = (commit.producer_id, commit.producer_epoch);
            let verified = verify(
                &broker,
                version,
                &transactional_id,
                &commit.group_id,
                producer,
            )
            .await;
            match verified {
                Ok(txn) => broker.groups.txn_commit_offsets(commit, txn).await,
                Err(e) => vec![Some(e); commit.offsets.len()],
            }
        };
        let topics = asked.answer(
            committed,
            |index, error_code| {
                TxnOffsetCommitResponsePartition::default()
                    .with_partition_index(index)
                    .with_error_code(error_code)
            },
            |name, partitions| {
                TxnOffsetCommitResponseTopic::default()
                    .with_name(name.into())
                    .with_partitions(partitions)
            },
        );
        ResponseKind::TxnOffsetCommit(TxnOffsetCommitResponse::default().with_topics(topics))
    }))
}
