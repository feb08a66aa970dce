//! The query server (axum): committed store contents per key and as pages, health,
//! readiness and Prometheus metrics. It reads RocksDB only, so it never shows state of a
//! transaction that has not committed. Errors map to status codes in one place (`error`).
//!
//! Any instance answers any key: a key of a partition held elsewhere is forwarded to its
//! owner (found in the members directory, by the same Java murmur2 producers use), and a
//! listing or index query gathers one page from every owner and merges them in key order.
//! While a partition has no fresh owner, the answer is 503 with Retry-After.
//!
//! May use: store (read-only), runtime's catalog and directory, codec (murmur2).

pub mod api;
pub mod auth;
mod commands;
pub mod console;
mod error;
mod events;
pub mod forward;
mod guard;
pub mod tls;

pub use error::QueryError;
pub use guard::{HttpSecurity, Limits};

use crate::codec::murmur2::partition_for_key;
use crate::processor::{written, RenderedEntry};
use crate::runtime::{Catalog, Directory, StoreView};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

pub(crate) const MAX_PAGE: usize = 1000;

/// What every handler reads, behind one `Arc`: axum clones the state for each request, and
/// six reference counts per lookup were a measurable share of its CPU at 20,000/s.
#[derive(Clone)]
struct Ctx(Arc<Shared>);

impl std::ops::Deref for Ctx {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

struct Shared {
    catalog: Arc<Catalog>,
    metrics: Option<PrometheusHandle>,
    /// Who owns what; None: a single instance that answers for itself only.
    directory: Option<Arc<Directory>>,
    /// Sends commands and waits for replies; None: no command gateway.
    gateway: Option<Arc<crate::runtime::gateway::Gateway>>,
    /// Tokens, TLS (forwarding uses its client side) and limits.
    security: HttpSecurity,
    /// Kept-alive connections to the other instances, for forwarding.
    peers: forward::Peers,
}

impl Shared {
    /// How a request forwarded on behalf of a caller travels: over TLS when the servers
    /// speak it, with the caller's own token.
    fn via<'a>(&'a self, headers: &'a HeaderMap) -> forward::Via<'a> {
        forward::Via {
            tls: self.security.tls.as_ref().map(|t| &t.connector),
            authorization: headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()),
        }
    }
}

pub fn router(
    catalog: Arc<Catalog>,
    metrics: Option<PrometheusHandle>,
    directory: Option<Arc<Directory>>,
    gateway: Option<Arc<crate::runtime::gateway::Gateway>>,
    security: HttpSecurity,
    console: Option<console::Console>,
) -> Router {
    let admission = Arc::new(guard::Admission::new(security.clone()));
    let max_body = security.limits.max_body_bytes;
    let ctx = Ctx(Arc::new(Shared { catalog, metrics, directory, gateway, security, peers: forward::Peers::default() }));
    let guarded = |r: Router| {
        r.layer(axum::extract::DefaultBodyLimit::max(max_body))
            .layer(axum::middleware::from_fn_with_state(admission.clone(), guard::admit))
    };
    let api = guarded(
        Router::new()
            .route("/health", get(health))
            .route("/ready", get(ready))
            .route("/metrics", get(metrics_text))
            .route("/openapi.json", get(openapi_json))
            .route("/stores", get(stores))
            .route("/cluster", get(cluster))
            .route("/stores/{store}", get(list))
            .route("/stores/{store}/keys/{key}", get(get_key))
            .route("/stores/{store}/index/{field}/{value}", get(by_index))
            .route("/aggregates/{aggregate}/{id}/commands", post(commands::submit))
            .route("/aggregates/{aggregate}/{id}/events", get(events::history))
            .route("/aggregates/{aggregate}/{id}/commands/{command_id}", get(commands::status))
            .route("/aggregates/{aggregate}/{id}/snapshot", axum::routing::delete(commands::delete_snapshot))
            .route("/aggregates/{aggregate}/{id}/snapshot/repair", post(commands::repair_snapshot))
            .fallback(|| async { QueryError::NoRoute })
            .method_not_allowed_fallback(|| async { QueryError::MethodNotAllowed })
            .with_state(ctx.clone()),
    );
    match console {
        // The console calls the API in process, through the same admission as any caller.
        Some(c) => api.clone().merge(guarded(console::routes(ctx, api, Arc::new(c)))),
        None => api,
    }
}

