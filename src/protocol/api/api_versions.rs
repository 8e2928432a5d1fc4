//! ApiVersions: the versions of every API Strand handles. A request in a version
//! Strand does not know gets UNSUPPORTED_VERSION with a v0 body listing the ranges,
//! so the client can retry with one it shares.

use crate::protocol::dispatch::{PendingResponse, Reply};
use crate::protocol::versions::{self, SUPPORTED};
use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseKind,
};
use kafka_protocol::protocol::Decodable;
use kafka_protocol::ResponseError;

pub fn handle(header: &RequestHeader, mut body: Bytes, correlation_id: i32) -> PendingResponse {
    let requested = header.request_api_version;
    let max = versions::supported(ApiKey::ApiVersions)
        .map(|s| s.max)
        .unwrap_or(0);
    let keys: Vec<ApiVersion> = SUPPORTED
        .iter()
        .map(|s| {
            ApiVersion::default()
                .with_api_key(s.key as i16)
                .with_min_version(s.min)
                .with_max_version(s.max)
        })
        .collect();
    let (version, error) = if requested < 0 || requested > max {
        (0, Some(ResponseError::UnsupportedVersion))
    } else if ApiVersionsRequest::decode(&mut body, requested).is_err() {
        (requested, Some(ResponseError::InvalidRequest))
    } else {
        (requested, None)
    };
    let response = ApiVersionsResponse::default()
        .with_error_code(super::code(error))
        .with_api_keys(keys);
    PendingResponse {
        correlation_id,
        api_key: ApiKey::ApiVersions,
        version,
        reply: Reply::Now(ResponseKind::ApiVersions(response)),
    }
}
