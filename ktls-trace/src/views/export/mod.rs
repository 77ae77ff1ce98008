//! `ktls-trace export`: the session's totals as Prometheus metrics, served over HTTP for
//! weeks on end. Data flows one way: the session's per-interval aggregates -> [`metrics`]
//! (pure: cumulative totals, the cardinality cap, encoding) -> an immutable snapshot that
//! [`http`] serves; a scrape never waits on tracing, tracing never waits on a scrape.

use std::{net::SocketAddr, process::ExitCode};

use clap::{Args, ValueEnum};

use crate::cli::FilterArgs;

/// Serve Prometheus metrics (`/metrics`) about the kernel TLS transmit path: payload bytes
/// per path and process, ciphertext, records, latency histograms, drops, probe states and
/// the kernel's TLS counters. Runs until SIGTERM or Ctrl-C. Metrics: docs/export.md.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub filter: FilterArgs,

    /// Address and port to serve on (an IP address, not a name: no lookup happens).
    #[arg(short, long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9464")]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum By {
    /// `comm="nginx"`: one series per process name.
    Comm,
    /// `comm="nginx",pid="1234"`: one series per process.
    Pid,
}

/// Runs `ktls-trace export`.
pub async fn run(args: ExportArgs, verbose: u8) -> anyhow::Result<ExitCode> {
    let _ = (args, verbose);
    anyhow::bail!("export is not implemented yet")
}
