//! The little HTTP/1.1 both sides speak: GET (and HEAD) requests, responses with a
//! Content-Length. Enough for curl, openssl s_client, browsers and nginx.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _};

/// Largest request or response head accepted.
pub const MAX_HEAD: usize = 64 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    #[error("connection closed in the middle of a {0} head")]
    TruncatedHead(&'static str),
    #[error("{0} head larger than 64 KiB")]
    HeadTooLarge(&'static str),
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("{0}")]
    Io(String),
    #[error("no data for {0} s")]
    Idle(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub path: String,
    /// The client wants the connection kept open after the response.
    pub keep_alive: bool,
    /// The request announces a body (which this server does not read).
    pub has_body: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub reason: String,
    pub content_length: Option<u64>,
    pub chunked: bool,
    /// X-Content-SHA256, hex.
    pub sha256: Option<String>,
    pub keep_alive: bool,
    /// Bytes of the head, blank line included.
    pub len: usize,
}

/// Position just past the first "\r\n\r\n" (or "\n\n").
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Reads until `buf` holds a whole head; returns its length, or None on a clean EOF
/// before any byte. Bytes after the head stay in `buf`.
pub async fn read_head<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    what: &'static str,
    idle: Option<Duration>,
) -> Result<Option<usize>, HttpError> {
    let mut scanned: usize = 0;
    loop {
        if let Some(end) = head_end(&buf[scanned.saturating_sub(3)..]) {
            return Ok(Some(scanned.saturating_sub(3) + end));
        }
        if buf.len() > MAX_HEAD {
            return Err(HttpError::HeadTooLarge(what));
        }
        scanned = buf.len();
        let mut chunk = [0u8; 4096];
        let read = s.read(&mut chunk);
        let n = match idle {
            Some(t) => match tokio::time::timeout(t, read).await {
                Ok(r) => r,
                Err(_) => return Err(HttpError::Idle(t.as_secs())),
            },
            None => read.await,
        };
        let n = match n {
            Ok(n) => n,
            // A TLS peer that goes away between messages without close_notify.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && buf.is_empty() => 0,
            Err(e) => return Err(HttpError::Io(super::error::io_reason(&e))),
        };
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(HttpError::TruncatedHead(what))
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn head_lines(head: &[u8], what: &'static str) -> Result<Vec<String>, HttpError> {
    let text = std::str::from_utf8(head).map_err(|_| HttpError::Malformed {
        what,
        detail: "not UTF-8".into(),
    })?;
    Ok(text
        .split('\n')
        .map(|l| l.trim_end_matches('\r').to_string())
        .take_while(|l| !l.is_empty())
        .collect())
}

fn header(line: &str) -> Option<(String, &str)> {
    let (name, value) = line.split_once(':')?;
    Some((name.trim().to_ascii_lowercase(), value.trim()))
}

fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

pub fn parse_request(head: &[u8]) -> Result<Request, HttpError> {
    const W: &str = "request";
    let lines = head_lines(head, W)?;
    let first = lines.first().ok_or(HttpError::Malformed {
        what: W,
        detail: "empty request line".into(),
    })?;
    let mut parts = first.split_whitespace();
    let (method, path, version) = match (parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(p), Some(v)) if v.starts_with("HTTP/1.") => (m, p, v),
        _ => {
            return Err(HttpError::Malformed {
                what: W,
                detail: format!("request line {first:?}"),
            });
        }
    };
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => Method::Other,
    };
    let mut keep_alive = version != "HTTP/1.0";
    let mut has_body = false;
    for line in &lines[1..] {
        match header(line) {
            Some((name, value)) if name == "connection" => {
                if has_token(value, "close") {
                    keep_alive = false;
                } else if has_token(value, "keep-alive") {
                    keep_alive = true;
                }
            }
            Some((name, value)) if name == "content-length" => {
                has_body |= value.parse::<u64>().map_or(true, |n| n > 0);
            }
            Some((name, _)) if name == "transfer-encoding" => has_body = true,
            _ => {}
        }
    }
    Ok(Request {
        method,
        path: path.to_string(),
        keep_alive,
        has_body,
    })
}

