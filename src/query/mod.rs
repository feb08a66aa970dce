//! The query server (axum): committed store contents per key and as pages, health,
//! readiness and Prometheus metrics. It reads RocksDB only, so it never shows state of a
//! transaction that has not committed. Errors map to status codes in one place (`error`).
//!
//! May use: store (read-only), runtime's catalog, codec (murmur2 for key → partition).

mod error;

pub use error::QueryError;

use crate::codec::murmur2::partition_for_key;
use crate::runtime::{Catalog, StoreView};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

const MAX_PAGE: usize = 1000;

#[derive(Clone)]
struct Ctx {
    catalog: Arc<Catalog>,
    metrics: Option<PrometheusHandle>,
}

pub fn router(catalog: Arc<Catalog>, metrics: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/stores", get(stores))
        .route("/stores/{store}", get(list))
        .route("/stores/{store}/keys/{key}", get(get_key))
        .route("/stores/{store}/index/{field}/{value}", get(by_index))
        .fallback(|| async { QueryError::NoRoute })
        .method_not_allowed_fallback(|| async { QueryError::MethodNotAllowed })
        .with_state(Ctx { catalog, metrics })
}

async fn ready(State(ctx): State<Ctx>) -> Response {
    if ctx.catalog.is_ready() {
        Json(json!({"ready": true})).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"ready": false, "reason": "restoring or not yet assigned"})))
            .into_response()
    }
}

async fn metrics_text(State(ctx): State<Ctx>) -> Response {
    match ctx.metrics {
        Some(h) => h.render().into_response(),
        None => QueryError::NoMetrics.into_response(),
    }
}

async fn stores(State(ctx): State<Ctx>) -> Json<Value> {
    Json(json!({"stores": ctx.catalog.store_names()}))
}

async fn get_key(State(ctx): State<Ctx>, Path((store, key)): Path<(String, String)>) -> Result<Json<Value>, QueryError> {
    let view = ctx.catalog.view(&store).ok_or_else(|| QueryError::UnknownStore(store.clone()))?;
    let partition = partition_for_key(key.as_bytes(), view.partitions);
    let local = ctx
        .catalog
        .local(&store, partition)
        .ok_or(QueryError::NotOwner { store: store.clone(), key: key.clone(), partition })?;
    let bytes = tokio::task::spawn_blocking(move || local.get(key.as_bytes()).map(|v| (key, v)))
        .await
        .map_err(|_| QueryError::Internal)?
        .map_err(|e| {
            tracing::error!(error = %e, "store read failed");
            QueryError::Internal
        })?;
    let (key, Some(value)) = bytes else {
        return Err(QueryError::UnknownKey { store, key: bytes.0 });
    };
    let rendered = view.renderer.render(&value).map_err(|e| {
        tracing::error!(error = %e, store = %store, key = %key, "stored value does not decode");
        QueryError::Internal
    })?;
    // Only rejections were ever recorded for it (kept for dedup): it does not exist.
    if !exists(&rendered) {
        return Err(QueryError::UnknownKey { store, key });
    }
    Ok(Json(keyed(key, rendered)))
}

/// `GET /stores/{store}?limit=&after=`: this instance's partitions, merged in key order.
/// `after` is the last key of the previous page, so pages stay stable while writes land.
async fn list(
    State(ctx): State<Ctx>,
    Path(store): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, QueryError> {
    let view = ctx.catalog.view(&store).ok_or_else(|| QueryError::UnknownStore(store.clone()))?;
    let (limit, after) = page_params(&q)?;
    let (entries, owned) =
        gather(ctx.catalog.local_partitions(&store), move |p| p.scan(after.as_deref().map(str::as_bytes), limit)).await?;
    page(&view, entries, limit, owned)
}

/// `GET /stores/{store}/index/{field}/{value}?limit=&after=`: the entries of this
/// instance's partitions whose `field` equals `value` ("all customers with status
/// DELETED"), in key order, paginated like the listing.
async fn by_index(
    State(ctx): State<Ctx>,
    Path((store, field, value)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, QueryError> {
    let view = ctx.catalog.view(&store).ok_or_else(|| QueryError::UnknownStore(store.clone()))?;
    if !view.indexes.contains(&field) {
        return Err(QueryError::UnknownIndex { store, field, known: view.indexes.clone() });
    }
    let (limit, after) = page_params(&q)?;
    let (entries, owned) = gather(ctx.catalog.local_partitions(&store), move |p| {
        p.index_scan(&field, &value, after.as_deref().map(str::as_bytes), limit)
    })
    .await?;
    page(&view, entries, limit, owned)
}

type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Runs `scan` over this instance's partitions of a store, off the async threads (RocksDB
/// reads block). Returns the entries and the partitions they came from.
async fn gather(
    parts: Vec<std::sync::Arc<crate::store::RocksStore>>,
    scan: impl Fn(&crate::store::RocksStore) -> Result<Entries, crate::store::StoreError> + Send + 'static,
) -> Result<(Entries, Vec<i32>), QueryError> {
    let mut owned: Vec<i32> = parts.iter().map(|p| p.partition()).collect();
    owned.sort_unstable();
    let entries = tokio::task::spawn_blocking(move || {
        let mut all = Vec::new();
        for p in &parts {
            all.extend(scan(p)?);
        }
        Ok::<_, crate::store::StoreError>(all)
    })
    .await
    .map_err(|_| QueryError::Internal)?
    .map_err(|e| {
        tracing::error!(error = %e, "store scan failed");
        QueryError::Internal
    })?;
    Ok((entries, owned))
}

fn page_params(q: &HashMap<String, String>) -> Result<(usize, Option<String>), QueryError> {
    for k in q.keys() {
        if k != "limit" && k != "after" {
            return Err(QueryError::BadParameter { name: k.clone(), reason: "unknown parameter; expected limit or after".into() });
        }
    }
    let limit = match q.get("limit") {
        None => 100,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return Err(QueryError::BadParameter {
                    name: "limit".into(),
                    reason: format!("{s:?} is not an integer between 1 and {MAX_PAGE}"),
                })
            }
        },
    };
    Ok((limit, q.get("after").cloned()))
}

/// Merges per-partition results in key order and renders one page. `next` is the last key
/// of a full page: the `after` of the next request.
fn page(view: &StoreView, mut entries: Entries, limit: usize, owned: Vec<i32>) -> Result<Json<Value>, QueryError> {
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries.truncate(limit);
    let next = (entries.len() == limit).then(|| entries.last().map(|(k, _)| String::from_utf8_lossy(k).into_owned())).flatten();
    let mut out = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        let r = view.renderer.render(&v).map_err(|_| QueryError::Internal)?;
        if !exists(&r) {
            continue;
        }
        out.push(keyed(String::from_utf8_lossy(&k).into_owned(), r));
    }
    Ok(Json(json!({
        "entries": out,
        "next": next,
        "partitions": owned,
        "total_partitions": view.partitions,
    })))
}

/// A snapshot exists for queries once its aggregate has at least one event.
fn exists(rendered: &Value) -> bool {
    rendered.get("version").and_then(Value::as_u64).is_none_or(|v| v > 0)
}

/// `{"key": .., <rendered fields>}`: the key first, as docs/json-contract.md shows it.
fn keyed(key: String, rendered: Value) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("key".into(), Value::String(key));
    if let Value::Object(fields) = rendered {
        out.extend(fields);
    }
    Value::Object(out)
}
