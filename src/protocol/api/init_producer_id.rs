//! InitProducerId: gives an idempotent producer its producer id (epoch 0), from this
//! broker's block of ids (`broker::producer_ids`). A producer without a transactional id
//! always gets a new id, as in Kafka, also when it names its current one (KIP-360: an
//! idempotent producer that lost its sequence state starts over under a new id).

use super::code;
use crate::broker::Broker;
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::{
    InitProducerIdRequest, InitProducerIdResponse, ProducerId, ResponseKind,
};
use kafka_protocol::ResponseError;
use std::sync::Arc;

pub async fn handle(broker: &Arc<Broker>, _version: i16, request: InitProducerIdRequest) -> Reply {
    let response = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    if request.transactional_id.is_some() {
        return Reply::Now(ResponseKind::InitProducerId(
            response.with_error_code(code(Some(ResponseError::CoordinatorNotAvailable))),
        ));
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
