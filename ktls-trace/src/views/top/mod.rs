//! `ktls-trace top`: a live, per-process view of the kernel TLS transmit path.
//!
//! Collection, aggregation and drawing are apart: the [`Session`] hands out events,
//! [`model`] classifies and aggregates them (pure, with an injected clock) into a
//! [`model::Snapshot`] per interval, and [`view`] (ratatui) or [`once`] (text, JSON) shows
//! snapshots. [`app`] runs the interactive loop and the keys, [`term`] owns the terminal,
//! [`conns`] adds what sock_diag and the tracer know about connections, [`load_child`] runs
//! the built-in load. Column meanings and path rules: docs/top.md.

mod app;
mod conns;
#[cfg(feature = "load")]
mod load_child;
#[cfg(not(feature = "load"))]
#[path = "no_load_child.rs"]
mod load_child;
pub mod model;
mod once;
mod term;
mod view;

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Args;

use crate::{
    cli::{FilterArgs, RingArgs},
    plan::{Backend, Source},
    procs::UsageError,
    session::{Session, SessionOptions},
    views::trace,
};
use load_child::LoadChild;
use view::Header;

/// The message for `top` without a terminal.
const NOT_A_TERMINAL: &str = "stdout is not a terminal: `ktls-trace top` is interactive; use `ktls-trace top --once` for one text snapshot, or `ktls-trace trace --json` for an event stream";

/// The ring buffer in aggregate mode, where nothing is sent through it: one 64 KiB
/// block (a power of two and a multiple of the page size on every architecture). `export`
/// runs the same way.
pub(crate) const AGGREGATE_RING_BYTES: u32 = 64 << 10;

/// Bounds of the refresh interval (`--interval`, and `d` while running; export's
/// `--interval` too).
const MIN_INTERVAL: f64 = 0.1;
const MAX_INTERVAL: f64 = 60.0;

/// `--interval` within [`MIN_INTERVAL`, `MAX_INTERVAL`] seconds, or a usage error.
pub(crate) fn check_interval(secs: f64) -> Result<(), UsageError> {
    if secs.is_finite() && (MIN_INTERVAL..=MAX_INTERVAL).contains(&secs) {
        Ok(())
    } else {
        Err(UsageError::Other(format!(
            "--interval must be between {MIN_INTERVAL} and {MAX_INTERVAL} seconds"
        )))
    }
}

/// Live per-process view of the kernel TLS transmit path: which path each process's
/// payload takes (kTLS sendfile, kTLS write, device offload, user-space TLS, plain),
/// throughput, TLS records, latency percentiles. Keys: `?` in the view; docs/top.md.
#[derive(Debug, Clone, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub filter: FilterArgs,

    #[command(flatten)]
    pub ring: RingArgs,

    /// Refresh interval in seconds (0.1 to 60); `d`, `+` and `-` change it while running.
    #[arg(short = 'd', long, value_name = "SECS", default_value_t = 1.0)]
    pub interval: f64,

    /// Start the built-in workload generator (`ktls-trace load`) in the background, so an
    /// idle machine shows something; it is stopped when top exits.
    // Hidden in a build without the generator, but still parsed: `top --load` then gets
    // the one-line refusal, not a parser error.
    #[arg(long, hide = !cfg!(feature = "load"))]
    pub load: bool,

    /// Workload mode for --load [default: ktls-sendfile when the kernel has kernel TLS,
    /// plain-sendfile otherwise].
    #[cfg(feature = "load")]
    #[arg(long, value_enum, value_name = "MODE", requires = "load")]
    pub mode: Option<crate::load::Mode>,

    /// Workload mode for --load (not in this build): any value, refused with --load.
    #[cfg(not(feature = "load"))]
    #[arg(long = "mode", value_name = "MODE", requires = "load", hide = true)]
    pub _mode: Option<String>,

    /// Print one snapshot after one interval and exit (like `top -b -n 1`): for scripts
    /// and when stdout is not a terminal. With --load, the interval starts once the load
    /// is serving.
    #[arg(long)]
    pub once: bool,

    /// With --once: the snapshot as one JSON object (docs/top.md).
    #[arg(long, requires = "once")]
    pub json: bool,

    /// Classify every call in user space from the event stream (as `trace` does) instead
    /// of reading the totals the kernel adds up: for comparisons, and to see ring-buffer
    /// drops. Slower for the traced server.
    #[arg(long, hide = true)]
    pub events: bool,

    /// Keys the kernel's totals map holds (default 8192): the tests make it tiny to force
    /// and see its drops.
    #[arg(long, hide = true, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub max_keys: Option<u32>,
}

