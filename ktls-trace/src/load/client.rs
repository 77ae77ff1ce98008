//! The client side: parallel keep-alive connections sending GET requests, reading and
//! decrypting (rustls, user space) every byte and checking it.

use std::{
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use ring::digest;
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
    task::JoinSet,
};
use tokio_rustls::TlsConnector;

use super::{
    Waits,
    error::{LoadError, io_reason},
    file::{Sha256, finish, hex, parse_hex_sha256},
    http,
    report::{Active, ClientReport, Counters, Progress},
    tls::{self, Negotiated, TlsChoice},
};

/// How long the client waits: for the server to say something in the middle of a
/// response, to connect, and for running requests to finish once it is told to stop.
const WAIT: Waits = Waits {
    idle: Duration::from_secs(30),
    start: Duration::from_secs(10),
    grace: Duration::from_secs(10),
};

/// When the client stops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    /// This many requests in total, over all connections.
    Requests(u64),
    /// Requests until this much time has passed (running ones complete).
    Duration(Duration),
}

/// What the bodies must contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Nothing known: check against the server's X-Content-SHA256 if it sends one, else
    /// the length only.
    Unknown,
    /// Exactly this content.
    Content { size: u64, sha256: Sha256 },
}

/// Everything `run_client` needs.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// HOST:PORT.
    pub connect: String,
    /// SNI and Host header; None: the host of `connect`.
    pub server_name: Option<String>,
    pub path: String,
    /// None: plain HTTP (for plain-sendfile servers).
    pub tls: Option<TlsChoice>,
    /// Verify the server certificate against this PEM file; None: accept any.
    pub ca: Option<PathBuf>,
    pub connections: u32,
    /// Requests on one connection before the client asks the server to close it and
    /// opens another (None: as many as the limit allows).
    pub per_connection: Option<u64>,
    pub limit: Limit,
    pub expect: Expect,
    pub progress: bool,
    /// Notified when the first body bytes arrive: the load is serving.
    pub serving: Option<Arc<tokio::sync::Notify>>,
}

