//! Bearer tokens for the HTTP server: who may read, who may send commands, who may repair.
//! A tokens file holds one `<scope> <token>` a line (`read`, `write` or `admin`; `#` starts
//! a comment). Each route family needs a scope, and a larger scope includes the smaller:
//! - open: `/health`, `/ready` (probes), `/metrics` unless `--http-metrics-auth`;
//! - `read`: stores, keys, pages, indexes, `/cluster`, an aggregate's event history;
//! - `write`: sending commands and asking for their replies;
//! - `admin`: snapshot repair and delete.
//!
//! Without a valid token the answer is 401; with a token whose scope is too small, 403.
//! Tokens are compared in constant time, and never logged.

use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::path::{Path, PathBuf};

/// What a token may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }
}

/// A tokens file that cannot be used: exit code 2 at start-up.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("{path}: cannot read: {source}", path = path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {message}", path = path.display())]
    Invalid { path: PathBuf, line: usize, message: String },
}

/// The accepted tokens.
#[derive(Clone)]
pub struct Tokens {
    entries: Vec<(Scope, Vec<u8>)>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets stay out of every log line.
        write!(f, "Tokens({} tokens)", self.entries.len())
    }
}

/// Shorter than this is not a secret worth the name.
const MIN_TOKEN_LEN: usize = 16;

impl Tokens {
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read { path: path.to_path_buf(), source })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, TokensError> {
        let invalid = |line: usize, message: String| TokensError::Invalid { path: path.to_path_buf(), line, message };
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(scope), Some(token), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(invalid(i + 1, "expected `<scope> <token>`, with scope read, write or admin".into()));
            };
            let scope = match scope {
                "read" => Scope::Read,
                "write" => Scope::Write,
                "admin" => Scope::Admin,
                other => return Err(invalid(i + 1, format!("unknown scope {other:?}; expected read, write or admin"))),
            };
            if token.len() < MIN_TOKEN_LEN {
                return Err(invalid(i + 1, format!("token shorter than {MIN_TOKEN_LEN} characters")));
            }
            entries.push((scope, token.as_bytes().to_vec()));
        }
        if entries.is_empty() {
            return Err(invalid(1, "no tokens: every request would be refused".into()));
        }
        Ok(Self { entries })
    }

    /// The scope of `token`, if it is one of ours. Every entry is compared, each in
    /// constant time, so the answer's timing says nothing about the token.
    fn scope_of(&self, token: &[u8]) -> Option<Scope> {
        let mut found = None;
        for (scope, t) in &self.entries {
            let same = t.len() == token.len() && t.iter().zip(token).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
            if same {
                found = found.max(Some(*scope));
            }
        }
        found
    }
}

/// The scope `method path` needs; None: open to anyone.
pub fn required(method: &Method, path: &str, metrics_auth: bool) -> Option<Scope> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["health"] | ["ready"] | ["openapi.json"] => None,
        // The console's sign-in form and its two files.
        ["ui", "login"] | ["ui", "console.css"] | ["ui", "console.js"] => None,
        ["ui", "commands"] if method == Method::POST => Some(Scope::Write),
        ["metrics"] => metrics_auth.then_some(Scope::Read),
        ["aggregates", _, _, "commands", ..] => Some(Scope::Write),
        ["aggregates", _, _, "snapshot", ..] => Some(Scope::Admin),
        _ if method == Method::DELETE => Some(Scope::Admin),
        // Stores, keys, indexes, the cluster table, event history, and anything unknown
        // (a 404 is no business of an unauthenticated caller).
        _ => Some(Scope::Read),
    }
}

