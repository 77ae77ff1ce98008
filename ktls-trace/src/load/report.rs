//! Counters shared by the connection tasks, the progress line, and the final reports
//! (text and JSON; field meanings in docs/load.md).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{IsTerminal as _, Write as _},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{
    args::{Cipher, Mode, TlsVersion},
    tls::Negotiated,
};

/// At most this many error messages are kept (the count is always exact).
const MAX_ERROR_MESSAGES: usize = 20;

/// Live numbers of one side, updated by its connection tasks.
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub body_bytes: AtomicU64,
    pub header_bytes: AtomicU64,
    pub connections: AtomicU64,
    pub active: AtomicU64,
    pub errors: AtomicU64,
    /// Connections that ended before a valid request (see [`Counters::stray`]).
    pub stray: AtomicU64,
    messages: Mutex<Vec<String>>,
    negotiated: Mutex<BTreeMap<Negotiated, u64>>,
}

impl Counters {
    pub fn error(&self, msg: String) {
        log::info!("{msg}");
        self.errors.fetch_add(1, Relaxed);
        if let Ok(mut m) = self.messages.lock()
            && m.len() < MAX_ERROR_MESSAGES
        {
            m.push(msg);
        }
    }

    /// A connection that never made a valid request: a port scan, a health check that
    /// connects and closes, a failed handshake, a malformed or idle request. The client's
    /// doing, not the run's: counted apart, never an error (a `--server-only` server on a
    /// public port sees them all the time).
    pub fn stray(&self, msg: String) {
        log::info!("{msg}");
        self.stray.fetch_add(1, Relaxed);
    }

    pub fn negotiated(&self, n: Negotiated) {
        if let Ok(mut m) = self.negotiated.lock() {
            *m.entry(n).or_default() += 1;
        }
    }

    pub fn messages(&self) -> Vec<String> {
        self.messages.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Distinct negotiations, most frequent first.
    pub fn negotiations(&self) -> Vec<NegotiatedCount> {
        let mut v: Vec<NegotiatedCount> = self
            .negotiated
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(n, c)| NegotiatedCount {
                        negotiated: n.clone(),
                        connections: *c,
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by_key(|n| std::cmp::Reverse(n.connections));
        v
    }
}

/// An RAII guard counting a connection as active.
pub struct Active<'a>(&'a Counters);

impl<'a> Active<'a> {
    pub fn new(c: &'a Counters) -> Active<'a> {
        c.connections.fetch_add(1, Relaxed);
        c.active.fetch_add(1, Relaxed);
        Active(c)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NegotiatedCount {
    #[serde(flatten)]
    pub negotiated: Negotiated,
    pub connections: u64,
}

/// CPU time spent, from getrusage(2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuUsage {
    /// "process" (RUSAGE_SELF) or "server-thread" (RUSAGE_THREAD of the thread that ran
    /// the server in the combined mode).
    pub scope: String,
    pub user_s: f64,
    pub sys_s: f64,
    /// (user + sys) seconds per GiB of body bytes; null when no bytes moved.
    pub s_per_gib: Option<f64>,
}

/// A getrusage(2) sample.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    scope: &'static str,
    user: Duration,
    sys: Duration,
}

impl CpuSample {
    /// The whole process.
    pub fn process() -> CpuSample {
        Self::take(libc::RUSAGE_SELF, "process")
    }

    /// The calling thread only.
    pub fn thread() -> CpuSample {
        Self::take(libc::RUSAGE_THREAD, "server-thread")
    }

    fn take(who: libc::c_int, scope: &'static str) -> CpuSample {
        // SAFETY: rusage is plain old data; all-zero is a valid value.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `ru` is a valid, writable rusage; `who` is RUSAGE_SELF or RUSAGE_THREAD.
        let rc = unsafe { libc::getrusage(who, &mut ru) };
        let tv = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec.max(0) as u64)
                + Duration::from_micros(t.tv_usec.max(0) as u64)
        };
        if rc != 0 {
            return CpuSample {
                scope,
                user: Duration::ZERO,
                sys: Duration::ZERO,
            };
        }
        CpuSample {
            scope,
            user: tv(ru.ru_utime),
            sys: tv(ru.ru_stime),
        }
    }

