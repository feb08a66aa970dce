//! HTTPS with bearer tokens (issue 10, item 4), two real instances on the real broker:
//! - every route family answers 401 without a token, 403 with too small a scope, and
//!   serves with a large enough one; probes stay open, /metrics too unless
//!   `--http-metrics-auth`;
//! - a key held by the other instance is forwarded over TLS with the caller's token;
//! - the console gathers the other instance's figures and forwards key pages the same way;
//! - plain HTTP on the TLS port reaches no handler;
//! - a body over the limit is 413, a request over the concurrency limit 503 with
//!   Retry-After, a command over the pending limit 429 with Retry-After: all as JSON.

mod common;

use common::*;
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const READ: &str = "read-token-0123456789abcdef";
const WRITE: &str = "write-token-0123456789abcdef";
const ADMIN: &str = "admin-token-0123456789abcdef";

/// A CA and a certificate it signed for 127.0.0.1 and localhost, as PEM files.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    roots: Arc<rustls::RootCertStore>,
}

fn pki(dir: &Path) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.subject_alt_names.push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    Pki { ca: write("ca.pem", ca.pem()), cert: write("cert.pem", cert.pem()), key: write("key.pem", key.serialize_pem()), roots: Arc::new(roots) }
}

/// One HTTPS request: status and body.
fn https(roots: &Arc<rustls::RootCertStore>, addr: &str, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> std::io::Result<(u16, String)> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    let conn = rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("127.0.0.1").unwrap()).unwrap();
    let tcp = std::net::TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(70)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let auth = token.map(|t| format!("authorization: Bearer {t}\r\n")).unwrap_or_default();
    let body = body.unwrap_or("");
    write!(tls, "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len())?;
    let mut raw = Vec::new();
    match tls.read_to_end(&mut raw) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e),
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(rest) } else { rest.to_string() };
    Ok((status, body))
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}

/// Sum of a counter over its label sets, from a /metrics page.
fn sum(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(name) && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' ')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

struct Secured {
    s: Setup,
    pki: Pki,
    a: Instance,
    b: Instance,
}

