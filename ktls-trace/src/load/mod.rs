//! `ktls-trace load`: a workload generator. An HTTPS (or plain HTTP) server sends one file
//! through one of four transmit paths ([`Mode`]), a client fetches it and checks every
//! byte, so the paths can be compared and a tracer can tell them apart.
//!
//! Library use (what `ktls-trace verify` builds on):
//! - [`run_server`] listens, tells its address through a oneshot ([`Ready`]), serves until
//!   its request budget, duration or shutdown future ends, returns a [`ServerReport`];
//! - [`run_client`] loads a server and returns a [`ClientReport`] (with `verified`).
//!
//! One module per concern: [`args`] (command line), [`server`], [`client`], [`file`] (the
//! served file), [`tls`] (rustls configurations), [`ktls_setup`] (kernel TLS probe),
//! [`http`], [`report`]. docs/load.md describes the command and its output.

pub mod args;
pub mod client;
pub mod error;
pub mod file;
pub mod http;
pub mod ktls_setup;
pub mod report;
pub mod server;
pub mod tls;

use std::{future::Future, io::Write as _, net::SocketAddr, process::ExitCode, time::Duration};

use anyhow::Context as _;
use tokio::sync::{oneshot, watch};

pub use args::{LoadArgs, Mode};
pub use client::{ClientConfig, Expect, Limit, run_client};
pub use error::LoadError;
pub use report::{ClientReport, CombinedReport, ServerReport};
pub use server::{FileSource, Ready, ServerConfig, run_server};
pub use tls::TlsChoice;

use report::CpuSample;

/// Graceful close: shutdown (close_notify for TLS, then FIN); if the peer has not closed
/// yet, read what it still sends until it does (so close() does not reset the connection
/// under data the peer has not read yet). Errors here are of no interest.
async fn close<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    peer_closed: bool,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let _ = tokio::time::timeout(Duration::from_secs(2), s.shutdown()).await;
    if peer_closed {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let mut sink = [0u8; 4096];
        loop {
            match s.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// How long one side of the load waits for the other (each side has its own).
#[derive(Debug, Clone, Copy)]
struct Waits {
    /// Silence in the middle of a request or response.
    idle: Duration,
    /// Connecting (client) or the handshake (server).
    start: Duration,
    /// Running requests or responses, once told to stop.
    grace: Duration,
}

/// The line (on stderr) with which `load` says its client received the first body bytes:
/// `top --load` starts measuring once it has seen it.
pub const SERVING: &str = "ktls-trace: load: serving";

/// The ready line `load --server-only` prints on stdout once it listens.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReadyLine {
    /// Always "ready".
    pub event: String,
    pub listen: String,
    pub pid: u32,
    pub mode: Mode,
    pub file: String,
    pub file_size: u64,
    pub file_sha256: String,
}

/// A library error as the binary wants it: usage mistakes exit with 2.
fn to_anyhow(e: LoadError) -> anyhow::Error {
    if e.is_usage() {
        anyhow::Error::new(crate::procs::UsageError::Other(e.to_string()))
    } else {
        anyhow::Error::new(e)
    }
}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(crate::procs::UsageError::Other(msg.into()))
}

/// Resolves when SIGINT or SIGTERM arrives.
fn signals() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    crate::signals::stop_signals().context("installing the SIGINT/SIGTERM handlers")
}

fn duration_arg(d: Option<f64>) -> anyhow::Result<Option<Duration>> {
    match d {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s < 1e9 => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(usage(format!(
            "--duration must be a positive number of seconds (got {s})"
        ))),
    }
}

fn tls_choice(args: &LoadArgs) -> TlsChoice {
    TlsChoice {
        version: args.tls,
        cipher: args.cipher,
    }
}

fn file_source(args: &LoadArgs) -> FileSource {
    match &args.file {
        Some(p) => FileSource::Path(p.clone()),
        None => FileSource::Generated(args.file_size.unwrap_or(args::DEFAULT_FILE_SIZE)),
    }
}

fn client_limit(args: &LoadArgs) -> anyhow::Result<Limit> {
    Ok(match (args.requests, duration_arg(args.duration)?) {
        (Some(n), _) => Limit::Requests(n),
        (None, Some(d)) => Limit::Duration(d),
        (None, None) => Limit::Duration(Duration::from_secs_f64(args::DEFAULT_DURATION_SECS)),
    })
}

