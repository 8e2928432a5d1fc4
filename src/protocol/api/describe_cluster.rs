//! DescribeCluster: this broker, which is also the controller of its one-node cluster.

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
    let node = BrokerId(broker.config.node_id);
    let mut response = DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(&broker.cluster_id))
        .with_controller_id(node);
    if version >= 1 && request.endpoint_type != ENDPOINT_TYPE_BROKERS {
        response = response
            .with_error_code(ResponseError::UnsupportedEndpointType.code())
            .with_error_message(Some(str_bytes("only broker endpoints are served")));
    } else {
        response = response.with_brokers(vec![DescribeClusterBroker::default()
            .with_broker_id(node)
            .with_host(str_bytes(&broker.config.advertised_host))
            .with_port(broker.config.advertised_port)]);
    }
    if version >= 1 {
        response = response.with_endpoint_type(ENDPOINT_TYPE_BROKERS);
    }
    Reply::Now(ResponseKind::DescribeCluster(response))
}