/// Liveness: 503 once a processing thread died (the process is about to exit with code 1;
/// an orchestrator restarts it).
#[utoipa::path(get, path = "/health", tag = "probes", security(()),
    responses((status = 200, description = "alive", body = api::Health), (status = 503, description = "a processing thread died; the process exits", body = api::Health)))]
async fn health(State(ctx): State<Ctx>) -> Response {
    let (status, mut body) = match ctx.catalog.failure() {
        None => (StatusCode::OK, json!({"status": "ok"})),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, json!({"status": "failed", "reason": reason})),
    };
    // Who answers: a run restarting under this instance id asks the address its
    // predecessor advertised whether that one still serves (`runtime/predecessor.rs`).
    if let Some(d) = &ctx.directory {
        body["instance"] = json!(d.me.instance);
        body["incarnation"] = json!(d.incarnation);
    }
    (status, Json(body)).into_response()
}

/// Readiness: every task restored and the instance a member of the group.
#[utoipa::path(get, path = "/ready", tag = "probes", security(()),
    responses((status = 200, description = "ready", body = api::Ready), (status = 503, description = "restoring, or not yet assigned", body = api::Ready)))]
async fn ready(State(ctx): State<Ctx>) -> Response {
    if ctx.catalog.is_ready() {
        return Json(json!({"ready": true})).into_response();
    }
    let reason = match ctx.catalog.stalled() {
        Some(s) => format!(
            "processing thread {} has been held up in one call for {} s, longer than the group's session timeout: the group may have moved its partitions",
            s.thread,
            s.for_.as_secs()
        ),
        None => "restoring or not yet assigned".to_string(),
    };
    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"ready": false, "reason": reason}))).into_response()
}

/// Prometheus text; needs a read token only with `--http-metrics-auth`.
#[utoipa::path(get, path = "/metrics", tag = "probes", security((), ("bearer" = [])),
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
        (status = 404, description = "metrics not enabled", body = api::ErrorBody), api::Admission))]
async fn metrics_text(State(ctx): State<Ctx>) -> Response {
    match &ctx.metrics {
        // Per-partition gauges follow: they leave the page with their partition.
        Some(h) => format!("{}{}", h.render(), crate::runtime::partition_gauges::render()).into_response(),
        None => QueryError::NoMetrics.into_response(),
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "probes", security(()),
    responses((status = 200, description = "the OpenAPI 3.1 document", body = Object)))]
async fn openapi_json() -> Response {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let doc = DOC.get_or_init(api::document).clone();
    ([(axum::http::header::CONTENT_TYPE, "application/json")], doc).into_response()
}

/// `GET /cluster`: the routing table as this instance sees it: every live instance, and
/// for every store partition its owner and standbys with their HTTP addresses.
#[utoipa::path(get, path = "/cluster", tag = "stores",
    responses((status = 200, description = "every live instance, and each store partition's owner and standbys", body = api::Cluster), api::Admission))]
async fn cluster(State(ctx): State<Ctx>) -> Json<Value> {
    let Some(d) = &ctx.directory else {
        return Json(json!({"instances": [], "stores": {}}));
    };
    let who = |o: &crate::runtime::Owner| json!({"instance": o.instance, "http": o.http});
    let stores: serde_json::Map<String, Value> = d
        .table()
        .into_iter()
        .map(|(store, parts)| {
            let parts: Vec<Value> = parts
                .into_iter()
                .map(|(p, (owner, standbys))| json!({
                    "partition": p,
                    "owner": owner.as_ref().map(who),
                    "standbys": standbys.iter().map(who).collect::<Vec<_>>(),
                }))
                .collect();
            (store, Value::Array(parts))
        })
        .collect();
    let instances: Vec<Value> = d.live().iter().map(|m| json!({"instance": m.instance, "http": m.http})).collect();
    Json(json!({"me": d.me.instance, "instances": instances, "stores": stores}))
}