    /// CPU used since `self`, per GiB of `bytes`.
    pub fn usage_since(&self, bytes: u64) -> CpuUsage {
        let now = Self::take(
            if self.scope == "process" {
                libc::RUSAGE_SELF
            } else {
                libc::RUSAGE_THREAD
            },
            self.scope,
        );
        let user_s = now.user.saturating_sub(self.user).as_secs_f64();
        let sys_s = now.sys.saturating_sub(self.sys).as_secs_f64();
        let gib = bytes as f64 / (1u64 << 30) as f64;
        CpuUsage {
            scope: self.scope.to_string(),
            user_s,
            sys_s,
            s_per_gib: (bytes > 0).then(|| (user_s + sys_s) / gib),
        }
    }
}

fn rate(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 { bytes as f64 / secs } else { 0.0 }
}

/// What both sides count the same way (flattened into each report's JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    /// TLS version of the most common negotiation ("1.2"/"1.3"); null for plain-sendfile
    /// or when no handshake completed.
    pub tls_version: Option<TlsVersion>,
    /// Cipher of the most common negotiation (aes-128-gcm, aes-256-gcm, chacha20-poly1305).
    pub cipher: Option<Cipher>,
    pub cipher_suite: Option<String>,
    /// Every distinct negotiation with its number of connections.
    pub negotiated: Vec<NegotiatedCount>,
    /// Responses completely sent (server) or received and checked (client).
    pub requests: u64,
    /// File bytes in response bodies (plaintext: before TLS, or decrypted).
    pub body_bytes: u64,
    /// HTTP response-head bytes (plaintext).
    pub header_bytes: u64,
    /// Connections accepted (server) or opened (client).
    pub connections: u64,
    pub errors: u64,
    pub error_messages: Vec<String>,
    /// Connections that ended before a valid request (server; not errors).
    #[serde(default)]
    pub stray_connections: u64,
    pub seconds: f64,
    pub throughput_bytes_per_sec: f64,
}

impl Counters {
    /// The counts now, over `seconds`.
    pub fn tally(&self, seconds: f64) -> Tally {
        let negotiated = self.negotiations();
        let (tls_version, cipher, cipher_suite) = match negotiated.first() {
            Some(n) => (
                Some(n.negotiated.tls_version),
                Some(n.negotiated.cipher),
                Some(n.negotiated.cipher_suite.clone()),
            ),
            None => (None, None, None),
        };
        let body_bytes = self.body_bytes.load(Relaxed);
        Tally {
            tls_version,
            cipher,
            cipher_suite,
            negotiated,
            requests: self.requests.load(Relaxed),
            body_bytes,
            header_bytes: self.header_bytes.load(Relaxed),
            connections: self.connections.load(Relaxed),
            errors: self.errors.load(Relaxed),
            error_messages: self.messages(),
            stray_connections: self.stray.load(Relaxed),
            seconds,
            throughput_bytes_per_sec: rate(body_bytes, seconds),
        }
    }
}

/// What the server did. Printed by `load --server-only --json`; parse it back with serde.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerReport {
    /// Always "server".
    pub role: String,
    pub mode: Mode,
    pub listen: String,
    pub pid: u32,
    /// Connections were handed to kernel TLS (the ktls-* modes).
    pub kernel_tls: bool,
    pub file: String,
    pub file_size: u64,
    pub file_sha256: String,
    pub generated_file: bool,
    #[serde(flatten)]
    pub tally: Tally,
    pub cpu: Option<CpuUsage>,
}

/// What the client did. Printed by `load --client-only --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientReport {
    /// Always "client".
    pub role: String,
    pub connect: String,
    pub path: String,
    pub tls: bool,
    /// How bodies were checked: "sha256" (against --file, the generated pattern, or the
    /// served file), "sha256-server-header" (the server's X-Content-SHA256), "length"
    /// (Content-Length only).
    pub check: String,
    /// At least one response, no errors, and every body matched by SHA-256.
    pub verified: bool,
    #[serde(flatten)]
    pub tally: Tally,
    pub cpu: Option<CpuUsage>,
}

