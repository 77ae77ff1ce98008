//! The server side: accept, TLS handshake (rustls), then per --mode hand the keys to the
//! kernel and send the body with sendfile(2) or from a user buffer, or let rustls encrypt,
//! or send plain HTTP.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    os::fd::AsRawFd,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, Interest},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{Notify, oneshot, watch},
    task::JoinSet,
};
use tokio_rustls::TlsAcceptor;

use super::{
    Waits,
    args::Mode,
    error::{LoadError, chain, io_reason},
    file::{ServedFile, Sha256, hex},
    http::{self, Method},
    ktls_setup::KernelTls,
    report::{Active, Counters, Progress, ServerReport},
    tls::{self, CertAndKey, Negotiated, TlsChoice},
};

/// How long the server waits: for a silent connection before it closes it, for a
/// handshake, and for running responses to finish once it stops.
const WAIT: Waits = Waits {
    idle: Duration::from_secs(60),
    start: Duration::from_secs(15),
    grace: Duration::from_secs(15),
};

/// Where the served file comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileSource {
    Path(PathBuf),
    /// A generated file of this many bytes (see [`super::file::Pattern`]).
    Generated(u64),
}

/// Everything `run_server` needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub mode: Mode,
    pub listen: SocketAddr,
    pub file: FileSource,
    /// Certificate chain and key (PEM files); None: self-signed for localhost.
    pub cert: Option<(PathBuf, PathBuf)>,
    pub tls: TlsChoice,
    /// Stop after this many responses.
    pub requests: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Test-only: flip the body byte at this offset (buffer modes).
    pub corrupt_byte: Option<u64>,
    /// Test-only: close each connection once its request is read, without answering.
    pub hang_up: bool,
    /// Show the progress line on stderr (if it is a terminal).
    pub progress: bool,
    /// A response that makes no progress for this long drops its connection.
    pub send_timeout: Duration,
    /// Connections served at once; more are closed at accept.
    pub max_connections: usize,
}

impl ServerConfig {
    #[cfg(test)]
    pub fn new(mode: Mode, listen: SocketAddr, file: FileSource) -> ServerConfig {
        ServerConfig {
            mode,
            listen,
            file,
            cert: None,
            tls: TlsChoice::default(),
            requests: None,
            duration: None,
            corrupt_byte: None,
            hang_up: false,
            progress: false,
            send_timeout: WAIT.idle,
            max_connections: 1024,
        }
    }
}

/// Sent once the server listens.
#[derive(Debug, Clone)]
pub struct Ready {
    pub addr: SocketAddr,
    pub pid: u32,
    pub file_size: u64,
    pub sha256: Sha256,
    pub file: PathBuf,
}

