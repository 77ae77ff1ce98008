//! `ktls-trace top`: a live, per-process view of the kernel TLS transmit path.
//!
//! Collection, aggregation and drawing are apart:
//! [`crate::tracer`] (events) -> [`model`] (pure aggregation, [`classify`] = path rules)
//! -> [`model::Snapshot`] -> [`view`] (ratatui) or [`once`] (text). [`app`] runs the
//! loop and the keys, [`term`] owns the terminal, [`conns`] adds what sock_diag and the
//! tracer know about connections. Column meanings and path rules: docs/top.md.

pub mod app;
pub mod classify;
pub mod conns;
pub mod model;
pub mod once;
pub mod term;
pub mod view;

use std::{
    collections::VecDeque,
    io::{BufRead as _, BufReader, IsTerminal as _},
    os::unix::process::CommandExt as _,
    process::{Child, Command, ExitCode, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Args;
use ktls_trace_common::Probe;

use crate::{
    cli::FilterArgs, kernel::KernelFacts, plan::Backend, procs::UsageError, trace_cmd,
    tracer::Tracer,
};
use classify::Rules;
use view::Header;

/// The message for `top` without a terminal.
pub const NOT_A_TERMINAL: &str = "stdout is not a terminal: `ktls-trace top` is interactive; use `ktls-trace top --once` for one text snapshot, or `ktls-trace trace --json` for an event stream";

/// Workload modes `--load` can start (those of `ktls-trace load --mode`).
pub const LOAD_MODES: [&str; 4] = [
    "ktls-sendfile",
    "ktls-write",
    "userspace-tls",
    "plain-sendfile",
];

/// How long the built-in load runs (it is stopped when `top` exits).
const LOAD_DURATION_SECS: &str = "86400";

/// Live per-process view of the kernel TLS transmit path: which path each process's
/// payload takes (kTLS sendfile, kTLS write, device offload, user-space TLS, plain),
/// throughput, TLS records, latency percentiles. Keys: `?` in the view; docs/top.md.
#[derive(Debug, Clone, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub filter: FilterArgs,

    /// Refresh interval in seconds (0.1 to 60); `d`, `+` and `-` change it while running.
    #[arg(short = 'd', long, value_name = "SECS", default_value_t = 1.0)]
    pub interval: f64,

    /// Start the built-in workload generator (`ktls-trace load`) in the background, so an
    /// idle machine shows something; it is stopped when top exits.
    #[arg(long)]
    pub load: bool,

    /// Workload mode for --load [default: ktls-sendfile when the kernel has kernel TLS,
    /// plain-sendfile otherwise].
    #[arg(long, value_name = "MODE", requires = "load", value_parser = LOAD_MODES)]
    pub mode: Option<String>,

    /// Print one snapshot as plain text after one interval and exit (like `top -b -n 1`):
    /// for scripts and when stdout is not a terminal.
    #[arg(long)]
    pub once: bool,
}

/// A running trace plus what the views need to know about it.
pub struct Session {
    pub tracer: Tracer,
    pub header: Header,
    pub rules: Rules,
}

impl Session {
    fn new(tracer: Tracer, interval_s: f64) -> Session {
        let plan = tracer.plan();
        let reduced = plan.backend == Backend::Tracepoint;
        let rules = Rules {
            sendfile64_is_payload: reduced && !tracer.attached().contains(&Probe::SockSendLength),
        };
        let facts = tracer.facts();
        let waiting: Vec<&str> = tracer.waiting().map(|p| p.name()).collect();
        let status = (!waiting.is_empty()).then(|| {
            format!(
                "the tls module is not loaded: {} attach when it is (modprobe tls)",
                waiting.join(", ")
            )
        });
        let header = Header {
            kernel: facts.release.clone(),
            mode: plan.mode_sentence(facts),
            reduced,
            interval_s,
            tls_stat: facts.tls_stat.clone(),
            status,
        };
        Session {
            tracer,
            header,
            rules,
        }
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock the eBPF programs stamp events with.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// The built-in workload generator, running as a child process.
pub struct LoadChild {
    child: Child,
    mode: String,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    exited: Option<ExitStatus>,
}

impl LoadChild {
    /// Starts `ktls-trace load --mode MODE --duration <a day>` with this same binary.
    pub fn spawn(mode: &str) -> anyhow::Result<LoadChild> {
        let exe = std::env::current_exe().context("finding this executable for --load")?;
        let mut cmd = Command::new(exe);
        cmd.args(["load", "--mode", mode, "--duration", LOAD_DURATION_SECS])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe and touches only the new process; it makes
        // the kernel stop the load if top dies without running its destructors. (The
        // signal follows the spawning thread: `top` runs on the main thread, block_on.)
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .context("starting the built-in load (ktls-trace load)")?;
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(err) = child.stderr.take() {
            let tail = stderr_tail.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if let Ok(mut t) = tail.lock() {
                        t.push_back(line);
                        if t.len() > 5 {
                            t.pop_front();
                        }
                    }
                }
            });
        }
        Ok(LoadChild {
            child,
            mode: mode.to_string(),
            stderr_tail,
            exited: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn last_error(&self) -> Option<String> {
        self.stderr_tail.lock().ok().and_then(|t| t.back().cloned())
    }

    /// Checks whether the load exited; returns a message the first time it has.
    pub fn check(&mut self) -> Option<String> {
        if self.exited.is_some() {
            return None;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exited = Some(status);
                // Give the stderr reader a moment to catch the last line.
                std::thread::sleep(Duration::from_millis(50));
                Some(self.describe())
            }
            _ => None,
        }
    }

    /// "load: ktls-sendfile running (pid 123)".
    pub fn describe(&self) -> String {
        match self.exited {
            None => format!("load: {} running (pid {})", self.mode, self.pid()),
            Some(status) => match self.last_error() {
                Some(e) => format!("load: {} exited ({status}): {e}", self.mode),
                None => format!("load: {} exited ({status})", self.mode),
            },
        }
    }
}

impl Drop for LoadChild {
    fn drop(&mut self) {
        if self.exited.is_some() || matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SIGTERM first, so the load can close its connections; then SIGKILL.
        // SAFETY: kill(2) on our own child's pid with a valid signal.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `ktls-trace top`.
pub async fn run(args: TopArgs, verbose: u8) -> anyhow::Result<ExitCode> {
    if !args.interval.is_finite()
        || !(app::MIN_INTERVAL..=app::MAX_INTERVAL).contains(&args.interval)
    {
        return Err(UsageError::Other(format!(
            "--interval must be between {} and {} seconds",
            app::MIN_INTERVAL,
            app::MAX_INTERVAL
        ))
        .into());
    }
    if !args.once && !std::io::stdout().is_terminal() {
        return Err(UsageError::Other(NOT_A_TERMINAL.to_string()).into());
    }
    let opts = trace_cmd::options(&args.filter, verbose)?;
    let facts = KernelFacts::probe();
    let load_mode = args.mode.clone().unwrap_or_else(|| {
        if facts.tls.is_available() {
            "ktls-sendfile".to_string()
        } else {
            "plain-sendfile".to_string()
        }
    });
    let tracer = Tracer::start(facts, &opts)?;
    trace_cmd::announce(&tracer);
    // Started after the probes are attached, so all of its traffic is seen.
    let load = if args.load {
        Some(LoadChild::spawn(&load_mode)?)
    } else {
        None
    };
    let mut session = Session::new(tracer, args.interval);
    if let Some(l) = &load {
        let s = l.describe();
        session.header.status = Some(match session.header.status.take() {
            Some(prev) => format!("{s}; {prev}"),
            None => s,
        });
    }
    if args.once {
        once::run(session, load).await?;
    } else {
        app::run(session, load).await?;
    }
    Ok(ExitCode::SUCCESS)
}
