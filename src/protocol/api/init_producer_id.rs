//! InitProducerId: gives an idempotent producer its producer id (epoch 0), from this
//! broker's block of ids (`broker::producer_ids`). A producer without a transactional id
//! always gets a new id, as in Kafka, also when it names its current one (KIP-360: an
//! idempotent producer that lost its sequence state starts over under a new id). With a
//! transactional id, the id's transaction coordinator answers (`broker::txns`): a bumped
//! epoch fences every older producer of that id.

use super::code;
use crate::broker::Broker;
use crate::protocol::dispatch::Reply;
use crate::txn::coordinator::ProducerIdAndEpoch;
use kafka_protocol::messages::{
    InitProducerIdRequest, InitProducerIdResponse, ProducerId, ResponseKind,
};
use std::sync::Arc;

pub async fn handle(broker: &Arc<Broker>, _version: i16, request: InitProducerIdRequest) -> Reply {
    let response = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    if let Some(transactional_id) = request.transactional_id.as_ref() {
        // KIP-360: a producer recovering names its current producer id and epoch.
        let expected = (request.producer_id.0 >= 0).then_some(ProducerIdAndEpoch {
            producer_id: request.producer_id.0,
            producer_epoch: request.producer_epoch,
        });
        let answer = broker
            .txns
            .init_producer_id(transactional_id, request.transaction_timeout_ms, expected)
            .await;
        let response = match answer {
            Ok(p) => response
                .with_producer_id(ProducerId(p.producer_id))
                .with_producer_epoch(p.producer_epoch),
            Err(e) => response.with_error_code(code(Some(e))),
        };
        return Reply::Now(ResponseKind::InitProducerId(response));
    }
    let response = match broker.producer_ids.next(&broker.node).await {
        Ok(producer_id) => response
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(0),
        Err(e) => {
            tracing::debug!(error = %e.message, "no producer id for InitProducerId");
            response.with_error_code(code(Some(e.code)))
        }
    };
    Reply::Now(ResponseKind::InitProducerId(response))
}
