//! DeleteTopics: by name (every version) or by topic id (v6).

use super::{code, str_bytes};
use crate::broker::{ApiError, Broker};
use crate::protocol::dispatch::Reply;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    DeleteTopicsRequest, DeleteTopicsResponse, ResponseKind, TopicName,
};
use kafka_protocol::ResponseError;
use std::sync::Arc;

pub async fn handle(broker: &Arc<Broker>, version: i16, request: DeleteTopicsRequest) -> Reply {
    // (name, id) pairs to delete; v6 may give either.
    let targets: Vec<(Option<String>, uuid::Uuid)> = if version >= 6 {
        request
            .topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id))
            .collect()
    } else {
        request
            .topic_names
            .iter()
            .map(|n| (Some(n.0.to_string()), uuid::Uuid::nil()))
            .collect()
    };
    // Topic ids are looked up in this broker's image: first brought up to the quorum's,
    // so a topic created a moment ago through another broker is found. (If that fails,
    // the lookup goes on with the image as it is; the deletion catches up again.)
    if targets.iter().any(|(name, _)| name.is_none()) {
        let _ = broker.node.catch_up_image().await;
    }
    let mut responses = Vec::with_capacity(targets.len());
    for (name, id) in targets {
        let name = name.or_else(|| {
            broker
                .image()
                .topics
                .values()
                .find(|t| t.topic_id == id && !id.is_nil())
                .map(|t| t.name.clone())
        });
        let mut result = DeletableTopicResult::default()
            .with_name(Some(TopicName(str_bytes(name.as_deref().unwrap_or("")))));
        if version >= 6 {
            result = result
                .with_name(name.as_ref().map(|n| TopicName(str_bytes(n))))
                .with_topic_id(id);
        }
        let outcome = match &name {
            Some(name) => match super::refuse_internal(name, "deleting") {
                Ok(()) => broker.node.delete_topic(name).await,
                Err(e) => Err(e),
            },
            None => Err(ApiError::new(
                ResponseError::UnknownTopicId,
                "unknown topic id",
            )),
        };
        responses.push(match outcome {
            Ok(id) if version >= 6 => result.with_topic_id(id),
            Ok(_) => result,
            Err(e) if version >= 5 => result
                .with_error_code(code(Some(e.code)))
                .with_error_message(Some(str_bytes(&e.message))),
            Err(e) => result.with_error_code(code(Some(e.code))),
        });
    }
    Reply::Now(ResponseKind::DeleteTopics(
        DeleteTopicsResponse::default().with_responses(responses),
    ))
}
