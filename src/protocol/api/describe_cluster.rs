//! DescribeCluster: the cluster id and every live broker of the metadata image.

use super::str_bytes;
use crate::broker::Broker;
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, ResponseKind,
};
use kafka_protocol::ResponseError;
use std::sync::Arc;

/// DescribeCluster v1 endpoint type for brokers.
const ENDPOINT_TYPE_BROKERS: i8 = 1;

pub fn handle(broker: &Arc<Broker>, version: i16, request: DescribeClusterRequest) -> Reply {
    let image = broker.image();
    let mut response = DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(image.cluster_id.as_deref().unwrap_or_default()))
        .with_controller_id(BrokerId(broker.controller_id()));
    if version >= 1 && request.endpoint_type != ENDPOINT_TYPE_BROKERS {
        response = response
            .with_error_code(ResponseError::UnsupportedEndpointType.code())
            .with_error_message(Some(str_bytes("only broker endpoints are served")));
    } else {
        let brokers = image
            .brokers
            .values()
            .filter(|b| !b.fenced)
            .map(|b| {
                DescribeClusterBroker::default()
                    .with_broker_id(BrokerId(b.node_id))
                    .with_host(str_bytes(&b.host))
                    .with_port(b.port)
                    .with_rack(b.rack.as_deref().map(str_bytes))
            })
            .collect();
        response = response.with_brokers(brokers);
    }
    if version >= 1 {
        response = response.with_endpoint_type(ENDPOINT_TYPE_BROKERS);
    }
    Reply::Now(ResponseKind::DescribeCluster(response))
}