/// The header's facts for a session: kernel, mode, and what this kernel cannot measure.
fn header(session: &Session, interval_s: f64) -> Header {
    let tracer = session.tracer();
    let facts = tracer.facts();
    let plan = tracer.plan();
    let missing: Vec<String> = tracer
        .numbers()
        .into_iter()
        .filter_map(|n| match n.source {
            Source::Missing(_) => Some(n.number.to_string()),
            _ => None,
        })
        .collect();
    let mut mode = plan.mode_sentence(facts);
    if session.aggregated() {
        mode.push_str("; totals added up in the kernel");
    }
    if plan.ciphertext_derived {
        mode.push_str("; kernel TLS ciphertext derived from its records");
    }
    if plan.backend == Backend::Kprobe && !missing.is_empty() {
        mode.push_str(&format!(
            "; not measurable here: {} (ktls-trace doctor says why)",
            missing.join(", ")
        ));
    }
    let waiting: Vec<&str> = tracer.waiting().iter().map(|p| p.name()).collect();
    let mut status: Vec<String> = tracer.lost().iter().map(|l| l.to_string()).collect();
    if !waiting.is_empty() {
        status.push(format!(
            "the tls module is not loaded: {} attach when it is (modprobe tls)",
            waiting.join(", ")
        ));
    }
    Header {
        kernel: facts.release.clone(),
        mode,
        reduced: plan.backend == Backend::Tracepoint,
        interval_s,
        tls_stat: facts.tls_stat.clone(),
        status: (!status.is_empty()).then(|| status.join("; ")),
    }
}

/// Runs `ktls-trace top`.
pub async fn run(args: TopArgs, verbose: u8) -> anyhow::Result<ExitCode> {
    #[cfg(not(feature = "load"))]
    if args.load {
        return Err(crate::cli::not_built("top --load"));
    }
    check_interval(args.interval)?;
    if !args.once && !std::io::stdout().is_terminal() {
        return Err(UsageError::Other(NOT_A_TERMINAL.to_string()).into());
    }
    let mut opts = trace::options(&args.filter, verbose)?;
    let ring_bytes = args.ring.bytes()?;
    // The kernel adds calls up in maps (per-CPU, no record per call); the ring buffer is
    // then unused and kept at its smallest.
    opts.aggregate = !args.events;
    // top's numbers need no TCP push where ciphertext can be derived: the costliest probe.
    // In both modes, so that they stay comparable.
    opts.derive_ciphertext = true;
    opts.aggregate_keys = args.max_keys;
    opts.ring_bytes = Some(if args.events {
        ring_bytes
    } else {
        AGGREGATE_RING_BYTES
    });
    #[cfg(feature = "load")]
    let load_mode = args.mode.unwrap_or_else(|| {
        use crate::{kernel::TlsState, load::Mode};
        if TlsState::current().is_available() {
            Mode::KtlsSendfile
        } else {
            Mode::PlainSendfile
        }
    });
    let session = trace::start(&opts, SessionOptions::default())?;
    // Started after the probes are attached, so all of its traffic is seen.
    #[cfg(feature = "load")]
    let load = if args.load {
        Some(LoadChild::spawn(load_mode)?)
    } else {
        None
    };
    #[cfg(not(feature = "load"))]
    let load: Option<LoadChild> = None;
    let header = header(&session, args.interval);
    if args.once {
        once::run(session, header, load, args.json).await?;
    } else {
        app::run(session, header, load).await?;
    }
    Ok(ExitCode::SUCCESS)
}
