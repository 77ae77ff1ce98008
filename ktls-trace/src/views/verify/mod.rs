//! `ktls-trace verify`: runs the built-in load while tracing its server, and proves stage
//! by stage that the bytes went page cache -> sendfile -> kernel TLS -> TCP with no
//! user-space copy (or says which path they took instead).
//!
//! The server runs as a child process (`ktls-trace load --server-only`) so that it can be
//! traced alone by PID; the client runs here, in user space, and checks every byte.

mod fixture;
pub mod judge;
#[cfg(test)]
mod replay;

use std::{
    process::{ExitCode, Stdio},
    time::Duration,
};

use anyhow::Context as _;
use clap::Args;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};

use crate::{
    attach::{TraceOptions, WAKEUP_BYTES},
    classify::Path,
    kernel::{KernelFacts, TlsState},
    load::{self, ClientConfig, ClientReport, Expect, Limit, Mode, ReadyLine, ServerReport},
    plan::BackendChoice,
    procs::UsageError,
    session::{Session, SessionOptions, Update},
    tls::{Cipher, TlsParams, TlsVersion},
};
use judge::{Judge, Served, Verdict};

/// How long the server may take to end by itself once the client got every response.
const SERVER_GRACE: Duration = Duration::from_secs(10);

/// `ktls-trace verify` options.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// The load to verify: ktls-sendfile is the zero-copy path; the others show which
    /// stage they fail and why.
    #[arg(long, value_enum, default_value_t = Mode::KtlsSendfile)]
    pub mode: Mode,

    /// Requests to serve in total, over all connections.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub requests: u64,

    /// Size of the generated file (K/M/G suffixes).
    #[arg(long, default_value = "4M", value_name = "SIZE")]
    pub file_size: String,

    /// Parallel client connections.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub connections: u32,

    /// TLS version to negotiate (default: the client's preference, 1.3).
    #[arg(long, value_enum)]
    pub tls: Option<TlsVersion>,

    /// Cipher to negotiate.
    #[arg(long, value_enum)]
    pub cipher: Option<Cipher>,

    /// Print the verdicts as one JSON object.
    #[arg(long)]
    pub json: bool,

    /// Test-only fault injection, passed to the server: flip body byte N (ktls-write and
    /// userspace-tls modes), so a test can prove stage 5 catches corruption.
    #[arg(long, hide = true, value_name = "N")]
    pub corrupt_byte: Option<u64>,

    /// Test-only fault injection, passed to the server: it hangs up on every request, so
    /// a test can prove that a failed client ends verify at once.
    #[arg(long, hide = true)]
    pub hang_up: bool,

    /// Developer option: write the judged events and the load's report to this file (a
    /// recorded stream for the replay tests; `cargo xtask record` collects them).
    #[arg(long, hide = true, value_name = "FILE")]
    pub record: Option<std::path::PathBuf>,
}

/// Why verify cannot run here at all (exit code 2).
fn precondition(facts: &KernelFacts, mode: Mode) -> Option<String> {
    if !facts.privileges.can_trace() {
        return Some(crate::kernel::NEED_PRIVILEGES.to_string());
    }
    if let Err(why) = &facts.kprobes {
        return Some(format!(
            "verify needs kprobes to see kernel TLS, and this kernel has none: {why}"
        ));
    }
    if mode.kernel_tls() {
        match &facts.tls {
            TlsState::Loaded | TlsState::Builtin => {}
            TlsState::Loadable(_) => {
                return Some(
                    "kernel TLS is not loaded: run `modprobe tls` (or try --mode userspace-tls / plain-sendfile)"
                        .to_string(),
                );
            }
            TlsState::Missing(why) => {
                return Some(format!(
                    "kernel TLS is not available ({why}); --mode userspace-tls or plain-sendfile can still be verified"
                ));
            }
        }
    }
    None
}