fn start() -> Secured {
    let s = Setup::new("https", 4, "json");
    let pki = pki(s.dir.path());
    let tokens = s.dir.path().join("tokens");
    std::fs::write(&tokens, format!("# scope token\nread {READ}\nwrite {WRITE}\nadmin {ADMIN}\n")).unwrap();
    let args = |extra: &[&str]| -> Vec<std::ffi::OsString> {
        let mut v: Vec<std::ffi::OsString> = vec![
            "--http-tls-cert".into(), pki.cert.clone().into(),
            "--http-tls-key".into(), pki.key.clone().into(),
            "--http-tls-ca".into(), pki.ca.clone().into(),
            "--http-tokens".into(), tokens.clone().into(),
        ];
        v.extend(extra.iter().map(Into::into));
        v
    };
    let spawn = |id: &str, extra: &[&str]| {
        let a = args(extra);
        let refs: Vec<&OsStr> = a.iter().map(|x| x.as_os_str()).collect();
        Instance::spawn_with(&s, id, &s.dir.path().join(format!("state-{id}")), &refs)
    };
    let a = spawn("a", &["--http-max-body-bytes", "2000"]);
    let b = spawn("b", &["--http-metrics-auth", "--http-max-concurrent", "2", "--http-max-pending-commands", "0"]);
    for i in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !matches!(https(&pki.roots, &i.http, "GET", "/ready", None, None), Ok((200, _))) {
            assert!(Instant::now() < deadline, "not ready over HTTPS; log:\n{}", i.log_text());
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Secured { s, pki, a, b }
}

#[test]
fn tokens_scope_every_route_family_and_forwarding_carries_them_over_tls() {
    let Secured { s: _s, pki, a, b } = start();
    let call = |i: &Instance, method: &str, path: &str, token: Option<&str>, body: Option<&str>| {
        https(&pki.roots, &i.http, method, path, token, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    };
    // Commands need write; keys spread over both instances' partitions.
    let keys: Vec<String> = (0..12).map(|n| format!("k{n}")).collect();
    for k in &keys {
        let body = json!({"command_id": format!("c-{k}"), "type": "CreateCustomer", "payload": {"name": k, "email": "k@example.org"}}).to_string();
        let path = format!("/aggregates/customer/{k}/commands");
        assert_eq!(call(&a, "POST", &path, None, Some(&body)).0, 401);
        let (status, refused) = call(&a, "POST", &path, Some(READ), Some(&body));
        assert_eq!(status, 403, "{refused}");
        let refused: Value = serde_json::from_str(&refused).unwrap();
        assert_eq!(refused["error"], "forbidden");
        assert!(refused["message"].as_str().unwrap().contains("needs write"), "{refused}");
        let (status, reply) = call(&a, "POST", &path, Some(WRITE), Some(&body));
        assert_eq!(status, 200, "{reply}");
        assert_eq!(serde_json::from_str::<Value>(&reply).unwrap()["version"], 1);
    }

    // Each route family: none, too small, enough.
    let k = &keys[0];
    let families: [(&str, String, Option<&str>, &str); 9] = [
        ("GET", format!("/stores/customers/keys/{k}"), None, READ),
        ("GET", "/stores/customers?limit=5".into(), None, READ),
        ("GET", "/stores/customers/index/status/ACTIVE".into(), None, READ),
        ("GET", "/stores".into(), None, READ),
        ("GET", "/cluster".into(), None, READ),
        ("GET", format!("/aggregates/customer/{k}/events"), None, READ),
        ("GET", format!("/aggregates/customer/{k}/commands/c-{k}"), Some(READ), WRITE),
        ("POST", format!("/aggregates/customer/{k}/snapshot/repair"), Some(WRITE), ADMIN),
        ("DELETE", format!("/aggregates/customer/{k}/snapshot"), Some(WRITE), ADMIN),
    ];
    for (method, path, too_small, enough) in &families {
        for i in [&a, &b] {
            let (status, body) = call(i, method, path, None, None);
            assert_eq!(status, 401, "{method} {path} without a token: {body}");
            assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"], "unauthorized");
            assert_eq!(call(i, method, path, Some("not-a-token-at-all-xyz"), None).0, 401, "{method} {path}");
            if let Some(t) = too_small {
                assert_eq!(call(i, method, path, Some(t), None).0, 403, "{method} {path} with a smaller scope");
            }
            let (status, body) = call(i, method, path, Some(enough), None);
            // The delete of a readable snapshot is refused for what it is (409), not for
            // who asked; on b, which takes no pending gateway request, the admin requests
            // (they travel as commands) meet that limit instead (429).
            let want = match (*method, i.http == b.http) {
                ("DELETE" | "POST", true) => 429,
                ("DELETE", false) => 409,
                _ => 200,
            };
            assert_eq!(status, want, "{method} {path} on {}: {body}", i.http);
        }
    }
    // Probes stay open; /metrics too, unless the instance asks for a token.
    for i in [&a, &b] {
        assert_eq!(call(i, "GET", "/health", None, None).0, 200);
        assert_eq!(call(i, "GET", "/ready", None, None).0, 200);
    }
    assert_eq!(call(&a, "GET", "/metrics", None, None).0, 200);
    assert_eq!(call(&b, "GET", "/metrics", None, None).0, 401);
    assert_eq!(call(&b, "GET", "/metrics", Some(READ), None).0, 200);

    // Any instance answers any key: the other instance's keys come over TLS, with the
    // caller's token (the owner checks it too).
    let forwards_of = |i: &Instance| sum(&call(i, "GET", "/metrics", Some(READ), None).1, "millrace_query_forwards_total");
    let forwards_before = forwards_of(&a) + forwards_of(&b);
    for k in &keys {
        let path = format!("/stores/customers/keys/{k}");
        let (sa, from_a) = call(&a, "GET", &path, Some(READ), None);
        let (sb, from_b) = call(&b, "GET", &path, Some(READ), None);
        assert_eq!((sa, sb), (200, 200), "{k}: {from_a} / {from_b}");
        assert_eq!(serde_json::from_str::<Value>(&from_a).unwrap(), serde_json::from_str::<Value>(&from_b).unwrap(), "{k}");
    }
    let forwards = forwards_of(&a) + forwards_of(&b) - forwards_before;
    assert!(forwards > 0.0, "some keys were forwarded");
    let (status, page) = call(&b, "GET", "/stores/customers?limit=100", Some(READ), None);
    assert_eq!(status, 200);
    let page: Value = serde_json::from_str(&page).unwrap();
    assert_eq!(page["entries"].as_array().unwrap().len(), keys.len(), "a page gathers every partition over TLS: {page}");

    // Plain HTTP on the TLS port reaches no handler.
    // The console over TLS with a read token: the overview gathers the other instance's
    // feed over HTTPS with the caller's token, and a key page of any key (some forwarded
    // to b) shows its snapshot and history.
    let (status, page) = call(&a, "GET", "/ui", Some(READ), None);
    assert_eq!(status, 200, "{page}");
    for id in ["a", "b"] {
        assert!(page.contains(&format!(r#"<tr><td>{id}</td>"#)), "instance {id} listed: {page}");
    }
    assert!(!page.contains("unreachable"), "b's feed came over TLS: {page}");
    assert_eq!(page.matches(r#"<span class="badge ok">ready</span>"#).count(), 2, "{page}");
    for k in &keys {
        let (status, page) = call(&a, "GET", &format!("/ui/stores/customers/keys/{k}"), Some(READ), None);
        assert_eq!(status, 200, "{page}");
        assert!(page.contains(r#"<b id="version">1</b>"#) && page.contains("CustomerCreated"), "key {k}: {page}");
    }
    assert_eq!(call(&a, "GET", "/ui", None, None).0, 303, "no token: to the sign-in form");
    assert!(!matches!(http_get(&a.http, "/health"), Ok((200, _))), "plain HTTP answered on the TLS port");

    // A body over the limit (2,000 bytes on instance a): 413, as JSON.
    let big = json!({"type": "CreateCustomer", "payload": {"name": "x".repeat(3000), "email": "e@example.org"}}).to_string();
    let (status, body) = call(&a, "POST", "/aggregates/customer/big/commands", Some(WRITE), Some(&big));
    assert_eq!(status, 413, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"], "too_large");

    // Instance b takes two requests at once and no pending gateway command.
    let body = json!({"type": "CreateCustomer", "payload": {"name": "p", "email": "p@example.org"}}).to_string();
    let (status, refused) = call(&b, "POST", "/aggregates/customer/p/commands", Some(WRITE), Some(&body));
    assert_eq!(status, 429, "{refused}");
    assert_eq!(serde_json::from_str::<Value>(&refused).unwrap()["error"], "too_many_pending");
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let (roots, http, key) = (pki.roots.clone(), b.http.clone(), keys[0].clone());
            // Each waits 3 s for a version the key will not reach.
            std::thread::spawn(move || https(&roots, &http, "GET", &format!("/stores/customers/keys/{key}?min_version=99&wait_ms=3000"), Some(READ), None))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1000));
    let (status, refused) = call(&b, "GET", "/stores", Some(READ), None);
    assert_eq!(status, 503, "{refused}");
    assert_eq!(serde_json::from_str::<Value>(&refused).unwrap()["error"], "overloaded");
    for w in waiting {
        let (status, body) = w.join().unwrap().unwrap();
        assert_eq!((status, serde_json::from_str::<Value>(&body).unwrap()["error"].clone()), (503, json!("behind")), "{body}");
    }
    assert_eq!(call(&b, "GET", "/stores", Some(READ), None).0, 200, "free again");
}