impl ClientConfig {
    pub fn new(connect: String, tls: Option<TlsChoice>, limit: Limit) -> ClientConfig {
        ClientConfig {
            connect,
            server_name: None,
            path: "/".into(),
            tls,
            ca: None,
            connections: 1,
            per_connection: None,
            limit,
            expect: Expect::Unknown,
            progress: false,
            serving: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ReqError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    #[error("{0}")]
    Http(#[from] http::HttpError),
    #[error("{what}: {reason}")]
    Io { what: &'static str, reason: String },
    #[error("the server closed the connection before answering")]
    NoAnswer,
    #[error("the server answered {0} {1}")]
    Status(u16, String),
    #[error("response without Content-Length (chunked bodies are not supported)")]
    NoLength,
    #[error("Content-Length is {got}, expected {want} (the file's size)")]
    WrongLength { got: u64, want: u64 },
    #[error("short read: the connection ended after {got} of {want} body bytes")]
    Short { got: u64, want: u64 },
    #[error("content mismatch: SHA-256 of the {len}-byte body is {got}, expected {want} ({from})")]
    Mismatch {
        len: u64,
        got: String,
        want: String,
        from: &'static str,
    },
    #[error("no data from the server for {} s", WAIT.idle.as_secs())]
    Idle,
}

/// How a response was checked (ordered weakest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Check {
    Length,
    ServerHeader,
    Sha256,
}

impl Check {
    fn name(self) -> &'static str {
        match self {
            Check::Length => "length",
            Check::ServerHeader => "sha256-server-header",
            Check::Sha256 => "sha256",
        }
    }
}

struct Ctx {
    addr: SocketAddr,
    connect: String,
    server_name: ServerName<'static>,
    host_header: String,
    path: String,
    connector: Option<TlsConnector>,
    per_connection: Option<u64>,
    limit: Limit,
    deadline: Instant,
    claimed: AtomicU64,
    expect: Expect,
    counters: Arc<Counters>,
    weakest_check: Mutex<Option<Check>>,
    stopping: AtomicBool,
    serving: Option<Arc<tokio::sync::Notify>>,
}

impl Ctx {
    /// Counts body bytes; the first ones mean the load is serving.
    fn body_bytes(&self, n: u64) {
        if self.counters.body_bytes.fetch_add(n, Relaxed) == 0
            && n > 0
            && let Some(s) = &self.serving
        {
            s.notify_one();
        }
    }
}

impl Ctx {
    fn claim(&self) -> bool {
        if self.stopping.load(Relaxed) {
            return false;
        }
        match self.limit {
            Limit::Requests(n) => self
                .claimed
                .fetch_update(Relaxed, Relaxed, |c| (c < n).then_some(c + 1))
                .is_ok(),
            Limit::Duration(_) => Instant::now() < self.deadline,
        }
    }

    fn checked(&self, c: Check) {
        if let Ok(mut w) = self.weakest_check.lock() {
            *w = Some(w.map_or(c, |old| old.min(c)));
        }
    }
}

/// Splits HOST:PORT (or [V6]:PORT) into the host.
fn host_of(connect: &str) -> Option<&str> {
    let (host, port) = connect.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then_some(host)
}

/// Runs the client until its limit, or until `shutdown` completes (then no new request
/// starts; running ones get 10 s to finish before they are abandoned, uncounted).
pub async fn run_client(
    cfg: ClientConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<ClientReport, LoadError> {
    if cfg.connections == 0 {
        return Err(LoadError::Usage("--connections must be at least 1".into()));
    }
    if cfg.limit == Limit::Requests(0) {
        return Err(LoadError::Usage("--requests must be at least 1".into()));
    }
    if !cfg.path.starts_with('/') || cfg.path.contains(char::is_whitespace) {
        return Err(LoadError::Usage(format!(
            "--path must start with / and contain no spaces (got {:?})",
            cfg.path
        )));
    }
    let host = host_of(&cfg.connect).ok_or_else(|| {
        LoadError::Usage(format!(
            "--connect needs HOST:PORT (got {:?}), e.g. 127.0.0.1:8443",
            cfg.connect
        ))
    })?;
    let addr = tokio::net::lookup_host(&cfg.connect)
        .await
        .map_err(|e| LoadError::Resolve {
            addr: cfg.connect.clone(),
            reason: io_reason(&e),
        })?
        .next()
        .ok_or_else(|| LoadError::Resolve {
            addr: cfg.connect.clone(),
            reason: "no address".into(),
        })?;
    let name = cfg.server_name.clone().unwrap_or_else(|| host.to_string());
    let server_name = ServerName::try_from(name.clone())
        .map_err(|_| LoadError::Usage(format!("{name:?} is not a valid TLS server name")))?;
    let default_port = if cfg.tls.is_some() { 443 } else { 80 };
    let host_header = match (cfg.server_name.is_some(), addr.port() == default_port) {
        (true, true) => name.clone(),
        (true, false) => format!("{name}:{}", addr.port()),
        (false, _) => cfg.connect.clone(),
    };
    let connector = match &cfg.tls {
        Some(choice) => Some(TlsConnector::from(tls::client_config(
            choice,
            cfg.ca.as_deref(),
        )?)),
        None => None,
    };

    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let ctx = Arc::new(Ctx {
        addr,
        connect: cfg.connect.clone(),
        server_name,
        host_header,
        path: cfg.path.clone(),
        connector,
        per_connection: cfg.per_connection,
        limit: cfg.limit,
        deadline: started
            + match cfg.limit {
                Limit::Duration(d) => d,
                Limit::Requests(_) => Duration::ZERO,
            },
        claimed: AtomicU64::new(0),
        expect: cfg.expect,
        counters: counters.clone(),
        weakest_check: Mutex::new(None),
        stopping: AtomicBool::new(false),
        serving: cfg.serving.clone(),
    });
    let progress = Progress::start("client", counters.clone(), cfg.progress);
    let mut tasks = JoinSet::new();
    // Each connection's first request is claimed here, before any connection runs, so that
    // `--connections N` opens N connections even when the first one could serve every
    // request before the others are scheduled (fewer requests than connections: fewer open).
    for i in 0..cfg.connections {
        if !ctx.claim() {
            break;
        }
        tasks.spawn(connection(ctx.clone(), i + 1));
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            r = tasks.join_next() => match r {
                None => break,
                Some(Err(e)) if e.is_panic() => {
                    counters.error(format!("a connection task panicked: {e}"));
                }
                Some(_) => {}
            },
            () = &mut shutdown => {
                // No new requests; running ones may finish for a while.
                ctx.stopping.store(true, Relaxed);
                let finished = tokio::time::timeout(WAIT.grace, async {
                    while tasks.join_next().await.is_some() {}
                })
                .await;
                if finished.is_err() {
                    tasks.abort_all();
                    while tasks.join_next().await.is_some() {}
                }
                break;
            }
        }
    }
    progress.stop();

    let seconds = started.elapsed().as_secs_f64();
    let tally = counters.tally(seconds);
    let check = ctx
        .weakest_check
        .lock()
        .ok()
        .and_then(|w| *w)
        .unwrap_or(match cfg.expect {
            Expect::Content { .. } => Check::Sha256,
            Expect::Unknown => Check::Length,
        });
    Ok(ClientReport {
        role: "client".into(),
        connect: cfg.connect,
        path: cfg.path,
        tls: cfg.tls.is_some(),
        check: check.name().into(),
        verified: tally.requests > 0 && tally.errors == 0 && check >= Check::ServerHeader,
        tally,
        cpu: None,
    })
}

/// One client connection: (re)connects while requests remain, one request at a time.
/// Its first request was claimed by the caller.
async fn connection(ctx: Arc<Ctx>, id: u32) {
    let mut nth = 0u64;
    let mut first = true;
    'connect: while std::mem::take(&mut first) || ctx.claim() {
        let res = match &ctx.connector {
            None => match open(&ctx).await {
                Ok(s) => requests(&ctx, s, &mut nth).await,
                Err(e) => Err(e),
            },
            Some(connector) => match open(&ctx).await {
                Ok(tcp) => {
                    let hs = tokio::time::timeout(
                        WAIT.start,
                        connector.connect(ctx.server_name.clone(), tcp),
                    )
                    .await;
                    match hs {
                        Ok(Ok(tls)) => {
                            let conn = tls.get_ref().1;
                            if let Some(n) = Negotiated::of(
                                conn.negotiated_cipher_suite(),
                                conn.protocol_version(),
                            ) {
                                ctx.counters.negotiated(n);
                            }
                            requests(&ctx, tls, &mut nth).await
                        }
                        Ok(Err(e)) => Err(ReqError::Handshake(io_reason(&e))),
                        Err(_) => Err(ReqError::Handshake(format!(
                            "timed out after {} s",
                            WAIT.start.as_secs()
                        ))),
                    }
                }
                Err(e) => Err(e),
            },
        };
        match res {
            // The server closed the connection after a response: go on with a new one.
            Ok(Again::Reconnect) => continue 'connect,
            Ok(Again::Done) => break,
            Err(e) => {
                let at = if nth == 0 {
                    String::new()
                } else {
                    format!(", request {nth}")
                };
                ctx.counters
                    .error(format!("connection {id} to {}{at}: {e}", ctx.connect));
                break;
            }
        }
    }
}

async fn open(ctx: &Ctx) -> Result<TcpStream, ReqError> {
    let tcp = match tokio::time::timeout(WAIT.start, TcpStream::connect(ctx.addr)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err(ReqError::Connect(io_reason(&e))),
        Err(_) => {
            return Err(ReqError::Connect(format!(
                "timed out after {} s",
                WAIT.start.as_secs()
            )));
        }
    };
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

enum Again {
    Reconnect,
    Done,
}

/// Sends requests on one open connection (the first request is already claimed).
async fn requests<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &Ctx,
    mut s: S,
    nth: &mut u64,
) -> Result<Again, ReqError> {
    let _active = Active::new(&ctx.counters);
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut body = vec![0u8; 256 * 1024];
    let mut first = true;
    let mut on_this = 0u64;
    loop {
        if !first && !ctx.claim() {
            super::close(&mut s, false).await;
            return Ok(Again::Done);
        }
        first = false;
        *nth += 1;
        on_this += 1;
        let ask_keep_alive = ctx.per_connection.is_none_or(|n| on_this < n);
        let keep_alive = match one_request(ctx, &mut s, &mut buf, &mut body, ask_keep_alive).await {
            Ok(k) => k,
            Err(e) => {
                // Close as cleanly as the connection still allows.
                super::close(&mut s, false).await;
                return Err(e);
            }
        };
        ctx.counters.requests.fetch_add(1, Relaxed);
        if !keep_alive {
            super::close(&mut s, false).await;
            return Ok(Again::Reconnect);
        }
    }
}

/// GET, read the head and the whole body, check it. Returns whether the server keeps
/// the connection open.
async fn one_request<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &Ctx,
    s: &mut S,
    buf: &mut Vec<u8>,
    body: &mut [u8],
    keep_alive: bool,
) -> Result<bool, ReqError> {
    let req = http::get_request(&ctx.path, &ctx.host_header, keep_alive);
    s.write_all(&req).await.map_err(|e| ReqError::Io {
        what: "sending the request",
        reason: io_reason(&e),
    })?;
    s.flush().await.map_err(|e| ReqError::Io {
        what: "sending the request",
        reason: io_reason(&e),
    })?;
    let n = http::read_head(s, buf, "response", Some(WAIT.idle))
        .await?
        .ok_or(ReqError::NoAnswer)?;
    let head = http::parse_response(&buf[..n])?;
    buf.drain(..n);
    ctx.counters
        .header_bytes
        .fetch_add(head.len as u64, Relaxed);
    if head.status != 200 {
        return Err(ReqError::Status(head.status, head.reason));
    }
    let want = match (head.content_length, head.chunked) {
        (Some(n), false) => n,
        _ => return Err(ReqError::NoLength),
    };
    let (expected, from, check) = match (ctx.expect, head.sha256.as_deref()) {
        (Expect::Content { size, sha256 }, _) => {
            if want != size {
                return Err(ReqError::WrongLength {
                    got: want,
                    want: size,
                });
            }
            (Some(sha256), "the expected file", Check::Sha256)
        }
        (Expect::Unknown, Some(h)) => match parse_hex_sha256(h) {
            Some(d) => (
                Some(d),
                "the server's X-Content-SHA256",
                Check::ServerHeader,
            ),
            None => (None, "", Check::Length),
        },
        (Expect::Unknown, None) => (None, "", Check::Length),
    };

    let mut ctx_hash = digest::Context::new(&digest::SHA256);
    let mut got = 0u64;
    // Bytes that came with the head.
    let take = buf.len().min(want as usize);
    if take > 0 {
        ctx_hash.update(&buf[..take]);
        got += take as u64;
        ctx.body_bytes(take as u64);
        buf.drain(..take);
    }
    while got < want {
        let room = (want - got).min(body.len() as u64) as usize;
        let n = match tokio::time::timeout(WAIT.idle, s.read(&mut body[..room])).await {
            Err(_) => return Err(ReqError::Idle),
            Ok(Ok(0)) => return Err(ReqError::Short { got, want }),
            Ok(Ok(n)) => n,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(ReqError::Short { got, want });
            }
            Ok(Err(e)) => {
                return Err(ReqError::Io {
                    what: "reading the body",
                    reason: io_reason(&e),
                });
            }
        };
        ctx_hash.update(&body[..n]);
        got += n as u64;
        ctx.body_bytes(n as u64);
    }
    let digest = finish(ctx_hash);
    if let Some(exp) = expected
        && digest != exp
    {
        return Err(ReqError::Mismatch {
            len: want,
            got: hex(&digest),
            want: hex(&exp),
            from,
        });
    }
    ctx.checked(check);
    Ok(head.keep_alive)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(host_of("127.0.0.1:8443"), Some("127.0.0.1"));
        assert_eq!(host_of("[::1]:443"), Some("::1"));
        assert_eq!(host_of("example.org:443"), Some("example.org"));
        assert_eq!(host_of("example.org"), None);
        assert_eq!(host_of(":443"), None);
        assert_eq!(host_of("a:99999"), None);
    }
}
