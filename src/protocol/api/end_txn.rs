//! EndTxn: a transactional producer commits or aborts its transaction. The coordinator
//! persists the decision before answering, then writes the markers. From v5 (KIP-890
//! part 2) the epoch is bumped at every end and the answer carries the producer id and
//! epoch to use next.

use super::code;
use crate::broker::Broker;
use crate::protocol::dispatch::Reply;
use crate::txn::coordinator::ProducerIdAndEpoch;
use kafka_protocol::messages::{EndTxnRequest, EndTxnResponse, ProducerId, ResponseKind};
use std::sync::Arc;

pub async fn handle(broker: &Arc<Broker>, version: i16, request: EndTxnRequest) -> Reply {
    let producer = ProducerIdAndEpoch {
        producer_id: request.producer_id.0,
        producer_epoch: request.producer_epoch,
    };
    let answer = broker
        .txns
        .end_txn(
            &request.transactional_id,
            producer,
            request.committed,
            version >= 5,
        )
        .await;
    let mut response = EndTxnResponse::default().with_error_code(code(answer.error));
    if version >= 5 {
        response = response
            .with_producer_id(ProducerId(answer.producer_id))
            .with_producer_epoch(answer.producer_epoch);
    }
    Reply::Now(ResponseKind::EndTxn(response))
}
