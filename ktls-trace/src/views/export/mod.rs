//! `ktls-trace export`: the session's totals as Prometheus metrics, served over HTTP for
//! weeks on end. Data flows one way: the session's per-interval aggregates -> [`metrics`]
//! (pure: cumulative totals, the cardinality cap, encoding) -> an immutable snapshot that
//! [`http`] serves; a scrape never waits on tracing, tracing never waits on a scrape.

mod http;
pub mod metrics;

use std::{net::SocketAddr, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use tokio::sync::watch;

use crate::{
    cli::FilterArgs,
    kernel,
    procs::{self, UsageError},
    session::{Session, SessionOptions, Update},
    views::{
        top::{AGGREGATE_RING_BYTES, check_interval},
        trace,
    },
};
use metrics::{ProbeState, State, Totals};

/// Serve Prometheus metrics (`/metrics`) about the kernel TLS transmit path: payload bytes
/// per path and process, ciphertext, records, latency histograms, drops, probe states and
/// the kernel's TLS counters. Runs until SIGTERM or Ctrl-C. Metrics: docs/export.md.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub filter: FilterArgs,

    /// Address and port to serve on (an IP address, not a name: no lookup happens).
    #[arg(
        short,
        long,
        value_name = "ADDR:PORT",
        default_value = "127.0.0.1:9464"
    )]
    pub listen: SocketAddr,

    /// Label the per-process series by process name (`comm`) or by name and PID (`pid`:
    /// more series; each process's series goes away some minutes after it exits).
    #[arg(long, value_enum, default_value_t = By::Comm)]
    pub by: By,

    /// At most this many processes (label sets) get series of their own; the rest are
    /// added up under `comm="_other"` and counted by ktls_trace_series_folded_total.
    #[arg(long, value_name = "N", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_series: u32,

    /// How often the kernel's totals are read, in seconds (0.1 to 60): a scrape sees
    /// numbers at most this old.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub interval: f64,

    /// Keys the kernel's totals map holds (default 8192): the tests make it tiny to force
    /// and see its drops.
    #[arg(long, hide = true, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub max_keys: Option<u32>,
}

/// How per-process series are labelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum By {
    /// `comm="nginx"`: one series per process name.
    #[default]
    Comm,
    /// `comm="nginx",pid="1234"`: one series per process.
    Pid,
}

/// Binds the listening socket before any probe is loaded, so that a taken port or a
/// foreign address is a usage error (exit 2) with nothing attached yet.
fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use std::io::ErrorKind;
    let listener = std::net::TcpListener::bind(addr).map_err(|e| {
        let why = match e.kind() {
            ErrorKind::AddrInUse => {
                "the port is in use (another exporter? pick one with --listen)".to_string()
            }
            ErrorKind::AddrNotAvailable => {
                "no interface of this machine has that address".to_string()
            }
            ErrorKind::PermissionDenied => {
                "ports below 1024 need root or CAP_NET_BIND_SERVICE".to_string()
            }
            _ => e.to_string(),
        };
        anyhow::Error::from(UsageError::Other(format!("cannot listen on {addr}: {why}")))
    })?;
    listener
        .set_nonblocking(true)
        .context("making the listening socket non-blocking")?;
    tokio::net::TcpListener::from_std(listener).context("registering the listening socket")
}

/// The tracer's and the kernel's side of a snapshot, as of now.
fn state(session: &Session) -> State {
    let tracer = session.tracer();
    let plan = tracer.plan();
    let probes = plan
        .decisions
        .iter()
        .map(|(p, _)| {
            let s = if tracer.attached().contains(p) {
                ProbeState::Attached
            } else if tracer.waiting().contains(p) {
                ProbeState::Waiting
            } else if tracer.lost().iter().any(|l| l.probe == *p) {
                ProbeState::Lost
            } else {
                ProbeState::Skipped
            };
            (p.name(), s)
        })
        .collect();
    let tls_stat = kernel::read_tls_stat();
    State {
        kernel_release: tracer.facts().release.clone(),
        backend: plan.backend.name(),
        counts: session.counts(),
        probes,
        // /proc/net/tls_stat exists while kernel TLS is there (module live or built in).
        tls_module_loaded: tls_stat.is_some(),
        tls_stat,
    }
}

/// Runs `ktls-trace export`: binds, attaches, then reads the kernel's totals every
/// interval and publishes a snapshot the HTTP side serves, until SIGINT or SIGTERM.
pub async fn run(args: ExportArgs, verbose: u8) -> anyhow::Result<ExitCode> {
    check_interval(args.interval)?;
    let listener = bind(args.listen)?;
    let mut opts = trace::options(&args.filter, verbose)?;
    // As top: the kernel adds calls up in maps, nothing crosses the ring buffer, and
    // kernel TLS ciphertext is derived from records where the plan can.
    opts.aggregate = true;
    opts.derive_ciphertext = true;
    opts.aggregate_keys = args.max_keys;
    opts.ring_bytes = Some(AGGREGATE_RING_BYTES);
    // A traced PID that exits does not end the exporter: its series stay until evicted.
    let mut session = trace::start(&opts, SessionOptions::default())?;
    let max_series = usize::try_from(args.max_series).unwrap_or(usize::MAX);
    let mut totals = Totals::new(session.rules(), args.by, max_series);
    let (tx, rx) = watch::channel(Arc::new(totals.snapshot(state(&session))));
    let server = tokio::spawn(http::serve(listener, rx));
    eprintln!(
        "ktls-trace: serving metrics on http://{}/metrics (Ctrl-C or SIGTERM to stop)",
        args.listen
    );
    let mut read = tokio::time::interval(Duration::from_secs_f64(args.interval));
    read.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut read_failed = false;
    loop {
        tokio::select! {
            u = session.next() => match u? {
                Update::Notices(notices) => {
                    for n in notices {
                        eprintln!("ktls-trace: {n}");
                    }
                }
                Update::Stop(_) => break,
                Update::Events(_) | Update::Tick => {}
            },
            _ = read.tick() => {
                let now = crate::clock::now_ns();
                match session.read_aggregates() {
                    Ok(batch) => {
                        read_failed = false;
                        totals.ingest(&batch, now);
                    }
                    // Weeks of running must not end on one failed map read: say it once
                    // per run of failures, keep serving the last numbers, try again.
                    Err(e) if !read_failed => {
                        read_failed = true;
                        eprintln!("ktls-trace: warning: reading the kernel's totals failed (retrying): {e}");
                    }
                    Err(_) => {}
                }
                totals.evict(now, procs::alive);
                tx.send_replace(Arc::new(totals.snapshot(state(&session))));
            }
        }
    }
    server.abort();
    Ok(ExitCode::SUCCESS)
}
