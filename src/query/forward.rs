//! Forwarding a query to the instance that owns the key: an HTTP/1.1 GET to another
//! millrace query server, over TLS when the servers speak it, carrying the caller's own
//! bearer token (the owner checks it as the first instance did: forwarding never widens
//! what a caller may read). Our own servers are the only peers, so the client needs no
//! more of HTTP than they speak.
//!
//! Connections are kept alive and reused (`Peers`): a new TCP connection, and with TLS a
//! handshake, for every forwarded request cost more than the lookup it carries. The
//! token travels with each request, never with the connection, so callers share them.

use rustls::pki_types::ServerName;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsConnector;

/// Marks a forwarded request, so the receiver answers locally or says it is not the owner,
/// and never forwards again (no loops while ownership moves).
pub const FORWARDED: &str = "x-millrace-forwarded";

const TIMEOUT: Duration = Duration::from_secs(5);

/// Idle connections kept per peer; more in flight at once are closed after their answer.
const IDLE_PER_PEER: usize = 64;

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

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}
type Conn = Box<dyn Stream>;

/// Idle keep-alive connections to other instances, by scheme and address.
#[derive(Default)]
pub struct Peers {
    idle: Mutex<HashMap<String, Vec<Conn>>>,
}

impl Peers {
    /// GETs `path_and_query` from `addr` (`host:port`), on an idle connection when there
    /// is one.
    pub async fn get(&self, addr: &str, path_and_query: &str, via: Via<'_>) -> std::io::Result<Answer> {
        tokio::time::timeout(TIMEOUT, self.get_inner(addr, path_and_query, via))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{addr} did not answer in {TIMEOUT:?}")))?
    }

    async fn get_inner(&self, addr: &str, path_and_query: &str, via: Via<'_>) -> std::io::Result<Answer> {
        // Header values cannot carry a line break: a caller cannot smuggle headers through.
        let auth = via.authorization.filter(|a| !a.contains(['\r', '\n'])).map(|a| format!("authorization: {a}\r\n")).unwrap_or_default();
        let request = format!("GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\n{FORWARDED}: 1\r\n{auth}\r\n");
        let key = format!("{}://{addr}", if via.tls.is_some() { "https" } else { "http" });
        // An idle connection the peer has closed meanwhile fails at once: the GET is
        // retried once on a new one (it changes nothing, so it may run twice).
        if let Some(mut conn) = self.take(&key) {
            if let Ok((answer, reusable)) = exchange(&mut conn, &request).await {
                self.keep(key, conn, reusable);
                return Ok(answer);
            }
        }
        let mut conn = connect(addr, via).await?;
        let (answer, reusable) = exchange(&mut conn, &request).await?;
        self.keep(key, conn, reusable);
        Ok(answer)
    }

    fn take(&self, key: &str) -> Option<Conn> {
        self.idle.lock().expect("peer pool lock").get_mut(key)?.pop()
    }

    fn keep(&self, key: String, conn: Conn, reusable: bool) {
        if !reusable {
            return;
        }
        let mut idle = self.idle.lock().expect("peer pool lock");
        let conns = idle.entry(key).or_default();
        if conns.len() < IDLE_PER_PEER {
            conns.push(conn);
        }
    }
}

async fn connect(addr: &str, via: Via<'_>) -> std::io::Result<Conn> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    // Small requests and answers: no Nagle delay behind the previous segment's ack.
    tcp.set_nodelay(true)?;
    match via.tls {
        None => Ok(Box::new(tcp)),
        Some(connector) => {
            let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
            let name = ServerName::try_from(host.to_string())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
            Ok(Box::new(connector.connect(name, tcp).await?))
        }
    }
}

/// Writes the request and reads exactly one answer; also says whether the connection can
/// carry another request.
async fn exchange(stream: &mut Conn, request: &str) -> std::io::Result<(Answer, bool)> {
    let malformed = || std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP response");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::with_capacity(4096);
    let mut chunk = [0u8; 16 * 1024];
    let mut eof = false;
    loop {
        match parse(&raw, eof) {
            Parsed::Done(answer, keep_alive) => return Ok((answer, keep_alive && !eof)),
            Parsed::Malformed => return Err(malformed()),
            Parsed::Incomplete if eof => {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the peer closed the connection mid-answer"))
            }
            Parsed::Incomplete => {}
        }
        match stream.read(&mut chunk).await {
            Ok(0) => eof = true,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            // A TLS peer that closes without close_notify, after a whole answer: parse decides.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => eof = true,
            Err(e) => return Err(e),
        }
    }
}

/// How far an answer has arrived.
enum Parsed {
    /// The whole answer, and whether the connection stays open after it.
    Done(Answer, bool),
    Incomplete,
    Malformed,
}