/// A connection's failure, reported with the connection.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    #[error("TLS handshake timed out after {} s", WAIT.start.as_secs())]
    HandshakeTimeout,
    #[error("handing the connection to kernel TLS failed: {0}")]
    Ktls(String),
    #[error("{0}")]
    Http(#[from] http::HttpError),
    #[error("{what}: {reason}")]
    Io { what: &'static str, reason: String },
    #[error("the file ended after {0} bytes (was it truncated?)")]
    FileShrank(u64),
    #[error("refused a {0} request")]
    Refused(&'static str),
    #[error("the client read nothing of its response for {0} s")]
    Stalled(u64),
}

impl ConnError {
    /// Is this the client's doing (see [`super::report::Counters::stray`])? Handshake
    /// failures and timeouts, requests that are malformed, refused, cut off or never come,
    /// and responses the client stopped reading.
    fn is_stray(&self) -> bool {
        match self {
            ConnError::Handshake(_)
            | ConnError::HandshakeTimeout
            | ConnError::Refused(_)
            | ConnError::Stalled(_) => true,
            ConnError::Http(h) => !matches!(h, http::HttpError::Io(_)),
            ConnError::Ktls(_) | ConnError::Io { .. } | ConnError::FileShrank(_) => false,
        }
    }
}

fn io_err(what: &'static str) -> impl Fn(io::Error) -> ConnError {
    move |e| ConnError::Io {
        what,
        reason: io_reason(&e),
    }
}

/// How bodies are produced.
enum Body {
    /// sendfile(2) from the open file.
    Sendfile,
    /// write(2) from a user buffer: the file read in 64 KiB pieces per response (never
    /// all of it in memory), with the byte at this offset flipped on purpose (tests).
    Write { corrupt: Option<u64> },
}

/// The request budget of `--requests`.
struct Limit {
    total: u64,
    claimed: AtomicU64,
    done: AtomicU64,
}

struct Shared {
    mode: Mode,
    file: ServedFile,
    sha_hex: String,
    body: Body,
    acceptor: Option<TlsAcceptor>,
    counters: Arc<Counters>,
    limit: Option<Limit>,
    limit_reached: Notify,
    window: Mutex<(Option<Instant>, Option<Instant>)>,
    send_timeout: Duration,
    hang_up: bool,
}

impl Shared {
    /// Takes one request from the budget; false when it is spent.
    fn claim(&self) -> bool {
        match &self.limit {
            None => true,
            Some(l) => l
                .claimed
                .fetch_update(Relaxed, Relaxed, |c| (c < l.total).then_some(c + 1))
                .is_ok(),
        }
    }

    /// Gives a claimed request back: its response failed, another connection may serve it.
    fn unclaim(&self) {
        if let Some(l) = &self.limit {
            let _ = l
                .claimed
                .fetch_update(Relaxed, Relaxed, |c| c.checked_sub(1));
        }
    }

    /// Is this the last request the budget allows (so the connection closes after it)?
    fn budget_spent(&self) -> bool {
        self.limit
            .as_ref()
            .is_some_and(|l| l.claimed.load(Relaxed) >= l.total)
    }

    fn finished_one(&self) {
        self.counters.requests.fetch_add(1, Relaxed);
        if let Ok(mut w) = self.window.lock() {
            w.1 = Some(Instant::now());
        }
        if let Some(l) = &self.limit
            && l.done.fetch_add(1, Relaxed) + 1 >= l.total
        {
            self.limit_reached.notify_one();
        }
    }

    fn started_one(&self) {
        if let Ok(mut w) = self.window.lock() {
            w.0.get_or_insert_with(Instant::now);
        }
    }
}

/// Checks the options that do not depend on the machine.
fn validate(cfg: &ServerConfig) -> Result<(), LoadError> {
    let usage = |m: &str| Err(LoadError::Usage(m.to_string()));
    if !cfg.mode.tls() && !cfg.tls.is_any() {
        return usage("--cipher and --tls need a TLS mode (plain-sendfile sends plain HTTP)");
    }
    if !cfg.mode.tls() && cfg.cert.is_some() {
        return usage("--cert and --key need a TLS mode (plain-sendfile sends plain HTTP)");
    }
    if cfg.corrupt_byte.is_some() && cfg.mode.sendfile() {
        return usage("--corrupt-byte works with --mode ktls-write or userspace-tls only");
    }
    if cfg.requests == Some(0) {
        return usage("--requests must be at least 1");
    }
    Ok(())
}

/// Runs the server until `--requests` are answered, `--duration` ends, or `shutdown`
/// completes. Fails fast (before listening) when the mode cannot work here. `ready` gets
/// the bound address once the server accepts connections.
pub async fn run_server(
    cfg: ServerConfig,
    ready: oneshot::Sender<Ready>,
    shutdown: impl Future<Output = ()>,
) -> Result<ServerReport, LoadError> {
    validate(&cfg)?;

    // Kernel TLS first: on a kernel without it, say so before doing anything else.
    let allowed = if cfg.mode.kernel_tls() {
        let k = KernelTls::probe().await?;
        k.restrict(&cfg.tls)?
    } else {
        tls::allowed_pairs(&cfg.tls)
    };
    let acceptor = if cfg.mode.tls() {
        let cert = match &cfg.cert {
            Some((c, k)) => CertAndKey::from_pem_files(c, k)?,
            None => CertAndKey::self_signed()?,
        };
        let config = tls::server_config(&allowed, cert, cfg.mode.kernel_tls())?;
        Some(TlsAcceptor::from(config))
    } else {
        None
    };

    // Listen before making the file: a busy port is reported without delay.
    let listener = bind(cfg.listen)?;
    let addr = listener.local_addr().map_err(|e| LoadError::Listen {
        addr: cfg.listen.to_string(),
        reason: io_reason(&e),
    })?;

    let file = match &cfg.file {
        FileSource::Path(p) => ServedFile::open(p)?,
        FileSource::Generated(n) => ServedFile::generate(*n)?,
    };
    if let Some(off) = cfg.corrupt_byte
        && off >= file.size
    {
        return Err(LoadError::Usage(format!(
            "--corrupt-byte {off} is past the end of the {}-byte file",
            file.size
        )));
    }
    let body = if cfg.mode.sendfile() {
        Body::Sendfile
    } else {
        Body::Write {
            corrupt: cfg.corrupt_byte,
        }
    };

    let counters = Arc::new(Counters::default());
    let shared = Arc::new(Shared {
        mode: cfg.mode,
        sha_hex: hex(&file.sha256),
        body,
        acceptor,
        counters: counters.clone(),
        limit: cfg.requests.map(|total| Limit {
            total,
            claimed: AtomicU64::new(0),
            done: AtomicU64::new(0),
        }),
        limit_reached: Notify::new(),
        window: Mutex::new((None, None)),
        send_timeout: cfg.send_timeout,
        hang_up: cfg.hang_up,
        file,
    });
    log::info!(
        "serving {} ({} bytes) on {addr}, mode {}",
        shared.file.path.display(),
        shared.file.size,
        cfg.mode
    );
    let _ = ready.send(Ready {
        addr,
        pid: std::process::id(),
        file_size: shared.file.size,
        sha256: shared.file.sha256,
        file: shared.file.path.clone(),
    });

    let progress = Progress::start("server", counters.clone(), cfg.progress);
    let started = Instant::now();
    let deadline = cfg.duration.map(|d| tokio::time::Instant::now() + d);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut next_id = 0u64;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            acc = listener.accept() => match acc {
                // A flood of connections must not grow tasks and descriptors without bound.
                Ok((sock, peer)) if tasks.len() >= cfg.max_connections => {
                    counters.stray(format!(
                        "connection from {peer} closed at once: {} connections are open (--max-connections)",
                        cfg.max_connections
                    ));
                    drop(sock);
                }
                Ok((sock, peer)) => {
                    next_id += 1;
                    let sh = shared.clone();
                    let stop = stop_rx.clone();
                    tasks.spawn(connection(sh, sock, peer, next_id, stop));
                }
                Err(e) => {
                    // EMFILE and friends: note it, breathe, go on.
                    counters.error(format!("accept failed: {}", io_reason(&e)));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(res) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = res
                    && e.is_panic()
                {
                    counters.error(format!("a connection task panicked: {e}"));
                }
            }
            () = &mut shutdown => break,
            () = sleep_until(deadline) => break,
            () = shared.limit_reached.notified() => break,
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(WAIT.grace, async {
        while let Some(res) = tasks.join_next().await {
            if let Err(e) = res
                && e.is_panic()
            {
                counters.error(format!("a connection task panicked: {e}"));
            }
        }
    })
    .await;
    if drained.is_err() {
        counters.error(format!(
            "{} connection(s) still busy {} s after the stop; aborted",
            tasks.len(),
            WAIT.grace.as_secs()
        ));
        tasks.abort_all();
    }
    progress.stop();

    let seconds = match shared.window.lock().map(|w| *w) {
        Ok((Some(a), Some(b))) if b > a => b.duration_since(a).as_secs_f64(),
        _ => started.elapsed().as_secs_f64(),
    };
    Ok(ServerReport {
        role: "server".into(),
        mode: cfg.mode,
        listen: addr.to_string(),
        pid: std::process::id(),
        kernel_tls: cfg.mode.kernel_tls(),
        file: shared.file.path.display().to_string(),
        file_size: shared.file.size,
        file_sha256: shared.sha_hex.clone(),
        generated_file: shared.file.generated,
        tally: counters.tally(seconds),
        cpu: None,
    })
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Binds with SO_REUSEADDR (a restarted server must not wait for TIME_WAIT).
fn bind(addr: SocketAddr) -> Result<TcpListener, LoadError> {
    let fail = |e: io::Error| LoadError::Listen {
        addr: addr.to_string(),
        reason: io_reason(&e),
    };
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(fail)?;
    sock.set_reuseaddr(true).map_err(fail)?;
    sock.bind(addr).map_err(fail)?;
    sock.listen(1024).map_err(fail)
}

/// A server connection in any mode: a byte stream plus the TCP socket under it.
trait ServerStream: AsyncRead + AsyncWrite + Unpin + Send {
    fn tcp(&self) -> &TcpStream;
}

impl ServerStream for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl ServerStream for ktls::KtlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref()
    }
}

impl ServerStream for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

async fn connection(
    sh: Arc<Shared>,
    sock: TcpStream,
    peer: SocketAddr,
    id: u64,
    mut stop: watch::Receiver<bool>,
) {
    let _active = Active::new(&sh.counters);
    if let Err(e) = sock.set_nodelay(true) {
        log::debug!("connection {id}: TCP_NODELAY: {}", io_reason(&e));
    }
    match setup_and_serve(&sh, sock, &mut stop).await {
        Ok(()) => {}
        Err(e) if e.is_stray() => sh
            .counters
            .stray(format!("connection {id} from {peer}: {e}")),
        Err(e) => sh
            .counters
            .error(format!("connection {id} from {peer}: {e}")),
    }
}

async fn setup_and_serve(
    sh: &Shared,
    sock: TcpStream,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), ConnError> {
    let Some(acceptor) = &sh.acceptor else {
        return serve(sh, sock, stop).await;
    };
    if sh.mode.kernel_tls() {
        let accept = acceptor.accept(ktls::CorkStream::new(sock));
        let tls = match handshake(accept, stop).await? {
            Some(t) => t,
            None => return Ok(()),
        };
        let conn = tls.get_ref().1;
        if let Some(n) = Negotiated::of(conn.negotiated_cipher_suite(), conn.protocol_version()) {
            sh.counters.negotiated(n);
        }
        let k = ktls::config_ktls_server(tls)
            .await
            .map_err(|e| ConnError::Ktls(chain(&e)))?;
        serve(sh, k, stop).await
    } else {
        let tls = match handshake(acceptor.accept(sock), stop).await? {
            Some(t) => t,
            None => return Ok(()),
        };
        let conn = tls.get_ref().1;
        if let Some(n) = Negotiated::of(conn.negotiated_cipher_suite(), conn.protocol_version()) {
            sh.counters.negotiated(n);
        }
        serve(sh, tls, stop).await
    }
}

/// Runs a handshake with a timeout; None when the server stops meanwhile.
async fn handshake<T>(
    accept: impl Future<Output = io::Result<T>>,
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<T>, ConnError> {
    tokio::select! {
        r = tokio::time::timeout(WAIT.start, accept) => match r {
            Ok(Ok(t)) => Ok(Some(t)),
            Ok(Err(e)) => Err(ConnError::Handshake(io_reason(&e))),
            Err(_) => Err(ConnError::HandshakeTimeout),
        },
        _ = stop.wait_for(|s| *s) => Ok(None),
    }
}

/// Answers requests until the client closes, asks to close, the budget is spent, or the
/// server stops; then closes gracefully (close_notify for TLS, FIN, drain).
async fn serve<S: ServerStream>(
    sh: &Shared,
    mut s: S,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), ConnError> {
    let mut buf = Vec::with_capacity(4096);
    let mut peer_closed = false;
    let res: Result<(), ConnError> = async {
        loop {
            let head = tokio::select! {
                r = http::read_head(&mut s, &mut buf, "request", Some(WAIT.idle)) => match r {
                    Err(http::HttpError::Idle(_)) => break,
                    r => r?,
                },
                _ = stop.wait_for(|v| *v) => break,
            };
            let Some(n) = head else {
                peer_closed = true;
                break;
            };
            let req = http::parse_request(&buf[..n]);
            buf.drain(..n);
            let req = match req {
                Ok(r) => r,
                Err(e) => {
                    let _ = s.write_all(&http::error_head(400, "Bad Request")).await;
                    return Err(e.into());
                }
            };
            if req.method == Method::Other || req.has_body {
                let _ = s
                    .write_all(&http::error_head(405, "Method Not Allowed"))
                    .await;
                return Err(ConnError::Refused(if req.has_body {
                    "request with a body"
                } else {
                    "non-GET"
                }));
            }
            if sh.hang_up {
                return Err(ConnError::Refused("hung up on purpose (--hang-up)"));
            }
            if !sh.claim() {
                break;
            }
            sh.started_one();
            let keep_alive = req.keep_alive && !sh.budget_spent();
            // The path is the client's text: quoted and escaped before it reaches a terminal.
            log::debug!("{:?} {:?}", req.method, req.path);
            if let Err(e) = respond(sh, &mut s, req.method, keep_alive).await {
                sh.unclaim();
                return Err(e);
            }
            sh.finished_one();
            if !keep_alive {
                break;
            }
        }
        Ok(())
    }
    .await;
    super::close(&mut s, peer_closed || res.is_err()).await;
    res
}

/// One response: head, body (GET), flush. Every write must make progress within the
/// send timeout.
async fn respond<S: ServerStream>(
    sh: &Shared,
    s: &mut S,
    method: Method,
    keep_alive: bool,
) -> Result<(), ConnError> {
    let stall = sh.send_timeout;
    let head = http::ok_head(sh.file.size, &sh.sha_hex, sh.mode.name(), keep_alive);
    within(stall, "writing the response head", s.write_all(&head)).await?;
    sh.counters
        .header_bytes
        .fetch_add(head.len() as u64, Relaxed);
    if method == Method::Get {
        match &sh.body {
            Body::Write { corrupt } => {
                let mut piece = vec![0u8; 1 << 16];
                let mut off = 0u64;
                while off < sh.file.size {
                    let want = (sh.file.size - off).min(piece.len() as u64) as usize;
                    let buf = &mut piece[..want];
                    // The file is in the page cache (hashed at start): a read is a copy.
                    read_exact_at(sh.file.file(), buf, off)?;
                    if let Some(c) = corrupt
                        && (off..off + want as u64).contains(c)
                    {
                        buf[(c - off) as usize] ^= 0x01;
                    }
                    within(stall, "writing the response body", s.write_all(buf)).await?;
                    sh.counters.body_bytes.fetch_add(want as u64, Relaxed);
                    off += want as u64;
                }
            }
            Body::Sendfile => {
                sendfile_all(
                    s.tcp(),
                    sh.file.file(),
                    sh.file.size,
                    &sh.counters.body_bytes,
                    stall,
                )
                .await?;
            }
        }
    }
    within(stall, "flushing the response", s.flush()).await
}

/// `buf.len()` bytes of `file` from `offset`; a file that shrank is an error.
fn read_exact_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> Result<(), ConnError> {
    use std::os::unix::fs::FileExt as _;
    file.read_exact_at(buf, offset).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ConnError::FileShrank(offset)
        } else {
            io_err("reading the file")(e)
        }
    })
}