fn server_config(args: &LoadArgs, listen: SocketAddr) -> anyhow::Result<ServerConfig> {
    Ok(ServerConfig {
        mode: args.mode,
        listen,
        file: file_source(args),
        cert: args.cert.clone().zip(args.key.clone()),
        tls: tls_choice(args),
        requests: None,
        duration: None,
        corrupt_byte: args.corrupt_byte,
        hang_up: args.hang_up,
        progress: false,
        send_timeout: Duration::from_secs(args.send_timeout),
        max_connections: args.max_connections as usize,
    })
}

/// Prints to stdout; a closed stdout is not worth an error.
fn print_out(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

fn json_line<T: serde::Serialize>(v: &T) -> anyhow::Result<String> {
    Ok(format!("{}\n", serde_json::to_string(v)?))
}

/// Exit status from the error counts: the report is already printed.
fn outcome(errors: u64, first: Option<&String>) -> anyhow::Result<ExitCode> {
    if errors == 0 {
        return Ok(ExitCode::SUCCESS);
    }
    Err(anyhow::anyhow!(
        "{errors} error(s) during the load; first: {}",
        first.map(String::as_str).unwrap_or("(not recorded)")
    ))
}

/// The `ktls-trace load` command.
pub async fn run(args: LoadArgs) -> anyhow::Result<ExitCode> {
    if args.list_modes {
        use clap::ValueEnum as _;
        let names: Vec<&str> = Mode::value_variants().iter().map(|m| m.name()).collect();
        print_out(&format!("{}\n", names.join("\n")));
        return Ok(ExitCode::SUCCESS);
    }
    if args.connections == 0 {
        return Err(usage("--connections must be at least 1"));
    }
    if args.requests == Some(0) {
        return Err(usage("--requests must be at least 1"));
    }
    duration_arg(args.duration)?;
    if args.server_only {
        if args.ca.is_some() || args.server_name.is_some() || args.requests_per_connection.is_some()
        {
            return Err(usage(
                "--ca, --server-name and --requests-per-connection are client options (not for --server-only)",
            ));
        }
        run_server_only(args).await
    } else if args.client_only {
        if args.corrupt_byte.is_some() || args.hang_up {
            return Err(usage(
                "--corrupt-byte and --hang-up are server options (not for --client-only)",
            ));
        }
        if args.cert.is_some() {
            return Err(usage(
                "--cert and --key are server options (not for --client-only)",
            ));
        }
        run_client_only(args).await
    } else {
        run_both(args).await
    }
}

async fn run_server_only(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let listen = match args.listen {
        Some(a) => a,
        None => args::DEFAULT_SERVER_LISTEN
            .parse()
            .context("default listen address")?,
    };
    let mut cfg = server_config(&args, listen)?;
    cfg.requests = args.requests;
    cfg.duration = duration_arg(args.duration)?;
    cfg.progress = true;
    let mode = cfg.mode;
    let stop = signals()?;
    let (ready_tx, ready_rx) = oneshot::channel::<Ready>();
    let cpu_at_ready = std::sync::Mutex::new(None);
    let announce = async {
        if let Ok(r) = ready_rx.await {
            if let Ok(mut c) = cpu_at_ready.lock() {
                *c = Some(CpuSample::process());
            }
            let line = ReadyLine {
                event: "ready".into(),
                listen: r.addr.to_string(),
                pid: r.pid,
                mode,
                file: r.file.display().to_string(),
                file_size: r.file_size,
                file_sha256: file::hex(&r.sha256),
            };
            match json_line(&line) {
                Ok(l) => print_out(&l),
                Err(e) => log::warn!("ready line: {e}"),
            }
            eprintln!(
                "ktls-trace: serving {} ({}) on {}://{}/ in mode {mode}; {}",
                r.file.display(),
                report::human_bytes(r.file_size as f64),
                if mode.tls() { "https" } else { "http" },
                r.addr,
                match (args.requests, args.duration) {
                    (Some(n), _) => format!("stopping after {n} request(s)"),
                    (None, Some(d)) => format!("stopping after {d} s"),
                    (None, None) => "Ctrl-C to stop".to_string(),
                }
            );
        }
    };
    let (result, ()) = tokio::join!(run_server(cfg, ready_tx, stop), announce);
    let mut rep = result.map_err(to_anyhow)?;
    let sample = cpu_at_ready.lock().ok().and_then(|c| *c);
    rep.cpu = sample.map(|s| s.usage_since(rep.tally.body_bytes));
    if args.json {
        print_out(&json_line(&rep)?);
    } else {
        print_out(&report::render_server(&rep));
    }
    outcome(rep.tally.errors, rep.tally.error_messages.first())
}

fn expectation(args: &LoadArgs) -> anyhow::Result<Expect> {
    if let Some(p) = &args.file {
        let (_, size, sha256) = file::hash_file(p, "--file").map_err(to_anyhow)?;
        return Ok(Expect::Content { size, sha256 });
    }
    if let Some(size) = args.file_size {
        return Ok(Expect::Content {
            size,
            sha256: file::pattern_sha256(size),
        });
    }
    Ok(Expect::Unknown)
}

async fn run_client_only(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let Some(connect) = args.connect.clone() else {
        return Err(usage("--client-only needs --connect HOST:PORT"));
    };
    let cfg = ClientConfig {
        connect,
        server_name: args.server_name.clone(),
        path: args.path.clone(),
        tls: args.mode.tls().then(|| tls_choice(&args)),
        ca: args.ca.clone(),
        connections: args.connections,
        per_connection: args.requests_per_connection,
        limit: client_limit(&args)?,
        expect: expectation(&args)?,
        progress: true,
        serving: None,
    };
    if cfg.tls.is_none() && (args.tls.is_some() || args.cipher.is_some()) {
        return Err(usage(
            "--cipher and --tls need a TLS mode (plain-sendfile is plain HTTP)",
        ));
    }
    let stop = signals()?;
    let cpu = CpuSample::process();
    let mut rep = run_client(cfg, stop).await.map_err(to_anyhow)?;
    rep.cpu = Some(cpu.usage_since(rep.tally.body_bytes));
    if args.json {
        print_out(&json_line(&rep)?);
    } else {
        print_out(&report::render_client(&rep));
    }
    outcome(rep.tally.errors, rep.tally.error_messages.first())
}

/// Server (on its own thread, so its CPU time can be measured alone) and client in one
/// process.
async fn run_both(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let listen = match args.listen {
        Some(a) => a,
        None => SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let server_cfg = server_config(&args, listen)?;
    let limit = client_limit(&args)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let sig = signals()?;
    let sig_tx = stop_tx.clone();
    let sig_task = tokio::spawn(async move {
        sig.await;
        let _ = sig_tx.send(true);
    });

    let (ready_tx, ready_rx) = oneshot::channel::<Ready>();
    let (done_tx, done_rx) = oneshot::channel::<Result<ServerReport, LoadError>>();
    let server_stop = stop_rx.clone();
    std::thread::Builder::new()
        .name("ktls-load-srv".into())
        .spawn(move || server_thread(server_cfg, ready_tx, done_tx, server_stop))
        .context("starting the server thread")?;

    let ready = match ready_rx.await {
        Ok(r) => r,
        Err(_) => {
            sig_task.abort();
            return match done_rx.await {
                Ok(Err(e)) => Err(to_anyhow(e)),
                Ok(Ok(_)) => Err(anyhow::anyhow!("the server stopped before listening")),
                Err(_) => Err(anyhow::anyhow!("the server thread ended unexpectedly")),
            };
        }
    };
    let process_cpu = CpuSample::process();
    let client_cfg = ClientConfig {
        connect: ready.addr.to_string(),
        server_name: Some("localhost".into()),
        path: args.path.clone(),
        tls: args.mode.tls().then(|| tls_choice(&args)),
        ca: None,
        connections: args.connections,
        per_connection: args.requests_per_connection,
        limit,
        expect: Expect::Content {
            size: ready.file_size,
            sha256: ready.sha256,
        },
        progress: true,
        serving: None,
    };
    let serving = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut client_cfg = client_cfg;
    client_cfg.serving = Some(serving.clone());
    let (mode, addr) = (args.mode, ready.addr);
    let announce = tokio::spawn(async move {
        serving.notified().await;
        eprintln!("{SERVING} {mode} on {addr}");
    });
    let mut client_stop = stop_rx.clone();
    let client = run_client(client_cfg, async move {
        let _ = client_stop.wait_for(|s| *s).await;
    })
    .await;
    let _ = stop_tx.send(true);
    sig_task.abort();
    announce.abort();
    let server = done_rx
        .await
        .map_err(|_| anyhow::anyhow!("the server thread ended unexpectedly"))?
        .map_err(to_anyhow)?;
    let client = client.map_err(to_anyhow)?;

    let rep = CombinedReport {
        role: "both".into(),
        mode: args.mode,
        requests: client.tally.requests,
        body_bytes: client.tally.body_bytes,
        throughput_bytes_per_sec: client.tally.throughput_bytes_per_sec,
        errors: server.tally.errors + client.tally.errors,
        verified: client.verified && server.tally.errors == 0,
        cpu: Some(process_cpu.usage_since(client.tally.body_bytes)),
        server,
        client,
    };
    if args.json {
        print_out(&json_line(&rep)?);
    } else {
        print_out(&report::render_combined(&rep));
    }
    // The client's findings first: they say what went wrong with the data.
    let first = rep
        .client
        .tally
        .error_messages
        .first()
        .map(|m| format!("client: {m}"))
        .or_else(|| {
            rep.server
                .tally
                .error_messages
                .first()
                .map(|m| format!("server: {m}"))
        });
    outcome(rep.errors, first.as_ref())
}

/// Runs the server on a current-thread runtime of its own; its CPU time (RUSAGE_THREAD) is
/// counted from the moment it listens.
fn server_thread(
    cfg: ServerConfig,
    ready_tx: oneshot::Sender<Ready>,
    done_tx: oneshot::Sender<Result<ServerReport, LoadError>>,
    mut stop: watch::Receiver<bool>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = done_tx.send(Err(LoadError::Runtime(format!(
                "cannot start the server runtime: {}",
                error::io_reason(&e)
            ))));
            return;
        }
    };
    let result = rt.block_on(async move {
        let (inner_tx, inner_rx) = oneshot::channel::<Ready>();
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let server = run_server(cfg, inner_tx, shutdown);
        tokio::pin!(server);
        let cpu = tokio::select! {
            r = &mut server => return r,
            ready = inner_rx => match ready {
                Ok(r) => {
                    let cpu = CpuSample::thread();
                    let _ = ready_tx.send(r);
                    Some(cpu)
                }
                Err(_) => None,
            },
        };
        let mut rep = server.await?;
        rep.cpu = cpu.map(|c| c.usage_since(rep.tally.body_bytes));
        Ok(rep)
    });
    let _ = done_tx.send(result);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{Cipher, TlsVersion};
    use report::ClientReport;

    /// The library API as `verify` uses it: server and client in-process, reports that
    /// survive a JSON round trip.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn library_server_and_client() {
        let mut cfg = ServerConfig::new(
            Mode::UserspaceTls,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            FileSource::Generated(300_000),
        );
        cfg.requests = Some(3);
        let (ready_tx, ready_rx) = oneshot::channel();
        let server = tokio::spawn(run_server(cfg, ready_tx, std::future::pending()));
        let ready = ready_rx.await.unwrap();
        let mut ccfg = ClientConfig::new(
            ready.addr.to_string(),
            Some(TlsChoice {
                version: Some(TlsVersion::Tls12),
                cipher: Some(Cipher::Aes128Gcm),
            }),
            Limit::Requests(3),
        );
        ccfg.expect = Expect::Content {
            size: ready.file_size,
            sha256: file::pattern_sha256(300_000),
        };
        let client = run_client(ccfg, std::future::pending()).await.unwrap();
        assert!(client.verified, "{client:?}");
        assert_eq!(
            (client.tally.requests, client.tally.body_bytes),
            (3, 900_000)
        );
        assert_eq!(client.tally.tls_version, Some(TlsVersion::Tls12));
        assert_eq!(client.tally.cipher, Some(Cipher::Aes128Gcm));
        let rep = server.await.unwrap().unwrap();
        assert_eq!(
            (rep.tally.requests, rep.tally.body_bytes, rep.tally.errors),
            (3, 900_000, 0)
        );
        assert_eq!(rep.tally.header_bytes, client.tally.header_bytes);
        assert!(!std::path::Path::new(&rep.file).exists());

        // (Floats may lose their last bit in JSON: compare the rest.)
        let back: ServerReport =
            serde_json::from_str(&serde_json::to_string(&rep).unwrap()).unwrap();
        assert_eq!(
            (
                back.mode,
                back.tally.requests,
                back.tally.body_bytes,
                back.tally.header_bytes
            ),
            (
                rep.mode,
                rep.tally.requests,
                rep.tally.body_bytes,
                rep.tally.header_bytes
            )
        );
        assert_eq!(back.tally.negotiated, rep.tally.negotiated);
        let back: ClientReport =
            serde_json::from_str(&serde_json::to_string(&client).unwrap()).unwrap();
        assert_eq!(
            (back.verified, back.check, back.tally.requests),
            (client.verified, client.check.clone(), client.tally.requests)
        );
        let line = ReadyLine {
            event: "ready".into(),
            listen: ready.addr.to_string(),
            pid: ready.pid,
            mode: Mode::KtlsSendfile,
            file: "f".into(),
            file_size: 1,
            file_sha256: "00".into(),
        };
        let text = serde_json::to_string(&line).unwrap();
        assert!(text.contains("\"mode\":\"ktls-sendfile\""), "{text}");
        assert_eq!(serde_json::from_str::<ReadyLine>(&text).unwrap(), line);
    }
}
