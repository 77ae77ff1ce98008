//! The HTTP side of `export`: `GET /metrics` (the latest snapshot, encoded per scrape in
//! the format the scraper asks for) and `GET /` (a page that links it), on hyper's HTTP/1
//! server over the session's tokio runtime.
//!
//! Bounded against slow or hostile clients: at most [`MAX_CONNECTIONS`] at once (more are
//! closed at once), request headers within [`HEADER_TIMEOUT`] and [`MAX_BUF`] bytes, a
//! connection lives at most [`LIFETIME`], and a request body is never read. A scrape only
//! clones the latest snapshot's `Arc`: it never waits for the tracing loop, nor it for it.

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
};

use super::metrics::{self, Format, Snapshot};

/// Connections served at once (Prometheus keeps one per target; a few people with curl).
pub const MAX_CONNECTIONS: usize = 32;
/// A request's headers must arrive within this (slowloris).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The most a connection may buffer (hyper's minimum is 8 KiB).
pub const MAX_BUF: usize = 16 << 10;
/// A connection is closed after this, kept alive or not; scrapers reconnect.
pub const LIFETIME: Duration = Duration::from_secs(300);

/// The `/` page: a link to `/metrics` and what it holds, from the code's own list.
fn index() -> String {
    let mut rows = String::new();
    for d in metrics::METRICS {
        rows.push_str(&format!(
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>\n",
            d.name(),
            d.kind.name(),
            html_escape(d.help)
        ));
    }
    format!(
        "<!doctype html>\n<html><head><title>ktls-trace exporter</title></head>\n<body><h1>ktls-trace exporter</h1>\n<p>How this server's bytes travel the kernel TLS transmit path: <a href=\"/metrics\">/metrics</a></p>\n<table>\n{rows}</table>\n</body></html>\n"
    )
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// An answer, before hyper: status, content type, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
    /// For 405: the methods this path takes.
    pub allow: Option<&'static str>,
}

impl Answer {
    fn text(status: StatusCode, body: &str) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.to_string(),
            allow: None,
        }
    }
}

/// What a request gets, from its method, path and `Accept` header (pure).
pub fn route(method: &Method, path: &str, accept: Option<&str>, snap: &Arc<Snapshot>) -> Answer {
    let page = match path {
        "/metrics" => Page::Metrics,
        "/" => Page::Index,
        _ => return Answer::text(StatusCode::NOT_FOUND, "not found: try /metrics\n"),
    };
    if method != Method::GET && method != Method::HEAD {
        let mut a = Answer::text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        a.allow = Some("GET, HEAD");
        return a;
    }
    match page {
        Page::Index => Answer {
            status: StatusCode::OK,
            content_type: "text/html; charset=utf-8",
            body: index(),
            allow: None,
        },
        Page::Metrics => {
            let format = Format::negotiate(accept);
            match metrics::encode(snap, format) {
                Ok(body) => Answer {
                    status: StatusCode::OK,
                    content_type: format.content_type(),
                    body,
                    allow: None,
                },
                Err(_) => Answer::text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "encoding the metrics failed\n",
                ),
            }
        }
    }
}

enum Page {
    Metrics,
    Index,
}

fn respond<B>(req: &Request<B>, snap: &Arc<Snapshot>) -> Response<Full<Bytes>> {
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let a = route(req.method(), req.uri().path(), accept, snap);
    let body = if req.method() == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from(a.body)
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = a.status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    if let Some(allow) = a.allow {
        h.insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    resp
}

/// Serves until the task is dropped (aborted). Accept errors (out of file descriptors)
/// are logged and retried after a pause, never fatal.
pub async fn serve(listener: TcpListener, snapshots: watch::Receiver<Arc<Snapshot>>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                log::warn!("export: accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            log::info!("export: {MAX_CONNECTIONS} connections open: closing a new one");
            continue;
        };
        let rx = snapshots.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                // The latest snapshot, without holding the channel's lock while encoding.
                let snap = rx.borrow().clone();
                async move { Ok::<_, Infallible>(respond(&req, &snap)) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_BUF)
                .serve_connection(TokioIo::new(stream), svc);
            if let Ok(Err(e)) = tokio::time::timeout(LIFETIME, conn).await {
                log::debug!("export: connection ended: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap() -> Arc<Snapshot> {
        Arc::new(Snapshot::default())
    }

    #[test]
    fn routes_answer_metrics_index_404_and_405() {
        let m = route(&Method::GET, "/metrics", None, &snap());
        assert_eq!(m.status, StatusCode::OK);
        assert_eq!(m.content_type, "text/plain; version=0.0.4; charset=utf-8");
        assert!(m.body.contains("# TYPE ktls_trace_build_info gauge"));
        let om = route(
            &Method::GET,
            "/metrics",
            Some("application/openmetrics-text;version=1.0.0"),
            &snap(),
        );
        assert!(om.content_type.starts_with("application/openmetrics-text"));
        assert!(om.body.ends_with("# EOF\n"));
        let i = route(&Method::GET, "/", None, &snap());
        assert_eq!(i.status, StatusCode::OK);
        assert!(i.body.contains("href=\"/metrics\""));
        assert!(i.body.contains("ktls_trace_payload_bytes_total"));
        assert_eq!(
            route(&Method::GET, "/metricsx", None, &snap()).status,
            StatusCode::NOT_FOUND
        );
        let post = route(&Method::POST, "/metrics", None, &snap());
        assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.allow, Some("GET, HEAD"));
        assert_eq!(
            route(&Method::HEAD, "/metrics", None, &snap()).status,
            StatusCode::OK
        );
    }
}