/// The stores this application has.
#[utoipa::path(get, path = "/stores", tag = "stores",
    responses((status = 200, description = "store names", body = api::StoreNames), api::Admission))]
async fn stores(State(ctx): State<Ctx>) -> Json<Value> {
    Json(json!({"stores": ctx.catalog.store_names()}))
}

/// This instance's store of `partition`, or else the owner's answer to `path()` (forwarded
/// at most once), or 503 while the partition has no fresh owner. The path is built only to
/// forward.
async fn local_or_forward(
    ctx: &Ctx,
    store: &str,
    key: &str,
    partition: i32,
    path: impl FnOnce() -> String,
    headers: &HeaderMap,
) -> Result<Result<Arc<crate::store::RocksStore>, Response>, QueryError> {
    if let Some(local) = ctx.catalog.local(store, partition) {
        // Unready: restoring, recovering from a failed transaction, or held up in one call
        // past the session timeout, while the group may be giving this partition to
        // another instance. What is here could be stale.
        if !ctx.catalog.is_ready() {
            return Err(QueryError::Moving { store: store.to_string(), partition });
        }
        return Ok(Ok(local));
    }
    let not_owner = QueryError::NotOwner { store: store.to_string(), key: key.to_string(), partition };
    // A forwarded request is answered here or not at all: no second hop.
    let (Some(directory), false) = (&ctx.directory, forwarded(headers)) else { return Err(not_owner) };
    let moving = || QueryError::Moving { store: store.to_string(), partition };
    let owner = directory.owner(store, partition).filter(|o| o.instance != directory.me.instance).ok_or_else(moving)?;
    let answer = ctx.peers.get(&owner.http, &path(), ctx.via(headers)).await.map_err(|e| {
        tracing::debug!(owner = %owner.instance, error = %e, "forward failed");
        metrics::counter!("millrace_query_forwards_total", "result" => "unreachable").increment(1);
        moving()
    })?;
    metrics::counter!("millrace_query_forwards_total", "result" => "answered").increment(1);
    // The owner gave the partition up since the directory last heard from it.
    if answer.status == StatusCode::MISDIRECTED_REQUEST.as_u16() {
        return Err(moving());
    }
    Ok(Err(relay(answer)))
}

fn forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(forward::FORWARDED)
}

/// A peer's JSON answer, passed on with its status.
fn relay(answer: forward::Answer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = (status, [(axum::http::header::CONTENT_TYPE, "application/json")], answer.body).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        // The owner's 503s (behind) all say to retry after a second.
        response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
    }
    response
}

/// Read your writes: `min_version=N` (the version a command reply carried) waits up to
/// `wait_ms` (default 5 s, at most 30 s) for the key to reach it.
struct KeyParams {
    min_version: Option<u64>,
    wait: std::time::Duration,
}

fn key_params(q: &HashMap<String, String>) -> Result<KeyParams, QueryError> {
    let number = |name: &str, max: u64| -> Result<Option<u64>, QueryError> {
        match q.get(name) {
            None => Ok(None),
            Some(s) => match s.parse::<u64>() {
                Ok(n) if n <= max => Ok(Some(n)),
                _ => Err(QueryError::BadParameter { name: name.into(), reason: format!("{s:?} is not an integer between 0 and {max}") }),
            },
        }
    };
    if let Some(k) = q.keys().find(|k| !matches!(k.as_str(), "min_version" | "wait_ms")) {
        return Err(QueryError::BadParameter { name: k.clone(), reason: "unknown parameter; expected min_version or wait_ms".into() });
    }
    Ok(KeyParams {
        // Versions are 64-bit signed on the wire of every client (JSON numbers, Java longs).
        min_version: number("min_version", i64::MAX as u64)?,
        wait: std::time::Duration::from_millis(number("wait_ms", 30_000)?.unwrap_or(5_000)),
    })
}

