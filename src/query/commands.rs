//! The HTTP command gateway: `POST /aggregates/{type}/{id}/commands` sends a command and
//! answers with its reply; `GET /aggregates/{type}/{id}/commands/{command_id}` answers the
//! reply of a recent command. Statuses: 200 accepted, 409 rejected or wrong expected
//! version, 202 (with a status URL) when the reply did not come in time. A retry with the
//! same command id is safe: it is answered with the original outcome.

use super::{Ctx, QueryError};
use crate::processor::wire::{Outcome, Reply};
use crate::runtime::gateway::GatewayError;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

fn gateway_error(e: GatewayError) -> QueryError {
    match e {
        GatewayError::UnknownAggregate(..) => QueryError::UnknownAggregate(e.to_string()),
        GatewayError::NotJson(..) => QueryError::Unsupported(e.to_string()),
        GatewayError::Produce(_) => QueryError::GatewayFailed(e.to_string()),
    }
}

/// 200 for an accepted command, 409 for one the rules or the expected version refused,
/// 400 for one that cannot run (`invalid`), 422 for one the engine could not run
/// (`failed`: retrying the same command does not help until an operator acts). A
/// duplicate counts as its original.
fn answer(reply: Reply) -> Response {
    let outcome = match reply.outcome {
        Outcome::Duplicate => reply.original_outcome.unwrap_or(Outcome::Accepted),
        o => o,
    };
    let status = match outcome {
        Outcome::Accepted => StatusCode::OK,
        Outcome::Invalid => StatusCode::BAD_REQUEST,
        Outcome::Failed => StatusCode::UNPROCESSABLE_ENTITY,
        Outcome::Rejected | Outcome::WrongExpectedVersion | Outcome::Duplicate => StatusCode::CONFLICT,
    };
    (status, Json(reply)).into_response()
}

fn status_url(aggregate: &str, id: &str, command_id: &str) -> String {
    use super::forward::encode_segment as e;
    format!("/aggregates/{}/{}/commands/{}", e(aggregate), e(id), e(command_id))
}

#[utoipa::path(post, path = "/aggregates/{aggregate}/{id}/commands", tag = "aggregates",
    params(("aggregate" = String, Path, example = "customer"), ("id" = String, Path, example = "ada"),
        ("timeout_ms" = Option<u64>, Query, maximum = 60000, description = "how long to wait for the reply (default 10000)")),
    request_body = super::api::CommandRequest,
    responses(super::api::Answered,
        (status = 400, description = "invalid: the command cannot run, or a bad parameter or body", body = super::api::Refused),
        (status = 413, description = "the body is too large", body = super::api::ErrorBody),
        (status = 415, description = "this aggregate's commands are not JSON", body = super::api::ErrorBody),
        super::api::Admission))]