/// Status line, headers, then a body of `content-length` bytes, chunked (hyper chunks
/// bodies of unknown length), or up to the end of the connection (`eof`: it ended).
fn parse(raw: &[u8], eof: bool) -> Parsed {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { return Parsed::Incomplete };
    let Some(head) = std::str::from_utf8(&raw[..end]).ok() else { return Parsed::Malformed };
    let Some(status) = head.split_whitespace().nth(1).and_then(|s| s.parse::<u16>().ok()) else { return Parsed::Malformed };
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_ascii_lowercase())
        })
    };
    let keep_alive = !header("connection").is_some_and(|c| c.contains("close"));
    let rest = &raw[end + 4..];
    if header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        return match dechunk(rest) {
            Chunks::Done(body) => Parsed::Done(Answer { status, body }, keep_alive),
            Chunks::Incomplete => Parsed::Incomplete,
            Chunks::Malformed => Parsed::Malformed,
        };
    }
    match header("content-length").map(|l| l.parse::<usize>()) {
        Some(Ok(len)) if rest.len() >= len => Parsed::Done(Answer { status, body: rest[..len].to_vec() }, keep_alive),
        Some(Ok(_)) => Parsed::Incomplete,
        Some(Err(_)) => Parsed::Malformed,
        // Neither: the body ends with the connection.
        None if eof => Parsed::Done(Answer { status, body: rest.to_vec() }, false),
        None => Parsed::Incomplete,
    }
}

enum Chunks {
    Done(Vec<u8>),
    Incomplete,
    Malformed,
}

fn dechunk(mut rest: &[u8]) -> Chunks {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else { return Chunks::Incomplete };
        let size = std::str::from_utf8(&rest[..line_end])
            .ok()
            .and_then(|t| usize::from_str_radix(t.split(';').next()?.trim(), 16).ok());
        let Some(size) = size else { return Chunks::Malformed };
        rest = &rest[line_end + 2..];
        if size == 0 {
            // The last chunk; no trailers from our servers, only the final line break.
            return if rest.len() >= 2 { Chunks::Done(body) } else { Chunks::Incomplete };
        }
        let Some(data) = rest.get(..size) else { return Chunks::Incomplete };
        body.extend_from_slice(data);
        let Some(after) = rest.get(size + 2..) else { return Chunks::Incomplete };
        rest = after;
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

    fn done(raw: &[u8], eof: bool) -> (u16, Vec<u8>, bool) {
        match parse(raw, eof) {
            Parsed::Done(a, keep) => (a.status, a.body, keep),
            Parsed::Incomplete => panic!("incomplete: {}", String::from_utf8_lossy(raw)),
            Parsed::Malformed => panic!("malformed: {}", String::from_utf8_lossy(raw)),
        }
    }

    #[test]
    fn parses_plain_and_chunked_bodies() {
        assert_eq!(done(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}", false), (200, b"{}".to_vec(), true));
        let chunked = b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(done(chunked, false), (404, b"abcde".to_vec(), true));
        assert_eq!(done(b"HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 0\r\n\r\n", false), (200, vec![], false));
        assert_eq!(done(b"HTTP/1.1 200 OK\r\n\r\nto the end", true), (200, b"to the end".to_vec(), false));
        assert!(matches!(parse(b"garbage\r\n\r\n", false), Parsed::Malformed));
        assert!(matches!(parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", false), Parsed::Malformed));
        assert_eq!(encode_segment("a b/ü?"), "a%20b%2F%C3%BC%3F");
    }

    /// An answer arrives in pieces: every prefix of it is incomplete, never malformed or
    /// done early (the connection is then reused for the next request).
    #[test]
    fn every_prefix_of_an_answer_is_incomplete() {
        for whole in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"[..],
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
        ] {
            for cut in 0..whole.len() {
                assert!(matches!(parse(&whole[..cut], false), Parsed::Incomplete), "{:?}", String::from_utf8_lossy(&whole[..cut]));
            }
            assert_eq!(done(whole, false).1, b"hello".to_vec());
        }
    }

    /// Against a real query server (axum, as every instance runs): two requests travel
    /// on one connection, and a connection the server closed is replaced by a new one.
    #[tokio::test]
    async fn connections_are_reused_and_replaced_when_closed() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let accepted = Arc::new(AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let app = axum::Router::new().route("/k/{key}", axum::routing::get(|axum::extract::Path(k): axum::extract::Path<String>| async move { k }));
        let counted = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                let app = app.clone();
                tokio::spawn(async move {
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(tcp), service).await;
                });
            }
        });
        let peers = Peers::default();
        for k in ["a", "b", "c"] {
            let answer = peers.get(&addr, &format!("/k/{k}"), Via::default()).await.unwrap();
            assert_eq!((answer.status, answer.body), (200, k.as_bytes().to_vec()));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "three requests, one connection");
        // The idle connection dies (a peer restarted): the next request opens a new one.
        let mut dead = peers.take(&format!("http://{addr}")).unwrap();
        dead.shutdown().await.unwrap();
        peers.keep(format!("http://{addr}"), dead, true);
        let answer = peers.get(&addr, "/k/d", Via::default()).await.unwrap();
        assert_eq!((answer.status, answer.body), (200, b"d".to_vec()));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
