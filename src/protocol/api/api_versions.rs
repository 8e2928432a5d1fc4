//! ApiVersions: the versions of every API Strand handles. A request in a version
//! Strand does not know gets UNSUPPORTED_VERSION with a v0 body listing the ranges,
//! so the client can retry with one it shares.

use crate::protocol::dispatch::{PendingResponse, Reply};
use crate::protocol::versions::SUPPORTED;
use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse, ResponseKind};
use kafka_protocol::protocol::Decodable;
use kafka_protocol::ResponseError;

fn response(error: Option<ResponseError>) -> ApiVersionsResponse {
    let keys: Vec<ApiVersion> = SUPPORTED
        .iter()
        .map(|s| {
            ApiVersion::default()
                .with_api_key(s.key as i16)
                .with_min_version(s.min)
                .with_max_version(s.max)
        })
        .collect();
    ApiVersionsResponse::default()
        .with_error_code(super::code(error))
        .with_api_keys(keys)
}

fn pending(correlation_id: i32, version: i16, error: Option<ResponseError>) -> PendingResponse {
    PendingResponse {
        correlation_id,
        api_key: ApiKey::ApiVersions,
        version,
        reply: Reply::Now(ResponseKind::ApiVersions(response(error))),
    }
}

/// A supported version: the body must decode (v3 carries the client's software name).
pub fn handle(version: i16, mut body: Bytes, correlation_id: i32) -> PendingResponse {
    let error = ApiVersionsRequest::decode(&mut body, version)
        .err()
        .map(|_| ResponseError::InvalidRequest);
    pending(correlation_id, version, error)
}

/// A version Strand does not know: error 35 in a v0 body.
pub fn unsupported(correlation_id: i32) -> PendingResponse {
    pending(correlation_id, 0, Some(ResponseError::UnsupportedVersion))
}