/// One key's committed value, from whichever instance owns it.
#[utoipa::path(get, path = "/stores/{store}/keys/{key}", tag = "stores",
    params(("store" = String, Path, example = "customers"), ("key" = String, Path, example = "ada"),
        ("min_version" = Option<u64>, Query, description = "read your writes: wait until the key reaches this version"),
        ("wait_ms" = Option<u64>, Query, maximum = 30000, description = "how long to wait for min_version (default 5000)")),
    responses((status = 200, description = "the key", body = api::Entry),
        (status = 400, description = "a bad parameter", body = api::ErrorBody),
        (status = 404, description = "no such store or key", body = api::ErrorBody),
        (status = 421, description = "a forwarded request reached an instance that no longer owns the key", body = api::ErrorBody),
        api::Admission))]
async fn get_key(
    State(ctx): State<Ctx>,
    Path((store, key)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, QueryError> {
    let view = ctx.catalog.view(&store).ok_or_else(|| QueryError::UnknownStore(store.clone()))?;
    let params = key_params(&q)?;
    let partition = partition_for_key(key.as_bytes(), view.partitions);
    let path = || {
        let mut path = format!("/stores/{}/keys/{}", forward::encode_segment(&store), forward::encode_segment(&key));
        if let Some(v) = params.min_version {
            path.push_str(&format!("?min_version={v}&wait_ms={}", params.wait.as_millis()));
        }
        path
    };
    let local = match local_or_forward(&ctx, &store, &key, partition, path, &headers).await? {
        Ok(local) => local,
        Err(forwarded) => return Ok(forwarded),
    };
    let deadline = tokio::time::Instant::now() + params.wait;
    loop {
        let rendered = read_rendered(&view, &local, &store, &key)?;
        let version = rendered.as_ref().and_then(|r| r.version);
        match (params.min_version, rendered) {
            (Some(_), Some(_)) if version.is_none() => {
                return Err(QueryError::BadParameter { name: "min_version".into(), reason: format!("store {store:?} keeps no versions") });
            }
            (Some(want), _) if version.unwrap_or(0) < want => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(QueryError::Behind { store, key, have: version.unwrap_or(0), want });
                }
                // Commits land every commit interval; polling the local store is cheap.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            (_, Some(r)) if written(r.version) => {
                return Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], r.json).into_response());
            }
            // Never written, or only rejections recorded for it.
            _ => return Err(QueryError::UnknownKey { store, key }),
        }
    }
}

/// The committed value of `key` as the query server answers it, if any.
fn read_rendered(view: &StoreView, local: &crate::store::RocksStore, store: &str, key: &str) -> Result<Option<RenderedEntry>, QueryError> {
    // On the worker, not the blocking pool: a point read is a few microseconds from the
    // block cache or the page cache, and the hand-off to a pool thread and back (two
    // wake-ups, two context switches) cost more than the read, most of a lookup's CPU
    // at 10,000 requests a second. Scans (`list`, history) still go to the pool.
    let bytes = local.get(key.as_bytes())
        .map_err(|e| {
            tracing::error!(error = %e, "store read failed");
            QueryError::Internal
        })?;
    let Some(value) = bytes else { return Ok(None) };
    view.renderer.render_entry(key, &value).map(Some).map_err(|e| {
        tracing::error!(error = %e, store = %store, key = %key, "stored value does not decode");
        QueryError::Internal
    })
}

/// `GET /stores/{store}?limit=&after=`: every partition's entries, merged in key order,
/// gathered from their owners. `after` is the last key of the previous page, so pages
/// stay stable while writes land. `scope=local` answers from this instance's partitions.
#[utoipa::path(get, path = "/stores/{store}", tag = "stores",
    params(("store" = String, Path, example = "customers"), api::PageQuery),
    responses((status = 200, description = "a page, in key order", body = api::Page),
        (status = 400, description = "a bad parameter", body = api::ErrorBody),
        (status = 404, description = "no such store", body = api::ErrorBody),
        api::Admission))]
