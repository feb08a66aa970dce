//! Forwarding a query to the instance that owns the key: a plain HTTP/1.1 GET to another
//! millrace query server, one connection per request. Our own servers are the only peers,
//! so the client needs no more of HTTP than they speak.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Marks a forwarded request, so the receiver answers locally or says it is not the owner,
/// and never forwards again (no loops while ownership moves).
pub const FORWARDED: &str = "x-millrace-forwarded";

const TIMEOUT: Duration = Duration::from_secs(5);

/// A peer's answer: status and body.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// GETs `path_and_query` from `addr` (`host:port`).
pub async fn get(addr: &str, path_and_query: &str) -> std::io::Result<Answer> {
    tokio::time::timeout(TIMEOUT, get_inner(addr, path_and_query))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{addr} did not answer in {TIMEOUT:?}")))?
}

async fn get_inner(addr: &str, path_and_query: &str) -> std::io::Result<Answer> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{FORWARDED}: 1\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    parse(&raw).ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{addr}: malformed HTTP response")))
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