/// Both sides of the default mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CombinedReport {
    /// Always "both".
    pub role: String,
    pub mode: Mode,
    pub requests: u64,
    pub body_bytes: u64,
    pub throughput_bytes_per_sec: f64,
    pub errors: u64,
    pub verified: bool,
    pub server: ServerReport,
    pub client: ClientReport,
    /// CPU of the whole process (server and client).
    pub cpu: Option<CpuUsage>,
}

/// "4.0 MiB", "812 B".
pub fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} {}", UNITS[0])
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

fn cpu_line(label: &str, cpu: &Option<CpuUsage>, out: &mut String) {
    if let Some(c) = cpu {
        let per = c
            .s_per_gib
            .map(|p| format!(" = {p:.2} s per GiB"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {label:<13} user {:.2} s, sys {:.2} s{per}",
            c.user_s, c.sys_s
        );
    }
}

fn tls_words(version: &Option<TlsVersion>, suite: &Option<String>) -> String {
    match (version, suite) {
        (Some(v), Some(s)) => format!("TLS {v} {s}"),
        _ => "no TLS".to_string(),
    }
}

fn errors_lines(count: u64, msgs: &[String], out: &mut String) {
    let _ = writeln!(out, "  {:<13} {count}", "errors");
    for m in msgs {
        let _ = writeln!(out, "    {m}");
    }
    if count as usize > msgs.len() {
        let _ = writeln!(out, "    ... {} more", count as usize - msgs.len());
    }
}

/// "file /tmp/x (4.0 MiB, generated)".
fn file_words(r: &ServerReport) -> String {
    format!(
        "file {} ({}{})",
        r.file,
        human_bytes(r.file_size as f64),
        if r.generated_file { ", generated" } else { "" }
    )
}

fn requests_line(out: &mut String, requests: u64, connections: u64, seconds: f64) {
    let _ = writeln!(
        out,
        "  {:<13} {requests} on {connections} connection(s) in {seconds:.1} s",
        "requests"
    );
}

fn throughput_line(out: &mut String, bytes_per_sec: f64) {
    let _ = writeln!(
        out,
        "  {:<13} {}/s",
        "throughput",
        human_bytes(bytes_per_sec)
    );
}

pub fn render_server(r: &ServerReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ktls-trace load (server): mode {}, {}, {}",
        r.mode,
        tls_words(&r.tally.tls_version, &r.tally.cipher_suite),
        file_words(r)
    );
    tally_lines(&mut out, &r.tally, "sent");
    cpu_line("CPU", &r.cpu, &mut out);
    out
}

/// Requests, bytes, throughput and errors, as both sides count them.
fn tally_lines(out: &mut String, t: &Tally, verb: &str) {
    requests_line(out, t.requests, t.connections, t.seconds);
    let _ = writeln!(
        out,
        "  {:<13} {} body ({} B) + {} B headers",
        verb,
        human_bytes(t.body_bytes as f64),
        t.body_bytes,
        t.header_bytes
    );
    throughput_line(out, t.throughput_bytes_per_sec);
    errors_lines(t.errors, &t.error_messages, out);
    if t.stray_connections > 0 {
        let _ = writeln!(
            out,
            "  {:<13} {} connections ended before a valid request (not errors)",
            "stray", t.stray_connections
        );
    }
}

fn verified_words(r: &ClientReport) -> String {
    let how = match r.check.as_str() {
        "sha256" => "SHA-256 of every body against the expected file",
        "sha256-server-header" => "SHA-256 of every body against the server's X-Content-SHA256",
        _ => "lengths only: no expected content known (give --file)",
    };
    if r.verified {
        format!("yes ({how})")
    } else if r.tally.errors > 0 {
        "no (see the errors)".to_string()
    } else if r.tally.requests == 0 {
        "no (no complete response)".to_string()
    } else {
        format!("no ({how})")
    }
}

