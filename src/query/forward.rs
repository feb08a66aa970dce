//! Forwarding a query to the instance that owns the key: an HTTP/1.1 GET to another
//! millrace query server, one connection per request, over TLS when the servers speak it,
//! carrying the caller's own bearer token (the owner checks it as the first instance did:
//! forwarding never widens what a caller may read). Our own servers are the only peers,
//! so the client needs no more of HTTP than they speak.

use rustls::pki_types::ServerName;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsConnector;

/// Marks a forwarded request, so the receiver answers locally or says it is not the owner,
/// and never forwards again (no loops while ownership moves).
pub const FORWARDED: &str = "x-millrace-forwarded";

const TIMEOUT: Duration = Duration::from_secs(5);

/// A peer's answer: status and body.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// How a forwarded request travels.
#[derive(Clone, Copy, Default)]
pub struct Via<'a> {
    /// TLS to the peer (the servers serve HTTPS).
    pub tls: Option<&'a TlsConnector>,
    /// The caller's `Authorization` header, passed on.
    pub authorization: Option<&'a str>,
}

/// GETs `path_and_query` from `addr` (`host:port`).
pub async fn get(addr: &str, path_and_query: &str, via: Via<'_>) -> std::io::Result<Answer> {
    tokio::time::timeout(TIMEOUT, get_inner(addr, path_and_query, via))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{addr} did not answer in {TIMEOUT:?}")))?
}

async fn get_inner(addr: &str, path_and_query: &str, via: Via<'_>) -> std::io::Result<Answer> {
    // Header values cannot carry a line break: a caller cannot smuggle headers through.
    let auth = via.authorization.filter(|a| !a.contains(['\r', '\n'])).map(|a| format!("authorization: {a}\r\n")).unwrap_or_default();
    let request = format!("GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{FORWARDED}: 1\r\n{auth}\r\n");
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let raw = match via.tls {
        None => exchange(tcp, &request).await?,
        Some(connector) => {
            let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
            let name = ServerName::try_from(host.to_string())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
            exchange(connector.connect(name, tcp).await?, &request).await?
        }
    };
    parse(&raw).ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{addr}: malformed HTTP response")))
}

/// Writes the request and reads the answer to the end of the connection.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, request: &str) -> std::io::Result<Vec<u8>> {
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw).await {
        Ok(_) => Ok(raw),
        // A TLS peer that closes without close_notify, after a whole answer: parse decides.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => Ok(raw),
        Err(e) => Err(e),
    }
}

/// Status line, headers, then a body of `content-length` bytes or chunked (hyper chunks
/// bodies of unknown length).
fn parse(raw: &[u8]) -> Option<Answer> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let rest = &raw[end + 4..];
    let body = if chunked { dechunk(rest)? } else { rest.to_vec() };
    Some(Answer { status, body })
}

fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

/// Percent-encodes one path segment (a key may hold `/`, `?`, spaces or any byte).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_bodies() {
        let a = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((a.status, a.body.as_slice()), (200, &b"{}"[..]));
        let a = parse(b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!((a.status, a.body.as_slice()), (404, &b"abcde"[..]));
        assert!(parse(b"garbage").is_none());
        assert_eq!(encode_segment("a b/ü?"), "a%20b%2F%C3%BC%3F");
    }
}