/// Runs verify; the exit code is 0 when every stage holds, 1 when one fails, 2 when
/// verification is impossible on this machine.
pub async fn run(args: VerifyArgs, verbose: u8) -> anyhow::Result<ExitCode> {
    // The user's mistakes first: they hold on every machine.
    let size = load::args::parse_size(&args.file_size)
        .map_err(|e| UsageError::Other(format!("--file-size: {e}")))?;
    for (flag, n) in [
        ("--requests", args.requests),
        ("--connections", u64::from(args.connections)),
    ] {
        if n == 0 {
            return Err(UsageError::Other(format!("{flag} must be at least 1")).into());
        }
    }
    let facts = KernelFacts::probe();
    if let Some(why) = precondition(&facts, args.mode) {
        eprintln!("ktls-trace: verify: cannot verify here: {why}");
        return Ok(ExitCode::from(2));
    }
    // Before the server starts: SIGINT/SIGTERM must end verify through its destructors,
    // which stop the server (the session listens for them too, once it runs).
    let stop = crate::signals::stop_signals().context("installing the SIGINT/SIGTERM handlers")?;
    tokio::pin!(stop);

    // 1. The server, as its own process.
    let exe = std::env::current_exe().context("locating the ktls-trace binary")?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "load",
        "--server-only",
        "--listen",
        "127.0.0.1:0",
        "--mode",
        args.mode.name(),
        "--requests",
        &args.requests.to_string(),
        "--file-size",
        &size.to_string(),
        "--json",
    ]);
    if let Some(v) = args.tls {
        cmd.args(["--tls", v.name()]);
    }
    if let Some(c) = args.cipher {
        cmd.args(["--cipher", c.name()]);
    }
    if let Some(b) = args.corrupt_byte {
        cmd.args(["--corrupt-byte", &b.to_string()]);
    }
    if args.hang_up {
        cmd.arg("--hang-up");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe and touches only the new process; it makes the
    // kernel stop the server if verify dies without running its destructors (SIGKILL).
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut server = cmd.spawn().context("starting the load server")?;
    let stdout = server.stdout.take().context("server stdout")?;
    let stderr = server.stderr.take().context("server stderr")?;
    let mut lines = BufReader::new(stdout).lines();
    let err_task = tokio::spawn(async move {
        let mut all = Vec::new();
        let mut l = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = l.next_line().await {
            all.push(line);
        }
        all
    });
    let first = tokio::select! {
        r = tokio::time::timeout(Duration::from_secs(120), lines.next_line()) => r,
        () = &mut stop => anyhow::bail!("interrupted: the load server was stopped"),
    };
    let ready: ReadyLine = match first {
        Ok(Ok(Some(line))) => serde_json::from_str(&line)
            .with_context(|| format!("unexpected first line from the load server: {line}"))?,
        _ => {
            let _ = server.kill().await;
            let err = err_task.await.unwrap_or_default();
            anyhow::bail!(
                "the load server did not start: {}",
                err.last().map(String::as_str).unwrap_or("no message")
            );
        }
    };

    // 2. Trace it, and only it (plus kernel work on its sockets).
    let opts = TraceOptions {
        backend: BackendChoice::Kprobe,
        pids: vec![ready.pid],
        comm: None,
        debug: verbose >= 2,
        ring_bytes: Some(32 << 20),
        wakeup_bytes: WAKEUP_BYTES,
        aggregate: false,
        aggregate_keys: None,
        // The ciphertext is observed at the TCP pushes (verify proves it reached TCP).
        derive_ciphertext: false,
    };
    let mut session = Session::start(facts.clone(), &opts, SessionOptions::default())?;
    for l in session.tracer().lost() {
        eprintln!("ktls-trace: verify: {l}");
    }
    eprintln!(
        "ktls-trace: verify: tracing the {} server (pid {}) on {}; {} request(s) of {} bytes",
        args.mode.name(),
        ready.pid,
        ready.listen,
        args.requests,
        size
    );

    // 3. The client, here; judge events meanwhile.
    let mut cfg = ClientConfig::new(
        ready.listen.clone(),
        args.mode.tls().then_some(load::TlsChoice {
            version: args.tls,
            cipher: args.cipher,
        }),
        Limit::Requests(args.requests),
    );
    cfg.connections = args.connections;
    cfg.expect = match load::file::parse_hex_sha256(&ready.file_sha256) {
        Some(sha256) => Expect::Content {
            size: ready.file_size,
            sha256,
        },
        None => Expect::Unknown,
    };
    let client = tokio::spawn(load::run_client(cfg, std::future::pending()));
    tokio::pin!(client);
    let mut judge = Judge::new(session.rules());
    let mut recorded: Option<Vec<crate::event::TraceEvent>> =
        args.record.as_ref().map(|_| Vec::new());
    let mut take = |judge: &mut Judge, events: &[crate::event::TraceEvent]| {
        for e in events {
            judge.ingest(e);
        }
        if let Some(r) = &mut recorded {
            r.extend_from_slice(events);
        }
    };
    let mut client_result: Option<ClientReport> = None;
    let mut server_status = None;
    let deadline = tokio::time::sleep(Duration::from_secs(600));
    tokio::pin!(deadline);
    // Armed when the client ends: the server then has this long to end by itself before
    // it is stopped. A client whose requests failed leaves it waiting for requests that
    // will never come (a failed response goes back to its budget), so it is stopped at once.
    let server_grace = tokio::time::sleep(Duration::from_secs(600));
    tokio::pin!(server_grace);
    let mut grace_armed = false;
    loop {
        tokio::select! {
            u = session.next() => match u? {
                Update::Events(v) => take(&mut judge, &v),
                Update::Notices(n) => n.iter().for_each(|n| eprintln!("ktls-trace: verify: {n}")),
                Update::Tick => {
                    if client_result.is_some() && server_status.is_some() {
                        break;
                    }
                }
                // The server child is killed when `server` drops (kill_on_drop).
                Update::Stop(_) => anyhow::bail!("interrupted: the load server was stopped"),
            },
            res = &mut client, if client_result.is_none() => match res {
                Ok(Ok(c)) => {
                    let wait = if c.tally.errors > 0 { Duration::ZERO } else { SERVER_GRACE };
                    server_grace.as_mut().reset(tokio::time::Instant::now() + wait);
                    grace_armed = true;
                    client_result = Some(c);
                }
                // At once: the server would wait for requests that never come. It is
                // killed when `server` drops (kill_on_drop).
                Ok(Err(e)) => return Err(anyhow::Error::new(e).context("the load client failed")),
                Err(e) => anyhow::bail!("the load client stopped: {e}"),
            },
            st = server.wait(), if server_status.is_none() => {
                server_status = Some(st);
            }
            _ = &mut server_grace, if grace_armed && server_status.is_none() => {
                grace_armed = false;
                // SIGTERM: the server ends with its report of what it served.
                if let Some(pid) = server.id() {
                    // SAFETY: kill(2) on our own child, which has not been reaped yet
                    // (server_status is None), so the pid is still its own.
                    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                }
            }
            _ = &mut deadline => anyhow::bail!("verify timed out after 10 minutes"),
        }
    }
    // Records the kernel's tx worker flushes after the last send still count.
    tokio::time::sleep(Duration::from_millis(300)).await;
    take(&mut judge, &session.drain_now());
    let counts = session.counts();
    drop(session);

    let mut last = None;
    while let Ok(Some(line)) = lines.next_line().await {
        last = Some(line);
    }
    let server_err = err_task.await.unwrap_or_default();
    let report: ServerReport = match last.as_deref().map(serde_json::from_str) {
        Some(Ok(r)) => r,
        _ => anyhow::bail!(
            "the load server ended without a report: {}",
            server_err
                .last()
                .map(String::as_str)
                .unwrap_or("no message")
        ),
    };
    let Some(client) = client_result else {
        anyhow::bail!("the load client did not finish");
    };
    if counts.drops() > 0 || counts.undecodable > 0 {
        anyhow::bail!(
            "{} events were dropped and {} undecodable: the proof would be incomplete (retry on a quieter machine)",
            counts.drops(),
            counts.undecodable
        );
    }

    let served = Served {
        body_bytes: report.tally.body_bytes,
        header_bytes: report.tally.header_bytes,
        requests: report.tally.requests,
        tls: report
            .tally
            .tls_version
            .zip(report.tally.cipher)
            .map(|(version, cipher)| TlsParams { version, cipher }),
        client_verified: client.verified,
        client_body_bytes: client.tally.body_bytes,
        client_requests: client.tally.requests,
        client_errors: client.tally.error_messages.clone(),
    };
    if let (Some(path), Some(events)) = (&args.record, &recorded) {
        fixture::write(path, &facts.release, args.mode, ready.pid, &served, events)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let verdict = judge.verdict(&served);
    if args.json {
        println!("{}", to_json(&verdict, &args, &report, &facts));
    } else {
        print!("{}", render(&verdict, &args, &report, &facts));
    }
    Ok(if verdict.pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn negotiated(report: &ServerReport) -> String {
    match (report.tally.tls_version, report.tally.cipher) {
        (Some(v), Some(c)) => format!("TLS {v} {c}"),
        _ => "no TLS".to_string(),
    }
}

/// The text form.
pub fn render(
    v: &Verdict,
    args: &VerifyArgs,
    report: &ServerReport,
    facts: &KernelFacts,
) -> String {
    let mut s = format!(
        "ktls-trace verify: mode {}, {}, {} request(s) x {} bytes, kernel {}\n",
        args.mode.name(),
        negotiated(report),
        report.tally.requests,
        report.file_size,
        facts.release
    );
    for st in &v.stages {
        s.push_str(&format!(
            "  [{}] {}. {:<13} {}\n",
            if st.pass { "PASS" } else { "FAIL" },
            st.stage,
            st.name,
            st.detail
        ));
    }
    s.push_str(&format!(
        "  path: {}\n  verdict: {}\n",
        v.path.map_or("unknown", Path::label),
        if v.pass {
            "PASS: encrypted in the kernel, no user-space copy"
        } else {
            "FAIL: not the zero-copy kernel TLS path (see the failed stages)"
        }
    ));
    s
}

/// The `--json` form.
pub fn to_json(
    v: &Verdict,
    args: &VerifyArgs,
    report: &ServerReport,
    facts: &KernelFacts,
) -> serde_json::Value {
    serde_json::json!({
        "verdict": if v.pass { "pass" } else { "fail" },
        "path": v.path.map_or("unknown", Path::label),
        "path_id": v.path.map(Path::id),
        "mode": args.mode.name(),
        "kernel": facts.release,
        "tls_version": report.tally.tls_version,
        "cipher": report.tally.cipher,
        "requests": report.tally.requests,
        "body_bytes": report.tally.body_bytes,
        "header_bytes": report.tally.header_bytes,
        "stages": v.stages,
        "numbers": v.numbers,
    })
}