async fn list(
    State(ctx): State<Ctx>,
    Path(store): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<Value>, QueryError> {
    let view = ctx.catalog.view(&store).ok_or_else(|| QueryError::UnknownStore(store.clone()))?;
    let p = page_params(&q)?;
    let after = p.after.clone();
    let (entries, owned) =
        gather(ctx.catalog.local_partitions(&store), move |s| s.scan(after.as_deref().map(str::as_bytes), p.limit)).await?;
    let local = page(&view, entries, p.limit)?;
    let path = format!("/stores/{}", forward::encode_segment(&store));
    scatter(&ctx, &store, &view, &p, &headers, local, owned, &path).await
}

/// `GET /stores/{store}/index/{field}/{value}?limit=&after=`: the entries whose `field`
/// equals `value` ("all customers with status DELETED"), in key order, from every
/// partition's owner, paginated like the listing.
#[utoipa::path(get, path = "/stores/{store}/index/{field}/{value}", tag = "stores",
    params(("store" = String, Path, example = "customers"), ("field" = String, Path, example = "status"), ("value" = String, Path, example = "ACTIVE"), api::PageQuery),
    responses((status = 200, description = "the entries whose field has this value, a page in key order", body = api::Page),
        (status = 400, description = "a bad parameter", body = api::ErrorBody),
        (status = 404, description = "no such store or index", body = api::ErrorBody),
        api::Admission))]