/// `io` unless it makes no progress for `stall`.
async fn within<T>(
    stall: Duration,
    what: &'static str,
    io: impl Future<Output = io::Result<T>>,
) -> Result<T, ConnError> {
    match tokio::time::timeout(stall, io).await {
        Ok(r) => r.map_err(io_err(what)),
        Err(_) => Err(ConnError::Stalled(stall.as_secs())),
    }
}

/// sendfile(2) of `len` bytes from offset 0 of `file` to the (non-blocking) socket: on
/// EAGAIN wait until it is writable again. Adds every chunk sent to `sent`.
async fn sendfile_all(
    tcp: &TcpStream,
    file: &std::fs::File,
    len: u64,
    sent: &AtomicU64,
    stall: Duration,
) -> Result<(), ConnError> {
    let mut offset: libc::off_t = 0;
    let out_fd = tcp.as_raw_fd();
    let in_fd = file.as_raw_fd();
    while (offset as u64) < len {
        // The kernel caps one call at about 2 GiB anyway.
        let count = (len - offset as u64).min(1 << 30) as usize;
        let res = tcp.try_io(Interest::WRITABLE, || {
            // SAFETY: both descriptors stay open for the call (borrowed from live objects),
            // and `offset` is a valid off_t the kernel updates by the bytes sent.
            let n = unsafe { libc::sendfile(out_fd, in_fd, &mut offset, count) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as u64)
            }
        });
        match res {
            Ok(0) => return Err(ConnError::FileShrank(offset as u64)),
            Ok(n) => {
                sent.fetch_add(n, Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                within(stall, "waiting for the socket", tcp.writable()).await?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err("sendfile")(e)),
        }
    }
    Ok(())
}