pub(super) async fn submit(
    State(ctx): State<Ctx>,
    Path((aggregate, id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response, QueryError> {
    let gateway = ctx.gateway.as_ref().ok_or_else(|| QueryError::Unsupported("this server sends no commands".into()))?;
    if let Some(k) = q.keys().find(|k| *k != "timeout_ms") {
        return Err(QueryError::BadParameter { name: k.clone(), reason: "unknown parameter; expected timeout_ms".into() });
    }
    let timeout = match q.get("timeout_ms") {
        None => Duration::from_secs(10),
        Some(s) => match s.parse::<u64>() {
            Ok(ms) if ms <= 60_000 => Duration::from_millis(ms),
            _ => return Err(QueryError::BadParameter { name: "timeout_ms".into(), reason: format!("{s:?} is not an integer between 0 and 60000") }),
        },
    };
    let limit = ctx.security.limits.max_pending_commands;
    if gateway.pending() >= limit {
        return Err(QueryError::TooManyPending { limit });
    }
    let target = gateway.target(&aggregate).map_err(gateway_error)?.clone();
    let body: Value = serde_json::from_slice(&body).map_err(|e| QueryError::BadBody(e.to_string()))?;
    let Some(fields) = body.as_object() else {
        return Err(QueryError::BadBody("expected a JSON object with type and payload".into()));
    };
    if let Some(k) = fields.keys().find(|k| !matches!(k.as_str(), "command_id" | "type" | "payload" | "expected_version")) {
        return Err(QueryError::BadBody(format!("unknown field {k:?}; expected command_id, type, payload, expected_version")));
    }
    let ty = body["type"].as_str().filter(|t| !t.is_empty()).ok_or_else(|| QueryError::BadBody("`type` (a string) is required".into()))?;
    let command_id = match &body["command_id"] {
        Value::Null => gateway.new_command_id(),
        Value::String(s) if !s.is_empty() => s.clone(),
        _ => return Err(QueryError::BadBody("`command_id` must be a non-empty string".into())),
    };
    let expected = match &body["expected_version"] {
        Value::Null => Value::Null,
        v if v.as_u64().is_some_and(|n| n <= i64::MAX as u64) => v.clone(),
        _ => return Err(QueryError::BadBody("`expected_version` must be an integer between 0 and 2^63-1, or null".into())),
    };
    let payload = if body["payload"].is_null() { json!({}) } else { body["payload"].clone() };
    let envelope = json!({
        "command_id": command_id,
        "aggregate_id": id,
        "expected_version": expected,
        "type": ty,
        "payload": payload,
    });
    let bytes = serde_json::to_vec(&envelope).expect("JSON values serialize");
    // A command that cannot decode is answered now, not after a round trip through Kafka.
    target.check(&bytes).map_err(|reason| QueryError::InvalidCommand { command_id: command_id.clone(), reason })?;
    match gateway.submit(&target, &id, &command_id, &bytes, timeout, None).await.map_err(gateway_error)? {
        Some(reply) => Ok(answer(reply)),
        None => {
            let url = status_url(&aggregate, &id, &command_id);
            Ok((
                StatusCode::ACCEPTED,
                [(header::LOCATION, url.clone())],
                Json(json!({"command_id": command_id, "status": "pending", "status_url": url})),
            )
                .into_response())
        }
    }
}

/// `DELETE /aggregates/{type}/{id}/snapshot` and `POST .../snapshot/repair`: an operator's
/// request about a quarantined key's snapshot, carried out by the partition's owner in its
/// transaction (docs/operations.md). Answers like a command: 200 done, 409 refused (a
/// readable snapshot is not deleted), 422 failed (no event history to refold).
pub(super) async fn admin(ctx: Ctx, aggregate: String, id: String, op: &'static str) -> Result<Response, QueryError> {
    let gateway = ctx.gateway.as_ref().ok_or_else(|| QueryError::Unsupported("this server sends no commands".into()))?;
    let limit = ctx.security.limits.max_pending_commands;
    if gateway.pending() >= limit {
        return Err(QueryError::TooManyPending { limit });
    }
    let target = gateway.target(&aggregate).map_err(gateway_error)?.clone();
    let command_id = gateway.new_command_id();
    let envelope = json!({"command_id": command_id, "aggregate_id": id});
    let bytes = serde_json::to_vec(&envelope).expect("JSON values serialize");
    match gateway.submit(&target, &id, &command_id, &bytes, Duration::from_secs(30), Some(op)).await.map_err(gateway_error)? {
        Some(reply) => Ok(answer(reply)),
        None => {
            let url = status_url(&aggregate, &id, &command_id);
            Ok((StatusCode::ACCEPTED, [(header::LOCATION, url.clone())], Json(json!({"command_id": command_id, "status": "pending", "status_url": url})))
                .into_response())
        }
    }
}

/// Deletes a snapshot that cannot be read (never a readable one: 409).
#[utoipa::path(delete, path = "/aggregates/{aggregate}/{id}/snapshot", tag = "admin",
    params(("aggregate" = String, Path, example = "customer"), ("id" = String, Path, example = "ada")),
    responses(super::api::Answered, super::api::Admission))]
pub(super) async fn delete_snapshot(State(ctx): State<Ctx>, Path((aggregate, id)): Path<(String, String)>) -> Result<Response, QueryError> {
    admin(ctx, aggregate, id, "delete-snapshot").await
}

/// Refolds a snapshot from the aggregate's event history.
#[utoipa::path(post, path = "/aggregates/{aggregate}/{id}/snapshot/repair", tag = "admin",
    params(("aggregate" = String, Path, example = "customer"), ("id" = String, Path, example = "ada")),
    responses(super::api::Answered, super::api::Admission))]
pub(super) async fn repair_snapshot(State(ctx): State<Ctx>, Path((aggregate, id)): Path<(String, String)>) -> Result<Response, QueryError> {
    admin(ctx, aggregate, id, "repair-snapshot").await
}

/// The reply of a recent command sent through this instance.
#[utoipa::path(get, path = "/aggregates/{aggregate}/{id}/commands/{command_id}", tag = "aggregates",
    params(("aggregate" = String, Path, example = "customer"), ("id" = String, Path, example = "ada"), ("command_id" = String, Path)),
    responses(super::api::Answered,
        (status = 400, description = "the command was invalid", body = super::api::Reply),
        (status = 415, description = "this aggregate's commands are not JSON", body = super::api::ErrorBody),
        super::api::Admission))]
pub(super) async fn status(
    State(ctx): State<Ctx>,
    Path((aggregate, id, command_id)): Path<(String, String, String)>,
) -> Result<Response, QueryError> {
    let gateway = ctx.gateway.as_ref().ok_or_else(|| QueryError::Unsupported("this server sends no commands".into()))?;
    gateway.target(&aggregate).map_err(gateway_error)?;
    if let Some(reply) = gateway.status(&command_id) {
        return Ok(answer(reply));
    }
    if gateway.is_pending(&command_id) {
        let url = status_url(&aggregate, &id, &command_id);
        return Ok((StatusCode::ACCEPTED, Json(json!({"command_id": command_id, "status": "pending", "status_url": url}))).into_response());
    }
    Err(QueryError::UnknownCommand(command_id))
}
