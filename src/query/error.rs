//! Every way a query can fail, and the one place that maps them to HTTP status codes and
//! JSON bodies. Internals (paths, RocksDB messages) go to the log, never to the client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("unknown store {0:?}")]
    UnknownStore(String),
    #[error("no key {key:?} in store {store:?}")]
    UnknownKey { store: String, key: String },
    #[error("key {key:?} of store {store:?} lives in partition {partition}, which this instance does not own")]
    NotOwner { store: String, key: String, partition: i32 },
    #[error("partition {partition} of store {store:?} is moving between instances; retry shortly")]
    Moving { store: String, partition: i32 },
    #[error("key {key:?} of store {store:?} is at version {have} here, {want} was asked for; retry shortly")]
    Behind { store: String, key: String, have: u64, want: u64 },
    #[error("store {store:?} has no index {field:?}; its indexes are {known:?}")]
    UnknownIndex { store: String, field: String, known: Vec<String> },
    #[error("bad parameter {name}: {reason}")]
    BadParameter { name: String, reason: String },
    #[error("bad request body: {0}")]
    BadBody(String),
    /// The command cannot run (checked before it is sent): same answer as an `invalid` reply.
    #[error("invalid command: {reason}")]
    InvalidCommand { command_id: String, reason: String },
    #[error("{0}")]
    UnknownAggregate(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("no reply seen for command {0:?} here; replies of the last 20,000 commands are kept, and only while the instance runs")]
    UnknownCommand(String),
    #[error("cannot send the command: {0}")]
    GatewayFailed(String),
    #[error("no such route")]
    NoRoute,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("metrics are not enabled")]
    NoMetrics,
    #[error("the request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("this instance is handling {limit} requests already; retry shortly")]
    Overloaded { limit: usize },
    #[error("{limit} commands are waiting for their replies already; retry shortly")]
    TooManyPending { limit: usize },
    #[error("the request took longer than {after:?}")]
    Timeout { after: std::time::Duration },
    #[error("internal error")]
    Internal,
}

impl QueryError {
    fn status(&self) -> (StatusCode, &'static str) {
        match self {
            QueryError::UnknownStore(_) => (StatusCode::NOT_FOUND, "unknown_store"),
            QueryError::UnknownKey { .. } => (StatusCode::NOT_FOUND, "not_found"),
            QueryError::UnknownIndex { .. } => (StatusCode::NOT_FOUND, "unknown_index"),
            QueryError::NotOwner { .. } => (StatusCode::MISDIRECTED_REQUEST, "not_owner"),
            QueryError::Moving { .. } => (StatusCode::SERVICE_UNAVAILABLE, "moving"),
            QueryError::Behind { .. } => (StatusCode::SERVICE_UNAVAILABLE, "behind"),
            QueryError::BadParameter { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
            QueryError::BadBody(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            QueryError::InvalidCommand { .. } => (StatusCode::BAD_REQUEST, "invalid_command"),
            QueryError::UnknownAggregate(_) => (StatusCode::NOT_FOUND, "unknown_aggregate"),
            QueryError::Unsupported(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported"),
            QueryError::UnknownCommand(_) => (StatusCode::NOT_FOUND, "unknown_command"),
            QueryError::GatewayFailed(_) => (StatusCode::SERVICE_UNAVAILABLE, "gateway_failed"),
            QueryError::NoRoute => (StatusCode::NOT_FOUND, "no_route"),
            QueryError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            QueryError::NoMetrics => (StatusCode::NOT_FOUND, "no_metrics"),
            QueryError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            QueryError::Overloaded { .. } => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            QueryError::TooManyPending { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_pending"),
            QueryError::Timeout { .. } => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            QueryError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        let (status, code) = self.status();
        let mut body = json!({"error": code, "message": self.to_string()});
        match &self {
            QueryError::NotOwner { partition, .. } => body["partition"] = json!(partition),
            QueryError::InvalidCommand { command_id, reason } => {
                body["command_id"] = json!(command_id);
                body["outcome"] = json!("invalid");
                body["reason"] = json!(reason);
            }
            QueryError::Moving { partition, .. } => {
                body["partition"] = json!(partition);
                // Ownership settles within a rebalance; a second is a fair first wait.
                return (status, [(axum::http::header::RETRY_AFTER, "1")], Json(body)).into_response();
            }
            QueryError::Overloaded { .. } | QueryError::TooManyPending { .. } | QueryError::Timeout { .. } => {
                return (status, [(axum::http::header::RETRY_AFTER, "1")], Json(body)).into_response();
            }
            QueryError::Behind { have, want, .. } => {
                body["version"] = json!(have);
                body["min_version"] = json!(want);
                return (status, [(axum::http::header::RETRY_AFTER, "1")], Json(body)).into_response();
            }
            _ => {}
        }
        (status, Json(body)).into_response()
    }
}
