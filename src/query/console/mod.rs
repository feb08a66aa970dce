//! The console: `GET /ui` on every instance, a page an operator looks at instead of
//! reading `/metrics` text. Built into the binary (HTML rendered here, one stylesheet and
//! one small script embedded), so it works in a cluster with no internet.
//!
//! It reads what any program reads: each view calls this server's own HTTP API in
//! process, with the caller's token, so a view shows what the API answers (forwarded to
//! owners, 503 while a partition moves) and needs the scope the API needs. Cluster figures
//! come from each live instance's `/ui/instance.json`, fetched over the same keep-alive
//! connections key lookups are forwarded on.
//!
//! Views (one file each): the topology graph with live rates and the cluster (overview, refreshed by the
//! script), a store (pages, an index query, a key lookup), a key (snapshot, version, event
//! history, a command form), commands, and the last dead letters.

mod commands;
mod dead_letters;
mod feed;
mod graph;
mod html;
mod overview;
mod sign_in;
mod stores;

use super::Ctx;
use crate::kafka::Clients;
use crate::topology::Topology;
use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::Value;
use std::sync::Arc;
use tower::ServiceExt;

/// What the console needs beyond the query server's context.
pub struct Console {
    pub topology: Arc<Topology>,
    /// For reading the dead-letter topic.
    pub clients: Clients,
}

/// The console's state: the query context, the API it calls in process, itself.
#[derive(Clone)]
pub(super) struct Ui {
    ctx: Ctx,
    api: Router,
    console: Arc<Console>,
}

/// The cookie a browser carries the token in, once given on the sign-in form.
pub(super) const TOKEN_COOKIE: &str = "millrace_token";

pub(super) fn routes(ctx: Ctx, api: Router, console: Arc<Console>) -> Router {
    Router::new()
        .route("/ui", get(overview::overview))
        .route("/ui/live", get(overview::live))
        .route("/ui/instance.json", get(feed::instance_json))
        .route("/ui/stores/{store}", get(stores::store))
        .route("/ui/stores/{store}/lookup", get(stores::lookup))
        .route("/ui/stores/{store}/keys/{key}", get(stores::key))
        .route("/ui/commands", get(commands::commands_form).post(commands::send_command))
        .route("/ui/dead-letters", get(dead_letters::page))
        .route("/ui/login", get(sign_in::login_form).post(sign_in::login))
        .route("/ui/console.css", get(|| async { asset("text/css; charset=utf-8", include_str!("console.css")) }))
        .route("/ui/console.js", get(|| async { asset("text/javascript; charset=utf-8", include_str!("console.js")) }))
        .with_state(Ui { ctx, api, console })
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "max-age=300")], body).into_response()
}

/// The caller's credentials for the API: its `Authorization` header, or the console's
/// cookie as a bearer token.
pub(super) fn authorization(headers: &HeaderMap) -> Option<String> {
    if let Some(a) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        return Some(a.to_string());
    }
    cookie(headers, TOKEN_COOKIE).map(|t| format!("Bearer {t}"))
}

/// A page a person opens (not the script's or the peers' feeds).
pub(super) fn is_page(method: &Method, path: &str) -> bool {
    method == Method::GET && path != "/ui/live" && path != "/ui/instance.json"
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// An API answer: its status and its JSON body (Null when the body is not JSON).
pub(super) struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Answer {
    /// The API's own words for a failure: `message`, else the status.
    pub fn error(&self) -> String {
        self.body.get("message").and_then(Value::as_str).map_or_else(|| self.status.to_string(), str::to_string)
    }
}

impl Ui {
    /// Calls this server's HTTP API in process, as the caller.
    async fn call(&self, method: Method, path_and_query: &str, headers: &HeaderMap, body: Option<Vec<u8>>) -> Answer {
        let mut request = Request::builder().method(method).uri(path_and_query);
        if let Some(a) = authorization(headers) {
            request = request.header(header::AUTHORIZATION, a);
        }
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request.body(body.map_or_else(Body::empty, Body::from)).expect("a request from valid parts");
        let response = match self.api.clone().oneshot(request).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 16 << 20).await.unwrap_or_default();
        Answer { status, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null) }
    }

    async fn get(&self, path_and_query: &str, headers: &HeaderMap) -> Answer {
        self.call(Method::GET, path_and_query, headers, None).await
    }

    fn me(&self) -> String {
        self.ctx.directory.as_ref().map_or_else(|| "this instance".to_string(), |d| d.me.instance.clone())
    }

    fn not_found(&self, why: &str) -> Response {
        html::with_status(StatusCode::NOT_FOUND, self.page("Not found", html::Tab::Overview, &html::notice("bad", why)))
    }

    /// A whole page in the console's frame.
    fn page(&self, title: &str, tab: html::Tab, body: &str) -> Response {
        html::response(html::page(title, tab, &self.me(), &self.ctx.catalog.store_names(), body))
    }
}