async fn by_index(
    State(ctx): State<Ctx>,
    Path((store, field, value)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<Value>, QueryError> {
    let view = ctx.catalog.view(&store).ok_or_else(|| QueryError::UnknownStore(store.clone()))?;
    if !view.indexes.contains(&field) {
        return Err(QueryError::UnknownIndex { store, field, known: view.indexes.clone() });
    }
    let p = page_params(&q)?;
    let after = p.after.clone();
    let path = format!("/stores/{}/index/{}/{}", forward::encode_segment(&store), forward::encode_segment(&field), forward::encode_segment(&value));
    let (entries, owned) = gather(ctx.catalog.local_partitions(&store), move |s| {
        s.index_scan(&field, &value, after.as_deref().map(str::as_bytes), p.limit)
    })
    .await?;
    let local = page(&view, entries, p.limit)?;
    scatter(&ctx, &store, &view, &p, &headers, local, owned, &path).await
}

/// One page of one source (this instance, or a peer): rendered entries in key order, and
/// the key after which that source has more.
struct Part {
    entries: Vec<Value>,
    next: Option<String>,
}

/// Completes a page with the other owners' parts, unless the request is for this
/// instance alone (`scope=local`, a forwarded request, a global table, no directory).
#[allow(clippy::too_many_arguments)]
async fn scatter(
    ctx: &Ctx,
    store: &str,
    view: &StoreView,
    p: &PageParams,
    headers: &HeaderMap,
    local: Part,
    owned: Vec<i32>,
    path: &str,
) -> Result<Json<Value>, QueryError> {
    let directory = match &ctx.directory {
        Some(d) if !p.local && !view.global && !forwarded(headers) => d,
        _ => return Ok(render_page(view, vec![local], p.limit, owned)),
    };
    // Every partition this instance lacks needs a fresh owner elsewhere.
    let mut peers: std::collections::BTreeMap<String, Vec<i32>> = std::collections::BTreeMap::new();
    for partition in (0..view.partitions).filter(|q| !owned.contains(q)) {
        let moving = || QueryError::Moving { store: store.to_string(), partition };
        let owner = directory.owner(store, partition).filter(|o| o.instance != directory.me.instance).ok_or_else(moving)?;
        peers.entry(owner.http).or_default().push(partition);
    }
    let mut query = format!("?scope=local&limit={}", p.limit);
    if let Some(a) = &p.after {
        query.push_str(&format!("&after={}", forward::encode_segment(a)));
    }
    let mut parts = vec![local];
    let mut covered = owned;
    for (http, wanted) in peers {
        let moving = || QueryError::Moving { store: store.to_string(), partition: wanted[0] };
        let answer = ctx.peers.get(&http, &format!("{path}{query}"), ctx.via(headers)).await.map_err(|_| moving())?;
        let body: Value = serde_json::from_slice(&answer.body).map_err(|_| moving())?;
        let theirs: Vec<i32> = body["partitions"].as_array().into_iter().flatten().filter_map(|v| v.as_i64().map(|x| x as i32)).collect();
        // The peer must still hold what the directory said it holds.
        if answer.status != 200 || wanted.iter().any(|w| !theirs.contains(w)) {
            return Err(moving());
        }
        covered.extend(theirs.iter().filter(|t| wanted.contains(t)));
        parts.push(Part {
            entries: body["entries"].as_array().cloned().unwrap_or_default(),
            next: body["next"].as_str().map(str::to_string),
        });
    }
    covered.sort_unstable();
    covered.dedup();
    Ok(render_page(view, parts, p.limit, covered))
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

/// Paging parameters of a listing or index query.
struct PageParams {
    limit: usize,
    after: Option<String>,
    /// `scope=local`: this instance's partitions only (how peers ask each other).
    local: bool,
}

fn page_params(q: &HashMap<String, String>) -> Result<PageParams, QueryError> {
    for k in q.keys() {
        if !matches!(k.as_str(), "limit" | "after" | "scope") {
            return Err(QueryError::BadParameter { name: k.clone(), reason: "unknown parameter; expected limit, after or scope".into() });
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
    let local = match q.get("scope").map(String::as_str) {
        None | Some("cluster") => false,
        Some("local") => true,
        Some(other) => {
            return Err(QueryError::BadParameter { name: "scope".into(), reason: format!("{other:?} is not local or cluster") })
        }
    };
    Ok(PageParams { limit, after: q.get("after").cloned(), local })
}

/// This instance's part of a page: its partitions' entries merged in key order, cut at
/// `limit`, rendered. `next` is the last key of a full page (computed before entries that
/// do not exist for queries are dropped, so the cursor never skips keys).
fn page(view: &StoreView, mut entries: Entries, limit: usize) -> Result<Part, QueryError> {
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries.truncate(limit);
    let next = (entries.len() == limit).then(|| entries.last().map(|(k, _)| String::from_utf8_lossy(k).into_owned())).flatten();
    let mut out = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        let r = view.renderer.render(&v).map_err(|_| QueryError::Internal)?;
        if !exists(&r) {
            continue;
        }
        out.push(crate::processor::keyed(String::from_utf8_lossy(&k).into_owned(), r));
    }
    Ok(Part { entries: out, next })
}

/// Merges parts into one page. A part with more after key `k` bounds the page at `k`:
/// past it, that part's keys are unknown, so a later key of another part cannot come yet.
fn render_page(view: &StoreView, parts: Vec<Part>, limit: usize, covered: Vec<i32>) -> Json<Value> {
    let bound = parts.iter().filter_map(|p| p.next.clone()).min();
    let key_of = |v: &Value| v["key"].as_str().unwrap_or_default().to_string();
    let mut all: Vec<Value> = parts
        .into_iter()
        .flat_map(|p| p.entries)
        .filter(|v| bound.as_ref().is_none_or(|b| key_of(v) <= *b))
        .collect();
    all.sort_by_key(|v| key_of(v));
    let next = if all.len() > limit {
        all.truncate(limit);
        all.last().map(key_of)
    } else {
        bound
    };
    Json(json!({
        "entries": all,
        "next": next,
        "partitions": covered,
        "total_partitions": view.partitions,
    }))
}

/// A snapshot exists for queries once its aggregate has at least one event.
fn exists(rendered: &Value) -> bool {
    written(rendered.get("version").and_then(Value::as_u64))
}

