//! AddOffsetsToTxn: a transactional producer that will commit a consumer group's
//! offsets in its transaction (TxnOffsetCommit) adds the group's `__consumer_offsets`
//! partition to the transaction, so the transaction's marker reaches it.

use super::code;
use crate::broker::Broker;
use crate::protocol::dispatch::Reply;
use crate::txn::coordinator::ProducerIdAndEpoch;
use kafka_protocol::messages::{AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, ResponseKind};
use std::sync::Arc;

pub async fn handle(broker: &Arc<Broker>, version: i16, request: AddOffsetsToTxnRequest) -> Reply {
    let producer = ProducerIdAndEpoch {
        producer_id: request.producer_id.0,
        producer_epoch: request.producer_epoch,
    };
    // The group's partition: `__consumer_offsets` is created if no group made it yet.
    let partition = match broker.groups.find_coordinator(&request.group_id).await {
        Ok(_) => broker
            .groups
            .offsets_partitions()
            .map(|n| crate::group::host::partition_for(&request.group_id, n)),
        Err(e) => {
            return Reply::Now(ResponseKind::AddOffsetsToTxn(
                AddOffsetsToTxnResponse::default().with_error_code(code(Some(e.code))),
            ))
        }
    };
    let error = match partition {
        Some(partition) => broker
            .txns
            .add_offsets(&request.transactional_id, producer, partition, version >= 4)
            .await
            .err(),
        None => Some(kafka_protocol::ResponseError::CoordinatorNotAvailable),
    };
    Reply::Now(ResponseKind::AddOffsetsToTxn(
        AddOffsetsToTxnResponse::default().with_error_code(code(error)),
    ))
}