pub fn parse_response(head: &[u8]) -> Result<ResponseHead, HttpError> {
    const W: &str = "response";
    let lines = head_lines(head, W)?;
    let first = lines.first().ok_or(HttpError::Malformed {
        what: W,
        detail: "empty status line".into(),
    })?;
    let mut parts = first.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| HttpError::Malformed {
            what: W,
            detail: format!("status line {first:?}"),
        })?;
    let mut r = ResponseHead {
        status,
        reason: parts.next().unwrap_or_default().to_string(),
        content_length: None,
        chunked: false,
        sha256: None,
        keep_alive: version != "HTTP/1.0",
        len: head.len(),
    };
    for line in &lines[1..] {
        let Some((name, value)) = header(line) else {
            continue;
        };
        match name.as_str() {
            "content-length" => {
                r.content_length = Some(value.parse().map_err(|_| HttpError::Malformed {
                    what: W,
                    detail: format!("Content-Length {value:?}"),
                })?);
            }
            "transfer-encoding" => r.chunked = has_token(value, "chunked"),
            "x-content-sha256" => r.sha256 = Some(value.to_string()),
            "connection" => {
                if has_token(value, "close") {
                    r.keep_alive = false;
                } else if has_token(value, "keep-alive") {
                    r.keep_alive = true;
                }
            }
            _ => {}
        }
    }
    Ok(r)
}

/// The head of a 200 response carrying the file.
pub fn ok_head(len: u64, sha256_hex: &str, mode: &str, keep_alive: bool) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nServer: ktls-trace-load ({mode})\r\nContent-Type: \
         application/octet-stream\r\nContent-Length: {len}\r\nX-Content-SHA256: \
         {sha256_hex}\r\nConnection: {}\r\n\r\n",
        if keep_alive { "keep-alive" } else { "close" }
    )
    .into_bytes()
}

/// A body-less error response; the connection is closed after it.
pub fn error_head(status: u16, reason: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

/// The client's GET request; `keep_alive` false asks the server to close after it.
pub fn get_request(path: &str, host: &str, keep_alive: bool) -> Vec<u8> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ktls-trace-load\r\nAccept: \
         */*\r\nConnection: {connection}\r\n\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        let r = parse_request(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path, "/x");
        assert!(r.keep_alive && !r.has_body);
        let r = parse_request(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!r.keep_alive);
        let r = parse_request(b"HEAD / HTTP/1.1\r\nConnection: Close\r\n\r\n").unwrap();
        assert_eq!(r.method, Method::Head);
        assert!(!r.keep_alive);
        let r = parse_request(b"POST / HTTP/1.1\nContent-Length: 3\n\n").unwrap();
        assert_eq!(r.method, Method::Other);
        assert!(r.has_body);
        assert!(parse_request(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn responses() {
        let head = ok_head(1234, "ab", "ktls-sendfile", true);
        let r = parse_response(&head).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.content_length, Some(1234));
        assert_eq!(r.sha256.as_deref(), Some("ab"));
        assert!(r.keep_alive && !r.chunked);
        assert_eq!(r.len, head.len());
        let r = parse_response(b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap();
        assert_eq!(
            (r.status, r.reason.as_str(), r.chunked),
            (404, "Not Found", true)
        );
        assert!(parse_response(b"HTTP/1.1 2x0 OK\r\n\r\n").is_err());
    }

    #[tokio::test]
    async fn head_reading_keeps_the_rest() {
        let data = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY".to_vec();
        let mut src: &[u8] = &data;
        let mut buf = Vec::new();
        let n = read_head(&mut src, &mut buf, "request", None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[n..], b"BODY");
        let mut empty: &[u8] = b"";
        let mut buf = Vec::new();
        assert_eq!(
            read_head(&mut empty, &mut buf, "request", None).await,
            Ok(None)
        );
        let mut cut: &[u8] = b"GET / HT";
        assert_eq!(
            read_head(&mut cut, &mut Vec::new(), "request", None).await,
            Err(HttpError::TruncatedHead("request"))
        );
    }
}
