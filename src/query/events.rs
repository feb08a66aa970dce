//! Per-aggregate event history: `GET /aggregates/{type}/{id}/events?from_version=N&limit=L`
//! answers an aggregate's events in version order, from the history its owner keeps in
//! the same RocksDB batch as the snapshot. Any instance answers (forwarded to the owner).
//! This is the per-aggregate load that a plain Kafka topic does not offer.

use super::{forward, local_or_forward, Ctx, QueryError, MAX_PAGE};
use crate::codec::murmur2::partition_for_key;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::collections::HashMap;

#[utoipa::path(get, path = "/aggregates/{aggregate}/{id}/events", tag = "aggregates",
    params(("aggregate" = String, Path, example = "customer"), ("id" = String, Path, example = "ada"),
        ("from_version" = Option<u64>, Query, minimum = 1, description = "first version (default 1)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "events a page (default 100)")),
    responses((status = 200, description = "the aggregate's events in version order", body = super::api::History),
        (status = 400, description = "a bad parameter", body = super::api::ErrorBody),
        (status = 404, description = "no such aggregate", body = super::api::ErrorBody),
        (status = 421, description = "a forwarded request reached an instance that no longer owns the key", body = super::api::ErrorBody),
        super::api::Admission))]
pub(super) async fn history(
    State(ctx): State<Ctx>,
    Path((aggregate, id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, QueryError> {
    let store = ctx.catalog.aggregate_store(&aggregate).ok_or_else(|| {
        QueryError::UnknownAggregate(format!("no aggregate {aggregate:?} here; known: {:?}", ctx.catalog.aggregate_names()))
    })?;
    let view = ctx.catalog.view(&store).ok_or_else(|| QueryError::UnknownStore(store.clone()))?;
    if let Some(k) = q.keys().find(|k| !matches!(k.as_str(), "from_version" | "limit")) {
        return Err(QueryError::BadParameter { name: k.clone(), reason: "unknown parameter; expected from_version or limit".into() });
    }
    let number = |name: &str, default: u64, min: u64, max: u64| -> Result<u64, QueryError> {
        match q.get(name) {
            None => Ok(default),
            Some(s) => s.parse::<u64>().ok().filter(|n| (min..=max).contains(n)).ok_or_else(|| QueryError::BadParameter {
                name: name.into(),
                reason: format!("{s:?} is not an integer between {min} and {max}"),
            }),
        }
    };
    // Versions are 64-bit signed on the wire of every client (JSON numbers, Java longs).
    let from = number("from_version", 1, 1, i64::MAX as u64)?;
    let limit = number("limit", 100, 1, MAX_PAGE as u64)? as usize;
    let partition = partition_for_key(id.as_bytes(), view.partitions);
    let path = || {
        format!("/aggregates/{}/{}/events?from_version={from}&limit={limit}", forward::encode_segment(&aggregate), forward::encode_segment(&id))
    };
    let local = match local_or_forward(&ctx, &store, &id, partition, path, &headers).await? {
        Ok(local) => local,
        Err(forwarded) => return Ok(forwarded),
    };
    let key = id.clone();
    let (events, complete) = tokio::task::spawn_blocking(move || {
        Ok::<_, crate::store::StoreError>((local.events_of(key.as_bytes(), from, limit + 1)?, local.events_complete()?))
    })
    .await
    .map_err(|_| QueryError::Internal)?
    .map_err(|e| {
        tracing::error!(error = %e, "event history read failed");
        QueryError::Internal
    })?;
    let more = events.len() > limit;
    let rendered: Vec<Value> = events.into_iter().take(limit).filter_map(|(_, json)| serde_json::from_slice(&json).ok()).collect();
    let next = more.then(|| rendered.last().and_then(|e| e["version"].as_u64()).map(|v| v + 1)).flatten();
    Ok(Json(json!({
        "aggregate_id": id,
        "events": rendered,
        "next_version": next,
        // False only where a protobuf events topic could not be replayed into a lost history.
        "complete": complete,
    }))
    .into_response())
}
