//! The `ktls-trace` binary: parses the command line, runs the command, turns errors
//! into one line on stderr and an exit code (0 ok, 1 failure, 2 usage).

use std::process::ExitCode;

use clap::Parser as _;
use ktls_trace::{
    cli::{Cli, Command},
    doctor,
    kernel::KernelFacts,
    procs::UsageError,
    trace_cmd, tracer,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    let result = runtime.block_on(run(cli));
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("ktls-trace: error: {}", one_line(&err));
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
            trace_cmd::run(args, cli.verbose).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Load(args) => ktls_trace::load::run(args).await,
        Command::Verify(args) => ktls_trace::verify::run(args, cli.verbose).await,
        Command::Top(args) => ktls_trace::top::run(args, cli.verbose).await,
        Command::Doctor(args) => {
            let facts = KernelFacts::probe();
            let check = facts
                .privileges
                .can_trace()
                .then(|| tracer::load_check(&facts));
            let report = doctor::report(&facts, check.as_ref());
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", doctor::render(&report, check.as_ref()));
            }
            Ok(if report.full {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