/// Why a request is refused, as the JSON error every other failure uses.
pub fn check(tokens: &Tokens, authorization: Option<&str>, method: &Method, path: &str, needed: Scope) -> Result<(), Response> {
    let token = authorization.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim).filter(|t| !t.is_empty());
    let Some(token) = token else {
        return Err(refuse(StatusCode::UNAUTHORIZED, "unauthorized", "a bearer token is required (Authorization: Bearer <token>)".into()));
    };
    match tokens.scope_of(token.as_bytes()) {
        None => Err(refuse(StatusCode::UNAUTHORIZED, "unauthorized", "the bearer token is not valid".into())),
        Some(s) if s < needed => Err(refuse(StatusCode::FORBIDDEN, "forbidden", format!(
            "a {} token does not reach {method} {path}; it needs {}", s.name(), needed.name()))),
        Some(_) => Ok(()),
    }
}

fn refuse(status: StatusCode, code: &str, message: String) -> Response {
    let body = Json(json!({"error": code, "message": message}));
    if status == StatusCode::UNAUTHORIZED {
        (status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
    } else {
        (status, body).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest_and_routes_need_theirs() {
        let t = Tokens::parse(Path::new("t"), "# ops\nread rrrrrrrrrrrrrrrr\nwrite wwwwwwwwwwwwwwww\nadmin aaaaaaaaaaaaaaaa\n").unwrap();
        let get = Method::GET;
        let need = |m: &Method, p: &str| required(m, p, false);
        assert_eq!(need(&get, "/health"), None);
        assert_eq!(need(&get, "/metrics"), None);
        assert_eq!(required(&get, "/metrics", true), Some(Scope::Read));
        assert_eq!(need(&get, "/stores/customers/keys/a"), Some(Scope::Read));
        assert_eq!(need(&get, "/aggregates/customer/a/events"), Some(Scope::Read));
        assert_eq!(need(&Method::POST, "/aggregates/customer/a/commands"), Some(Scope::Write));
        assert_eq!(need(&get, "/aggregates/customer/a/commands/c1"), Some(Scope::Write));
        assert_eq!(need(&Method::POST, "/aggregates/customer/a/snapshot/repair"), Some(Scope::Admin));
        assert_eq!(need(&Method::DELETE, "/aggregates/customer/a/snapshot"), Some(Scope::Admin));
        assert_eq!(need(&get, "/ui"), Some(Scope::Read));
        assert_eq!(need(&get, "/ui/stores/customers/keys/a"), Some(Scope::Read));
        assert_eq!(need(&get, "/ui/login"), None);
        assert_eq!(need(&Method::POST, "/ui/commands"), Some(Scope::Write));
        let status = |auth: Option<&str>, needed| match check(&t, auth, &get, "/x", needed) {
            Ok(()) => 200,
            Err(r) => r.status().as_u16(),
        };
        assert_eq!(status(None, Scope::Read), 401);
        assert_eq!(status(Some("Bearer nope-nope-nope-nope"), Scope::Read), 401);
        assert_eq!(status(Some("Basic rrrrrrrrrrrrrrrr"), Scope::Read), 401);
        assert_eq!(status(Some("Bearer rrrrrrrrrrrrrrrr"), Scope::Read), 200);
        assert_eq!(status(Some("Bearer rrrrrrrrrrrrrrrr"), Scope::Write), 403);
        assert_eq!(status(Some("Bearer wwwwwwwwwwwwwwww"), Scope::Write), 200);
        assert_eq!(status(Some("Bearer wwwwwwwwwwwwwwww"), Scope::Admin), 403);
        assert_eq!(status(Some("Bearer aaaaaaaaaaaaaaaa"), Scope::Admin), 200);
        assert_eq!(format!("{t:?}"), "Tokens(3 tokens)", "no secret in Debug");
    }

    #[test]
    fn a_bad_tokens_file_names_its_line() {
        let e = Tokens::parse(Path::new("t"), "read rrrrrrrrrrrrrrrr\nsuper xxxxxxxxxxxxxxxx\n").unwrap_err();
        assert_eq!(e.to_string(), "t:2: unknown scope \"super\"; expected read, write or admin");
        let e = Tokens::parse(Path::new("t"), "read short\n").unwrap_err();
        assert!(e.to_string().starts_with("t:1: token shorter than 16"), "{e}");
        assert!(Tokens::parse(Path::new("t"), "# nothing\n").is_err());
    }
}
