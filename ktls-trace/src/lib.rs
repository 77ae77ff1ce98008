//! ktls-trace: how a Linux server's bytes travel the kernel TLS transmit path.
//!
//! Data flows one way, one module each (docs/architecture.md draws it):
//!
//! ```text
//! kernel facts (kernel, btf) -> plan: which probes, which numbers
//!   -> attach: eBPF programs (ktls-trace-ebpf) loaded and attached
//!   -> session: the ring buffer's only reader -> event: decoded calls
//!   -> classify: what the bytes were (one rule set)
//!   -> views: trace (lines + summary), top (model -> table), verify (judge), doctor
//! ```
//!
//! `load` (the workload generator) is a module tree of its own; the tracer side does not
//! depend on it, and it is compiled only with the `load` feature (on by default; off in the
//! static build, see Cargo.toml). Only what the benchmarks and the binary need is public.

mod aggregate;
mod assets;
mod attach;
mod btf;
pub mod classify;
mod cli;
mod clock;
pub mod event;
mod inthash;
pub mod jsonl;
mod kernel;
#[cfg(feature = "load")]
mod load;
mod plan;
mod procs;
mod session;
mod signals;
mod sockdiag;
mod tls;
mod views;

pub use session::{Counts, ProcessNames, read_record};
pub use views::{summary::Summary, top::model::Model, trace::Printer};

#[cfg(test)]
mod test_util;

use std::process::ExitCode;

use cli::{Cli, Command, Parsed};
use procs::UsageError;

/// Parses and runs the command line: errors become one line on stderr and an exit code
/// (0 ok, 1 failure, 2 usage).
pub fn main() -> ExitCode {
    let cli = match cli::parse() {
        Parsed::Cli(cli) => *cli,
        Parsed::Assets(args) => return exit(assets::run(&args)),
        #[cfg(not(feature = "load"))]
        Parsed::NotBuilt(what) => return exit(Err(cli::not_built(&what))),
    };
    let level = match cli.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .format_timestamp(None)
        .format_target(false)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ktls-trace: error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    exit(runtime.block_on(run(cli)))
}

/// The exit code of a command's result; an error is said in one line on stderr first.
fn exit(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(err) => {
            // Not eprintln!: a closed stderr (`2>&-`, a reader that went away) must not
            // turn a clean error into a panic.
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "ktls-trace: error: {}", one_line(&err));
            if err.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// "context: cause: root cause" on one line.
fn one_line(err: &anyhow::Error) -> String {
    err.chain()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Trace(args) => {
            views::trace::run(args, cli.verbose).await?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "load")]
        Command::Load(args) => load::run(args).await,
        #[cfg(feature = "load")]
        Command::Verify(args) => views::verify::run(args, cli.verbose).await,
        Command::Top(args) => views::top::run(args, cli.verbose).await,
        Command::Doctor(args) => views::doctor::run(&args),
        Command::Export(args) => views::export::run(args, cli.verbose).await,
    }
}