pub fn render_client(r: &ClientReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ktls-trace load (client): {}{}, {}",
        r.connect,
        r.path,
        tls_words(&r.tally.tls_version, &r.tally.cipher_suite)
    );
    tally_lines(&mut out, &r.tally, "received");
    let _ = writeln!(out, "  {:<13} {}", "verified", verified_words(r));
    cpu_line("CPU", &r.cpu, &mut out);
    out
}

pub fn render_combined(r: &CombinedReport) -> String {
    let s = &r.server;
    let c = &r.client;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ktls-trace load: mode {}, {}, {}",
        r.mode,
        tls_words(&s.tally.tls_version, &s.tally.cipher_suite),
        file_words(s)
    );
    requests_line(
        &mut out,
        c.tally.requests,
        c.tally.connections,
        c.tally.seconds,
    );
    let _ = writeln!(
        out,
        "  {:<13} {} body ({} B) + {} B headers sent; {} B body received",
        "bytes",
        human_bytes(s.tally.body_bytes as f64),
        s.tally.body_bytes,
        s.tally.header_bytes,
        c.tally.body_bytes
    );
    throughput_line(&mut out, r.throughput_bytes_per_sec);
    let mut msgs: Vec<String> = s
        .tally
        .error_messages
        .iter()
        .map(|m| format!("server: {m}"))
        .collect();
    msgs.extend(
        c.tally
            .error_messages
            .iter()
            .map(|m| format!("client: {m}")),
    );
    errors_lines(r.errors, &msgs, &mut out);
    let _ = writeln!(out, "  {:<13} {}", "verified", verified_words(c));
    cpu_line("server CPU", &s.cpu, &mut out);
    cpu_line("client CPU", &c.cpu, &mut out);
    cpu_line("process CPU", &r.cpu, &mut out);
    out
}

/// The progress line on stderr (only when stderr is a terminal), once a second.
pub struct Progress {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    pub fn start(label: &'static str, counters: Arc<Counters>, enabled: bool) -> Progress {
        if !enabled || !std::io::stderr().is_terminal() {
            return Progress { task: None };
        }
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut last = (Instant::now(), 0u64);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let bytes = counters.body_bytes.load(Relaxed);
                let now = Instant::now();
                let r = rate(
                    bytes.saturating_sub(last.1),
                    now.duration_since(last.0).as_secs_f64(),
                );
                last = (now, bytes);
                let line = format!(
                    "\r\x1b[2K{label} {:>5.0} s  {:>10}/s  {} requests  {} connections active  {} errors",
                    start.elapsed().as_secs_f64(),
                    human_bytes(r),
                    counters.requests.load(Relaxed),
                    counters.active.load(Relaxed),
                    counters.errors.load(Relaxed),
                );
                let mut err = std::io::stderr().lock();
                let _ = err.write_all(line.as_bytes()).and_then(|()| err.flush());
            }
        });
        Progress { task: Some(task) }
    }

    pub fn stop(self) {
        if let Some(t) = self.task {
            t.abort();
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(b"\r\x1b[2K").and_then(|()| err.flush());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(812.0), "812 B");
        assert_eq!(human_bytes(4.0 * 1024.0 * 1024.0), "4.0 MiB");
    }

    #[test]
    fn cpu_is_measured() {
        let s = CpuSample::process();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let u = s.usage_since(1 << 30);
        assert!(u.user_s >= 0.0 && u.sys_s >= 0.0);
        assert_eq!(u.scope, "process");
        assert!(u.s_per_gib.is_some());
        assert_eq!(CpuSample::thread().usage_since(0).s_per_gib, None);
    }

    #[test]
    fn errors_are_capped_but_counted() {
        let c = Counters::default();
        for i in 0..30 {
            c.error(format!("e{i}"));
        }
        assert_eq!(c.errors.load(Relaxed), 30);
        assert_eq!(c.messages().len(), MAX_ERROR_MESSAGES);
    }
}
