//! Admission of every request before a handler runs: its bearer token (`auth`), its size,
//! how many requests run at once, and how long one may take. Each refusal is the JSON
//! error every other failure uses, with a status a client can act on: 401 or 403, 413,
//! 503 with Retry-After when the server is full, 503 when a request ran out of time.

use super::auth::{self, Tokens};
use super::tls::HttpTls;
use super::QueryError;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Bounds on what one instance's HTTP server takes on.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body (a command), in bytes: 413 beyond.
    pub max_body_bytes: usize,
    /// Requests handled at once: 503 with Retry-After beyond.
    pub max_concurrent: usize,
    /// Longest a request may take. Above the longest wait a caller can ask for (a command's
    /// `timeout_ms` up to 60 s), so it only ends requests that hang.
    pub request_timeout: Duration,
    /// Requests waiting for their gateway commands' replies (two sending the same command
    /// id count twice): 429 beyond.
    pub max_pending_commands: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_body_bytes: 1 << 20, max_concurrent: 256, request_timeout: Duration::from_secs(65), max_pending_commands: 10_000 }
    }
}

/// How the HTTP server is secured and bounded (`millrace run --http-tls-*`,
/// `--http-tokens`, `--http-metrics-auth`).
#[derive(Clone, Default)]
pub struct HttpSecurity {
    /// None: no authentication (every route is open).
    pub tokens: Option<Arc<Tokens>>,
    /// `/metrics` needs a `read` token too.
    pub metrics_auth: bool,
    /// None: plain HTTP.
    pub tls: Option<HttpTls>,
    pub limits: Limits,
}

impl std::fmt::Debug for HttpSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSecurity")
            .field("tokens", &self.tokens)
            .field("metrics_auth", &self.metrics_auth)
            .field("tls", &self.tls.is_some())
            .field("limits", &self.limits)
            .finish()
    }
}

pub(super) struct Admission {
    pub security: HttpSecurity,
    permits: Arc<Semaphore>,
}

impl Admission {
    pub fn new(security: HttpSecurity) -> Self {
        let permits = Arc::new(Semaphore::new(security.limits.max_concurrent.max(1)));
        Self { security, permits }
    }
}

pub(super) async fn admit(State(a): State<Arc<Admission>>, request: Request, next: Next) -> Response {
    let s = &a.security;
    if let Some(tokens) = &s.tokens {
        if let Some(needed) = auth::required(request.method(), request.uri().path(), s.metrics_auth) {
            let path = request.uri().path();
            // The console's pages also take the token from the cookie its sign-in form sets.
            let console = path == "/ui" || path.starts_with("/ui/");
            let console_authorization = if console { super::console::authorization(request.headers()) } else { None };
            let authorization = match &console_authorization {
                Some(a) => Some(a.as_str()),
                None => request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()),
            };
            if let Err(refused) = auth::check(tokens, authorization, request.method(), path, needed) {
                metrics::counter!("millrace_http_refused_total", "status" => refused.status().as_str().to_string()).increment(1);
                // A person opening a page without a token is shown the sign-in form.
                if console && refused.status() == StatusCode::UNAUTHORIZED && super::console::is_page(request.method(), path) {
                    return (StatusCode::SEE_OTHER, [(header::LOCATION, "/ui/login")]).into_response();
                }
                return refused;
            }
        }
    }
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > s.limits.max_body_bytes) {
        return QueryError::TooLarge { limit: s.limits.max_body_bytes }.into_response();
    }
    let Ok(_permit) = a.permits.clone().try_acquire_owned() else {
        metrics::counter!("millrace_http_refused_total", "status" => "503").increment(1);
        return QueryError::Overloaded { limit: s.limits.max_concurrent }.into_response();
    };
    match tokio::time::timeout(s.limits.request_timeout, next.run(request)).await {
        // A body without a length that outgrew the limit: axum's own 413, as JSON.
        Ok(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => QueryError::TooLarge { limit: s.limits.max_body_bytes }.into_response(),
        Ok(r) => r,
        Err(_) => QueryError::Timeout { after: s.limits.request_timeout }.into_response(),
    }
}
